"""``ram`` and ``ramplus_tl``: Reinforced Agent Merging: average the task-vector entries that
several models change, keep whole the ones only one model changes."""
from __future__ import annotations

import torch
from torch import Tensor

from ._common import StateDict, check_states, merge_each_tensor
from ._registry import merge_method


def _contributions(tensors: list[Tensor], base: Tensor, epsilon: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Flat task vectors (N, n), where each is above ``epsilon`` in magnitude (N, n), how many
    models change each entry (1, n), and the entries changed by several models / by one."""
    tv = torch.stack([t - base for t in tensors]).view(len(tensors), -1)
    active = tv.abs() > epsilon
    counts = active.sum(dim=0, keepdim=True)
    return tv, active, counts, counts > 1, counts == 1


def ram_tensor(tensors: list[Tensor], base: Tensor, *, epsilon: float = 1e-5) -> Tensor:
    """RAM of one tensor (see :func:`ram`); all inputs in one dtype."""
    if not tensors:
        return base
    tv, active, counts, shared, unique = _contributions(tensors, base, epsilon)
    tv = tv * active
    merged = ((tv * unique) + (tv * shared / counts.clamp(min=1))).sum(dim=0, keepdim=True)
    return base + merged.reshape_as(base)


def ramplus_tl_tensor(tensors: list[Tensor], base: Tensor, *, r: float = 0.1, alpha: float = 0.2,
                      epsilon: float = 1e-5) -> Tensor:
    """RAM+ (tensor-local) of one tensor (see :func:`ramplus_tl`); all inputs in one dtype."""
    if not tensors:
        return base
    tv, active, counts, shared, unique = _contributions(tensors, base, epsilon)
    rho = (active & shared).sum(dim=1) / (active & unique).sum(dim=1).clamp(min=epsilon)
    boost = 1 + r * rho.clamp(min=0, max=alpha)  # (N,)
    tv = tv * active
    merged = ((tv * unique * boost.unsqueeze(-1)) + (tv * shared / counts.clamp(min=1))).sum(dim=0, keepdim=True)
    return base + merged.reshape_as(base)


@merge_method(name="ram", pretty_name="Reinforced Agent Merging", reference_url="https://arxiv.org/abs/2601.13572",
              needs_base=True)
def ram(states: list[StateDict], base: StateDict | None, *, epsilon: float = 1e-5) -> StateDict:
    r"""Reinforced Agent Merging (RAM, https://arxiv.org/abs/2601.13572), as mergekit 0.1.5
    computes it: entry by entry, the task vectors :math:`\tau_i = \theta_i - \theta_{base}` whose
    magnitude is above ``epsilon`` contribute; an entry changed by one model takes its change whole,
    an entry changed by :math:`c > 1` models takes their mean:

    .. math::
        \theta = \theta_{base} + \sum_i \tau_i\, [|\tau_i| > \epsilon]\, /\, \max(c, 1)

    Args:
        states (list[StateDict]): the fine-tuned models.
        base (StateDict): the pre-trained model the task vectors start from.
        epsilon (float, optional): a change at most this large does not count. (default: ``1e-5``)

    Shapes:
        every tensor keeps its shape.

    Returns:
        StateDict: a new state dict; non-floating tensors come from the base.

    Raises:
        ValueError: no base, mismatched keys or shapes.

    Example:
        >>> merged = ram([ft1, ft2], pre)  # doctest: +SKIP
    """
    check_states("ram", states, base, needs_base=True)
    eps = float(epsilon)
    return merge_each_tensor(base, states, lambda key, ts, b: ram_tensor(ts, b, epsilon=eps))


@merge_method(name="ramplus_tl", pretty_name="Reinforced Agent Merging Plus (Tensor-Local)",
              reference_url="https://arxiv.org/abs/2601.13572", needs_base=True)
def ramplus_tl(states: list[StateDict], base: StateDict | None, *, r: float = 0.1, alpha: float = 0.2,
               epsilon: float = 1e-5) -> StateDict:
    r"""RAM+ with tensor-local statistics (https://arxiv.org/abs/2601.13572), as mergekit 0.1.5
    computes it: as :func:`ram`, but each model's unique changes are scaled up by
    :math:`1 + r \min(\max(\rho_i, 0), \alpha)`, where :math:`\rho_i` is the ratio of the model's
    shared to unique changed entries in the tensor.

    Args:
        states (list[StateDict]): as in :func:`ram`.
        base (StateDict): as in :func:`ram`.
        r (float, optional): the strength of the boost. (default: ``0.1``)
        alpha (float, optional): the largest :math:`\rho` counted. (default: ``0.2``)
        epsilon (float, optional): as in :func:`ram`. (default: ``1e-5``)

    Shapes:
        every tensor keeps its shape.

    Returns:
        StateDict: as :func:`ram` returns.

    Raises:
        ValueError: as :func:`ram`.
    """
    check_states("ramplus_tl", states, base, needs_base=True)
    kw = {"r": float(r), "alpha": float(alpha), "epsilon": float(epsilon)}
    return merge_each_tensor(base, states, lambda key, ts, b: ramplus_tl_tensor(ts, b, **kw))
