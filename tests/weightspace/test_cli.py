"""The ``weightspace`` command end to end: inspect, merge, barrier, demo, and bad input.

Run in-process through ``weightspace.cli.main``; one test runs the installed console script.
Every bad input must exit with status 2, print one line naming the file or the problem, and
write nothing.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import weightspace
from weightspace.api import INPUT_SHAPE_KEY, MODEL_KEY, PROVENANCE_KEY
from weightspace.cli import main
from weightspace.models import model_spec_to_json
from weightspace.training import train_classifier

PNG = b"\x89PNG\r\n\x1a\n"
KWARGS = {"in_features": 64, "hidden": [48, 48, 48], "out_features": 10}


def _save(state, path, kwargs=KWARGS, input_shape="1,8,8"):
    meta = {MODEL_KEY: model_spec_to_json("mlp", kwargs)}
    if input_shape:
        meta[INPUT_SHAPE_KEY] = input_shape
    return weightspace.save(state, path, metadata=meta)


def _mlp(seed, kwargs=KWARGS):
    torch.manual_seed(seed)
    return weightspace.get_model("mlp", **kwargs)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Two MLPs trained on digits from different seeds (a second or so), plus variants."""
    d = tmp_path_factory.mktemp("ckpts")
    paths = {}
    for name, seed in (("a", 0), ("b", 1)):
        model = _mlp(seed)
        train_classifier(model, "digits", epochs=8, lr=0.1, seed=seed, progress=False)
        paths[name] = _save(model.state_dict(), d / f"{name}.safetensors")
    state_a = weightspace.load(paths["a"])
    # a different architecture, recorded in its metadata
    other = {"in_features": 64, "hidden": [32, 48, 48], "out_features": 10}
    paths["other"] = _save(_mlp(2, other).state_dict(), d / "other.safetensors", other)
    # NaN in one weight
    bad = {k: v.clone() for k, v in state_a.items()}
    bad["layers.1.weight"][3, 5] = float("nan")
    paths["nan"] = _save(bad, d / "nan.safetensors")
    # a tensor missing (no metadata: --model says what it should be)
    paths["dropped"] = d / "dropped.safetensors"
    weightspace.save({k: v for k, v in state_a.items() if k != "layers.2.bias"}, paths["dropped"])
    # truncated file
    raw = paths["a"].read_bytes()
    paths["trunc"] = d / "trunc.safetensors"
    paths["trunc"].write_bytes(raw[: len(raw) // 2])
    # no metadata at all (a plain .pt from some training script)
    paths["plain"] = d / "plain.pt"
    torch.save(state_a, paths["plain"])
    # 784-input MLPs: digits (8x8) does not fit them
    wide = {"in_features": 784, "hidden": [16], "out_features": 10}
    paths["mnist_a"] = _save(_mlp(3, wide).state_dict(), d / "mnist_a.safetensors", wide, None)
    paths["mnist_b"] = _save(_mlp(4, wide).state_dict(), d / "mnist_b.safetensors", wide, None)
    return {k: str(v) for k, v in paths.items()}


def _run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _outputs(path, x):
    lm = weightspace.load_model(path)
    with torch.no_grad():
        return lm.module(x)


# --------------------------------------------------------------------------- working commands


def test_inspect_saved_checkpoint_without_model(ckpts, capsys):
    rc, out, err = _run(["inspect", ckpts["a"]], capsys)
    assert rc == 0, err
    assert "MLP" in out and "3 permutation groups" in out
    rc, out, _ = _run(["inspect", ckpts["a"], "--json"], capsys)
    assert rc == 0
    d = json.loads(out)
    assert json.loads(d["model"])["name"] == "mlp" and len(d["groups"]) == 3


def test_merge_writes_loadable_checkpoint_with_provenance(ckpts, tmp_path, capsys):
    out_path = tmp_path / "sub" / "merged.safetensors"
    rc, out, err = _run(["merge", ckpts["a"], ckpts["b"], "-o", out_path, "--device", "cpu"], capsys)
    assert rc == 0, err
    assert "weight matching" in out and str(out_path) in out
    lm = weightspace.load_model(out_path)  # no --model: recorded
    assert type(lm.module).__name__ == "MLP" and lm.input_shape == (1, 8, 8)
    meta = lm.metadata
    assert json.loads(meta[MODEL_KEY]) == {"name": "mlp", "kwargs": KWARGS}
    assert meta[INPUT_SHAPE_KEY] == "1,8,8"
    prov = json.loads(meta[PROVENANCE_KEY])
    assert [i["sha256"] for i in prov["inputs"]] == [_sha256(ckpts["a"]), _sha256(ckpts["b"])]
    assert prov["method"] == "weight" and prov["alpha"] == 0.5 and prov["repair"] == "none"
    assert prov["seed"] == 0 and prov["weightspace_version"] == weightspace.__version__ and prov["date"]

    rc, out, err = _run(["merge", ckpts["a"], ckpts["b"], "-o", tmp_path / "m.safetensors", "--alpha", "0.3",
                         "--method", "activation", "--data", "digits", "--repair", "--json"], capsys)
    assert rc == 0, err
    d = json.loads(out)
    assert d["method"] == "activation" and d["alpha"] == 0.3 and d["repair"] == "repair"
    assert d["provenance"]["data"] == "digits"
    assert err == ""  # --json: no progress bars


def test_merge_model_with_its_own_permutation_gives_back_a(ckpts, tmp_path, capsys):
    lm = weightspace.load_model(ckpts["a"])
    s = lm.structure()
    perm = weightspace.random_permutation(s, seed=7)
    permuted = weightspace.permute(s, lm.state, perm)
    assert not torch.equal(permuted["layers.0.weight"], lm.state["layers.0.weight"])
    b = _save(permuted, tmp_path / "perm.safetensors")
    out_path = tmp_path / "merged.safetensors"
    rc, _, err = _run(["merge", ckpts["a"], b, "-o", out_path, "--method", "weight", "--quiet"], capsys)
    assert rc == 0, err
    merged = weightspace.load(out_path)
    for k, v in lm.state.items():
        torch.testing.assert_close(merged[k], v, rtol=0, atol=1e-6)
    x = torch.rand(16, 1, 8, 8)
    torch.testing.assert_close(_outputs(out_path, x), _outputs(ckpts["a"], x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("low_memory", [False, True], ids=["in-memory", "low-memory"])
def test_merge_every_exact_solver_gives_the_same_checkpoint(ckpts, tmp_path, capsys, low_memory):
    from merging.matching._solve import lap_available

    solvers = ["scipy", "lap", "sparse", "auto"] if lap_available() else ["scipy", "auto"]
    merged = {}
    for solver in solvers:
        out_path = tmp_path / f"{solver}.safetensors"
        argv = ["merge", ckpts["a"], ckpts["b"], "-o", out_path, "--solver", solver, "--quiet"]
        rc, _, err = _run(argv + (["--low-memory"] if low_memory else []), capsys)
        assert rc == 0, err
        merged[solver] = weightspace.load(out_path)
    for solver in solvers[1:]:
        for k, v in merged["scipy"].items():
            torch.testing.assert_close(merged[solver][k], v, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("low_memory", [False, True], ids=["in-memory", "low-memory"])
def test_merge_on_cuda_writes_the_cpu_merge(tmp_path, capsys, low_memory):
    # on a GPU, auto is the sparse solver, independent groups solved in threads: the same
    # permutations as the dense solver on the CPU, so the same checkpoint (to float32 rounding)
    wide = {"in_features": 64, "hidden": [300, 300, 300], "out_features": 10}
    a = _save(_mlp(0, wide).state_dict(), tmp_path / "a.safetensors", wide)
    b = _save(_mlp(1, wide).state_dict(), tmp_path / "b.safetensors", wide)
    merged = {}
    for dev in ("cpu", "cuda"):
        out_path = tmp_path / f"{dev}.safetensors"
        argv = ["merge", a, b, "-o", out_path, "--device", dev, "--quiet"]
        rc, _, err = _run(argv + (["--low-memory"] if low_memory else []), capsys)
        assert rc == 0, err
        merged[dev] = weightspace.load(out_path)
    for k, v in merged["cpu"].items():
        torch.testing.assert_close(merged["cuda"][k], v, rtol=1e-5, atol=1e-6)


def test_merge_plain_pt_needs_model_and_falls_back_to_a(ckpts, tmp_path, capsys):
    # B records no model: A's is used
    out_path = tmp_path / "m.safetensors"
    rc, _, err = _run(["merge", ckpts["a"], ckpts["plain"], "-o", out_path, "--quiet"], capsys)
    assert rc == 0, err
    # neither records one: --model is needed, and named in the message
    rc, _, err = _run(["merge", ckpts["plain"], ckpts["plain"], "-o", tmp_path / "n.safetensors"], capsys)
    assert rc == 2 and "--model" in err and "plain.pt" in err
    rc, _, err = _run(["merge", ckpts["plain"], ckpts["plain"], "-o", tmp_path / "n.safetensors", "--quiet",
                       "--model", "mlp", "--model-kwargs", json.dumps(KWARGS)], capsys)
    assert rc == 0, err


def test_barrier_json_aligned_below_naive(ckpts, tmp_path, capsys):
    plot = tmp_path / "b.png"
    rc, out, err = _run(["barrier", ckpts["a"], ckpts["b"], "--data", "digits", "--align", "weight",
                         "--points", "9", "--plot", plot, "--json"], capsys)
    assert rc == 0, err
    d = json.loads(out)
    naive, aligned = d["results"]["naive"], d["results"]["weight matching"]
    assert len(naive["ts"]) == 9 and naive["ts"][0] == 0.0 and naive["ts"][-1] == 1.0
    for key in ("loss_barrier", "loss_barrier_linear", "accuracy_barrier", "accuracy_barrier_linear"):
        assert math.isfinite(naive[key]) and math.isfinite(aligned[key])
    assert aligned["loss_barrier"] < 0.5 * naive["loss_barrier"]
    assert aligned["accuracy_barrier"] < naive["accuracy_barrier"]
    assert naive["endpoint_accuracies"] == pytest.approx(aligned["endpoint_accuracies"], abs=1e-6)
    assert plot.read_bytes().startswith(PNG)


def test_barrier_table(ckpts, capsys):
    rc, out, err = _run(["barrier", ckpts["a"], ckpts["b"], "--data", "digits", "--points", "5", "--quiet"], capsys)
    assert rc == 0, err
    assert "naive" in out and "mean" in out and "linear" in out and "weight matching" not in out


def test_demo_tiny(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    rc, out, err = _run(["demo", "-o", out_dir, "--epochs", "2", "--width", "16", "--points", "5",
                         "--quiet", "--device", "cpu"], capsys)
    assert rc == 0, err
    assert (out_dir / "barrier.png").read_bytes().startswith(PNG)
    for name in ("model_a", "model_b", "merged"):
        weightspace.load_model(out_dir / f"{name}.safetensors")
    assert "naive" in out and "weight matching" in out
    rc, out, err = _run(["demo", "-o", out_dir, "--epochs", "1", "--width", "8", "--points", "3", "--json"],
                        capsys)
    assert rc == 0, err
    d = json.loads(out)
    assert set(d["results"]) == {"naive", "weight matching"} and err == ""


def test_console_script_help():
    exe = shutil.which("weightspace")
    cmd = [exe] if exe else [sys.executable, "-m", "weightspace.cli"]
    r = subprocess.run(cmd + ["merge", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "weightspace merge a.safetensors b.safetensors -o merged.safetensors" in r.stdout
    assert "--method" in r.stdout and "--alpha" in r.stdout


def test_help_of_each_command(capsys):
    for cmd in ("merge", "barrier", "demo"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        assert f"weightspace {cmd}" in capsys.readouterr().out


# --------------------------------------------------------------------------- bad input
# exit status 2, one line naming the file or the problem, nothing written


BAD = {
    "different architectures": (["merge", "{a}", "{other}", "-o", "{out}"],
                                ["different architectures", "'layers.0.", "(48", "(32", "other.safetensors",
                                 "a.safetensors"]),
    "missing key for --model": (["merge", "{dropped}", "{dropped}", "-o", "{out}", "--model", "mlp",
                                 "--model-kwargs", json.dumps(KWARGS)],
                                ["1 missing keys", "'layers.2.bias'", "dropped.safetensors"]),
    "extra layer in --model": (["merge", "{a}", "{b}", "-o", "{out}", "--model", "mlp", "--model-kwargs",
                                '{"in_features": 64, "hidden": [48, 48, 48, 48], "out_features": 10}'],
                               ["missing keys", "layers.4.weight", "a.safetensors"]),
    "wrong shape for --model": (["merge", "{a}", "{b}", "-o", "{out}", "--model", "mlp", "--model-kwargs",
                                 '{"in_features": 64, "hidden": [40, 48, 48], "out_features": 10}'],
                                ["'layers.0.weight'", "a.safetensors", "(48, 64)", "(40, 64)"]),
    "data does not fit": (["merge", "{mnist_a}", "{mnist_b}", "-o", "{out}", "--method", "activation",
                           "--data", "digits"], ["data digits does not fit", "(1, 8, 8)", "mnist_a.safetensors"]),
    "data does not fit barrier": (["barrier", "{mnist_a}", "{mnist_b}", "--data", "digits", "--plot", "{png}"],
                                  ["data digits does not fit", "(1, 8, 8)"]),
    "NaN in weights": (["merge", "{a}", "{nan}", "-o", "{out}"], ["NaN", "nan.safetensors", "'layers.1.weight'"]),
    "output is an input": (["merge", "{a}", "{b}", "-o", "{b}"], ["refusing to overwrite", "b.safetensors"]),
    "truncated file": (["merge", "{trunc}", "{b}", "-o", "{out}"], ["trunc.safetensors", "truncated"]),
    "unknown method": (["merge", "{a}", "{b}", "-o", "{out}", "--method", "magic"],
                       ["unknown method 'magic'", "weight, activation, ste, none"]),
    "alpha out of range": (["merge", "{a}", "{b}", "-o", "{out}", "--alpha", "1.5"], ["alpha", "[0, 1]", "1.5"]),
    "no data for activation": (["merge", "{a}", "{b}", "-o", "{out}", "--method", "activation"],
                               ["'activation' needs data", "--data"]),
    "no data for repair": (["merge", "{a}", "{b}", "-o", "{out}", "--repair"], ["--repair needs data"]),
    "no data for barrier": (["barrier", "{a}", "{b}", "--plot", "{png}"], ["needs data", "--data"]),
    "unknown data": (["merge", "{a}", "{b}", "-o", "{out}", "--method", "ste", "--data", "cifar99"],
                     ["unknown dataset 'cifar99'", "digits"]),
    "output not safetensors": (["merge", "{a}", "{b}", "-o", "{outpt}"], [".safetensors", "merged.pt"]),
    "missing file": (["merge", "{a}", "{missing}", "-o", "{out}"], ["no such file", "missing.safetensors"]),
    "unknown align": (["barrier", "{a}", "{b}", "--data", "digits", "--align", "magic", "--plot", "{png}"],
                      ["unknown method 'magic'"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exit_2_one_line_nothing_written(case, ckpts, tmp_path, capsys):
    argv, needles = BAD[case]
    paths = dict(ckpts, out=str(tmp_path / "merged.safetensors"), outpt=str(tmp_path / "merged.pt"),
                 png=str(tmp_path / "b.png"), missing=str(tmp_path / "missing.safetensors"),
                 nodir_png=str(tmp_path / "nodir" / "b.png"))
    before = {k: _sha256(p) for k, p in ckpts.items()}
    listing = sorted(os.listdir(tmp_path))
    rc, out, err = _run([paths[a[1:-1]] if a[:1] == "{" and a[1:-1] in paths else a for a in argv], capsys)
    assert rc == 2, (out, err)
    line = err.strip()
    assert "\n" not in line, err
    assert line.startswith(f"weightspace {argv[0]}: error: ")
    for needle in needles:
        assert needle in line, (needle, line)
    assert sorted(os.listdir(tmp_path)) == listing  # nothing written, no temporary files left
    assert {k: _sha256(p) for k, p in ckpts.items()} == before  # inputs untouched
    assert out == ""
