"""The merge methods follow mergekit's definitions (v0.1.x), checked on hand-computed cases."""
from __future__ import annotations

import math

import pytest
import torch

from merging.methods import compute_in_input_dtype, get_method, list_methods, merge_states


def sd(**kw):
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in kw.items()}


ZERO = sd(w=[0.0, 0.0, 0.0, 0.0])


def test_every_mergekit_method_is_registered():
    assert {"linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "slerp", "della", "della_linear",
            "breadcrumbs", "breadcrumbs_ties", "model_stock", "nuslerp", "karcher", "passthrough"} <= set(list_methods())


def test_sign_election_elects_plus_where_the_sum_is_zero():
    # entry 0: +1 and -1 sum to 0: mergekit elects +1 and keeps the +1 (we used to give 0)
    a, b = sd(w=[1.0, 2.0, -1.0, 0.0]), sd(w=[-1.0, 1.0, -3.0, 0.0])
    out = get_method("ties")([a, b], ZERO)["w"]
    torch.testing.assert_close(out, torch.tensor([1.0, 1.5, -2.0, 0.0]))


def test_ties_trim_among_equal_magnitudes_small():
    ft = sd(w=[0.5, 1.0, -1.0, 1.0])
    out = get_method("ties")([ft], ZERO, density=0.5)["w"]  # k = 2 of the three magnitudes 1.0
    torch.testing.assert_close(out, torch.tensor([0.0, 1.0, -1.0, 0.0]))


def test_a_tiny_density_keeps_one_entry_and_zero_keeps_none():
    # mergekit 0.1.5: k = max(1, int(density * n)); density 0 drops the task vector
    out = get_method("ties")([sd(w=[1.0, -4.0, 3.0, 2.0])], ZERO, density=0.1)["w"]
    torch.testing.assert_close(out, torch.tensor([0.0, -4.0, 0.0, 0.0]))
    out = get_method("ties")([sd(w=[1.0, -4.0, 3.0, 2.0])], ZERO, density=0.0)["w"]
    torch.testing.assert_close(out, torch.zeros(4))


def test_dare_ties_defaults_are_mergekits():
    m = get_method("dare_ties")
    defaults = {p.name: p.default for p in m.parameters}
    assert defaults["normalize"] is False and defaults["rescale"] is True and defaults["density"] == 1.0
    assert {p.name: p.default for p in get_method("della").parameters}["normalize"] is True
    # density 1: nothing dropped, no normalisation: the sign-agreeing sum
    a, b = sd(w=[1.0, 2.0, -1.0, 0.0]), sd(w=[3.0, -1.0, -3.0, 0.0])
    out = m([a, b], ZERO)["w"]
    torch.testing.assert_close(out, torch.tensor([4.0, 2.0, -4.0, 0.0]))


def test_dare_rescale_l1_keeps_the_norm_and_density_rescale_is_the_papers():
    torch.manual_seed(0)
    ft = {"w": torch.randn(1000)}
    base = {"w": torch.zeros(1000)}
    out = get_method("dare_linear")([ft], base, density=0.3, seed=5)["w"]
    kept = out != 0
    assert 0.25 < kept.float().mean() < 0.35
    torch.testing.assert_close(out.abs().sum(), ft["w"].abs().sum())  # L1 norm matched (mergekit)
    ratio = out[kept] / ft["w"][kept]
    torch.testing.assert_close(ratio, ratio[0].expand_as(ratio))  # one factor for the tensor
    paper = get_method("dare_linear")([ft], base, density=0.3, seed=5, rescale="density")["w"]
    assert torch.equal(paper != 0, kept)  # the same mask
    torch.testing.assert_close(paper[kept], ft["w"][kept] / 0.3)
    plain = get_method("dare_linear")([ft], base, density=0.3, seed=5, rescale=False)["w"]
    torch.testing.assert_close(plain[kept], ft["w"][kept])


def test_merge_states_seeds_dare():
    # regression: seed= only seeded weight matching; DARE always ran with seed 0
    torch.manual_seed(0)
    base = {"a": torch.zeros(500), "b": torch.zeros(500)}
    fts = [{k: torch.randn(500) for k in base} for _ in range(2)]
    s0 = merge_states("dare_ties", fts, base=base, density=0.5, seed=0)
    s0b = merge_states("dare_ties", fts, base=base, density=0.5, seed=0)
    s123 = merge_states("dare_ties", fts, base=base, density=0.5, seed=123)
    assert torch.equal(s0["a"], s0b["a"]) and not torch.equal(s0["a"], s123["a"])
    # the drop of a tensor depends on (seed, name, model), not on the order tensors are merged in
    one = merge_states("dare_ties", [{"b": f["b"]} for f in fts], base={"b": base["b"]}, density=0.5, seed=0)
    assert torch.equal(one["b"], s0["b"])


def test_slerp_of_a_zero_tensor_is_mergekits():
    # mergekit leaves a zero vector unnormalised: the angle is 90 degrees, no linear fallback
    v1 = torch.tensor([0.0, 2.0])
    out = get_method("slerp")([{"w": v1}], {"w": torch.zeros(2)}, t=0.5)["w"]
    torch.testing.assert_close(out, torch.tensor([0.0, 2.0 * math.sin(math.pi / 4)]))


def test_breadcrumbs_drops_outliers_and_small_entries():
    tv = torch.arange(1.0, 101.0)  # magnitudes 1..100
    out = get_method("breadcrumbs")([{"w": tv}], {"w": torch.zeros(100)}, density=0.5, gamma=0.1)["w"]
    # n_top = 10 largest dropped, n_bot = 100 - 50 - 10 = 40 smallest dropped: 41..90 kept
    expected = torch.where((tv > 40) & (tv <= 90), tv, torch.zeros(100))
    torch.testing.assert_close(out, expected)
    # gamma * n < 1: no outlier dropped, the int(density * n) largest kept
    small = get_method("breadcrumbs")([{"w": tv[:5]}], {"w": torch.zeros(5)}, density=0.6, gamma=0.01)["w"]
    torch.testing.assert_close(small, torch.tensor([0.0, 0.0, 3.0, 4.0, 5.0]))
    # density + gamma > 1: fewer outliers dropped so that int(density * n) entries stay
    crowded = get_method("breadcrumbs")([{"w": tv}], {"w": torch.zeros(100)}, density=0.95, gamma=0.1)["w"]
    torch.testing.assert_close(crowded, torch.where(tv <= 95, tv, torch.zeros(100)))
    ties = get_method("breadcrumbs_ties")([{"w": tv}, {"w": -tv}], {"w": torch.zeros(100)}, density=0.5,
                                          gamma=0.1)["w"]
    torch.testing.assert_close(ties, expected)  # +1 elected where the sum is 0, no normalisation


def test_della_keeps_large_entries_more_often_and_is_seeded():
    tv = torch.arange(1.0, 2001.0).reshape(1, -1)
    base = {"w": torch.zeros_like(tv)}
    out = get_method("della_linear")([{"w": tv}], base, density=0.5, epsilon=0.4, rescale=False, seed=1)["w"]
    kept = out != 0
    assert 0.45 < kept.float().mean() < 0.55
    assert kept[0, :500].float().mean() < 0.3 and kept[0, -500:].float().mean() > 0.7
    again = get_method("della_linear")([{"w": tv}], base, density=0.5, epsilon=0.4, rescale=False, seed=1)["w"]
    assert torch.equal(out, again)
    with pytest.raises(ValueError, match="epsilon"):
        get_method("della")([{"w": tv}], base, density=0.5, epsilon=0.6)


def test_model_stock_by_hand():
    base = {"w": torch.zeros(2)}
    a, b = {"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([1.0, 1.0])}
    c = 1 / math.sqrt(2)
    t = 2 * c / (1 + c)
    out = get_method("model_stock")([a, b], base)["w"]
    torch.testing.assert_close(out, t * torch.tensor([1.0, 0.5]))
    with pytest.raises(ValueError, match="at least 2"):
        get_method("model_stock")([a], base)


def test_nuslerp_and_karcher_by_hand():
    a, b = {"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([0.0, 1.0])}
    s = math.sin(math.pi / 4)
    torch.testing.assert_close(get_method("nuslerp")([a, b], None)["w"], torch.tensor([s, s]))
    # weights 1:3 -> t = 0.75
    out = get_method("nuslerp")([a, b], None, weights=[1.0, 3.0])["w"]
    torch.testing.assert_close(out, torch.tensor([math.sin(math.pi / 8), math.sin(3 * math.pi / 8)]))
    # with a base: interpolate the task vectors
    base = {"w": torch.tensor([1.0, 1.0])}
    out = get_method("nuslerp")([{"w": a["w"] + 1}, {"w": b["w"] + 1}], base)["w"]
    torch.testing.assert_close(out, torch.tensor([1 + s, 1 + s]))
    # Karcher mean of two orthogonal unit vectors: their bisector, norm the mean norm
    torch.testing.assert_close(get_method("karcher")([a, b], None)["w"], torch.tensor([s, s]))
    two = {"w": torch.tensor([0.0, 3.0])}
    torch.testing.assert_close(get_method("karcher")([a, two], None)["w"], 2 * torch.tensor([s, s]))


def test_passthrough_and_linear():
    a = {"w": torch.tensor([1.0, 2.0])}
    torch.testing.assert_close(get_method("passthrough")([a], None, scale=0.5)["w"], torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(get_method("passthrough")([a], None)["w"], a["w"])
    with pytest.raises(ValueError, match="exactly one model"):
        get_method("passthrough")([a, a], None)
    out = get_method("linear")([a, {"w": torch.tensor([3.0, 4.0])}], None, weights=[1.0, 3.0])["w"]
    torch.testing.assert_close(out, torch.tensor([2.5, 3.5]))


def test_compute_in_input_dtype_skips_the_float32_upcast():
    a = {"w": torch.tensor([1.0, 1.0 + 2 ** -7], dtype=torch.bfloat16)}
    b = {"w": torch.tensor([2 ** -9, 2 ** -9], dtype=torch.bfloat16)}
    base = {"w": torch.zeros(2, dtype=torch.bfloat16)}
    up = get_method("task_arithmetic")([a, b], base)["w"]
    with compute_in_input_dtype():
        low = get_method("task_arithmetic")([a, b], base)["w"]
    assert up.dtype == low.dtype == torch.bfloat16
    # bf16 arithmetic rounds 1 + 2^-9 to 1 at once; both end on the bf16 grid
    assert torch.equal(low, (a["w"] + b["w"]))


def test_ties_trim_on_equal_magnitudes_is_argsorts_choice():
    # mergekit keeps argsort(|tv|, descending)[:k] (an unstable sort); with many equal
    # magnitudes that is not the lowest indices, and the trim must pick the same entries
    g = torch.Generator().manual_seed(0)
    for n in (7, 100, 5000):
        tv = torch.randint(1, 4, (n,), generator=g).float()
        for density in (0.01, 0.3, 0.5):
            k = max(1, int(density * n))
            expected = torch.zeros(n)
            idx = torch.argsort(tv.abs(), descending=True)[:k]
            expected[idx] = tv[idx]
            out = get_method("ties")([{"w": tv}], {"w": torch.zeros(n)}, density=density)["w"]
            assert torch.equal(out, expected), (n, density)
