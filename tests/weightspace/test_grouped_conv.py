"""Our grouped-convolution kernels (weightspace/zoo/_gconv.c) against torch's convolutions."""
from __future__ import annotations

import ctypes

import pytest
import torch
import torch.nn.functional as F

from weightspace.zoo import _grouped_conv
from weightspace.zoo._grouped_conv import grouped_conv2d

needs_kernels = pytest.mark.skipif(_grouped_conv._LIB is None, reason="C kernels not built (no compiler)")

# (B, M, Ci, Co, H, K, stride, pads (left, right, top, bottom), shared input)
CASES = [
    (5, 3, 16, 16, 8, 3, 2, (0, 1, 0, 1), False),   # the Small CNN Zoo's layer: TF "SAME" on an even size
    (33, 4, 1, 16, 8, 3, 2, (0, 1, 0, 1), False),   # first layer (one input channel), B not a multiple of 8
    (9, 2, 16, 32, 7, 3, 1, (1, 1, 1, 1), False),   # stride 1, two output blocks, odd size
    (3, 2, 32, 16, 5, 5, 2, (2, 2, 2, 2), False),   # 5x5 kernel, two input blocks
    (11, 3, 16, 16, 4, 3, 3, (1, 0, 2, 1), False),  # stride 3, lopsided padding
    (7, 3, 1, 16, 6, 3, 2, (0, 1, 0, 1), True),     # every model reads the same batch (evaluation)
    (4, 2, 16, 16, 1, 3, 2, (1, 1, 1, 1), False),   # a 1x1 feature map
    (6, 2, 16, 16, 8, 3, 2, (0, 0, 0, 0), False),   # no padding: the last row and column are never read
]


def _reference(x, w, b, stride, pads):
    m, bsz, h, wd, ci = x.shape
    co = w.shape[1]
    xg = F.pad(x.permute(1, 0, 4, 2, 3).reshape(bsz, m * ci, h, wd), pads)
    out = F.conv2d(xg, w.reshape(m * co, ci, *w.shape[3:]), b.reshape(-1), stride=stride, groups=m)
    return out.view(bsz, m, co, *out.shape[2:]).permute(1, 0, 3, 4, 2)


@needs_kernels
@pytest.mark.parametrize("build", [1, 2, 3], ids=["generic", "avx2", "avx512"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}-M{c[1]}-{c[2]}to{c[3]}-H{c[4]}-K{c[5]}-S{c[6]}")
def test_kernels_match_torch_forward_and_backward(build, case, monkeypatch):
    """Every build (where this CPU runs it; otherwise the next one down) gives torch's output
    and the gradients of input, weights and bias, to float32 rounding."""
    monkeypatch.setenv("WEIGHTSPACE_GCONV", "ours")
    b, m, ci, co, h, k, stride, pads, shared = case
    force = ctypes.c_int.in_dll(_grouped_conv._LIB, "ws_gconv_force")
    gen = torch.Generator().manual_seed(build)
    if shared:
        x = torch.randn(b, h, h, ci, generator=gen).expand(m, b, h, h, ci)
    else:
        x = torch.randn(m, b, h, h, ci, generator=gen).requires_grad_(ci % 16 == 0)
    w = (0.2 * torch.randn(m, co, ci, k, k, generator=gen)).requires_grad_()
    bias = torch.randn(m, co, generator=gen).requires_grad_()
    try:
        force.value = build
        out = grouped_conv2d(x, w, bias, stride=stride, pads=pads)
        g = torch.randn(out.shape, generator=gen)
        wrt = [t for t in (x, w, bias) if t.requires_grad]
        grads = torch.autograd.grad((out * g).sum(), wrt)
    finally:
        force.value = 0
    ref = _reference(x, w, bias, stride, pads)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * float(ref.detach().abs().max()))
    for got, want in zip(grads, torch.autograd.grad((ref * g).sum(), wrt)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


@needs_kernels
def test_a_kernel_larger_than_the_input_is_an_error():
    x, w = torch.randn(2, 3, 2, 2, 16), torch.randn(2, 16, 16, 3, 3)
    with pytest.raises(ValueError, match="does not fit the padded input 2x2"):
        grouped_conv2d(x, w, None)
    assert grouped_conv2d(x, w, None, pads=(1, 0, 1, 0)).shape == (2, 3, 1, 1, 16)


def test_unsupported_sizes_fall_back_to_torch(monkeypatch):
    # 12 output channels (not a multiple of 16), float64, or the kernels switched off: torch's
    # grouped convolution computes it, same layout in and out
    gen = torch.Generator().manual_seed(1)
    for dtype, co, enabled in ((torch.float32, 12, True), (torch.float64, 16, True), (torch.float32, 16, False)):
        monkeypatch.setattr(_grouped_conv, "ENABLED", enabled)
        x = torch.randn(2, 3, 6, 6, 16, generator=gen, dtype=dtype)
        w = torch.randn(2, co, 16, 3, 3, generator=gen, dtype=dtype)
        b = torch.randn(2, co, generator=gen, dtype=dtype)
        out = grouped_conv2d(x, w, b, stride=2, pads=(1, 1, 1, 1))
        assert out.shape == (2, 3, 3, 3, co) and out.dtype == dtype
        torch.testing.assert_close(out, _reference(x, w, b, 2, (1, 1, 1, 1)))


@pytest.mark.parametrize("family", ["smallcnnzoo", "pooled"])
def test_cnn_forward_is_the_same_with_and_without_kernels(family, monkeypatch):
    from weightspace.models import CNN
    from weightspace.zoo import CNN_FAMILIES
    from weightspace.zoo._batched import cnn_forward

    fam = CNN_FAMILIES[family]
    torch.manual_seed(0)
    models = [CNN(1, [16, 16, 16], 10, 8, stride=fam["stride"], padding=fam["padding"], pool=fam["pool"])
              for _ in range(3)]
    params = {k: torch.stack([m.state_dict()[k] for m in models]).requires_grad_() for k in models[0].state_dict()}
    x = torch.randn(3, 6, 1, 8, 8)
    runs = []
    monkeypatch.setenv("WEIGHTSPACE_GCONV", "ours")
    for enabled in (True, False):
        monkeypatch.setattr(_grouped_conv, "ENABLED", enabled)
        out = cnn_forward(models[0], params, x)
        runs.append((out, *torch.autograd.grad(out.square().sum(), list(params.values()))))
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(runs[0][0], torch.stack([m(xi) for m, xi in zip(models, x)]), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- the path: auto (measured) or forced


@needs_kernels
def test_auto_records_a_choice_per_signature_and_every_path_gives_torchs_result(monkeypatch, caplog):
    """With WEIGHTSPACE_GCONV=auto the first call for a signature times both paths and records
    the faster (one debug line); a second call with that signature measures nothing. Each
    path, forced, gives torch's output and gradients to float32 rounding."""
    monkeypatch.setattr(_grouped_conv, "CHOICES", {})
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 5, 8, 8, 16, generator=gen).requires_grad_()
    w = (0.2 * torch.randn(4, 16, 16, 3, 3, generator=gen)).requires_grad_()
    bias = torch.randn(4, 16, generator=gen).requires_grad_()
    pads = (0, 1, 0, 1)
    ref = _reference(x, w, bias, 2, pads)
    g = torch.randn(ref.shape, generator=gen)
    want = torch.autograd.grad((ref * g).sum(), [x, w, bias])
    measured = []
    real = _grouped_conv.timed_min
    monkeypatch.setattr(_grouped_conv, "timed_min", lambda runs, *a: measured.append(1) or real(runs, *a))
    for path in ("auto", "auto", "ours", "torch"):
        monkeypatch.setenv("WEIGHTSPACE_GCONV", path)
        with caplog.at_level("DEBUG", logger="weightspace.zoo._grouped_conv"):
            out = grouped_conv2d(x, w, bias, stride=2, pads=pads)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * float(ref.detach().abs().max()))
        for got, exp in zip(torch.autograd.grad((out * g).sum(), [x, w, bias]), want):
            torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-5 * float(exp.abs().max()))
    assert len(measured) == 1  # the second auto call and the forced ones measured nothing
    (sig, choice), = _grouped_conv.CHOICES.items()
    assert choice in ("ours", "torch") and sig[0] == (4, 5, 8, 8, 16) and sig[4:] == (2, pads, (True, True, True))
    lines = [r.getMessage() for r in caplog.records if "grouped_conv2d" in r.getMessage()]
    assert len(lines) == 1 and lines[0].endswith(f"-> {choice}")
    # without gradients (evaluation) it is another signature, timed forward only
    with torch.no_grad():
        monkeypatch.setenv("WEIGHTSPACE_GCONV", "auto")
        grouped_conv2d(x, w, bias, stride=2, pads=pads)
    assert len(_grouped_conv.CHOICES) == 2 and len(measured) == 2


@needs_kernels
@pytest.mark.parametrize("path", ["auto", "ours", "torch"])
def test_cnn_forward_follows_the_override(path, monkeypatch):
    """cnn_forward with each WEIGHTSPACE_GCONV: the same outputs and gradients as the modules
    to float32 rounding; auto records one choice for the whole network's signature."""
    from weightspace.models import CNN
    from weightspace.zoo._batched import cnn_forward

    monkeypatch.setattr(_grouped_conv, "CHOICES", {})
    monkeypatch.setenv("WEIGHTSPACE_GCONV", path)
    torch.manual_seed(0)
    models = [CNN(1, [16, 16, 16], 10, 8, stride=2, padding="tf_same") for _ in range(3)]
    params = {k: torch.stack([m.state_dict()[k] for m in models]).requires_grad_() for k in models[0].state_dict()}
    x = torch.randn(3, 6, 1, 8, 8)
    out = cnn_forward(models[0], params, x)
    grads = torch.autograd.grad(out.square().sum(), list(params.values()))
    ref_params = [p for m in models for p in m.parameters()]
    ref = torch.stack([m(xi) for m, xi in zip(models, x)])
    ref_grads = torch.autograd.grad(ref.square().sum(), ref_params)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    names = [n for n, _ in models[0].named_parameters()]
    for k, got in zip(params, grads):
        want = torch.stack([ref_grads[i * len(names) + names.index(k)] for i in range(3)])
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    kinds = [sig[0] for sig in _grouped_conv.CHOICES]
    assert kinds == (["cnn"] if path == "auto" else [])


def test_a_bad_override_is_an_error(monkeypatch):
    monkeypatch.setenv("WEIGHTSPACE_GCONV", "fastest")
    with pytest.raises(ValueError, match="WEIGHTSPACE_GCONV='fastest': expected one of auto, ours, torch"):
        _grouped_conv.mode()
