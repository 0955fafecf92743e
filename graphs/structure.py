"""The permutation symmetry of a network: groups, tensor axes, and the action on weights.

A :class:`Structure` says, for every parameter and buffer of a network, which
permutation group acts on each of its axes.  An axis is described by a small tree:

* :class:`Unit` -- one group (or ``None``: not permuted) acting on the whole axis;
* :class:`Prod` -- the axis is a row-major product of factors, e.g. a flattened
  ``C x H x W`` feature map (``Prod(Unit("conv3", C), Unit(None, H * W))``) or the
  ``heads x head_dim`` layout of attention (heads permute as blocks, the dimensions
  inside a head permute consistently);
* :class:`Cat` -- the axis is a concatenation, e.g. the packed ``[q; k; v]`` rows of
  ``nn.MultiheadAttention.in_proj_weight`` or the input of a layer after ``torch.cat``.

A permutation of the network is a ``dict[group_name, LongTensor]`` with the convention
``new[i] = old[perm[i]]`` along every axis the group acts on.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping, Union

import torch
from torch import Tensor

StateDict = dict[str, Tensor]
PermDict = dict[str, Tensor]


@dataclass(frozen=True)
class Unit:
    """One group acting on ``size`` consecutive entries (``group=None``: not permuted)."""

    group: str | None
    size: int

    def __str__(self) -> str:
        return f"{self.group}" if self.group is not None else f"·{self.size}"


@dataclass(frozen=True)
class Prod:
    """Row-major product of factors (the first factor is the slowest-moving index)."""

    parts: tuple["Axis", ...]

    @property
    def size(self) -> int:
        n = 1
        for p in self.parts:
            n *= p.size
        return n

    def __str__(self) -> str:
        return "(" + " x ".join(str(p) for p in self.parts) + ")"


@dataclass(frozen=True)
class Cat:
    """Concatenation of consecutive segments."""

    parts: tuple["Axis", ...]

    @property
    def size(self) -> int:
        return sum(p.size for p in self.parts)

    def __str__(self) -> str:
        return "[" + " | ".join(str(p) for p in self.parts) + "]"


Axis = Union[Unit, Prod, Cat]


def axis_groups(axis: Axis | None) -> list[str]:
    """Names of the groups that act on ``axis``, in order of appearance (with repeats)."""
    if axis is None:
        return []
    if isinstance(axis, Unit):
        return [axis.group] if axis.group is not None else []
    return [g for p in axis.parts for g in axis_groups(p)]


def product_blocks(axis: Axis | None) -> list[tuple[int, Prod, int, int]]:
    """The products of exactly two permuted groups in ``axis`` (at the top or one level inside a
    concatenation; the other factors unpermuted): ``(offset, product, outer part, inner part)``.

    Attention heads and the dimensions inside each head, as a fused or a separate q/k/v projection
    lays them out: the inner group's units pair up only within the outer units matched to each other.
    """
    def two(p: Prod) -> tuple[int, int] | None:
        held = [i for i, q in enumerate(p.parts) if axis_groups(q)]
        if len(held) == 2 and all(isinstance(p.parts[i], Unit) for i in held):
            return held[0], held[1]
        return None

    if axis is None:
        return []
    found, off = [], 0
    for part in (axis.parts if isinstance(axis, Cat) else (axis,)):
        if isinstance(part, Prod) and (ij := two(part)) is not None:
            found.append((off, part, *ij))
        off += part.size
    return found


def product_block(t: Tensor, off: int, prod: Prod, i: int, j: int) -> Tensor:
    """The block of a :func:`product_blocks` entry in ``t`` (the axis first): shape
    ``(outer, inner, rest)``, the unpermuted factors and ``t``'s other axes flattened into ``rest``."""
    sizes = [q.size for q in prod.parts]
    rest = [d for d in range(len(sizes)) if d not in (i, j)]
    t = t[off:off + prod.size].reshape(*sizes, -1)
    return t.permute(i, j, *rest, len(sizes)).reshape(sizes[i], sizes[j], -1)


def _axis_to_json(axis: Axis | None):
    if axis is None:
        return None
    if isinstance(axis, Unit):
        return axis.group if axis.group is not None else axis.size
    return {type(axis).__name__.lower(): [_axis_to_json(p) for p in axis.parts]}


def _axis_from_json(obj, size: int | None, sizes: Mapping[str, int]) -> Axis | None:
    if obj is None:
        return None
    if isinstance(obj, str):
        return Unit(obj, sizes[obj])
    if isinstance(obj, int):
        return Unit(None, obj)
    (kind, parts), = obj.items()
    parts = tuple(_axis_from_json(p, None, sizes) for p in parts)
    return Prod(parts) if kind == "prod" else Cat(parts)


@dataclass(frozen=True)
class Group:
    """A set of hidden units (or channels) that can be permuted together."""

    name: str
    size: int
    members: tuple[tuple[str, int], ...] = ()  # (tensor name, axis) pairs it acts on

    def __repr__(self) -> str:
        return f"Group({self.name!r}, size={self.size}, tensors={len(self.members)})"


@dataclass(frozen=True)
class Unpermuted:
    """An axis (of size > 1) that is left unpermuted, and why."""

    tensor: str
    axis: int
    size: int
    reason: str

    def __str__(self) -> str:
        return f"{self.tensor}[axis {self.axis}, {self.size}]: {self.reason}"


@dataclass
class Layer:
    """One parametric layer in forward order (used by parameter graphs and hypernetworks).

    Attributes:
        name: the module's qualified name (or the functional call's parameter name).
        kind: ``linear``, ``linear_t`` (a linear layer whose weight is stored ``(in, out)``, as
            transformers' ``Conv1D``), ``conv``, ``conv_transpose``, ``batchnorm``, ``instancenorm``,
            ``layernorm``, ``groupnorm``, ``embedding`` or ``attention``.
        tensors: role (``weight``, ``bias``, ``running_mean``, ``in_proj_weight``, ...) ->
            state-dict name.
        inputs, output: the axes of the layer's input and output features.
        activation: the elementwise function applied right after it, if any.
        sources: the layers whose outputs reach this layer's input through parameter-free
            operations only (activations, pooling, reshapes, residual adds, concatenation);
            ``"input"`` is the model input, ``"opaque:NAME"`` a submodule that could not
            be traced; in forward order. Several sources mean a residual add or a cat.
        attrs: kind-specific facts: ``groups`` (convolutions), ``num_heads``,
            ``batch_first``, ``kdim``, ``vdim`` and ``q/k/v_sources`` (attention),
            ``normalized_shape`` (layer norm), ``functional`` (a ``torch.nn.functional`` call).
    """

    name: str
    kind: str
    tensors: dict[str, str]
    inputs: Axis | None = None
    output: Axis | None = None
    activation: str | None = None
    sources: tuple[str, ...] = ()
    attrs: dict = field(default_factory=dict)


@dataclass
class Structure:
    """The permutation symmetry of a network's state dict.

    Attributes:
        groups: group name -> :class:`Group`.
        axes: tensor name -> one entry per axis (an :class:`Axis` tree, or ``None`` when
            no group acts on that axis). Every tensor of the state dict is listed.
        shapes: tensor name -> shape.
        unpermuted: the axes of size > 1 that are deliberately left alone, with reasons
            (model inputs and outputs, operations the tracer cannot prove safe, ...).
        layers: parametric layers in forward order.
        outputs: the layers whose outputs reach the model's output through
            parameter-free operations (see :attr:`Layer.sources`).
        buffers: names of tensors that are buffers, not parameters (BatchNorm running
            statistics): permuted like the rest, but not evidence for matching.
        front_end: the tracer's front end that captured the graph, ``"fx"`` or
            ``"export"`` (``torch.export``); ``None`` for a hand-written structure.
    """

    def is_buffer(self, name: str) -> bool:
        """Buffer, not parameter (from the trace; by name for hand-written structures)."""
        if self.buffers:
            return name in self.buffers
        return name.endswith(("running_mean", "running_var", "num_batches_tracked"))

    groups: dict[str, Group]
    axes: dict[str, tuple[Axis | None, ...]]
    shapes: dict[str, tuple[int, ...]]
    unpermuted: list[Unpermuted] = field(default_factory=list)
    layers: list[Layer] = field(default_factory=list)
    outputs: tuple[str, ...] = ()
    buffers: frozenset = frozenset()
    front_end: str | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_axes(
        cls,
        axes_to_group: Mapping[str, Iterable[str | Axis | None]],
        shapes: Mapping[str, Iterable[int]] | Mapping[str, Tensor],
    ) -> "Structure":
        """A hand-written structure, like Git Re-Basin's ``axes_to_perm``.

        Args:
            axes_to_group: tensor name -> one entry per axis: a group name, ``None``, or an
                :class:`Axis` tree for composite axes.
            shapes: tensor name -> shape, or a state dict (shapes are read from it).

        Raises:
            ValueError: a tensor is missing from ``shapes``, the number of axes is wrong,
                or one group is given two different sizes.

        Example:
            >>> s = Structure.from_axes({"0.weight": ("h", None), "0.bias": ("h",),
            ...                          "2.weight": (None, "h")},
            ...                         {"0.weight": (8, 4), "0.bias": (8,), "2.weight": (3, 8)})
            >>> s.groups["h"].size
            8
        """
        shp = {k: tuple(v.shape) if isinstance(v, Tensor) else tuple(int(x) for x in v)
               for k, v in shapes.items()}
        sizes: dict[str, int] = {}
        axes: dict[str, tuple[Axis | None, ...]] = {}

        def note(g: str, n: int, where: str) -> None:
            if sizes.setdefault(g, n) != n:
                raise ValueError(f"Structure.from_axes: group {g!r} has size {sizes[g]} "
                                 f"elsewhere but {n} at {where}")

        def visit(a: Axis, where: str) -> None:
            if isinstance(a, Unit):
                if a.group is not None:
                    note(a.group, a.size, where)
            else:
                for p in a.parts:
                    visit(p, where)

        for name, spec in axes_to_group.items():
            if name not in shp:
                raise ValueError(f"Structure.from_axes: tensor {name!r} has no shape")
            spec = tuple(spec)
            if len(spec) != len(shp[name]):
                raise ValueError(f"Structure.from_axes: {name!r} has {len(shp[name])} axes "
                                 f"(shape {shp[name]}) but {len(spec)} entries were given")
            out: list[Axis | None] = []
            for i, (a, n) in enumerate(zip(spec, shp[name])):
                if isinstance(a, str):
                    a = Unit(a, n)
                if a is not None:
                    if a.size != n:
                        raise ValueError(f"Structure.from_axes: {name!r} axis {i} has size {n}"
                                         f" but its spec {a} covers {a.size}")
                    visit(a, f"{name!r} axis {i}")
                out.append(a)
            axes[name] = tuple(out)
        for name, s in shp.items():
            axes.setdefault(name, (None,) * len(s))
        return cls._finish(axes, shp, [], [])

    @classmethod
    def _finish(cls, axes, shapes, unpermuted, layers) -> "Structure":
        members: dict[str, list[tuple[str, int]]] = {}
        sizes: dict[str, int] = {}

        def visit(a, key):
            if isinstance(a, Unit):
                if a.group is not None:
                    sizes[a.group] = a.size
                    if key not in members.setdefault(a.group, []):
                        members[a.group].append(key)
            elif a is not None:
                for p in a.parts:
                    visit(p, key)

        for name, ax in axes.items():
            for i, a in enumerate(ax):
                visit(a, (name, i))
        groups = {g: Group(g, sizes[g], tuple(members[g])) for g in members}
        return cls(groups, dict(axes), dict(shapes), list(unpermuted), list(layers))

    # ------------------------------------------------------------------ queries
    @property
    def num_parameters(self) -> int:
        n = 0
        for s in self.shapes.values():
            k = 1
            for d in s:
                k *= d
            n += k
        return n

    @property
    def permuted_fraction(self) -> float:
        """Fraction of the parameter elements (buffers excluded) that at least one group
        acts on (on any of their axes); 0.0 for a structure without parameters."""
        total = permuted = 0
        for k, ax in self.axes.items():
            if self.is_buffer(k):
                continue
            n = 1
            for d in self.shapes[k]:
                n *= d
            total += n
            if any(axis_groups(a) for a in ax):
                permuted += n
        return permuted / total if total else 0.0

    def __repr__(self) -> str:
        front = f", front_end={self.front_end!r}" if self.front_end is not None else ""
        return (f"Structure(groups={len(self.groups)}, tensors={len(self.axes)}, "
                f"unpermuted={len(self.unpermuted)}{front}, permuted={self.permuted_fraction:.0%})")

    def to_dict(self) -> dict:
        """A JSON-ready description (groups, axes, unpermuted, layers)."""
        return {
            "groups": {g.name: g.size for g in self.groups.values()},
            "tensors": {k: {"shape": list(self.shapes[k]),
                            "axes": [_axis_to_json(a) for a in ax]}
                        for k, ax in self.axes.items()},
            "unpermuted": [{"tensor": u.tensor, "axis": u.axis, "size": u.size,
                            "reason": u.reason} for u in self.unpermuted],
            "layers": [{"name": l.name, "kind": l.kind, "tensors": l.tensors,
                        "activation": l.activation, "sources": list(l.sources), "attrs": l.attrs,
                        "inputs": _axis_to_json(l.inputs), "output": _axis_to_json(l.output)}
                       for l in self.layers],
            "outputs": list(self.outputs),
            "buffers": sorted(self.buffers),
            "front_end": self.front_end,
            "permuted_fraction": self.permuted_fraction,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> "Structure":
        """Inverse of :meth:`to_dict` (layers keep names, kinds and tensors only)."""
        sizes = {k: int(v) for k, v in d["groups"].items()}
        axes = {k: tuple(_axis_from_json(a, None, sizes) for a in v["axes"])
                for k, v in d["tensors"].items()}
        shapes = {k: tuple(v["shape"]) for k, v in d["tensors"].items()}
        unp = [Unpermuted(u["tensor"], u["axis"], u["size"], u["reason"])
               for u in d.get("unpermuted", [])]
        layers = [Layer(l["name"], l["kind"], dict(l["tensors"]),
                        inputs=_axis_from_json(l.get("inputs"), None, sizes),
                        output=_axis_from_json(l.get("output"), None, sizes),
                        activation=l.get("activation"), sources=tuple(l.get("sources", ())),
                        attrs=dict(l.get("attrs", {})))
                  for l in d.get("layers", [])]
        out = cls._finish(axes, shapes, unp, layers)
        out.outputs = tuple(d.get("outputs", ()))
        out.buffers = frozenset(d.get("buffers", ()))
        out.front_end = d.get("front_end")
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


# ---------------------------------------------------------------------- the action
def axis_index(axis: Axis, perms: Mapping[str, Tensor], device) -> Tensor | None:
    """The index vector ``idx`` that applies ``perms`` to one tensor axis described by ``axis``:
    ``new = old.index_select(dim, idx)``; ``None`` when no group of ``axis`` is permuted (identity).

    Shapes:
        output: ``(axis.size,)`` LongTensor on ``device``.
    """
    if isinstance(axis, Unit):
        if axis.group is None or axis.group not in perms:
            return None
        return perms[axis.group].to(device=device, dtype=torch.long)
    subs = [axis_index(p, perms, device) for p in axis.parts]
    if all(s is None for s in subs):
        return None
    subs = [torch.arange(p.size, device=device) if s is None else s
            for s, p in zip(subs, axis.parts)]
    if isinstance(axis, Cat):
        out, off = [], 0
        for s, p in zip(subs, axis.parts):
            out.append(s + off)
            off += p.size
        return torch.cat(out)
    idx = subs[0]
    for s, p in zip(subs[1:], axis.parts[1:]):
        idx = (idx[:, None] * p.size + s[None, :]).reshape(-1)
    return idx


def permute_tensor(tensor: Tensor, axes: tuple[Axis | None, ...], perms: Mapping[str, Tensor],
                   name: str = "tensor") -> Tensor:
    """Apply ``perms`` to every axis of one tensor (a new tensor; the input is untouched)."""
    if tuple(tensor.shape) != tuple(a.size if a is not None else tensor.shape[i]
                                    for i, a in enumerate(axes)) or len(axes) != tensor.dim():
        raise ValueError(f"permute: {name!r} has shape {tuple(tensor.shape)}, which does not "
                         f"fit the structure's axes {[str(a) for a in axes]}")
    out = tensor
    for i, a in enumerate(axes):
        if a is None:
            continue
        idx = axis_index(a, perms, tensor.device)
        if idx is not None:
            out = out.index_select(i, idx)
    return out


def _check_perms(structure: Structure, perms: Mapping[str, Tensor]) -> None:
    for g, p in perms.items():
        if g not in structure.groups:
            raise KeyError(f"permute: unknown group {g!r}; the structure's groups are "
                           f"{sorted(structure.groups)}")
        n = structure.groups[g].size
        if p.dim() != 1 or p.numel() != n:
            raise ValueError(f"permute: permutation for group {g!r} has shape "
                             f"{tuple(p.shape)}; expected ({n},)")


def permute(structure: Structure, state: Mapping[str, Tensor],
            perms: Mapping[str, Tensor]) -> StateDict:
    """Apply a permutation of the hidden units to a state dict.

    Every axis of every tensor (parameters and buffers, e.g. BatchNorm running
    statistics) that a group acts on is permuted; tensors the structure does not know
    are passed through unchanged. Groups missing from ``perms`` stay as they are.

    Args:
        structure: from :func:`graphs.trace` or :meth:`Structure.from_axes`.
        state: name -> tensor (not modified).
        perms: group name -> LongTensor of shape ``(size,)``, ``new[i] = old[perm[i]]``.

    Returns:
        A new state dict computing the same function as ``state``.

    Raises:
        KeyError: a group in ``perms`` is not in the structure.
        ValueError: a permutation or a tensor has the wrong shape.
    """
    _check_perms(structure, perms)
    out: StateDict = {}
    for k, v in state.items():
        ax = structure.axes.get(k)
        out[k] = v if ax is None else permute_tensor(v, ax, perms, k)
    return out


def random_permutation(structure: Structure, seed: int | torch.Generator | None = None) -> PermDict:
    """A uniformly random permutation of every group (reproducible with ``seed``)."""
    if isinstance(seed, torch.Generator):
        gen = seed
    else:
        gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
    return {g: torch.randperm(grp.size, generator=gen) for g, grp in structure.groups.items()}


def identity_permutation(structure: Structure) -> PermDict:
    return {g: torch.arange(grp.size) for g, grp in structure.groups.items()}


def inverse_permutation(perms: Mapping[str, Tensor]) -> PermDict:
    """``permute(s, permute(s, x, p), inverse_permutation(p)) == x``."""
    return {g: torch.argsort(p) for g, p in perms.items()}


def compose_permutations(first: Mapping[str, Tensor], second: Mapping[str, Tensor]) -> PermDict:
    """The permutation that applies ``first`` and then ``second``.

    ``permute(s, permute(s, x, first), second) == permute(s, x, compose(first, second))``.
    A group missing from one side is the identity there.
    """
    out: PermDict = {}
    for g in set(first) | set(second):
        if g not in first:
            out[g] = second[g].clone()
        elif g not in second:
            out[g] = first[g].clone()
        else:
            out[g] = first[g][second[g].to(first[g].device)]
    return out


def group_rows(structure: Structure, state: Mapping[str, Tensor], group: str,
               perms: Mapping[str, Tensor] | None = None) -> Iterator[tuple[str, Tensor]]:
    """Every tensor slice that ``group`` acts on, as a matrix with one row per unit.

    For each (tensor, axis) occurrence of ``group``, yields ``(name, M)`` with ``M`` of
    shape ``(n, r)``: row ``u`` holds every entry that moves with unit ``u``. All other
    groups' permutations in ``perms`` are applied first (``group`` itself is left
    unpermuted), which is what weight matching needs. A group that appears several times
    on one axis (attention's packed ``[q; k; v]``) yields one matrix per occurrence.

    Shapes:
        M: ``(n, r)`` with ``n = structure.groups[group].size``.
    """
    others = {g: p for g, p in (perms or {}).items() if g != group}
    for name, axis_i in structure.groups[group].members:
        if name not in state:
            continue
        ax = structure.axes[name]
        t = permute_tensor(state[name], ax, others, name)
        t = t.movedim(axis_i, 0)
        for m in axis_rows(ax[axis_i], group, t.reshape(t.shape[0], -1)):
            yield name, m


def axis_rows(axis: Axis, group: str, t: Tensor) -> Iterator[Tensor]:
    """The ``(n, r)`` row views of ``t`` that ``group`` acts on along ``axis``: ``t`` has that axis
    as its first dimension and the rest flattened; one view per occurrence of ``group`` in ``axis``
    (a concatenation yields its parts', a product its blocks')."""
    if isinstance(axis, Unit):
        if axis.group == group:
            yield t
        return
    if isinstance(axis, Cat):
        off = 0
        for p in axis.parts:
            yield from axis_rows(p, group, t[off:off + p.size])
            off += p.size
        return
    sizes = [p.size for p in axis.parts]
    full = t.reshape(*sizes, t.shape[1])
    for i, p in enumerate(axis.parts):
        if group in axis_groups(p):
            ti = full.movedim(i, 0)
            yield from axis_rows(p, group, ti.reshape(p.size, -1))
