"""Parameter graphs: exact inverse, editable view, permutation symmetry, PyG/networkx/dense views,
batched construction for a zoo, and the DWSNets / nfn converters."""
from __future__ import annotations

import copy
import functools
from collections import Counter

import networkx as nx
import pytest
import torch
import torch.nn as nn

import graphs
from graphs import (
    ParamGraph,
    dwsnets_to_state_dict,
    mlp_layer_names,
    nfn_to_state_dict,
    permute,
    random_permutation,
    state_dict_to_dwsnets,
    state_dict_to_nfn,
    trace,
)
from weightspace.models import get_model

import nets
from nets import mlp, randomize

EDGE_KINDS, NODE_VALUES, ROLES = ParamGraph.EDGE_KINDS, ParamGraph.NODE_VALUES, ParamGraph.ROLES


CASES = {**nets.CASES, **nets.EXTRA_CASES}

FAMILIES = {
    "mlp": {"in_features": 8, "hidden": [6, 5], "out_features": 3},
    "cnn": {"channels": [4, 8], "image_size": 8},
    "cnn_flatten": {"channels": [4, 8], "image_size": 8, "flatten": True},
    "vgg": {"width": 0.25, "image_size": 8, "config": [8, "M", 16], "classifier": [12]},
    "resnet20": {"width": 0.25, "image_size": 8},
    "siren": {"hidden": [8, 8]},
    "vit": {"dim": 16, "depth": 2, "heads": 2, "image_size": 8, "patch": 4},
    "vit_manual": {"dim": 16, "depth": 1, "heads": 2, "image_size": 8, "patch": 4, "attention": "manual"},
}


@functools.lru_cache(maxsize=None)
def traced(name: str):
    """(model, structure, state) of a case or a built-in family (``family:NAME``), random weights."""
    torch.manual_seed(0)
    if name.startswith("family:"):
        name = name.split(":", 1)[1]
        model = get_model(name.split("_")[0], **FAMILIES[name])
        x = model.example_input()
    else:
        make, inp = CASES[name]
        model, x = make(), inp()
    model = randomize(model)
    return model, trace(model, x), {k: v.clone() for k, v in model.state_dict().items()}


ALL = sorted(CASES) + [f"family:{f}" for f in sorted(FAMILIES)]


_get = traced


def assert_same_state(out, ref):
    assert list(out) == list(ref)
    for k in ref:
        assert out[k].dtype == ref[k].dtype and out[k].shape == ref[k].shape, k
        assert torch.equal(out[k], ref[k]), k


# ----------------------------------------------------------------------------- exact inverse
@pytest.mark.parametrize("conv", ["kernel", "entries"])
@pytest.mark.parametrize("case", ALL)
def test_round_trip_is_exact(case, conv):
    _, s, state = _get(case)
    g = ParamGraph.from_structure(s, state, conv=conv)
    assert_same_state(g.to_state_dict(), state)
    assert g.edge_weight.shape == (g.num_edges, g.edge_weight.shape[1])
    assert g.node_value.shape == (g.num_nodes, len(NODE_VALUES))
    assert len(g.node_keys) == g.num_nodes
    if s.layers:
        assert g.num_nodes > 0 and g.num_edges > 0


@pytest.mark.parametrize("case", ALL)
def test_edits_land_in_the_right_places(case):
    _, s, state = _get(case)
    g = ParamGraph.from_structure(s, state)
    # every value taken from a tensor, plus one: each covered entry moves by exactly one
    g.edge_weight[g.edge_value_mask] += 1
    g.node_value[g.node_value_mask] += 1
    out = g.to_state_dict()
    layout = g.layout
    for k, v in state.items():
        if k in layout:
            assert torch.equal(out[k], v + 1), k
        else:
            assert torch.equal(out[k], v), k
    # untouched graphs of the same structure are unaffected
    assert_same_state(ParamGraph.from_structure(s, state).to_state_dict(), state)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_round_trip_keeps_dtype(dtype):
    model, s, _ = traced("resnet")
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    g = ParamGraph.from_structure(s, state)
    assert g.dtype == dtype
    assert_same_state(g.to_state_dict(), state)


def test_mixed_dtypes_are_promoted_and_restored():
    model, s, state = traced("torch_mha")
    state = dict(state)
    state["embed.weight"] = state["embed.weight"].double()
    state["mlp.0.bias"] = state["mlp.0.bias"].half()
    g = ParamGraph.from_structure(s, state)
    assert g.dtype == torch.float64
    assert_same_state(g.to_state_dict(), state)


def test_grouped_conv_transpose_connects_within_groups():
    # round trip and topology only: the tracer's grouped ConvTranspose structure is not
    # permutation-safe yet (weight axis 0 is left unpermuted while its input channels move)
    model = randomize(nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.ConvTranspose2d(4, 6, 3, groups=2)))
    state = model.state_dict()
    g = ParamGraph.from_module(model, torch.randn(2, 2, 6, 6))
    assert_same_state(g.to_state_dict(), state)
    e, i, o = _edges(g, "0", "2", "conv_transpose")
    assert len(e) == 4 * 3 and torch.equal(i // 2, o // 3)
    assert torch.equal(g.edge_weight[e], state["2.weight"][i, o % 3].reshape(-1, 9))


def test_uncovered_tensors_are_extras():
    _, s, state = traced("family:vit")
    g = ParamGraph.from_structure(s, state)
    assert {"cls_token", "pos_embed"} <= set(g.extras)
    assert all(k.endswith("num_batches_tracked") for k in
               ParamGraph.from_structure(*traced("resnet")[1:]).extras)
    _, s, state = traced("functional")   # F.linear on bare parameters is a layer too
    g = ParamGraph.from_structure(s, state)
    assert not g.extras and g.num_nodes == 4 + 9 + 2
    assert_same_state(g.to_state_dict(), state)


# ----------------------------------------------------------------------------- what is where
def _site_nodes(g, name):
    site = g.sites[name]
    return torch.arange(site.offset, site.offset + site.size)


def _edges(g, src_site, dst_site, kind):
    a, b = _site_nodes(g, src_site), _site_nodes(g, dst_site)
    src, dst = g.edge_index
    sel = torch.isin(src, a) & torch.isin(dst, b) & (g.edge_kind == EDGE_KINDS.index(kind))
    return sel.nonzero().squeeze(1), src[sel] - a[0], dst[sel] - b[0]


def test_linear_edges_carry_their_weights():
    _, s, state = traced("mlp")
    g = ParamGraph.from_structure(s, state)
    e, i, o = _edges(g, "input", "0", "linear")
    assert len(e) == 4 * 8
    assert torch.equal(g.edge_weight[e, 0], state["0.weight"][o, i])
    assert torch.equal(g.node_value[_site_nodes(g, "0"), 0], state["0.bias"])
    assert g.sites["6"].role == "output" and g.sites["input"].role == "input"
    j = int(e[5])
    assert g.reference(int(g.edge_ref[j, 0])) == ("0.weight", int(o[5] * 4 + i[5]))
    g.edge_weight[j, 0] = 123.0
    out = g.to_state_dict()
    assert out["0.weight"][o[5], i[5]] == 123.0
    assert int((out["0.weight"] != state["0.weight"]).sum()) == 1


def test_conv_edges_carry_kernels_and_bn_is_on_the_channels():
    _, s, state = traced("resnet")
    g = ParamGraph.from_structure(s, state)
    e, i, o = _edges(g, "stem.0", "stage1.0.c1", "conv")
    assert len(e) == 4 * 4 and g.edge_weight.shape[1] == 9
    assert torch.equal(g.edge_weight[e], state["stage1.0.c1.weight"][o, i].reshape(-1, 9))
    nodes = _site_nodes(g, "stage1.0.c1")   # BatchNorm b1 folded into c1's channels
    for col, role in (("norm_weight", "weight"), ("norm_bias", "bias"), ("running_mean", "running_mean"),
                      ("running_var", "running_var")):
        assert torch.equal(g.node_value[nodes, NODE_VALUES.index(col)], state[f"stage1.0.b1.{role}"])
    assert g.kernel_shapes["stem.0"] == (3, 3)
    # residual stream: identity edges from the block input into the block output
    e, i, o = _edges(g, "stem.0", "stage1.0.c2", "residual")
    assert torch.equal(i, o) and len(e) == 4 and bool((g.edge_weight[e, 0] == 1).all())
    # entries mode: one edge per kernel entry, with its position
    h = ParamGraph.from_structure(s, state, conv="entries")
    e, i, o = _edges(h, "stem.0", "stage1.0.c1", "conv")
    assert len(e) == 4 * 4 * 9 and h.edge_weight.shape[1] == 1
    pos = h.edge_pos[e]
    assert torch.equal(h.edge_weight[e, 0], state["stage1.0.c1.weight"][o, i, pos[:, 0], pos[:, 1]])


def test_grouped_conv_connects_within_groups_only():
    _, s, state = traced("grouped")
    g = ParamGraph.from_structure(s, state)
    e, i, o = _edges(g, "0", "2", "conv")     # 8 -> 12 channels, groups=4
    assert len(e) == 12 * 2
    assert torch.equal(i // 2, o // 3)
    e, i, o = _edges(g, "4", "6", "conv")     # depthwise
    assert torch.equal(i, o) and len(e) == 24


def test_flatten_edges_carry_spatial_weights():
    _, s, state = traced("conv2d_flatten")
    g = ParamGraph.from_structure(s, state)
    e, i, o = _edges(g, "3", "6", "flatten")
    assert len(e) == 4 * 5
    w = state["6.weight"].reshape(5, 4, 9)
    assert torch.equal(g.edge_weight[e, :9], w[o, i])
    h = ParamGraph.from_structure(s, state, conv="entries")
    e, i, o = _edges(h, "3", "6", "flatten")
    assert len(e) == 4 * 5 * 9
    assert torch.equal(h.edge_weight[e, 0], w[o, i, h.edge_pos[e, 0]])


def test_attention_heads_and_projections():
    _, s, state = traced("torch_mha")
    g = ParamGraph.from_structure(s, state)
    E = 8
    for r, s_ in enumerate("qkv"):
        nodes = _site_nodes(g, f"att:{s_}")
        assert bool((g.node_role[nodes] == ROLES.index(f"attn_{s_}")).all())
        assert torch.equal(g.node_head[nodes], torch.arange(E) // 4)
        assert torch.equal(g.node_value[nodes, 0], state["att.in_proj_bias"][r * E:(r + 1) * E])
        e, i, o = _edges(g, "norm1", f"att:{s_}", f"attn_{s_}")
        assert torch.equal(g.edge_weight[e, 0], state["att.in_proj_weight"][r * E + o, i])
    e, i, o = _edges(g, "att:v", "att", "attn_o")
    assert torch.equal(g.edge_weight[e, 0], state["att.out_proj.weight"][o, i])
    e, i, o = _edges(g, "att:q", "att:v", "attn_score")
    assert torch.equal(i // 4, o // 4) and len(e) == 2 * 4 * 4
    assert g.sites["norm1"].role == "norm"   # pre-norm on a residual stream: its own nodes


def test_embedding_is_a_linear_map_from_tokens():
    _, s, state = traced("embedding")
    g = ParamGraph.from_structure(s, state)
    e, t, d = _edges(g, "emb:tokens", "emb", "embedding")
    assert len(e) == 11 * 6
    assert torch.equal(g.edge_weight[e, 0], state["emb.weight"][t, d])


def test_concat_reads_both_parts():
    _, s, state = traced("concat")
    g = ParamGraph.from_structure(s, state)
    e, i, o = _edges(g, "c", "d", "linear")
    assert torch.equal(g.edge_weight[e, 0], state["d.weight"][o, i])
    e, i, o = _edges(g, "input", "d", "linear")
    assert torch.equal(g.edge_weight[e, 0], state["d.weight"][o, 4 + i])


# ----------------------------------------------------------------------------- symmetry
def _edge_keys(g, ei):
    return [tuple(a) + tuple(p) + (k,) for a, p, k in
            zip(ei.t().tolist(), g.edge_pos.tolist(), g.edge_kind.tolist())]


@pytest.mark.parametrize("conv", ["kernel", "entries"])
@pytest.mark.parametrize("case", ALL)
def test_permuting_the_network_relabels_the_graph(case, conv):
    _, s, state = _get(case)
    perms = random_permutation(s, 7)
    g = ParamGraph.from_structure(s, state, conv=conv)
    h = ParamGraph.from_structure(s, permute(s, state, perms), conv=conv)
    dg, dh = g.to_pyg(), h.to_pyg()
    head = ParamGraph.node_feature_names().index("head")
    keep = [c for c in range(dg.x.shape[1]) if c != head]
    xg, xh = dg.x[:, keep], dh.x[:, keep]
    # same multisets of node features and of (source, edge, target) triples
    rows = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
    assert rows(xg) == rows(xh)
    trip = lambda d, x: rows(torch.cat([x[d.edge_index[0]], d.edge_attr, x[d.edge_index[1]]], 1))  # noqa: E731
    assert trip(dg, xg) == trip(dh, xh)
    # the induced node permutation maps one graph onto the other
    p = g.node_permutation(perms)
    assert sorted(p.tolist()) == list(range(g.num_nodes))
    assert torch.equal(xh, xg[p])
    index = {k: e for e, k in enumerate(_edge_keys(g, g.edge_index))}
    assert len(index) == g.num_edges
    mapped = torch.tensor([index[k] for k in _edge_keys(h, p[h.edge_index])], dtype=torch.long)
    assert torch.equal(dh.edge_attr, dg.edge_attr[mapped])
    # heads are relabelled as blocks: the partition into heads is kept
    pairs = set(zip(zip(h.node_layer.tolist(), h.node_head.tolist()),
                    zip(g.node_layer[p].tolist(), g.node_head[p].tolist())))
    assert len({a for a, _ in pairs}) == len(pairs) == len({b for _, b in pairs})
    # and the permutation did move hidden nodes
    if s.groups:
        assert not torch.equal(p, torch.arange(g.num_nodes)) or case == "functional"


# ----------------------------------------------------------------------------- batches
def test_batch_from_stacked_matches_single_graphs():
    model, s, _ = _get("family:cnn")
    model = copy.deepcopy(model)
    states = []
    for i in range(4):
        randomize(model, seed=i)
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    stacked = {k: torch.stack([st[k] for st in states]) for k in states[0]}
    bg = ParamGraph.batch_from_stacked(s, stacked)
    assert bg.num_models == 4 and len(bg) == 4
    assert_same_state(bg.to_state_dict(), stacked)
    singles = [ParamGraph.from_structure(s, st) for st in states]
    for i, g in enumerate(singles):
        assert torch.equal(bg[i].edge_weight, g.edge_weight)
        assert torch.equal(bg[i].node_value, g.node_value)
        assert_same_state(bg[i].to_state_dict(), states[i])
    from torch_geometric.data import Batch

    ref = Batch.from_data_list([g.to_pyg() for g in singles])
    b = bg.to_pyg()
    assert b.num_graphs == 4
    for key in ("x", "edge_index", "edge_attr", "batch", "ptr", "node_role", "edge_kind"):
        assert torch.equal(b[key], ref[key]), key
    assert torch.equal(b.get_example(2).edge_attr, singles[2].to_pyg().edge_attr)
    # editing one model of the batch writes back into that model only
    bg[1].edge_weight[0, 0] = 99.0
    out = bg.to_state_dict()
    assert out["convs.0.weight"][1, 0, 0, 0, 0] == 99.0
    assert torch.equal(out["convs.0.weight"][0], stacked["convs.0.weight"][0])
    dense = bg.to_dense()
    assert dense.x.shape[:2] == (4, bg.num_nodes)


def test_batch_from_stacked_rejects_mismatched_models():
    _, s, state = _get("family:mlp")
    stacked = {k: torch.stack([v, v]) for k, v in state.items()}
    stacked["layers.0.bias"] = stacked["layers.0.bias"][:1]
    with pytest.raises(ValueError, match="leading model axis"):
        ParamGraph.batch_from_stacked(s, stacked)
    with pytest.raises(ValueError, match="layers.0.weight"):
        ParamGraph.from_structure(s, {**state, "layers.0.weight": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="conv must be"):
        ParamGraph.from_structure(s, state, conv="pixels")


def test_graphs_of_different_architectures_batch_through_message_passing():
    from torch_geometric.loader import DataLoader
    from torch_geometric.nn import GINEConv, TransformerConv, global_mean_pool

    data = [ParamGraph.from_structure(*traced(n)[1:]).to_pyg()
            for n in ("family:mlp", "family:vgg", "family:resnet20", "family:vit")]   # MLP, CNN with BN, ResNet, transformer
    widths = {(d.x.shape[1], d.edge_attr.shape[1]) for d in data}
    assert widths == {(len(ParamGraph.node_feature_names()), len(ParamGraph.edge_feature_names()))}
    loader = DataLoader(data, batch_size=4)
    batch = next(iter(loader))
    assert batch.num_graphs == 4
    F_x, F_e = widths.pop()
    gine = GINEConv(nn.Sequential(nn.Linear(F_x, 16), nn.ReLU(), nn.Linear(16, 16)), edge_dim=F_e)
    tconv = TransformerConv(16, 8, heads=2, edge_dim=F_e)
    h = tconv(gine(batch.x, batch.edge_index, batch.edge_attr).relu(), batch.edge_index, batch.edge_attr)
    out = global_mean_pool(h, batch.batch)
    assert out.shape == (4, 16) and torch.isfinite(out).all()
    out.sum().backward()
    assert gine.nn[0].weight.grad is not None


def test_weight_dim_is_checked():
    _, s, state = traced("family:vit")
    g = ParamGraph.from_structure(s, state)
    assert g.to_pyg().edge_attr.shape[1] == 16 + 18
    with pytest.raises(ValueError, match="weight_dim>=16"):
        g.to_pyg(weight_dim=4)
    assert ParamGraph.from_structure(s, state, conv="entries").to_pyg(weight_dim=1).edge_attr.shape[1] == 19


# ----------------------------------------------------------------------------- other views
def test_networkx_and_graphml(tmp_path):
    _, s, state = traced("resnet")
    g = ParamGraph.from_structure(s, state)
    G = g.to_networkx()
    assert G.number_of_nodes() == g.num_nodes and G.number_of_edges() <= g.num_edges
    for _, attrs in list(G.nodes(data=True))[:50]:
        assert all(isinstance(v, (str, int, float)) for v in attrs.values())
    path = tmp_path / "g.graphml"
    nx.write_graphml(G, path)
    H = nx.read_graphml(path)
    assert H.number_of_nodes() == g.num_nodes
    kinds = Counter(a["kind"] for _, _, a in H.edges(data=True))
    assert kinds["conv"] > 0 and kinds["residual"] > 0
    e, i, o = _edges(g, "stem.0", "stage1.0.c1", "conv")
    a = H.edges[str(int(g.edge_index[0, e[0]])), str(int(g.edge_index[1, e[0]]))]
    assert [float(v) for v in a["kernel"].split()] == g.edge_weight[e[0]].tolist()


def test_to_dense_views():
    _, s, state = traced("mlp")
    g = ParamGraph.from_structure(s, state)
    d = g.to_dense(num_nodes=g.num_nodes + 3, weight_dim=1)
    n = g.num_nodes
    assert d.x.shape == (n + 3, 31) and d.adj.shape == (n + 3, n + 3, 19)
    assert int(d.node_mask.sum()) == n and int(d.adj_mask.sum()) == g.num_edges
    src, dst = g.edge_index
    assert torch.equal(d.adj[src, dst, 0], g.edge_weight[:, 0])
    with pytest.raises(ValueError, match="num_nodes"):
        g.to_dense(num_nodes=2)


def test_repr_and_summary():
    _, s, state = traced("family:vit")
    g = ParamGraph.from_structure(s, state)
    assert repr(g).startswith(f"ParamGraph(nodes={g.num_nodes}, edges={g.num_edges}")
    summ = g.summary()
    assert summ["nodes"] == g.num_nodes and sum(summ["edges_by_kind"].values()) == g.num_edges
    assert "attn_q" in summ["edges_by_kind"] and "norm" in summ["nodes_by_role"]


def test_from_module_and_public_exports():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    g = graphs.ParamGraph.from_module(model, torch.randn(2, 4))
    assert (g.num_nodes, g.num_edges) == (15, 56)
    assert_same_state(g.to_state_dict(), model.state_dict())
    for name in ("ParamGraph", "state_dict_to_dwsnets", "dwsnets_to_state_dict", "state_dict_to_nfn",
                 "nfn_to_state_dict", "mlp_layer_names"):
        assert name in graphs.__all__


# ----------------------------------------------------------------------------- converters
def _mlp_states(n=3, seed=0):
    torch.manual_seed(seed)
    models = [mlp([5, 7, 6, 3]) for _ in range(n)]
    return [{k: v.clone() for k, v in m.state_dict().items()} for m in models]


def test_dwsnets_round_trip():
    state = _mlp_states(1)[0]
    names = mlp_layer_names(state)
    assert names == [("0.weight", "0.bias"), ("2.weight", "2.bias"), ("4.weight", "4.bias")]
    ws, bs = state_dict_to_dwsnets(state)
    assert [tuple(w.shape) for w in ws] == [(5, 7, 1), (7, 6, 1), (6, 3, 1)]
    assert [tuple(b.shape) for b in bs] == [(7, 1), (6, 1), (3, 1)]
    assert torch.equal(ws[1][:, :, 0], state["2.weight"].t())
    assert_same_state(dwsnets_to_state_dict(ws, bs, names), state)
    states = _mlp_states(3)
    stacked = {k: torch.stack([st[k] for st in states]) for k in states[0]}
    ws, bs = state_dict_to_dwsnets(stacked, stacked=True)
    assert tuple(ws[0].shape) == (3, 5, 7, 1) and tuple(bs[2].shape) == (3, 3, 1)
    assert_same_state(dwsnets_to_state_dict(ws, bs, names), stacked)
    _, s, _ = traced("mlp")
    assert mlp_layer_names(s)[0] == ("0.weight", "0.bias")
    with pytest.raises(ValueError, match="linear weight"):
        state_dict_to_dwsnets({"c.weight": torch.zeros(2, 3, 3, 3)})
    with pytest.raises(ValueError, match="must agree"):
        dwsnets_to_state_dict(ws, bs[:2], names)


def test_nfn_round_trip_without_the_package():
    state = _mlp_states(1)[0]
    feats = state_dict_to_nfn(state)
    weights, biases = (feats.weights, feats.biases) if hasattr(feats, "weights") else feats
    assert [tuple(w.shape) for w in weights] == [(1, 1, 7, 5), (1, 1, 6, 7), (1, 1, 3, 6)]
    assert [tuple(b.shape) for b in biases] == [(1, 1, 7), (1, 1, 6), (1, 1, 3)]
    names = mlp_layer_names(state)
    assert_same_state(nfn_to_state_dict((weights, biases), names), state)
    with pytest.raises(ValueError, match="stacked=True"):
        nfn_to_state_dict((tuple(torch.cat([w, w]) for w in weights), tuple(torch.cat([b, b]) for b in biases)),
                          names, stacked=False)


def test_nfn_layout_against_the_package():
    nfn = pytest.importorskip("nfn")
    from nfn.common import WeightSpaceFeatures, network_spec_from_wsfeat, params_to_state_dicts
    from nfn.layers import NPLinear

    states = _mlp_states(3)
    stacked = {k: torch.stack([st[k] for st in states]) for k in states[0]}
    feats = state_dict_to_nfn(stacked, stacked=True)
    assert isinstance(feats, WeightSpaceFeatures)
    # nfn's own converter reads our layout back into the original state dicts
    for got, ref in zip(params_to_state_dicts(list(states[0]), feats), states):
        assert_same_state(dict(got), ref)
    spec = network_spec_from_wsfeat(feats)
    assert len(spec) == 3 and spec.get_io() == (5, 3)
    out = NPLinear(spec, in_channels=1, out_channels=4)(feats)
    assert tuple(out.weights[1].shape) == (3, 4, 6, 7)
    assert_same_state(nfn_to_state_dict(feats, mlp_layer_names(states[0])), stacked)
    assert nfn.__name__ == "nfn"
