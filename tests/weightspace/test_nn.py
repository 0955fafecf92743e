"""Metanetwork layers: equivariance (and not more), invariance, shapes, errors."""
from __future__ import annotations

import pytest
import torch

from graphs import ParamGraph, permute, random_permutation, trace
from weightspace.models import get_model
from weightspace.nn import (DWSLayer, FlatMLP, GraphMetanet, HNPLinear, HNPPool, NetworkSpec, NPLinear, NPPool,
                            StatNN, WeightSpaceFeatures)
from weightspace.testing import (assert_equivariant, assert_invariant, equivariance_error,
                                 random_neuron_perms)

SPECS = {
    "mlp2": [(8, 4), (3, 8)],
    "mlp4": [(7, 5), (6, 7), (9, 6), (2, 9)],
    "cnn": [(4, 1, 3, 3), (5, 4, 3, 3), (3, 5)],   # convolutions, global pooling, a linear head
}


def features(spec: NetworkSpec, channels: int = 2, batch: int = 3, seed: int = 0) -> WeightSpaceFeatures:
    g = torch.Generator().manual_seed(seed)
    return WeightSpaceFeatures(tuple(torch.randn(batch, channels, *s, generator=g) for s in spec.weight_shapes),
                               tuple(torch.randn(batch, channels, *s, generator=g) for s in spec.bias_shapes))


def uncoupled(x: WeightSpaceFeatures, layer: int, perm: torch.Tensor) -> WeightSpaceFeatures:
    """Permute the rows of one layer only, not the columns of the next: not a symmetry."""
    ws, bs = list(x.weights), list(x.biases)
    ws[layer], bs[layer] = ws[layer][:, :, perm], bs[layer][:, :, perm]
    return WeightSpaceFeatures(tuple(ws), tuple(bs))


LAYERS = {
    "np": (lambda s, c, o: NPLinear(s, c, o), False),
    "hnp": (lambda s, c, o: HNPLinear(s, c, o), True),
    "dws-mean": (lambda s, c, o: DWSLayer(s, c, o), True),
    "dws-max": (lambda s, c, o: DWSLayer(s, c, o, reduction="max"), True),
    "dws-sum": (lambda s, c, o: DWSLayer(s, c, o, reduction="sum"), True),
}


@pytest.mark.parametrize("spec_name", sorted(SPECS))
@pytest.mark.parametrize("layer_name", sorted(LAYERS))
def test_layer_is_equivariant(layer_name, spec_name):
    make, hidden_only = LAYERS[layer_name]
    spec = NetworkSpec.from_shapes(SPECS[spec_name])
    torch.manual_seed(0)
    layer = make(spec, 2, 3)
    x = features(spec)
    out = layer(x)
    assert out.spec == spec and out.channels == 3 and out.batch_size == 3
    for seed in range(3):
        perms = random_neuron_perms(spec, hidden_only=hidden_only, generator=torch.Generator().manual_seed(seed))
        assert_equivariant(layer, x, perms, atol=1e-5)


@pytest.mark.parametrize("spec_name", sorted(SPECS))
@pytest.mark.parametrize("layer_name", sorted(LAYERS))
def test_layer_is_sensitive_to_uncoupled_permutations(layer_name, spec_name):
    """Not over-constrained: permuting one layer's rows without the next layer's columns is no
    symmetry, and the layer must notice."""
    make, _ = LAYERS[layer_name]
    spec = NetworkSpec.from_shapes(SPECS[spec_name])
    torch.manual_seed(0)
    layer = make(spec, 2, 3)
    x = features(spec)
    perm = torch.roll(torch.arange(spec.neurons[1]), 1)
    with torch.no_grad():
        a, b = layer(uncoupled(x, 0, perm)), uncoupled(layer(x), 0, perm)
    err = max(float((u - v).abs().max()) for u, v in zip((*a.weights, *a.biases), (*b.weights, *b.biases)))
    assert err > 1e-3


def test_np_layer_is_equivariant_to_input_and_output_permutations_but_hnp_is_not():
    spec = NetworkSpec.from_shapes(SPECS["mlp4"])
    torch.manual_seed(0)
    x = features(spec)
    perms = random_neuron_perms(spec, hidden_only=False, generator=torch.Generator().manual_seed(1))
    assert equivariance_error(NPLinear(spec, 2, 3), x, perms) <= 1e-5
    assert equivariance_error(HNPLinear(spec, 2, 3), x, perms) > 1e-3   # HNP uses the fixed axes


@pytest.mark.parametrize("spec_name", sorted(SPECS))
def test_pools_and_baselines_are_invariant(spec_name):
    spec = NetworkSpec.from_shapes(SPECS[spec_name])
    torch.manual_seed(0)
    x = features(spec, batch=4)
    hidden = random_neuron_perms(spec, generator=torch.Generator().manual_seed(2))
    every = random_neuron_perms(spec, hidden_only=False, generator=torch.Generator().manual_seed(3))
    np_pool, hnp_pool = NPPool(spec, 2), HNPPool(spec, 2)
    assert np_pool(x).shape == (4, NPPool.num_outputs(spec, 2))
    assert hnp_pool(x).shape == (4, HNPPool.num_outputs(spec, 2))
    assert_invariant(np_pool, x, every)
    assert_invariant(hnp_pool, x, hidden)
    stat = StatNN(spec, 2, 5).eval()
    assert_invariant(stat, x, every)
    assert stat(x).shape == (4, 5)
    flat = FlatMLP(spec, 2, 5)
    assert flat(x).shape == (4, 5)
    with pytest.raises(AssertionError, match="changes its output"):
        assert_invariant(flat, x, hidden)


def test_equivariant_stack_then_pool_is_invariant():
    spec = NetworkSpec.from_shapes(SPECS["cnn"])
    torch.manual_seed(0)
    relu = lambda f: f.map(torch.relu)  # noqa: E731
    l1, l2, pool = HNPLinear(spec, 1, 8), DWSLayer(spec, 8, 8, reduction="max"), HNPPool(spec, 8)
    model = lambda f: pool(l2(relu(l1(f))))  # noqa: E731
    x = features(spec, channels=1)
    assert_invariant(model, x, random_neuron_perms(spec, generator=torch.Generator().manual_seed(0)))


def test_repr_and_errors():
    spec = NetworkSpec.from_shapes(SPECS["mlp2"])
    assert repr(NPLinear(spec, 1, 16)) == "NPLinear(1, 16)"
    assert repr(HNPLinear(spec, 2, 4)) == "HNPLinear(2, 4)"
    assert repr(DWSLayer(spec, 2, 4)) == "DWSLayer(2, 4, reduction='mean')"
    with pytest.raises(ValueError, match="expects 1 channels"):
        NPLinear(spec, 1, 4)(features(spec, channels=2))
    with pytest.raises(TypeError, match="WeightSpaceFeatures"):
        NPLinear(spec, 1, 4)((torch.zeros(1),))
    with pytest.raises(ValueError, match="no hidden neurons"):
        HNPLinear(NetworkSpec.from_shapes([(3, 4)]), 1, 4)
    with pytest.raises(ValueError, match="choose one of"):
        DWSLayer(spec, 1, 4, reduction="median")
    with pytest.raises(ValueError, match="must chain"):
        NetworkSpec.from_shapes([(8, 4), (3, 7)])
    with pytest.raises(AssertionError, match="does not commute"):
        perms = random_neuron_perms(spec, generator=torch.Generator().manual_seed(0))
        assert_equivariant(lambda f: f.map(lambda t: t.cumsum(2)), features(spec), perms)


def test_features_match_the_zoo_tensors_view_and_nfn_layout():
    from graphs import state_dict_to_nfn

    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    w, b = state_dict_to_nfn(net.state_dict()) if not hasattr(state_dict_to_nfn(net.state_dict()), "weights") \
        else (state_dict_to_nfn(net.state_dict()).weights, state_dict_to_nfn(net.state_dict()).biases)
    f = WeightSpaceFeatures(w, b)
    ref = WeightSpaceFeatures.from_tensors([net[0].weight[None], net[2].weight[None]],
                                           [net[0].bias[None], net[2].bias[None]])
    assert all(torch.equal(u, v) for u, v in zip(f.weights, ref.weights))
    assert f.spec.neurons == (4, 8, 3) and f.flatten().shape == (1, 8 * 4 + 8 + 3 * 8 + 3)


# ----------------------------------------------------------------------------- graph metanetworks
FAMILIES = {
    "mlp": {"in_features": 8, "hidden": [6, 5], "out_features": 3},
    "vgg": {"width": 0.25, "image_size": 8, "config": [8, "M", 16], "classifier": [12]},   # CNN with BN
    "resnet20": {"width": 0.25, "image_size": 8},
    "vit": {"dim": 16, "depth": 2, "heads": 2, "image_size": 8, "patch": 4},
}


def _graphs(name: str, seed: int = 0):
    torch.manual_seed(seed)
    model = get_model(name, **FAMILIES[name])
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    for k, v in model.state_dict().items():   # non-trivial BatchNorm statistics
        if k.endswith("running_var"):
            v.uniform_(0.5, 2.0)
        elif k.endswith("running_mean"):
            v.normal_()
    s = trace(model, model.example_input())
    state = model.state_dict()
    pstate = permute(s, state, random_permutation(s, seed=seed + 1))
    return ParamGraph.from_structure(s, state).to_pyg(), ParamGraph.from_structure(s, pstate).to_pyg()


@pytest.mark.parametrize("arch", ["gnn", "transformer"])
def test_graph_metanet_is_invariant_on_a_batch_mixing_architectures(arch):
    from torch_geometric.data import Batch

    pairs = [_graphs(n) for n in FAMILIES]
    a = Batch.from_data_list([p[0] for p in pairs])
    b = Batch.from_data_list([p[1] for p in pairs])
    assert not all(torch.equal(p[0].edge_attr, p[1].edge_attr) for p in pairs)   # really permuted
    torch.manual_seed(0)
    model = GraphMetanet(hidden=32, out_channels=2, num_layers=2, arch=arch).eval()
    out = model(a)
    assert out.shape == (4, 2) and torch.isfinite(out).all()
    assert_invariant(model, a, b, atol=1e-4)
    # each graph alone gives what it gives in the batch
    for i, (g, _) in enumerate(pairs):
        assert torch.allclose(model(Batch.from_data_list([g]))[0], out[i], atol=1e-5)
    out.sum().backward()
    assert all(p.grad is not None for p in model.head.parameters())


def test_graph_metanet_node_and_edge_states_are_equivariant():
    torch.manual_seed(0)
    model = get_model("mlp", **FAMILIES["mlp"])
    s = trace(model, model.example_input())
    perms = random_permutation(s, seed=3)
    g = ParamGraph.from_structure(s, model.state_dict())
    h = ParamGraph.from_structure(s, permute(s, model.state_dict(), perms))
    net = GraphMetanet(hidden=16, num_layers=2).eval()
    with torch.no_grad():
        (xg, _), (xh, _) = net.encode(g.to_pyg()), net.encode(h.to_pyg())
    p = g.node_permutation(perms)
    assert torch.allclose(xh, xg[p], atol=1e-5)


def test_graph_metanet_errors_and_repr():
    with pytest.raises(ValueError, match="choose one of"):
        GraphMetanet(arch="mpnn")
    net = GraphMetanet(edge_dim=20)
    assert repr(net) == "GraphMetanet(31, 1, hidden=64, arch='gnn')"
    g, _ = _graphs("mlp")
    with pytest.raises(ValueError, match="weight_dim=2"):
        net(g)
