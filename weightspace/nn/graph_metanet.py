"""GraphMetanet: an edge-updating message-passing metanetwork over parameter graphs."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ._private import mlp

__all__ = ["GraphMetanet", "probe_features"]

ARCHS = ("gnn", "transformer")
_PYG_NODE_DIM = 31   # ParamGraph.to_pyg's x; its last column is the attention head index
_HEAD_COL = 30


class _GraphMetaLayer(nn.Module):
    """One round: edges from their endpoints, then nodes from incoming and outgoing edges."""

    def __init__(self, hidden: int, arch: str, heads: int, dropout: float) -> None:
        super().__init__()
        from torch_geometric.nn import TransformerConv
        from torch_geometric.nn.aggr import MultiAggregation

        h = hidden
        self.arch = arch
        self.edge_mlp = mlp([3 * h, h, h], dropout=dropout)
        self.norm_e = nn.LayerNorm(h)
        self.norm_x = nn.LayerNorm(h)
        if arch == "gnn":
            self.msg_in = mlp([2 * h, h, h])
            self.msg_out = mlp([2 * h, h, h])
            self.aggr = MultiAggregation(["mean", "max", "std"], mode="cat")
            self.node_mlp = mlp([7 * h + 2, h, h], dropout=dropout)
        else:
            if h % heads:
                raise ValueError(f"GraphMetanet: hidden={h} must be a multiple of heads={heads} for arch='transformer'")
            self.conv_in = TransformerConv(h, h // heads, heads=heads, edge_dim=h)
            self.conv_out = TransformerConv(h, h // heads, heads=heads, edge_dim=h)
            self.node_mlp = mlp([3 * h, h, h], dropout=dropout)

    def forward(self, x: Tensor, e: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor]:
        src, dst = edge_index
        e = self.norm_e(e + self.edge_mlp(torch.cat([x[src], x[dst], e], 1)))
        N = x.shape[0]
        if self.arch == "gnn":
            a_in = self.aggr(self.msg_in(torch.cat([x[src], e], 1)), dst, dim_size=N)
            a_out = self.aggr(self.msg_out(torch.cat([x[dst], e], 1)), src, dim_size=N)
            ones = torch.ones_like(src, dtype=x.dtype)
            deg_in = torch.zeros(N, dtype=x.dtype, device=x.device).index_add_(0, dst, ones)
            deg_out = torch.zeros(N, dtype=x.dtype, device=x.device).index_add_(0, src, ones)
            upd = torch.cat([x, a_in, a_out, deg_in.log1p()[:, None], deg_out.log1p()[:, None]], 1)
        else:
            upd = torch.cat([x, self.conv_in(x, edge_index, e), self.conv_out(x, edge_index.flip(0), e)], 1)
        x = self.norm_x(x + self.node_mlp(upd))
        return x, e


class GraphMetanet(nn.Module):
    r"""A metanetwork on parameter graphs, after `"Graph Metanetworks for Processing Diverse
    Neural Architectures" <https://arxiv.org/abs/2312.04501>`_ (Lim et al., 2024) and `"Graph
    Neural Networks for Learning Equivariant Representations of Neural Networks"
    <https://arxiv.org/abs/2403.12143>`_ (Kofinas et al., 2024).

    Node and edge states are both updated in every layer: an edge from its two endpoints,
    then a node from the messages of its incoming and of its outgoing edges, aggregated
    PNA-style (mean, max and standard deviation, with log-degree scalers) or, with
    ``arch="transformer"``, by two :class:`~torch_geometric.nn.conv.TransformerConv` (one per
    direction) that attend over edges with their states as ``edge_dim`` features:

    .. math::
        e_{ij} &\leftarrow \mathrm{LN}\big(e_{ij} + \phi_e(x_i, x_j, e_{ij})\big), \\
        x_i &\leftarrow \mathrm{LN}\Big(x_i + \phi_x\big(x_i,\ \bigoplus_{j \to i} \psi_{in}(x_j, e_{ji}),\
        \bigoplus_{i \to k} \psi_{out}(x_k, e_{ik}),\ \log(1 + d_i)\big)\Big).

    Positions come from the node features of :meth:`graphs.ParamGraph.to_pyg` (role,
    activation and depth of each neuron's layer, so inputs and outputs are told apart), never
    from node indices; the attention head index is reduced to "belongs to a head" (a head
    number is a label that permuting heads changes), so node and edge states are equivariant and the readout (mean and max
    of node states, mean of edge states, per graph, then an MLP) is invariant to permutations
    of the input network. Graphs of different architectures batch together.

    Args:
        node_dim (int, optional): width of ``x``. (default: ``31``, as ``to_pyg`` writes it)
        edge_dim (int, optional): width of ``edge_attr``. (default: ``34``, ``to_pyg`` with
            ``weight_dim=16``)
        hidden (int, optional): width of node and edge states. (default: ``64``)
        out_channels (int, optional): size of the invariant output. (default: ``1``)
        num_layers (int, optional): message-passing rounds. (default: ``3``)
        arch (str, optional): ``"gnn"`` or ``"transformer"``. (default: ``"gnn"``)
        heads (int, optional): attention heads for ``"transformer"``. (default: ``4``)
        dropout (float, optional): dropout inside the update MLPs. (default: ``0.0``)
        probe_dim (int, optional): width of extra node features ``data.probe`` (the input
            network's activations on probe inputs, :func:`probe_features`), appended to ``x``;
            0 for none. (default: ``0``)
        global_dim (int, optional): width of extra per-graph features ``data.stats`` (invariant
            statistics of each network, e.g. per-tensor moments and quantiles of its weights),
            encoded by an MLP and concatenated to the pooled readout; 0 for none.
            (default: ``0``)

    Shapes:
        - input: a :class:`torch_geometric.data.Batch` (or ``Data``) with ``x (N, node_dim)``,
          ``edge_index (2, E)``, ``edge_attr (E, edge_dim)``, ``batch (N,)`` and, with
          ``probe_dim``, ``probe (N, probe_dim)``; with ``global_dim``, ``stats (B, global_dim)``;
        - output: ``(B, out_channels)``; :meth:`encode` gives node ``(N, hidden)`` and edge
          ``(E, hidden)`` states.

    Raises:
        ValueError: unknown ``arch``, or input widths not matching ``node_dim`` / ``edge_dim``.

    Example:
        >>> from graphs import ParamGraph
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        >>> data = ParamGraph.from_module(net, torch.randn(2, 4)).to_pyg()
        >>> GraphMetanet(hidden=16)(data).shape
        torch.Size([1, 1])
    """

    def __init__(self, node_dim: int = 31, edge_dim: int = 34, hidden: int = 64, out_channels: int = 1, *,
                 num_layers: int = 3, arch: str = "gnn", heads: int = 4, dropout: float = 0.0,
                 probe_dim: int = 0, global_dim: int = 0) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"GraphMetanet: unknown arch {arch!r}; choose one of: {', '.join(ARCHS)}")
        self.node_dim = node_dim
        self.edge_dim = edge_dim
        self.hidden = hidden
        self.out_channels = out_channels
        self.num_layers = num_layers
        self.arch = arch
        self.heads = heads
        self.dropout = dropout
        self.probe_dim = probe_dim
        self.global_dim = global_dim
        self.node_enc = mlp([node_dim + probe_dim, hidden, hidden])
        self.edge_enc = mlp([edge_dim, hidden, hidden])
        self.layers = nn.ModuleList(_GraphMetaLayer(hidden, arch, heads, dropout) for _ in range(num_layers))
        self.global_enc = mlp([global_dim, hidden, hidden]) if global_dim else None
        self.head = mlp([(4 if global_dim else 3) * hidden, hidden, out_channels], dropout=dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters") and not isinstance(m, _GraphMetaLayer):
                m.reset_parameters()

    def __repr__(self) -> str:
        return f"GraphMetanet({self.node_dim}, {self.out_channels}, hidden={self.hidden}, arch={self.arch!r})"

    def encode(self, data) -> tuple[Tensor, Tensor]:
        """Equivariant node ``(N, hidden)`` and edge ``(E, hidden)`` states."""
        x, ea = data.x, data.edge_attr
        if x.shape[-1] != self.node_dim or ea.shape[-1] != self.edge_dim:
            raise ValueError(f"GraphMetanet: graphs have node features {x.shape[-1]} and edge features "
                             f"{ea.shape[-1]} wide; the model expects {self.node_dim} and {self.edge_dim} "
                             f"(build them with ParamGraph.to_pyg(weight_dim={self.edge_dim - 18}))")
        if self.node_dim == _PYG_NODE_DIM:
            # the head index labels a head block, and permuting heads relabels them: keep only
            # whether a node belongs to a head (heads are told apart by their attn_score edges)
            x = torch.cat([x[:, :_HEAD_COL], (x[:, _HEAD_COL:_HEAD_COL + 1] >= 0).to(x.dtype)], 1)
        if self.probe_dim:
            probe = getattr(data, "probe", None)
            if probe is None or probe.shape != (x.shape[0], self.probe_dim):
                got = "none" if probe is None else tuple(probe.shape)
                raise ValueError(f"GraphMetanet: built with probe_dim={self.probe_dim}, so graphs need probe "
                                 f"features data.probe of shape ({x.shape[0]}, {self.probe_dim}); got {got} "
                                 f"(see probe_features)")
            x = torch.cat([x, probe.to(x.dtype)], 1)
        h, e = self.node_enc(x), self.edge_enc(ea)
        for layer in self.layers:
            h, e = layer(h, e, data.edge_index)
        return h, e

    def forward(self, data) -> Tensor:
        from torch_geometric.nn import global_max_pool, global_mean_pool

        h, e = self.encode(data)
        batch = getattr(data, "batch", None)
        if batch is None:
            batch = torch.zeros(h.shape[0], dtype=torch.long, device=h.device)
        size = int(batch.max()) + 1 if batch.numel() else 1
        ebatch = batch[data.edge_index[0]]
        pooled = torch.cat([global_mean_pool(h, batch, size), global_max_pool(h, batch, size),
                            global_mean_pool(e, ebatch, size)], 1)
        if self.global_enc is not None:
            stats = getattr(data, "stats", None)
            if stats is None or tuple(stats.shape) != (size, self.global_dim):
                got = "none" if stats is None else tuple(stats.shape)
                raise ValueError(f"GraphMetanet: built with global_dim={self.global_dim}, so batches need per-graph "
                                 f"features data.stats of shape ({size}, {self.global_dim}); got {got}")
            pooled = torch.cat([pooled, self.global_enc(stats.to(pooled.dtype))], 1)
        return self.head(pooled)


_CHANNEL_FIRST = ("conv", "conv_transpose", "batchnorm", "instancenorm", "groupnorm")


def _per_unit(t: Tensor, size: int, channel_first: bool) -> Tensor | None:
    """``(P, size)``: the activations ``t`` of shape ``(P, *rest)`` averaged over every axis but
    the unit axis (channels first for convolutions, last otherwise); None if none fits."""
    if not isinstance(t, Tensor) or t.dim() < 2:
        return None
    P, rest = t.shape[0], tuple(t.shape[1:])
    if channel_first and rest[0] == size:
        return t.reshape(P, size, -1).mean(2)
    if rest[-1] == size:
        return t.reshape(P, -1, size).mean(1)
    if len(rest) > 1 and rest[0] == size:
        return t.reshape(P, size, -1).mean(2)
    if t[0].numel() == size:
        return t.reshape(P, size)
    return None


def probe_features(module: nn.Module, graph, inputs: Tensor, state: dict[str, Tensor] | None = None) -> Tensor:
    r"""The activations of a network on probe inputs, as node features of its parameter graph.

    Probe features (as in Graph Metanetworks and Neural Graphs) tell a metanetwork what a
    network computes, not only what its weights are. Every node of ``graph`` that is a unit
    of a layer's output (a neuron or a channel) gets that unit's output on each of the ``P``
    probe inputs, averaged over spatial and token positions; input nodes get the probe
    inputs themselves; nodes without a measurable output (attention internals, functional
    layers) get zeros. A layer's output is taken before its activation function (the
    module's own output). Since permuting a network's hidden units permutes their
    activations the same way, the features are equivariant:
    ``probe_features(m, h, x)[i] == probe_features(m, g, x)[p[i]]`` for
    ``p = g.node_permutation(perms)`` and ``h`` the graph of the permuted network.

    Args:
        module (nn.Module): the network's architecture (its own weights are not used).
        graph (graphs.ParamGraph): the graph of one network or of a stacked batch
            (:meth:`~graphs.ParamGraph.batch_from_stacked`); its node order is used.
        inputs (Tensor): ``(P, *input_shape)`` probe inputs.
        state (dict[str, Tensor], optional): the weights (stacked for a batch); default
            ``graph.to_state_dict()``.

    Shapes:
        output: ``(N, P)`` for one network, ``(B, N, P)`` for a batch, on ``inputs``' device.

    Example:
        >>> from graphs import ParamGraph
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        >>> g = ParamGraph.from_module(net, torch.randn(1, 2))
        >>> probe_features(net, g, torch.rand(5, 2)).shape
        torch.Size([11, 5])
    """
    from torch.func import functional_call, vmap

    state = graph.to_state_dict() if state is None else dict(state)
    batched = bool(graph.batch_shape)
    P = inputs.shape[0]
    sites = list(graph.sites.values())
    layer_kind = {name: kind for name, kind in zip(graph.layer_names, graph.layer_kinds)}
    hooked: dict[str, nn.Module] = {}
    for site in sites:
        if site.layer < 0 or site.name in hooked:
            continue
        try:
            hooked[site.name] = module.get_submodule(site.name)
        except AttributeError:
            continue
    captured: dict[str, Tensor] = {}

    def hook(name):
        def fn(_m, _inp, out):
            captured.setdefault(name, out)
        return fn

    def run(params: dict[str, Tensor], x: Tensor) -> tuple[Tensor, ...]:
        captured.clear()
        functional_call(module, params, (x,))
        cols = []
        for site in sites:
            if site.layer < 0:
                u = _per_unit(x, site.size, x.dim() > 2)
            else:
                u = _per_unit(captured.get(site.name), site.size, layer_kind.get(site.name) in _CHANNEL_FIRST)
            cols.append(u.to(x.dtype).T if u is not None else x.new_zeros(site.size, P))
        return torch.cat(cols, 0)

    was_training = module.training
    module.eval()
    handles = [m.register_forward_hook(hook(name)) for name, m in hooked.items()]
    try:
        with torch.no_grad():
            dev = inputs.device
            params = {k: v.to(dev) for k, v in state.items()}
            if not batched:
                return run(params, inputs)
            try:
                return vmap(run, in_dims=(0, None))(params, inputs)
            except Exception:  # noqa: BLE001 - layers vmap cannot batch: one network at a time
                n = graph.batch_shape[0]
                return torch.stack([run({k: v[i] for k, v in params.items()}, inputs) for i in range(n)])
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)
