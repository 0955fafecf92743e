"""The library verbs behind ``weightspace merge`` / ``barrier`` / ``demo``: align, merge_checkpoints,
barrier_between, run_demo, train_classifier."""
from __future__ import annotations

import json

import pytest
import torch

import merging
import weightspace
from weightspace.api import INPUT_SHAPE_KEY, MODEL_KEY
from weightspace.data import load_data
from weightspace.merge import METHODS, MergeResult, align, align_result, barrier_between, merge_checkpoints
from weightspace.models import model_spec_to_json
from weightspace.training import train_classifier

MLP = {"in_features": 64, "hidden": [24, 24], "out_features": 10}
RESNET = {"width": 0.25, "in_channels": 1, "image_size": 8}


def _save(tmp_path, name, family, kwargs, seed, input_shape=None):
    torch.manual_seed(seed)
    model = weightspace.get_model(family, **kwargs)
    meta = {MODEL_KEY: model_spec_to_json(family, kwargs)}
    if input_shape:
        meta[INPUT_SHAPE_KEY] = input_shape
    return weightspace.save(model.state_dict(), tmp_path / f"{name}.safetensors", metadata=meta)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("pair")
    return _save(d, "a", "mlp", MLP, 0), _save(d, "b", "mlp", MLP, 1)


def test_align_every_method_returns_a_permutation(pair):
    a, b = (weightspace.load_model(p) for p in pair)
    data = load_data("digits", batch_size=256)
    for method in [m for m in METHODS if m != "auto"]:
        found = align_result(a, b, method=method, data=data if method != "weight" else None)
        perms, info = found.perms, found.to_dict()
        assert set(perms) == {"layers.0", "layers.1"}
        for g, p in perms.items():
            assert torch.equal(p.sort().values, torch.arange(24)), (method, g)
        assert info["method"] == method and (info["sweeps"] is not None) == (method == "weight")
    assert all(torch.equal(p, torch.arange(24)) for p in align(a, b, method="none").values())
    assert align_result(a, b, data=data).method == "activation"  # auto, with data
    assert align_result(a, b).method == "weight"  # auto, without


def test_align_errors(pair, tmp_path):
    a, b = (weightspace.load_model(p) for p in pair)
    with pytest.raises(ValueError, match="unknown method 'x'; choose one of: auto, weight, activation, ste, none"):
        align(a, b, method="x")
    with pytest.raises(ValueError, match="'activation' needs data"):
        align(a, b, method="activation")
    other = weightspace.load_model(_save(tmp_path, "c", "mlp", dict(MLP, hidden=[24, 12]), 2))
    with pytest.raises(ValueError, match=r"different architectures: 'layers.1.bias' has shape \(24,\) in .*a"
                                         r".safetensors and \(12,\) in .*c.safetensors \(2 more"):
        align(a, other)


def test_alpha_endpoints(pair, tmp_path):
    a, b = pair
    r0 = merge_checkpoints(a, b, tmp_path / "m0.safetensors", alpha=0.0, progress=False)
    r1 = merge_checkpoints(a, b, tmp_path / "m1.safetensors", alpha=1.0, progress=False)
    assert isinstance(r0, MergeResult) and r0.alpha == 0.0 and r0.path.is_file()
    state_a = weightspace.load(a)
    assert all(torch.equal(weightspace.load(r0.path)[k], v) for k, v in state_a.items())
    # alpha = 1 is aligned B: B's function
    x = torch.rand(8, 64)
    lm_b, lm_1 = weightspace.load_model(b), weightspace.load_model(r1.path)
    with torch.no_grad():
        torch.testing.assert_close(lm_1.module(x), lm_b.module(x), rtol=1e-5, atol=1e-5)
    assert r1.to_dict()["model"] == {"name": "mlp", "kwargs": MLP}
    json.dumps(r1.to_dict())


def test_repair_of_batchnorm_network_resets_statistics(tmp_path):
    a = _save(tmp_path, "ra", "resnet20", RESNET, 0)
    b = _save(tmp_path, "rb", "resnet20", RESNET, 1)
    plain = merge_checkpoints(a, b, tmp_path / "plain.safetensors", method="weight", progress=False)
    fixed = merge_checkpoints(a, b, tmp_path / "fixed.safetensors", method="weight", data="digits", repair=True,
                              progress=False)
    assert plain.repair == "none" and fixed.repair == "reset_bn"
    assert fixed.input_shape == (1, 8, 8) and len(fixed.provenance["inputs"][0]["sha256"]) == 64
    s0, s1 = weightspace.load(plain.path), weightspace.load(fixed.path)
    key = next(k for k in s0 if k.endswith("running_mean"))
    assert not torch.allclose(s0[key], s1[key])
    assert all(torch.equal(s0[k], s1[k]) for k in s0 if k.endswith("conv1.weight"))


def test_mlp_repair_rescales(pair, tmp_path):
    r = merge_checkpoints(*pair, tmp_path / "r.safetensors", data="digits", repair=True, method="none",
                          progress=False)
    assert r.repair == "repair" and r.provenance["method"] == "none"


def test_barrier_between(pair, tmp_path):
    data = load_data("digits", split="test", batch_size=200)
    res = barrier_between(*pair, data=data, steps=3, progress=False)
    assert list(res) == ["naive"] and isinstance(res["naive"], merging.BarrierResult)
    res = barrier_between(*pair, data="digits", align="weight", steps=3, progress=False, repair=True,
                          plot=tmp_path / "p.png")
    assert list(res) == ["naive", "weight matching"] and res["naive"].correction == "repair"
    assert (tmp_path / "p.png").is_file()
    with pytest.raises(ValueError, match="steps must be an integer >= 2"):
        barrier_between(*pair, data="digits", steps=1)
    with pytest.raises(ValueError, match="must end in .png"):
        barrier_between(*pair, data="digits", plot=tmp_path / "p.jpg")


def test_merge_validates_before_writing(pair, tmp_path):
    a, b = pair
    out = tmp_path / "o.safetensors"
    for kwargs, message in [({"alpha": -0.1}, r"alpha must be in \[0, 1\]"), ({"alpha": float("nan")}, "alpha"),
                            ({"method": "ste"}, "needs data"), ({"method": "avg"}, "unknown method 'avg'")]:
        with pytest.raises(ValueError, match=message):
            merge_checkpoints(a, b, out, progress=False, **kwargs)
    with pytest.raises(ValueError, match="refusing to overwrite"):
        merge_checkpoints(a, b, a, progress=False)
    with pytest.raises(ValueError, match="CUDA is not available") if not torch.cuda.is_available() else \
            pytest.raises(ValueError, match="unknown device"):
        merge_checkpoints(a, b, out, device="cuda" if not torch.cuda.is_available() else "tpu", progress=False)
    assert not out.exists()


def test_train_classifier_learns_and_validates():
    torch.manual_seed(0)
    model = weightspace.get_model("mlp", **MLP)
    losses = train_classifier(model, "digits", epochs=3, lr=0.1, progress=False)
    assert len(losses) == 3 and losses[-1] < losses[0] < 2.5 and not model.training
    acc = merging.evaluate(model, model.state_dict(), load_data("digits", split="test")).accuracy
    assert acc > 0.5  # chance is 0.1
    batches = [(torch.rand(16, 64), torch.randint(0, 10, (16,)))]
    assert len(train_classifier(model, batches, epochs=2, optimizer="adam", lr=1e-3, progress=False)) == 2
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        train_classifier(model, batches, epochs=0)
    with pytest.raises(ValueError, match="unknown optimizer 'lbfgs'"):
        train_classifier(model, batches, optimizer="lbfgs")
    with pytest.raises(ValueError, match="lower lr"):
        train_classifier(model, batches, lr=1e30, epochs=3, progress=False)


def test_run_demo_small(tmp_path):
    from weightspace.demo import run_demo

    threads = torch.get_num_threads()
    r = run_demo(tmp_path / "d", epochs=2, width=16, steps=5, progress=False)
    assert torch.get_num_threads() == threads
    assert r.plot.is_file() and r.merged.is_file() and set(r.barriers) == {"naive", "weight matching"}
    assert r.merge.method == "weight"
    json.dumps(r.to_dict())
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        run_demo(tmp_path / "f")
    with pytest.raises(ValueError, match="width must be an integer >= 1"):
        run_demo(tmp_path / "d", width=0)


class _CountingBatches:
    """Re-iterable batches that count how many were read."""

    def __init__(self, batches):
        self.batches, self.read = batches, 0

    def __iter__(self):
        for b in self.batches:
            self.read += 1
            yield b


@pytest.mark.parametrize("samples, per_pass", [(100, 2), (None, 6)])
def test_repair_reads_only_repair_samples(pair, tmp_path, capsys, samples, per_pass):
    x, y = next(iter(load_data("digits", split="train", batch_size=64)))
    data = _CountingBatches([(x, y)] * 6)
    merge_checkpoints(*pair, tmp_path / "r.safetensors", data=data, repair=True, method="none",
                      repair_samples=samples, progress=True)
    layers = len(MLP["hidden"])
    # A, B and one pass per repaired hidden layer, each over ceil(samples / 64) batches (all 6 with None),
    # plus at most three single batches: the data check, the batch size and the forward-order dry run
    assert data.read <= (2 + layers) * per_pass + 3 and data.read >= (2 + layers) * per_pass
    assert "REPAIR" in capsys.readouterr().err  # the progress bar


def test_repair_samples_must_be_positive(pair, tmp_path):
    with pytest.raises(ValueError, match="repair_samples"):
        merge_checkpoints(*pair, tmp_path / "r.safetensors", data="digits", repair=True, method="none",
                          repair_samples=0, progress=False)


def test_auto_is_activation_with_data_and_weight_without(pair, tmp_path, capsys):
    from weightspace.cli import main

    with_data = merge_checkpoints(*pair, tmp_path / "d.safetensors", data="digits", progress=False)
    without = merge_checkpoints(*pair, tmp_path / "w.safetensors", progress=False)
    assert with_data.method == "activation" and with_data.repair == "none"  # an MLP: no BatchNorm, no reset
    assert without.method == "weight"
    assert with_data.reason.startswith("auto: --data given") and without.reason.startswith("auto: no --data")
    assert with_data.provenance["method_reason"] == with_data.reason
    assert main(["merge", str(pair[0]), str(pair[1]), "-o", str(tmp_path / "c.safetensors"), "--data", "digits",
                 "--quiet", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "activation" and out["reason"].startswith("auto")
    assert main(["merge", str(pair[0]), str(pair[1]), "-o", str(tmp_path / "e.safetensors")]) == 0
    assert "method: auto: no --data given, so weight matching" in capsys.readouterr().out
    explicit = merge_checkpoints(*pair, tmp_path / "x.safetensors", method="weight", data="digits", progress=False)
    assert explicit.method == "weight" and explicit.reason == "--method weight"


@pytest.fixture(scope="module")
def trained_bn_pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("bn")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = weightspace.get_model("resnet20", **RESNET)
        train_classifier(model, "digits", epochs=3, lr=0.05, seed=seed, progress=False)
        meta = {MODEL_KEY: model_spec_to_json("resnet20", RESNET)}
        paths.append(weightspace.save(model.state_dict(), d / f"bn{seed}.safetensors", metadata=meta))
    return paths


def test_auto_beats_weight_matching_on_a_batchnorm_pair(trained_bn_pair, tmp_path):
    """On a narrow BatchNorm network the default with data (activation matching and the BatchNorm
    reset) leaves a lower midpoint loss than weight matching alone."""
    auto = merge_checkpoints(*trained_bn_pair, tmp_path / "auto.safetensors", data="digits", progress=False)
    weight = merge_checkpoints(*trained_bn_pair, tmp_path / "weight.safetensors", method="weight", progress=False)
    assert auto.method == "activation" and auto.repair == "reset_bn" and "BatchNorm" in auto.reason
    test = load_data("digits", split="test", batch_size=512)

    def loss(path):
        lm = weightspace.load_model(path)
        with torch.no_grad():
            return sum(float(torch.nn.functional.cross_entropy(lm.module(x), y, reduction="sum")) for x, y in test)

    assert loss(auto.path) < loss(weight.path)


def test_barrier_auto_resets_batchnorm_as_merge_does(trained_bn_pair):
    """barrier --method auto on a BatchNorm pair: activation matching and the BatchNorm reset on
    every curve, so its aligned curve is what merge's default writes."""
    res = barrier_between(*trained_bn_pair, data="digits", align="auto", steps=3, repair_samples=256, progress=False)
    assert list(res) == ["naive", "activation matching"]
    assert all(r.correction == "reset_bn" for r in res.values())
    plain = barrier_between(*trained_bn_pair, data="digits", align="activation", steps=3, progress=False)
    assert all(r.correction == "none" for r in plain.values())


def test_barrier_all_methods_in_one_plot(pair, tmp_path):
    png = tmp_path / "new" / "all.png"  # a missing directory is created
    res = barrier_between(*pair, data="digits", align="all", steps=3, plot=png, progress=False)
    assert list(res) == ["naive", "weight matching", "activation matching", "STE matching"]
    assert png.read_bytes().startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="all"):
        barrier_between(*pair, data="digits", align="magic", steps=3, progress=False)
