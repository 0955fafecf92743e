"""How each layer kind becomes nodes and edges: the per-layer rules of the graph builder
(a mixin of :class:`~graphs.param_graph.build._Builder`, whose helpers they call)."""
from __future__ import annotations

import torch

from ..structure import Axis, Cat, Layer, Prod
from .topology import _NORM_COLS, _NORM_KINDS, Site, _Chunk, _numel, _Seg


class _LayerRules:
    """The layer handlers of :class:`~graphs.param_graph.build._Builder`."""

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

