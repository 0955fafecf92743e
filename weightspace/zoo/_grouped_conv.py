"""Grouped convolutions of many small CNNs at once, with our C kernels (``_gconv.c``).

``grouped_conv2d`` computes M models' convolutions at once on model-major, channels-last
activations ``(M, B, H, W, C)``; forward and backward run in C (one model's weights in L1,
eight positions per register block, a tap in the padding reads zeros, so no padded copy).
Where the kernels are not built, the tensors are not float32 CPU tensors, or the channel
counts are not multiples of 16, it is torch's own grouped convolution (the same values up
to float32 rounding).
"""
from __future__ import annotations

import ctypes
import os

import torch
import torch.nn.functional as F
from torch import Tensor

from merging._native import load_library


class _Conv(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int64) for n in ("B", "H", "W", "M", "Ci", "Co", "K", "S", "pt", "pl", "Ho", "Wo", "xms")]


def _load():
    lib = load_library(os.path.dirname(__file__), "_gconv")
    if lib is not None:
        p, i64 = ctypes.c_void_p, ctypes.c_int64
        lib.ws_gconv_fwd.argtypes = [ctypes.POINTER(_Conv), p, p, p, p, i64, i64]
        lib.ws_gconv_bwd_data.argtypes = [ctypes.POINTER(_Conv), p, p, p, i64, i64]
        lib.ws_gconv_bwd_weight.argtypes = [ctypes.POINTER(_Conv), p, p, p, p, i64, i64]
        for f in (lib.ws_gconv_fwd, lib.ws_gconv_bwd_data, lib.ws_gconv_bwd_weight):
            f.restype = ctypes.c_int
    return lib


_LIB = _load()
#: set to False to train with torch's grouped convolutions instead (benchmarks compare both)
ENABLED = True


def kernels_available() -> bool:
    """Whether the C kernels were built (``pip install`` compiles them when a compiler exists)
    and are enabled (:data:`ENABLED`)."""
    return _LIB is not None and ENABLED


def _ptr(t: Tensor | None):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def _run(fn, conv: _Conv, *args) -> None:
    """``fn(conv, *args, 0, M)``: every model, in this thread. (Splitting the models over
    threads measured no faster on 2 cores: torch's own threads spin on the second one.)"""
    rc = fn(ctypes.byref(conv), *args, 0, conv.M)
    if rc != 0:
        raise RuntimeError(f"grouped_conv2d: the C kernel refused the sizes (code {rc})")


def _model_major(x: Tensor) -> tuple[Tensor, int]:
    """``x`` as a tensor whose models are contiguous blocks, and the model stride (0 when
    every model reads the same input: an ``expand``-ed view is not copied)."""
    if x.stride(0) == 0 and x[0].is_contiguous():
        return x, 0
    x = x.contiguous()
    return x, x[0].numel()


class _GroupedConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, bias: Tensor | None, stride: int, pads: tuple[int, int, int, int]):
        m, b, h, wd, ci = x.shape
        co, k = w.shape[1], w.shape[-1]
        pl, pr, pt, pb = pads
        ho, wo = (h + pt + pb - k) // stride + 1, (wd + pl + pr - k) // stride + 1
        x, xms = _model_major(x)
        conv = _Conv(b, h, wd, m, ci, co, k, stride, pt, pl, ho, wo, xms)
        wt = w.permute(0, 3, 4, 2, 1).contiguous()   # (M, K, K, Ci, Co)
        out = torch.empty(m, b, ho, wo, co)
        bias_c = None if bias is None else bias.contiguous()
        _run(_LIB.ws_gconv_fwd, conv, _ptr(x), _ptr(wt), _ptr(bias_c), _ptr(out))
        ctx.conv = conv
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, w)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, w = ctx.saved_tensors
        conv = ctx.conv
        m, ci, co, k = conv.M, conv.Ci, conv.Co, conv.K
        g = grad.contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            wT = w.permute(0, 3, 4, 1, 2).contiguous()  # (M, K, K, Co, Ci)
            gx = torch.empty(m, conv.B, conv.H, conv.W, ci)
            _run(_LIB.ws_gconv_bwd_data, conv, _ptr(g), _ptr(wT), _ptr(gx))
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            gwt = torch.empty(m, k, k, ci, co)
            gb = torch.empty(m, co) if ctx.has_bias else None
            _run(_LIB.ws_gconv_bwd_weight, conv, _ptr(x), _ptr(g), _ptr(gwt), _ptr(gb))
            gw = gwt.permute(0, 4, 3, 1, 2)
        return gx, gw, gb, None, None


def grouped_conv2d(x: Tensor, w: Tensor, bias: Tensor | None, *, stride: int = 1,
                   pads: tuple[int, int, int, int] = (0, 0, 0, 0)) -> Tensor:
    """M models' convolutions at once, on model-major channels-last activations.

    For each model ``m``: ``conv2d(pad(x[m]), w[m], bias[m], stride)`` with ``x[m]`` read as
    ``(B, H, W, Ci)``, zero padding ``pads = (left, right, top, bottom)`` as
    :func:`torch.nn.functional.pad`, square kernels.

    Args:
        x: ``(M, B, H, W, Ci)``; an ``expand``-ed view (every model reads the same batch) is
            read without a copy.
        w: ``(M, Co, Ci, K, K)``.
        bias: ``(M, Co)`` or ``None``.

    Returns:
        ``(M, B, Ho, Wo, Co)``, contiguous.
    """
    m, ci, co = x.shape[0], x.shape[-1], w.shape[1]
    ok = (kernels_available() and x.device.type == "cpu" and x.dtype == w.dtype == torch.float32
          and w.shape[-1] == w.shape[-2] and w.shape[0] == m and w.shape[2] == ci and co % 16 == 0
          and ci <= 4096 and co <= 4096 and (ci % 16 == 0 or not x.requires_grad)
          and (bias is None or bias.dtype == torch.float32))
    if ok:
        k, (pl, pr, pt, pb) = w.shape[-1], pads
        if x.shape[2] + pt + pb < k or x.shape[3] + pl + pr < k:
            raise ValueError(f"grouped_conv2d: a {k}x{k} kernel does not fit the padded input "
                             f"{x.shape[2] + pt + pb}x{x.shape[3] + pl + pr}")
        return _GroupedConv.apply(x, w, bias, stride, tuple(pads))
    _, b, h, wd, _ = x.shape
    xg = x.permute(1, 0, 4, 2, 3).reshape(b, m * ci, h, wd)
    if any(pads):
        xg = F.pad(xg, pads)
    out = F.conv2d(xg, w.reshape(m * co, ci, *w.shape[3:]), None if bias is None else bias.reshape(-1),
                   stride=stride, groups=m)
    return out.view(b, m, co, *out.shape[2:]).permute(1, 0, 3, 4, 2).contiguous()
