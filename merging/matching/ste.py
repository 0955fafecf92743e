"""Straight-through estimator matching: learn the permutation that minimises the midpoint loss."""
from __future__ import annotations

from typing import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from graphs import Structure, permute

from .weight import weight_matching

__all__ = ["ste_matching"]


def ste_matching(structure: Structure, model: nn.Module, state_a: Mapping[str, Tensor],
                 state_b: Mapping[str, Tensor], data: Iterable, *, epochs: int = 1,
                 max_steps: int | None = 200, lr: float = 1e-3, alpha: float = 0.5,
                 loss_fn: Callable = F.cross_entropy, seed: int = 0, device=None,
                 init: Mapping[str, Tensor] | None = None, solver: str = "auto",
                 probe_examples: int = 1024, progress: bool = False) -> dict[str, Tensor]:
    """Permutations of B that minimise the loss at ``(1-alpha) A + alpha P(B)``.

    Git Re-Basin's straight-through estimator (Ainsworth et al.,
    https://arxiv.org/abs/2209.04836, section 3.3): a free copy ``W`` of B's weights is
    trained; every step projects it onto the permutations of B (weight matching of B to
    ``W``, warm-started), runs the midpoint network with the projected weights in the
    forward pass, and lets the gradient flow to ``W`` straight through the projection.

    Args:
        structure: from :func:`graphs.trace` on ``model``.
        model: the architecture; data: iterable of ``(x, y)`` batches.
        epochs (int, optional): passes over ``data``. (default: ``1``)
        max_steps (int, optional): stop after this many steps. (default: ``200``)
        lr (float, optional): Adam learning rate for ``W``. (default: ``1e-3``)
        alpha (float, optional): the point of the path whose loss is minimised. (default: ``0.5``)
        init (dict, optional): initial permutation (default: weight matching).

    Returns:
        Among the starting permutation and the projections reached at the end of each
        epoch (and at ``max_steps``), the one with the lowest midpoint loss on the first
        ``probe_examples`` examples of ``data`` (``dict[group, LongTensor]``).
    """
    device = torch.device(device) if device is not None else next(iter(state_a.values())).device
    torch.manual_seed(seed)
    a = {k: v.detach().to(device) for k, v in state_a.items()}
    b = {k: v.detach().to(device) for k, v in state_b.items()}
    perms = dict(init) if init is not None else weight_matching(structure, a, b, seed=seed, solver=solver, device=device)
    trainable = {k for k, v in b.items() if v.is_floating_point() and k in dict(model.named_parameters())}
    if not trainable:
        raise ValueError("ste_matching: the model has no floating-point parameters to train")
    pb = permute(structure, b, perms)
    w = {k: pb[k].clone().requires_grad_(True) for k in trainable}
    opt = torch.optim.Adam(w.values(), lr=lr)
    probe = []
    n_probe = 0
    for x, y in data:
        probe.append((x.to(device), y.to(device)))
        n_probe += len(x)
        if n_probe >= probe_examples:
            break

    def midpoint_loss(p) -> float:
        pbp = permute(structure, b, p)
        mid = {k: ((1 - alpha) * va + alpha * pbp[k]) if va.is_floating_point() else va for k, va in a.items()}
        with torch.no_grad():
            tot = sum(float(loss_fn(torch.func.functional_call(model, mid, (x,), tie_weights=False), y)) * len(y)
                      for x, y in probe)
        return tot / max(n_probe, 1)

    was_training = model.training
    model.eval()
    best, best_loss = dict(perms), midpoint_loss(perms)
    steps = 0
    bar = None
    total = max_steps if max_steps is not None else None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, desc="STE matching", unit="step", leave=False)
    try:
        for _ in range(epochs):
            for x, y in data:
                x, y = x.to(device), y.to(device)
                # project W onto the permutations of B (warm start: last projection)
                target = {k: (w[k].detach() if k in w else pb[k]) for k in pb}
                perms = weight_matching(structure, target, b, init=perms, seed=seed + steps, solver=solver,
                                        device=device, max_iter=20)
                pb = permute(structure, b, perms)
                mid = {}
                for k, va in a.items():
                    if k in w:
                        proj = pb[k] + (w[k] - w[k].detach())
                        mid[k] = (1 - alpha) * va + alpha * proj
                    elif va.is_floating_point():
                        mid[k] = (1 - alpha) * va + alpha * pb[k]
                    else:
                        mid[k] = va
                loss = loss_fn(torch.func.functional_call(model, mid, (x,), tie_weights=False), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                steps += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss.item():.3f}")
                if max_steps is not None and steps >= max_steps:
                    break
            # project the final W and keep the best permutation seen at epoch ends
            target = {k: (w[k].detach() if k in w else pb[k]) for k in pb}
            perms = weight_matching(structure, target, b, init=perms, seed=seed, solver=solver,
                                    device=device, max_iter=20)
            val = midpoint_loss(perms)
            if val < best_loss:
                best_loss, best = val, {g: p.clone() for g, p in perms.items()}
            if max_steps is not None and steps >= max_steps:
                break
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    return {g: p.cpu() for g, p in best.items()}
