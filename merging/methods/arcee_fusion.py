"""``arcee_fusion``: take the other model's changes where they matter most (importance above a
dynamic threshold)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import StateDict, check_states, merge_each_tensor
from ._registry import merge_method
from ._task_vector import tensor_generator

#: above this many entries, the quartiles of the importance are estimated from a sample of this size
QUANTILE_SAMPLE = 1_000_000


def fusion_importance(base: Tensor, other: Tensor) -> Tensor:
    r"""The importance of each entry: :math:`|b - a|` times the KL divergence between the softmax
    (along the last axis) of :math:`b` and of :math:`a`, each plus ``1e-8``."""
    p = F.softmax(other, dim=-1) + 1e-8
    q = F.softmax(base, dim=-1) + 1e-8
    return (other - base).abs() * torch.sum(p * torch.log(p / q), dim=-1, keepdim=True)


def _quartiles(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """The 25th, 50th and 75th percentiles of ``x`` as the sorted entries at ``int(q * (n - 1))``;
    from a sample of :data:`QUANTILE_SAMPLE` entries drawn with replacement when ``x`` is larger."""
    flat = x.reshape(-1)
    if flat.numel() > QUANTILE_SAMPLE:
        idx = torch.randint(flat.numel(), (QUANTILE_SAMPLE,), generator=generator)
        flat = flat[idx.to(flat.device)]
    ordered = torch.sort(flat).values
    at = (torch.tensor([0.25, 0.5, 0.75]) * (ordered.numel() - 1)).long()
    return ordered[at.to(ordered.device)]


def arcee_fusion_tensor(base: Tensor, other: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """Arcee Fusion of one tensor (see :func:`arcee_fusion`); both inputs in one dtype."""
    importance = fusion_importance(base, other)
    q1, median, q3 = _quartiles(importance, generator)
    mask = (importance >= median + 1.5 * (q3 - q1)).float()
    return base + (other - base) * mask


@merge_method(name="arcee_fusion", pretty_name="Arcee Fusion", reference_url="https://arcee.ai", needs_base=True)
def arcee_fusion(states: list[StateDict], base: StateDict | None, *, seed: int = 0) -> StateDict:
    r"""Arcee Fusion (Arcee AI, https://arcee.ai), as mergekit 0.1.5 computes it: per tensor, the
    importance of each entry is :math:`s = |b - a| \cdot \mathrm{KL}(\mathrm{softmax}(b) \,\|\,
    \mathrm{softmax}(a))` (softmax along the last axis, so one divergence per row), and the other
    model's change is taken where the importance is an upper outlier:

    .. math::
        \theta = a + (b - a)\,[\, s \ge Q_2 + 1.5\,(Q_3 - Q_1) \,]

    with :math:`Q_k` the quartiles of :math:`s` (the sorted entry at ``int(q * (n - 1))``).
    Above 10^6 entries the quartiles are estimated from 10^6 entries drawn with replacement, as in
    mergekit, here from a generator seeded by ``(seed, tensor name)`` (mergekit draws from the
    global generator).

    Args:
        states (list[StateDict]): exactly one model :math:`b` (besides the base).
        base (StateDict): the base model :math:`a`.
        seed (int, optional): seeds the quartile sample of tensors above 10^6 entries. (default: ``0``)

    Shapes:
        every tensor keeps its shape.

    Returns:
        StateDict: a new state dict; non-floating tensors come from the base.

    Raises:
        ValueError: no base, not one model, mismatched keys or shapes.

    Example:
        >>> merged = arcee_fusion([ft], pre)  # doctest: +SKIP
    """
    fn = "arcee_fusion"
    check_states(fn, states, base, needs_base=True)
    if len(states) != 1:
        raise ValueError(f"{fn}: fuses the base with exactly one other model, got {len(states)} models")

    def fuse(key: str, tensors: list[Tensor], a: Tensor) -> Tensor:
        gen = tensor_generator(seed, key, 0) if a.numel() > QUANTILE_SAMPLE else None
        return arcee_fusion_tensor(a, tensors[0], generator=gen)

    return merge_each_tensor(base, states, fuse)
