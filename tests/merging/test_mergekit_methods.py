"""mergekit's SCE, Multi-SLERP, NearSwap, Arcee Fusion and RAM: hand-computed cases and
independent float64 references (``bench/mergekit_compare.py`` compares with mergekit itself)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import merging
from merging.methods import get_method, merge_states

NEW = ("sce", "multislerp", "nearswap", "arcee_fusion", "ram", "ramplus_tl")


def st(**tensors):
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in tensors.items()}


def test_registered_with_paper_and_base_policy():
    for name in NEW:
        m = get_method(name)
        assert m.reference_url.startswith("https://") and m.pretty_name
        assert m.needs_base == (name != "multislerp"), name
    assert [p.name for p in get_method("nearswap").parameters if p.required] == ["t"]


def test_sce_by_hand():
    base = st(w=[0.0, 0.0, 0.0, 0.0])
    m1, m2 = st(w=[1.0, -2.0, 0.5, 0.0]), st(w=[3.0, 1.0, -0.5, 0.0])
    # energies e1 = 5.25/4, e2 = 10.25/4; elected signs (+, -, +, +); zero entries never agree
    e1, e2 = 5.25 / 4, 10.25 / 4
    w1, w2 = e1 / (e1 + e2), e2 / (e1 + e2)
    out = merging.merge_states("sce", [m1, m2], base=base)["w"]
    torch.testing.assert_close(out, torch.tensor([(w1 * 1 + w2 * 3) / (w1 + w2), -2.0, 0.5, 0.0]))
    # select_topk 0.5: variances (1, 2.25, 0.25, 0): 3 vary, int(1.5) = 1 kept: entry 1
    out = merging.merge_states("sce", [m1, m2], base=base, select_topk=0.5)["w"]
    torch.testing.assert_close(out, torch.tensor([0.0, -2.0, 0.0, 0.0]))
    assert torch.equal(merging.merge_states("sce", [m1, m2], base=base, select_topk=0.0)["w"], base["w"])
    # int8_mask is accepted and changes nothing
    assert torch.equal(merging.merge_states("sce", [m1, m2], base=base, int8_mask=True)["w"],
                       merging.merge_states("sce", [m1, m2], base=base)["w"])


def _multislerp_reference(xs, ws, base=None, eps=1e-8):
    """The documented formula in float64 numpy."""
    xs = [np.asarray(x, dtype=np.float64).ravel() for x in xs]
    b = None if base is None else np.asarray(base, dtype=np.float64).ravel()
    if b is not None:
        xs = [x - b for x in xs]
    w = np.asarray(ws, dtype=np.float64)
    w = w / w.sum()
    norms = np.array([np.linalg.norm(x) for x in xs])
    u = [x / (n + eps) for x, n in zip(xs, norms)]
    m = sum(wi * ui for wi, ui in zip(w, u))
    m = m / np.linalg.norm(m)
    T = sum(wi * (ui - np.dot(ui, m) * m) for wi, ui in zip(w, u))
    tn = np.linalg.norm(T) + eps
    res = (np.cos(tn) * m + np.sin(tn) * T / tn) * float(np.dot(norms, w))
    return res if b is None else res + b


def test_multislerp_matches_the_formula_and_slerp_at_the_midpoint():
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(5, 3, generator=g) for _ in range(3)]
    base = torch.randn(5, 3, generator=g)
    states = [{"w": x} for x in xs]
    for b in (None, base):
        out = merge_states("multislerp", states, base=None if b is None else {"w": b}, weights=[0.2, 0.3, 0.5])
        ref = _multislerp_reference([x.numpy() for x in xs], [0.2, 0.3, 0.5], None if b is None else b.numpy())
        np.testing.assert_allclose(out["w"].numpy().ravel(), ref, rtol=1e-5, atol=1e-6)
    # two orthogonal unit vectors, equal weights: the spherical midpoint
    out = merge_states("multislerp", [st(w=[1.0, 0.0]), st(w=[0.0, 1.0])])["w"]
    torch.testing.assert_close(out, torch.tensor([1.0, 1.0]) / math.sqrt(2))
    # one model is returned as it is; antipodal models: two fall back to the weighted sum, three fail
    assert torch.equal(merge_states("multislerp", [st(w=[1.0, 2.0])])["w"], torch.tensor([1.0, 2.0]))
    out = merge_states("multislerp", [st(w=[1.0, 0.0]), st(w=[-1.0, 0.0])], weights=[1.0, 1.0])["w"]
    torch.testing.assert_close(out, torch.tensor([0.0, 0.0]))
    with pytest.raises(ValueError, match="multislerp: 'w': the weighted mean of the directions is zero"):
        merge_states("multislerp", [st(w=[1.0, 0.0]), st(w=[-1.0, 0.0]), st(w=[0.0, 0.0])])


def test_nearswap_by_hand_and_t_is_required():
    base, other = st(w=[0.0, 0.0, 0.0, 1.0]), st(w=[0.05, 0.2, 1.0, 1.0])
    out = merge_states("nearswap", [other], base=base, t=0.1)["w"]
    # weights min(1, t / |a - b|) = (1, 0.5, 0.1, 1): close entries swap to b
    torch.testing.assert_close(out, torch.tensor([0.05, 0.1, 0.1, 1.0]))
    with pytest.raises(ValueError, match="merge method 'nearswap': missing required parameter"):
        merge_states("nearswap", [other], base=base)
    with pytest.raises(ValueError, match="exactly one other model"):
        merge_states("nearswap", [other, other], base=base, t=0.1)


def test_arcee_fusion_takes_the_outlying_changes():
    base = st(w=[[0.0] * 8, [0.0] * 8])
    other = st(w=[[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 3.0], [0.0] * 8])
    # row 1 is unchanged (importance 0); row 0's importance is |b| times its KL divergence, so
    # over all 16 entries the quartiles are 0, 0 and 0.2 k: the threshold 0.3 k keeps 0.3 ... 3.0
    p = torch.softmax(other["w"][0], -1) + 1e-8
    q = torch.softmax(base["w"][0], -1) + 1e-8
    kl = float((p * torch.log(p / q)).sum())
    imp = sorted([0.0] * 8 + [kl * v for v in [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 3.0]])
    thr = imp[int(0.5 * 15)] + 1.5 * (imp[int(0.75 * 15)] - imp[int(0.25 * 15)])
    expected = torch.where(torch.tensor([kl * v for v in other["w"][0].tolist()]) >= thr, other["w"][0], 0.0)
    out = merge_states("arcee_fusion", [other], base=base)["w"]
    assert 0 < int((out[0] != 0).sum()) < 8
    torch.testing.assert_close(out[0], expected)
    assert torch.equal(out[1], base["w"][1])
    with pytest.raises(ValueError, match="exactly one other model"):
        merge_states("arcee_fusion", [other, other], base=base)


def test_arcee_fusion_samples_large_tensors_by_seed():
    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(1001, 1000, generator=g)}
    other = {"w": base["w"] + 0.1 * torch.randn(1001, 1000, generator=g)}
    a = merge_states("arcee_fusion", [other], base=base, seed=1)["w"]
    assert torch.equal(a, merge_states("arcee_fusion", [other], base=base, seed=1)["w"])
    frac = float((a != base["w"]).float().mean())
    assert 0.0 < frac < 0.2  # upper outliers of the importance only


def test_ram_and_ramplus_by_hand():
    base = st(w=[0.0, 0.0, 0.0, 0.0])
    m1, m2 = st(w=[1.0, 0.0, 2.0, 1e-6]), st(w=[3.0, 4.0, 0.0, 0.0])
    # changed by (2, 1, 1, 0) models: shared entries averaged, unique ones kept whole, tiny ones dropped
    torch.testing.assert_close(merge_states("ram", [m1, m2], base=base)["w"], torch.tensor([2.0, 4.0, 2.0, 0.0]))
    # each model: 1 shared and 1 unique entry, rho = 1 clamped to alpha: unique entries x (1 + r alpha)
    out = merge_states("ramplus_tl", [m1, m2], base=base, r=0.5, alpha=0.2)["w"]
    torch.testing.assert_close(out, torch.tensor([2.0, 4.0 * 1.1, 2.0 * 1.1, 0.0]))
    out = merge_states("ram", [m1, m2], base=base, epsilon=1.5)["w"]
    torch.testing.assert_close(out, torch.tensor([3.0, 4.0, 2.0, 0.0]))


@pytest.mark.parametrize("name", NEW)
def test_integer_tensors_from_the_base_inputs_untouched_bf16_kept(name):
    g = torch.Generator().manual_seed(1)
    base = {"w": torch.randn(4, 6, generator=g).bfloat16(), "n": torch.tensor([7])}
    ms = [{"w": base["w"] + 0.1 * torch.randn(4, 6, generator=g).bfloat16(), "n": torch.tensor([i])}
          for i in range(2)]
    before = [{k: v.clone() for k, v in m.items()} for m in ms]
    kw = {"t": 0.05} if name == "nearswap" else {}
    models = ms[:1] if name in ("nearswap", "arcee_fusion") else ms
    out = merge_states(name, models, base=base, **kw)
    assert out["w"].dtype == torch.bfloat16 and out["w"].shape == (4, 6)
    assert torch.equal(out["n"], torch.tensor([7]))
    assert not torch.equal(out["w"], base["w"]) or name == "arcee_fusion"
    for m, b in zip(ms, before):
        assert all(torch.equal(m[k], b[k]) for k in m)
