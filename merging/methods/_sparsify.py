"""Sparsification of task vectors, as mergekit defines it (``mergekit/sparsify.py``, v0.1).

Every function takes one task vector and returns it sparsified and, optionally, rescaled:

- ``rescale=True`` (or ``"l1"``): the kept entries are scaled so that the L1 norm of the result
  equals the L1 norm of the input (mergekit's ``rescale: true``; unchanged when either norm is
  below ``1e-7``);
- ``rescale="density"``: the kept entries are divided by the keep probability, as in the DARE
  paper (the expected task vector is unchanged);
- ``rescale=False``: no rescaling.
"""
from __future__ import annotations

import torch
from torch import Tensor

RESCALES = (True, False, "l1", "density", "none")


def check_rescale(fn: str, rescale: object) -> None:
    if rescale not in RESCALES or isinstance(rescale, (int, float)) and not isinstance(rescale, bool):
        raise ValueError(f"{fn}: rescale must be true (L1 norm, as mergekit), false or 'density' "
                         f"(divide by the density, as the DARE paper), got {rescale!r}")


def _rescaled(tv: Tensor, mask: Tensor, rescale: object, density: float, eps: float = 1e-7) -> Tensor:
    kept = tv * mask
    if rescale in (False, None, "none"):
        return kept
    if rescale == "density":
        return kept / density if density > 0 else kept
    before, after = tv.abs().sum(), kept.abs().sum()
    if before < eps or after < eps:
        return kept
    return kept * (before / after)


def _rank_magnitudes(tv: Tensor) -> Tensor:
    w = tv.abs().reshape(-1)
    return w.float() if w.device.type == "cpu" else w  # mergekit ranks in float32 on the CPU


def magnitude(tv: Tensor, density: float, rescale: object = False, *, name: str = "") -> Tensor:
    """Keep the ``max(1, int(density * numel))`` entries of largest magnitude (TIES trim); a
    density of 0 keeps nothing.

    Among equal magnitudes the entries kept are those ``torch.argsort(descending=True)`` puts
    first (an unstable sort, as mergekit: with the same torch the same entries), magnitudes
    ranked in float32 on the CPU.
    """
    if density >= 1:
        return tv
    if density <= 0 or tv.numel() == 0:
        return torch.zeros_like(tv)
    k = max(1, int(density * tv.numel()))
    mask = torch.zeros(tv.numel(), dtype=tv.dtype, device=tv.device)
    mask[_top_k(_rank_magnitudes(tv), k)] = 1
    return _rescaled(tv, mask.reshape(tv.shape), rescale, density)


def _top_k(w: Tensor, k: int) -> Tensor:
    """The indices ``argsort(w, descending=True)[:k]`` selects, as a set: ``topk`` (about 6x
    faster on the CPU) when no run of equal values straddles the k-th place, else argsort itself."""
    idx = torch.topk(w, k, sorted=False).indices
    kth = w[idx].min()
    if int((w > kth).sum()) + int((w == kth).sum()) == k:
        return idx
    return torch.argsort(w, descending=True)[:k]


def magnitude_outliers(tv: Tensor, density: float, gamma: float, rescale: object = False) -> Tensor:
    """Model Breadcrumbs: drop the ``int(gamma * n)`` largest magnitudes (outliers), then the
    smallest ones, keeping ``int(density * n)`` entries: ``sorted[n_bot : n_bot + int(density * n)]``
    with ``n_bot = max(0, n - int(density * n) - int(gamma * n))`` (fewer outliers dropped when
    both cannot be honoured), as mergekit 0.1.5.
    """
    if density >= 1:
        return tv
    n = tv.numel()
    target, n_top = int(density * n), int(gamma * n)
    n_bot = max(0, n - target - n_top)
    order = torch.sort(_rank_magnitudes(tv), descending=False).indices  # unstable, as mergekit
    mask = torch.zeros(n, dtype=tv.dtype, device=tv.device)
    mask[order[n_bot:n_bot + target]] = 1
    return _rescaled(tv, mask.reshape(tv.shape), rescale, density)


def random(tv: Tensor, density: float, rescale: object, generator: torch.Generator) -> Tensor:
    """DARE: keep each entry with probability ``density`` (a Bernoulli mask from ``generator``)."""
    if density >= 1:
        return tv
    dt = tv.dtype if tv.dtype == torch.bfloat16 or tv.device.type != "cpu" else torch.float32
    keep = torch.bernoulli(torch.full(tv.shape, float(density), dtype=torch.float32), generator=generator)
    out = _rescaled(tv.to(dt), keep.to(device=tv.device, dtype=dt), rescale, density)
    return out.to(tv.dtype)


def della_magprune(tv: Tensor, density: float, epsilon: float, rescale: object,
                   generator: torch.Generator) -> Tensor:
    """DELLA MagPrune: keep probabilities from ``density - epsilon`` (smallest magnitude of a row)
    to ``density + epsilon`` (largest), ranks taken along the last axis of each row (a vector is one row)."""
    if density >= 1:
        return tv
    if density <= 0:
        return torch.zeros_like(tv)
    if density + epsilon >= 1 or density - epsilon <= 0:
        raise ValueError(f"della: epsilon {epsilon:g} must keep density +/- epsilon in (0, 1) "
                         f"(density {density:g})")
    shape = tv.shape
    dt = tv.dtype if tv.dtype == torch.bfloat16 or tv.device.type != "cpu" else torch.float32
    x = tv.unsqueeze(0) if tv.dim() < 2 else tv
    ranks = torch.argsort(torch.argsort(x.abs(), dim=1), dim=1).to(dt) + 1
    lo, hi = ranks.min(dim=1, keepdim=True).values, ranks.max(dim=1, keepdim=True).values
    norm = ((ranks - lo) / (hi - lo)).clamp(0, 1)
    probs = (density - epsilon) + norm * 2 * epsilon
    keep = torch.bernoulli(probs.float().cpu(), generator=generator).to(device=tv.device, dtype=dt)
    if rescale == "density":  # the paper's rescale: each kept entry divided by its own keep probability
        return (x.to(dt) * keep / probs).to(tv.dtype).reshape(shape)
    return _rescaled(x.to(dt), keep, rescale, density).to(tv.dtype).reshape(shape)
