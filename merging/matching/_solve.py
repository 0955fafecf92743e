"""Linear assignment solvers: maximise ``sum_i C[i, perm[i]]`` over permutations.

``"lap"``: our shortest-augmenting-path solver in C (``_lap.c``), exact, warm-started from
the previous assignment and column duals, which is what weight matching's sequence of
slowly changing problems needs. ``"sparse"``: the same method in C on each row's few best
columns, priced against the whole matrix where it lives (the GPU) until no column is left
that would improve it, so it is exact too, while the host reads O(n k) entries per round
instead of copying and scanning O(n^2). ``"scipy"``: SciPy's ``linear_sum_assignment``, the
exact reference. ``"auto"``: ``"sparse"`` for CUDA matrices and ``"lap"`` for others when the
extension was built, else ``"scipy"``.
``"auction"``: a synchronous auction in torch on the matrix's own device (CUDA), whose
near-optimal assignment and prices the C solver finishes; approximate (within ``n * eps``,
eps ~ 1e-7 of the entries), so weight matching uses it for its early sweeps only.
"""
from __future__ import annotations

import ctypes
import math
import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from graphs.registry import Registry

from .._native import load_library

__all__ = ["ASSIGNMENT_SOLVERS", "SOLVERS", "Assignment", "register_solver", "list_solvers", "resolve_solver",
           "lap_available", "solve_assignment", "solve_assignment_result"]

#: ``fn(cost, init, duals) -> (assignment, column duals or None)``, NumPy arrays
Solver = Callable[[Tensor, "Tensor | None", "np.ndarray | None"], "tuple[np.ndarray, np.ndarray | None]"]

#: the assignment solvers, in the order the CLI lists them (``--solver``)
ASSIGNMENT_SOLVERS: Registry[Solver | None] = Registry("solver")


def register_solver(name: str, *, description: str, needs_c: bool = False) -> Callable[[Solver | None], Solver | None]:
    """Decorator registering ``fn(cost, init, duals) -> (assignment, duals)`` as the solver ``name``.

    Args:
        name (str): the ``solver=`` / ``--solver`` name.
        description (str): one line for ``--help``.
        needs_c (bool, optional): the solver needs the C extension. (default: ``False``)

    Raises:
        ValueError: a malformed or already registered name.
    """
    return ASSIGNMENT_SOLVERS.register(name, description=description, caller="register_solver", needs_c=needs_c)


def list_solvers() -> list[str]:
    """The assignment solvers' names, in the order the CLI lists them."""
    return ASSIGNMENT_SOLVERS.names()


def _load_lap():
    lib = load_library(os.path.dirname(__file__), "_lap")
    if lib is not None:
        lib.ws_lap.restype = ctypes.c_int64
        lib.ws_lap.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                               ctypes.c_void_p, ctypes.c_int, ctypes.c_double, ctypes.c_double]
        lib.ws_lap_sparse.restype = ctypes.c_int64
        lib.ws_lap_sparse.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                                      ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                                      ctypes.c_double]
    return lib


_LAP = _load_lap()


def lap_available() -> bool:
    """Whether the C solver was built (``pip install`` compiles it when a compiler exists)."""
    return _LAP is not None


def resolve_solver(solver: str, cuda: bool = False, *, caller: str = "solve_assignment") -> str:
    """The solver that ``solver`` names here: ``"auto"`` is ``"sparse"`` for CUDA matrices and
    ``"lap"`` for others when the C extension was built, else ``"scipy"``.

    Raises:
        ValueError: an unknown solver (the message lists them), or one that needs the C
            extension where it was not built.
    """
    entry = ASSIGNMENT_SOLVERS.entry(solver, caller=caller)
    if solver == "auto":
        if _LAP is None:
            return "scipy"
        return "sparse" if cuda else "lap"
    if entry.info["needs_c"] and _LAP is None:
        raise ValueError(f"solve_assignment: the {solver!r} solver needs the C extension, which is not built "
                         "here (reinstall with a C compiler available); use solver='scipy'")
    return solver


_HOST = threading.local()


def _to_host(cost: Tensor) -> np.ndarray:
    """``cost`` as a float64 NumPy array. From CUDA, through a page-locked buffer kept per
    thread and reused (about twice the copy bandwidth of pageable memory; the matrices of
    one matching are all about the same size)."""
    if not cost.is_cuda:
        return cost.detach().to("cpu", torch.float64).numpy()
    n = cost.numel()
    buf = getattr(_HOST, "buffer", None)
    if buf is None or buf.numel() < n:
        buf = _HOST.buffer = torch.empty(n, dtype=torch.float64, pin_memory=True)
    out = buf[:n].view(cost.shape)
    out.copy_(cost.detach())  # synchronous: the solver reads it next
    return out.numpy()


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


SPARSE_K = 32  # candidate columns per row for the "sparse" solver


def _sparse(cost: Tensor, init: Tensor | None, duals, k: int | None = None, max_rounds: int = 20):
    """Exact assignment from a sparse solve on each row's ``k`` best columns plus ``init``'s,
    priced against the whole matrix where it lives: rows with a column whose reduced cost is
    negative under the returned duals get their most negative columns added, and the solve
    is repeated warm, until none is left (then the duals prove the dense optimum). After
    ``max_rounds`` (never seen in weight matching) the dense solver finishes, warm."""
    n = cost.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    dev = cost.device
    c = cost.detach().to(torch.float64)
    start = init.to(dev) if init is not None and len(init) == n else torch.arange(n, device=dev)
    k = min(SPARSE_K if k is None else k, n)
    warm = init is not None and duals is not None and len(duals) == n
    out = start.cpu().numpy().astype(np.int64) if warm else np.full(n, -1, dtype=np.int64)
    v = np.ascontiguousarray(duals, dtype=np.float64).copy() if warm else np.zeros(n)
    u = np.zeros(n)
    # candidates: each row's best columns in reduced cost under the last duals (the matrix
    # changed little since, so these are the columns the optimum and its pricing use)
    key = c + torch.from_numpy(v).to(dev)[None, :] if warm else c
    cols = torch.cat([torch.topk(key, k, dim=1, sorted=False).indices, start[:, None]], 1)
    scale = float(c.abs().max())
    tol = 1e-10 * max(1.0, scale)
    rows = torch.arange(n, device=dev)
    for _ in range(max_rounds):
        vals = np.ascontiguousarray(c.gather(1, cols).cpu().numpy())
        idx = np.ascontiguousarray(cols.cpu().numpy())
        rc = _LAP.ws_lap_sparse(n, idx.shape[1], idx.ctypes.data, vals.ctypes.data, out.ctypes.data,
                                u.ctypes.data, v.ctypes.data, int(warm), -1.0)
        if rc == -3:  # no perfect matching among the candidates (cannot happen: init's are in)
            break
        if rc < 0:
            raise RuntimeError(f"solve_assignment: the sparse C solver failed (code {rc})")
        warm = True
        # pricing, in maximisation form: the duals prove the optimum when no row has a column
        # with c_ij + v_j above its assigned one's (a negative reduced cost -c_ij - v_j - u_i)
        vt = torch.from_numpy(v).to(dev)
        xt = torch.from_numpy(out).to(dev)
        key = c + vt[None, :]
        bad = key.max(dim=1).values - key[rows, xt] > tol
        if not bool(bad.any()):
            return out, v
        extra = xt[:, None].expand(n, k).clone()
        extra[bad] = torch.topk(key[bad], k, dim=1, sorted=False).indices
        cols = torch.cat([cols, extra], 1)
    return _lap(np.ascontiguousarray(_to_host(cost)), torch.from_numpy(out) if warm else None,
                v if warm else None)


@dataclass(frozen=True)
class Assignment:
    """An assignment and the column duals that warm-start the next solve.

    Attributes:
        perm (Tensor): ``(n,)`` LongTensor on the matrix's device, ``perm[i]`` the column of row ``i``.
        duals (np.ndarray, optional): ``(n,)`` float64 column duals (``None`` from ``"scipy"``).
    """

    perm: Tensor
    duals: np.ndarray | None


def solve_assignment(cost: Tensor, *, solver: str = "auto", init: Tensor | None = None,
                     duals: np.ndarray | None = None, return_duals: bool = False) -> Tensor:
    """Maximum-weight perfect matching of a square similarity matrix.

    Args:
        cost: similarity matrix ``C``.
        solver (str, optional): one of :func:`list_solvers`: ``"auto"``, ``"lap"``, ``"sparse"``,
            ``"scipy"`` (exact) or ``"auction"`` (approximate, on ``cost``'s device). (default: ``"auto"``)
        init, duals (optional): warm start for ``"lap"``, ``"sparse"`` and ``"auction"``: the previous
            assignment and the column duals it returned (:func:`solve_assignment_result`). Ignored by
            ``"scipy"``.
        return_duals (bool, optional): deprecated: also return the duals; use
            :func:`solve_assignment_result`. (default: ``False``)

    Shapes:
        cost: ``(n, n)``; output: ``(n,)`` LongTensor on ``cost``'s device with
        ``output[i]`` the column assigned to row ``i``.

    Returns:
        The assignment.
    """
    result = solve_assignment_result(cost, solver=solver, init=init, duals=duals)
    if return_duals:
        warnings.warn("solve_assignment(return_duals=True) is deprecated; use solve_assignment_result",
                      DeprecationWarning, stacklevel=2)
        return result.perm, result.duals  # type: ignore[return-value]
    return result.perm


def solve_assignment_result(cost: Tensor, *, solver: str = "auto", init: Tensor | None = None,
                            duals: np.ndarray | None = None) -> Assignment:
    """:func:`solve_assignment`, returning the assignment with its column duals.

    Raises:
        ValueError: an unknown solver, a matrix that is not square, or NaN or Inf entries.
    """
    which = resolve_solver(solver, cost.is_cuda)
    if cost.ndim != 2 or cost.shape[0] != cost.shape[1]:
        raise ValueError(f"solve_assignment: expected a square matrix, got shape {tuple(cost.shape)}")
    # one reduction instead of an n x n mask: NaN and Inf propagate into the sum
    if not math.isfinite(float(cost.sum())) and not bool(torch.isfinite(cost).all()):
        raise ValueError("solve_assignment: the similarity matrix has NaN or Inf (are the weights finite?)")
    out, v = ASSIGNMENT_SOLVERS.get(which)(cost, init, duals)
    return Assignment(torch.from_numpy(out).to(cost.device), v)


# --------------------------------------------------------------------------- the solvers

register_solver("auto", description="sparse on a GPU, lap elsewhere, scipy without the C extension (default)")(None)


@register_solver("lap", description="our warm-started shortest-augmenting-path solver in C (exact)", needs_c=True)
def _solve_lap(cost: Tensor, init: Tensor | None, duals: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    return _lap(np.ascontiguousarray(_to_host(cost)), init, duals)


@register_solver("sparse", description="the same on each row's best columns, priced against the whole matrix: "
                                       "fastest with --device cuda (exact)", needs_c=True)
def _solve_sparse(cost: Tensor, init: Tensor | None, duals: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    return _sparse(cost, init, duals)


@register_solver("scipy", description="SciPy's linear_sum_assignment, the reference (exact)")
def _solve_scipy(cost: Tensor, init: Tensor | None, duals: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    rows, cols = linear_sum_assignment(_to_host(cost), maximize=True)
    out = np.empty(cost.shape[0], dtype=np.int64)
    out[rows] = cols
    return out, None


@register_solver("auction", description="GPU bidding for the early sweeps of weight matching, then lap "
                                        "(approximate, within n * eps)", needs_c=True)
def _solve_auction(cost: Tensor, init: Tensor | None, duals: np.ndarray | None
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    from ._auction import auction_assignment

    warm = init is not None and duals is not None and len(duals) == cost.shape[0]
    prices = torch.as_tensor(-np.asarray(duals), dtype=torch.float64, device=cost.device) if warm else None
    found = auction_assignment(cost.detach(), prices=prices, init=init if warm else None, finish=False)
    return _lap(_to_host(cost), found.perm, -found.prices.cpu().numpy(), slack=found.eps)


#: the solvers' names, in the order the CLI lists them
SOLVERS: tuple[str, ...] = tuple(list_solvers())
