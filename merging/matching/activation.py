"""Activation matching: pair units whose activations correlate best on data."""
from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import Tensor, nn

from graphs import Structure, axis_groups
from graphs.structure import _rows

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
    return list(_rows(axis, group, x))


def activation_correlations(structure: Structure, model: nn.Module, state_a: Mapping[str, Tensor],
                            state_b: Mapping[str, Tensor], data: Iterable, *,
                            max_examples: int = 512, device=None, progress: bool = False,
                            sites: str = "inputs") -> dict[str, Tensor]:
    """Correlation matrices ``C[g][i, j] = corr(unit i of A, unit j of B)`` per group.

    Activations are read with forward hooks on the traced layers; a group seen at several
    sites (a residual stream) sums its correlations. Groups seen nowhere are absent from the
    result. ``sites``:

    - ``"inputs"`` (the default): what the linear and convolution layers read, i.e. after the
      nonlinearity, the residual add and pooling, so a residual stream is seen as the sum it
      carries (as REPAIR matches ResNets, Jordan et al., https://arxiv.org/abs/2211.08403, and
      Git Re-Basin matches post-activation units); a group that no such layer reads falls
      back to the outputs of the layers that write it;
    - ``"outputs"``: the outputs of the layers (linear, convolution, normalisation,
      attention), i.e. pre-activations and each residual branch on its own;
    - ``"both"``: the sum of the two.

    On BatchNorm ResNet-20 pairs and MLPs on digits and MNIST, ``"inputs"`` left the lowest
    or an equal barrier (docs/width-sweep.md).
    """
    if sites not in ("outputs", "inputs", "both"):
        raise ValueError(f"activation_correlations: sites must be 'outputs', 'inputs' or 'both', got {sites!r}")
    device = torch.device(device) if device is not None else next(iter(state_a.values())).device
    watch = []  # (key, layer name, axis, feature layout kind, reads the input)
    modules = dict(model.named_modules())
    readers = [lay for lay in structure.layers if lay.name in modules and lay.kind in ("linear", "conv")
               and lay.inputs is not None and axis_groups(lay.inputs)]
    read = {g for lay in readers for g in axis_groups(lay.inputs)} if sites == "inputs" else set()
    for lay in structure.layers:
        if lay.name not in modules:
            continue
        # with "inputs", a layer's output is watched only for groups no layer reads (the fallback)
        if lay.output is not None and set(axis_groups(lay.output)) - read:
            watch.append((lay.name + ":out", lay, lay.output, lay.kind, False))
        if sites != "outputs" and lay in readers:
            watch.append((lay.name + ":in", lay, lay.inputs, lay.kind, True))
    moments: dict[tuple[str, int], _Moments] = {}
    captured: dict[str, Tensor] = {}

    def hook(key, reads_input):
        def fn(_m, inp, out=None):
            x = inp if reads_input else out
            captured[key] = x[0] if isinstance(x, (tuple, list)) else x
        return fn

    handles = [modules[lay.name].register_forward_pre_hook(hook(key, True)) if reads_input
               else modules[lay.name].register_forward_hook(hook(key, False))
               for key, lay, _, _, reads_input in watch]
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
                for site, (key0, lay, axis, kind, reads_input) in enumerate(watch):
                    if key0 not in acts[0]:
                        continue
                    for g in sorted(set(axis_groups(axis)) - (set() if reads_input else read)):
                        ra = _feature_rows(acts[0][key0], kind, axis, g)
                        rb = _feature_rows(acts[1][key0], kind, axis, g)
                        for k, (a, b) in enumerate(zip(ra, rb)):
                            key = (g, site * 16 + k)
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
                        device=None, solver: str = "auto", progress: bool = False,
                        sites: str = "inputs") -> dict[str, Tensor]:
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
        sites (str, optional): where activations are read, see
            :func:`activation_correlations`. (default: ``"outputs"``)

    Returns:
        ``dict[group, LongTensor]``.
    """
    corr = activation_correlations(structure, model, state_a, state_b, data, max_examples=max_examples,
                                   device=device, progress=progress, sites=sites)
    perms = {g: solve_assignment(c, solver=solver).cpu() for g, c in corr.items()}
    rest = [g for g in structure.groups if g not in perms]
    if rest:
        perms = weight_matching(structure, state_a, state_b, init=perms, groups=rest, solver=solver,
                                device=device)
    for g, grp in structure.groups.items():
        perms.setdefault(g, torch.arange(grp.size))
    return perms
