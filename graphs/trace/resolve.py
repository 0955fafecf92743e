"""From factors to a :class:`~graphs.structure.Structure`: each tensor axis's factor tree
becomes an :class:`~graphs.structure.Axis` (free root factors are the groups, named after
the layer that produced them) and every fixed axis is reported with its reason."""
from __future__ import annotations

import torch.nn as nn

from .._factors import Factor, find, union
from ..structure import Axis, Cat, Layer, Prod, Structure, Unit, Unpermuted
from .rules_tensor import INDEX_BUFFER
from .run import Run

__all__ = ["build", "untraceable"]

# axes that are positions, not neurons: no symmetry to report there
_NOT_NEURON_AXES = ("kernel position",)


class _Namer:
    """Unique group names, from the root factors' own names where they have one."""

    def __init__(self) -> None:
        self.names: dict[int, str] = {}
        self.used: set[str] = set()

    def __call__(self, r: Factor) -> str:
        key = id(r)
        if key not in self.names:
            base = r.name or f"group{len(self.names)}"
            base = base.replace(":", ".")
            name, k = base, 1
            while name in self.used:
                k += 1
                name = f"{base}#{k}"
            self.used.add(name)
            self.names[key] = name
        return self.names[key]


def _resolve(f: Factor, namer: _Namer, fixed_out: list[Factor]) -> Axis:
    r = find(f)
    if r.fixed or r.size == 1:
        if r.size > 1:
            fixed_out.append(r)
        return Unit(None, r.size)
    if r.kind is None:
        return Unit(namer(r), r.size)
    parts = [_resolve(c, namer, fixed_out) for c in r.children]
    if r.kind == "prod":
        flat: list[Axis] = []
        for p in parts:
            if isinstance(p, Prod):
                flat.extend(p.parts)
            elif p.size > 1:
                flat.append(p)
        # merge neighbouring unpermuted factors
        merged: list[Axis] = []
        for p in flat:
            if merged and isinstance(p, Unit) and p.group is None and isinstance(merged[-1], Unit) \
                    and merged[-1].group is None:
                merged[-1] = Unit(None, merged[-1].size * p.size)
            else:
                merged.append(p)
        if not merged:
            return Unit(None, r.size)
        if len(merged) == 1:
            return merged[0]
        if all(isinstance(p, Unit) and p.group is None for p in merged):
            return Unit(None, r.size)
        return Prod(tuple(merged))
    if all(isinstance(p, Unit) and p.group is None for p in parts):
        return Unit(None, r.size)
    return Cat(tuple(parts))


def _first_fixed_reason(f: Factor) -> str:
    r = find(f)
    if r.fixed:
        return r.reason or "fixed"
    for c in r.children:
        s = _first_fixed_reason(c)
        if s:
            return s
    return ""


def untraceable(module: nn.Module, reason: str) -> Structure:
    """Every axis of every tensor unpermuted, for ``reason``."""
    state = module.state_dict()
    axes = {k: (None,) * v.dim() for k, v in state.items()}
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    unp = [Unpermuted(k, i, s, reason) for k, v in state.items() for i, s in enumerate(v.shape) if s > 1]
    return Structure._finish(axes, shapes, unp, [])


def _aliases(state: dict) -> dict[str, str]:
    """Tied tensors (one storage under several names): name -> the first name."""
    by_id: dict[int, str] = {}
    alias: dict[str, str] = {}
    for k, v in state.items():
        if v is None:
            continue
        key = hash((v.data_ptr(), tuple(v.shape), v.dtype) if v.numel() else id(v))
        if key in by_id and v.numel():
            alias[k] = by_id[key]
        else:
            by_id[key] = k
    return alias


def build(module: nn.Module, run: Run) -> Structure:
    """The structure of ``module`` from the labels of a finished :class:`Run`."""
    namer = _Namer()
    state = module.state_dict(keep_vars=True)
    alias = _aliases(state)
    # param labels recorded under the name the front end used; copy to aliases
    for k, a in alias.items():
        if k in run.params and a in run.params:
            for x, y in zip(run.params[k], run.params[a]):
                union(x, y, "tied tensors")
        elif k in run.params:
            run.params[a] = run.params[k]
    axes: dict[str, tuple] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    unp: list[Unpermuted] = []
    for k, v in state.items():
        if v is None:
            continue
        shapes[k] = tuple(v.shape)
        labels = run.params.get(k) or run.params.get(alias.get(k, ""))
        if labels is None:
            axes[k] = (None,) * v.dim()
            src = k if k in run.derived else alias.get(k) if alias.get(k) in run.derived else None
            if src is None:
                reason = "not used in the traced forward pass"
            elif v.is_floating_point() or v.is_complex():
                reason = f"used through a constant computed from it when traced ('{run.derived[src]}')"
            else:
                reason = INDEX_BUFFER
            if v.dim() and v.numel() > 1:
                for i, s in enumerate(v.shape):
                    if s > 1:
                        unp.append(Unpermuted(k, i, s, reason))
            continue
        ax = []
        for i, f in enumerate(labels):
            a = _resolve(f, namer, [])
            free = isinstance(a, Unit) and a.group is None
            ax.append(None if free else a)
            if v.shape[i] > 1 and free:
                reason = _first_fixed_reason(f) or "fixed"
                if not reason.startswith(_NOT_NEURON_AXES):
                    unp.append(Unpermuted(k, i, v.shape[i], reason))
        axes[k] = tuple(ax)
    layers = []
    for lay in run.layers:
        ins = _resolve(lay.inputs, namer, []) if isinstance(lay.inputs, Factor) else None
        outs = _resolve(lay.output, namer, []) if isinstance(lay.output, Factor) else None
        layers.append(Layer(lay.name, lay.kind, lay.tensors, ins, outs, lay.activation, lay.sources, lay.attrs))
    out = Structure._finish(axes, shapes, unp, layers)
    out.outputs = run.outputs
    out.buffers = frozenset(name for name, _ in module.named_buffers())
    return out
