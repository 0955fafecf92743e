"""Grouped convolutions of many small CNNs at once, with our C kernels (``_gconv.c``).

``grouped_conv2d`` computes M models' convolutions at once on model-major, channels-last
activations ``(M, B, H, W, C)``; forward and backward run in C (one model's weights in L1,
eight positions per register block, a tap in the padding reads zeros, so no padded copy).
Where the kernels are not built, the tensors are not float32 CPU tensors, or the channel
counts are not multiples of 16, it is torch's own grouped convolution (the same values up
to float32 rounding).

Which of the two runs is measured, not assumed: ours is several times faster than torch's
on an AVX-512 CPU, but on an AVX2 one torch's oneDNN kernels can win (docs/isa.md). With
``WEIGHTSPACE_GCONV=auto`` (the default) the first call for a problem signature (shapes,
stride, padding, which gradients) times both, forward and the backward passes it needs, on
its real sizes (:data:`AUTO_REPEATS` times each, alternating, the minimum), and every later
call with that signature in this process runs the faster (:data:`CHOICES`; a ``logging``
debug line says what was chosen). The zoo's ``cnn_forward`` makes this choice for the whole
network (``_batched._cnn_path``). ``WEIGHTSPACE_GCONV=ours`` or ``torch`` (or
:data:`ENABLED` = ``False``, torch) fixes the path, e.g. for benchmarks or for results
bit-identical between processes: the two paths agree only to float32 rounding, so two
processes that choose differently for a signature train slightly different models (zoo
build's worker processes start from the choices of the process that spawns them).
"""
from __future__ import annotations

import ctypes
import logging
import os
import time
from collections.abc import Callable

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
#: the environment variable that picks the path: ``auto`` (default), ``ours`` or ``torch``
ENV = "WEIGHTSPACE_GCONV"
MODES = ("auto", "ours", "torch")
#: ``auto``: each path is timed this many times at a signature's first call (the minimum counts)
AUTO_REPEATS = 3
#: ``auto``'s choices in this process: problem signature -> ``"ours"`` or ``"torch"``
CHOICES: dict[tuple, str] = {}
#: seconds this process has spent measuring for ``auto`` (zoo build's time estimate leaves it out)
measured_seconds = 0.0
_log = logging.getLogger(__name__)


def mode() -> str:
    """``$WEIGHTSPACE_GCONV``: ``"auto"`` (unset or empty), ``"ours"`` or ``"torch"``."""
    value = os.environ.get(ENV, "").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"{ENV}={os.environ[ENV]!r}: expected one of {', '.join(MODES)}")
    return value


def kernels_available() -> bool:
    """Whether the C kernels were built (``pip install`` compiles them when a compiler exists)
    and may run: :data:`ENABLED` and ``$WEIGHTSPACE_GCONV`` not ``torch``."""
    return _LIB is not None and ENABLED and mode() != "torch"


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


def _signature(x: Tensor, w: Tensor, bias: Tensor | None, stride: int, pads: tuple[int, int, int, int],
               grads: tuple[bool, bool, bool]) -> tuple:
    return (tuple(x.shape), x.stride(0) == 0, tuple(w.shape), bias is not None, stride, pads, grads)


def _ours(x: Tensor, w: Tensor, bias: Tensor | None, stride: int, pads: tuple[int, int, int, int]) -> Tensor:
    return _GroupedConv.apply(x, w, bias, stride, pads)


def _torchs(x: Tensor, w: Tensor, bias: Tensor | None, stride: int, pads: tuple[int, int, int, int]) -> Tensor:
    m, ci, co = x.shape[0], x.shape[-1], w.shape[1]
    _, b, h, wd, _ = x.shape
    xg = x.permute(1, 0, 4, 2, 3).reshape(b, m * ci, h, wd)
    if any(pads):
        xg = F.pad(xg, pads)
    out = F.conv2d(xg, w.reshape(m * co, ci, *w.shape[3:]), None if bias is None else bias.reshape(-1),
                   stride=stride, groups=m)
    return out.view(b, m, co, *out.shape[2:]).permute(1, 0, 3, 4, 2).contiguous()


def timed_min(runs: dict[str, Callable[[], object]], repeats: int | None = None) -> dict[str, float]:
    """Seconds of each of ``runs`` (name -> a call with no arguments): the minimum of
    ``repeats`` (default :data:`AUTO_REPEATS`) calls, the runs alternating (so a first call's
    set-up, e.g. oneDNN's, is not what counts when ``repeats >= 2``)."""
    global measured_seconds
    best = {name: float("inf") for name in runs}
    t0 = time.perf_counter()
    for _ in range(max(1, AUTO_REPEATS if repeats is None else repeats)):
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    measured_seconds += time.perf_counter() - t0
    return best


def forward_backward(fn: Callable[..., Tensor], args: list, grads: list[bool]) -> Callable[[], None]:
    """A call with no arguments that runs ``fn(*args)`` on detached copies of the tensors in
    ``args`` (those with ``grads[i]`` requiring grad), then the backward passes to them."""
    copies = [a.detach().requires_grad_(g) if isinstance(a, Tensor) else a for a, g in zip(args, grads)]
    wrt = [a for a, g in zip(copies, grads) if g and isinstance(a, Tensor)]
    grad_out = []

    def run() -> None:
        with torch.enable_grad() if wrt else torch.no_grad():
            out = fn(*copies)
            if wrt:
                if not grad_out:
                    grad_out.append(torch.ones_like(out))
                torch.autograd.grad(out, wrt, grad_out[0])
    return run


def record_choice(sig: tuple, times: dict[str, float], what: str) -> str:
    """Remember the faster of ``times`` (``"ours"`` / ``"torch"``) for ``sig``; one debug line."""
    choice = CHOICES[sig] = "torch" if times["torch"] < times["ours"] else "ours"
    _log.debug("%s: ours %.3f ms, torch's %.3f ms -> %s", what, 1e3 * times["ours"], 1e3 * times["torch"], choice)
    return choice


def _choose(x: Tensor, w: Tensor, bias: Tensor | None, stride: int, pads: tuple[int, int, int, int]) -> str:
    grads = [False, False, False]
    if torch.is_grad_enabled():
        grads = [x.requires_grad, w.requires_grad, bias is not None and bias.requires_grad]
    sig = _signature(x, w, bias, stride, pads, tuple(grads))
    choice = CHOICES.get(sig)
    if choice is None:
        args = [x, w, bias, stride, pads]
        times = timed_min({"ours": forward_backward(_ours, args, grads + [False, False]),
                           "torch": forward_backward(_torchs, args, grads + [False, False])})
        choice = record_choice(sig, times, f"grouped_conv2d x{tuple(x.shape)} w{tuple(w.shape)} stride {stride} "
                                           f"pads {pads} grads {tuple(grads)}")
    return choice


def grouped_conv2d(x: Tensor, w: Tensor, bias: Tensor | None, *, stride: int = 1,
                   pads: tuple[int, int, int, int] = (0, 0, 0, 0), path: str | None = None) -> Tensor:
    """M models' convolutions at once, on model-major channels-last activations.

    For each model ``m``: ``conv2d(pad(x[m]), w[m], bias[m], stride)`` with ``x[m]`` read as
    ``(B, H, W, Ci)``, zero padding ``pads = (left, right, top, bottom)`` as
    :func:`torch.nn.functional.pad`, square kernels. Our C kernels or torch's grouped
    convolution: ``path`` (``"auto"``, ``"ours"``, ``"torch"``; default ``$WEIGHTSPACE_GCONV``),
    ``auto`` the faster for these sizes, measured at their first call (see the module's notes).

    Args:
        x: ``(M, B, H, W, Ci)``; an ``expand``-ed view (every model reads the same batch) is
            read without a copy.
        w: ``(M, Co, Ci, K, K)``.
        bias: ``(M, Co)`` or ``None``.
        path: ``"auto"``, ``"ours"`` or ``"torch"``. (default: :func:`mode`)

    Returns:
        ``(M, B, Ho, Wo, Co)``, contiguous.
    """
    m, ci, co = x.shape[0], x.shape[-1], w.shape[1]
    pads = tuple(pads)
    path = mode() if path is None else path
    if path not in MODES:
        raise ValueError(f"grouped_conv2d: path must be one of {', '.join(MODES)}, got {path!r}")
    ok = (path != "torch" and _LIB is not None and ENABLED and x.device.type == "cpu"
          and x.dtype == w.dtype == torch.float32 and w.shape[-1] == w.shape[-2] and w.shape[0] == m and w.shape[2] == ci and co % 16 == 0
          and ci <= 4096 and co <= 4096 and (ci % 16 == 0 or not x.requires_grad)
          and (bias is None or bias.dtype == torch.float32))
    if ok:
        k, (pl, pr, pt, pb) = w.shape[-1], pads
        if x.shape[2] + pt + pb < k or x.shape[3] + pl + pr < k:
            raise ValueError(f"grouped_conv2d: a {k}x{k} kernel does not fit the padded input "
                             f"{x.shape[2] + pt + pb}x{x.shape[3] + pl + pr}")
        if path == "ours" or _choose(x, w, bias, stride, pads) == "ours":
            return _ours(x, w, bias, stride, pads)
    return _torchs(x, w, bias, stride, pads)
