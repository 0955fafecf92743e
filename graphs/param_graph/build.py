"""Building a parameter graph's topology from a traced structure and the shapes of a state dict."""
from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from ..structure import Axis, Cat, Layer, Prod, Structure
from .layers import _LayerRules
from .topology import (_COL, _KIND, _POS_DIMS, _ROLE, NODE_VALUES, Site, _activation_code, _Chunk,
                       _has_groups, _numel, _prod_of, _Seg, _segments, _Topology)


class _Builder(_LayerRules):
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

