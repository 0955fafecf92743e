"""``weightspace merge-many`` and ``weightspace merge --config``: library verbs and CLI."""
from __future__ import annotations

import json

import pytest
import torch

import weightspace
from graphs import permute, random_permutation
from weightspace.api import INPUT_SHAPE_KEY, MODEL_KEY, PROVENANCE_KEY
from weightspace.cli import main
from weightspace.models import model_spec_to_json
from weightspace.recipe import load_recipe, run_recipe

MLP = {"in_features": 64, "hidden": [16, 16], "out_features": 10}


def _meta():
    return {MODEL_KEY: model_spec_to_json("mlp", MLP), INPUT_SHAPE_KEY: "1,8,8"}


def _save(path, state):
    return weightspace.save(state, path, metadata=_meta())


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    """One random MLP and three permuted copies of it."""
    d = tmp_path_factory.mktemp("copies")
    torch.manual_seed(0)
    model = weightspace.get_model("mlp", **MLP)
    structure = weightspace.trace_model(model, input_shape="1,8,8")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    paths = [_save(d / "m0.safetensors", state)]
    for s in range(1, 4):
        paths.append(_save(d / f"m{s}.safetensors", permute(structure, state, random_permutation(structure, seed=s))))
    return state, paths


def test_merge_many_recovers_permuted_copies(copies, tmp_path, capsys):
    state, paths = copies
    out = tmp_path / "merged.safetensors"
    assert main(["merge-many", *map(str, paths), "-o", str(out), "--device", "cpu"]) == 0
    assert "MergeMany" in capsys.readouterr().out
    found = weightspace.load_checkpoint(out)
    merged, info = found.state, found.info
    for k in state:
        torch.testing.assert_close(merged[k], state[k], rtol=0, atol=1e-6)
    prov = json.loads(info.metadata[PROVENANCE_KEY])
    assert prov["method"] == "mergemany" and len(prov["inputs"]) == 4
    assert info.metadata[MODEL_KEY] == _meta()[MODEL_KEY]
    # naive averaging of permuted copies is not the original
    out2 = tmp_path / "avg.safetensors"
    assert main(["merge-many", *map(str, paths), "-o", str(out2), "--method", "average", "--json",
                 "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == "average"
    avg = weightspace.load(out2)
    assert not torch.allclose(avg["layers.0.weight"], state["layers.0.weight"])


def test_merge_many_repair(copies, tmp_path):
    _, paths = copies
    r = weightspace.merge_many_checkpoints(paths[:3], tmp_path / "r.safetensors", repair=True, data="digits",
                                           progress=False)
    assert r.repair == "repair" and r.path.is_file()


def test_merge_many_bad_input(copies, tmp_path, capsys):
    _, paths = copies
    out = tmp_path / "x.safetensors"
    assert main(["merge-many", str(paths[0]), "-o", str(out)]) == 2
    assert "at least two" in capsys.readouterr().err
    assert main(["merge-many", *map(str, paths[:2]), "-o", str(out), "--method", "nope"]) == 2
    assert "choose one of: mergemany, c2m3, average" in capsys.readouterr().err
    other = weightspace.save({k: torch.zeros(3) for k in ["a"]}, tmp_path / "other.safetensors")
    assert main(["merge-many", str(paths[0]), str(other), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "different architectures" in err
    assert main(["merge-many", *map(str, paths[:2]), "-o", str(out), "--repair"]) == 2
    assert "needs data" in capsys.readouterr().err
    assert not out.exists()


# ------------------------------------------------------------------ recipes


@pytest.fixture()
def task_models(tmp_path):
    torch.manual_seed(1)
    base = weightspace.get_model("mlp", **MLP).state_dict()
    fts = [{k: v + 0.1 * torch.randn_like(v) for k, v in base.items()} for _ in range(2)]
    paths = [_save(tmp_path / "base.safetensors", base)] + \
            [_save(tmp_path / f"ft{i}.safetensors", s) for i, s in enumerate(fts)]
    return base, fts, paths


def _write(tmp_path, text):
    p = tmp_path / "recipe.yaml"
    p.write_text(text)
    return p


def test_recipe_ties_matches_the_library(task_models, tmp_path, capsys):
    base, fts, _ = task_models
    recipe = _write(tmp_path, """
merge_method: ties
base_model: base.safetensors
models:
  - model: ft0.safetensors
    parameters: {weight: 1.0, density: 0.3}
  - model: ft1.safetensors
    parameters: {weight: 0.5, density: 0.5}
parameters: {lambda: 0.8}
dtype: float32
out: merged.safetensors
""")
    assert main(["merge", "--config", str(recipe)]) == 0
    assert "ties: merged 2 models" in capsys.readouterr().out
    found = weightspace.load_checkpoint(tmp_path / "merged.safetensors")
    merged, info = found.state, found.info
    import merging
    expected = merging.merge_states("ties", fts, base=base, weights=[1.0, 0.5], density=[0.3, 0.5], scale=0.8)
    for k in expected:
        torch.testing.assert_close(merged[k], expected[k])
    prov = json.loads(info.metadata[PROVENANCE_KEY])
    assert prov["method"] == "ties" and "merge_method: ties" in prov["recipe"] and len(prov["inputs"]) == 3
    assert info.metadata[MODEL_KEY] == _meta()[MODEL_KEY]
    # -o overrides the recipe's out; library path equals CLI path
    out = run_recipe(load_recipe(recipe), tmp_path / "again.safetensors")
    assert torch.equal(weightspace.load(out)["layers.0.weight"], merged["layers.0.weight"])


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
def test_recipe_dare_is_seeded_by_the_recipe(task_models, tmp_path, capsys, method):
    _, _, paths = task_models
    # as read from the files: the random drops follow the order of the keys
    base, fts = weightspace.load(paths[0]), [weightspace.load(p) for p in paths[1:]]
    text = f"""
merge_method: {method}
base_model: base.safetensors
seed: 7
models:
  - model: ft0.safetensors
    parameters: {{weight: 1.0, density: 0.5}}
  - model: ft1.safetensors
    parameters: {{weight: 1.0, density: 0.5}}
"""
    recipe = _write(tmp_path, text)
    assert main(["merge", "--config", str(recipe), "-o", str(tmp_path / "m.safetensors")]) == 0, \
        capsys.readouterr().err
    import merging
    expected = merging.merge_states(method, fts, base=base, weights=[1.0, 1.0], density=[0.5, 0.5], seed=7)
    merged = weightspace.load(tmp_path / "m.safetensors")
    for k in expected:
        torch.testing.assert_close(merged[k], expected[k], rtol=0, atol=0)
    other = merging.merge_states(method, fts, base=base, weights=[1.0, 1.0], density=[0.5, 0.5], seed=8)
    assert not torch.equal(other["layers.0.weight"], merged["layers.0.weight"])  # the seed was used


@pytest.mark.parametrize("body, message", [
    ("merge_method: nope\nmodels: [ft0.safetensors]\n", "unknown merge_method 'nope'; choose one of: arcee_fusion, breadcrumbs"),
    ("merge_method: linear\nmodels: [missing.safetensors]\n", "missing.safetensors: no such file"),
    ("merge_method: linear\nmodels: [ft0.safetensors, other.safetensors]\n", "has shape"),
    ("merge_method: linear\nmodels: [ft0.safetensors]\nparameters: {density: 0.2}\n", "takes no parameter 'density'"),
    ("merge_method: linear\nmodels: [ft0.safetensors]\nfoo: 1\n", "unknown key(s) foo"),
])
def test_bad_recipes(task_models, tmp_path, capsys, body, message):
    state = weightspace.load(task_models[2][1])
    state["layers.0.weight"] = torch.zeros(3, 3)
    weightspace.save(state, tmp_path / "other.safetensors")
    recipe = _write(tmp_path, body)
    out = tmp_path / "out.safetensors"
    assert main(["merge", "--config", str(recipe), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_merge_cli_still_needs_a_and_b(tmp_path, capsys):
    assert main(["merge", "-o", str(tmp_path / "x.safetensors")]) == 2
    assert "give A, B and -o OUT (or --config RECIPE)" in capsys.readouterr().err
    assert main(["merge", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_recipe_align_first(tmp_path):
    torch.manual_seed(2)
    model = weightspace.get_model("mlp", **MLP)
    structure = weightspace.trace_model(model, input_shape="1,8,8")
    base = model.state_dict()
    ft = {k: v + 0.01 * torch.randn_like(v) for k, v in base.items()}
    _save(tmp_path / "base.safetensors", base)
    _save(tmp_path / "ft.safetensors", permute(structure, ft, random_permutation(structure, seed=3)))
    recipe = _write(tmp_path, "merge_method: task_arithmetic\nbase_model: base.safetensors\n"
                              "models: [ft.safetensors]\nalign: true\n")
    out = run_recipe(load_recipe(recipe), tmp_path / "o.safetensors")
    merged = weightspace.load(out)
    for k in ft:
        torch.testing.assert_close(merged[k], ft[k], atol=1e-6, rtol=0)
