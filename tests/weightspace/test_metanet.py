"""Metanetwork training on tiny zoos: every arch trains, checkpoints reload, the CLI maps errors to 2."""
from __future__ import annotations

import json
import math

import pytest

from weightspace.cli import main
from weightspace.metanet import ARCHS, evaluate_metanet, load_metanet, train_metanet
from weightspace.zoo import build_cnn_zoo, build_inr_zoo


@pytest.fixture(scope="module")
def cnn_zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo") / "cnn"
    build_cnn_zoo(root, "digits", n=10, checkpoints=(0, 1), progress=False,
                  recipe={"channels": [4, 4, 4], "train_eval_size": 64})
    return root


@pytest.fixture(scope="module")
def inr_zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo") / "inr"
    build_inr_zoo(root, "digits", n=12, progress=False, recipe={"steps": 10, "hidden": [8, 8]})
    return root


@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_trains_on_a_cnn_zoo(cnn_zoo, tmp_path, arch):
    out = tmp_path / f"{arch}.pt"
    r = train_metanet(cnn_zoo, arch=arch, epochs=2, hidden=8, batch_size=4, progress=False, out=out)
    assert len(r.history) == 2 and 1 <= r.best_epoch <= 2
    assert all(math.isfinite(h["train_loss"]) for h in r.history)
    for name in ("train", "val"):
        assert math.isfinite(r.metrics[name]["mse"]) and -1 <= r.metrics[name]["kendall_tau"] <= 1
    assert r.num_params > 0 and out.is_file() and not list(tmp_path.glob(".*tmp*"))
    _model, config = load_metanet(out)
    assert config["arch"] == arch
    m = evaluate_metanet(out, cnn_zoo, split="train")
    assert m["n"] > 0
    assert m["mse"] == pytest.approx(r.metrics["train"]["mse"], rel=1e-4, abs=1e-6)


def test_training_loss_decreases(cnn_zoo):
    r = train_metanet(cnn_zoo, arch="statnn", epochs=8, hidden=16, batch_size=4, patience=8, progress=False)
    losses = [h["train_loss"] for h in r.history]
    assert min(losses[-3:]) < losses[0]


def test_classification_on_an_inr_zoo(inr_zoo):
    for arch in ("np", "gnn"):
        r = train_metanet(inr_zoo, task="class", arch=arch, epochs=2, hidden=8, batch_size=4, progress=False)
        assert r.config["out"] >= 2
        acc = r.metrics["train"]["accuracy"]
        assert 0.0 <= acc <= 1.0 and math.isfinite(r.metrics["train"]["loss"])


def test_bad_input_is_a_value_error(cnn_zoo, tmp_path):
    with pytest.raises(ValueError, match="choose one of"):
        train_metanet(cnn_zoo, arch="resnet")
    with pytest.raises(ValueError, match="choose one of"):
        train_metanet(cnn_zoo, task="segmentation")
    with pytest.raises(ValueError, match="epochs"):
        train_metanet(cnn_zoo, epochs=0)
    with pytest.raises(ValueError, match="not a directory"):
        train_metanet(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="does not exist"):
        load_metanet(tmp_path / "none.pt")


def test_cli(cnn_zoo, tmp_path, capsys):
    out = tmp_path / "m.pt"
    assert main(["metanet", "train", str(cnn_zoo), "--arch", "hnp", "--epochs", "1", "--hidden", "4",
                 "-o", str(out), "--json", "--device", "cpu"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["arch"] == "hnp" and res["epochs_run"] == 1 and out.is_file()
    assert main(["metanet", "eval", str(out), str(cnn_zoo), "--split", "all", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 20   # 10 models x checkpoints 0 and 1
    assert main(["metanet", "train", str(cnn_zoo), "--arch", "statnn", "--epochs", "1", "--checkpoints", "last",
                 "--loss", "rank", "--schedule", "cosine", "--select", "kendall_tau", "-o", str(out), "--json", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["metanet", "eval", str(out), str(cnn_zoo), "--split", "all", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 10   # the checkpoint's selection is kept
    assert main(["metanet", "train", str(tmp_path / "nozoo"), "-o", str(tmp_path / "x.pt")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["metanet", "eval", str(tmp_path / "none.pt"), str(cnn_zoo)]) == 2
    assert main(["metanet", "train", str(cnn_zoo), "--epochs", "0", "-o", str(tmp_path / "x.pt")]) == 2


def test_weight_statistics_for_accuracy_prediction(cnn_zoo, tmp_path, capsys):
    """gnn/transformer on --task accuracy also read per-tensor weight statistics: invariant to
    permutations, standardised on the train split, kept in the checkpoint."""
    import torch

    from graphs import ParamGraph, permute, random_permutation
    from weightspace.metanet import WeightStats, LoadedZoo
    from weightspace.nn import GraphMetanet

    zoo = LoadedZoo(cnn_zoo, "accuracy", None)
    states = zoo.splits["train"].states[:4]
    perm = [permute(zoo.structure, s, random_permutation(zoo.structure, seed=i)) for i, s in enumerate(states)]
    stack = lambda ss: {k: torch.stack([s[k] for s in ss]) for k in ss[0]}
    raw, raw_p = WeightStats.raw(stack(states)), WeightStats.raw(stack(perm))
    assert raw.shape == (4, 8 * 7) and torch.allclose(raw, raw_p, atol=1e-5)   # 4 layers x weight, bias
    assert not torch.allclose(raw[0], raw[1])

    out = tmp_path / "s.pt"
    r = train_metanet(cnn_zoo, arch="gnn", probes=0, epochs=1, hidden=8, batch_size=4, progress=False, out=out)
    assert r.to_dict()["stats"] and len(r.config["stats_mean"]) == 56 and r.model.global_dim == 56
    assert evaluate_metanet(out, cnn_zoo, split="train")["mse"] == pytest.approx(r.metrics["train"]["mse"], rel=1e-4)
    assert evaluate_metanet(out, cnn_zoo, split="all", checkpoints="last")["n"] == 10
    off = train_metanet(cnn_zoo, arch="gnn", probes=0, stats=False, epochs=1, hidden=8, batch_size=4, progress=False)
    assert "stats_mean" not in off.config and off.model.global_dim == 0
    with pytest.raises(ValueError, match="stats"):
        train_metanet(cnn_zoo, arch="np", stats=True, epochs=1, progress=False)
    for flag, want in (("off", False), ("auto", True)):
        assert main(["metanet", "train", str(cnn_zoo), "--epochs", "1", "--hidden", "4", "--probes", "0",
                     "--stats", flag, "-o", str(tmp_path / "c.pt"), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["stats"] is want
    with pytest.raises(ValueError, match="stats"):
        GraphMetanet(hidden=8, global_dim=3)(ParamGraph.from_structure(zoo.structure, states[0]).to_pyg())


def test_rank_loss_orders_pairs():
    import torch

    from weightspace.metanet import metanet_loss, rank_loss

    y = torch.tensor([0.1, 0.5, 0.9, 0.9])
    right, wrong = torch.tensor([0.0, 0.4, 0.8, 0.7]), torch.tensor([0.8, 0.4, 0.0, 0.1])
    assert rank_loss(right, y) < rank_loss(wrong, y) / 10
    assert float(rank_loss(torch.zeros(3), torch.full((3,), 0.5))) == 0.0   # only ties: no pairs
    p = torch.tensor([0.5, 0.5], requires_grad=True)
    rank_loss(p, torch.tensor([0.2, 0.6])).backward()
    assert p.grad[0] > 0 > p.grad[1]   # descent pushes the better network up
    pred = torch.tensor([[0.1], [0.5]])
    mse = float(metanet_loss("accuracy", pred, torch.tensor([0.1, 0.5])))
    assert mse == 0.0 and float(metanet_loss("accuracy", pred, torch.tensor([0.1, 0.5]), "rank")) > mse


def test_rank_loss_and_cosine_schedule_train(cnn_zoo):
    r = train_metanet(cnn_zoo, arch="statnn", epochs=3, hidden=8, batch_size=4, patience=3, progress=False,
                      loss="rank", schedule="cosine", select="kendall_tau")
    assert len(r.history) == 3 and all(math.isfinite(h["train_loss"]) for h in r.history)
    taus = [h["val_kendall_tau"] for h in r.history]
    kept = max((t, -e) for e, t in enumerate(taus, 1) if math.isfinite(t)) if any(map(math.isfinite, taus)) else None
    assert kept is None or r.best_epoch == -kept[1]   # the first epoch of the best validation tau
    with pytest.raises(ValueError, match="unknown loss"):
        train_metanet(cnn_zoo, loss="bce")
    with pytest.raises(ValueError, match="task='accuracy'"):
        train_metanet(cnn_zoo, task="class", loss="rank")
    with pytest.raises(ValueError, match="unknown schedule"):
        train_metanet(cnn_zoo, schedule="step")
    with pytest.raises(ValueError, match="unknown select"):
        train_metanet(cnn_zoo, select="r2")
    with pytest.raises(ValueError, match="task='accuracy'"):
        train_metanet(cnn_zoo, task="class", select="kendall_tau")


def test_probestat_is_invariant_and_eval_reproduces_training(cnn_zoo, tmp_path):
    """probestat: features of a network and of its hidden-unit permutation agree, so do the
    model's outputs; the checkpoint keeps the feature standardisation, so evaluation gives
    training's numbers; no permutation augmentation."""
    import torch

    from graphs import permute, random_permutation
    from weightspace.metanet import probestat_features, LoadedZoo
    from weightspace.testing import assert_invariant

    out = tmp_path / "ps.pt"
    r = train_metanet(cnn_zoo, arch="probestat", epochs=3, hidden=16, batch_size=4, progress=False, out=out)
    cfg = r.config
    assert cfg["probes"] == 32 and cfg["probe_source"] == "data" and cfg["stats"] and r.to_dict()["stats"]
    assert len(cfg["feature_mean"]) == len(cfg["feature_scale"]) == 32 * 10 + 10 + 4 + 8 * 7
    assert r.model.mean.tolist() == pytest.approx(cfg["feature_mean"])

    zoo = LoadedZoo(cnn_zoo, "accuracy", None)
    states = zoo.splits["train"].states[:3]
    perm = [permute(zoo.structure, s, random_permutation(zoo.structure, seed=7 + i)) for i, s in enumerate(states)]
    assert any(not torch.equal(states[0][k], perm[0][k]) for k in states[0])   # the weights did move
    f, f_perm = probestat_features(cfg, states, "t"), probestat_features(cfg, perm, "t")
    assert torch.allclose(f, f_perm, atol=1e-4) and not torch.allclose(f[0], f[1])
    assert_invariant(r.model, f, f_perm, atol=1e-4)

    for split in ("train", "val", "test"):
        if not r.metrics[split]:
            continue
        m = evaluate_metanet(out, cnn_zoo, split=split)
        for key in ("mse", "kendall_tau"):
            assert m[key] == pytest.approx(r.metrics[split][key], rel=1e-4, abs=1e-6, nan_ok=True)


def test_probestat_defaults_and_class_task(cnn_zoo, inr_zoo, tmp_path, capsys):
    from weightspace.metanet import train_defaults

    assert train_defaults("probestat")["epochs"] >= 100
    r = train_metanet(inr_zoo, task="class", arch="probestat", epochs=2, hidden=8, batch_size=4, progress=False)
    assert r.config["out"] >= 2 and r.config["probe_source"] == "uniform"   # INR outputs: width 1, no logits
    assert 0.0 <= r.metrics["train"]["accuracy"] <= 1.0
    off = train_metanet(cnn_zoo, arch="probestat", stats=False, probes=4, epochs=1, hidden=8, progress=False)
    assert not off.config["stats"] and len(off.config["feature_mean"]) == 4 * 10 + 10 + 4
    assert main(["metanet", "train", str(cnn_zoo), "--arch", "probestat", "--epochs", "2", "--hidden", "4",
                 "--weight-decay", "0", "-o", str(tmp_path / "p.pt"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["arch"] == "probestat" and res["probes"] == 32 and res["stats"] and res["epochs_run"] == 2


def test_probestat_bad_config(cnn_zoo, tmp_path):
    import shutil

    with pytest.raises(ValueError, match="probestat.*positive integer"):
        train_metanet(cnn_zoo, arch="probestat", probes=0)
    with pytest.raises(ValueError, match="probes"):
        train_metanet(cnn_zoo, arch="probestat", probes="many")
    from weightspace.metanet import probestat_features, LoadedZoo

    zoo = LoadedZoo(cnn_zoo, "accuracy", None)
    cfg = {"model_spec": zoo.card.model_spec, "input_shape": [3, *zoo.card.input_shape[1:]], "probes": 2}
    with pytest.raises(ValueError, match="probestat.*cannot be run"):   # the CNNs take one channel
        probestat_features(cfg, zoo.splits["train"].states[:2], "train_metanet")
    bad = tmp_path / "bad"
    shutil.copytree(cnn_zoo, bad)
    card = json.loads((bad / "zoo.json").read_text())
    card["input_shape"] = None
    (bad / "zoo.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="probestat.*no input shape"):
        train_metanet(bad, arch="probestat", epochs=1, progress=False)


def test_progress_bar_counts_steps(cnn_zoo, capsys):
    train_metanet(cnn_zoo, arch="mlp", epochs=2, batch_size=2, progress=True)
    err = capsys.readouterr().err
    assert "step" in err and "epoch 2/2" in err
