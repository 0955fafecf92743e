from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from merging import interpolate, lerp_path

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _pair() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    a, b = _net(), _net()
    for m, n in ((a, 7), (b, 11)):
        m[1].running_mean.normal_()
        m[1].running_var.uniform_(0.5, 2.0)
        m[1].num_batches_tracked.fill_(n)
    return a.state_dict(), b.state_dict()


def _snapshot(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in state.items()}


def test_endpoints_are_exact() -> None:
    a, b = _pair()
    at0, at1 = interpolate(a, b, 0.0), interpolate(a, b, 1.0)
    for key in a:
        assert torch.equal(at0[key], a[key]), key
        if b[key].is_floating_point():
            assert torch.equal(at1[key], b[key]), key


def test_endpoints_exact_for_negative_zero_and_inf() -> None:
    a = {"w": torch.tensor([-0.0, 1.0, float("inf")])}
    b = {"w": torch.tensor([2.0, -0.0, 3.0])}
    assert torch.equal(interpolate(a, b, 0.0)["w"].view(torch.int32), a["w"].view(torch.int32))
    assert torch.equal(interpolate(a, b, 1.0)["w"].view(torch.int32), b["w"].view(torch.int32))


def test_midpoint_is_average_and_keys_keep_order() -> None:
    a, b = _pair()
    mid = interpolate(a, b)
    assert list(mid) == list(a)
    for key in a:
        if a[key].is_floating_point():
            torch.testing.assert_close(mid[key], (a[key] + b[key]) / 2, rtol=1e-6, atol=1e-7)


def test_general_alpha_and_extrapolation() -> None:
    a, b = _pair()
    for alpha in (0.25, 0.8, -0.5, 1.5):
        out = interpolate(a, b, alpha)
        torch.testing.assert_close(out["0.weight"], (1 - alpha) * a["0.weight"] + alpha * b["0.weight"])


def test_equal_entries_stay_exact() -> None:
    a, _ = _pair()
    for alpha in (0.1, 0.5, 0.9):
        out = interpolate(a, a, alpha)
        assert all(torch.equal(out[k], a[k]) for k in a)


def test_integer_buffers_come_from_a() -> None:
    a, b = _pair()
    for alpha in (0.0, 0.3, 1.0):
        out = interpolate(a, b, alpha)
        assert out["1.num_batches_tracked"].item() == 7
        assert out["1.num_batches_tracked"].dtype == torch.long
        assert out["1.num_batches_tracked"] is not a["1.num_batches_tracked"]


def test_pure_no_mutation_no_aliasing() -> None:
    a, b = _pair()
    a0, b0 = _snapshot(a), _snapshot(b)
    for alpha in (0.0, 0.5, 1.0):
        out = interpolate(a, b, alpha)
        for key in out:
            out[key].add_(1)
    assert all(torch.equal(a[k], a0[k]) for k in a)
    assert all(torch.equal(b[k], b0[k]) for k in b)


def test_key_mismatch_names_the_key() -> None:
    a, b = _pair()
    del b["3.bias"]
    with pytest.raises(ValueError, match=r"interpolate: .*only in A: \['3.bias'\]"):
        interpolate(a, b)
    a, b = _pair()
    b["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"only in B: \['extra.weight'\]"):
        interpolate(a, b)


def test_shape_mismatch_message() -> None:
    a = {"fc1.weight": torch.zeros(64, 784)}
    b = {"fc1.weight": torch.zeros(128, 784)}
    with pytest.raises(ValueError) as info:
        interpolate(a, b)
    assert str(info.value) == "interpolate: 'fc1.weight' has shape (64, 784) in A and (128, 784) in B"


def test_bad_alpha_and_dtype_kind() -> None:
    a, b = _pair()
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        interpolate(a, b, float("nan"))
    with pytest.raises(ValueError, match="'w' has dtype"):
        interpolate({"w": torch.zeros(2)}, {"w": torch.zeros(2, dtype=torch.long)})


def test_low_precision_keeps_dtype_of_a() -> None:
    a = {"w": torch.randn(10).half()}
    b = {"w": torch.randn(10).half()}
    out = interpolate(a, b, 0.3)
    assert out["w"].dtype == torch.float16
    expected = (0.7 * a["w"].float() + 0.3 * b["w"].float()).half()
    torch.testing.assert_close(out["w"], expected)


def test_lerp_path() -> None:
    a, b = _pair()
    path = list(lerp_path(a, b, 5))
    assert [t for t, _ in path] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert torch.equal(path[0][1]["0.weight"], a["0.weight"])
    assert torch.equal(path[-1][1]["0.weight"], b["0.weight"])
    torch.testing.assert_close(path[2][1]["0.weight"], interpolate(a, b, 0.5)["0.weight"])
    with pytest.raises(ValueError, match="steps must be an integer >= 2"):
        lerp_path(a, b, 1)
    del b["3.bias"]
    with pytest.raises(ValueError, match="3.bias"):
        lerp_path(a, b, 3)  # raised eagerly, before iteration


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(1, 5), min_size=0, max_size=3),
    alpha=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_property_convex_and_symmetric(shape: list[int], alpha: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    a = {"t": torch.randn(shape, generator=g, dtype=torch.float64)}
    b = {"t": torch.randn(shape, generator=g, dtype=torch.float64)}
    out = interpolate(a, b, alpha)["t"]
    lo, hi = torch.minimum(a["t"], b["t"]), torch.maximum(a["t"], b["t"])
    assert bool(((out >= lo - 1e-12) & (out <= hi + 1e-12)).all())
    torch.testing.assert_close(out, interpolate(b, a, 1.0 - alpha)["t"], rtol=1e-12, atol=1e-12)


@pytest.mark.cuda
@requires_cuda
def test_cuda_tensors_stay_on_device() -> None:
    a, b = _pair()
    a = {k: v.cuda() for k, v in a.items()}
    b = {k: v.cuda() for k, v in b.items()}
    for alpha in (0.0, 0.5, 1.0):
        out = interpolate(a, b, alpha)
        assert all(v.is_cuda for v in out.values())
