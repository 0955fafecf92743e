"""Model zoos: on-disk format, resumable and sharded builds, batched training, importers, datasets, CLI."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import weightspace
from weightspace.cli import main
from weightspace.models import CNN, SIREN, get_model
from weightspace.zoo import (
    ZooCard,
    ZooDataset,
    ZooWriter,
    build_cnn_zoo,
    build_inr_zoo,
    format_summary,
    import_dws,
    import_nfn,
    import_smallcnnzoo,
    parse_shard_spec,
    plot_histogram,
    read_card,
    read_metrics,
    sample_cnn_hparams,
    split_of,
    state_to_tensors,
    worker_shards,
    zoo_summary,
)

PNG = b"\x89PNG\r\n\x1a\n"
FAST = {"train_eval_size": 200}
CNN_ARGS = dict(n=6, models_per_shard=4, checkpoints=(0, 1), seed=3, recipe=FAST, progress=False)
INR_ARGS = dict(n=6, models_per_shard=4, recipe={"steps": 60, "fits_per_image": 2, "psnr_stop": 30.0}, progress=False)


@pytest.fixture(scope="module")
def cnn_zoo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zoo") / "cnn"
    build_cnn_zoo(out, "digits", **CNN_ARGS)
    return out


@pytest.fixture(scope="module")
def inr_zoo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zoo") / "inr"
    build_inr_zoo(out, "digits", **INR_ARGS)
    return out


def _contents(root: Path) -> tuple[list[dict], dict[str, dict[str, torch.Tensor]]]:
    rows = sorted(read_metrics(root), key=lambda r: (r["model_id"], r["checkpoint"]))
    shards = {p.name: weightspace.load(p) for p in sorted((root / "models").glob("shard-*.safetensors"))}
    return rows, shards


def _same_contents(a: Path, b: Path) -> None:
    rows_a, shards_a = _contents(a)
    rows_b, shards_b = _contents(b)
    assert rows_a == rows_b
    assert shards_a.keys() == shards_b.keys()
    for name in shards_a:
        for k in shards_a[name]:
            assert torch.equal(shards_a[name][k], shards_b[name][k]), (name, k)
    assert json.loads((a / "zoo.json").read_text()) == json.loads((b / "zoo.json").read_text())


def _no_duplicates(root: Path) -> None:
    lines = (root / "metrics.csv").read_text().splitlines()
    keys = [tuple(line.split(",")[:4:3]) for line in lines[1:]]  # (model_id, checkpoint)
    assert len(keys) == len(set(keys))


# --------------------------------------------------------------------------- format


def test_format_round_trip(cnn_zoo):
    card = read_card(cnn_zoo)
    assert card.task == "image-classification" and card.n_models == 6 and card.n_shards == 2
    assert card.model["name"] == "cnn" and card.checkpoints == (0, 1) and card.target == "test_acc"
    assert ZooCard.from_dict(card.to_dict()) == card
    assert "cite" in json.loads((cnn_zoo / "zoo.json").read_text())
    rows = read_metrics(cnn_zoo)
    assert len(rows) == 6 * 2 and list(rows[0]) == list(card.columns)
    assert {r["model_id"] for r in rows} == set(range(6))
    shard1 = weightspace.load(cnn_zoo / "models" / "shard-00001.safetensors")
    assert shard1["convs.0.weight"].shape == (2 * 2, 16, 1, 3, 3)  # 2 models x 2 checkpoints
    meta = weightspace.open_checkpoint(cnn_zoo / "models" / "shard-00001.safetensors").metadata
    assert json.loads(meta["weightspace.model"])["name"] == "cnn"
    assert [r["index"] for r in json.loads(meta["weightspace.zoo.rows"])] == [0, 1, 2, 3]
    assert sum(p.numel() for p in get_model("cnn", **card.model["kwargs"]).parameters()) == 4970
    # the default family is the Small CNN Zoo's: stride-2 'SAME' convolutions, no pooling, GAP
    assert {k: card.model["kwargs"][k] for k in ("stride", "padding", "pool")} == {
        "stride": 2, "padding": "tf_same", "pool": None}
    assert card.recipe["stride"] == 2 and any("'SAME'" in n for n in card.notes)


def test_pooled_family_and_zoos_started_before_strides_resume(tmp_path, capsys):
    """--family pooled gives the earlier family; a zoo whose card predates strides (no stride,
    no padding recorded) resumes with it instead of being refused as a different zoo."""
    out = tmp_path / "z"
    argv = ["zoo", "build", "cnn", "--data", "digits", "--out", str(out), "--n", "3", "--models-per-shard", "2",
            "--checkpoints", "0,1", "--recipe", json.dumps(FAST), "--family", "pooled", "--quiet"]
    assert main(argv) == 0
    card = json.loads((out / "zoo.json").read_text())
    assert card["model"]["kwargs"]["pool"] == "avg" and card["model"]["kwargs"]["stride"] == 1
    first = weightspace.load(out / "models" / "shard-00000.safetensors")
    for d in (card["model"]["kwargs"], card["recipe"]):
        del d["stride"], d["padding"]
    (out / "zoo.json").write_text(json.dumps(card))
    (out / "models" / "shard-00000.safetensors").unlink()
    assert main(argv[:-1]) == 0  # without --quiet: the summary
    assert "built 1 shards (2 models" in capsys.readouterr().out
    again = json.loads((out / "zoo.json").read_text())
    assert "stride" not in again["recipe"] and "stride" not in again["model"]["kwargs"]
    rebuilt = weightspace.load(out / "models" / "shard-00000.safetensors")
    assert all(torch.equal(first[k], rebuilt[k]) for k in first)
    # the new default family is another zoo
    assert main(argv[:-3] + ["--quiet"]) == 2
    assert "holds a different zoo" in capsys.readouterr().err


def test_checkpoints_load_and_reproduce_their_metrics(cnn_zoo):
    """Every stored checkpoint loads into the card's model and scores what metrics.csv says."""
    card = read_card(cnn_zoo)
    test = weightspace.data.load_dataset("digits", split="test")
    ds = ZooDataset(cnn_zoo, split="all", checkpoints="all")
    assert len(ds) == 12
    for i in range(len(ds)):
        state, acc = ds[i]
        model = get_model("cnn", **card.model["kwargs"])
        model.load_state_dict(state)
        with torch.no_grad():
            logits = model.eval()(test.x)
        # the build evaluated in other batch shapes (another summation order): a prediction may
        # differ only where the top two logits are within rounding of each other: sqrt(K) * U32 of
        # the logits' scale, under 6e-5 for K < 1e6 terms per logit; 1e-4 is allowed
        top2 = logits.topk(2, dim=1).values
        near_ties = int(((top2[:, 0] - top2[:, 1]) <= 1e-4 * float(logits.abs().max())).sum())
        correct = int((logits.argmax(1) == test.y).sum())
        assert abs(correct - round(float(acc) * len(test.y))) <= near_ties
        assert math.isclose(float(F.cross_entropy(logits, test.y)), ds.rows[i]["test_loss"], rel_tol=1e-4)


def test_hyperparameters_depend_on_seed_and_model_only():
    rec = {"lr_range": [1e-3, 1e-1], "weight_decay_range": [1e-6, 1e-3], "init_std_range": [0.01, 0.5],
           "dropout_range": [0.0, 0.5], "train_fraction_range": [0.2, 1.0], "batch_size": 32}
    a = sample_cnn_hparams(0, 17, rec, 1000)
    assert a == sample_cnn_hparams(0, 17, rec, 1000)
    assert a != sample_cnn_hparams(0, 18, rec, 1000) and a != sample_cnn_hparams(1, 17, rec, 1000)
    hps = [sample_cnn_hparams(0, i, rec, 1000) for i in range(200)]
    lrs = [h["lr"] for h in hps]
    assert 1e-3 <= min(lrs) and max(lrs) <= 1e-1 and max(lrs) / min(lrs) > 20  # log-uniform across the range
    assert all(32 <= h["n_train"] <= 1000 and 0 <= h["dropout"] <= 0.5 for h in hps)


# --------------------------------------------------------------------------- resume


def test_resume_after_a_kill_mid_build(cnn_zoo, tmp_path):
    out = tmp_path / "z"

    class Killed(Exception):
        pass

    def kill(shard):
        raise Killed(shard)

    with pytest.raises(Killed):
        build_cnn_zoo(out, "digits", **CNN_ARGS, on_shard=kill)
    assert len(read_metrics(out)) == 4 * 2 and not (out / "models" / "shard-00001.safetensors").exists()
    r = build_cnn_zoo(out, "digits", **CNN_ARGS)
    assert r.skipped == [0] and r.built == [1]
    _same_contents(out, cnn_zoo)
    _no_duplicates(out)
    again = build_cnn_zoo(out, "digits", **CNN_ARGS)
    assert again.built == [] and again.skipped == [0, 1]
    _same_contents(out, cnn_zoo)


@pytest.mark.slow
def test_workers_build_the_same_zoo_in_processes(cnn_zoo, tmp_path):
    # two worker processes (shards 0/2 and 1/2, spawned) write what one process writes; the
    # shards are reported to on_shard here, in the parent
    out = tmp_path / "z"
    seen = []
    r = build_cnn_zoo(out, "digits", **CNN_ARGS, workers=2, on_shard=seen.append)
    assert r.built == [0, 1] and r.models_built == 6 and r.worker == (0, 1) and sorted(seen) == [0, 1]
    _same_contents(out, cnn_zoo)
    _no_duplicates(out)
    again = build_cnn_zoo(out, "digits", **CNN_ARGS, workers=2)
    assert again.built == [] and again.skipped == [0, 1]


@pytest.mark.slow
def test_workers_errors(tmp_path):
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        build_cnn_zoo(tmp_path / "z", "digits", **CNN_ARGS, workers=0)
    with pytest.raises(ValueError, match="workers or shard, not both"):
        build_cnn_zoo(tmp_path / "z", "digits", **CNN_ARGS, workers=2, shard="1/2")
    with pytest.raises(ValueError, match="unknown dataset"):  # a worker's error reaches the caller
        build_cnn_zoo(tmp_path / "z", "nope", **CNN_ARGS, workers=2)


@pytest.mark.parametrize("damage", ["delete_shard", "truncate_shard", "lose_metrics", "partial_row", "tmp_file"])
def test_resume_repairs_every_kind_of_damage(cnn_zoo, tmp_path, damage):
    out = tmp_path / "z"
    shutil.copytree(cnn_zoo, out)
    last = out / "models" / "shard-00001.safetensors"
    metrics = out / "metrics.csv"
    if damage == "delete_shard":  # killed before the shard's rename: rows of it must go
        last.unlink()
    elif damage == "truncate_shard":
        last.write_bytes(last.read_bytes()[:200])
    elif damage == "lose_metrics":  # killed between the shard's rename and the metrics append
        lines = metrics.read_text().splitlines(keepends=True)
        metrics.write_text("".join(line for line in lines if line.split(",")[1] != "1"))
    elif damage == "partial_row":
        metrics.write_text(metrics.read_text() + "5,1,2,0,3,0.01")
    else:
        (out / "models" / ".shard-00001.safetensors.abc.tmp").write_bytes(b"partial")
    r = build_cnn_zoo(out, "digits", **CNN_ARGS)
    assert r.built == ([1] if damage in ("delete_shard", "truncate_shard") else [])
    _same_contents(out, cnn_zoo)
    _no_duplicates(out)
    assert not list((out / "models").glob(".*.tmp"))


def test_a_different_zoo_in_out_is_refused(cnn_zoo, tmp_path):
    out = tmp_path / "z"
    shutil.copytree(cnn_zoo, out)
    with pytest.raises(ValueError, match="different zoo.*n_models"):
        build_cnn_zoo(out, "digits", **{**CNN_ARGS, "n": 7})
    with pytest.raises(ValueError, match="different zoo.*recipe"):
        build_cnn_zoo(out, "digits", **{**CNN_ARGS, "seed": 4})


# --------------------------------------------------------------------------- --shard i/N


@pytest.mark.parametrize("n_shards,n_workers", [(1, 1), (5, 2), (7, 3), (2, 4)])
def test_worker_shards_partition(n_shards, n_workers):
    parts = [worker_shards(n_shards, i, n_workers) for i in range(n_workers)]
    flat = [s for p in parts for s in p]
    assert sorted(flat) == list(range(n_shards)) and len(flat) == len(set(flat))


def test_parse_shard_spec():
    assert parse_shard_spec("2/5") == (2, 5) and parse_shard_spec(None) == (0, 1)
    for bad in ("5/5", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard_spec(bad)


def test_workers_build_disjoint_parts_whose_union_is_the_zoo(cnn_zoo, tmp_path):
    out = tmp_path / "z"
    a = build_cnn_zoo(out, "digits", **CNN_ARGS, shard="1/2")
    assert a.built == [1] and not (out / "models" / "shard-00000.safetensors").exists()
    assert {r["model_id"] for r in read_metrics(out)} == {4, 5}
    b = build_cnn_zoo(out, "digits", **CNN_ARGS, shard="0/2")
    assert b.built == [0]
    _same_contents(out, cnn_zoo)
    _no_duplicates(out)


# --------------------------------------------------------------------------- batched = plain


def test_grouped_forward_matches_vmap_and_the_module():
    from weightspace.zoo._batched import cnn_forward, siren_forward, stack_models, vmap_forward

    torch.manual_seed(0)
    for kw in ({"pool": "avg"}, {"pool": "max"}, {"pool": None}, {"pool": None, "stride": 2, "padding": "tf_same"},
               {"pool": "avg", "stride": 2}, {"pool": None, "stride": 2, "padding": "tf_same", "activation": "tanh"}):
        models = [CNN(1, (4, 6), 10, 8, **kw) for _ in range(3)]
        params = stack_models(models)
        x = torch.randn(3, 5, 1, 8, 8)
        ref = torch.stack([m(x[i]) for i, m in enumerate(models)])
        torch.testing.assert_close(cnn_forward(models[0], params, x), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(vmap_forward(models[0], params, x), ref, rtol=1e-5, atol=1e-5)
        shared = torch.randn(5, 1, 8, 8)
        torch.testing.assert_close(cnn_forward(models[0], params, shared),
                                   torch.stack([m(shared) for m in models]), rtol=1e-5, atol=1e-5)
    sirens = [SIREN(2, (8, 8), 1) for _ in range(3)]
    coords = torch.rand(7, 2) * 2 - 1
    torch.testing.assert_close(siren_forward(sirens[0], stack_models(sirens), coords),
                               torch.stack([s(coords) for s in sirens]), rtol=1e-5, atol=1e-5)


U32 = 2.0 ** -24  # float32 unit roundoff


def _cnn_task(optimizer, family, *, float64=False, monkeypatch=None):
    """The task of the batched-vs-plain tests; with ``float64``, both trainers run in float64
    (data, initial weights and the plain trainer's module), with the same data order, inits and
    dropout masks as in float32."""
    from weightspace.zoo import CNN_FAMILIES
    from weightspace.zoo import _cnn as cnn
    from weightspace.zoo import prepare_cnn_task

    recipe = {**FAST, **CNN_FAMILIES[family], "optimizer": optimizer, "lr_range": [1e-3, 1e-2],
              "dropout_range": [0.1, 0.4]}
    if float64:
        real = cnn.CNN
        monkeypatch.setattr(cnn, "CNN", lambda *a, **kw: real(*a, **kw).double())
    task, _ = prepare_cnn_task("digits", checkpoints=(0, 1), seed=5, recipe=recipe)
    if float64:
        init = task.init
        task.init = lambda i, hp: {k: v.double() for k, v in init(i, hp).items()}
        task.x_train, task.x_test = task.x_train.double(), task.x_test.double()
    return task


@pytest.mark.parametrize("optimizer,family", [("adam", "smallcnnzoo"), ("sgd", "smallcnnzoo"), ("adam", "pooled")])
def test_batched_training_matches_plain_training(optimizer, family, monkeypatch):
    """Models trained together (grouped convolutions, stacked optimizer) equal models trained
    alone with torch.optim and the same hyper-parameters, data order and dropout masks.

    Compared in float64. In float32 the two sum in different orders (a grouped against a plain
    convolution, with kernels that differ between CPUs: AVX-512, AVX2), and one epoch amplifies
    rounding without bound: a ReLU whose input is within rounding of 0 takes the other branch,
    and Adam, which divides by the gradient's own scale, turns the small change into a step of
    up to the learning rate (1.25e-3 against 1e-5 was seen on an AVX2 CPU). In float64 rounding
    is 1e-16: no ReLU sits that close to 0, and a gradient error of 1e-16 moves an Adam step by
    at most lr * 1e-16 / eps (eps = 1e-8), nothing. What is left is one float32 quantity: the
    stacked optimizer keeps the learning rates as a float32 tensor, so each of the S steps
    carries a relative error of at most U32 (|update| <= |weights| here); the trained weights
    may therefore differ by 4 * S * U32 * max|w|, and by nothing a real difference (a mask, a
    batch, a hyper-parameter) would leave: those move the weights by 1e-2."""
    from weightspace.zoo import _grouped_conv
    from weightspace.zoo import train_cnn_shard, train_cnn_single

    monkeypatch.setattr(_grouped_conv, "ENABLED", False)
    task = _cnn_task(optimizer, family, float64=True, monkeypatch=monkeypatch)
    tensors, rows = train_cnn_shard(task, 0, range(3))
    assert tensors["head.weight"].dtype == torch.float64
    steps = task.steps_per_epoch * max(task.checkpoints)
    for mid in (0, 2):
        states, metrics = train_cnn_single(task, mid)
        for c in range(2):
            scale = max(float(v.abs().max()) for v in states[c].values())
            for k, v in states[c].items():
                torch.testing.assert_close(tensors[k][mid * 2 + c], v, rtol=0, atol=4 * steps * U32 * scale)
            row = rows[mid * 2 + c]
            n_test = len(task.x_test)  # the same predictions (the plain loop averages in float32)
            assert round(row["test_acc"] * n_test) == round(metrics[c]["test_acc"] * n_test)
            assert math.isclose(row["train_loss"], metrics[c]["train_loss"], rel_tol=4 * steps * U32)
    assert rows[0]["dropout"] > 0.1  # the masks were exercised


@pytest.mark.parametrize("optimizer,family", [("adam", "smallcnnzoo"), ("sgd", "smallcnnzoo"), ("adam", "pooled")])
def test_batched_training_with_our_kernels(optimizer, family, monkeypatch):
    """Our C kernels (float32 only) compute what torch computes: one step's logits and gradients
    to float32 rounding, and one epoch's weights to rounding plus the amplification an epoch
    allows (see test_batched_training_matches_plain_training), against a float64 reference.

    One step: every logit and gradient is a float32 sum of at most K terms (K = batch x pixels
    x channels x kernel taps); rounding errors of such sums grow like sqrt(K) * U32 times the
    size of the terms (Higham, Accuracy and Stability of Numerical Algorithms, ch. 3; the
    worst case is K * U32), so each tensor must agree to 4 * sqrt(K) * U32 * its largest entry.
    One epoch: each of the S steps rounds every weight to float32 (S * U32 * |w| in norm), and
    the ReLU branch flips that rounding can cause change a few units' trajectories: allowed 5%
    of the distance the weights moved (up to 0.5% was seen), while a wrong learning rate, mask
    or batch changes all of it."""
    import torch.nn.functional as F

    from weightspace.zoo import _grouped_conv
    from weightspace.zoo._batched import cnn_forward
    from weightspace.zoo import train_cnn_shard

    if not _grouped_conv._LIB:
        pytest.skip("the C kernels are not built")
    ref_task = _cnn_task(optimizer, family, float64=True, monkeypatch=monkeypatch)
    monkeypatch.undo()
    monkeypatch.setattr(_grouped_conv, "ENABLED", False)
    ref, _ = train_cnn_shard(ref_task, 0, range(3))
    monkeypatch.setattr(_grouped_conv, "ENABLED", True)
    monkeypatch.setenv("WEIGHTSPACE_GCONV", "ours")  # our kernels, not whichever path measures faster
    task = _cnn_task(optimizer, family)

    # one step: logits and gradients of three models at their initial weights
    b, t = task.recipe["batch_size"], task.template
    idx = torch.arange(3 * b).view(3, b)
    out = {}
    for name, tk in (("ours", task), ("ref", ref_task)):
        params = {k: torch.stack([tk.init(i, tk.hparams(i))[k] for i in range(3)]).requires_grad_()
                  for k in t.state_dict()}
        logits = cnn_forward(tk.template, params, tk.x_train[idx])
        loss = F.cross_entropy(logits.reshape(3 * b, -1), tk.y_train[idx].reshape(-1))
        out[name] = {"logits": logits.detach(), **dict(zip(params, torch.autograd.grad(loss, list(params.values()))))}
    assert out["ours"]["logits"].dtype == torch.float32 and _grouped_conv._LIB is not None
    k_max = b * task.x_train.shape[-1] ** 2 * max(t.channels) * t.kernel_size ** 2
    for k, v in out["ref"].items():
        torch.testing.assert_close(out["ours"][k].double(), v, rtol=0,
                                   atol=4 * math.sqrt(k_max) * U32 * float(v.abs().max()))

    # one epoch
    tensors, rows = train_cnn_shard(task, 0, range(3))
    steps = task.steps_per_epoch * max(task.checkpoints)
    for j in range(6):
        for k, w in ref.items():
            moved = float((w[j] - w[j - j % 2]).norm())
            err = float((tensors[k][j].double() - w[j]).norm())
            assert err <= 4 * steps * U32 * float(w[j].norm()) + 0.05 * moved, (j, k, err, moved)


def test_grouped_and_one_by_one_evaluation_agree():
    """The CPU evaluates model by model; other devices all models at once as grouped convolutions."""
    from weightspace.zoo import evaluate_cnns, prepare_cnn_task

    task, _ = prepare_cnn_task("digits", checkpoints=(0, 1), seed=1, recipe=FAST)
    params = {k: torch.stack([task.init(i, task.hparams(i))[k] for i in range(3)]) for k in task.template.state_dict()}
    params = {k: v * 4 if k.endswith("weight") else v for k, v in params.items()}  # varied predictions
    one = evaluate_cnns(task, params, task.x_test, task.y_test)
    grouped = evaluate_cnns(task, params, task.x_test, task.y_test, grouped=True)
    torch.testing.assert_close(one[0], grouped[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(one[1], grouped[1], rtol=0, atol=1.5 / len(task.x_test))  # a tie may flip
    assert len(set(one[1].tolist())) == 3


def test_batched_inr_fitting_matches_plain_fitting(monkeypatch):
    """In float64, for the reasons of test_batched_training_matches_plain_training: in float32
    Adam amplifies the rounding of the two summation orders (batched matrix products against
    one module's), and the early stop (PSNR >= psnr_stop, checked every 5 steps) is a threshold
    that rounding may cross on another CPU. What is left is the stacked optimizer's float32
    learning rate: 4 * S * U32 * max|w| over S steps."""
    from weightspace.zoo import _inr
    from weightspace.zoo import fit_inr_shard, prepare_inr_task, train_inr_single

    real = _inr.SIREN
    monkeypatch.setattr(_inr, "SIREN", lambda *a, **kw: real(*a, **kw).double())
    task, _ = prepare_inr_task("digits", n=3, recipe={"steps": 40, "psnr_stop": 25.0, "check_every": 5})
    init = task.init
    task.init = lambda i: {k: v.double() for k, v in init(i).items()}
    task.images, task.coords = task.images.double(), task.coords.double()
    tensors, rows = fit_inr_shard(task, 0, range(3))
    assert next(iter(tensors.values())).dtype == torch.float64
    for mid in range(3):
        state, steps, mse = train_inr_single(task, mid)
        assert rows[mid]["steps"] == steps
        tol = 4 * steps * U32
        assert math.isclose(rows[mid]["mse"], mse, rel_tol=tol)
        scale = max(float(v.abs().max()) for v in state.values())
        for k, v in state.items():
            torch.testing.assert_close(tensors[k][mid], v, rtol=0, atol=tol * scale)


# --------------------------------------------------------------------------- INR zoos


def test_inr_zoo(inr_zoo):
    card = read_card(inr_zoo)
    assert card.task == "implicit-neural-representation" and card.n_models == 12 and card.target == "label"
    assert card.model == {"name": "siren", "kwargs": {"in_features": 2, "hidden": [32, 32], "out_features": 1,
                                                      "w0": 30.0}}
    assert card.recipe["fits_per_image"] == 2 and card.recipe["psnr_stop"] == 30.0
    rows = read_metrics(inr_zoo)
    digits = weightspace.data.load_dataset("digits", split="all")
    assert [r["label"] for r in rows] == [int(digits.y[r["image_index"]]) for r in rows]
    assert all(r["psnr"] > 20 and r["steps"] <= 60 for r in rows)
    # fits of one image share a split; the INR reproduces its image at the recorded PSNR
    ds = ZooDataset(inr_zoo, split="all")
    by_image: dict[int, set[str]] = {}
    for split in ("train", "val", "test"):
        for r in ZooDataset(inr_zoo, split=split).rows:
            by_image.setdefault(r["image_index"], set()).add(split)
    assert all(len(s) == 1 for s in by_image.values())
    state, label = ds[3]
    assert label.dtype == torch.long and int(label) == ds.rows[3]["label"]
    model = get_model("siren", **card.model["kwargs"])
    model.load_state_dict(state)
    from weightspace.zoo import image_grid

    with torch.no_grad():
        out = model(image_grid(8, 8)).view(8, 8)
    img = digits.x[ds.rows[3]["image_index"], 0] * 2 - 1
    assert math.isclose(10 * math.log10(4 / float((out - img).pow(2).mean())), ds.rows[3]["psnr"], abs_tol=1e-3)


# --------------------------------------------------------------------------- datasets


def test_dataset_splits_by_model(cnn_zoo):
    ids = {s: set(ZooDataset(cnn_zoo, split=s, checkpoints="all").model_ids) for s in ("train", "val", "test")}
    assert ids["train"].isdisjoint(ids["val"]) and ids["train"].isdisjoint(ids["test"])
    assert ids["val"].isdisjoint(ids["test"])
    assert ids["train"] | ids["val"] | ids["test"] == set(range(6))
    card = read_card(cnn_zoo)
    for s, members in ids.items():
        assert all(split_of(m, card.splits) == s for m in members)
    ds = ZooDataset(cnn_zoo, split="train", checkpoints="all")
    assert len(ds) == 2 * len(ids["train"])  # every checkpoint of a model in the model's split


def test_split_of_is_deterministic_and_follows_the_fractions():
    splits = {"by": "model_id", "fractions": {"train": 0.8, "val": 0.1, "test": 0.1}, "salt": "x"}
    got = [split_of(i, splits) for i in range(5000)]
    assert got == [split_of(i, splits) for i in range(5000)]
    assert abs(got.count("train") / 5000 - 0.8) < 0.03 and abs(got.count("test") / 5000 - 0.1) < 0.02


def test_dataset_views_and_targets(cnn_zoo):
    ds = ZooDataset(cnn_zoo, split="all", view="tensors", target="accuracy", checkpoints=1)
    assert len(ds) == 6 and repr(ds).startswith("ZooDataset(")
    (weights, biases), acc = ds[0]
    assert [tuple(w.shape) for w in weights] == [(16, 1, 3, 3), (16, 16, 3, 3), (16, 16, 3, 3), (10, 16)]
    assert [tuple(b.shape) for b in biases] == [(16,), (16,), (16,), (10,)]
    assert acc.dtype == torch.float32 and 0 <= float(acc) <= 1
    loader = torch.utils.data.DataLoader(ZooDataset(cnn_zoo, split="all"), batch_size=4)
    state, target = next(iter(loader))
    assert state["head.weight"].shape == (4, 10, 16) and target.shape == (4,)
    loss = ZooDataset(cnn_zoo, split="all", target="test_loss")[0][1]
    assert float(loss) == pytest.approx(ZooDataset(cnn_zoo, split="all").rows[0]["test_loss"], rel=1e-6)
    with pytest.raises(ValueError, match="not a column"):
        ZooDataset(cnn_zoo, target="label")
    with pytest.raises(ValueError, match="unknown split"):
        ZooDataset(cnn_zoo, split="dev")
    with pytest.raises(ValueError, match="unknown view"):
        ZooDataset(cnn_zoo, view="flat")
    assert state_to_tensors({"a.weight": torch.ones(2, 3), "a.bias": torch.ones(2)})[1][0].shape == (2,)


def test_dataset_graph_view(cnn_zoo):
    from graphs import ParamGraph

    ds = ZooDataset(cnn_zoo, split="all", view="graph")
    g, _ = ds[0]
    assert isinstance(g, ParamGraph)
    state = ZooDataset(cnn_zoo, split="all").state(0)
    back = g.to_state_dict()
    assert all(torch.equal(back[k], v) for k, v in state.items())


def test_dataset_in_dataloader_workers(cnn_zoo):
    loader = torch.utils.data.DataLoader(ZooDataset(cnn_zoo, split="all", view="tensors"), batch_size=3,
                                         num_workers=2)
    batches = list(loader)
    assert sum(len(t) for _, t in batches) == 6


# --------------------------------------------------------------------------- info


def test_zoo_summary_and_histogram(cnn_zoo, tmp_path):
    s = zoo_summary(cnn_zoo)
    assert s["n_models"] == 6 and s["shards_done"] == 2 and s["metric"] == "test_acc"
    assert s["n_values"] == 6 and sum(s["histogram"]["counts"]) == 6
    assert s["quantiles"]["0%"] <= s["quantiles"]["50%"] <= s["quantiles"]["100%"]
    text = format_summary(s)
    assert "test_acc at each model's last checkpoint (6 models)" in text and "#" in text
    png = plot_histogram(s, tmp_path / "h.png")
    assert png.read_bytes().startswith(PNG)
    with pytest.raises(ValueError, match=r"\.png"):
        plot_histogram(s, tmp_path / "h.jpg")


def test_summary_of_a_half_built_zoo(cnn_zoo, tmp_path):
    out = tmp_path / "z"
    shutil.copytree(cnn_zoo, out)
    (out / "models" / "shard-00000.safetensors").unlink()
    s = zoo_summary(out)
    assert s["n_models"] == 2 and s["shards_done"] == 1 and s["n_models_planned"] == 6


# --------------------------------------------------------------------------- importers


_SCZ_SHAPES = [("conv2d", (16, 1, 3, 3)), ("conv2d_1", (16, 16, 3, 3)), ("conv2d_2", (16, 16, 3, 3)),
               ("dense", (10, 16))]  # the Small CNN Zoo's architecture, 4,970 parameters


def _tf_cnn(n_models: int, seed: int = 0, shapes=None) -> tuple[list[dict[str, torch.Tensor]], np.ndarray, list[list]]:
    """Random CNNs (torch order) and the same weights flattened in TensorFlow order with a layout."""
    g = torch.Generator().manual_seed(seed)
    shapes = shapes or [("conv2d", (8, 1, 3, 3)), ("conv2d_1", (8, 8, 3, 3)), ("dense", (10, 8))]
    states, rows = [], []
    layout, off = [], 0
    for name, shape in shapes:
        tf_shape = (shape[2], shape[3], shape[1], shape[0]) if len(shape) == 4 else (shape[1], shape[0])
        size = math.prod(shape)
        layout.append([f"sequential/{name}/kernel:0", off, off + size, size, str(tf_shape)])
        off += size
        layout.append([f"sequential/{name}/bias:0", off, off + shape[0], shape[0], str((shape[0],))])
        off += shape[0]
    for _ in range(n_models):
        state = {}
        flat = []
        for i, (name, shape) in enumerate(shapes):
            key = f"convs.{i}" if len(shape) == 4 else "head"
            w, b = torch.randn(shape, generator=g), torch.randn(shape[0], generator=g)
            state[f"{key}.weight"], state[f"{key}.bias"] = w, b
            tf = w.permute(2, 3, 1, 0) if w.ndim == 4 else w.t()
            flat += [tf.reshape(-1), b]
        states.append(state)
        rows.append(torch.cat(flat).numpy())
    return states, np.stack(rows).astype(np.float32), layout


def _write_scz(src: Path, states_per_model: int = 2, n_models: int = 3, shapes=None,
               activations: list[str] | None = None) -> list[dict[str, torch.Tensor]]:
    src.mkdir(parents=True)
    states, weights, layout = _tf_cnn(n_models * states_per_model, shapes=shapes)
    np.save(src / "weights.npy", weights)
    with open(src / "layout.csv", "w") as f:
        f.write("varname,start_idx,end_idx,size,shape\n")
        for r in layout:
            f.write(f'{r[0]},{r[1]},{r[2]},{r[3]},"{r[4]}"\n')
    with open(src / "metrics.csv", "w") as f:
        f.write("modeldir,step,test_accuracy,train_accuracy,config.learning_rate,split"
                + (",config.activation\n" if activations else "\n"))
        for i in range(n_models * states_per_model):
            m, step = divmod(i, states_per_model)
            f.write(f"run{m},{[0, 86][step]},{0.1 * (i + 1)},{0.5},{1e-3 * (m + 1)},{['train', 'test', 'val'][m % 3]}"
                    + (f",{activations[m]}\n" if activations else "\n"))
    return states


def test_import_smallcnnzoo(tmp_path):
    states = _write_scz(tmp_path / "scz")
    r = import_smallcnnzoo(tmp_path / "scz", tmp_path / "z", progress=False)
    assert r.card.n_models == 3 and r.card.checkpoints == (0, 86)
    card = read_card(tmp_path / "z")
    assert card.model["kwargs"]["channels"] == [8, 8] and card.model["kwargs"]["num_classes"] == 10
    assert card.splits == {"column": "split"} and card.source["layout"] == "smallcnnzoo"
    ds = ZooDataset(tmp_path / "z", split="all", checkpoints="all")
    assert len(ds) == 6
    for i in range(6):
        state, acc = ds[i]
        assert all(torch.equal(state[k], states[i][k]) for k in states[i])  # TF order converted exactly
        assert float(acc) == pytest.approx(0.1 * (i + 1))
        get_model("cnn", **card.model["kwargs"]).load_state_dict(state)
    assert ds.rows[0]["config_learning_rate"] == pytest.approx(1e-3) and ds.rows[0]["source"] == "run0"
    assert [r.model_ids for r in (ZooDataset(tmp_path / "z", split=s) for s in ("train", "val", "test"))] == [
        [0], [2], [1]]  # their splits kept


def _tf_reference(x: torch.Tensor, variables: list[tuple[np.ndarray, np.ndarray]], act) -> torch.Tensor:
    """The Small CNN Zoo's network from TensorFlow-layout arrays, written out: 'SAME' stride-2
    convolutions (ceil(n / 2) outputs, the odd padded row / column at the bottom / right) as
    explicit patch sums with (H, W, C_in, C_out) kernels, global average pooling, dense (in, out)."""
    h = x.double()
    for kernel, bias in variables[:-1]:
        k = torch.from_numpy(kernel).double()
        n, size = h.shape[-1], k.shape[0]
        out = -(-n // 2)
        total = max((out - 1) * 2 + size - n, 0)
        hp = F.pad(h, (total // 2, total - total // 2, total // 2, total - total // 2))
        patches = hp.unfold(2, size, 2).unfold(3, size, 2)  # (B, C, out, out, kh, kw)
        h = act(torch.einsum("bcyxij,ijco->boyx", patches, k) + torch.from_numpy(bias).double().view(1, -1, 1, 1))
    kernel, bias = variables[-1]
    return h.mean((2, 3)) @ torch.from_numpy(kernel).double() + torch.from_numpy(bias).double()


@pytest.mark.parametrize("size", [28, 32])
def test_imported_smallcnnzoo_networks_compute_what_tensorflow_computed(tmp_path, size):
    _write_scz(tmp_path / "scz", n_models=2, shapes=_SCZ_SHAPES, activations=["tanh", "tanh"])
    import_smallcnnzoo(tmp_path / "scz", tmp_path / "z", image_size=size, progress=False)
    card = read_card(tmp_path / "z")
    assert card.model["kwargs"]["stride"] == 2 and card.model["kwargs"]["padding"] == "tf_same"
    assert card.model["kwargs"]["activation"] == "tanh" and card.input_shape == (1, size, size)
    weights = np.load(tmp_path / "scz" / "weights.npy")
    layout = (tmp_path / "scz" / "layout.csv").read_text().splitlines()[1:]
    spans = [tuple(int(v) for v in line.split(",")[1:3]) for line in layout]
    shapes = [tuple(int(d) for d in line.split('"')[1].strip("()").split(",") if d.strip()) for line in layout]
    ds = ZooDataset(tmp_path / "z", split="all", checkpoints="all")
    x = torch.rand(4, 1, size, size)
    for i in range(len(ds)):
        row = weights[i]
        arrays = [row[a:b].reshape(shape) for (a, b), shape in zip(spans, shapes)]
        expected = _tf_reference(x, list(zip(arrays[::2], arrays[1::2])), torch.tanh)
        model = get_model("cnn", **card.model["kwargs"])
        model.load_state_dict(ds[i][0])
        with torch.no_grad():
            torch.testing.assert_close(model(x).double(), expected, rtol=1e-4, atol=1e-4)


def test_import_smallcnnzoo_selects_one_activation(tmp_path):
    _write_scz(tmp_path / "scz", n_models=3, activations=["relu", "tanh", "relu"])
    with pytest.raises(ValueError, match=r"activations \['relu', 'tanh'\].*choose one"):
        import_smallcnnzoo(tmp_path / "scz", tmp_path / "z", progress=False)
    r = import_smallcnnzoo(tmp_path / "scz", tmp_path / "z", activation="relu", progress=False)
    assert r.card.n_models == 2 and r.card.model["kwargs"]["activation"] == "relu"
    assert [row["source"] for row in ZooDataset(tmp_path / "z", split="all").rows] == ["run0", "run2"]
    with pytest.raises(ValueError, match="no model .* has activation 'gelu'"):
        import_smallcnnzoo(tmp_path / "scz", tmp_path / "z2", activation="gelu", progress=False)


def test_import_smallcnnzoo_refuses_a_bad_layout(tmp_path):
    _write_scz(tmp_path / "scz")
    text = (tmp_path / "scz" / "layout.csv").read_text().replace(",72,", ",71,", 1)
    (tmp_path / "scz" / "layout.csv").write_text(text)
    with pytest.raises(ValueError, match="layout.csv row 1.*does not hold shape"):
        import_smallcnnzoo(tmp_path / "scz", tmp_path / "z", progress=False)
    assert not (tmp_path / "z").exists()


def _siren_state(g: torch.Generator, prefix: str, nfn: bool = False) -> dict[str, torch.Tensor]:
    shapes = [(32, 2), (32, 32), (1, 32)]
    out = {}
    for i, s in enumerate(shapes):
        key = f"{prefix}.{i}.linear" if nfn and i < 2 else f"{prefix}.{i}"
        out[f"{key}.weight"], out[f"{key}.bias"] = torch.randn(s, generator=g), torch.randn(s[0], generator=g)
    return out


def test_import_dws(tmp_path):
    g = torch.Generator().manual_seed(0)
    src = tmp_path / "dws"
    files, splits = {}, {"train": {"path": [], "label": []}, "val": {"path": [], "label": []},
                         "test": {"path": [], "label": []}}
    for i in range(6):
        label, part = i % 3, ["train", "train", "train", "val", "test", "test"][i]
        p = src / f"mnist_png_{'testing' if part == 'test' else 'training'}_2" / str(label) / f"img{i}.pth"
        p.parent.mkdir(parents=True, exist_ok=True)
        files[i] = _siren_state(g, "seq")
        torch.save(files[i], p)
        # paths as written on another machine: matched by their last three components
        splits[part]["path"].append(f"/data/elsewhere/{p.relative_to(src)}")
        splits[part]["label"].append(label)
    (src / "mnist_splits.json").write_text(json.dumps(splits))
    import_dws(src, tmp_path / "z", progress=False)
    card = read_card(tmp_path / "z")
    assert card.model["kwargs"] == {"in_features": 2, "hidden": [32, 32], "out_features": 1, "w0": 30.0}
    assert card.splits == {"column": "split"}
    test = ZooDataset(tmp_path / "z", split="test", view="tensors")
    assert len(test) == 2 and [r["label"] for r in test.rows] == [1, 2]
    (weights, biases), label = test[0]
    assert torch.equal(weights[1], files[4]["seq.1.weight"]) and torch.equal(biases[2], files[4]["seq.2.bias"])
    assert int(label) == 1 and len(ZooDataset(tmp_path / "z", split="train")) == 3


def test_import_nfn(tmp_path):
    g = torch.Generator().manual_seed(1)
    src = tmp_path / "nfn"
    files = {}
    for idx in range(8):
        d = src / f"randinit_smaller_{idx % 4}s"
        d.mkdir(parents=True, exist_ok=True)
        files[idx] = _siren_state(g, "net", nfn=True)
        torch.save(files[idx], d / f"net{idx}.pth")
    (src / "randinit_smaller_aug0_1s").mkdir()  # another prefix: not imported
    with pytest.raises(ValueError, match="prefixes"):
        import_nfn(src, tmp_path / "z", progress=False)
    import_nfn(src, tmp_path / "z", prefix="randinit_smaller", split_points=(5, 7), progress=False)
    splits = {s: ZooDataset(tmp_path / "z", split=s).rows for s in ("train", "val", "test")}
    assert [[r["nfn_index"] for r in rows] for rows in splits.values()] == [[0, 1, 2, 3, 4], [5, 6], [7]]
    state, label = ZooDataset(tmp_path / "z", split="test")[0]
    assert int(label) == 3 and torch.equal(state["layers.0.weight"], files[7]["net.0.linear.weight"])
    assert torch.equal(state["layers.2.bias"], files[7]["net.2.bias"])


# --------------------------------------------------------------------------- CLI


def test_cli_build_info_import(tmp_path, capsys):
    out = tmp_path / "z"
    assert main(["zoo", "build", "cnn", "--data", "digits", "--out", str(out), "--n", "3", "--models-per-shard",
                 "2", "--checkpoints", "0,1", "--recipe", json.dumps(FAST)]) == 0
    assert "built 2 shards (3 models" in capsys.readouterr().out
    assert main(["zoo", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_models"] == 3 and info["metric"] == "test_acc"
    assert main(["zoo", "info", str(out), "--hist", str(tmp_path / "a.png")]) == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "a.png").read_bytes().startswith(PNG)
    assert main(["zoo", "build", "inr", "--images", "digits", "--out", str(tmp_path / "i"), "--n", "2",
                 "--steps", "20", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["models_built"] == 2
    _write_scz(tmp_path / "scz")
    assert main(["zoo", "import", "smallcnnzoo", str(tmp_path / "scz"), "--out", str(tmp_path / "s"), "--quiet"]) == 0
    assert "imported 3 models" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["zoo", "build", "cnn", "--out", "{tmp}/z", "--n", "2"], "--data is needed"),
    (["zoo", "build", "cnn", "--data", "digits", "--out", "{tmp}/z"], "--n"),
    (["zoo", "build", "cnn", "--data", "digits", "--out", "{tmp}/z", "--n", "2", "--shard", "2/2"], "--shard"),
    (["zoo", "build", "cnn", "--data", "digits", "--out", "{tmp}/z", "--n", "2", "--workers", "0"], "workers"),
    (["zoo", "build", "cnn", "--data", "nope", "--out", "{tmp}/z", "--n", "2"], "unknown dataset"),
    (["zoo", "build", "cnn", "--data", "digits", "--out", "{tmp}/z", "--n", "2", "--checkpoints", "2,1"],
     "checkpoints"),
    (["zoo", "build", "cnn", "--data", "digits", "--out", "{tmp}/z", "--n", "2", "--recipe", "{"], "--recipe"),
    (["zoo", "build", "cnn", "--data", "digits", "--out", "{tmp}/z", "--n", "2", "--recipe", '{"lr": 1}'],
     "unknown recipe keys"),
    (["zoo", "build", "cnn", "--data", "digits", "--out", "{tmp}/z", "--n", "2", "--recipe", '{"padding": "same"}'],
     "unknown padding 'same'"),
    (["zoo", "build", "cnn", "--data", "digits", "--out", "{tmp}/z", "--n", "2", "--recipe", '{"stride": 0}'],
     "stride must be a positive integer"),
    (["zoo", "build", "inr", "--images", "digits", "--out", "{tmp}/z", "--n", "99999"], "more than"),
    (["zoo", "info", "{tmp}/missing"], "not a directory"),
    (["zoo", "info", "{tmp}"], "no zoo.json"),
    (["zoo", "import", "smallcnnzoo", "{tmp}", "--out", "{tmp}/z"], "weights.npy"),
    (["zoo", "import", "dws", "{tmp}", "--out", "{tmp}/z"], "no models found"),
    (["zoo", "import", "nfn", "{tmp}", "--out", "{tmp}/z"], "prefixes"),
    (["zoo"], "give a zoo command"),
])
def test_cli_bad_input_exits_2(tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("weightspace zoo: error:") and message in err and "\n" not in err
    assert not (tmp_path / "z" / "models").exists() or not any((tmp_path / "z" / "models").iterdir())


def test_cli_different_zoo_exits_2(cnn_zoo, tmp_path, capsys):
    out = tmp_path / "z"
    shutil.copytree(cnn_zoo, out)
    assert main(["zoo", "build", "cnn", "--data", "digits", "--out", str(out), "--n", "5", "--quiet"]) == 2
    assert "holds a different zoo" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["zoo", "build", "mlp", "--out", str(out)])
    assert e.value.code == 2


def test_card_errors(tmp_path):
    (tmp_path / "zoo.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not a weightspace zoo card"):
        read_card(tmp_path)
    (tmp_path / "zoo.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_card(tmp_path)
    card = ZooCard(task="t", model={"name": "cnn", "kwargs": {}}, dataset={}, recipe={}, n_models=3,
                   models_per_shard=2, columns=("model_id", "shard", "index", "checkpoint", "x"), target="x")
    d = card.to_dict() | {"format_version": 99}
    with pytest.raises(ValueError, match="upgrade"):
        ZooCard.from_dict(d)
    with pytest.raises(ValueError, match="columns must start"):
        ZooCard(task="t", model={"name": "cnn"}, dataset={}, recipe={}, n_models=1, models_per_shard=1,
                columns=("x",), target="x")
    writer = ZooWriter(tmp_path / "w", card)
    assert writer.open([0, 1]) == set()
    with pytest.raises(ValueError, match="leading axis of 2 rows"):
        writer.write_shard(0, {"a": torch.zeros(3, 2)}, [{"model_id": 0, "shard": 0, "index": 0, "checkpoint": 0,
                                                           "x": 1}, {"model_id": 1, "shard": 0, "index": 1,
                                                                      "checkpoint": 0, "x": 2}])
