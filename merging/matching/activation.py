"""Activation matching: pair units whose activations correlate best on data."""
from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import Tensor, nn

from graphs import Cat, Prod, Structure, Unit, axis_groups, axis_rows, product_block, product_blocks

from ._solve import solve_assignment
from .starts import from_two_starts
from .weight import weight_matching_result

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


def _features(x: Tensor, kind: str) -> Tensor:
    """A layer's output as ``(features, samples)``."""
    if isinstance(x, (tuple, list)):
        x = x[0]
    x = x.movedim(1, 0) if kind in _CHANNEL_FIRST else x.movedim(-1, 0)
    return x.reshape(x.shape[0], -1)


def _feature_rows(x: Tensor, kind: str, axis, group: str) -> list[Tensor]:
    return list(axis_rows(axis, group, _features(x, kind)))


def _entangled(axis, group: str) -> bool:
    """Whether ``group`` appears in ``axis`` inside a product with another permuted group (a head's
    dimensions within the heads): its units then pair up only once the other group is solved, so
    their correlations here would compare the wrong units."""
    if isinstance(axis, Unit):
        return False
    if isinstance(axis, Cat):
        return any(_entangled(p, group) for p in axis.parts)
    if isinstance(axis, Prod):
        holding = [p for p in axis.parts if group in axis_groups(p)]
        if holding and any(axis_groups(p) and p not in holding for p in axis.parts):
            return True
        return any(_entangled(p, group) for p in holding)
    return False


def _solve_nested(out: dict[str, Tensor], blocks: dict[tuple[str, str], Tensor], solver: str) -> None:
    """Add the similarities of entangled groups to ``out``: outer units (heads) by the best
    matching of their inner units (each pair of heads' dimensions matched on its own), then the
    inner units (dimensions) summed over the matched heads."""
    for outer in sorted({o for o, _ in blocks}):
        inner = [(q, c) for (o, q), c in blocks.items() if o == outer]
        sim = out.get(outer)
        n = inner[0][1].shape[0]
        sim = torch.zeros(n, n, dtype=torch.float64, device=inner[0][1].device) if sim is None else sim.clone()
        for _, c in inner:
            for k in range(n):
                for k2 in range(n):
                    sub = c[k, :, k2, :]
                    pk = solve_assignment(sub, solver=solver).to(sub.device)
                    sim[k, k2] += sub[torch.arange(len(pk), device=sub.device), pk].sum()
        out[outer] = sim
        heads = solve_assignment(sim, solver=solver).to(sim.device)
        for q, c in inner:
            m = c[torch.arange(n, device=c.device), :, heads, :].sum(0)
            out[q] = out[q] + m if q in out else m


def _fits(x: Tensor, kind: str, axis) -> bool:
    """Whether a captured tensor has the feature axis ``axis`` where the layer's kind puts it."""
    if isinstance(x, (tuple, list)):
        x = x[0]
    if not isinstance(x, Tensor) or x.ndim == 0:
        return False
    dim = 1 if kind in _CHANNEL_FIRST and x.ndim > 1 else -1
    return x.shape[dim] == axis.size


_SITES = ("auto", "inputs", "outputs", "both")


def _has_attention(structure: Structure) -> bool:
    """Whether the structure has attention: a layer of that kind, or groups laid out as heads."""
    return any(lay.kind == "attention" or (lay.output is not None and product_blocks(lay.output))
               for lay in structure.layers)


def activation_correlations(structure: Structure, model: nn.Module, state_a: Mapping[str, Tensor],
                            state_b: Mapping[str, Tensor], data: Iterable, *,
                            max_examples: int = 512, device=None, progress: bool = False,
                            solver: str = "auto", sites: str = "auto") -> dict[str, Tensor]:
    """Correlation matrices ``C[g][i, j] = corr(unit i of A, unit j of B)`` per group.

    Activations are read with forward hooks on the traced layers; a group seen at several
    sites (a residual stream) sums its correlations. Groups seen nowhere are absent from the
    result. ``sites``:

    - ``"auto"`` (the default): ``"inputs"`` for networks without attention, ``"outputs"`` for
      those with it (on a small GPT-2 pair reading the inputs left a higher midpoint perplexity
      than naive averaging; reading them in transformers is not studied further here);
    - ``"inputs"``: what the linear and convolution layers read, i.e. after the
      nonlinearity, the residual add and pooling, so a residual stream is seen as the sum it
      carries (as REPAIR matches ResNets, Jordan et al., https://arxiv.org/abs/2211.08403, and
      Git Re-Basin matches post-activation units); a group that no such layer reads falls
      back to the outputs of the layers that write it;
    - ``"outputs"``: the outputs of the layers (linear, convolution, normalisation,
      attention), i.e. pre-activations and each residual branch on its own;
    - ``"both"``: the sum of the two.

    On BatchNorm ResNet-20 pairs (digits and MNIST) and MLPs (digits), ``"inputs"`` left a
    lower or equal barrier than ``"outputs"`` (docs/width-sweep.md).

    Two groups laid out as a product (attention heads, and the dimensions inside each head)
    cannot be correlated unit by unit, since a head's dimensions pair up only with those of the
    head it is matched to: the heads' similarity is the best matching of their dimensions' (one
    small assignment per pair of heads, with ``solver``), and the dimensions' is summed over the
    heads so matched.
    """
    if sites not in _SITES:
        raise ValueError(f"activation_correlations: sites must be one of {', '.join(_SITES)}; got {sites!r}")
    if sites == "auto":
        sites = "outputs" if _has_attention(structure) else "inputs"
    device = torch.device(device) if device is not None else next(iter(state_a.values())).device
    modules = dict(model.named_modules())

    def plain(axis) -> list[str]:
        return sorted(g for g in set(axis_groups(axis)) if not _entangled(axis, g))

    # (key, layer, axis, kind, reads its input, groups, product blocks)
    watch: list[tuple] = []
    if sites != "outputs":
        for lay in structure.layers:
            if lay.kind in ("linear", "conv") and lay.inputs is not None and lay.name in modules and plain(lay.inputs):
                watch.append((lay.name + ":in", lay, lay.inputs, lay.kind, True, plain(lay.inputs), []))
    read = {g for w in watch for g in w[5]} if sites == "inputs" else set()
    for lay in structure.layers:
        if lay.output is None or lay.name not in modules:
            continue
        # with "inputs", an output counts only for the groups no layer's input shows (the fallback)
        gs = [g for g in plain(lay.output) if g not in read]
        nested = product_blocks(lay.output)
        if gs or nested:
            watch.append((lay.name + ":out", lay, lay.output, lay.kind, False, gs, nested))
    moments: dict[tuple, _Moments] = {}
    captured: dict[str, Tensor] = {}

    def hook(key, reads_input):
        def fn(_m, inp, out=None):
            x = inp if reads_input else out
            captured[key] = x[0] if isinstance(x, (tuple, list)) else x
        return fn

    handles = [modules[lay.name].register_forward_pre_hook(hook(key, True)) if reads_input
               else modules[lay.name].register_forward_hook(hook(key, False))
               for key, lay, _, _, reads_input, _, _ in watch]
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
                for site, (name, lay, axis, kind, _, gs, nested) in enumerate(watch):
                    if name not in acts[0] or not _fits(acts[0][name], kind, axis):
                        continue  # e.g. a tied embedding named after the output layer that shares it
                    if nested:
                        fa, fb = (_features(acts[i][name], kind) for i in (0, 1))
                        for idx, (off, prod, i, j) in enumerate(nested):
                            a, b = (product_block(f, off, prod, i, j).flatten(0, 1) for f in (fa, fb))
                            key = ((prod.parts[i].group, prod.parts[j].group), site * 16 + idx)
                            if key not in moments:
                                moments[key] = _Moments(a.shape[0], device)
                            moments[key].add(a, b)
                    for g in gs:
                        ra = _feature_rows(acts[0][name], kind, axis, g)
                        rb = _feature_rows(acts[1][name], kind, axis, g)
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
    blocks: dict[tuple[str, str], Tensor] = {}
    for (g, _), m in moments.items():
        c = m.correlation()
        if isinstance(g, tuple):  # (outer, inner): heads x dimensions
            no, ni = structure.groups[g[0]].size, structure.groups[g[1]].size
            c = c.reshape(no, ni, no, ni)
            blocks[g] = blocks[g] + c if g in blocks else c
        else:
            out[g] = out[g] + c if g in out else c
    if blocks:
        _solve_nested(out, blocks, solver)
    return out


def activation_matching(structure: Structure, model: nn.Module, state_a: Mapping[str, Tensor],
                        state_b: Mapping[str, Tensor], data: Iterable, *, max_examples: int = 512,
                        device=None, solver: str = "auto", progress: bool = False,
                        sites: str = "auto") -> dict[str, Tensor]:
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
            :func:`activation_correlations`. (default: ``"auto"``)

    Returns:
        ``dict[group, LongTensor]``.
    """
    corr = activation_correlations(structure, model, state_a, state_b, data, max_examples=max_examples,
                                   device=device, progress=progress, solver=solver, sites=sites)
    perms = {g: solve_assignment(c, solver=solver).cpu() for g, c in corr.items()}
    rest = [g for g in structure.groups if g not in perms]
    if rest:  # weight matching of the others, from the identity and from unit signatures, the better
        observed = perms

        def run(init):
            start = observed if init is None else {**init, **observed}
            return weight_matching_result(structure, state_a, state_b, init=start, groups=rest, solver=solver,
                                          device=device)

        perms = from_two_starts(run, structure, state_a, state_b, solver=solver).perms
    for g, grp in structure.groups.items():
        perms.setdefault(g, torch.arange(grp.size))
    return perms
