"""The mergekit methods SCE, Multi-SLERP, NearSwap, Arcee Fusion and RAM from recipes: each runs
unchanged from YAML as the Python API computes it, and its parameters are checked before loading."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import merging
from weightspace.cli import main
from weightspace.recipe import RecipeError, load_recipe, run_recipe


def state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = {"model.embed_tokens.weight": torch.randn(8, 4, generator=g)}
    for i in range(3):
        s[f"model.layers.{i}.self_attn.q_proj.weight"] = torch.randn(4, 4, generator=g)
    s["lm_head.weight"] = torch.randn(8, 4, generator=g)
    return s


@pytest.fixture()
def models(tmp_path):
    base = state(0)
    g = torch.Generator().manual_seed(9)
    fts = [{k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(2)]
    for name, s in (("base", base), ("a", fts[0]), ("b", fts[1])):
        save_file(s, str(tmp_path / f"{name}.safetensors"))
    return base, fts[0], fts[1]


def run(tmp_path, text):
    p = tmp_path / "recipe.yaml"
    p.write_text(text)
    return load_file(str(run_recipe(load_recipe(p), tmp_path / "out.safetensors")))


CASES = {
    "sce": ("base_model: base.safetensors\nmodels: [a.safetensors, b.safetensors]\n"
            "parameters: {select_topk: 0.4}\n", dict(select_topk=0.4), "ab"),
    "multislerp": ("models:\n  - model: a.safetensors\n    parameters: {weight: 0.3}\n"
                   "  - model: b.safetensors\n    parameters: {weight: 0.7}\n", dict(weights=[0.3, 0.7]), "ab-"),
    "nearswap": ("base_model: base.safetensors\nmodels: [a.safetensors]\nparameters: {t: 0.05}\n", dict(t=0.05), "a"),
    "arcee_fusion": ("base_model: base.safetensors\nmodels: [a.safetensors]\n", {}, "a"),
    "ram": ("base_model: base.safetensors\nmodels: [a.safetensors, b.safetensors]\n"
            "parameters: {epsilon: 0.05}\n", dict(epsilon=0.05), "ab"),
    "ramplus_tl": ("base_model: base.safetensors\nmodels: [a.safetensors, b.safetensors]\n"
                   "parameters: {epsilon: 0.05, r: 0.5, alpha: 0.3}\n", dict(epsilon=0.05, r=0.5, alpha=0.3), "ab"),
}


@pytest.mark.parametrize("method", sorted(CASES))
def test_each_method_runs_from_a_recipe_as_from_python(tmp_path, models, method):
    base, a, b = models
    body, kw, which = CASES[method]
    out = run(tmp_path, f"merge_method: {method}\n" + body)
    states = [{"a": a, "b": b}[c] for c in which.rstrip("-")]
    expected = merging.merge_states(method, states, base=None if which.endswith("-") else base, **kw)
    assert set(out) == set(expected)
    for k in expected:
        assert torch.equal(out[k], expected[k]), k
    assert any(not torch.equal(out[k], base[k]) for k in out)


def test_gradients_reach_the_new_methods(tmp_path, models):
    base, a, _ = models
    out = run(tmp_path, "merge_method: nearswap\nbase_model: base.safetensors\nmodels: [a.safetensors]\n"
                        "parameters: {t: [0.0, 1.0]}\n")
    for i, t in enumerate((0.0, 0.5, 1.0)):
        k = f"model.layers.{i}.self_attn.q_proj.weight"
        assert torch.equal(out[k], merging.merge_states("nearswap", [{k: a[k]}], base={k: base[k]}, t=t)[k])
    assert torch.equal(out["model.layers.2.self_attn.q_proj.weight"], a["model.layers.2.self_attn.q_proj.weight"])


@pytest.mark.parametrize("body, message", [
    ("merge_method: nearswap\nbase_model: base.safetensors\nmodels: [a.safetensors]\n",
     "recipe.yaml: parameters.t: merge method 'nearswap' requires 't'; no value is given for"),
    ("merge_method: nearswap\nbase_model: base.safetensors\nmodels: [a.safetensors]\n"
     "parameters: {t: [{filter: self_attn, value: 0.1}]}\n",
     "recipe.yaml: parameters.t: merge method 'nearswap' requires 't'; no value is given for "
     "'model.embed_tokens.weight'"),
    ("merge_method: arcee_fusion\nbase_model: base.safetensors\nmodels: [a.safetensors, b.safetensors]\n",
     "recipe.yaml: models: arcee_fusion merges the base_model with exactly one other model, got 2"),
    ("merge_method: sce\nmodels: [a.safetensors, b.safetensors]\n",
     "recipe.yaml: base_model: merge method 'sce' needs a base_model"),
    ("merge_method: sce\nbase_model: base.safetensors\nmodels: [a.safetensors]\nparameters: {select_topk: high}\n",
     "recipe.yaml: parameters.select_topk: expected a number"),
    ("merge_method: multislerp\nmodels:\n  - model: a.safetensors\n    parameters: {weight: heavy}\n",
     "recipe.yaml: models[0].parameters.weight: expected a number"),
    ("merge_method: ram\nbase_model: base.safetensors\nmodels: [a.safetensors]\nparameters: {density: 0.5}\n",
     "recipe.yaml: parameters.density: merge method 'ram' takes no parameter 'density'; it takes: epsilon"),
])
def test_parameters_are_checked_before_loading(tmp_path, models, capsys, monkeypatch, body, message):
    import weightspace.recipe.plan as plan

    def no_load(*a, **k):
        raise AssertionError("a tensor was loaded")

    monkeypatch.setattr(plan._Input, "get", no_load)
    p = tmp_path / "recipe.yaml"
    p.write_text(body)
    with pytest.raises(RecipeError):
        load_recipe(p)
    assert main(["merge", "--config", str(p), "-o", str(tmp_path / "o.safetensors")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o.safetensors").exists()
