"""Activation matching: pair units whose activations correlate best on data."""
from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import Tensor, nn

from graphs import Structure, axis_groups, axis_rows

from ._solve import solve_assignment
from .weight import weight_matching

__all__ = ["activation_matching", "activation_correlations"]

# feature axis of a layer's output, by layer kind
_CHANNEL_FIRST = {"conv", "conv_transpose", "batchnorm", "instancenorm", "groupnorm"}


class _Moments:
    """Running first and second moments of two unit sets, in float64."""

    def __init__(self, n: int, device) -> None:
        z = lambda *s: torch.zeros(*s, dtype=torch.float64, device=device)  # noqa: E731
        self.count = 0
        self.sa, self.sb, self.saa, self.sbb = z(n), z(n), z(n), z(n)
        self.sab = z(n, n)

    def add(self, a: Tensor, b: Tensor) -> None:
        # a, b: (n, samples)
        a, b = a.double(), b.double()   # float64 sums: stable for the few thousand samples used
        self.count += a.shape[1]
        self.sa += a.sum(1)
        self.sb += b.sum(1)
        self.saa += (a * a).sum(1)
        self.sbb += (b * b).sum(1)
        self.sab += a @ b.T

    def correlation(self, eps: float = 1e-8) -> Tensor:
        n = max(self.count, 1)
        ma, mb = self.sa / n, self.sb / n
        va = (self.saa / n - ma * ma).clamp_min(0)
        vb = (self.sbb / n - mb * mb).clamp_min(0)
        cov = self.sab / n - ma[:, None] * mb[None, :]
        return cov / (va.sqrt()[:, None] * vb.sqrt()[None, :] + eps)


def _feature_rows(x: Tensor, kind: str, axis, group: str) -> list[Tensor]:
    if isinstance(x, (tuple, list)):
        x = x[0]
    if kind in _CHANNEL_FIRST:
        x = x.movedim(1, 0)
    else:
        x = x.movedim(-1, 0)
    x = x.reshape(x.shape[0], -1)
    return list(axis_rows(axis, group, x))


def activation_correlations(structure: Structure, model: nn.Module, state_a: Mapping[str, Tensor],
                            state_b: Mapping[str, Tensor], data: Iterable, *,
                            max_examples: int = 512, device=None, progress: bool = False) -> dict[str, Tensor]:
    """Correlation matrices ``C[g][i, j] = corr(unit i of A, unit j of B)`` per group.

    Activations are read with forward hooks at the outputs of the traced layers (linear,
    convolution, normalisation, attention); a group seen at several sites (a residual
    stream) sums its correlations. Groups seen nowhere are absent from the result.
    """
    device = torch.device(device) if device is not None else next(iter(state_a.values())).device
    sites = []
    modules = dict(model.named_modules())
    for lay in structure.layers:
        if lay.output is None or lay.name not in modules:
            continue
        gs = sorted(set(axis_groups(lay.output)))
        if gs:
            sites.append((lay, gs))
    moments: dict[tuple[str, int], _Moments] = {}
    captured: dict[str, Tensor] = {}

    def hook(name):
        def fn(_m, _i, out):
            captured[name] = out[0] if isinstance(out, (tuple, list)) else out
        return fn

    handles = [modules[lay.name].register_forward_hook(hook(lay.name)) for lay, _ in sites]
    was_training = model.training
    model.eval()
    seen = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=max_examples, desc="activations", unit="ex", leave=False)
    try:
        with torch.no_grad():
            for batch in data:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                x = x[: max_examples - seen].to(device)
                acts = []
                for st in (state_a, state_b):
                    captured.clear()
                    torch.func.functional_call(model, dict(st), (x,), tie_weights=False)
                    acts.append(dict(captured))
                for lay, gs in sites:
                    if lay.name not in acts[0]:
                        continue
                    for g in gs:
                        ra = _feature_rows(acts[0][lay.name], lay.kind, lay.output, g)
                        rb = _feature_rows(acts[1][lay.name], lay.kind, lay.output, g)
                        for k, (a, b) in enumerate(zip(ra, rb)):
                            key = (g, id(lay) * 16 + k)
                            if key not in moments:
                                moments[key] = _Moments(a.shape[0], device)
                            moments[key].add(a, b)
                seen += x.shape[0]
                if bar is not None:
                    bar.update(x.shape[0])
                if seen >= max_examples:
                    break
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        if bar is not None:
            bar.close()
    if seen == 0:
        raise ValueError("activation_matching: the data yielded no examples")
    out: dict[str, Tensor] = {}
    for (g, _), m in moments.items():
        c = m.correlation()
        out[g] = out[g] + c if g in out else c
    return out


def activation_matching(structure: Structure, model: nn.Module, state_a: Mapping[str, Tensor],
                        state_b: Mapping[str, Tensor], data: Iterable, *, max_examples: int = 512,
                        device=None, solver: str = "auto", progress: bool = False) -> dict[str, Tensor]:
    """Permutations of B's units that maximise the correlation of activations with A's.

    Git Re-Basin's activation matching (Ainsworth et al., https://arxiv.org/abs/2209.04836,
    section 3.1): for each group, the Pearson correlation between A's and B's units over
    ``max_examples`` inputs, then one linear assignment. Groups without an observable
    activation (inside attention: heads, query/key and value dimensions) are aligned by
    weight matching with the activation-matched groups held fixed.

    Args:
        structure: from :func:`graphs.trace` on ``model``.
        model: the architecture (its own weights are not used).
        state_a, state_b: the two networks.
        data: iterable of ``(x, y)`` batches (only ``x`` is used).
        max_examples (int, optional): inputs to read. (default: ``512``)

    Returns:
        ``dict[group, LongTensor]``.
    """
    corr = activation_correlations(structure, model, state_a, state_b, data, max_examples=max_examples,
                                   device=device, progress=progress)
    perms = {g: solve_assignment(c, solver=solver).cpu() for g, c in corr.items()}
    rest = [g for g in structure.groups if g not in perms]
    if rest:
        perms = weight_matching(structure, state_a, state_b, init=perms, groups=rest, solver=solver,
                                device=device)
    for g, grp in structure.groups.items():
        perms.setdefault(g, torch.arange(grp.size))
    return perms
