"""``align: true`` in a recipe: weight matching tensor by tensor (the model traced on the meta
device, similarities accumulated from one tensor pair at a time), equal to aligning in memory."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import merging
import weightspace
from graphs import permute, random_permutation
from weightspace.api import INPUT_SHAPE_KEY, MODEL_KEY
from weightspace.models import model_spec_to_json
from weightspace.recipe import load_recipe, run_recipe

SPEC = {"width": 1}


@pytest.mark.slow
def test_align_streams_and_equals_merge_states_align(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = weightspace.get_model("resnet20", **SPEC)
    structure = weightspace.trace_model(model, input_shape="3,32,32")
    base = {k: v.clone() for k, v in model.state_dict().items()}
    meta = {MODEL_KEY: model_spec_to_json("resnet20", SPEC), INPUT_SHAPE_KEY: "3,32,32"}
    weightspace.save(base, tmp_path / "base.safetensors", metadata=meta)
    fts = []
    for i in range(2):
        g = torch.Generator().manual_seed(10 + i)
        ft = {k: (v + 0.02 * torch.randn(v.shape, generator=g)) if v.is_floating_point() else v
              for k, v in base.items()}
        fts.append(permute(structure, ft, random_permutation(structure, seed=i)))
        weightspace.save(fts[-1], tmp_path / f"ft{i}.safetensors", metadata=meta)
    expected = merging.merge_states("ties", fts, base=base, structure=structure, align=True, density=0.6,
                                    weights=[1.0, 0.5])

    def whole(*a, **k):
        raise AssertionError("align loaded a whole model")

    import weightspace.api as api
    monkeypatch.setattr(api, "load_model", whole)
    monkeypatch.setattr(weightspace, "load", whole)
    (tmp_path / "r.yaml").write_text(
        "merge_method: ties\nbase_model: base.safetensors\nalign: true\nmodels:\n"
        "  - model: ft0.safetensors\n    parameters: {weight: 1.0, density: 0.6}\n"
        "  - model: ft1.safetensors\n    parameters: {weight: 0.5, density: 0.6}\n")
    out = load_file(str(run_recipe(load_recipe(tmp_path / "r.yaml"), tmp_path / "o.safetensors")))
    assert set(out) == set(expected)
    for k in expected:
        torch.testing.assert_close(out[k], expected[k], rtol=0, atol=0, msg=k)
    # the running statistics are the base's; without align the merge is much further from the base
    assert torch.equal(out["bn1.running_mean"], base["bn1.running_mean"])
    (tmp_path / "r.yaml").write_text((tmp_path / "r.yaml").read_text().replace("align: true\n", ""))
    plain = load_file(str(run_recipe(load_recipe(tmp_path / "r.yaml"), tmp_path / "p.safetensors")))
    dist = lambda s: sum(float((s[k] - base[k]).norm()) for k in base if base[k].is_floating_point())  # noqa: E731
    assert dist(out) < 0.5 * dist(plain)
