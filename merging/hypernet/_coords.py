"""Coordinates of every generated weight: the table a :class:`HyperNet` is evaluated on."""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from graphs import Structure
from graphs.structure import Axis, Cat, Prod, Unit

# continuous coordinates of one weight, in this order
COORDS = ("layer", "out", "in", "ky", "kx", "out_size", "in_size")
N_COORDS = len(COORDS)

# layer kinds whose parameters a hypernetwork generates (their tensors' axis 0 is the output
# axis, axis 1 the input axis, the rest kernel positions)
SUPPORTED_KINDS = ("linear", "conv", "batchnorm", "layernorm", "groupnorm", "instancenorm")


@dataclass
class AxisInfo:
    """What the coordinates need to know about one axis of a generated tensor."""

    group: str | None   # the hidden group on it (None: a fixed axis, the network's input or output)
    size: int           # units of the group (or the whole axis when fixed)
    sub: int            # entries per unit (a flattened C x H x W axis has H * W), else 1


def axis_info(axis: Axis | None, length: int, where: str) -> AxisInfo:
    if axis is None:
        return AxisInfo(None, length, 1)
    if isinstance(axis, Unit):
        return AxisInfo(axis.group, axis.size, 1)
    if isinstance(axis, Prod) and len(axis.parts) == 2 and all(isinstance(p, Unit) for p in axis.parts) \
            and axis.parts[1].group is None:
        first = axis.parts[0]
        return AxisInfo(first.group, first.size, axis.parts[1].size)
    kind = "concatenated" if isinstance(axis, Cat) else "composite"
    raise ValueError(f"hypernet: {where} has a {kind} axis {axis}, which the hypernetwork's coordinates do "
                     "not cover (supported: one group, or one group times a flattened feature map)")


def resize_structure(full: Structure, shapes: Mapping[str, tuple[int, ...]], *, where: str = "model") -> Structure:
    """The structure of the same family at other widths: ``full``'s axes with the groups resized.

    Args:
        full: the traced structure at full width.
        shapes: tensor name -> shape of the network at the new width.

    Raises:
        ValueError: a tensor is missing or its shape does not fit the resized groups.
    """
    sizes: dict[str, int] = {}
    missing = [k for k in full.axes if k not in shapes]
    if missing:
        raise ValueError(f"hypernet: the {where} has no tensor {missing[0]!r} of the trained family")
    for name, axes in full.axes.items():
        for i, a in enumerate(axes):
            if a is None:
                continue
            try:
                info = axis_info(a, full.shapes[name][i], f"{name!r} axis {i}")
            except ValueError:  # a composite axis: its groups are sized where they appear alone
                continue
            if info.group is not None:
                n, rem = divmod(shapes[name][i], info.sub)
                if rem:
                    raise ValueError(f"hypernet: {name!r} axis {i} of the {where} has {shapes[name][i]} entries, "
                                     f"not a multiple of {info.sub}")
                sizes.setdefault(info.group, n)

    def resize(a: Axis) -> Axis:
        if isinstance(a, Unit):
            return Unit(a.group, sizes.get(a.group, a.size)) if a.group is not None else a
        return type(a)(tuple(resize(p) for p in a.parts))

    axes = {k: tuple(resize(a) if a is not None else None for a in ax) for k, ax in full.axes.items()}
    for k, ax in axes.items():
        want = tuple(a.size if a is not None else shapes[k][i] for i, a in enumerate(ax))
        if tuple(shapes[k]) != want or len(shapes[k]) != len(ax):
            raise ValueError(f"hypernet: {k!r} of the {where} has shape {tuple(shapes[k])}, which does not fit the "
                             f"trained family's structure resized to the groups {sizes} (expected {want})")
    out = Structure._finish(axes, {k: tuple(shapes[k]) for k in axes}, [], full.layers)
    out.outputs = full.outputs
    out.buffers = full.buffers
    return out


@dataclass
class CoordTable:
    """The coordinate rows of one network: one row per output unit and per input entry of each layer.

    A generated weight ``W[i, j, k]`` of layer ``l`` is the inner product of the trunk's features
    of output row ``i`` and input row ``(j, k)`` of that layer (see :class:`HyperNet`).

    Attributes:
        coords: ``(M, 7)`` continuous coordinates (see ``COORDS``).
        cell: ``(M,)`` half the spacing of units along the row's axis (0 on fixed axes): the range
            of the coordinate noise.
        layer: ``(M,)`` the layer of each row; side: ``(M,)`` 0 for output rows, 1 for input rows.
        index: ``(M,)`` row of the fixed-axis embedding table (0: a hidden axis).
        grid_offset, grid_res: ``(M, K)`` first cell and resolution of each level of the row's
            feature grid (resolution 0: a fixed axis, no grid).
        spans: per layer ``(out_start, n_out, in_start, n_in_rows)`` (``n_in_rows`` 0: no input side).
        shapes: tensor name -> shape, in the order of the hypernetwork's tensors.
        fan: tensor name -> fan-in factor.
        hidden: tensor name -> ``[(axis, group, units, entries per unit)]`` for each of its axes
            (0: output, 1: input) that a hidden group runs along.
    """

    coords: Tensor
    cell: Tensor
    layer: Tensor
    side: Tensor
    index: Tensor
    grid_offset: Tensor
    grid_res: Tensor
    spans: dict[int, tuple[int, int, int, int]]
    shapes: dict[str, tuple[int, ...]]
    fan: dict[str, float]
    hidden: dict[str, list[tuple[int, str, int, int]]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.layer)

    def to(self, device: torch.device | str) -> CoordTable:
        return CoordTable(self.coords.to(device), self.cell.to(device), self.layer.to(device),
                          self.side.to(device), self.index.to(device), self.grid_offset.to(device),
                          self.grid_res.to(device), self.spans, self.shapes, self.fan, self.hidden)


def _spatial(sub_index: Tensor, sub: int) -> tuple[Tensor, Tensor]:
    """Two coordinates in [0, 1] for a position inside a flattened map of ``sub`` entries."""
    side = int(round(math.sqrt(sub)))
    if side * side == sub:
        return (torch.div(sub_index, side, rounding_mode="floor").float() + 0.5) / side, \
               (sub_index % side).float().add(0.5) / side
    return (sub_index.float() + 0.5) / sub, torch.full(sub_index.shape, 0.5)


def layer_axes(tensors: list[dict], structure: Structure) -> dict[int, dict]:
    """Per generated layer: its output axis, and its input axis and kernel shape when it has a weight matrix."""
    layers: dict[int, dict] = {}
    for t in tensors:
        name, li = t["name"], t["layer"]
        shape = tuple(structure.shapes[name])
        axes = structure.axes[name]
        o = axis_info(axes[0], shape[0], f"{name!r} axis 0")
        if o.sub != 1:
            raise ValueError(f"hypernet: {name!r} has a composite output axis {axes[0]}, which is not supported")
        for i, a in enumerate(axes[:2]):
            if (a is None or (isinstance(a, Unit) and a.group is None)) and shape[i] != t["shape"][i]:
                raise ValueError(f"hypernet: {name!r} axis {i} is a fixed axis of size {t['shape'][i]} in the "
                                 f"trained family but {shape[i]} here")
        entry = layers.setdefault(li, {"out": o, "n_out": shape[0], "in": None})
        if entry["n_out"] != shape[0]:
            raise ValueError(f"hypernet: {name!r} has {shape[0]} outputs but its layer has {entry['n_out']}")
        if len(shape) >= 2:
            if entry["in"] is not None:
                raise ValueError(f"hypernet: layer of {name!r} has two weight matrices, which is not supported")
            entry["in"] = axis_info(axes[1], shape[1], f"{name!r} axis 1")
            entry["n_in"] = shape[1]
            entry["kernel"] = tuple(shape[2:])
    return layers


def grid_layout(tensors: list[dict], structure: Structure, levels: int) -> dict[str, list[tuple[int, int]]]:
    """``"layer:side"`` -> ``[(first cell, resolution)]`` per level, for every hidden axis.

    Level ``k`` of a hidden axis of full width ``N`` has ``max(2, ceil(N / 2^k))`` cells.
    """
    out: dict[str, list[tuple[int, int]]] = {}
    off = 0
    for li, e in sorted(layer_axes(tensors, structure).items()):
        for side in ("out", "in"):
            info = e[side]
            if info is None or info.group is None:
                continue
            res = [max(2, math.ceil(info.size / 2 ** k)) for k in range(levels)]
            out[f"{li}:{side}"] = []
            for r in res:
                out[f"{li}:{side}"].append((off, r))
                off += r
    return out


def build_table(tensors: list[dict], structure: Structure, full_sizes: Mapping[str, int],
                fixed_offsets: Mapping[str, int], fan_in_power: float,
                grids: Mapping[str, list[tuple[int, int]]], levels: int) -> CoordTable:
    """The coordinate table of the network described by ``structure`` (any width of the family)."""
    layers = layer_axes(tensors, structure)
    n_layers = max(1, max(layers))
    coords, cells, lays, sides, idxs, goffs, gress = [], [], [], [], [], [], []

    def grid(key: str, n: int) -> None:
        layout = grids.get(key)
        if layout is None:
            goffs.append(torch.zeros(n, levels, dtype=torch.long))
            gress.append(torch.zeros(n, levels, dtype=torch.long))
        else:
            goffs.append(torch.tensor([o for o, _ in layout], dtype=torch.long).expand(n, levels))
            gress.append(torch.tensor([r for _, r in layout], dtype=torch.long).expand(n, levels))

    spans: dict[int, tuple[int, int, int, int]] = {}
    row = 0

    def rel(info: AxisInfo) -> float:
        return info.size / full_sizes[info.group] if info.group is not None else 1.0

    for li in sorted(layers):
        e = layers[li]
        o, i = e["out"], e["in"]
        size_out, size_in = rel(o), (rel(i) if i is not None else 1.0)
        # output rows
        n = e["n_out"]
        c = torch.full((n, 7), 0.5)
        c[:, 0], c[:, 1], c[:, 5], c[:, 6] = li / n_layers, (torch.arange(n).float() + 0.5) / n, size_out, size_in
        coords.append(c)
        cells.append(torch.full((n,), 0.5 / n if o.group is not None else 0.0))
        idxs.append(torch.arange(n) + fixed_offsets[f"{li}:out"] if o.group is None
                    else torch.zeros(n, dtype=torch.long))
        lays.append(torch.full((n,), li, dtype=torch.long))
        sides.append(torch.zeros(n, dtype=torch.long))
        grid(f"{li}:out", n)
        out_start, row = row, row + n
        in_start, m = row, 0
        if i is not None:
            kernel = e["kernel"]
            k = math.prod(kernel)
            m = e["n_in"] * k
            j = torch.arange(m)
            entry = torch.div(j, k, rounding_mode="floor")      # position along the input axis
            kpos = j % k                                        # position inside the kernel
            unit = torch.div(entry, i.sub, rounding_mode="floor")
            c = torch.full((m, 7), 0.5)
            c[:, 0], c[:, 2], c[:, 5], c[:, 6] = li / n_layers, (unit.float() + 0.5) / i.size, size_out, size_in
            if i.sub > 1:
                c[:, 3], c[:, 4] = _spatial(entry % i.sub, i.sub)
            elif len(kernel) == 1:
                c[:, 4] = (kpos.float() + 0.5) / kernel[0]
            elif len(kernel) >= 2:
                c[:, 3] = (torch.div(kpos, math.prod(kernel[1:]), rounding_mode="floor").float() + 0.5) / kernel[0]
                c[:, 4] = ((kpos % math.prod(kernel[1:])).float() + 0.5) / math.prod(kernel[1:])
            coords.append(c)
            cells.append(torch.full((m,), 0.5 / i.size if i.group is not None else 0.0))
            idxs.append(entry + fixed_offsets[f"{li}:in"] if i.group is None else torch.zeros(m, dtype=torch.long))
            lays.append(torch.full((m,), li, dtype=torch.long))
            sides.append(torch.ones(m, dtype=torch.long))
            grid(f"{li}:in", m)
            row += m
        spans[li] = (out_start, n, in_start, m)
    shapes = {t["name"]: tuple(structure.shapes[t["name"]]) for t in tensors}
    fan, hidden = {}, {}
    for t in tensors:
        o, i = layers[t["layer"]]["out"], layers[t["layer"]]["in"]
        hidden_in = len(t["shape"]) >= 2 and i is not None and i.group is not None
        fan[t["name"]] = (full_sizes[i.group] / i.size) ** fan_in_power if hidden_in else 1.0
        hidden[t["name"]] = ([(0, o.group, o.size, 1)] if o.group is not None else []) + \
            ([(1, i.group, i.size, i.sub)] if hidden_in else [])
    return CoordTable(torch.cat(coords), torch.cat(cells), torch.cat(lays), torch.cat(sides), torch.cat(idxs),
                      torch.cat(goffs), torch.cat(gress), spans, shapes, fan, hidden)


def area_matrix(full: int, n: int) -> Tensor:
    """``(n, full)``: unit ``i`` of an axis of ``n`` units as a mix of the ``full`` source units it overlaps.

    Both axes tile [0, 1] (unit ``i`` of ``n`` covers ``[i/n, (i+1)/n]``); entry ``(i, j)`` is the
    fraction of new unit ``i`` that source unit ``j`` covers, so rows sum to 1 (the identity when
    ``n == full``; for ``n`` a multiple of ``full`` every new unit copies one source unit).
    """
    a = torch.arange(n, dtype=torch.float64)
    b = torch.arange(full, dtype=torch.float64)
    lo = torch.maximum(a[:, None] / n, b[None, :] / full)
    hi = torch.minimum((a[:, None] + 1) / n, (b[None, :] + 1) / full)
    return ((hi - lo).clamp(min=0) * n).float()


def area_matrices(full: int, n: int) -> tuple[Tensor, Tensor]:
    """``(P, Q)`` of :func:`resample_axes` for uniform resampling: ``P = area_matrix(full, n)``, ``Q = P full / n``.

    Each new unit's incoming weights average those of the source units it covers; each source
    unit's outgoing weights are split among the new units covering it. An integer multiple of the
    width splits every unit into copies that compute the same function.
    """
    p = area_matrix(full, n)
    return p, p * (full / n)


def resample_axes(source: Tensor, hidden: list[tuple[int, str, int, int]],
                  matrices: Callable[[str, int], tuple[Tensor, Tensor]]) -> Tensor:
    """``source`` (full width) resampled along its hidden axes to the sizes in ``hidden`` (see :class:`CoordTable`).

    ``matrices(group, n)`` gives two ``(n, N)`` matrices: an output axis of the group becomes
    ``P W`` (new unit ``i``'s incoming weights mix the source units' by row ``i`` of ``P``), an
    input axis ``W Q^T`` (source unit ``j``'s outgoing weights go to new unit ``i`` times
    ``Q[i, j]``). Both are the identity at full width, where the source is returned unchanged.
    """
    t = source
    for axis, group, n, sub in hidden:
        full = t.shape[axis] // sub
        if n == full:
            continue
        p, q = matrices(group, n)
        if axis == 0:
            t = (p.to(t) @ t.reshape(full, -1)).reshape(n, *t.shape[1:])
        else:
            rest = t.shape[2:]
            v = t.reshape(t.shape[0], full, -1)
            t = torch.einsum("onr,mn->omr", v, q.to(t)).reshape(t.shape[0], n * sub, *rest)
    return t
