"""Views of a parameter graph as features: PyG data, padded dense tensors, a networkx graph
(a mixin of :class:`~graphs.param_graph.ParamGraph`)."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .topology import _POS_DIMS, ACTIVATIONS, EDGE_KINDS, NODE_VALUES, PYG_WEIGHT_DIM, ROLES, _activation_code


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



class _GraphViews:
    """The feature views of :class:`~graphs.param_graph.ParamGraph`."""

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
