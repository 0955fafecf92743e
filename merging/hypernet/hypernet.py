"""The weight-manifold hypernetwork: an implicit function from weight coordinates to weight values.

Neural Metamorphosis (NeuMeta, Yang et al., ECCV 2024, arXiv 2410.11878): a network's weights
are samples of one continuous function of their coordinates. Every weight of every generated
layer has the coordinates

.. math::
    c = \\big(\\tfrac{l}{L},\\ \\tfrac{i + 1/2}{n_\\text{out}},\\ \\tfrac{j + 1/2}{n_\\text{in}},\\
        k_y,\\ k_x,\\ \\tfrac{n_\\text{out}}{N_\\text{out}},\\ \\tfrac{n_\\text{in}}{N_\\text{in}}\\big)

(layer, output unit, input unit, kernel position -- or the position in a flattened feature
map -- all normalised to [0, 1], and the layer's sizes relative to the full width). They are
encoded with Fourier features :math:`[c, \\sin(2^k \\pi c), \\cos(2^k \\pi c)]_{k<F}`,
concatenated with a learned embedding of the tensor (layer and role: weight, bias, norm scale)
and, on the axes whose size never changes (the network's inputs and outputs), a learned
embedding of the index; a residual MLP (one trunk shared by all layers) maps them to a value,
which one head per tensor reads out. The value is multiplied by the source tensor's standard
deviation and, for weights whose input axis is a hidden group, by the fan-in factor
:math:`(N_\\text{in} / n_\\text{in})^p` (``p = 1``: a narrower layer sums fewer inputs, so each
weighs more, as in a Riemann sum; ``p = 1/2``: the usual initialisation scaling).

Training (:func:`fit_hypernet`) samples a width per step, generates the whole network at that
width with small noise on the unit coordinates, and minimises the task loss of the generated
network (run with :func:`torch.func.functional_call`) plus a reconstruction loss against the
(smoothed, see :func:`merging.hypernet.smooth`) source weights at full width.

Residual design (the default, ``residual=True``): the hypernetwork holds the smoothed source and
generates ``W = B_n(source) + g_t (1 - min_a n_a / N_a)^+ * delta``, where ``B_n`` is a
data-derived prior that takes the source to the asked widths without training
(:meth:`HyperNet.base_matrices`: ``base="cluster"`` merges clusters of alike units, chosen by a
greedy agglomeration on the source's weights, ``"merge"`` merges runs of adjacent units of the
smoothed order, ``"area"`` resamples the axis uniformly; widths above the source's split units,
which keeps the function at integer multiples), ``delta`` is the implicit function's output as
above, ``g_t`` a per-tensor gain that starts at 0 and the gate vanishes when every hidden axis
of the tensor is at full width. So the full width is the source exactly, the untrained
hypernetwork generates the merged source at any width, and training learns only what merging
misses. A merged unit's coordinate is the mean position of the source units it stands for (its
cell, the range of the coordinate noise, their share of the axis), so the correction is a
function of where a unit's weights come from. Nothing is left to reconstruct, so a residual
hypernetwork trains on the task (and distillation) loss alone, from the first step.

Differences from the released NeuMeta code: every layer is generated (theirs: the last block
of a ResNet), fixed axes get index embeddings, and the residual design's prior.
"""
from __future__ import annotations

import math
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from tqdm import tqdm

from graphs import Structure

from ._coords import (N_COORDS, SUPPORTED_KINDS, CoordTable, area_matrices, build_table, grid_layout, layer_axes,
                      resample_axes, resize_structure)
from ._merge import cluster_partitions, merge_matrices, merge_partitions, runs, unit_io

__all__ = ["HyperNet", "fit_hypernet", "sample_state"]

DEFAULTS: dict[str, Any] = {"hidden": 128, "depth": 2, "n_freq": 6, "embed_dim": 32, "fan_in_power": 1.0,
                            "grid_levels": 4, "grid_dim": 8, "antialias": True,
                            "fixed_features": True, "residual": True, "base": "cluster"}
_BASES = ("merge", "cluster", "area")


def _generated_tensors(structure: Structure, state: Mapping[str, Tensor]) -> list[dict]:
    tensors: list[dict] = []
    covered: set[str] = set()
    layers = [layer for layer in structure.layers
              if any(not structure.is_buffer(t) and t in state for t in layer.tensors.values())]
    for li, layer in enumerate(layers):
        if layer.kind not in SUPPORTED_KINDS:
            raise ValueError(f"hypernet: layer {layer.name!r} is a {layer.kind} layer; the hypernetwork generates "
                             f"{', '.join(SUPPORTED_KINDS)} layers")
        for role, name in layer.tensors.items():
            covered.add(name)
            if structure.is_buffer(name) or name not in state or not state[name].is_floating_point():
                continue
            t = state[name].detach().float()
            mean = float(t.mean()) if t.dim() == 1 else 0.0
            std = float((t - mean).pow(2).mean().sqrt())
            if not math.isfinite(std) or std < 1e-6:
                std = max(abs(mean), 1e-3) if math.isfinite(mean) else 1.0
            tensors.append({"name": name, "layer": li, "role": role, "kind": layer.kind,
                            "shape": list(t.shape), "mean": mean, "std": std})
    stray = [k for k, v in state.items() if k not in covered and not structure.is_buffer(k) and v.is_floating_point()]
    if stray:
        raise ValueError(f"hypernet: the parameter {stray[0]!r} belongs to no traced layer, so it has no coordinates")
    if not tensors:
        raise ValueError("hypernet: the structure has no layer to generate")
    return tensors


def _fixed_axes(structure: Structure, tensors: list[dict]) -> dict[str, int]:
    fixed: dict[str, int] = {}
    for li, e in sorted(layer_axes(tensors, structure).items()):
        if e["out"].group is None:
            fixed[f"{li}:out"] = e["n_out"]
        if e["in"] is not None and e["in"].group is None:
            fixed[f"{li}:in"] = e["n_in"]
    return fixed


class _Block(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.fc2(F.silu(self.fc1(F.silu(h))))


class HyperNet(nn.Module):
    r"""Implicit neural representation of a family of networks of any width (NeuMeta).

    The implicit function is separable: a residual MLP (one trunk shared by every layer and both
    sides, told apart by learned layer and side embeddings) maps the Fourier features of an
    *output-unit* coordinate to a feature vector :math:`f \in \mathbb{R}^R`, and those of an
    *input-entry* coordinate (input unit and kernel position) to :math:`g \in \mathbb{R}^R`; the
    weight at both coordinates is

    .. math::
        W_l[i, j, k] = \sigma_l \, \Big(\frac{N_\text{in}}{n_\text{in}}\Big)^{p}
            \frac{\langle f_l(c^\text{out}_i), g_l(c^\text{in}_{jk}) \rangle}{\sqrt{R}}

    and a one-dimensional tensor (bias, normalisation scale and shift) is
    :math:`\mu + \sigma \, h_t(f_l(c^\text{out}_i))` with one linear head per tensor. Each trunk
    evaluation costs :math:`O(R^2)` per unit instead of per weight, which makes training on the
    whole network affordable on a CPU; it is still a continuous function of the weight's
    coordinates, sampled at any width.

    Build one with :meth:`from_source`; the constructor takes the JSON-ready :attr:`config`, so
    ``HyperNet(h.config).load_state_dict(h.state_dict())`` restores a trained one.

    Args:
        config (dict): ``structure`` (the full-width :meth:`graphs.Structure.to_dict`),
            ``tensors`` (the generated tensors: name, layer, role, kind, full shape, mean, std),
            ``full_sizes`` (group -> full width), ``fixed`` (fixed axes -> size) and the
            hyper-parameters ``hidden``, ``depth``, ``n_freq``, ``embed_dim``, ``fan_in_power``.

    Shapes:
        - table: a :class:`CoordTable` of ``M`` coordinate rows
        - output of :meth:`forward`: ``(M, R)`` features; :meth:`generate` gives a state dict.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        # files written before anti-aliasing existed have no key: they keep the plain grid
        self.config = {**DEFAULTS, "antialias": False, "fixed_features": False, "residual": False, **dict(config)}
        c = self.config
        self.structure = Structure.from_dict(c["structure"])
        self.tensors: list[dict] = list(c["tensors"])
        self.full_sizes: dict[str, int] = {k: int(v) for k, v in c["full_sizes"].items()}
        self.fixed_offsets: dict[str, int] = {}
        off = 1
        for key, size in c["fixed"].items():
            self.fixed_offsets[key] = off
            off += int(size)
        n_layers = max(t["layer"] for t in self.tensors) + 1
        d, h = int(c["embed_dim"]), int(c["hidden"])
        self.layer_embedding = nn.Embedding(n_layers, d)
        self.side_embedding = nn.Embedding(2, d)
        self.index_embedding = nn.Embedding(off, d, padding_idx=0)
        self.register_buffer("freqs", (2.0 ** torch.arange(int(c["n_freq"]), dtype=torch.float32)) * math.pi,
                             persistent=False)
        self.grid_levels, self.grid_dim = int(c["grid_levels"]), int(c["grid_dim"])
        self.grids = grid_layout(self.tensors, self.structure, self.grid_levels)
        cells = sum(r for layout in self.grids.values() for _, r in layout)
        self.grid = nn.Parameter(torch.randn(max(cells, 1), self.grid_dim) * 0.1)
        self.inp = nn.Linear(N_COORDS * (1 + 2 * int(c["n_freq"])) + d + self.grid_levels * self.grid_dim, h)
        self.blocks = nn.ModuleList(_Block(h) for _ in range(int(c["depth"])))
        self.out = nn.Linear(h, h)
        self.vector_heads = nn.Linear(h, len(self.tensors))
        # fixed axes (the network's inputs and outputs) never change size, so each of their entries
        # may own a free feature vector added to the trunk's (row 0: hidden axes, kept at zero)
        self.fixed_features = (nn.Embedding(off, h, padding_idx=0) if c["fixed_features"] else None)
        self._tables: OrderedDict[tuple, CoordTable] = OrderedDict()
        # residual design: the source weights (a buffer per tensor, saved with the hypernetwork) are
        # resampled to the asked width and the implicit function adds a correction, scaled by a
        # per-tensor gain that starts at 0 (the untrained hypernetwork generates the resampled source)
        self.residual = bool(c["residual"])
        if c["base"] not in _BASES:
            raise ValueError(f"HyperNet: base must be one of {', '.join(_BASES)}, got {c['base']!r}")
        self._merge_cache: dict[tuple[str, int], tuple[Tensor, Tensor]] = {}
        self._partitions: dict[str, list[list[int]]] = {}
        if self.residual:
            for i, t in enumerate(self.tensors):
                self.register_buffer(f"source_{i}", torch.zeros(t["shape"]))
            self.residual_gain = nn.Parameter(torch.zeros(len(self.tensors)))
            self.register_load_state_dict_post_hook(lambda module, keys: module._clear_base_cache())
        with torch.no_grad():
            for emb in (self.layer_embedding, self.side_embedding, self.index_embedding):
                nn.init.normal_(emb.weight, std=0.5)
            self.index_embedding.weight[0].zero_()
            self.vector_heads.weight.mul_(0.1)
            self.vector_heads.bias.zero_()
            if self.fixed_features is not None:
                self.fixed_features.weight.zero_()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_source(cls, structure: Structure, state: Mapping[str, Tensor], **hparams: Any) -> HyperNet:
        """A hypernetwork for the family of ``structure``; ``state`` (full width) sets each tensor's scale.

        Args:
            structure (Structure): the traced full-width network.
            state (Mapping[str, Tensor]): its (smoothed) weights.
            **hparams: ``hidden`` (feature size R and trunk width), ``depth`` (residual blocks),
                ``n_freq`` (Fourier frequencies per coordinate), ``embed_dim``, ``fan_in_power``,
                ``residual`` (the residual design: the source plus a learned correction) and
                ``base`` (its prior: ``cluster``, ``merge`` or ``area``); defaults in ``DEFAULTS``.

        Raises:
            ValueError: a layer kind or axis the coordinates do not cover, or an unknown hparam.
        """
        unknown = set(hparams) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"HyperNet.from_source: unknown hyper-parameter {sorted(unknown)[0]!r}; "
                             f"accepted: {', '.join(DEFAULTS)}")
        tensors = _generated_tensors(structure, state)
        config = {**DEFAULTS, **hparams, "structure": structure.to_dict(), "tensors": tensors,
                  "full_sizes": {g: grp.size for g, grp in structure.groups.items()},
                  "fixed": _fixed_axes(structure, tensors)}
        hn = cls(config)
        if hn.residual:
            with torch.no_grad():
                for i, t in enumerate(hn.tensors):
                    getattr(hn, f"source_{i}").copy_(state[t["name"]].detach().float())
        return hn

    def extra_repr(self) -> str:
        c = self.config
        return (f"tensors={len(self.tensors)}, groups={self.full_sizes}, hidden={c['hidden']}, depth={c['depth']}, "
                f"n_freq={c['n_freq']}")

    @property
    def device(self) -> torch.device:
        return self.inp.weight.device

    # ------------------------------------------------------------------ coordinates
    def structure_at(self, shapes: Mapping[str, Sequence[int]]) -> Structure:
        """The family's structure at the widths that ``shapes`` (name -> shape) have."""
        return resize_structure(self.structure, {k: tuple(v) for k, v in shapes.items()})

    def table(self, shapes: Mapping[str, Sequence[int]]) -> CoordTable:
        """The coordinate table (on this module's device) of the network with these tensor shapes (cached)."""
        key = tuple((t["name"], tuple(shapes[t["name"]])) for t in self.tensors if t["name"] in shapes)
        dev = self.device
        hit = self._tables.get(key)
        if hit is not None and hit.coords.device == dev:
            self._tables.move_to_end(key)
            return hit
        structure = self.structure_at(shapes)
        table = build_table(self.tensors, structure, self.full_sizes, self.fixed_offsets,
                            float(self.config["fan_in_power"]), self.grids, self.grid_levels)
        if self.residual and self.config["base"] != "area":
            self._merged_coordinates(table)
        table = table.to(dev)
        self._tables[key] = table
        while len(self._tables) > 64:
            self._tables.popitem(last=False)
        return table

    def _merged_coordinates(self, table: CoordTable) -> None:
        """Place each merged unit at the centre of the run of source units it merges (in place).

        With ``base="merge"`` unit ``i`` of ``n`` stands for a run of adjacent source units, which
        need not sit at ``(i + 1/2) / n``; the correction is a function of where the unit's weights
        come from, so the same source region gets the same coordinate at every width. The run's
        half-length is the unit's cell (the range of the coordinate noise, and the local
        resolution that anti-aliasing sees).
        """
        done: set[tuple[int, int]] = set()
        for t in self.tensors:
            o0, n_out, i0, m = table.spans[t["layer"]]
            for axis, group, n, _ in table.hidden[t["name"]]:
                full = self.full_sizes[group]
                if n > full or (t["layer"], axis) in done:
                    continue
                done.add((t["layer"], axis))
                cl = self.clusters(group, n)
                centre = torch.tensor([(sum(c) / len(c) + 0.5) / full for c in cl])
                half = torch.tensor([len(c) / (2 * full) for c in cl])
                if axis == 0:
                    table.coords[o0:o0 + n_out, 1] = centre
                    table.cell[o0:o0 + n_out] = half
                else:
                    unit = torch.div(torch.arange(m), m // n, rounding_mode="floor")
                    table.coords[i0:i0 + m, 2] = centre[unit]
                    table.cell[i0:i0 + m] = half[unit]

    def sizes_of(self, shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
        """Group -> width of the network with these tensor shapes."""
        return {g: grp.size for g, grp in self.structure_at(shapes).groups.items()}

    # ------------------------------------------------------------------ evaluation
    def encode(self, coords: Tensor) -> Tensor:
        """Fourier features ``[c, sin(2^k pi c), cos(2^k pi c)]``, ``(M, 7)`` -> ``(M, 7 (1 + 2F))``."""
        x = coords[..., None] * self.freqs
        return torch.cat([coords, x.sin().flatten(-2), x.cos().flatten(-2)], dim=-1)

    def grid_features(self, table: CoordTable, coords: Tensor) -> Tensor:
        """Linear interpolation of each level of the row's feature grid at its unit coordinate, ``(M, K * G)``.

        With ``antialias`` (the default of new hypernetworks) a level of ``res`` cells is weighted by
        ``clamp(2 n / res - 1, 0, 1)`` on an axis of ``n`` units: the per-unit detail of the finest
        levels shapes only the widths that resolve it, and narrower networks are generated from
        the coarser levels (the weight is continuous in the width coordinate).
        """
        pos = torch.where(table.side == 0, coords[:, 1], coords[:, 2])[:, None]       # (M, 1)
        res = table.grid_res                                                         # (M, K)
        has = res > 0
        resf = res.clamp(min=1).to(pos.dtype)
        u = (pos * resf - 0.5).clamp(min=0.0)
        u = torch.minimum(u, resf - 1)
        i0 = u.floor().long()
        w = (u - i0.to(u.dtype))[..., None]
        i1 = torch.minimum(i0 + 1, res.clamp(min=1) - 1)
        g0 = self.grid[table.grid_offset + i0]
        g1 = self.grid[table.grid_offset + i1]
        feats = (g0 * (1 - w) + g1 * w) * has[..., None]
        if self.config["antialias"]:
            # mip-mapping: a level finer than the axis's current width would alias (a network of n
            # units samples a grid of res cells), so its weight fades from 1 at res <= n to 0 at res >= 2n
            n = 0.5 / table.cell.clamp(min=1e-12)                                    # units on the axis
            fade = (2 * n[:, None] / resf - 1).clamp(0.0, 1.0)
            feats = feats * fade[..., None]
        return feats.flatten(1)

    def forward(self, table: CoordTable, *, noise: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
        """Trunk features of every coordinate row of ``table``.

        ``noise`` moves each unit coordinate uniformly within ``noise`` times half the spacing
        between units (on hidden axes only).
        """
        coords = table.coords
        if noise:
            u = torch.rand(table.cell.shape, generator=generator, device=coords.device)
            jitter = (2 * u - 1) * table.cell * noise
            coords = _jitter(coords, table.side, jitter)
        emb = self.layer_embedding(table.layer) + self.side_embedding(table.side) + self.index_embedding(table.index)
        h = self.inp(torch.cat([self.encode(coords), emb, self.grid_features(table, coords)], dim=-1))
        for block in self.blocks:
            h = block(h)
        out = self.out(F.silu(h))
        if self.fixed_features is not None:
            out = out + self.fixed_features(table.index)
        return out

    def normalised(self, table: CoordTable, feats: Tensor) -> dict[str, Tensor]:
        """Each tensor in units of its scale (before std, mean and fan-in factor)."""
        out: dict[str, Tensor] = {}
        r = feats.shape[1]
        for col, t in enumerate(self.tensors):
            name = t["name"]
            if name not in table.shapes:
                continue
            o0, n, i0, m = table.spans[t["layer"]]
            f = feats[o0:o0 + n]
            shape = table.shapes[name]
            if len(shape) >= 2:
                out[name] = (f @ feats[i0:i0 + m].T).div(math.sqrt(r)).reshape(shape)
            else:
                out[name] = F.linear(F.silu(f), self.vector_heads.weight[col:col + 1],
                                     self.vector_heads.bias[col:col + 1]).reshape(shape)
        return out

    def generate(self, shapes: Mapping[str, Sequence[int]], *, noise: float = 0.0, samples: int = 1,
                 generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The generated tensors of the network with these shapes (differentiable).

        Args:
            shapes: tensor name -> shape at the wanted width (e.g. from ``model.state_dict()``).
            noise: coordinate noise (see :meth:`forward`).
            samples: average this many noisy draws (the paper's ensembling; needs ``noise > 0``).

        Returns:
            dict[str, Tensor]: every generated parameter (buffers are not generated).
        """
        table = self.table(shapes)
        acc: dict[str, Tensor] = {}
        for _ in range(samples):
            for k, v in self.normalised(table, self(table, noise=noise, generator=generator)).items():
                acc[k] = v if k not in acc else acc[k] + v
        out = {}
        for col, t in enumerate(self.tensors):
            name = t["name"]
            if name not in acc:
                continue
            delta = acc[name] / samples * (t["std"] * table.fan[name])
            if self.residual:
                out[name] = self.base(table, col) + self.residual_gain[col] * self.gate(table, name) * delta
            else:
                out[name] = t["mean"] + delta
        return out

    def _clear_base_cache(self) -> None:
        self._tables.clear()
        self._merge_cache.clear()
        self._partitions.clear()

    def source_state(self) -> dict[str, Tensor]:
        """Residual design: the (smoothed) full-width source the hypernetwork holds."""
        if not self.residual:
            raise ValueError("HyperNet.source_state: this hypernetwork is not residual (it holds no source)")
        return {t["name"]: getattr(self, f"source_{i}") for i, t in enumerate(self.tensors)}

    def base_matrices(self, group: str, n: int) -> tuple[Tensor, Tensor]:
        """Residual design: the ``(n, N)`` matrices ``(P, Q)`` that take ``group`` from full width to ``n`` units.

        ``base="merge"``: ``n <= N`` merges runs of adjacent units (:mod:`merging.hypernet._merge`);
        ``base="area"`` and any ``n > N``: uniform area resampling (:func:`area_matrices`).
        """
        key = (group, int(n))
        hit = self._merge_cache.get(key)
        if hit is not None:
            return hit
        full = self.full_sizes[group]
        if self.config["base"] == "area" or n > full:
            mats = area_matrices(full, n)
        else:
            inc, out = unit_io(self.structure, self.source_state(), group)
            mats = merge_matrices(inc, out, self.clusters(group, n, inc, out))
        self._merge_cache[key] = mats
        return mats

    def clusters(self, group: str, n: int, inc: Tensor | None = None, out: Tensor | None = None) -> list[list[int]]:
        """Residual design: the ``n`` clusters of source units that the base merges ``group`` into (``n <= N``)."""
        if group not in self._partitions:
            if inc is None or out is None:
                inc, out = unit_io(self.structure, self.source_state(), group)
            if self.config["base"] == "cluster":
                self._partitions[group] = cluster_partitions(inc, out)
            else:
                full = self.full_sizes[group]
                self._partitions[group] = [runs(starts, full) for starts in merge_partitions(inc, out)]
        return self._partitions[group][n]

    def base(self, table: CoordTable, col: int) -> Tensor:
        """Residual design: the source tensor ``col`` taken to the table's widths (:meth:`base_matrices`)."""
        with torch.no_grad():
            return resample_axes(getattr(self, f"source_{col}"), table.hidden[self.tensors[col]["name"]],
                                 self.base_matrices)

    def gate(self, table: CoordTable, name: str) -> float:
        """Residual design: the weight of the learned correction, ``max(0, 1 - min(n / N))`` over the tensor's hidden axes.

        It vanishes when every hidden axis is at full width (the source is generated exactly) and
        above it (wider networks are the resampled source alone); it grows linearly as the width
        shrinks.
        """
        rel = [n / self.full_sizes[g] for _, g, n, _ in table.hidden[name]]
        return max(0.0, 1.0 - min(rel)) if rel else 0.0

    def reconstruction_loss(self, source: Mapping[str, Tensor], *, noise: float = 0.0,
                            generator: torch.Generator | None = None) -> Tensor:
        """Mean squared error to ``source`` (full width), in units of each tensor's std, averaged over tensors."""
        shapes = {t["name"]: tuple(source[t["name"]].shape) for t in self.tensors}
        pred = self.generate(shapes, noise=noise, generator=generator)
        losses = []
        for t in self.tensors:
            target = source[t["name"]].detach().to(self.device, torch.float32)
            losses.append(F.mse_loss(pred[t["name"]] / t["std"], target / t["std"]))
        return torch.stack(losses).mean()


def _jitter(coords: Tensor, side: Tensor, jitter: Tensor) -> Tensor:
    """Add ``jitter`` to the output-unit coordinate of output rows and the input-unit one of input rows."""
    out = coords.clone()
    out[:, 1] = out[:, 1] + jitter * (side == 0)
    out[:, 2] = out[:, 2] + jitter * (side == 1)
    return out


# ---------------------------------------------------------------------- training


def _cycle(data: Iterable[Any]):
    while True:
        n = 0
        for batch in data:
            n += 1
            yield batch
        if n == 0:
            raise ValueError("fit_hypernet: data yielded no batches")


def fit_hypernet(
    hypernet: HyperNet,
    build: Callable[[float], nn.Module],
    data: Iterable[tuple[Tensor, Tensor]],
    source: Mapping[str, Tensor],
    *,
    ratios: Sequence[float] | None = None,
    ratio_range: tuple[float, float] | None = None,
    steps: int = 500,
    lr: float = 1e-2,
    recon_weight: float = 10.0,
    warmup: float = 0.3,
    coord_noise: float = 0.5,
    joint_lr_factor: float = 0.3,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    teacher: nn.Module | None = None,
    distill: float = 1.0,
    low_bias: float = 1.5,
    sandwich: bool = False,
    max_grad_norm: float = 1.0,
    trunk_lr_factor: float = 1.0,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train ``hypernet`` in place to generate good networks at every width of the family.

    Each step draws a width ratio (uniformly from ``ratios``, or from ``ratio_range``), builds
    the family at that ratio with ``build(ratio)``, generates its weights with coordinate noise
    and takes one Adam step on ``task loss + recon_weight * reconstruction loss``. The
    reconstruction loss is the mean squared error, in units of each tensor's standard deviation,
    between the full-width generation and ``source``. The first
    ``warmup`` fraction of the steps minimise the reconstruction loss alone, so the task loss
    starts from a network near the source. Each phase has its own short ramp and cosine decay of
    the learning rate. A residual hypernetwork (:class:`HyperNet`, ``residual=True``) generates the
    source exactly at full width: it has no reconstruction loss and no warm-up.

    Args:
        hypernet (HyperNet): trained in place, moved to ``device``.
        build (callable): ratio in (0, 1] -> the family's ``nn.Module`` at that width.
        data (Iterable): re-iterable ``(x, y)`` training batches.
        source (Mapping[str, Tensor]): the full-width (smoothed) weights.
        ratios (sequence of float, optional): discrete training widths, as fractions of full width.
        ratio_range (tuple, optional): ``(lo, hi)``: widths drawn continuously instead.
        steps (int, optional): optimisation steps. (default: ``500``)
        lr (float, optional): Adam's peak learning rate. (default: ``1e-2``)
        recon_weight (float, optional): weight of the reconstruction loss. (default: ``10.0``)
        warmup (float, optional): fraction of steps on reconstruction alone. (default: ``0.3``)
        coord_noise (float, optional): coordinate noise, in half unit spacings (with a residual
            hypernetwork: in half-lengths of the merged unit's share of the axis). (default: ``0.5``)
        joint_lr_factor (float, optional): peak learning rate of the joint phase, as a fraction
            of ``lr``. (default: ``0.3``)
        loss_fn (callable, optional): task loss ``loss_fn(output, y)``. (default: cross-entropy)
        teacher (nn.Module, optional): the full-width source network; with ``distill > 0`` the task
            loss adds ``distill`` times the KL divergence from the teacher's predictive
            distribution to the generated network's (knowledge distillation on the same batch).
        distill (float, optional): weight of the distillation term (used only with a ``teacher``).
            (default: ``1.0``)
        low_bias (float, optional): with ``ratio_range``, ratios are drawn as
            ``lo + (hi - lo) u^low_bias`` for uniform ``u``: above 1 the narrow end, where the
            generated networks lose most, is drawn more often. (default: ``1.5``)
        sandwich (bool, optional): each joint step also takes the task loss at the narrowest and
            the full width (the "sandwich rule" of slimmable networks), averaged with the drawn
            width's. (default: ``False``)
        max_grad_norm (float, optional): the gradient is clipped to this norm. (default: ``1.0``)
        trunk_lr_factor (float, optional): learning rate of the shared trunk (every weight depends
            on it) as a fraction of that of the per-unit parameters (grid cells, fixed-axis
            features, vector heads). (default: ``1.0``)
        device (str or torch.device, optional): where everything runs. (default: ``"cpu"``)
        seed (int, optional): seeds the width draws and the coordinate noise.
        progress (bool, optional): a progress bar on stderr. (default: ``True``)

    Returns:
        list[dict]: per step ``ratio``, ``task`` (nan during warm-up) and ``recon`` losses.

    Raises:
        ValueError: bad ratios or steps, or a loss that stops being finite.
    """
    if (ratios is None) == (ratio_range is None):
        raise ValueError("fit_hypernet: give exactly one of ratios (a discrete set) or ratio_range (lo, hi)")
    pool = list(ratios) if ratios is not None else list(ratio_range)  # type: ignore[arg-type]
    if not pool or any(not (isinstance(r, (int, float)) and 0 < r <= 1) for r in pool):
        raise ValueError(f"fit_hypernet: width ratios must lie in (0, 1], got {pool}")
    if ratio_range is not None and ratio_range[0] > ratio_range[1]:
        raise ValueError(f"fit_hypernet: ratio_range must be (lo, hi) with lo <= hi, got {ratio_range}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"fit_hypernet: steps must be a positive integer, got {steps!r}")
    if not (isinstance(low_bias, (int, float)) and low_bias > 0):
        raise ValueError(f"fit_hypernet: low_bias must be positive, got {low_bias!r}")
    if distill < 0:
        raise ValueError(f"fit_hypernet: distill must be non-negative, got {distill!r}")
    dev = torch.device(device)
    hypernet.to(dev).train()
    if teacher is not None:
        teacher = teacher.to(dev).eval()
        for q in teacher.parameters():
            q.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator(device=dev).manual_seed(seed + 1)
    local_names = ("grid", "fixed_features.weight", "vector_heads.weight", "vector_heads.bias", "residual_gain")
    local = [p for n, p in hypernet.named_parameters() if n in local_names]
    shared = [p for n, p in hypernet.named_parameters() if n not in local_names]
    opt = torch.optim.Adam([{"params": local, "lr": lr}, {"params": shared, "lr": lr * trunk_lr_factor}])
    # residual design: the full width is the source by construction, so there is nothing to reconstruct
    residual = bool(getattr(hypernet, "residual", False))
    n_warm = 0 if residual else int(round(warmup * steps))

    def schedule(s: int) -> float:
        # each phase ramps up over 5% of its steps and decays by a cosine; the joint phase peaks at
        # joint_lr_factor * lr, so the first task gradients do not undo the reconstruction
        start, length, peak = (0, n_warm, 1.0) if s < n_warm else (n_warm, steps - n_warm, joint_lr_factor)
        t = s - start
        return peak * min(1.0, (t + 1) / max(1, length // 20)) * 0.5 * (1 + math.cos(math.pi * t / max(1, length)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    models: dict[float, nn.Module] = {}
    batches = _cycle(data)
    history: list[dict[str, float]] = []
    bar = tqdm(total=steps, desc="hypernet", unit="step", file=sys.stderr, disable=not progress, leave=False)
    try:
        for step in range(steps):
            if residual:
                recon = torch.zeros((), device=dev)
            else:
                recon = hypernet.reconstruction_loss(source, noise=coord_noise if step >= n_warm else 0.0,
                                                     generator=noise_gen)
            task = torch.full((), math.nan)
            if ratios is not None:
                r = float(pool[int(torch.randint(len(pool), (1,), generator=gen))])
            else:
                lo, hi = ratio_range  # type: ignore[misc]
                r = float(lo + (hi - lo) * torch.rand((), generator=gen) ** low_bias)
            if step >= n_warm:
                x, y = next(batches)
                x, y = x.to(dev), y.to(dev)
                soft = None
                if teacher is not None and distill > 0:
                    with torch.no_grad():
                        soft = F.log_softmax(teacher(x), dim=-1)
                draws = [r] + ([min(pool), max(pool)] if sandwich else [])
                tasks = []
                for rr in draws:
                    model = models.get(rr)
                    if model is None:
                        model = build(rr).to(dev).train()
                        if ratios is not None or rr in (min(pool), max(pool)):
                            models[rr] = model
                    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
                    params = hypernet.generate(shapes, noise=coord_noise, generator=noise_gen)
                    buffers = {k: v for k, v in model.named_buffers()}
                    out = functional_call(model, {**buffers, **params}, (x,))
                    t_loss = loss_fn(out, y)
                    if soft is not None:
                        t_loss = t_loss + distill * F.kl_div(F.log_softmax(out, dim=-1), soft, log_target=True,
                                                             reduction="batchmean")
                    tasks.append(t_loss)
                task = torch.stack(tasks).mean()
                loss = task + recon_weight * recon
            else:
                loss = recon
            if not torch.isfinite(loss):
                raise ValueError(f"fit_hypernet: the loss became {float(loss)} at step {step + 1}; lower lr (now {lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(hypernet.parameters(), max_grad_norm)
            opt.step()
            sched.step()
            history.append({"ratio": r, "task": float(task.detach()), "recon": float(recon.detach())})
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(ratio=f"{r:.2f}", task=f"{history[-1]['task']:.3f}", recon=f"{history[-1]['recon']:.3f}")
    finally:
        bar.close()
        hypernet.eval()
    return history


@torch.no_grad()
def sample_state(hypernet: HyperNet, model: nn.Module, *, samples: int = 1, noise: float | None = None,
                 seed: int = 0) -> dict[str, Tensor]:
    """A complete state dict for ``model`` (the family at some width) generated by ``hypernet``.

    Parameters come from the hypernetwork (``samples`` noisy draws averaged when ``samples > 1``;
    ``noise`` defaults to 0 for one sample and 0.1 for several); buffers are ``model``'s own
    (fresh BatchNorm statistics: recompute them from data, e.g. with
    :func:`merging.reset_batchnorm`). Tensors are returned on the CPU.

    Raises:
        ValueError: ``model`` does not have the family's structure, or ``samples < 1``.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"sample_state: samples must be a positive integer, got {samples!r}")
    if noise is None:
        noise = 0.1 if samples > 1 else 0.0
    full = model.state_dict()
    shapes = {k: tuple(v.shape) for k, v in full.items()}
    was = hypernet.training
    hypernet.eval()
    gen = torch.Generator(device=hypernet.device).manual_seed(seed)
    params = hypernet.generate(shapes, noise=noise, samples=samples, generator=gen)
    hypernet.train(was)
    out = {k: v.detach().cpu().clone() for k, v in full.items()}
    for k, v in params.items():
        out[k] = v.detach().cpu().to(out[k].dtype).contiguous()
    return out
