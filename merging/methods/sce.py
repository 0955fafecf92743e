"""``sce``: select by variance across models, weight by energy, erase minority signs (FuseChat's SCE)."""
from __future__ import annotations

import torch
from torch import Tensor

from ._common import StateDict, check_states, merge_each_tensor
from ._registry import merge_method


def _variance_mask(tvs: Tensor, select_topk: float) -> Tensor:
    """1 at the ``int(select_topk * m)`` entries whose task vectors vary most across the models
    (``m``: the entries that vary at all), 0 elsewhere; ``torch.topk`` picks among equal variances."""
    var = torch.var(tvs, dim=0, unbiased=False)
    k = int(torch.count_nonzero(var) * select_topk)
    mask = torch.zeros_like(var)
    if k > 0:
        mask.view(-1)[torch.topk(var.abs().view(-1), k=k, largest=True).indices] = 1
    return mask


def sce_tensor(tensors: list[Tensor], base: Tensor, *, select_topk: float = 1.0) -> Tensor:
    """SCE of one tensor (see :func:`sce`); all inputs in one dtype."""
    if not tensors:
        return base
    tvs = torch.stack([t - base for t in tensors])  # (N, *shape)
    if select_topk < 1:
        mask = torch.zeros_like(tvs[0]) if select_topk <= 0 else _variance_mask(tvs, select_topk)
        tvs = tvs * mask.unsqueeze(0)
    elected = (tvs.sum(dim=0) >= 0).to(tvs.dtype) * 2 - 1  # +1 where the summed mass is >= 0
    agree = tvs.sign() == elected
    energy = tvs.square().reshape(tvs.shape[0], -1).mean(dim=1)  # (N,): mean squared task vector
    total = torch.sum(energy).item()
    w = torch.ones_like(energy) / energy.shape[0] if abs(total) < 1e-6 else energy / total
    w = w.reshape(-1, *([1] * (tvs.dim() - 1))) * agree
    return base + (tvs * w).sum(dim=0) / torch.sum(w, dim=0).clamp(min=1e-6)


@merge_method(name="sce", pretty_name="SCE", reference_url="https://arxiv.org/abs/2408.07990", needs_base=True)
def sce(states: list[StateDict], base: StateDict | None, *, select_topk: float = 1.0,
        int8_mask: bool = False) -> StateDict:
    r"""SCE (Select, Calculate, Erase) from FuseChat (Wan et al., "FuseChat: Knowledge Fusion of
    Chat Models", https://arxiv.org/abs/2408.07990), as mergekit 0.1.5 computes it, per tensor.

    With task vectors :math:`\tau_i = \theta_i - \theta_{base}`:

    1. **select**: keep the ``select_topk`` fraction of the entries with non-zero variance across
       the :math:`\tau_i` that vary most (all entries when ``select_topk >= 1``, none when ``<= 0``);
    2. **calculate**: weight each model by its energy :math:`e_i = \mathrm{mean}(\hat\tau_i^2)`,
       :math:`w_i = e_i / \sum_j e_j` (equal weights when :math:`\sum_j e_j < 10^{-6}`);
    3. **erase**: keep only the entries whose sign agrees with the elected sign of
       :math:`\sum_i \hat\tau_i` (+1 where it is 0), then

    .. math::
        \theta = \theta_{base} + \frac{\sum_{i \in A} w_i \hat\tau_i}{\max(\sum_{i \in A} w_i, 10^{-6})}

    Args:
        states (list[StateDict]): the fine-tuned models.
        base (StateDict): the pre-trained model the task vectors start from.
        select_topk (float, optional): the fraction of varying entries kept. (default: ``1.0``)
        int8_mask (bool, optional): accepted for mergekit recipes (a memory option there); no effect
            on the result. (default: ``False``)

    Shapes:
        every tensor keeps its shape.

    Returns:
        StateDict: a new state dict; non-floating tensors come from the base.

    Raises:
        ValueError: no base, mismatched keys or shapes.

    Example:
        >>> merged = sce([ft1, ft2], pre, select_topk=0.3)  # doctest: +SKIP
    """
    check_states("sce", states, base, needs_base=True)
    topk = float(select_topk)
    return merge_each_tensor(base, states, lambda key, ts, b: sce_tensor(ts, b, select_topk=topk))
