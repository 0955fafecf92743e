"""One return type per function: the rich result comes from a ``*_result`` function, and the old
``return_info`` / ``return_duals`` flags still give the old tuples, with a deprecation warning."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import merging
import weightspace
from graphs import trace


def _pair(width: int = 12):
    def make(seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(6, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 3))

    a, b, c = make(0), make(1), make(2)
    return a, trace(a, torch.randn(2, 6)), [m.state_dict() for m in (a, b, c)]


def _same_perms(p, q):
    return p.keys() == q.keys() and all(torch.equal(p[g], q[g]) for g in p)


def test_weight_matching_result_and_the_deprecated_flag():
    _, s, (a, b, _) = _pair()
    found = merging.weight_matching_result(s, a, b)
    assert isinstance(found, merging.WeightMatchingResult) and found.sweeps >= 1
    assert found.objective == pytest.approx(merging.matching_objective(s, a, b, found.perms))
    assert _same_perms(merging.weight_matching(s, a, b), found.perms)
    with pytest.warns(DeprecationWarning, match="weight_matching_result"):
        perms, info = merging.weight_matching(s, a, b, return_info=True)
    assert _same_perms(perms, found.perms) and info["sweeps"] == found.sweeps
    assert info["objective"] == pytest.approx(found.objective)


def test_many_model_results_and_the_deprecated_flags():
    _, s, states = _pair()
    many = merging.merge_many_result(s, states, seed=0)
    assert isinstance(many, merging.ManyMerge) and many.iterations >= 1 and many.converged is not None
    with pytest.warns(DeprecationWarning, match="merge_many_result"):
        merged, perms, info = merging.merge_many(s, states, seed=0, return_info=True)
    assert info == {"passes": many.iterations, "converged": many.converged}
    assert all(_same_perms(p, q) for p, q in zip(perms, many.perms))

    c2m3 = merging.c2m3_merge_result(s, states, max_iter=5)
    assert isinstance(c2m3.details, merging.C2M3Matching) and c2m3.iterations == c2m3.details.iterations
    matching = merging.c2m3_matching_result(s, states, max_iter=5)
    assert all(_same_perms(p, q) for p, q in zip(matching.perms, c2m3.perms))
    with pytest.warns(DeprecationWarning, match="c2m3_matching_result"):
        perms, info = merging.c2m3_matching(s, states, max_iter=5, return_info=True)
    assert info["iterations"] == matching.iterations and info["objective"] == pytest.approx(matching.objective)
    with pytest.warns(DeprecationWarning, match="c2m3_merge_result"):
        merged, perms, info = merging.c2m3_merge(s, states, max_iter=5, return_info=True)
    assert all(torch.equal(merged[k], c2m3.merged[k]) for k in merged)


def test_align_result_and_the_deprecated_flag():
    module, s, (a, b, _) = _pair()
    la = weightspace.LoadedModel(module=module, state=a, spec='{"name":"x","kwargs":{}}', input_shape=(6,))
    lb = weightspace.LoadedModel(module=module, state=b, spec='{"name":"x","kwargs":{}}', input_shape=(6,))
    found = weightspace.align_result(la, lb, structure=s)
    assert isinstance(found, weightspace.Alignment) and found.method == "weight" and found.reason.startswith("auto")
    assert _same_perms(weightspace.align(la, lb, structure=s), found.perms)
    with pytest.warns(DeprecationWarning, match="align_result"):
        perms, info = weightspace.align(la, lb, structure=s, return_info=True)
    assert set(info) == {"method", "sweeps", "seconds", "groups", "reason"} and info["sweeps"] == found.sweeps
