"""Merge methods checked numerically against their published definitions on hand-made tensors."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import merging
from graphs import permute, random_permutation, trace
from merging.methods import get_method, list_methods, merge_method, merge_states, slerp_tensor


def sd(**kw):
    return {k: torch.tensor(v, dtype=torch.float64) if not isinstance(v, torch.Tensor) else v for k, v in kw.items()}


BASE = sd(w=[0.0, 0.0, 0.0, 0.0, 0.0])
FT1 = sd(w=[1.0, -2.0, 0.5, 0.0, 3.0])
FT2 = sd(w=[2.0, 1.0, -0.1, 0.4, -1.0])
FT3 = sd(w=[-0.5, -1.0, 0.2, 0.3, 2.0])


# ------------------------------------------------------------------ registry


def test_registry_lists_every_method_and_errors_list_names():
    names = list_methods()
    assert {"linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "slerp"} <= set(names)
    assert merging.list_methods() == names
    with pytest.raises(ValueError) as e:
        get_method("nope")
    for n in names:
        assert n in str(e.value)
    m = get_method("ties")
    assert m.pretty_name == "TIES-Merging" and "2306.01708" in m.reference_url
    assert m.parameter_names == ("weights", "density", "scale", "normalize", "rescale", "int8_mask")
    # mergekit's defaults: density 1 (no trim), normalize for TIES, no rescale
    assert [p.default for p in m.parameters][1:] == [1.0, 1.0, True, False, False]
    assert m.needs_base and not get_method("linear").needs_base


def test_registration_rejects_duplicates_and_bad_signatures():
    with pytest.raises(ValueError, match="already registered"):
        @merge_method(name="linear", pretty_name="x", reference_url="u")
        def dup(states: list, base: dict | None) -> dict:  # pragma: no cover
            return {}
    with pytest.raises(ValueError, match=r"\(states, base\)"):
        @merge_method(name="_bad1", pretty_name="x", reference_url="u")
        def bad1(tensors: list, base: dict | None) -> dict:  # pragma: no cover
            return {}
    with pytest.raises(ValueError, match="must have a default"):
        @merge_method(name="_bad2", pretty_name="x", reference_url="u")
        def bad2(states: list, base: dict | None, *, k: float) -> dict:  # pragma: no cover
            return {}
    with pytest.raises(ValueError, match="must be annotated"):
        @merge_method(name="_bad3", pretty_name="x", reference_url="u")
        def bad3(states: list, base: dict | None, *, k=1.0) -> dict:  # pragma: no cover
            return {}
    with pytest.raises(ValueError, match="keyword-only"):
        @merge_method(name="_bad4", pretty_name="x", reference_url="u")
        def bad4(states: list, base: dict | None, k: float = 1.0) -> dict:  # pragma: no cover
            return {}
    assert not any(n.startswith("_bad") for n in list_methods())


def test_unknown_parameter_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown parameter.*density.*it takes: weights, normalize"):
        merge_states("linear", [FT1, FT2], density=0.5)


# ------------------------------------------------------------------ methods


def test_linear_is_weighted_average():
    out = get_method("linear")([FT1, FT2, FT3], weights=[1.0, 2.0, 1.0])
    expected = (FT1["w"] + 2 * FT2["w"] + FT3["w"]) / 4
    torch.testing.assert_close(out["w"], expected)
    out = get_method("linear")([FT1, FT2], weights=[0.5, 0.5], normalize=False)
    torch.testing.assert_close(out["w"], 0.5 * (FT1["w"] + FT2["w"]))


def test_task_arithmetic():
    base = sd(w=[1.0, 1.0, 1.0, 1.0, 1.0])
    f1, f2 = {"w": base["w"] + FT1["w"]}, {"w": base["w"] + FT2["w"]}
    out = get_method("task_arithmetic")([f1, f2], base, scale=0.5)
    torch.testing.assert_close(out["w"], base["w"] + 0.5 * (FT1["w"] + FT2["w"]))
    out = get_method("task_arithmetic")([f1, f2], base, weights=[1.0, -1.0])
    torch.testing.assert_close(out["w"], base["w"] + FT1["w"] - FT2["w"])


def _ties_reference(tvs: list[torch.Tensor], k: float) -> torch.Tensor:
    """TIES-Merging, Algorithm 1 of Yadav et al. 2023, written out entry by entry."""
    trimmed = []
    for tv in tvs:
        n_keep = int(k * tv.numel())
        thresh = sorted(tv.abs().tolist(), reverse=True)[n_keep - 1] if n_keep else math.inf
        trimmed.append(torch.where(tv.abs() >= thresh, tv, torch.zeros_like(tv)))
    out = torch.zeros_like(tvs[0])
    for j in range(out.numel()):
        vals = [t[j].item() for t in trimmed]
        gamma = math.copysign(1.0, sum(vals)) if sum(vals) != 0 else 0.0
        agree = [v for v in vals if v != 0 and math.copysign(1.0, v) == gamma]
        out[j] = sum(agree) / len(agree) if agree else 0.0
    return out


@pytest.mark.parametrize("density", [1.0, 0.6, 0.4, 0.2])
def test_ties_matches_the_paper(density):
    base = sd(w=[0.5, -0.5, 0.0, 1.0, 2.0])
    fts = [{"w": base["w"] + t["w"]} for t in (FT1, FT2, FT3)]
    out = get_method("ties")(fts, base, density=density)
    expected = base["w"] + _ties_reference([FT1["w"], FT2["w"], FT3["w"]], density)
    torch.testing.assert_close(out["w"], expected)


def test_ties_by_hand():
    # density 0.4 keeps 2 of 5 entries per task vector:
    # tv1 -> [0, -2, 0, 0, 3], tv2 -> [2, 1, 0, 0, 0], tv3 -> [0, -1, 0, 0, 2]
    # sums: [2, -2, 0, 0, 5] -> signs [+, -, 0, 0, +]; disjoint means: [2, -1.5, 0, 0, 2.5]
    out = get_method("ties")([FT1, FT2, FT3], BASE, density=0.4)
    torch.testing.assert_close(out["w"], torch.tensor([2.0, -1.5, 0.0, 0.0, 2.5], dtype=torch.float64))


def test_dare_drops_and_rescales():
    torch.manual_seed(0)
    base = {"w": torch.zeros(20000, dtype=torch.float64)}
    tv = torch.randn(20000, dtype=torch.float64)
    ft = {"w": tv.clone()}
    out = get_method("dare_linear")([ft], base, density=0.25, seed=3, rescale="density")["w"]
    kept = out != 0
    assert abs(kept.double().mean().item() - 0.25) < 0.02  # drop rate p = 0.75
    torch.testing.assert_close(out[kept], tv[kept] / 0.25)  # rescaled by 1 / (1 - p)
    # seeded: the same seed drops the same entries, another seed others
    again = get_method("dare_linear")([ft], base, density=0.25, seed=3, rescale="density")["w"]
    other = get_method("dare_linear")([ft], base, density=0.25, seed=4, rescale="density")["w"]
    assert torch.equal(out, again) and not torch.equal(out, other)
    # unbiased: the expected task vector is unchanged
    assert abs(out.sum().item() - tv.sum().item()) < 0.05 * tv.abs().sum().item()


def test_dare_variants_are_configurations_of_the_core():
    # density 1 drops nothing: dare_linear is task arithmetic and dare_ties is TIES without trimming
    a = get_method("dare_linear")([FT1, FT2, FT3], BASE, density=1.0)
    b = get_method("task_arithmetic")([FT1, FT2, FT3], BASE)
    torch.testing.assert_close(a["w"], b["w"])
    c = get_method("dare_ties")([FT1, FT2, FT3], BASE, density=1.0, normalize=True)
    d = get_method("ties")([FT1, FT2, FT3], BASE, density=1.0)
    torch.testing.assert_close(c["w"], d["w"])
    assert not torch.equal(a["w"], c["w"])


def test_slerp_definition_and_fallback():
    v0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    v1 = torch.tensor([0.0, 2.0], dtype=torch.float64)
    out = get_method("slerp")([{"w": v1}], {"w": v0}, t=0.5)["w"]
    # 90 degrees apart: sin(pi/4)/sin(pi/2) of each
    s = math.sin(math.pi / 4)
    torch.testing.assert_close(out, torch.tensor([s, 2 * s], dtype=torch.float64))
    for t in (0.0, 1.0):
        torch.testing.assert_close(slerp_tensor(v0, v1, t), v0 if t == 0 else v1)
    # colinear: linear interpolation
    torch.testing.assert_close(slerp_tensor(v0, 3 * v0, 0.5), 2 * v0)
    # two models without base
    out2 = get_method("slerp")([{"w": v0}, {"w": v1}], None, t=0.5)["w"]
    torch.testing.assert_close(out2, out)
    with pytest.raises(ValueError, match="exactly two models"):
        get_method("slerp")([{"w": v0}, {"w": v1}], {"w": v0})


def test_integer_tensors_come_from_the_base_and_inputs_are_not_mutated():
    base = {"w": torch.zeros(3), "n": torch.tensor(7)}
    a = {"w": torch.ones(3), "n": torch.tensor(1)}
    b = {"w": 2 * torch.ones(3), "n": torch.tensor(2)}
    copies = [{k: v.clone() for k, v in s.items()} for s in (base, a, b)]
    for name in ("task_arithmetic", "ties", "dare_ties", "dare_linear"):
        out = get_method(name)([a, b], base)
        assert int(out["n"]) == 7 and out["w"].dtype == torch.float32
    assert int(get_method("linear")([a, b], base)["n"]) == 7
    for s, c in zip((base, a, b), copies):
        assert all(torch.equal(s[k], c[k]) for k in s)


def test_errors_name_the_tensor():
    with pytest.raises(ValueError, match="needs a base"):
        get_method("ties")([FT1, FT2], None)
    with pytest.raises(ValueError, match=r"'w' has shape \(3,\) in model 1"):
        get_method("linear")([FT1, {"w": torch.zeros(3)}], None)
    with pytest.raises(ValueError, match="3 values for 2 models"):
        get_method("linear")([FT1, FT2], weights=[1, 2, 3])
    with pytest.raises(ValueError, match="density must be in"):
        get_method("ties")([FT1], BASE, density=1.5)


# ------------------------------------------------------------------ alignment first


def _mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


def test_align_first_undoes_permutations():
    model = _mlp(0)
    structure = trace(model, torch.randn(2, 6))
    base = {k: v.clone() for k, v in model.state_dict().items()}
    ft = {k: v + 0.01 * torch.randn_like(v) for k, v in base.items()}
    permuted = permute(structure, ft, random_permutation(structure, seed=5))
    naive = merge_states("task_arithmetic", [permuted], base=base)
    aligned = merge_states("task_arithmetic", [permuted], base=base, structure=structure, align=True)
    assert all(torch.allclose(aligned[k], ft[k], atol=1e-6) for k in ft)
    assert not all(torch.allclose(naive[k], ft[k], atol=1e-6) for k in ft)
    with pytest.raises(ValueError, match="needs the structure"):
        merge_states("linear", [permuted], base=base, align=True)
