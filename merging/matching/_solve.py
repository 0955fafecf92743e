"""Linear assignment solvers: maximise ``sum_i C[i, perm[i]]`` over permutations.

``"lap"``: our shortest-augmenting-path solver in C (``_lap.c``), exact, warm-started from
the previous assignment and column duals, which is what weight matching's sequence of
slowly changing problems needs. ``"scipy"``: SciPy's ``linear_sum_assignment``, the exact
reference. ``"auto"``: ``"lap"`` when the extension was built, else ``"scipy"``.
``"auction"``: a synchronous auction in torch on the matrix's own device (CUDA), whose
near-optimal assignment and prices the C solver finishes; approximate (within ``n * eps``,
eps ~ 1e-7 of the entries), so weight matching uses it for its early sweeps only.
"""
from __future__ import annotations

import ctypes
import math
import glob
import os

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

SOLVERS = ("auto", "lap", "scipy", "auction")


def _load_lap():
    here = os.path.dirname(__file__)
    for path in sorted(glob.glob(os.path.join(here, "_lap*.so")) + glob.glob(os.path.join(here, "_lap*.pyd"))):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        lib.ws_lap.restype = ctypes.c_int64
        lib.ws_lap.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                               ctypes.c_void_p, ctypes.c_int, ctypes.c_double, ctypes.c_double]
        return lib
    return None


_LAP = _load_lap()


def lap_available() -> bool:
    """Whether the C solver was built (``pip install`` compiles it when a compiler exists)."""
    return _LAP is not None


def _resolve(solver: str) -> str:
    if solver not in SOLVERS:
        raise ValueError(f"solve_assignment: unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    if solver == "auto":
        return "lap" if _LAP is not None else "scipy"
    if solver in ("lap", "auction") and _LAP is None:
        raise ValueError(f"solve_assignment: the {solver!r} solver needs the C extension, which is not built "
                         "here (reinstall with a C compiler available); use solver='scipy'")
    return solver


def _lap(c: np.ndarray, init, duals, slack: float = 0.0):
    n = c.shape[0]
    warm = init is not None and duals is not None and len(duals) == n
    out = (np.ascontiguousarray(init.detach().cpu().numpy(), dtype=np.int64).copy() if warm
           else np.full(n, -1, dtype=np.int64))
    v = np.ascontiguousarray(duals, dtype=np.float64).copy() if warm else np.zeros(n)
    u = np.zeros(n)
    rc = _LAP.ws_lap(n, c.ctypes.data, out.ctypes.data, u.ctypes.data, v.ctypes.data, int(warm),
                     float(slack), -1.0)
    if rc < 0:
        raise RuntimeError(f"solve_assignment: the C solver failed (code {rc})")
    return out, v


def solve_assignment(cost: Tensor, *, solver: str = "auto", init: Tensor | None = None,
                     duals: np.ndarray | None = None, return_duals: bool = False):
    """Maximum-weight perfect matching of a square similarity matrix.

    Args:
        cost: similarity matrix ``C``.
        solver (str, optional): ``"auto"``, ``"lap"``, ``"scipy"`` (exact) or ``"auction"``
            (approximate, on ``cost``'s device). (default: ``"auto"``)
        init, duals (optional): warm start for ``"lap"`` and ``"auction"``: the previous
            assignment and the column duals it returned (``return_duals=True``). Ignored by
            ``"scipy"``.

    Shapes:
        cost: ``(n, n)``; output: ``(n,)`` LongTensor on ``cost``'s device with
        ``output[i]`` the column assigned to row ``i``.

    Returns:
        The assignment, and the column duals (``(n,)`` float64 array or ``None``) if
        ``return_duals``.
    """
    which = _resolve(solver)
    if cost.ndim != 2 or cost.shape[0] != cost.shape[1]:
        raise ValueError(f"solve_assignment: expected a square matrix, got shape {tuple(cost.shape)}")
    # one reduction instead of an n x n mask: NaN and Inf propagate into the sum
    if not math.isfinite(float(cost.sum())) and not bool(torch.isfinite(cost).all()):
        raise ValueError("solve_assignment: the similarity matrix has NaN or Inf (are the weights finite?)")
    n = cost.shape[0]
    v = None
    if which == "auction":
        from ._auction import auction_assignment
        warm = init is not None and duals is not None and len(duals) == n
        prices = torch.as_tensor(-np.asarray(duals), dtype=torch.float64, device=cost.device) if warm else None
        perm, prices, eps = auction_assignment(cost.detach(), prices=prices, init=init if warm else None,
                                               finish=False, return_eps=True)
        c = cost.detach().to("cpu", torch.float64).numpy()
        out, v = _lap(c, perm, -prices.cpu().numpy(), slack=eps)
    else:
        c = cost.detach().to("cpu", torch.float64).numpy()
        if which == "scipy":
            rows, cols = linear_sum_assignment(c, maximize=True)
            out = np.empty(n, dtype=np.int64)
            out[rows] = cols
        else:
            out, v = _lap(np.ascontiguousarray(c), init, duals)
    perm = torch.from_numpy(out).to(cost.device)
    return (perm, v) if return_duals else perm
