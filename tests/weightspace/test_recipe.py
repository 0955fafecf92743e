"""mergekit-style recipes: the YAML language, every method, HF directories, dtypes, errors.

Expected tensors are computed by hand on tiny Llama-like state dicts (mergekit is not a test
dependency; ``bench/mergekit_compare.py`` compares with it side by side).
"""
from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

import weightspace
from weightspace.api import PROVENANCE_KEY
from weightspace.cli import main
from weightspace.recipe import RecipeError, evaluate_setting, load_recipe, run_recipe

LAYERS = 3


def llama_state(seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = {"model.embed_tokens.weight": torch.randn(8, 4, generator=g) * scale}
    for i in range(LAYERS):
        s[f"model.layers.{i}.self_attn.q_proj.weight"] = torch.randn(4, 4, generator=g) * scale
        s[f"model.layers.{i}.mlp.up_proj.weight"] = torch.randn(6, 4, generator=g) * scale
    s["model.norm.weight"] = torch.randn(4, generator=g) * scale
    s["lm_head.weight"] = torch.randn(8, 4, generator=g) * scale
    return s


@pytest.fixture()
def files(tmp_path):
    base = {k: torch.zeros_like(v) for k, v in llama_state(0).items()}
    a, b = llama_state(1), llama_state(2)
    for name, s in (("base", base), ("a", a), ("b", b)):
        save_file(s, str(tmp_path / f"{name}.safetensors"))
    return base, a, b


def recipe(tmp_path, text, name="recipe.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def run(tmp_path, text, out="out.safetensors"):
    return load_file(str(run_recipe(load_recipe(recipe(tmp_path, text)), tmp_path / out)))


def tiny_llama(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, vocab_size=64))


def tiny_tokenizer(words, path, **config):
    """A word-level tokenizer over ``words`` (id = position), saved as a Hugging Face tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>", model_max_length=64).save_pretrained(str(path))
    if config:
        conf = json.loads((path / "tokenizer_config.json").read_text())
        (path / "tokenizer_config.json").write_text(json.dumps({**conf, **config}))


@pytest.fixture()
def hf_models(tmp_path):
    paths = []
    for i, name in enumerate(("hbase", "h1", "h2")):
        m = tiny_llama(i)
        m.save_pretrained(tmp_path / name)
        tiny_tokenizer(["<unk>"] + [f"w{j}" for j in range(63)], tmp_path / name, who=name)
        paths.append(tmp_path / name)
    return paths


def who(d):
    return json.loads((d / "tokenizer_config.json").read_text())["who"]


# ------------------------------------------------------------------ defects (regressions)


def test_dare_recipe_runs_and_its_seed_matters(tmp_path, files):
    # regression: every DARE recipe crashed with "got multiple values for keyword argument 'seed'"
    body = ("merge_method: dare_ties\nbase_model: base.safetensors\nmodels:\n"
            "  - model: a.safetensors\n    parameters: {weight: 1.0, density: 0.5}\n"
            "  - model: b.safetensors\n    parameters: {weight: 0.5, density: 0.5}\nseed: %d\n")
    s0 = run(tmp_path, body % 0, "s0.safetensors")
    s0b = run(tmp_path, body % 0, "s0b.safetensors")
    s123 = run(tmp_path, body % 123, "s123.safetensors")
    k = "model.layers.1.mlp.up_proj.weight"
    assert torch.equal(s0[k], s0b[k]) and not torch.equal(s0[k], s123[k])
    # the streamed recipe is merge_states on the whole state dict
    import merging
    base, a, b = files
    expected = merging.merge_states("dare_ties", [a, b], base=base, weights=[1.0, 0.5], density=[0.5, 0.5], seed=123)
    for key in expected:
        torch.testing.assert_close(s123[key], expected[key])


def test_hf_directories_in_and_out(tmp_path, hf_models):
    from transformers import AutoModelForCausalLM

    base, m1, m2 = hf_models
    p = recipe(tmp_path, f"merge_method: ties\nbase_model: {base}\nmodels:\n"
                         f"  - model: {m1}\n    parameters: {{weight: 1.0, density: 0.5}}\n"
                         f"  - model: {m2}\n    parameters: {{weight: 1.0, density: 0.5}}\n"
                         f"tokenizer_source: {m2}\nchat_template: chatml\n")
    out = run_recipe(load_recipe(p), tmp_path / "merged")
    assert sorted(x.name for x in out.iterdir()) == sorted(
        ["model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
         "chat_template.jinja", "weightspace_recipe.yaml"])
    assert who(out) == "h2"
    assert "<|im_start|>" in (out / "chat_template.jinja").read_text()
    model = AutoModelForCausalLM.from_pretrained(out)
    merged = load_file(str(out / "model.safetensors"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, merged[k])
    # regression: provenance hashed the directory ("Is a directory"); now each weight file
    from safetensors import safe_open
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        meta = f.metadata()
    prov = json.loads(meta[PROVENANCE_KEY])
    assert meta["format"] == "pt"
    assert set(prov["inputs"][0]["files"]) == {"model.safetensors"} and len(prov["inputs"]) == 3
    # a sharded output directory, and -o over the previous output replaces it atomically
    out2 = run_recipe(load_recipe(p), tmp_path / "merged", max_shard_size="20KB")
    assert (out2 / "model.safetensors.index.json").is_file() and not (out2 / "model.safetensors").exists()
    again = AutoModelForCausalLM.from_pretrained(out2)
    for k, v in again.state_dict().items():
        assert torch.equal(v, merged[k])


def test_directory_of_unindexed_shards_is_a_model(tmp_path, files):
    base, a, b = files
    d = tmp_path / "split"
    d.mkdir()
    (d / "config.json").write_text("{}")
    keys = sorted(a)
    save_file({k: a[k] for k in keys[:4]}, str(d / "part-1.safetensors"))
    save_file({k: a[k] for k in keys[4:]}, str(d / "part-2.safetensors"))
    out = run(tmp_path, f"merge_method: task_arithmetic\nbase_model: base.safetensors\nmodels: [{d}]\n")
    for k in a:
        torch.testing.assert_close(out[k], a[k])


def test_dtype_is_the_compute_dtype_and_out_dtype_the_written_one(tmp_path, files):
    base, a, b = files
    for name, s in (("base16", base), ("a16", a), ("b16", b)):
        save_file({k: (v * 1.37).to(torch.bfloat16) for k, v in s.items()}, str(tmp_path / f"{name}.safetensors"))
    body = ("merge_method: linear\nmodels:\n  - model: a16.safetensors\n    parameters: {weight: 0.3}\n"
            "  - model: b16.safetensors\n    parameters: {weight: 0.7}\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        f32 = run(tmp_path, body + "dtype: float32\n", "f32.safetensors")
    assert any("dtype: computing in float32 (the inputs are bfloat16)" in str(w.message) for w in caught)
    k = "model.layers.0.mlp.up_proj.weight"
    assert f32[k].dtype == torch.float32
    # regression: the value was rounded to bf16 before the cast: all on the bf16 grid
    off_grid = sum(int((v != v.to(torch.bfloat16).float()).sum()) for v in f32.values())
    assert off_grid > 100
    a16 = load_file(str(tmp_path / "a16.safetensors"))
    b16 = load_file(str(tmp_path / "b16.safetensors"))
    expected = (0.3 * a16[k].float() + 0.7 * b16[k].float()) / torch.tensor(1.0)
    torch.testing.assert_close(f32[k], expected)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out16 = run(tmp_path, body + "dtype: float32\nout_dtype: bfloat16\n", "o16.safetensors")
    assert any("out_dtype: writing bfloat16 (computed in float32)" in str(w.message) for w in caught)
    assert out16[k].dtype == torch.bfloat16 and torch.equal(out16[k], f32[k].to(torch.bfloat16))
    # no dtype: computed in the inputs' dtype, as mergekit does
    native = run(tmp_path, body, "n.safetensors")
    assert native[k].dtype == torch.bfloat16


def test_recipe_errors_name_the_field_and_the_file_before_loading(tmp_path, files, capsys, monkeypatch):
    import weightspace.recipe as R

    def boom(*a, **k):
        raise AssertionError("a tensor was read")

    monkeypatch.setattr(R._Input, "get", boom)
    out = tmp_path / "o.safetensors"
    cases = [
        ("merge_method: linear\nmodels:\n  - model: a.safetensors\n  - model: b.safetensors\n"
         "    parameters: {weight: heavy}\n",
         "recipe.yaml: models[1].parameters.weight: expected a number, a list of numbers (a gradient) or a "
         "list of {filter, value}, got 'heavy'"),
        ("merge_method: ties\nmodels: [a.safetensors, b.safetensors]\n",
         "recipe.yaml: base_model: merge method 'ties' needs a base_model"),
        ("merge_method: slerp\nbase_model: a.safetensors\nmodels: [a.safetensors, b.safetensors]\n"
         "parameters:\n  t: [0, {filter: x}]\n", "recipe.yaml: parameters.t[0]: expected {filter: NAME, value: ...}"),
        ("merge_method: linear\nmodels:\n  - model: a.safetensors\n    parameters: {normalize: true}\n",
         "recipe.yaml: models[0].parameters.normalize: 'normalize' is a method-wide parameter"),
        ("merge_method: linear\nmodels: [a.safetensors]\ndtype: float8\n", "recipe.yaml: dtype: unknown dtype"),
        ("merge_method: ties\nbase_model: base.safetensors\nmodels: [a.safetensors]\nparameters:\n"
         "  density: [0.5, 1.5]\n", "recipe.yaml: parameters.density[1]"),
        ("merge_method: linear\nslices:\n  - sources:\n      - {model: a.safetensors, layer_range: [0, 5]}\n",
         "layer_range: a.safetensors has 3 layers"),
        ("merge_method: linear\nmodels: [a.safetensors]\ntokenizer_source: union\n",
         "recipe.yaml: tokenizer_source: 'union' needs model directories holding tokenizers"),
    ]
    for body, message in cases:
        if "density: [0.5, 1.5]" in body:
            message = "recipe.yaml: parameters.density: 1.5 for 'model.layers.2.mlp.up_proj.weight'"
        p = recipe(tmp_path, body)
        assert main(["merge", "--config", str(p), "-o", str(out)]) == 2, body
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (message, err)
        assert not out.exists()


def test_evaluate_setting_gradients_and_filters():
    assert evaluate_setting([0.0, 1.0], "x", 0.5) == 0.5
    assert evaluate_setting([0.0, 1.0, 0.0], "x", 0.75) == 0.5
    assert evaluate_setting([1.0, 3.0], "x", 1.0) == 3.0
    f = [{"filter": "self_attn", "value": 2.0}, {"filter": "mlp", "value": [0.0, 1.0]}, {"value": 0.5}]
    assert evaluate_setting(f, "model.layers.0.self_attn.q_proj.weight", 0.0) == 2.0
    assert evaluate_setting(f, "model.layers.2.mlp.up_proj.weight", 1.0) == 1.0
    assert evaluate_setting(f, "lm_head.weight", 0.0) == 0.5
    assert evaluate_setting([{"filter": "mlp", "value": 1}], "lm_head.weight", 0.0) is None


# ------------------------------------------------------------------ the language


def test_gradients_interpolate_over_layers_and_filters_pick_tensors(tmp_path, files):
    base, a, b = files
    out = run(tmp_path, """
merge_method: task_arithmetic
base_model: base.safetensors
models:
  - model: a.safetensors
    parameters:
      weight:
        - filter: self_attn
          value: [0.0, 1.0]
        - value: 2.0
""")
    # 3 layers: t = 0, 0.5, 1 -> weights 0, 0.5, 1 on attention; everything else 2
    for i, w in enumerate((0.0, 0.5, 1.0)):
        k = f"model.layers.{i}.self_attn.q_proj.weight"
        torch.testing.assert_close(out[k], w * a[k])
        k = f"model.layers.{i}.mlp.up_proj.weight"
        torch.testing.assert_close(out[k], 2.0 * a[k])
    torch.testing.assert_close(out["lm_head.weight"], 2.0 * a["lm_head.weight"])
    # a gradient on a tensor outside the layers takes its first value (t = 0), as mergekit
    out = run(tmp_path, "merge_method: task_arithmetic\nbase_model: base.safetensors\nmodels:\n"
                        "  - model: a.safetensors\n    parameters: {weight: [0.25, 1.0]}\n", "g.safetensors")
    torch.testing.assert_close(out["model.embed_tokens.weight"], 0.25 * a["model.embed_tokens.weight"])
    torch.testing.assert_close(out["model.layers.1.mlp.up_proj.weight"], 0.625 * a["model.layers.1.mlp.up_proj.weight"])


def test_parameters_fall_back_from_model_to_global_to_default(tmp_path, files):
    base, a, b = files
    out = run(tmp_path, "merge_method: task_arithmetic\nbase_model: base.safetensors\nmodels:\n"
                        "  - model: a.safetensors\n    parameters:\n      weight: [{filter: mlp, value: 3.0}]\n"
                        "  - model: b.safetensors\nparameters: {weight: 0.5, lambda: 2.0}\n")
    k, q = "model.layers.0.mlp.up_proj.weight", "model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(out[k], 2.0 * (3.0 * a[k] + 0.5 * b[k]))
    torch.testing.assert_close(out[q], 2.0 * (0.5 * a[q] + 0.5 * b[q]))


def test_slices_stack_layers_passthrough(tmp_path, files):
    base, a, b = files
    out = run(tmp_path, """
merge_method: passthrough
slices:
  - sources:
      - model: a.safetensors
        layer_range: [0, 2]
  - sources:
      - model: b.safetensors
        layer_range: [1, 3]
        parameters: {scale: [{filter: q_proj, value: 0.5}, {value: 1.0}]}
""")
    names = sorted({k.split(".")[2] for k in out if k.startswith("model.layers.")})
    assert names == ["0", "1", "2", "3"]
    for i, (src, j) in enumerate(((a, 0), (a, 1), (b, 1), (b, 2))):
        s = 0.5 if src is b else 1.0
        torch.testing.assert_close(out[f"model.layers.{i}.self_attn.q_proj.weight"],
                                   s * src[f"model.layers.{j}.self_attn.q_proj.weight"])
        assert torch.equal(out[f"model.layers.{i}.mlp.up_proj.weight"], src[f"model.layers.{j}.mlp.up_proj.weight"])
    assert torch.equal(out["model.embed_tokens.weight"], a["model.embed_tokens.weight"])  # first slice
    assert torch.equal(out["lm_head.weight"], b["lm_head.weight"])  # last slice


def test_slices_mixing_two_models_with_a_gradient(tmp_path, files):
    base, a, b = files
    out = run(tmp_path, """
merge_method: slerp
base_model: a.safetensors
slices:
  - sources:
      - {model: a.safetensors, layer_range: [0, 3]}
      - {model: b.safetensors, layer_range: [0, 3]}
parameters:
  t: [0.0, 1.0]
""")
    from merging.methods import slerp_tensor
    k = "model.layers.{}.mlp.up_proj.weight"
    assert torch.equal(out[k.format(0)], a[k.format(0)])
    torch.testing.assert_close(out[k.format(2)], b[k.format(2)])
    torch.testing.assert_close(out[k.format(1)], slerp_tensor(a[k.format(1)], b[k.format(1)], 0.5))


def test_hf_passthrough_stacking_updates_the_config(tmp_path, hf_models):
    from transformers import AutoModelForCausalLM

    base, m1, _ = hf_models
    p = recipe(tmp_path, f"merge_method: passthrough\nslices:\n"
                         f"  - sources: [{{model: {base}, layer_range: [0, 2]}}]\n"
                         f"  - sources: [{{model: {m1}, layer_range: [1, 2]}}]\n"
                         f"out: stacked\ndtype: bfloat16\n")
    with pytest.warns(UserWarning, match="dtype: computing in bfloat16"):
        out = run_recipe(load_recipe(p))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 3 and cfg["dtype"] == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(out)
    assert len(model.model.layers) == 3
    src = load_file(str(m1 / "model.safetensors"))
    assert torch.equal(model.state_dict()["model.layers.2.mlp.up_proj.weight"].float(),
                       src["model.layers.1.mlp.up_proj.weight"].to(torch.bfloat16).float())
    assert who(out) == "hbase"  # the donor's tokenizer


@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "della",
                                    "della_linear", "breadcrumbs", "breadcrumbs_ties", "model_stock", "nuslerp",
                                    "karcher", "slerp"])
def test_every_method_streams_as_merge_states(tmp_path, files, method):
    import merging
    base, a, b = files
    params = {"dare_linear": "density: 0.5", "dare_ties": "density: 0.5", "ties": "density: 0.5",
              "della": "density: 0.5", "della_linear": "density: 0.5", "breadcrumbs": "density: 0.5",
              "breadcrumbs_ties": "density: 0.5"}.get(method)
    weighted = method not in ("model_stock", "karcher", "slerp")
    body = f"merge_method: {method}\n"
    if method in ("slerp",):
        body += "base_model: a.safetensors\nmodels: [a.safetensors, b.safetensors]\nparameters: {t: 0.3}\n"
        expected = merging.merge_states(method, [b], base=a, t=0.3)
    else:
        uses_base = merging.get_method(method).needs_base
        body += ("base_model: base.safetensors\n" if uses_base else "") + "models:\n"
        for name, w in (("a", 1.0), ("b", 0.5)):
            ps = ", ".join(x for x in ((f"weight: {w}" if weighted else ""), params or "") if x)
            body += f"  - model: {name}.safetensors\n" + (f"    parameters: {{{ps}}}\n" if ps else "")
        kw = {}
        if weighted:
            kw["weights"] = [1.0, 0.5]
        if params:
            kw["density"] = [0.5, 0.5]
        expected = merging.merge_states(method, [a, b], base=base if uses_base else None, **kw)
    out = run(tmp_path, body)
    assert set(out) == set(expected)
    for k in expected:
        torch.testing.assert_close(out[k], expected[k], rtol=1e-6, atol=1e-6)


def test_linear_merges_a_base_model_that_is_not_listed_as_mergekit_does(tmp_path, files):
    base, a, b = files
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = run(tmp_path, "merge_method: linear\nbase_model: base.safetensors\nmodels: [a.safetensors]\n")
    assert any("merged as one more model" in str(w.message) for w in caught)
    k = "lm_head.weight"
    torch.testing.assert_close(out[k], a[k] / 2)


def test_a_tensor_that_becomes_nan_writes_nothing(tmp_path, files):
    base, a, b = files
    p = recipe(tmp_path, "merge_method: linear\nmodels:\n  - model: a.safetensors\n    parameters: {weight: 1.0}\n"
                         "  - model: b.safetensors\n    parameters: {weight: -1.0}\nparameters: {normalize: true}\n")
    with pytest.raises(RecipeError, match="sum to zero"):
        run_recipe(load_recipe(p), tmp_path / "o.safetensors")
    assert not (tmp_path / "o.safetensors").exists()
    assert not [x for x in tmp_path.iterdir() if x.name.startswith(".o.safetensors")]


def test_the_output_may_not_be_an_input(tmp_path, files, capsys):
    p = recipe(tmp_path, "merge_method: linear\nmodels: [a.safetensors, b.safetensors]\nout: a.safetensors\n")
    before = (tmp_path / "a.safetensors").read_bytes()
    assert main(["merge", "--config", str(p)]) == 2
    assert "refusing to overwrite input" in capsys.readouterr().err
    assert (tmp_path / "a.safetensors").read_bytes() == before


def test_cli_writes_a_directory_with_o(tmp_path, hf_models, capsys):
    base, m1, m2 = hf_models
    p = recipe(tmp_path, f"merge_method: task_arithmetic\nbase_model: {base}\nmodels: [{m1}, {m2}]\n"
                         f"parameters: {{weight: 0.5}}\n")
    assert main(["merge", "--config", str(p), "-o", str(tmp_path / "m"), "--quiet"]) == 0
    merged = weightspace.load(tmp_path / "m")
    sb, s1, s2 = (load_file(str(x / "model.safetensors")) for x in (base, m1, m2))
    k = "model.layers.1.self_attn.q_proj.weight"
    torch.testing.assert_close(merged[k], sb[k] + 0.5 * (s1[k] - sb[k]) + 0.5 * (s2[k] - sb[k]))
    assert math.isfinite(float(merged[k].sum()))


def test_tokenizer_union_of_one_vocabulary_copies_the_tokenizer(tmp_path, hf_models, capsys):
    base, m1, m2 = hf_models
    p = recipe(tmp_path, f"merge_method: linear\nmodels: [{m1}, {m2}]\ntokenizer_source: union\n")
    out = run_recipe(load_recipe(p), tmp_path / "u")
    assert who(out) == "h1"  # the same vocabulary, token for token: the files are copied, rows kept
    (m2 / "tokenizer.json").write_text("{not json")
    assert main(["merge", "--config", str(p), "-o", str(tmp_path / "u2")]) == 2
    err = capsys.readouterr().err
    assert f"recipe.yaml: tokenizer_source: cannot read the tokenizer of {m2}" in err and err.count("\n") == 1


def test_sharded_and_pickled_inputs(tmp_path, files):
    base, a, b = files
    weightspace.save(a, tmp_path / "a_sharded", max_shard_size="1KB")
    torch.save(b, tmp_path / "b.pt")
    out = run(tmp_path, "merge_method: linear\nmodels: [a_sharded, b.pt]\n")
    for k in a:
        torch.testing.assert_close(out[k], (a[k] + b[k]) / 2)


def test_layers_keep_their_index_when_numbering_has_gaps(tmp_path):
    # an nn.Sequential's layers.0 / layers.2: no layer renumbered, the gradient over their order
    base = {"layers.0.weight": torch.zeros(2), "layers.2.weight": torch.zeros(2)}
    ft = {"layers.0.weight": torch.ones(2), "layers.2.weight": torch.ones(2)}
    save_file(base, str(tmp_path / "b.safetensors"))
    save_file(ft, str(tmp_path / "f.safetensors"))
    out = run(tmp_path, "merge_method: task_arithmetic\nbase_model: b.safetensors\nmodels:\n"
                        "  - model: f.safetensors\n    parameters: {weight: [0.5, 1.0]}\n")
    assert set(out) == set(base)
    torch.testing.assert_close(out["layers.0.weight"], torch.full((2,), 0.5))
    torch.testing.assert_close(out["layers.2.weight"], torch.ones(2))


def test_a_directory_output_never_replaces_a_foreign_directory(tmp_path, files, capsys):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    p = recipe(tmp_path, "merge_method: linear\nmodels: [a.safetensors, b.safetensors]\n")
    assert main(["merge", "--config", str(p), "-o", str(mine)]) == 2
    assert "is not an earlier merge output" in capsys.readouterr().err
    assert (mine / "thesis.tex").read_text() == "precious"
    # an earlier output is replaced
    assert main(["merge", "--config", str(p), "-o", str(tmp_path / "m"), "--quiet"]) == 0
    assert main(["merge", "--config", str(p), "-o", str(tmp_path / "m"), "--quiet"]) == 0
    assert sorted(x.name for x in tmp_path.iterdir() if x.name.startswith(".m.")) == []


def test_rescale_int8_mask_and_lambda_from_yaml(tmp_path, files):
    import merging
    base, a, b = files
    out = run(tmp_path, "merge_method: ties\nbase_model: base.safetensors\nmodels:\n"
                        "  - model: a.safetensors\n    parameters: {weight: 1.0, density: 0.5}\n"
                        "  - model: b.safetensors\n    parameters: {weight: 0.5, density: 0.5}\n"
                        "parameters: {rescale: true, int8_mask: true, lambda: 0.7, normalize: false}\n")
    expected = merging.merge_states("ties", [a, b], base=base, weights=[1.0, 0.5], density=[0.5, 0.5],
                                    rescale=True, scale=0.7, normalize=False)
    for k in expected:
        torch.testing.assert_close(out[k], expected[k])
    k = "model.layers.0.mlp.up_proj.weight"
    plain = merging.merge_states("ties", [a, b], base=base, weights=[1.0, 0.5], density=[0.5, 0.5], scale=0.7,
                                 normalize=False)
    assert not torch.equal(out[k], plain[k])  # the L1 rescale changed the kept entries
    paper = run(tmp_path, "merge_method: dare_linear\nbase_model: base.safetensors\nmodels:\n"
                          "  - model: a.safetensors\n    parameters: {weight: 1.0, density: 0.25}\n"
                          "parameters: {rescale: density}\n", "p.safetensors")
    kept = paper[k] != 0
    torch.testing.assert_close(paper[k][kept], a[k][kept] / 0.25)


def test_chat_template_auto_takes_the_most_common(tmp_path, hf_models):
    base, m1, m2 = hf_models
    for d, t in ((base, "{{ 'A' }} template one"), (m1, "{{ 'B' }} template two"), (m2, "{{ 'B' }} template two")):
        (d / "chat_template.jinja").write_text(t)
    p = recipe(tmp_path, f"merge_method: linear\nmodels: [{m1}, {m2}]\nbase_model: {base}\n"
                         f"parameters: {{weight: 1.0}}\nchat_template: auto\n")
    with pytest.warns(UserWarning, match="merged as one more model"):
        out = run_recipe(load_recipe(p), tmp_path / "c")
    assert (out / "chat_template.jinja").read_text() == "{{ 'B' }} template two"


def test_tokenizer_source_is_checked_first_and_never_dropped_silently(tmp_path, files, hf_models, capsys):
    base, m1, m2 = hf_models
    p = recipe(tmp_path, f"merge_method: linear\nmodels: [a.safetensors, b.safetensors]\n"
                         f"tokenizer_source: {tmp_path}\n")
    assert main(["merge", "--config", str(p), "-o", str(tmp_path / "t")]) == 2
    assert "tokenizer_source: " in capsys.readouterr().err and not (tmp_path / "t").exists()
    p = recipe(tmp_path, f"merge_method: linear\nmodels: [{m1}, {m2}]\ntokenizer_source: {m2}\n")
    with pytest.warns(UserWarning, match="tokenizer_source: ignored: a .safetensors output holds weights only"):
        run_recipe(load_recipe(p), tmp_path / "w.safetensors")


def test_a_merge_reads_one_tensor_of_each_model_at_a_time(tmp_path, files, monkeypatch):
    import weightspace.recipe as R

    reads = []
    get = R._Input.get
    monkeypatch.setattr(R._Input, "get", lambda self, k: reads.append(k) or get(self, k))
    monkeypatch.setattr(weightspace.checkpoint, "load", lambda *a, **k: pytest.fail("a whole model was loaded"))
    run(tmp_path, "merge_method: ties\nbase_model: base.safetensors\nmodels:\n"
                  "  - model: a.safetensors\n    parameters: {weight: 1.0, density: 0.5}\n"
                  "  - model: b.safetensors\n    parameters: {weight: 1.0, density: 0.5}\n")
    # the reads come in runs of 3 (base, a, b) of one tensor, each run before the next tensor's
    assert len(reads) == 3 * len(files[0])
    runs = [reads[i:i + 3] for i in range(0, len(reads), 3)]
    assert all(len(set(r)) == 1 for r in runs) and len({r[0] for r in runs}) == len(runs)
