"""Merging checkpoints of different dtypes, and checkpoints holding non-float tensors:
computed in the promoted dtype, written in A's dtype (or ``dtype=``), said in one line; non-float
tensors copied from A; a tensor floating in one input and not in the other is bad input."""
from __future__ import annotations

import pytest
import torch

import merging
import weightspace
from weightspace.api import MODEL_KEY
from weightspace.cli import main
from weightspace.merge import merge_checkpoints
from weightspace.merge_many import merge_many_checkpoints
from weightspace.models import model_spec_to_json

MLP = {"in_features": 64, "hidden": [24, 24], "out_features": 10}
SPEC = model_spec_to_json("mlp", MLP)


def _save(path, seed, dtype=torch.float32, change=None):
    torch.manual_seed(seed)
    state = {k: v.to(dtype) for k, v in weightspace.get_model("mlp", **MLP).state_dict().items()}
    if change:
        state.update(change(state))
    return weightspace.save(state, path, metadata={MODEL_KEY: SPEC})


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("dtypes")
    return {"a32": _save(d / "a32.safetensors", 0), "a64": _save(d / "a64.safetensors", 0, torch.float64),
            "b64": _save(d / "b64.safetensors", 1, torch.float64), "b32": _save(d / "b32.safetensors", 1),
            "abf": _save(d / "abf.safetensors", 0, torch.bfloat16),
            "bf16": _save(d / "bf16.safetensors", 1, torch.float16)}


@pytest.mark.parametrize("kw", [{}, {"low_memory": True}, {"solver": "scipy"}], ids=["memory", "low-memory", "scipy"])
def test_float32_against_float64_is_merged_in_float64_and_written_as_a(files, tmp_path, kw):
    r = merge_checkpoints(files["a32"], files["b64"], tmp_path / "m.safetensors", progress=False, **kw)
    out = weightspace.load(r.path)
    assert {v.dtype for v in out.values()} == {torch.float32}
    assert len(r.notes) == 1 and "float32" in r.notes[0] and "float64" in r.notes[0] and "\n" not in r.notes[0]
    # A float32 widens exactly to float64: the permutation is the one of the all-float64 merge,
    # and every tensor is the float64 interpolation rounded once to float32
    ref = merge_checkpoints(files["a64"], files["b64"], tmp_path / "ref.safetensors", progress=False, **kw)
    assert all(torch.equal(r.perms[g], ref.perms[g]) for g in ref.perms)
    assert ref.notes == ()
    ref_state = weightspace.load(ref.path)
    for k, v in out.items():
        assert torch.equal(v, ref_state[k].float()), k


def test_output_dtype_option(files, tmp_path):
    r = merge_checkpoints(files["a32"], files["b64"], tmp_path / "m.safetensors", progress=False, dtype="float64")
    out = weightspace.load(r.path)
    assert {v.dtype for v in out.values()} == {torch.float64}
    assert "written as float64 (--dtype)" in r.notes[0] and r.provenance["dtype"] == "float64"
    a, b = weightspace.load(files["a32"]), weightspace.load(files["b64"])
    pb = weightspace.permute(weightspace.trace_model(weightspace.get_model("mlp", **MLP)), b, r.perms)
    for k in out:  # computed in float64, not in A's float32
        assert torch.equal(out[k], torch.lerp(a[k].double(), pb[k], 0.5)), k
    low = merge_checkpoints(files["a32"], files["b64"], tmp_path / "low", progress=False, dtype="bfloat16")
    assert {v.dtype for v in weightspace.load(low.path).values()} == {torch.bfloat16}
    with pytest.raises(ValueError, match="unknown output dtype 'int8'"):
        merge_checkpoints(files["a32"], files["b64"], tmp_path / "x.safetensors", dtype="int8")
    assert not (tmp_path / "x.safetensors").exists()


def test_half_precision_inputs_keep_a_dtype(files, tmp_path):
    r = merge_checkpoints(files["abf"], files["bf16"], tmp_path / "m.safetensors", progress=False)
    assert {v.dtype for v in weightspace.load(r.path).values()} == {torch.bfloat16}
    assert "bfloat16" in r.notes[0] and "float16" in r.notes[0] and "interpolated in float32" in r.notes[0]
    same = merge_checkpoints(files["abf"], files["abf"], tmp_path / "s.safetensors", progress=False)
    assert same.notes == () and {v.dtype for v in weightspace.load(same.path).values()} == {torch.bfloat16}


def test_merge_many_of_mixed_dtypes(files, tmp_path):
    for method in ("mergemany", "c2m3", "average"):
        r = merge_many_checkpoints([files["a32"], files["b64"], files["abf"]], tmp_path / f"{method}.safetensors",
                                   method=method, progress=False)
        assert {v.dtype for v in weightspace.load(r.path).values()} == {torch.float32}
        assert "float64" in r.notes[0] and "bfloat16" in r.notes[0]
    r = merge_many_checkpoints([files["a32"], files["b64"]], tmp_path / "d.safetensors", method="average",
                               progress=False, dtype="float64")
    a, b = weightspace.load(files["a32"]), weightspace.load(files["b64"])
    for k, v in weightspace.load(r.path).items():
        assert v.dtype == torch.float64 and torch.equal(v, (a[k].double() + b[k]) / 2), k


def test_cli_mixed_dtypes_exit_0_with_one_note(files, tmp_path, capsys):
    a, b = str(files["a32"]), str(files["b64"])
    runs = [["merge", a, b, "-o", str(tmp_path / "m.safetensors")],
            ["merge", a, b, "-o", str(tmp_path / "low"), "--low-memory"],
            ["merge", a, b, "-o", str(tmp_path / "s.safetensors"), "--solver", "scipy", "--dtype", "float16"],
            ["merge-many", a, b, "-o", str(tmp_path / "mm.safetensors"), "--dtype", "float64"],
            ["barrier", a, b, "--data", "digits", "--method", "weight", "--points", "3"]]
    for argv in runs:
        assert main([*argv, "--quiet"]) == 0, argv
        err = capsys.readouterr().err
        if argv[0] != "barrier":
            notes = [line for line in err.splitlines() if "note:" in line]
            assert len(notes) == 1 and "float32" in notes[0] and "float64" in notes[0], (argv, err)
    assert {v.dtype for v in weightspace.load(tmp_path / "s.safetensors").values()} == {torch.float16}
    assert {v.dtype for v in weightspace.load(tmp_path / "mm.safetensors").values()} == {torch.float64}
    with pytest.raises(SystemExit) as e:
        main(["merge", a, b, "-o", str(tmp_path / "x.safetensors"), "--dtype", "int8"])
    assert e.value.code == 2
    assert "invalid choice: 'int8'" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["activation", "ste"])
def test_data_driven_methods_on_float64_checkpoints(files, tmp_path, method):
    r = merge_checkpoints(files["b64"], files["a32"], tmp_path / "m.safetensors", method=method, data="digits",
                          repair=True, progress=False)
    assert {v.dtype for v in weightspace.load(r.path).values()} == {torch.float64}


def _int_weight(state):
    return {"layers.1.weight": (state["layers.1.weight"] * 1000).to(torch.int32)}


def test_non_float_tensors_are_copied_from_a(tmp_path, capsys):
    a = _save(tmp_path / "a.safetensors", 0, change=_int_weight)
    b = _save(tmp_path / "b.safetensors", 1, change=_int_weight)
    r = merge_checkpoints(a, b, tmp_path / "m.safetensors", progress=False)
    out, sa = weightspace.load(r.path), weightspace.load(a)
    assert r.copied == ("layers.1.weight",)
    assert out["layers.1.weight"].dtype == torch.int32 and torch.equal(out["layers.1.weight"], sa["layers.1.weight"])
    # matching left it out: the permutation of matching with that tensor zeroed (it adds nothing)
    structure = weightspace.trace_model(weightspace.get_model("mlp", **MLP))
    sb = weightspace.load(b)
    zeroed = {"layers.1.weight": torch.zeros(sa["layers.1.weight"].shape)}
    perms = merging.weight_matching(structure, sa | zeroed, sb | zeroed)
    assert all(torch.equal(r.perms[g], perms[g]) for g in perms)
    low = merge_checkpoints(a, b, tmp_path / "low", progress=False)
    assert low.copied == ("layers.1.weight",) and torch.equal(weightspace.load(low.path)["layers.1.weight"],
                                                              sa["layers.1.weight"])
    assert main(["merge", str(a), str(b), "-o", str(tmp_path / "c.safetensors")]) == 0
    summary = capsys.readouterr().out
    assert "1 non-float tensor" in summary and "layers.1.weight" in summary
    assert main(["merge-many", str(a), str(b), "-o", str(tmp_path / "mm.safetensors")]) == 0
    assert "layers.1.weight" in capsys.readouterr().out


def test_float_against_int_is_bad_input(files, tmp_path, capsys):
    i = _save(tmp_path / "i.safetensors", 1, change=_int_weight)
    for argv in (["merge", str(files["a32"]), str(i), "-o", str(tmp_path / "m.safetensors")],
                 ["merge", str(files["a32"]), str(i), "-o", str(tmp_path / "low"), "--low-memory"],
                 ["merge-many", str(files["a32"]), str(i), "-o", str(tmp_path / "m.safetensors")]):
        assert main([*argv, "--quiet"]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "'layers.1.weight' is float32 in" in err and "i.safetensors" in err
        assert "int32" in err and "Traceback" not in err
    assert not (tmp_path / "m.safetensors").exists() and not (tmp_path / "low").exists()


def test_barrier_notes_mixed_dtypes_and_refuses_float_against_int(files, tmp_path, capsys):
    argv = ["barrier", str(files["a32"]), str(files["b64"]), "--data", "digits", "--method", "weight", "--points", "3",
            "--quiet"]
    assert main(argv) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "note:" in line]
    assert len(notes) == 1 and "float32" in notes[0] and "float64" in notes[0]
    i = _save(tmp_path / "i.safetensors", 1, change=_int_weight)
    assert main(["barrier", str(files["a32"]), str(i), "--data", "digits", "--points", "3", "--quiet"]) == 2
    assert "'layers.1.weight' is float32" in capsys.readouterr().err


def test_starlight_of_half_precision_sources(files, tmp_path, capsys):
    from weightspace.starlight import starlight_checkpoints

    r = starlight_checkpoints([files["abf"], files["bf16"]], tmp_path / "star.safetensors", data="digits", epochs=1,
                              progress=False)
    assert {v.dtype for v in weightspace.load(r.path).values()} == {torch.bfloat16}
    assert len(r.notes) == 1 and "trained in float32" in r.notes[0]


@pytest.mark.parametrize("method", ["linear", "ties", "slerp"])
def test_recipe_of_mixed_dtypes_merges_in_the_promoted_dtype(files, tmp_path, capsys, method):
    """A recipe over float32, float64 and bfloat16 checkpoints runs, says so in one line, and gives
    what the same recipe gives on the inputs widened to float64, rounded once to the output dtype."""
    models = [files["b64"]] if method == "slerp" else [files["b64"], files["bf16"]]
    params = "{t: 0.3}" if method == "slerp" else "{}"
    per_model = "{weight: 0.5, density: 0.5}" if method == "ties" else "{weight: 0.5}"

    def recipe(base, ms, name):
        path = tmp_path / f"{name}.yaml"
        path.write_text(f"merge_method: {method}\nbase_model: {base}\nparameters: {params}\nmodels:\n" + "".join(
            f"  - model: {m}\n" + (f"    parameters: {per_model}\n" if method != "slerp" else "") for m in ms))
        return path

    assert main(["merge", "--config", str(recipe(files["a32"], models, "mixed")), "-o", str(tmp_path / "m.safetensors")]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "differ in dtype" in line]
    assert len(notes) == 1 and "float64" in notes[0] and "promoted" in notes[0]
    wide = []
    for i, m in enumerate([files["a32"], *models]):
        path = tmp_path / f"wide{i}.safetensors"
        weightspace.save({k: v.double() for k, v in weightspace.load(m).items()}, path)
        wide.append(path)
    assert main(["merge", "--config", str(recipe(wide[0], wide[1:], "wide")), "-o", str(tmp_path / "w.safetensors"),
                 "--quiet"]) == 0
    out, ref = weightspace.load(tmp_path / "m.safetensors"), weightspace.load(tmp_path / "w.safetensors")
    for k, v in out.items():
        assert torch.equal(v, ref[k].to(v.dtype)), k
