"""Assignment solvers: the warm-started C solver is exact (checked against SciPy)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from merging import lap_available, solve_assignment, solve_assignment_result

needs_lap = pytest.mark.skipif(not lap_available(), reason="C solver not built (no compiler)")


def _perm_and_duals(result):
    return result.perm, result.duals


def _opt(c: np.ndarray) -> float:
    r, k = linear_sum_assignment(c, maximize=True)
    return float(c[r, k].sum())


def _value(c: np.ndarray, p: torch.Tensor) -> float:
    return float(c[np.arange(len(p)), p.numpy()].sum())


@needs_lap
@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), seed=st.integers(0, 10_000), ties=st.booleans())
def test_lap_is_exact(n, seed, ties):
    rng = np.random.default_rng(seed)
    c = rng.integers(0, 3, (n, n)).astype(float) if ties else rng.standard_normal((n, n))
    p = solve_assignment(torch.from_numpy(c), solver="lap")
    assert sorted(p.tolist()) == list(range(n))
    assert _value(c, p) == pytest.approx(_opt(c), abs=1e-9)


@needs_lap
@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 60), seed=st.integers(0, 10_000), noise=st.sampled_from([0.0, 1e-3, 0.1, 10.0]))
def test_lap_warm_start_is_exact(n, seed, noise):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((n, n))
    p, v = _perm_and_duals(solve_assignment_result(torch.from_numpy(c), solver="lap"))
    c2 = c + noise * rng.standard_normal((n, n))
    q = solve_assignment(torch.from_numpy(c2), solver="lap", init=p, duals=v)
    assert sorted(q.tolist()) == list(range(n))
    assert _value(c2, q) == pytest.approx(_opt(c2), abs=1e-9)


@needs_lap
@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), seed=st.integers(0, 10_000), ties=st.booleans(), k=st.sampled_from([1, 2, 8, 32]),
       noise=st.sampled_from([1e-3, 0.1, 10.0]))
def test_sparse_is_exact_cold_and_warm(n, seed, ties, k, noise):
    # few candidate columns per row force pricing rounds: the duals must still prove the
    # dense optimum, whatever the candidates missed
    import merging.matching._solve as solve

    old, solve.SPARSE_K = solve.SPARSE_K, k
    try:
        _check_sparse(n, seed, ties, noise)
    finally:
        solve.SPARSE_K = old


def _check_sparse(n, seed, ties, noise):
    rng = np.random.default_rng(seed)
    c = rng.integers(0, 3, (n, n)).astype(float) if ties else rng.standard_normal((n, n))
    p, v = _perm_and_duals(solve_assignment_result(torch.from_numpy(c), solver="sparse"))
    assert sorted(p.tolist()) == list(range(n))
    assert _value(c, p) == pytest.approx(_opt(c), abs=1e-9)
    c2 = c + noise * rng.standard_normal((n, n))
    q = solve_assignment(torch.from_numpy(c2), solver="sparse", init=p, duals=v)
    assert sorted(q.tolist()) == list(range(n))
    assert _value(c2, q) == pytest.approx(_opt(c2), abs=1e-9)


@needs_lap
def test_sparse_and_dense_duals_are_interchangeable():
    # both C solvers keep the column duals in the same convention, so a descent may switch
    rng = np.random.default_rng(3)
    c = rng.standard_normal((80, 80))
    p, v = _perm_and_duals(solve_assignment_result(torch.from_numpy(c), solver="lap"))
    c2 = c + 0.05 * rng.standard_normal((80, 80))
    q, w = _perm_and_duals(solve_assignment_result(torch.from_numpy(c2), solver="sparse", init=p, duals=v))
    assert _value(c2, q) == pytest.approx(_opt(c2), abs=1e-9)
    r = solve_assignment(torch.from_numpy(c2 + 1e-3), solver="lap", init=q, duals=w)
    assert _value(c2, r) == pytest.approx(_opt(c2), abs=1e-9)


@needs_lap
@pytest.mark.parametrize("solver", ["lap", "sparse", "scipy"])
def test_empty_and_one_by_one(solver):
    assert solve_assignment(torch.zeros(0, 0), solver=solver).tolist() == []
    assert solve_assignment(torch.ones(1, 1), solver=solver).tolist() == [0]


def test_auto_is_sparse_on_cuda_only():
    from merging import resolve_solver

    want = "lap" if lap_available() else "scipy"
    assert resolve_solver("auto") == want
    assert resolve_solver("auto", cuda=True) == ("sparse" if lap_available() else "scipy")


def test_solver_errors():
    with pytest.raises(ValueError, match="unknown solver"):
        solve_assignment(torch.eye(3), solver="hungarian")
    with pytest.raises(ValueError, match="NaN"):
        solve_assignment(torch.full((2, 2), float("nan")))
    with pytest.raises(ValueError, match="square"):
        solve_assignment(torch.zeros(2, 3))


def _random_mlp_pair(seed: int, width: int, hidden: int = 2):
    """The traced structure and two random state dicts of an MLP 10 -> ``hidden`` x ``width`` -> 3."""
    import torch.nn as nn

    from graphs import trace

    torch.manual_seed(seed)

    def make():
        layers = [nn.Linear(10, width), nn.ReLU()]
        for _ in range(hidden - 1):
            layers += [nn.Linear(width, width), nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(width, 3))

    a, b = make().state_dict(), make().state_dict()
    return trace(make(), torch.randn(2, 10)), a, b


@needs_lap
def test_weight_matching_same_objective_with_either_solver():
    import merging

    s, a, b = _random_mlp_pair(seed=0, width=48)
    il = merging.weight_matching_result(s, a, b, solver="lap").info
    is_ = merging.weight_matching_result(s, a, b, solver="scipy").info
    assert il["objective"] == pytest.approx(is_["objective"], rel=1e-12)
    isp = merging.weight_matching_result(s, a, b, solver="sparse").info
    assert isp["objective"] == pytest.approx(is_["objective"], rel=1e-12)


@needs_lap
@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 80), seed=st.integers(0, 10_000), ties=st.booleans())
def test_auction_is_near_optimal(n, seed, ties):
    """The auction (finished by the C solver with slack 2 eps) is within 2 n eps of optimal."""
    rng = np.random.default_rng(seed)
    c = rng.integers(0, 3, (n, n)).astype(float) if ties else rng.standard_normal((n, n))
    p, v = _perm_and_duals(solve_assignment_result(torch.from_numpy(c), solver="auction"))
    assert sorted(p.tolist()) == list(range(n))
    scale = float(np.abs(c.max(1)).mean()) + 1e-12
    assert _value(c, p) >= _opt(c) - 2 * n * 1e-7 * scale - 1e-9
    # warm start from its own prices on a perturbed matrix
    c2 = c + 1e-2 * rng.standard_normal((n, n))
    q = solve_assignment(torch.from_numpy(c2), solver="auction", init=p, duals=v)
    assert sorted(q.tolist()) == list(range(n))
    assert _value(c2, q) >= _opt(c2) - 2 * n * 1e-7 * (float(np.abs(c2.max(1)).mean()) + 1e-12) - 1e-9


def test_auction_alone_returns_a_permutation():
    from merging.matching._auction import auction_assignment

    torch.manual_seed(0)
    c = torch.randn(200, 200)
    found = auction_assignment(c, stop=20)
    perm, prices = found.perm, found.prices
    assert sorted(perm.tolist()) == list(range(200))
    assert prices.dtype == torch.float64 and prices.shape == (200,)
    opt = _opt(c.double().numpy())
    assert _value(c.double().numpy(), perm) >= opt * (1 - 1e-2)  # rows finished among themselves
    # the identity is optimal for a dominant diagonal, and the auction finds it
    d = torch.eye(50) * 10 + 0.01 * torch.rand(50, 50)
    assert torch.equal(auction_assignment(d).perm, torch.arange(50))


@needs_lap
def test_weight_matching_auction_then_exact_reaches_the_lap_objective():
    import merging

    s, a, b = _random_mlp_pair(seed=1, width=64)
    il = merging.weight_matching_result(s, a, b, solver="lap").info
    ia = merging.weight_matching_result(s, a, b, solver="auction").info
    assert ia["objective"] == pytest.approx(il["objective"], rel=1e-3)
    ident = merging.matching_objective(s, a, b, {g: torch.arange(x.size) for g, x in s.groups.items()})
    assert ia["objective"] > ident


@needs_lap
@pytest.mark.parametrize("build", [1, 2, 3], ids=["scalar", "avx2", "avx512"])
def test_every_build_of_the_c_solver_is_exact(build):
    """The scalar, AVX2 and AVX-512 builds (each where this CPU runs it; otherwise the next
    one down) agree with SciPy, cold and warm, with ties and sizes that are not multiples of
    the vector width."""
    import ctypes

    from merging.matching._solve import _LAP

    force = ctypes.c_int.in_dll(_LAP, "ws_lap_force")
    rng = np.random.default_rng(build)
    try:
        force.value = build
        for n in (1, 3, 8, 13, 64, 131):
            for ties in (False, True):
                c = rng.integers(0, 4, (n, n)).astype(float) if ties else rng.standard_normal((n, n))
                p, v = _perm_and_duals(solve_assignment_result(torch.from_numpy(c), solver="lap"))
                assert sorted(p.tolist()) == list(range(n))
                assert _value(c, p) == pytest.approx(_opt(c), abs=1e-9)
                c2 = c + 0.05 * rng.standard_normal((n, n))
                q = solve_assignment(torch.from_numpy(c2), solver="lap", init=p, duals=v)
                assert sorted(q.tolist()) == list(range(n))
                assert _value(c2, q) == pytest.approx(_opt(c2), abs=1e-9)
    finally:
        force.value = 0


@needs_lap
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("solver", ["lap", "sparse", "auction"])
def test_cuda_matrices_solve_exactly_through_the_pinned_buffer(solver):
    # CUDA matrices reach the C solver through a reused page-locked buffer: sizes that
    # grow and shrink must all solve exactly, and the answer comes back on the GPU
    rng = np.random.default_rng(0)
    for n in (50, 200, 30, 200):
        c = rng.standard_normal((n, n))
        p = solve_assignment(torch.from_numpy(c).cuda(), solver=solver)
        assert p.is_cuda and sorted(p.tolist()) == list(range(n))
        assert _value(c, p.cpu()) == pytest.approx(_opt(c), abs=1e-6)


def test_weight_matching_reports_its_solver_time():
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    import weightspace
    s = weightspace.trace(model, torch.randn(2, 6))
    torch.manual_seed(0)
    a = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    b = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    from merging import weight_matching_result
    info = weight_matching_result(s, a, b).info
    assert info["sweeps"] >= 1 and 0.0 < info["solve_seconds"] < 60.0


def test_batches_are_runs_of_independent_dirty_groups():
    from merging.matching.weight import _batches

    # a chain a - b - c - d
    nb = {"a": {"b"}, "b": {"a", "c"}, "c": {"b", "d"}, "d": {"c"}}
    dirty = dict.fromkeys(nb, True)
    assert list(_batches(["a", "c", "b", "d"], dirty, nb)) == [["a", "c"], ["b", "d"]]
    assert list(_batches(["a", "b", "c", "d"], dirty, nb)) == [["a"], ["b"], ["c"], ["d"]]
    # a clean group is skipped, but one next to the run waits for it: solving the run may
    # make it dirty again
    dirty = {"a": True, "b": False, "c": False, "d": True}
    seen = []
    for batch in _batches(["a", "b", "d", "c"], dirty, nb):
        seen.append(batch)
        if batch == ["a"]:
            dirty["b"] = True  # a moved
    assert seen == [["a"], ["b", "d"]]


@needs_lap
@pytest.mark.parametrize("solver", ["lap", "sparse"])
def test_solving_independent_groups_in_threads_changes_nothing(solver, monkeypatch):
    import merging
    import merging.matching.weight as wm

    s, a, b = _random_mlp_pair(seed=2, width=40, hidden=4)
    found = merging.weight_matching_result(s, a, b, solver=solver)
    one, info1 = found.perms, found.info
    calls = []
    monkeypatch.setattr(wm, "_in_parallel", lambda mats: calls.append(len(mats)) or True)
    found = merging.weight_matching_result(s, a, b, solver=solver)
    many, info2 = found.perms, found.info
    assert calls and max(calls) > 1  # the threads were used
    assert info1["sweeps"] == info2["sweeps"] and info1["objective"] == info2["objective"]
    assert all(torch.equal(one[g], many[g]) for g in one)


def test_return_duals_still_works_and_is_deprecated():
    c = torch.from_numpy(np.random.default_rng(0).standard_normal((6, 6)))
    with pytest.warns(DeprecationWarning, match="solve_assignment_result"):
        p, v = solve_assignment(c, solver="scipy", return_duals=True)
    assert torch.equal(p, solve_assignment_result(c, solver="scipy").perm) and v is None
