r"""The one task-vector core behind task arithmetic, TIES and DARE (mergekit's generalized
task arithmetic): each variant is a configuration of :func:`task_vector_merge`.

.. math::
    \tau_i = \theta_i - \theta_{base},\quad
    \hat\tau_i = \mathrm{sparsify}(\tau_i),\quad
    \theta = \theta_{base} + \lambda\, \frac{\sum_i w_i m_i \hat\tau_i}{\text{normalize} ? \sum_i w_i m_i : 1}

where :math:`m_i` is the sign-consensus mask (TIES: 1 where :math:`\mathrm{sgn}(\hat\tau_i)`
equals the elected sign :math:`\mathrm{sgn}(\sum_i w_i \hat\tau_i)`, else 0; all ones without
consensus).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from ._common import StateDict, check_states, is_float, per_model, work_dtype


def magnitude_mask(tv: Tensor, density: float) -> Tensor:
    """Keep the ``int(density * numel)`` entries of largest magnitude (TIES "trim")."""
    if density >= 1.0:
        return torch.ones_like(tv, dtype=torch.bool)
    k = int(density * tv.numel())
    mask = torch.zeros(tv.numel(), dtype=torch.bool, device=tv.device)
    if k > 0:
        mask[tv.abs().reshape(-1).topk(k, sorted=False).indices] = True
    return mask.reshape(tv.shape)


def random_keep(tv: Tensor, density: float, generator: torch.Generator) -> Tensor:
    """DARE: drop each entry with probability ``p = 1 - density`` and rescale survivors by ``1 / (1 - p)``."""
    if density >= 1.0:
        return tv
    if density <= 0.0:
        return torch.zeros_like(tv)
    keep = torch.rand(tv.shape, generator=generator, dtype=torch.float64) < density
    return torch.where(keep.to(tv.device), tv / density, torch.zeros_like(tv))


def task_vector_merge(
    states: Sequence[StateDict],
    base: StateDict | None,
    *,
    fn: str,
    weights: float | Sequence[float] | None,
    density: float | Sequence[float],
    scale: float,
    normalize: bool,
    sparsify: Literal["none", "magnitude", "random"],
    consensus: Literal["none", "sign"],
    seed: int = 0,
) -> StateDict:
    """Merge the task vectors of ``states`` relative to ``base`` (see the module docstring).

    Non-floating tensors (counters) are copied from the base.
    """
    check_states(fn, states, base, needs_base=True)
    n = len(states)
    ws = per_model(weights, n, "weights", fn, 1.0)
    ds = per_model(density, n, "density", fn, 1.0)
    for d in ds:
        if not 0.0 <= d <= 1.0:
            raise ValueError(f"{fn}: density must be in [0, 1] (the fraction of each task vector kept), got {d}")
    gen = torch.Generator().manual_seed(int(seed))
    out: StateDict = {}
    for key, b in base.items():
        if not is_float(b):
            out[key] = b.clone()
            continue
        dt = work_dtype(b, *(s[key] for s in states))
        bw = b.to(dt)
        tvs = []
        for s, d in zip(states, ds):
            tv = s[key].to(device=b.device, dtype=dt) - bw
            if sparsify == "magnitude":
                tv = tv * magnitude_mask(tv, d)
            elif sparsify == "random":
                tv = random_keep(tv, d, gen)
            tvs.append(tv)
        tv = torch.stack(tvs)  # (N, *shape)
        w = torch.tensor(ws, dtype=dt, device=b.device).reshape(-1, *([1] * b.ndim))
        weighted = tv * w
        if consensus == "sign":
            elected = torch.sign(weighted.sum(0))  # sign of the summed mass
            mask = (torch.sign(weighted) == elected) & (weighted != 0)
        else:
            mask = torch.ones_like(tv, dtype=torch.bool)
        mixed = (weighted * mask).sum(0)
        if normalize:
            div = (w * mask).sum(0)
            mixed = mixed / torch.where(div.abs() < 1e-12, torch.ones_like(div), div)
        out[key] = (bw + scale * mixed).to(b.dtype)
    return out
