from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nets import teacher_data, teacher_mlp, train_teacher_mlp

from merging import BarrierResult, EvalResult, barrier, evaluate, plot_barrier

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

Batches = list[tuple[torch.Tensor, torch.Tensor]]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, torch.Tensor], Batches]:
    x, y = teacher_data()
    a, b = train_teacher_mlp(0, x, y), train_teacher_mlp(1, x, y)
    data = [(x[i : i + 512], y[i : i + 512]) for i in range(0, len(x), 512)]
    return teacher_mlp(), a.state_dict(), b.state_dict(), data


class _TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


# --------------------------------------------------------------------------- evaluate


def test_evaluate_matches_direct_computation(trained) -> None:
    model, sa, _, _ = trained
    x, y = teacher_data(seed=5, n=300)
    data = [(x[:128], y[:128]), (x[128:256], y[128:256]), (x[256:], y[256:])]  # uneven batches
    result = evaluate(model, sa, data)
    ref = teacher_mlp()
    ref.load_state_dict(sa)
    with torch.no_grad():
        out = ref(x)
    assert isinstance(result, EvalResult)
    assert result.n == 300
    assert result.loss == pytest.approx(F.cross_entropy(out, y).item(), rel=1e-5)
    assert result.accuracy == pytest.approx((out.argmax(1) == y).float().mean().item())


def test_evaluate_restores_modes_and_validates(trained) -> None:
    model, sa, _, data = trained
    model.train()
    model[0].eval()
    evaluate(model, sa, data)
    assert model.training and not model[0].training and model[2].training
    bad = dict(sa)
    bad["0.weight"] = torch.zeros(3, 16)
    with pytest.raises(ValueError, match=r"evaluate: '0.weight' has shape \(3, 16\) .* expects \(64, 16\)"):
        evaluate(model, bad, data)
    missing = {k: v for k, v in sa.items() if k != "2.bias"}
    with pytest.raises(ValueError, match=r"missing keys \['2.bias'\]"):
        evaluate(model, missing, data)
    with pytest.raises(ValueError, match="no batches"):
        evaluate(model, sa, [])


def test_evaluate_regression_has_nan_accuracy() -> None:
    model = nn.Linear(3, 1)
    data = [(torch.randn(8, 3), torch.randn(8, 1))]
    result = evaluate(model, model.state_dict(), data, loss_fn=F.mse_loss)
    assert math.isnan(result.accuracy) and result.n == 8


# --------------------------------------------------------------------------- barrier


def test_barrier_with_itself_is_zero_and_flat(trained) -> None:
    model, sa, _, data = trained
    res = barrier(model, sa, sa, data, steps=9, progress=False)
    assert len(set(res.losses)) == 1 and len(set(res.accuracies)) == 1
    assert res.loss_barrier == 0.0 and res.loss_barrier_linear == 0.0
    assert res.accuracy_barrier == 0.0 and res.accuracy_barrier_linear == 0.0


def test_barrier_between_independent_models(trained) -> None:
    model, sa, sb, data = trained
    res = barrier(model, sa, sb, data, steps=11, progress=False)
    la, lb = res.losses[0], res.losses[-1]
    assert la == pytest.approx(evaluate(model, sa, data).loss)
    assert lb == pytest.approx(evaluate(model, sb, data).loss)
    assert res.loss_barrier > 0.05 and res.loss_barrier_linear > 0.05
    assert res.accuracy_barrier > 0 and res.accuracy_barrier_linear > 0
    # Both definitions bound the midpoint excess, and differ by at most half the endpoint gap.
    excess = res.midpoint_loss - (la + lb) / 2
    assert res.loss_barrier >= excess - 1e-12 and res.loss_barrier_linear >= excess - 1e-12
    assert abs(res.loss_barrier - res.loss_barrier_linear) <= abs(la - lb) / 2 + 1e-12
    gap = abs(res.accuracies[0] - res.accuracies[-1])
    assert abs(res.accuracy_barrier - res.accuracy_barrier_linear) <= gap / 2 + 1e-12
    assert res.midpoint_loss == res.losses[5]


def test_barrier_definitions_by_hand() -> None:
    res = BarrierResult(
        ts=(0.0, 0.25, 0.5, 0.75, 1.0),
        losses=(1.0, 2.8, 2.0, 2.0, 1.2),
        accuracies=(0.9, 0.5, 0.6, 0.7, 0.8),
    )
    assert res.loss_barrier == pytest.approx(2.8 - 1.1)
    assert res.loss_barrier_linear == pytest.approx(2.8 - 1.05)
    assert res.accuracy_barrier == pytest.approx(0.85 - 0.5)
    assert res.accuracy_barrier_linear == pytest.approx(0.875 - 0.5)
    assert (res.midpoint_loss, res.midpoint_accuracy) == (2.0, 0.6)
    # Equal endpoints: the two definitions agree.
    equal = BarrierResult(ts=(0.0, 0.5, 1.0), losses=(1.0, 4.0, 1.0), accuracies=(0.9, 0.2, 0.9))
    assert equal.loss_barrier == equal.loss_barrier_linear == 3.0
    assert equal.accuracy_barrier == pytest.approx(equal.accuracy_barrier_linear)
    # Even number of points: the midpoint is interpolated.
    even = BarrierResult(ts=(0.0, 1 / 3, 2 / 3, 1.0), losses=(0.0, 1.0, 3.0, 0.0), accuracies=(1, 1, 1, 1))
    assert even.midpoint_loss == pytest.approx(2.0)
    with pytest.raises(ValueError, match="equal length"):
        BarrierResult(ts=(0.0, 1.0), losses=(1.0,), accuracies=(1.0, 1.0))


def test_to_dict_is_strict_json(trained) -> None:
    model, sa, sb, data = trained
    d = barrier(model, sa, sb, data, steps=3, progress=False).to_dict()
    again = json.loads(json.dumps(d, allow_nan=False))
    assert again["ts"] == [0.0, 0.5, 1.0]
    for key in ("loss_barrier", "loss_barrier_linear", "accuracy_barrier", "accuracy_barrier_linear",
                "midpoint_loss", "midpoint_accuracy", "losses", "accuracies", "correction"):
        assert key in again
    nan = BarrierResult(ts=(0.0, 1.0), losses=(1.0, 2.0), accuracies=(math.nan, math.nan)).to_dict()
    assert nan["accuracy_barrier"] is None and nan["accuracies"] == [None, None]
    json.dumps(nan, allow_nan=False)


def test_steps_respected_and_validated(trained) -> None:
    model, sa, sb, data = trained
    res = barrier(model, sa, sb, data[:1], steps=7, progress=False)
    assert len(res.ts) == len(res.losses) == len(res.accuracies) == 7
    assert res.ts[0] == 0.0 and res.ts[-1] == 1.0
    assert all(abs((t2 - t1) - 1 / 6) < 1e-12 for t1, t2 in zip(res.ts, res.ts[1:]))
    assert len(barrier(model, sa, sb, data[:1], progress=False).ts) == 25
    with pytest.raises(ValueError, match="steps must be an integer >= 2"):
        barrier(model, sa, sb, data, steps=1, progress=False)
    with pytest.raises(ValueError, match="not both"):
        barrier(model, sa, sb, data, reset_bn_data=data, repair_data=data, progress=False)
    with pytest.raises(TypeError, match="one-shot iterator"):
        barrier(model, sa, sb, iter(data), progress=False)


def test_progress_bar_goes_to_stderr(trained, capsys) -> None:
    model, sa, sb, data = trained
    barrier(model, sa, sb, data[:1], steps=3, progress=False)
    assert capsys.readouterr().err == ""
    barrier(model, sa, sb, data[:1], steps=3, progress=True)
    captured = capsys.readouterr()
    assert "barrier" in captured.err and captured.out == ""


def test_barrier_with_repair_lowers_the_midpoint(trained) -> None:
    model, sa, sb, data = trained
    naive = barrier(model, sa, sb, data, steps=5, progress=False)
    repaired = barrier(model, sa, sb, data, steps=5, repair_data=data, progress=False)
    assert repaired.correction == "repair"
    assert repaired.losses[0] == naive.losses[0] and repaired.losses[-1] == naive.losses[-1]
    assert repaired.midpoint_loss < naive.midpoint_loss - 0.05


def test_barrier_with_batchnorm_reset_leaves_endpoints_and_model_alone() -> None:
    torch.manual_seed(0)
    a, b = _TinyCNN(), _TinyCNN()
    for m in (a, b):
        m.bn.running_mean.normal_()
    data = [(torch.randn(16, 1, 6, 6), torch.randint(0, 3, (16,))) for _ in range(2)]
    model = _TinyCNN()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = barrier(model, a.state_dict(), b.state_dict(), data, steps=3, progress=False)
    reset = barrier(model, a.state_dict(), b.state_dict(), data, steps=3, reset_bn_data=data, progress=False)
    assert reset.correction == "reset_bn"
    assert reset.losses[0] == plain.losses[0] and reset.losses[-1] == plain.losses[-1]
    assert reset.losses[1] != plain.losses[1]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and model.bn.momentum == 0.1


def test_barrier_with_tied_weights() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(4, 6)
            self.out = nn.Linear(6, 4)
            self.back = nn.Linear(4, 6)
            self.back.weight = self.embed.weight  # two keys, one Parameter

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(torch.tanh(self.back(self.out(torch.tanh(self.embed(x))))))

    torch.manual_seed(0)
    a, b = Tied(), Tied()
    data = [(torch.randn(10, 4), torch.randint(0, 4, (10,)))]
    res = barrier(Tied(), a.state_dict(), b.state_dict(), data, steps=3, progress=False)
    assert res.losses[0] == pytest.approx(F.cross_entropy(a(data[0][0]), data[0][1]).item())


# --------------------------------------------------------------------------- plot


def test_plot_writes_png_atomically(tmp_path: Path) -> None:
    naive = BarrierResult(ts=(0.0, 0.5, 1.0), losses=(0.3, 1.5, 0.35), accuracies=(0.9, 0.4, 0.88))
    matched = BarrierResult(ts=(0.0, 0.5, 1.0), losses=(0.3, 0.5, 0.35), accuracies=(0.9, 0.8, 0.88))
    target = tmp_path / "barrier.png"
    target.write_bytes(b"old")
    out = plot_barrier({"naive": naive, "weight matching": matched}, target, title="MLP")
    assert out == target
    assert target.read_bytes()[:8] == PNG_SIGNATURE
    assert [p.name for p in tmp_path.iterdir()] == ["barrier.png"]
    with pytest.raises(ValueError, match="empty"):
        plot_barrier({}, target)
    with pytest.raises(ValueError, match="does not exist"):
        plot_barrier({"naive": naive}, tmp_path / "missing" / "b.png")
    with pytest.raises(TypeError, match="expected a BarrierResult"):
        plot_barrier({"naive": {"ts": []}}, target)  # type: ignore[dict-item]


@pytest.mark.cuda
@requires_cuda
def test_barrier_on_cuda(trained) -> None:
    model, sa, sb, data = trained
    cpu = barrier(model, sa, sb, data, steps=3, progress=False)
    gpu = barrier(model, sa, sb, data, steps=3, device="cuda", progress=False)
    assert gpu.losses == pytest.approx(cpu.losses, rel=1e-4)
