from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nets import teacher_data, teacher_mlp, train_teacher_mlp

from merging import evaluate, interpolate, repair, reset_batchnorm

State = dict[str, torch.Tensor]
Batches = list[tuple[torch.Tensor, torch.Tensor]]


# --------------------------------------------------------------------------- models and data


class _BNCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        return self.fc(h.mean(dim=(2, 3)))


class _CNN(nn.Module):
    """No BatchNorm: REPAIR proper, with a conv (channel axis 1) and linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3, padding=1)
        self.fc1 = nn.Linear(6, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv(x)).mean(dim=(2, 3))
        return self.head(F.relu(self.fc1(h)))


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, State, State, Batches]:
    x, y = teacher_data()
    a, b = train_teacher_mlp(0, x, y), train_teacher_mlp(1, x, y)
    data = [(x[i : i + 512], y[i : i + 512]) for i in range(0, len(x), 512)]
    return teacher_mlp(), a.state_dict(), b.state_dict(), data


def _images(n_batches: int = 3, batch: int = 8, seed: int = 0) -> Batches:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, 2, 5, 5, generator=g) * 2 + 1, torch.randint(0, 3, (batch,), generator=g))
        for _ in range(n_batches)
    ]


def _snapshot(state: State) -> State:
    return {k: v.clone() for k, v in state.items()}


def _same(a: State, b: State) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _channel_stats(model: nn.Module, state: State, data: Batches, layers: dict[str, int]) -> dict[str, tuple]:
    """Per-channel population mean/std of each layer's output, from all outputs concatenated."""
    model = type(model)() if not isinstance(model, nn.Sequential) else teacher_mlp()
    model.load_state_dict(state)
    model.eval()
    modules = dict(model.named_modules())
    outs: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    handles = [
        modules[name].register_forward_hook(lambda m, i, o, name=name: outs[name].append(o.detach()))
        for name in layers
    ]
    with torch.no_grad():
        for x, _ in data:
            model(x)
    for h in handles:
        h.remove()
    stats = {}
    for name, axis in layers.items():
        z = torch.cat(outs[name]).movedim(axis, -1).reshape(-1, outs[name][0].shape[axis]).double()
        stats[name] = (z.mean(0), z.std(0, unbiased=False))
    return stats


# --------------------------------------------------------------------------- reset_batchnorm


def test_reset_batchnorm_single_batch_matches_hand_computation() -> None:
    torch.manual_seed(0)
    model = _BNCNN()
    state = model.state_dict()
    x = torch.randn(16, 2, 5, 5) * 3 + 2
    out = reset_batchnorm(model, state, [(x, torch.zeros(16, dtype=torch.long))])

    h1 = F.conv2d(x, state["conv1.weight"], state["conv1.bias"], padding=1)
    torch.testing.assert_close(out["bn1.running_mean"], h1.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(out["bn1.running_var"], h1.var(dim=(0, 2, 3), unbiased=True))
    a1 = F.relu(F.batch_norm(h1, None, None, state["bn1.weight"], state["bn1.bias"], training=True))
    h2 = F.conv2d(a1, state["conv2.weight"], None, padding=1)
    torch.testing.assert_close(out["bn2.running_mean"], h2.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(out["bn2.running_var"], h2.var(dim=(0, 2, 3), unbiased=True))
    assert out["bn1.num_batches_tracked"].item() == 1


def test_reset_batchnorm_is_a_cumulative_average_over_batches() -> None:
    torch.manual_seed(0)
    model = _BNCNN()
    state = model.state_dict()
    data = _images(n_batches=4)
    out = reset_batchnorm(model, state, data, num_batches=3)
    h = [F.conv2d(x, state["conv1.weight"], state["conv1.bias"], padding=1) for x, _ in data[:3]]
    torch.testing.assert_close(out["bn1.running_mean"], torch.stack([z.mean(dim=(0, 2, 3)) for z in h]).mean(0))
    torch.testing.assert_close(out["bn1.running_var"], torch.stack([z.var(dim=(0, 2, 3)) for z in h]).mean(0))
    assert out["bn2.num_batches_tracked"].item() == 3


def test_reset_batchnorm_mutates_nothing() -> None:
    torch.manual_seed(0)
    model = _BNCNN()
    model.train()
    model.conv1.eval()
    state = _snapshot(model.state_dict())
    original = _snapshot(state)
    model_before = _snapshot(model.state_dict())
    out = reset_batchnorm(model, state, _images())
    assert _same(state, original)
    assert _same(model.state_dict(), model_before)
    assert model.training and not model.conv1.training and model.bn1.training
    assert model.bn1.momentum == 0.1 and model.bn2.momentum == 0.1
    assert not torch.equal(out["bn1.running_mean"], state["bn1.running_mean"])
    assert out["conv1.weight"] is state["conv1.weight"]  # untouched entries are shared
    with pytest.raises(ValueError, match="no batches"):
        reset_batchnorm(model, state, [])


def test_reset_batchnorm_without_batchnorm_is_a_copy(trained) -> None:
    model, sa, _, data = trained
    out = reset_batchnorm(model, sa, data)
    assert out == sa and out is not sa


# --------------------------------------------------------------------------- repair


@pytest.mark.parametrize("alpha", [0.5, 0.3])
def test_repair_matches_target_statistics_mlp(trained, alpha: float) -> None:
    model, sa, sb, data = trained
    merged = interpolate(sa, sb, alpha)
    originals = [_snapshot(s) for s in (sa, sb, merged)]
    out = repair(model, sa, sb, merged, data, alpha=alpha)
    assert all(_same(s, o) for s, o in zip((sa, sb, merged), originals))

    layers = {"0": -1, "2": -1}  # every Linear but the output layer "4"
    st_a, st_b, st_r = (_channel_stats(model, s, data, layers) for s in (sa, sb, out))
    for name in layers:
        mean_t = (1 - alpha) * st_a[name][0] + alpha * st_b[name][0]
        std_t = (1 - alpha) * st_a[name][1] + alpha * st_b[name][1]
        torch.testing.assert_close(st_r[name][0], mean_t, rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(st_r[name][1], std_t, rtol=1e-3, atol=1e-4)
    assert torch.equal(out["4.weight"], merged["4.weight"]) and torch.equal(out["4.bias"], merged["4.bias"])


def test_repair_matches_target_statistics_cnn() -> None:
    torch.manual_seed(0)
    model, a, b = _CNN(), _CNN(), _CNN()
    data = _images(n_batches=3, batch=16)
    sa, sb = a.state_dict(), b.state_dict()
    out = repair(model, sa, sb, interpolate(sa, sb), data)
    layers = {"conv": 1, "fc1": -1}
    st_a, st_b, st_r = (_channel_stats(model, s, data, layers) for s in (sa, sb, out))
    for name in layers:
        torch.testing.assert_close(st_r[name][0], (st_a[name][0] + st_b[name][0]) / 2, rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(st_r[name][1], (st_a[name][1] + st_b[name][1]) / 2, rtol=1e-3, atol=1e-4)
    assert torch.equal(out["head.weight"], interpolate(sa, sb)["head.weight"])


def test_repair_lowers_midpoint_loss(trained) -> None:
    model, sa, sb, data = trained
    merged = interpolate(sa, sb)
    plain = evaluate(model, merged, data).loss
    repaired = evaluate(model, repair(model, sa, sb, merged, data), data).loss
    assert repaired < plain - 0.05


def test_repair_of_an_endpoint_is_nearly_identity(trained) -> None:
    model, sa, sb, data = trained
    out = repair(model, sa, sb, sa, data, alpha=0.0)
    for key in sa:
        torch.testing.assert_close(out[key], sa[key], rtol=1e-4, atol=1e-5)


def test_repair_with_batchnorm_resets_statistics() -> None:
    torch.manual_seed(0)
    model, a, b = _BNCNN(), _BNCNN(), _BNCNN()
    data = _images()
    merged = interpolate(a.state_dict(), b.state_dict())
    out = repair(model, a.state_dict(), b.state_dict(), merged, data)
    assert _same(out, reset_batchnorm(model, merged, data))


def test_repair_errors(trained) -> None:
    model, sa, sb, data = trained
    with pytest.raises(TypeError, match="one-shot iterator"):
        repair(model, sa, sb, sa, iter(data))
    nobias = nn.Sequential(nn.Linear(16, 8, bias=False), nn.ReLU(), nn.Linear(8, 4))
    s = nobias.state_dict()
    with pytest.raises(ValueError, match=r"repair: layer '0' \(Linear\) has no bias"):
        repair(nobias, s, s, s, data)
    shared = nn.Linear(4, 4)
    twice = nn.Sequential(shared, nn.ReLU(), shared, nn.Linear(4, 2))
    s = twice.state_dict()
    with pytest.raises(ValueError, match="runs 2 times per forward pass"):
        repair(twice, s, s, s, [(torch.randn(3, 4), torch.zeros(3, dtype=torch.long))])
