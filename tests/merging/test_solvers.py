"""Assignment solvers: the warm-started C solver is exact (checked against SciPy)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from merging import solve_assignment
from merging.matching._solve import lap_available

needs_lap = pytest.mark.skipif(not lap_available(), reason="C solver not built (no compiler)")


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
    p, v = solve_assignment(torch.from_numpy(c), solver="lap", return_duals=True)
    c2 = c + noise * rng.standard_normal((n, n))
    q = solve_assignment(torch.from_numpy(c2), solver="lap", init=p, duals=v)
    assert sorted(q.tolist()) == list(range(n))
    assert _value(c2, q) == pytest.approx(_opt(c2), abs=1e-9)


def test_solver_errors():
    with pytest.raises(ValueError, match="unknown solver"):
        solve_assignment(torch.eye(3), solver="hungarian")
    with pytest.raises(ValueError, match="NaN"):
        solve_assignment(torch.full((2, 2), float("nan")))
    with pytest.raises(ValueError, match="square"):
        solve_assignment(torch.zeros(2, 3))


@needs_lap
def test_weight_matching_same_objective_with_either_solver():
    import torch.nn as nn

    import merging
    from graphs import trace

    torch.manual_seed(0)
    make = lambda: nn.Sequential(nn.Linear(10, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 3))  # noqa: E731
    a, b = make().state_dict(), make().state_dict()
    s = trace(make(), torch.randn(2, 10))
    pl, il = merging.weight_matching(s, a, b, solver="lap", return_info=True)
    ps, is_ = merging.weight_matching(s, a, b, solver="scipy", return_info=True)
    assert il["objective"] == pytest.approx(is_["objective"], rel=1e-12)


@needs_lap
@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 80), seed=st.integers(0, 10_000), ties=st.booleans())
def test_auction_is_near_optimal(n, seed, ties):
    """The auction (finished by the C solver with slack 2 eps) is within 2 n eps of optimal."""
    rng = np.random.default_rng(seed)
    c = rng.integers(0, 3, (n, n)).astype(float) if ties else rng.standard_normal((n, n))
    p, v = solve_assignment(torch.from_numpy(c), solver="auction", return_duals=True)
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
    perm, prices = auction_assignment(c, stop=20)
    assert sorted(perm.tolist()) == list(range(200))
    assert prices.dtype == torch.float64 and prices.shape == (200,)
    opt = _opt(c.double().numpy())
    assert _value(c.double().numpy(), perm) >= opt * (1 - 1e-2)  # rows finished among themselves
    # the identity is optimal for a dominant diagonal, and the auction finds it
    d = torch.eye(50) * 10 + 0.01 * torch.rand(50, 50)
    assert torch.equal(auction_assignment(d)[0], torch.arange(50))


@needs_lap
def test_weight_matching_auction_then_exact_reaches_the_lap_objective():
    import torch.nn as nn

    import merging
    from graphs import trace

    torch.manual_seed(1)
    make = lambda: nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))  # noqa: E731
    a, b = make().state_dict(), make().state_dict()
    s = trace(make(), torch.randn(2, 10))
    _, il = merging.weight_matching(s, a, b, solver="lap", return_info=True)
    _, ia = merging.weight_matching(s, a, b, solver="auction", return_info=True)
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
                p, v = solve_assignment(torch.from_numpy(c), solver="lap", return_duals=True)
                assert sorted(p.tolist()) == list(range(n))
                assert _value(c, p) == pytest.approx(_opt(c), abs=1e-9)
                c2 = c + 0.05 * rng.standard_normal((n, n))
                q = solve_assignment(torch.from_numpy(c2), solver="lap", init=p, duals=v)
                assert sorted(q.tolist()) == list(range(n))
                assert _value(c2, q) == pytest.approx(_opt(c2), abs=1e-9)
    finally:
        force.value = 0
