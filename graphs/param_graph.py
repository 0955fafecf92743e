"""Parameter graphs: a traced network as a graph of neurons (nodes) and weights (edges), and back.

Following `"Graph Metanetworks for Processing Diverse Neural Architectures"
<https://arxiv.org/abs/2312.04501>`_ (Lim et al.) and `"Graph Neural Networks for Learning
Equivariant Representations of Neural Networks" <https://arxiv.org/abs/2403.12143>`_ (Kofinas et
al.), built from a traced :class:`~graphs.structure.Structure` instead of hand-written cases, and
exactly invertible.

**Nodes.** One node set per *site*: the model input (one node per input feature or channel), the
output of every weight layer (one node per unit or channel), the vocabulary of an embedding (one
node per token), the ``q``/``k``/``v`` units of an attention layer, and, where a normalisation
cannot be folded (see below), the output of a normalisation layer. A residual stream is therefore
one node set per contributing layer, joined by identity ``residual`` edges along
:attr:`Layer.sources <graphs.structure.Layer.sources>`: when a layer reads the sum of several
sites, the latest one receives an edge from each earlier one that has not yet been added into it.

**Edges.** One per weight entry of a linear layer (source: input unit, target: output unit); for
a convolution one per (input channel, output channel) pair of the same group carrying the
flattened kernel as a vector (``conv="kernel"``), or one per kernel entry with its position
(``conv="entries"``); a linear layer reading a flattened feature map (``(C x ·S)`` axis) gets one
``flatten`` edge per (channel, unit) carrying the ``S`` spatial weights (or one per entry).
Attention (``nn.MultiheadAttention``) gets ``attn_q/k/v`` edges from its input to its q/k/v
nodes, ``attn_o`` edges from v to its output, and parameter-free ``attn_qk`` (k_i -> q_i, the
coordinates of one dot product) and ``attn_score`` (q -> v within a head) edges.

**Node values** (:attr:`ParamGraph.node_value`, columns :data:`NODE_VALUES`): the bias of the
layer that computes the node, and the normalisation parameters that act on it, *carried, not
folded*: scale, shift, running mean and running variance as they are stored. A normalisation
layer is attached to the nodes of the site it reads when that site feeds nothing else (conv ->
BatchNorm, linear -> LayerNorm); otherwise (a pre-norm transformer's LayerNorm reading a residual
stream) it gets its own node set, joined to its input by one ``norm`` edge per channel.

**Exact inverse.** Every node value and edge weight that came from a tensor keeps a reference
(its flat index into the concatenation of the covered tensors), so :meth:`ParamGraph.to_state_dict`
returns the original tensors bit for bit (dtype kept) and the graph is an editable view: change
``graph.edge_weight`` or ``graph.node_value`` in place and ``to_state_dict()`` puts the new values
where they belong. Tensors no layer covers (ViT's ``cls_token``/``pos_embed``, BatchNorm's
``num_batches_tracked``, parameters used through ``torch.nn.functional``, attention ``bias_k``) are
kept unchanged as :attr:`ParamGraph.extras`, so the round trip is exact for every tensor.

**Symmetry.** The graph is built from the structure only, so permuting the network's hidden units
relabels the nodes and changes nothing else (:meth:`ParamGraph.node_permutation` gives the
relabelling). The head index of q/k/v nodes is a label of the head block: permuting heads
relabels the heads too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple

import torch
from torch import Tensor

from .structure import Axis, Cat, Layer, Prod, Structure, Unit, _axis_index, axis_groups

__all__ = ["ParamGraph", "DenseGraph", "ROLES", "EDGE_KINDS", "ACTIVATIONS", "NODE_VALUES",
           "PYG_WEIGHT_DIM"]

#: node roles (one-hot in the PyG features, in this order)
ROLES = ("input", "hidden", "output", "norm", "attn_q", "attn_k", "attn_v", "token")
#: edge kinds (one-hot in the PyG features, in this order)
EDGE_KINDS = ("linear", "flatten", "conv", "conv_transpose", "embedding", "residual", "norm",
              "attn_q", "attn_k", "attn_v", "attn_o", "attn_qk", "attn_score")
#: activation kinds of a node's layer (one-hot in the PyG features, in this order)
ACTIVATIONS = ("none", "relu", "gelu", "silu", "tanh", "sigmoid", "sine", "leaky_relu", "elu",
               "softplus", "other")
#: columns of :attr:`ParamGraph.node_value`
NODE_VALUES = ("bias", "norm_weight", "norm_bias", "running_mean", "running_var")
#: default width of the weight block of PyG edge features
PYG_WEIGHT_DIM = 16

_ROLE = {r: i for i, r in enumerate(ROLES)}
_KIND = {k: i for i, k in enumerate(EDGE_KINDS)}
_COL = {c: i for i, c in enumerate(NODE_VALUES)}
_ACT_ALIASES = {"leakyrelu": "leaky_relu", "relu6": "relu", "sin": "sine", "swish": "silu",
                "logsigmoid": "sigmoid", "hardtanh": "tanh", "hardsigmoid": "sigmoid",
                "hardswish": "silu", "identity": "none"}
_NORM_KINDS = ("batchnorm", "instancenorm", "layernorm", "groupnorm")
_NORM_COLS = {"weight": "norm_weight", "bias": "norm_bias", "running_mean": "running_mean",
              "running_var": "running_var"}
_POS_DIMS = 3


def _activation_code(name: str | None) -> int:
    if name is None:
        return 0
    a = name.lower().rstrip("_")
    a = _ACT_ALIASES.get(a, a)
    return ACTIVATIONS.index(a) if a in ACTIVATIONS else ACTIVATIONS.index("other")


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _has_groups(axis: Axis | None) -> bool:
    return bool(axis_groups(axis))


def _prod_of(parts) -> Axis:
    parts = tuple(parts)
    return parts[0] if len(parts) == 1 else Prod(parts)


def _segments(axis: Axis, off: int = 0):
    """(offset, sub-axis) pairs: the axis itself, its Cat parts, the blocks of a Prod that leads
    with an unpermuted factor (``(·3 x heads x d)`` -> three ``(heads x d)`` blocks)."""
    yield off, axis
    if isinstance(axis, Cat):
        for p in axis.parts:
            yield from _segments(p, off)
            off += p.size
    elif isinstance(axis, Prod) and isinstance(axis.parts[0], Unit) and axis.parts[0].group is None:
        sub = _prod_of(axis.parts[1:])
        for b in range(axis.parts[0].size):
            yield from _segments(sub, off + b * sub.size)


# ============================================================================ topology
@dataclass
class Site:
    """One node set: ``size`` consecutive nodes starting at ``offset``."""

    name: str
    offset: int
    size: int
    role: str
    layer: int                  # index into ``Structure.layers``; -1 for the model input
    axis: Axis | None = None    # how a permutation acts on the units (None: not permuted)
    activation: str | None = None
    norm: str | None = None     # the normalisation layer whose parameters the nodes carry
    heads: int = 0              # attention heads (q/k/v sites only)


@dataclass
class _Seg:
    """Input features ``[off, off + C*S)`` of a layer read ``C`` nodes, ``S`` features each
    (``slow``: channel-major, as ``flatten`` of ``(C, H, W)``; else channel-minor)."""

    off: int
    C: int
    S: int
    slow: bool
    nodes: Tensor


@dataclass
class _Chunk:
    src: Tensor
    dst: Tensor
    ref: Tensor | None          # (E, K) flat indices into theta; None: parameter-free edges
    kind: str
    layer: int
    pos: Tensor | None = None
    write: bool = True


@dataclass
class _Topology:
    """Everything about a parameter graph except its values (shared by a batch of models)."""

    conv: str
    layer_names: list[str]
    layer_kinds: list[str]
    sites: dict[str, Site]
    num_nodes: int
    node_role: Tensor
    node_layer: Tensor
    node_activation: Tensor
    node_head: Tensor
    node_ref: Tensor            # (N, F_v) long, -1: absent
    node_write: Tensor          # (N, F_v) bool
    edge_index: Tensor          # (2, E)
    edge_kind: Tensor
    edge_layer: Tensor
    edge_pos: Tensor            # (E, 3) long, -1: n/a
    edge_ref: Tensor            # (E, K) long, -1: padding or parameter-free
    edge_mask: Tensor           # (E, K) bool: valid entries
    edge_gather: Tensor         # (E * K,) index into [theta, 0, 1] giving edge_weight
    node_gather: Tensor         # (N * F_v,) index into [theta, 0, 1] giving node_value
    edge_write: Tensor          # (E,) bool
    layout: dict[str, tuple[int, int]]          # covered tensor -> (offset, numel)
    shapes: dict[str, tuple[int, ...]]
    num_params: int
    fill_idx: Tensor            # theta entries no node/edge writes back
    kernel_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # precomputed write-back positions
    ew_pos: Tensor | None = None
    ew_ref: Tensor | None = None
    nw_pos: Tensor | None = None
    nw_ref: Tensor | None = None


class _Builder:
    def __init__(self, structure: Structure, shapes: Mapping[str, tuple[int, ...]],
                 floating: set[str], conv: str) -> None:
        self.s = structure
        self.shapes = shapes
        self.floating = floating
        self.conv = conv
        self.layout: dict[str, tuple[int, int]] = {}
        self.P = 0
        self.sites: dict[str, Site] = {}
        self.N = 0
        self.site_of: dict[str, str] = {}
        self.axis_of: dict[str, Axis | None] = {}
        self.merged: dict[str, set[str]] = {}
        self.chunks: list[_Chunk] = []
        self.node_refs: list[tuple[Tensor, int, Tensor, bool]] = []
        self.claimed: dict[str, int] = {}     # tensor -> the layer that writes it back
        self.current = -1
        self.notes: list[str] = []
        self.kernel_shapes: dict[str, tuple[int, ...]] = {}
        self.order = {l.name: i for i, l in enumerate(structure.layers)}
        self.order["input"] = -1
        self.consumers: dict[str, list[str]] = {}
        for l in structure.layers:
            for src in set(l.sources):
                self.consumers.setdefault(src, []).append(l.name)
        for src in structure.outputs:
            self.consumers.setdefault(src, []).append("<output>")

    # ------------------------------------------------------------------ helpers
    def ref(self, name: str | None) -> tuple[int, bool] | None:
        """(offset into theta, written back?) of a tensor, or None when it is absent."""
        if name is None or name not in self.shapes or name not in self.floating:
            return None
        if name not in self.layout:
            n = _numel(self.shapes[name])
            self.layout[name] = (self.P, n)
            self.P += n
        owner = self.claimed.setdefault(name, self.current)
        return self.layout[name][0], owner == self.current

    def new_site(self, name: str, size: int, role: str, layer: int, axis: Axis | None = None,
                 activation: str | None = None) -> Site:
        base, k = name, 1
        while name in self.sites:
            k += 1
            name = f"{base}#{k}"
        if axis is not None and axis.size != size:
            axis = None
        site = Site(name, self.N, int(size), role, layer, axis, activation)
        self.sites[name] = site
        self.N += int(size)
        return site

    @staticmethod
    def nodes(site: Site) -> Tensor:
        return torch.arange(site.offset, site.offset + site.size)

    def input_site(self, size: int) -> Site:
        for s in self.sites.values():
            if s.role == "input" and s.layer == -1 and s.size == size:
                return s
        return self.new_site("input", size, "input", -1)

    def attach(self, nodes: Tensor, col: str, tensor: str | None, row_off: int = 0) -> None:
        r = self.ref(tensor)
        if r is None:
            return
        base, write = r
        idx = base + row_off + torch.arange(len(nodes))
        self.node_refs.append((nodes, _COL[col], idx, write))

    def add(self, chunk: _Chunk) -> None:
        if len(chunk.src):
            self.chunks.append(chunk)

    # ------------------------------------------------------------------ input resolution
    def _fits(self, src: str, axis: Axis | None, n: int) -> bool:
        if src == "input":
            if _has_groups(axis):
                return False
            inputs = [s for s in self.sites.values() if s.role == "input" and s.layer == -1]
            return not inputs or any(s.size == n for s in inputs)
        site = self.sites[self.site_of[src]]
        if site.size != n:
            return False
        ax = self.axis_of.get(src)
        if ax is not None and ax.size != n:
            ax = None
        if ax == axis and ax is not None:
            return True
        return not _has_groups(ax) and not _has_groups(axis)

    def _match(self, srcs: list[str], axis: Axis | None, n: int) -> Tensor | None:
        cands = [s for s in srcs if self._fits(s, axis, n)]
        if not cands:
            return None
        if _has_groups(axis):
            exact = [s for s in cands if s != "input" and self.axis_of.get(s) == axis]
            cands = exact or cands
        return self.nodes(self.merge(cands, n))

    def merge(self, cands: list[str], n: int) -> Site:
        names: list[str] = []
        for c in cands:
            site = self.input_site(n).name if c == "input" else self.site_of[c]
            if site not in names:
                names.append(site)
        names.sort(key=lambda x: self.sites[x].offset)
        target = names[-1]
        covered = set(self.merged.get(target, {target}))
        for o in reversed(names[:-1]):
            if o in covered:
                continue
            src, dst = self.sites[o], self.sites[target]
            self.add(_Chunk(self.nodes(src), self.nodes(dst), None, "residual", dst.layer))
            covered |= self.merged.get(o, {o})
        self.merged[target] = covered
        return self.sites[target]

    def _match_cat(self, srcs, axis: Cat, off: int) -> list[_Seg] | None:
        segs: list[_Seg] = []
        for p in axis.parts:
            m = self._match(srcs, p, p.size)
            if m is not None:
                segs.append(_Seg(off, p.size, 1, True, m))
            elif isinstance(p, Cat):
                sub = self._match_cat(srcs, p, off)
                if sub is None:
                    return None
                segs += sub
            else:
                return None
            off += p.size
        return segs

    def _match_flatten(self, srcs, axis: Axis | None, n: int) -> list[_Seg] | None:
        if isinstance(axis, Prod):
            parts = axis.parts
            for i in range(1, len(parts)):
                head, tail = parts[:i], parts[i:]
                if not any(_has_groups(t) for t in tail):
                    ch = _prod_of(head)
                    m = self._match(srcs, ch, ch.size)
                    if m is not None:
                        return [_Seg(0, ch.size, n // ch.size, True, m)]
                if not any(_has_groups(h) for h in head):
                    ch = _prod_of(tail)
                    m = self._match(srcs, ch, ch.size)
                    if m is not None:
                        return [_Seg(0, ch.size, n // ch.size, False, m)]
            return None
        if _has_groups(axis):
            return None
        for s in reversed(srcs):
            if s == "input":
                continue
            c = self.sites[self.site_of[s]].size
            if 0 < c < n and n % c == 0:
                m = self._match(srcs, None, c)
                if m is not None:
                    return [_Seg(0, c, n // c, True, m)]
        return None

    def resolve(self, lay: Layer, idx: int, axis: Axis | None, n: int, *,
                flatten: bool = False) -> list[_Seg]:
        """How the ``n`` input features of ``lay`` map onto nodes (residual edges added)."""
        srcs = sorted({s for s in lay.sources if s == "input" or s in self.site_of},
                      key=lambda s: self.order.get(s, -1))
        if axis is not None and axis.size != n:
            axis = None
        m = self._match(srcs, axis, n)
        if m is not None:
            return [_Seg(0, n, 1, True, m)]
        if isinstance(axis, Cat):
            segs = self._match_cat(srcs, axis, 0)
            if segs is not None:
                return segs
        if flatten:
            segs = self._match_flatten(srcs, axis, n)
            if segs is not None:
                return segs
        if axis is not None and _has_groups(axis):
            for s in reversed(srcs):
                if s == "input" or self.axis_of.get(s) is None:
                    continue
                hits = [o for o, sub in _segments(self.axis_of[s]) if sub == axis]
                if hits:
                    nodes = self.nodes(self.sites[self.site_of[s]])
                    return [_Seg(0, n, 1, True, nodes[hits[-1]:hits[-1] + n])]
        site = self.new_site(f"{lay.name}:in", n, "hidden", idx, axis)
        self.notes.append(f"{lay.name}: input ({n} features) not matched to its sources "
                          f"{list(lay.sources)}; given its own node set {site.name!r}")
        return [_Seg(0, n, 1, True, self.nodes(site))]

    @staticmethod
    def channel_nodes(segs: list[_Seg], n: int) -> Tensor:
        out = torch.empty(n, dtype=torch.long)
        for sg in segs:
            out[sg.off:sg.off + sg.C] = sg.nodes
        return out

    # ------------------------------------------------------------------ edges
    def dense(self, weight: str, rows: int, n_in: int, row_off: int, segs: list[_Seg],
              dst: Tensor, kind: str, layer: int) -> None:
        """Edges of the matrix ``weight[row_off:row_off + rows, :n_in]`` (row = target unit)."""
        r = self.ref(weight)
        if r is None:
            return
        base, write = r
        o = torch.arange(rows)
        for sg in segs:
            c, s = torch.arange(sg.C), torch.arange(sg.S)
            feat = sg.off + (c[:, None] * sg.S + s[None, :] if sg.slow else s[None, :] * sg.C + c[:, None])
            flat = base + (row_off + o)[:, None, None] * n_in + feat[None]          # (O, C, S)
            k = kind if sg.S == 1 else "flatten"
            if sg.S == 1 or self.conv == "kernel":
                self.add(_Chunk(sg.nodes.repeat(rows), dst.repeat_interleave(sg.C),
                                flat.reshape(rows * sg.C, sg.S), k, layer, write=write))
            else:
                pos = torch.full((rows * sg.C * sg.S, _POS_DIMS), -1, dtype=torch.long)
                pos[:, 0] = s.repeat(rows * sg.C)
                self.add(_Chunk(sg.nodes.repeat_interleave(sg.S).repeat(rows),
                                dst.repeat_interleave(sg.C * sg.S), flat.reshape(-1, 1), k, layer,
                                pos=pos, write=write))

    def kernel_edges(self, weight: str, src: Tensor, dst: Tensor, entry: Tensor,
                     kshape: tuple[int, ...], kind: str, layer: int) -> None:
        """Convolution edges: ``entry[e]`` is the (i, j) slot of edge e in the weight's leading
        two axes; each slot holds ``prod(kshape)`` kernel entries."""
        r = self.ref(weight)
        if r is None:
            return
        base, write = r
        K = _numel(kshape)
        if self.conv == "kernel":
            ref = base + entry[:, None] * K + torch.arange(K)[None, :]
            self.add(_Chunk(src, dst, ref, kind, layer, write=write))
            return
        kpos = torch.arange(K)
        coords = torch.full((K, _POS_DIMS), -1, dtype=torch.long)
        rem = kpos.clone()
        for d in range(len(kshape) - 1, -1, -1):
            if d < _POS_DIMS:
                coords[:, d] = rem % kshape[d]
            rem = rem // kshape[d]
        E = len(src)
        ref = (base + entry[:, None] * K + kpos[None, :]).reshape(-1, 1)
        self.add(_Chunk(src.repeat_interleave(K), dst.repeat_interleave(K), ref, kind, layer,
                        pos=coords.repeat(E, 1), write=write))

    # ------------------------------------------------------------------ layers
    def build(self) -> None:
        for idx, lay in enumerate(self.s.layers):
            handler = {"linear": self.linear, "conv": self.conv_layer,
                       "conv_transpose": self.conv_layer, "embedding": self.embedding,
                       "attention": self.attention}.get(lay.kind)
            if handler is None and lay.kind in _NORM_KINDS:
                handler = self.norm
            if handler is None:
                self.notes.append(f"{lay.name}: layer kind {lay.kind!r} has no graph encoding; "
                                  f"its tensors are kept as extras")
                continue
            self.current = idx
            handler(lay, idx)
        # the model output
        outs = [o for o in self.s.outputs if o in self.site_of]
        by_size: dict[int, list[str]] = {}
        for o in outs:
            by_size.setdefault(self.sites[self.site_of[o]].size, []).append(o)
        for n, group in by_size.items():
            site = self.merge(sorted(group, key=lambda x: self.order.get(x, -1)), n)
            if site.role == "hidden":
                site.role = "output"

    def _out_site(self, lay: Layer, idx: int, size: int, axis: Axis | None) -> Site:
        site = self.new_site(lay.name, size, "hidden", idx, axis, lay.activation)
        self.site_of[lay.name] = site.name
        self.axis_of[lay.name] = axis if axis is not None and axis.size == size else None
        return site

    def _weight_axis(self, name: str, i: int) -> Axis | None:
        ax = self.s.axes.get(name)
        return ax[i] if ax is not None and len(ax) > i else None

    def linear(self, lay: Layer, idx: int) -> None:
        w = lay.tensors.get("weight")
        if w not in self.shapes or len(self.shapes[w]) != 2:
            self.notes.append(f"{lay.name}: linear layer without a 2-d weight; kept as extras")
            return
        O, n_in = self.shapes[w]
        axis_in = lay.inputs if lay.inputs is not None else self._weight_axis(w, 1)
        segs = self.resolve(lay, idx, axis_in, n_in, flatten=True)
        out_axis = lay.output if lay.output is not None else self._weight_axis(w, 0)
        site = self._out_site(lay, idx, O, out_axis)
        self.dense(w, O, n_in, 0, segs, self.nodes(site), "linear", idx)
        b = lay.tensors.get("bias")
        if b in self.shapes and _numel(self.shapes[b]) == O:
            self.attach(self.nodes(site), "bias", b)

    def conv_layer(self, lay: Layer, idx: int) -> None:
        w = lay.tensors.get("weight")
        if w not in self.shapes or len(self.shapes[w]) < 3:
            self.notes.append(f"{lay.name}: convolution without a kernel; kept as extras")
            return
        shape = self.shapes[w]
        kshape = tuple(shape[2:])
        transposed = lay.kind == "conv_transpose"
        if transposed:          # weight (C_in, C_out / g, *k)
            C_in, Og = shape[0], shape[1]
            C_out = lay.output.size if lay.output is not None else Og
            g = max(C_out // Og, 1)
            Ig = C_in // g
        else:                   # weight (C_out, C_in / g, *k)
            C_out, Ig = shape[0], shape[1]
            C_in = lay.inputs.size if lay.inputs is not None else Ig
            g = max(C_in // Ig, 1)
            Og = C_out // g
        if C_in != g * Ig or C_out != g * Og:
            self.notes.append(f"{lay.name}: channel counts {C_in}->{C_out} do not fit the kernel "
                              f"{shape}; kept as extras")
            return
        self.kernel_shapes[lay.name] = kshape
        segs = self.resolve(lay, idx, lay.inputs, C_in)
        in_nodes = self.channel_nodes(segs, C_in)
        out_axis = lay.output if lay.output is not None else self._weight_axis(w, 1 if transposed else 0)
        site = self._out_site(lay, idx, C_out, out_axis)
        out_nodes = self.nodes(site)
        if transposed:
            i = torch.arange(C_in)[:, None]
            j = torch.arange(Og)[None, :]
            src = in_nodes.index_select(0, i.expand(C_in, Og).reshape(-1))
            dst = out_nodes.index_select(0, ((i // Ig) * Og + j).reshape(-1))
            entry = (i * Og + j).reshape(-1)
        else:
            o = torch.arange(C_out)[:, None]
            j = torch.arange(Ig)[None, :]
            src = in_nodes.index_select(0, ((o // Og) * Ig + j).reshape(-1))
            dst = out_nodes.index_select(0, o.expand(C_out, Ig).reshape(-1))
            entry = (o * Ig + j).reshape(-1)
        self.kernel_edges(w, src, dst, entry, kshape, lay.kind, idx)
        b = lay.tensors.get("bias")
        if b in self.shapes and _numel(self.shapes[b]) == C_out:
            self.attach(out_nodes, "bias", b)

    def embedding(self, lay: Layer, idx: int) -> None:
        w = lay.tensors.get("weight")
        if w not in self.shapes or len(self.shapes[w]) != 2:
            self.notes.append(f"{lay.name}: embedding without a 2-d weight; kept as extras")
            return
        V, D = self.shapes[w]
        tokens = self.new_site(f"{lay.name}:tokens", V, "token", idx)
        site = self._out_site(lay, idx, D, lay.output)
        seg = _Seg(0, V, 1, True, self.nodes(tokens))
        # weight (V, D): row = token, so edges of the transposed matrix: entry (t, d) = t * D + d
        r = self.ref(w)
        if r is None:
            return
        base, write = r
        t = torch.arange(V)[None, :]
        d = torch.arange(D)[:, None]
        self.add(_Chunk(seg.nodes.repeat(D), self.nodes(site).repeat_interleave(V),
                        (base + t * D + d).reshape(-1, 1), "embedding", idx, write=write))

    def norm(self, lay: Layer, idx: int) -> None:
        n = lay.inputs.size if lay.inputs is not None else None
        params = {col: lay.tensors.get(role) for role, col in _NORM_COLS.items()}
        if n is None:
            sizes = [_numel(self.shapes[t]) for t in params.values() if t in self.shapes]
            n = sizes[0] if sizes else None
        srcs = [s for s in lay.sources if s == "input" or s in self.site_of]
        if n is None or not srcs:
            self.notes.append(f"{lay.name}: {lay.kind} with no known input; kept as extras")
            return
        params = {c: t for c, t in params.items() if t in self.shapes and _numel(self.shapes[t]) == n}
        if len(params) < sum(1 for r in _NORM_COLS if r in lay.tensors):
            # e.g. LayerNorm([C, H, W]): not one value per channel. The layer becomes
            # transparent (its consumers read its input's nodes); its tensors stay extras.
            self.notes.append(f"{lay.name}: {lay.kind} parameters do not have one entry per "
                              f"channel ({n}); kept as extras")
            inputs = [x.size for x in self.sites.values() if x.role == "input" and x.layer == -1]
            sizes = {self.sites[self.site_of[s]].size if s != "input" else
                     (inputs[0] if len(inputs) == 1 else -1) for s in srcs}
            if len(sizes) == 1 and -1 not in sizes:
                site = self.merge(srcs, sizes.pop())
                self.site_of[lay.name] = site.name
                self.axis_of[lay.name] = site.axis
            return
        # fold into the nodes it reads when they feed nothing else
        src = lay.sources[0] if len(lay.sources) == 1 else None
        fold = None
        if src is not None and self.consumers.get(src, []) == [lay.name]:
            if src == "input":
                if self._fits("input", lay.inputs, n):
                    fold = self.input_site(n)
            elif src in self.site_of and self._fits(src, lay.inputs, n):
                fold = self.sites[self.site_of[src]]
        if fold is not None and fold.norm is None:
            fold.norm = lay.name
            if fold.activation is None:
                fold.activation = lay.activation
            self.site_of[lay.name] = fold.name
            self.axis_of[lay.name] = lay.output if lay.output is not None else lay.inputs
            site = fold
        else:
            segs = self.resolve(lay, idx, lay.inputs, n)
            in_nodes = self.channel_nodes(segs, n)
            site = self.new_site(lay.name, n, "norm", idx, lay.inputs, lay.activation)
            site.norm = lay.name
            self.site_of[lay.name] = site.name
            self.axis_of[lay.name] = site.axis
            self.add(_Chunk(in_nodes, self.nodes(site), None, "norm", idx))
        for col, t in params.items():
            self.attach(self.nodes(site), col, t)

    def attention(self, lay: Layer, idx: int) -> None:
        T = lay.tensors
        wo = T.get("out_proj.weight")
        if wo not in self.shapes:
            self.notes.append(f"{lay.name}: attention without out_proj.weight; kept as extras")
            return
        E_out, E = self.shapes[wo]
        packed = T.get("in_proj_weight") in self.shapes
        if packed:
            w_in = T["in_proj_weight"]
            qkv_axis = self._weight_axis(w_in, 0)
            parts = qkv_axis.parts if isinstance(qkv_axis, Cat) and len(qkv_axis.parts) == 3 else (None,) * 3
        else:
            parts = tuple(self._weight_axis(T.get(f"{s}_proj_weight"), 0) for s in "qkv")
        heads = 1
        if isinstance(parts[0], Prod) and len(parts[0].parts) == 2:
            heads = parts[0].parts[0].size
        elif isinstance(parts[2], Prod) and len(parts[2].parts) == 2:
            heads = parts[2].parts[0].size
        sites = {}
        for s, ax in zip("qkv", parts):
            site = self.new_site(f"{lay.name}:{s}", E, f"attn_{s}", idx, ax)
            site.heads = heads
            sites[s] = site
        if packed:
            n_in = self.shapes[w_in][1]
            segs = self.resolve(lay, idx, self._weight_axis(w_in, 1), n_in)
            for i, s in enumerate("qkv"):
                self.dense(w_in, E, n_in, i * E, segs, self.nodes(sites[s]), f"attn_{s}", idx)
                self.attach(self.nodes(sites[s]), "bias", T.get("in_proj_bias"), row_off=i * E)
        else:
            for i, s in enumerate("qkv"):
                w = T.get(f"{s}_proj_weight")
                if w not in self.shapes:
                    continue
                n_in = self.shapes[w][1]
                segs = self.resolve(lay, idx, self._weight_axis(w, 1), n_in)
                self.dense(w, E, n_in, 0, segs, self.nodes(sites[s]), f"attn_{s}", idx)
                self.attach(self.nodes(sites[s]), "bias", T.get("in_proj_bias"), row_off=i * E)
        out = self._out_site(lay, idx, E_out, lay.output)
        v = _Seg(0, E, 1, True, self.nodes(sites["v"]))
        self.dense(wo, E_out, E, 0, [v], self.nodes(out), "attn_o", idx)
        bo = T.get("out_proj.bias")
        if bo in self.shapes and _numel(self.shapes[bo]) == E_out:
            self.attach(self.nodes(out), "bias", bo)
        # parameter-free: the coordinates of one dot product, and q -> v within a head
        q, k, vv = (self.nodes(sites[s]) for s in "qkv")
        self.add(_Chunk(k, q, None, "attn_qk", idx))
        d = E // heads
        h = torch.arange(heads)[:, None, None]
        i = torch.arange(d)[None, :, None]
        j = torch.arange(d)[None, None, :]
        self.add(_Chunk(q.index_select(0, (h * d + i).expand(heads, d, d).reshape(-1)),
                        vv.index_select(0, (h * d + j).expand(heads, d, d).reshape(-1)), None,
                        "attn_score", idx))

    # ------------------------------------------------------------------ assemble
    def finish(self) -> _Topology:
        N = self.N
        F_v = len(NODE_VALUES)
        node_role = torch.empty(N, dtype=torch.long)
        node_layer = torch.empty(N, dtype=torch.long)
        node_act = torch.empty(N, dtype=torch.long)
        node_head = torch.full((N,), -1, dtype=torch.long)
        for site in self.sites.values():
            sl = slice(site.offset, site.offset + site.size)
            node_role[sl] = _ROLE[site.role]
            node_layer[sl] = site.layer
            node_act[sl] = _activation_code(site.activation)
            if site.heads:
                node_head[sl] = torch.arange(site.size) // max(site.size // site.heads, 1)
        node_ref = torch.full((N, F_v), -1, dtype=torch.long)
        node_write = torch.zeros((N, F_v), dtype=torch.bool)
        for nodes, col, idx, write in self.node_refs:
            node_ref[:, col].index_copy_(0, nodes, idx)
            node_write[:, col].index_fill_(0, nodes, write)
        K = max([c.ref.shape[1] for c in self.chunks if c.ref is not None] + [1])
        E = sum(len(c.src) for c in self.chunks)
        edge_index = torch.empty((2, E), dtype=torch.long)
        edge_kind = torch.empty(E, dtype=torch.long)
        edge_layer = torch.empty(E, dtype=torch.long)
        edge_pos = torch.full((E, _POS_DIMS), -1, dtype=torch.long)
        edge_ref = torch.full((E, K), -1, dtype=torch.long)
        edge_mask = torch.zeros((E, K), dtype=torch.bool)
        edge_write = torch.ones(E, dtype=torch.bool)
        e = 0
        for c in self.chunks:
            n = len(c.src)
            sl = slice(e, e + n)
            edge_index[0, sl] = c.src
            edge_index[1, sl] = c.dst
            edge_kind[sl] = _KIND[c.kind]
            edge_layer[sl] = c.layer
            if c.pos is not None:
                edge_pos[sl] = c.pos
            if c.ref is not None:
                edge_ref[sl, :c.ref.shape[1]] = c.ref
                edge_mask[sl, :c.ref.shape[1]] = True
                edge_write[sl] = c.write
            else:
                edge_mask[sl, 0] = True
                edge_write[sl] = False
            e += n
        covered = torch.zeros(self.P, dtype=torch.bool)
        wmask = edge_mask & (edge_ref >= 0) & edge_write[:, None]
        covered.index_fill_(0, torch.masked_select(edge_ref, wmask), True)
        nmask = (node_ref >= 0) & node_write
        covered.index_fill_(0, torch.masked_select(node_ref, nmask), True)
        ew_pos = wmask.reshape(-1).nonzero().squeeze(1)
        nw_pos = nmask.reshape(-1).nonzero().squeeze(1)
        topo = _Topology(
            conv=self.conv, layer_names=[l.name for l in self.s.layers],
            layer_kinds=[l.kind for l in self.s.layers], sites=self.sites, num_nodes=N,
            node_role=node_role, node_layer=node_layer, node_activation=node_act, node_head=node_head,
            node_ref=node_ref, node_write=node_write, edge_index=edge_index, edge_kind=edge_kind,
            edge_layer=edge_layer, edge_pos=edge_pos, edge_ref=edge_ref, edge_mask=edge_mask,
            edge_gather=torch.where(edge_ref >= 0, edge_ref,
                                    torch.where(edge_mask, self.P + 1, self.P)).reshape(-1),
            node_gather=torch.where(node_ref >= 0, node_ref, self.P).reshape(-1),
            edge_write=edge_write, layout=dict(self.layout),
            shapes={k: tuple(self.shapes[k]) for k in self.layout}, num_params=self.P,
            fill_idx=(~covered).nonzero().squeeze(1), kernel_shapes=dict(self.kernel_shapes),
            notes=list(self.notes),
            ew_pos=ew_pos, ew_ref=edge_ref.reshape(-1).index_select(0, ew_pos),
            nw_pos=nw_pos, nw_ref=node_ref.reshape(-1).index_select(0, nw_pos))
        return topo


def _build_topology(structure: Structure, shapes: Mapping[str, tuple[int, ...]],
                    floating: set[str], conv: str) -> _Topology:
    if conv not in ("kernel", "entries"):
        raise ValueError(f"ParamGraph: conv must be 'kernel' or 'entries', got {conv!r}")
    b = _Builder(structure, shapes, floating, conv)
    b.build()
    return b.finish()


# ============================================================================ the graph
class DenseGraph(NamedTuple):
    """Padded dense view of a parameter graph (see :meth:`ParamGraph.to_dense`).

    Shapes:
        x: ``(*B, N, F)``; node_mask: ``(*B, N)``; adj: ``(*B, N, N, F_e)``;
        adj_mask: ``(*B, N, N)``, with ``N`` the padded node count.
    """

    x: Tensor
    node_mask: Tensor
    adj: Tensor
    adj_mask: Tensor


class ParamGraph:
    r"""A network's weights as a graph of neurons and weights that inverts exactly.

    See the module docstring for the encoding. Build one with :meth:`from_structure`,
    :meth:`from_module` or, for a zoo, :meth:`batch_from_stacked`; never call the constructor.

    Attributes:
        node_value (Tensor): ``(*B, N, 5)`` values from tensors, columns :data:`NODE_VALUES`
            (``bias, norm_weight, norm_bias, running_mean, running_var``; 0 where absent).
            Editable in place.
        node_value_mask (Tensor): ``(N, 5)`` bool, where a value exists.
        edge_weight (Tensor): ``(*B, E, K)`` edge values: the weight (``K`` = 1 for a linear
            weight), or the flattened kernel / spatial weights of a convolution / flatten edge,
            zero-padded to the widest edge; parameter-free edges (residual, norm, attn_qk,
            attn_score) hold 1 in column 0. Editable in place.
        edge_mask (Tensor): ``(E, K)`` bool, the valid entries of ``edge_weight``.
        edge_index (Tensor): ``(2, E)`` source and target node of each edge.
        node_role, node_layer, node_activation, node_head (Tensor): ``(N,)`` long: index into
            :data:`ROLES`, layer index (into ``layer_names``; -1 for the model input),
            index into :data:`ACTIVATIONS`, attention head (-1 elsewhere).
        edge_kind, edge_layer (Tensor): ``(E,)`` long: index into :data:`EDGE_KINDS`, layer index.
        edge_pos (Tensor): ``(E, 3)`` long: kernel position (``conv="entries"``) or spatial
            position (flatten edges in ``"entries"`` mode), -1 where not applicable.
        sites (dict[str, Site]): the node sets in order (name, offset, size, role, layer, axis).
        node_keys (list[tuple[str, int]]): ``(site, unit)`` of every node.
        layer_names, layer_kinds (list[str]): the structure's layers (indexed by ``*_layer``).
        kernel_shapes (dict[str, tuple]): layer name -> kernel shape of each convolution.
        extras (dict[str, Tensor]): tensors no layer covers, kept as they are.
        ROLES, EDGE_KINDS, ACTIVATIONS, NODE_VALUES (tuple[str, ...]): the code books of
            ``node_role``, ``edge_kind``, ``node_activation`` and the columns of ``node_value``.
        notes (list[str]): anything that could not be encoded and why.
        edge_ref, node_ref (Tensor): ``(E, K)`` / ``(N, 5)`` long: where each entry of
            ``edge_weight`` / ``node_value`` came from, as an index into the concatenation of
            the covered tensors (``layout``: name -> (offset, numel)); -1 where none.
            :meth:`reference` turns one into ``(tensor name, flat index)``.

    Shapes:
        ``N`` nodes, ``E`` edges, ``K`` widest edge, ``B`` the model axis of a batch from
        :meth:`batch_from_stacked` (absent for one model).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        >>> g = ParamGraph.from_module(net, torch.randn(2, 4))
        >>> g.num_nodes, g.num_edges
        (15, 56)
        >>> g.edge_weight[0, 0] += 1.0
        >>> sd = g.to_state_dict()
        >>> bool(sd["0.weight"][0, 0] == net.state_dict()["0.weight"][0, 0] + 1)
        True
    """

    ROLES = ROLES
    EDGE_KINDS = EDGE_KINDS
    ACTIVATIONS = ACTIVATIONS
    NODE_VALUES = NODE_VALUES

    def __init__(self, topology: _Topology, node_value: Tensor, edge_weight: Tensor,
                 fill_value: Tensor, extras: dict[str, Tensor], keys: list[str],
                 dtypes: dict[str, torch.dtype]) -> None:
        self._topo = topology
        self.node_value = node_value
        self.edge_weight = edge_weight
        self._fill_value = fill_value
        self.extras = extras
        self._keys = keys
        self._dtypes = dtypes

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_structure(cls, structure: Structure, state: Mapping[str, Tensor], *,
                       conv: str = "kernel") -> "ParamGraph":
        """The parameter graph of one network.

        Args:
            structure (Structure): from :func:`graphs.trace` (its ``layers`` drive the graph).
            state (dict[str, Tensor]): the network's state dict (not modified). Tensors the
                structure does not know are kept as extras.
            conv (str, optional): ``"kernel"``: one edge per (in, out) channel pair carrying the
                flattened kernel; ``"entries"``: one edge per kernel entry with its position.
                (default: ``"kernel"``)

        Returns:
            The :class:`ParamGraph`. A structure without layers (hand-written with
            :meth:`Structure.from_axes`) gives an empty graph with every tensor in ``extras``.

        Raises:
            ValueError: a tensor's shape differs from the structure's, or ``conv`` is unknown.
            TypeError: a value of ``state`` is not a tensor.

        Example:
            >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
            >>> from graphs import trace
            >>> s = trace(net, torch.randn(2, 3, 8, 8))
            >>> g = ParamGraph.from_structure(s, net.state_dict())
            >>> g.edge_weight.shape, sorted(g.extras)
            (torch.Size([12, 9]), ['1.num_batches_tracked'])
        """
        state = dict(state)
        _check_shapes("ParamGraph.from_structure", structure, state, ())
        topo = _build_topology(structure, {k: tuple(v.shape) for k, v in state.items()},
                               {k for k, v in state.items() if v.is_floating_point()}, conv)
        return cls._fill(topo, state, ())

    @classmethod
    def from_module(cls, module: torch.nn.Module, example_input: Any,
                    state: Mapping[str, Tensor] | None = None, *, conv: str = "kernel") -> "ParamGraph":
        """Trace ``module`` on ``example_input`` and build the graph of ``state`` (default: the
        module's own state dict)."""
        from .trace import trace

        structure = trace(module, example_input)
        return cls.from_structure(structure, module.state_dict() if state is None else state, conv=conv)

    @classmethod
    def batch_from_stacked(cls, structure: Structure, stacked_state: Mapping[str, Tensor], *,
                           conv: str = "kernel") -> "ParamGraph":
        """Graphs of many models of one architecture at once (a zoo shard).

        The topology is built once; node and edge values of all models are gathered with one
        indexing operation each, so 10,000 small models take well under a second.

        Args:
            structure (Structure): the architecture's structure.
            stacked_state (dict[str, Tensor]): every tensor with a leading model axis ``M``.

        Returns:
            A :class:`ParamGraph` whose ``node_value`` is ``(M, N, 5)`` and ``edge_weight``
            ``(M, E, K)``; ``graph[i]`` is model ``i`` (a view), ``to_state_dict()`` returns
            stacked tensors, ``to_pyg()`` a :class:`torch_geometric.data.Batch` of ``M`` graphs.

        Raises:
            ValueError: tensors disagree on the number of models or do not fit the structure.
        """
        state = dict(stacked_state)
        if not state:
            raise ValueError("ParamGraph.batch_from_stacked: the stacked state is empty")
        sizes = {k: v.shape[0] if v.dim() else None for k, v in state.items()}
        M = next(iter(sizes.values()))
        bad = [k for k, m in sizes.items() if m is None or m != M]
        if bad:
            raise ValueError(f"ParamGraph.batch_from_stacked: every tensor needs a leading model "
                             f"axis of the same size ({M}); {bad[:3]} differ")
        _check_shapes("ParamGraph.batch_from_stacked", structure, state, (M,))
        topo = _build_topology(structure, {k: tuple(v.shape[1:]) for k, v in state.items()},
                               {k for k, v in state.items() if v.is_floating_point()}, conv)
        return cls._fill(topo, state, (M,))

    @classmethod
    def _fill(cls, topo: _Topology, state: dict[str, Tensor], batch: tuple[int, ...]) -> "ParamGraph":
        keys = list(state)
        covered = [k for k in topo.layout]
        dtype = torch.float32
        if covered:
            dtype = state[covered[0]].dtype
            for k in covered[1:]:
                dtype = torch.promote_types(dtype, state[k].dtype)
        device = next(iter(state.values())).device if state else torch.device("cpu")
        # theta: every covered tensor flattened, then a 0 (padding) and a 1 (parameter-free edges)
        parts = [state[k].reshape(*batch, -1).to(dtype) for k in covered]
        parts.append(torch.tensor([0.0, 1.0], dtype=dtype, device=device).expand(*batch, 2))
        theta = torch.cat(parts, dim=-1)
        t = _to_device(topo, device)
        E, K = t.edge_ref.shape
        edge_weight = theta.index_select(-1, t.edge_gather).view(*batch, E, K)
        node_value = theta.index_select(-1, t.node_gather).view(*batch, *t.node_ref.shape)
        fill = theta.index_select(-1, t.fill_idx)
        extras = {k: v for k, v in state.items() if k not in topo.layout}
        dtypes = {k: state[k].dtype for k in covered}
        return cls(t, node_value, edge_weight, fill, extras, keys, dtypes)

    # ------------------------------------------------------------------ topology views
    def __getattr__(self, name: str):
        topo = self.__dict__.get("_topo")
        if topo is not None and name in ("edge_index", "edge_kind", "edge_layer", "edge_pos",
                                         "edge_mask", "node_role", "node_layer", "node_activation",
                                         "node_head", "sites", "layer_names", "layer_kinds",
                                         "kernel_shapes", "notes", "num_nodes", "conv", "edge_ref",
                                         "node_ref", "layout"):
            return getattr(topo, name)
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    @property
    def node_value_mask(self) -> Tensor:
        """``(N, 5)`` bool: the node values taken from a tensor."""
        return self._topo.node_ref >= 0

    @property
    def edge_value_mask(self) -> Tensor:
        """``(E, K)`` bool: the edge entries taken from a tensor (parameter-free edges excluded)."""
        return self._topo.edge_ref >= 0

    def reference(self, index: int) -> tuple[str, int]:
        """The ``(tensor name, flat index)`` that an entry of ``edge_ref`` / ``node_ref`` points to.

        Example:
            >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
            >>> g = ParamGraph.from_module(net, torch.randn(2, 4))
            >>> g.reference(int(g.edge_ref[5, 0])), g.reference(int(g.node_ref[4, 0]))
            (('0.weight', 5), ('0.bias', 0))
        """
        index = int(index)
        for name, (off, n) in self._topo.layout.items():
            if off <= index < off + n:
                return name, index - off
        raise IndexError(f"ParamGraph.reference: {index} is not an index of a covered tensor "
                         f"(0 .. {self._topo.num_params - 1}; -1 marks entries without one)")

    @property
    def num_edges(self) -> int:
        return int(self._topo.edge_index.shape[1])

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return tuple(self.edge_weight.shape[:-2])

    @property
    def num_models(self) -> int | None:
        """Number of models of a batch from :meth:`batch_from_stacked` (None for one model)."""
        return self.batch_shape[0] if self.batch_shape else None

    @property
    def dtype(self) -> torch.dtype:
        return self.edge_weight.dtype

    @property
    def node_keys(self) -> list[tuple[str, int]]:
        """``(site name, unit)`` of every node, in node order."""
        return [(s.name, u) for s in self._topo.sites.values() for u in range(s.size)]

    def node_permutation(self, perms: Mapping[str, Tensor]) -> Tensor:
        """The relabelling of nodes that a permutation of the network induces.

        If ``g = ParamGraph.from_structure(s, state)`` and
        ``h = ParamGraph.from_structure(s, permute(s, state, perms))``, node ``i`` of ``h`` is
        node ``p[i]`` of ``g`` (same features, same edges), with ``p = g.node_permutation(perms)``.

        Shapes:
            perms: group name -> ``(size,)``; output: ``(N,)``.
        """
        p = torch.arange(self.num_nodes, device=self._topo.edge_index.device)
        for site in self._topo.sites.values():
            if site.axis is None:
                continue
            idx = _axis_index(site.axis, perms, p.device)
            if idx is not None:
                p[site.offset:site.offset + site.size] = site.offset + idx
        return p

    def __len__(self) -> int:
        if not self.batch_shape:
            raise TypeError("ParamGraph: len() is defined for a batch from batch_from_stacked only")
        return self.batch_shape[0]

    def __getitem__(self, i: int) -> "ParamGraph":
        """Model ``i`` of a batch (a view: editing it edits the batch)."""
        if not self.batch_shape:
            raise TypeError("ParamGraph: indexing needs a batch from batch_from_stacked")
        return ParamGraph(self._topo, self.node_value[i], self.edge_weight[i], self._fill_value[i],
                          {k: v[i] for k, v in self.extras.items()}, self._keys, self._dtypes)

    def clone(self) -> "ParamGraph":
        """A copy with its own values (the topology is shared; it is never modified)."""
        return ParamGraph(self._topo, self.node_value.clone(), self.edge_weight.clone(),
                          self._fill_value.clone(), {k: v.clone() for k, v in self.extras.items()},
                          list(self._keys), dict(self._dtypes))

    def __repr__(self) -> str:
        b = f", models={self.num_models}" if self.batch_shape else ""
        return (f"ParamGraph(nodes={self.num_nodes}, edges={self.num_edges}, "
                f"weight_dim={self.edge_weight.shape[-1]}{b}, conv={self._topo.conv!r})")

    def summary(self) -> dict:
        """Counts: nodes, edges, by kind and role, covered and extra tensors."""
        t = self._topo
        kinds = torch.bincount(t.edge_kind, minlength=len(EDGE_KINDS)).tolist()
        roles = torch.bincount(t.node_role, minlength=len(ROLES)).tolist()
        return {
            "nodes": self.num_nodes, "edges": self.num_edges,
            "edges_by_kind": {k: n for k, n in zip(EDGE_KINDS, kinds) if n},
            "nodes_by_role": {r: n for r, n in zip(ROLES, roles) if n},
            "sites": len(t.sites), "layers": len(t.layer_names), "weight_dim": int(self.edge_weight.shape[-1]),
            "conv": t.conv, "covered_tensors": len(t.layout), "covered_parameters": t.num_params,
            "extra_tensors": sorted(self.extras), "models": self.num_models, "notes": list(t.notes),
        }

    # ------------------------------------------------------------------ inverse
    def to_state_dict(self) -> dict[str, Tensor]:
        """The network's state dict, with any edits of ``node_value``/``edge_weight`` applied.

        Every tensor comes back with its shape, dtype and key order; untouched entries are bit
        for bit the originals. Edits of parameter-free entries (residual, norm, attention
        structure edges) are ignored. A module used twice in the forward pass has two copies
        of its edges; the first is the one written back.

        Raises:
            ValueError: ``node_value`` or ``edge_weight`` was replaced by a tensor of another shape.
        """
        t = self._topo
        batch = self.batch_shape
        if tuple(self.edge_weight.shape[-2:]) != tuple(t.edge_ref.shape) or \
                tuple(self.node_value.shape) != (*batch, *t.node_ref.shape):
            raise ValueError(f"ParamGraph.to_state_dict: edge_weight {tuple(self.edge_weight.shape)} / "
                             f"node_value {tuple(self.node_value.shape)} no longer fit the graph "
                             f"({tuple(t.edge_ref.shape)} / {tuple(t.node_ref.shape)}); edit them in place")
        theta = torch.empty(*batch, t.num_params, dtype=self.dtype, device=self.edge_weight.device)
        if t.num_params:
            d = len(batch)
            theta.index_copy_(d, t.fill_idx, self._fill_value.to(self.dtype))
            theta.index_copy_(d, t.ew_ref, self.edge_weight.reshape(*batch, -1).index_select(d, t.ew_pos))
            theta.index_copy_(d, t.nw_ref, self.node_value.reshape(*batch, -1).index_select(d, t.nw_pos)
                              .to(self.dtype))
        out: dict[str, Tensor] = {}
        for k in self._keys:
            if k in t.layout:
                off, n = t.layout[k]
                v = theta[..., off:off + n].reshape(*batch, *t.shapes[k])
                out[k] = v.to(self._dtypes[k]) if v.dtype != self._dtypes[k] else v.clone()
            else:
                out[k] = self.extras[k].clone()
        return out

    # ------------------------------------------------------------------ feature views
    @staticmethod
    def node_feature_names() -> list[str]:
        """Column names of the PyG / dense node features ``x`` (fixed for every architecture)."""
        return (list(NODE_VALUES) + [f"has_{c}" for c in NODE_VALUES] + [f"role_{r}" for r in ROLES]
                + [f"act_{a}" for a in ACTIVATIONS] + ["depth", "head"])

    @staticmethod
    def edge_feature_names(weight_dim: int = PYG_WEIGHT_DIM) -> list[str]:
        """Column names of the PyG / dense edge features for a given ``weight_dim``."""
        return ([f"w{i}" for i in range(weight_dim)] + ["size"] + [f"kind_{k}" for k in EDGE_KINDS]
                + ["depth"] + [f"pos{i}" for i in range(_POS_DIMS)])

    def _depth(self, layer: Tensor, dtype) -> Tensor:
        return (layer + 1).to(dtype) / (len(self._topo.layer_names) + 1)

    def _node_features(self, dtype) -> Tensor:
        t = self._topo
        batch = self.batch_shape
        N, F_v = t.node_ref.shape
        static = torch.cat([
            t.node_ref.ge(0).to(dtype),
            torch.nn.functional.one_hot(t.node_role, len(ROLES)).to(dtype),
            torch.nn.functional.one_hot(t.node_activation, len(ACTIVATIONS)).to(dtype),
            self._depth(t.node_layer, dtype)[:, None],
            t.node_head.to(dtype)[:, None],
        ], dim=1)
        out = torch.empty(*batch, N, F_v + static.shape[1], dtype=dtype, device=static.device)
        out[..., :F_v] = self.node_value
        out[..., F_v:] = static
        return out

    def _weight_width(self, weight_dim: int | None) -> int:
        K = int(self.edge_weight.shape[-1])
        if weight_dim is None:
            return max(PYG_WEIGHT_DIM, K)
        if weight_dim < K and bool(self._topo.edge_mask[:, weight_dim:].any()):
            widest = int(self._topo.edge_mask.sum(1).max())
            raise ValueError(f"ParamGraph: edges carry up to {widest} weights (kernels "
                             f"{sorted(set(self._topo.kernel_shapes.values()))} or flattened feature "
                             f"maps) but weight_dim={weight_dim}; pass weight_dim>={widest} or build "
                             f"the graph with conv='entries'")
        return int(weight_dim)

    def _edge_features(self, weight_dim: int | None, dtype) -> Tensor:
        t = self._topo
        W = self._weight_width(weight_dim)
        batch = self.batch_shape
        E, K = t.edge_ref.shape
        static = torch.cat([
            t.edge_mask.sum(1, keepdim=True).to(dtype),
            torch.nn.functional.one_hot(t.edge_kind, len(EDGE_KINDS)).to(dtype),
            self._depth(t.edge_layer, dtype)[:, None],
            t.edge_pos.to(dtype),
        ], dim=1)
        out = torch.empty(*batch, E, W + static.shape[1], dtype=dtype, device=static.device)
        k = min(K, W)
        out[..., :k] = self.edge_weight[..., :k]
        if W > k:
            out[..., k:W] = 0
        out[..., W:] = static
        return out

    def to_pyg(self, *, weight_dim: int | None = None, dtype: torch.dtype = torch.float32):
        """The graph as a :class:`torch_geometric.data.Data` (a ``Batch`` for a stacked zoo).

        Feature layout, identical for every architecture so that graphs of different networks
        batch together with :class:`torch_geometric.loader.DataLoader` (see
        :meth:`node_feature_names` and :meth:`edge_feature_names`):

        * ``x`` ``(N, 31)``: the 5 node values (bias, norm weight, norm bias, running mean,
          running var; 0 where absent), 5 presence flags, role one-hot (8), activation one-hot
          (11), depth ``(layer + 1) / (L + 1)`` (0 for inputs), head index (-1 outside attention).
        * ``edge_attr`` ``(E, W + 18)``: the edge's weights zero-padded to ``W = weight_dim``,
          their count, kind one-hot (13), depth, position (3; -1 where not applicable).
        * also ``edge_index``, ``node_role``, ``node_layer``, ``edge_kind``, ``edge_layer``
          (long) and ``num_nodes``.

        Args:
            weight_dim (int, optional): width ``W`` of the weight block; give the same value to
                every graph you batch (default: ``max(16, widest edge)``, so graphs whose edges
                carry at most 16 weights always share it).
            dtype (torch.dtype, optional): of ``x`` and ``edge_attr`` (default: ``float32``).

        Raises:
            ValueError: an edge carries more than ``weight_dim`` weights.
        """
        from torch_geometric.data import Batch, Data

        t = self._topo
        x = self._node_features(dtype)
        ea = self._edge_features(weight_dim, dtype)
        if not self.batch_shape:
            return Data(x=x, edge_index=t.edge_index.clone(), edge_attr=ea, node_role=t.node_role.clone(),
                        node_layer=t.node_layer.clone(), edge_kind=t.edge_kind.clone(),
                        edge_layer=t.edge_layer.clone(), num_nodes=self.num_nodes)
        if len(self.batch_shape) != 1:
            raise ValueError("ParamGraph.to_pyg: only one leading model axis is supported")
        M, N, E = self.batch_shape[0], self.num_nodes, self.num_edges
        dev = x.device
        g = torch.arange(M, device=dev)
        ptr = torch.arange(M + 1, device=dev) * N
        eptr = torch.arange(M + 1, device=dev) * E
        ei = (t.edge_index[:, None, :] + (g * N)[None, :, None]).reshape(2, M * E)
        rep = lambda v: v.repeat(M)  # noqa: E731
        b = Batch(x=x.reshape(M * N, -1), edge_index=ei, edge_attr=ea.reshape(M * E, -1),
                  node_role=rep(t.node_role), node_layer=rep(t.node_layer),
                  edge_kind=rep(t.edge_kind), edge_layer=rep(t.edge_layer),
                  batch=g.repeat_interleave(N), ptr=ptr)
        zeros = torch.zeros(M, dtype=torch.long, device=dev)
        b._num_graphs = M
        b._slice_dict = {"x": ptr, "edge_index": eptr, "edge_attr": eptr, "node_role": ptr,
                         "node_layer": ptr, "edge_kind": eptr, "edge_layer": eptr}
        b._inc_dict = {"x": zeros, "edge_index": ptr[:-1], "edge_attr": zeros, "node_role": zeros,
                       "node_layer": zeros, "edge_kind": zeros, "edge_layer": zeros}
        return b

    def to_dense(self, *, num_nodes: int | None = None, weight_dim: int | None = None,
                 dtype: torch.dtype = torch.float32) -> DenseGraph:
        """Padded dense tensors: node features, an adjacency of edge features, and masks.

        Same feature layout as :meth:`to_pyg`. Pad several graphs to one ``num_nodes`` (and
        one ``weight_dim``) and ``torch.stack`` the fields to batch them. The adjacency has
        ``N^2`` entries: meant for small networks. Parallel edges (a residual skip around a
        single layer, the kernel entries of ``conv="entries"``) are summed, so for a linear
        layer with a skip the adjacency holds ``I + W``, the map the block computes.

        Shapes:
            x: ``(*B, N, 31)``, node_mask: ``(*B, N)``, adj: ``(*B, N, N, W + 18)``,
            adj_mask: ``(*B, N, N)`` with ``N = num_nodes``.
        """
        n = self.num_nodes if num_nodes is None else int(num_nodes)
        if n < self.num_nodes:
            raise ValueError(f"ParamGraph.to_dense: num_nodes={n} is smaller than the graph "
                             f"({self.num_nodes} nodes)")
        batch = self.batch_shape
        x = self._node_features(dtype)
        ea = self._edge_features(weight_dim, dtype)
        dev = x.device
        X = torch.zeros(*batch, n, x.shape[-1], dtype=dtype, device=dev)
        X[..., :self.num_nodes, :] = x
        mask = torch.zeros(*batch, n, dtype=torch.bool, device=dev)
        mask[..., :self.num_nodes] = True
        A = torch.zeros(*batch, n, n, ea.shape[-1], dtype=dtype, device=dev)
        src, dst = self._topo.edge_index
        flat = (src * n + dst).to(dev)
        A.view(*batch, n * n, -1).index_add_(len(batch), flat, ea)
        amask = torch.zeros(n * n, dtype=torch.bool, device=dev).index_fill_(0, flat, True)
        amask = amask.view(n, n).expand(*batch, n, n).clone()
        return DenseGraph(X, mask, A, amask)

    def to_networkx(self):
        """A :class:`networkx.DiGraph` for inspection; every attribute is a str, int or float,
        so :func:`networkx.write_graphml` works.

        Nodes carry ``site``, ``unit``, ``role``, ``layer``, ``layer_name``, ``activation``,
        ``head`` and the node values they have (``bias``, ``norm_weight``, ...). Edges carry
        ``kind``, ``layer``, ``size``, and ``weight`` (one value) or ``kernel`` (the values,
        space-separated) and ``position`` where one applies.
        """
        import networkx as nx

        if self.batch_shape:
            raise ValueError("ParamGraph.to_networkx: pick one model first (graph[i])")
        t = self._topo
        G = nx.DiGraph(num_layers=len(t.layer_names), conv=t.conv, dtype=str(self.dtype))
        names = t.layer_names
        vals = self.node_value.detach().cpu().tolist()
        has = t.node_ref.ge(0).tolist()
        heads = t.node_head.tolist()
        for site in t.sites.values():
            act = ACTIVATIONS[_activation_code(site.activation)]
            lname = names[site.layer] if site.layer >= 0 else ""
            for u in range(site.size):
                i = site.offset + u
                attrs = {"site": site.name, "unit": u, "role": site.role, "layer": site.layer,
                         "layer_name": lname, "activation": act, "head": heads[i]}
                for c, name in enumerate(NODE_VALUES):
                    if has[i][c]:
                        attrs[name] = float(vals[i][c])
                G.add_node(i, **attrs)
        src, dst = t.edge_index.tolist()
        kinds, layers = t.edge_kind.tolist(), t.edge_layer.tolist()
        sizes = t.edge_mask.sum(1).tolist()
        w = self.edge_weight.detach().cpu().tolist()
        pos = t.edge_pos.tolist()
        for e in range(self.num_edges):
            attrs = {"kind": EDGE_KINDS[kinds[e]], "layer": layers[e], "size": int(sizes[e])}
            if sizes[e] == 1:
                attrs["weight"] = float(w[e][0])
            else:
                attrs["kernel"] = " ".join(repr(float(v)) for v in w[e][:sizes[e]])
            if pos[e][0] >= 0:
                attrs["position"] = ",".join(str(p) for p in pos[e] if p >= 0)
            G.add_edge(src[e], dst[e], **attrs)
        return G


def _check_shapes(caller: str, structure: Structure, state: Mapping[str, Tensor],
                  batch: tuple[int, ...]) -> None:
    for k, v in state.items():
        if not isinstance(v, Tensor):
            raise TypeError(f"{caller}: {k!r} is a {type(v).__name__}, not a tensor")
        want = structure.shapes.get(k)
        if want is not None and tuple(v.shape) != (*batch, *want):
            lead = "(M, " if batch else "("
            raise ValueError(f"{caller}: {k!r} has shape {tuple(v.shape)}; the structure expects "
                             f"{lead}{', '.join(str(d) for d in want)})"
                             + (" with a leading model axis" if batch else ""))


def _to_device(topo: _Topology, device: torch.device) -> _Topology:
    if topo.edge_index.device == device:
        return topo
    moved = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in topo.__dict__.items()}
    return _Topology(**moved)
