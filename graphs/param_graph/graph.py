"""The :class:`ParamGraph` container: construction, topology views, indexing a batch, and the exact
inverse :meth:`ParamGraph.to_state_dict`."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from ..structure import Structure, axis_index
from .build import _build_topology, _check_shapes
from .topology import ACTIVATIONS, EDGE_KINDS, NODE_VALUES, ROLES, _to_device, _Topology
from .views import _GraphViews


class ParamGraph(_GraphViews):
    r"""A network's weights as a graph of neurons and weights that inverts exactly.

    See :mod:`graphs.param_graph` for the encoding. Build one with :meth:`from_structure`,
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
        from ..trace import trace

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
            idx = axis_index(site.axis, perms, p.device)
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
