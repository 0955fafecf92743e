"""Probe features: a network's activations on probe inputs, as node features, permute with it."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from graphs import ParamGraph, permute, random_permutation, trace
from weightspace.metanet import evaluate_metanet, train_metanet
from weightspace.models import SIREN
from weightspace.nn import GraphMetanet
from weightspace.nn.graph_metanet import probe_features
from weightspace.zoo import build_inr_zoo


def _cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3))


def _randomize(net: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if "running_var" in name else torch.randn(t.shape, generator=g))
    return net


CASES = {
    "mlp": (lambda: nn.Sequential(nn.Linear(3, 7), nn.Tanh(), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 2)), (3,)),
    "siren": (lambda: SIREN(2, [8, 8], 1, 30.0), (2,)),
    "cnn": (_cnn, (1, 8, 8)),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_probe_features_permute_with_the_network(case, seed):
    make, shape = CASES[case]
    net = _randomize(make(), seed)
    s = trace(net, torch.randn(2, *shape))
    state = net.state_dict()
    perms = random_permutation(s, seed=seed + 10)
    g = ParamGraph.from_structure(s, state)
    h = ParamGraph.from_structure(s, permute(s, state, perms))
    x = torch.rand(5, *shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    f, fp = probe_features(net, g, x), probe_features(net, h, x)
    p = g.node_permutation(perms)
    assert f.shape == (g.num_nodes, 5)
    assert not torch.equal(p, torch.arange(len(p)))     # the permutation moved some nodes
    # float32 sums in another order: relative error of a few ulps (SIREN outputs reach ~10)
    assert float((fp - f[p]).abs().max()) <= 1e-5 * max(1.0, float(f.abs().max()))
    # the hidden units' features are real activations (not zeros), and the output nodes' are the outputs
    hidden = [site for site in g.sites.values() if site.role == "hidden"]
    assert all(float(f[site.offset:site.offset + site.size].abs().sum()) > 0 for site in hidden)
    out_site = [site for site in g.sites.values() if site.role == "output"][-1]
    with torch.no_grad():
        y = net.eval()(x)
    assert torch.allclose(f[out_site.offset:out_site.offset + out_site.size].T, y, atol=1e-5)


def test_probe_features_of_a_batch_are_those_of_each_network():
    make, shape = CASES["cnn"]
    nets = [_randomize(make(), i) for i in range(3)]
    s = trace(nets[0], torch.randn(2, *shape))
    stacked = {k: torch.stack([n.state_dict()[k] for n in nets]) for k in nets[0].state_dict()}
    x = torch.rand(4, *shape)
    fb = probe_features(nets[0], ParamGraph.batch_from_stacked(s, stacked), x)
    for i, n in enumerate(nets):
        assert torch.allclose(fb[i], probe_features(n, ParamGraph.from_structure(s, n.state_dict()), x), atol=1e-6)


def test_graph_metanet_with_probes_is_invariant():
    make, shape = CASES["mlp"]
    net = _randomize(make(), 3)
    s = trace(net, torch.randn(2, *shape))
    x = torch.rand(6, *shape) * 2 - 1
    model = GraphMetanet(hidden=16, out_channels=2, probe_dim=6).eval()
    outs = []
    for perms in (None, random_permutation(s, seed=4)):
        state = net.state_dict() if perms is None else permute(s, net.state_dict(), perms)
        g = ParamGraph.from_structure(s, state)
        data = g.to_pyg()
        data.probe = probe_features(net, g, x)
        outs.append(model(data))
    assert float((outs[0] - outs[1]).detach().abs().max()) <= 1e-5
    with pytest.raises(ValueError, match="probe"):
        model(ParamGraph.from_structure(s, net.state_dict()).to_pyg())


def test_training_with_probes(tmp_path):
    zoo = tmp_path / "inr"
    build_inr_zoo(zoo, "digits", n=12, progress=False, recipe={"steps": 10, "hidden": [8, 8]})
    r = train_metanet(zoo, task="class", arch="gnn", probes=4, epochs=2, hidden=8, batch_size=4, progress=False,
                      out=tmp_path / "p.pt")
    assert r.config["probes"] == 4 and len(r.config["probe_scale"]) == 2 + 8 + 8 + 1
    assert math.isfinite(r.metrics["train"]["loss"])
    m = evaluate_metanet(tmp_path / "p.pt", zoo, split="train")
    assert m["loss"] == pytest.approx(r.metrics["train"]["loss"], rel=1e-4, abs=1e-6)
    with pytest.raises(ValueError, match="probe"):
        train_metanet(zoo, task="class", arch="np", probes=4, epochs=1, progress=False)


def test_probes_default_on_for_graph_archs(tmp_path, capsys):
    """The bare command trains with probes on a runnable zoo; --probes 0 and the tensor archs without."""
    import json

    import weightspace.nn as wnn
    from weightspace.cli import main
    from weightspace.metanet import DEFAULT_PROBES

    assert wnn.probe_features is probe_features
    zoo = tmp_path / "inr"
    build_inr_zoo(zoo, "digits", n=10, progress=False, recipe={"steps": 5, "hidden": [8, 8]})
    r = train_metanet(zoo, task="class", arch="transformer", epochs=1, hidden=8, batch_size=4, progress=False)
    assert r.config["probes"] == DEFAULT_PROBES == r.to_dict()["probes"]
    assert r.model.probe_dim == DEFAULT_PROBES and len(r.config["probe_scale"]) == 2 + 8 + 8 + 1
    assert train_metanet(zoo, task="class", arch="np", epochs=1, hidden=4, batch_size=4,
                         progress=False).config["probes"] == 0
    with pytest.raises(ValueError, match="probes"):
        train_metanet(zoo, task="class", arch="gnn", probes="many", epochs=1, progress=False)
    for flag, want in (([], DEFAULT_PROBES), (["--probes", "0"], 0)):
        out = tmp_path / f"g{want}.pt"
        assert main(["metanet", "train", str(zoo), "--task", "class", "--epochs", "1", "--hidden", "8",
                     "--batch-size", "4", "-o", str(out), "--json", *flag]) == 0
        got = json.loads(capsys.readouterr().out)
        assert got["probes"] == want
        assert main(["metanet", "eval", str(out), str(zoo), "--split", "train", "--json"]) == 0
        ev = json.loads(capsys.readouterr().out)
        assert ev["loss"] == pytest.approx(got["metrics"]["train"]["loss"], rel=1e-4, abs=1e-6)


def test_probe_inputs_from_the_zoo_data(tmp_path):
    """probe_source='data' probes CNNs with images of their own training data (kept in the checkpoint);
    an INR zoo's images are not its networks' inputs, so 'auto' falls back to uniform probes there."""
    from weightspace.data import load_dataset
    from weightspace.zoo import build_cnn_zoo

    cnn = tmp_path / "cnn"
    build_cnn_zoo(cnn, "digits", n=6, checkpoints=(0, 1), progress=False,
                  recipe={"channels": [4, 4, 4], "train_eval_size": 64})
    out = tmp_path / "d.pt"
    r = train_metanet(cnn, arch="gnn", probes=5, probe_source="data", epochs=1, hidden=8, batch_size=4,
                      progress=False, out=out)
    x = r.config["probe_inputs"]
    assert r.to_dict()["probe_source"] == "data" and tuple(x.shape) == (5, 1, 8, 8)
    train = load_dataset("digits", split="train").x.float().reshape(-1, 64)
    assert all(bool((train == row.reshape(1, 64)).all(1).any()) for row in x)   # real training images
    assert evaluate_metanet(out, cnn, split="train")["mse"] == pytest.approx(r.metrics["train"]["mse"], rel=1e-4)
    default = train_metanet(cnn, arch="gnn", epochs=1, hidden=8, batch_size=4, progress=False).config
    assert default["probes"] == 32 and default["probe_source"] == "data"   # the bare command on a CNN zoo
    inr = tmp_path / "inr"
    build_inr_zoo(inr, "digits", n=6, progress=False, recipe={"steps": 3, "hidden": [8, 8]})
    kw = {"task": "class", "arch": "gnn", "probes": 3, "epochs": 1, "hidden": 8, "progress": False}
    assert train_metanet(inr, probe_source="auto", **kw).config["probe_source"] == "uniform"
    with pytest.raises(ValueError, match="probe_source"):
        train_metanet(inr, probe_source="data", **kw)
    with pytest.raises(ValueError, match="probe_source"):
        train_metanet(inr, probe_source="images", **kw)
