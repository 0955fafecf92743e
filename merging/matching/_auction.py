"""An auction assignment solver in torch: it runs where the similarity matrix lives (CUDA).

Bertsekas' forward auction, synchronous (every unassigned row bids in the same round, one
batched operation), with epsilon-scaling and a warm start from the previous solve's prices
and assignment. Weight matching solves hundreds of slowly changing problems, so the prices
of the last sweep are most of the answer.

Two habits make it fast on a GPU, where a naive synchronous auction is known to crawl:

- **No tail.** A synchronous auction spends most of its rounds on the last few rows, which
  bid one at a time and start price wars. Each epsilon phase stops as soon as at most
  ``stop`` rows are unassigned; those rows and the free columns form a small problem that
  an exact solver finishes on the CPU, so the result is always a true permutation.
- **Rows are touched only when they bid.** A round reads ``C[free]``, not the whole matrix.

The result is epsilon-optimal for the final epsilon except on the rows handed over, which
are solved exactly among themselves: an approximate solver. Weight matching uses it for its
early sweeps and finishes with exact solves, warm-started from these prices, so its answer
is a true local optimum of the exact coordinate descent (see ``weight_matching(solver=)``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

__all__ = ["Auction", "auction_assignment"]


@dataclass(frozen=True)
class Auction:
    """What :func:`auction_assignment` found.

    Attributes:
        perm (Tensor): ``(n,)`` LongTensor, ``perm[i]`` the column of row ``i`` (``-1`` for rows
            left to the caller with ``finish=False``), on the matrix's device.
        prices (Tensor): ``(n,)`` float64 column prices, on the matrix's device.
        eps (float): the final epsilon: the bid-assigned rows are within ``n * eps`` of optimal.
    """

    perm: Tensor
    prices: Tensor
    eps: float


def _finish(c: Tensor, p: Tensor, row_obj: Tensor, obj_row: Tensor, reach: int) -> None:
    """Assign the unassigned rows exactly, together with the rows they compete with (in place).

    The free rows, plus the owners of each free row's ``reach`` best columns at the current
    prices, are re-assigned among their columns by an exact solver: the handed-over rows
    may displace the rows holding the columns they want most.
    """
    free = (row_obj < 0).nonzero().squeeze(1)
    if free.numel() == 0:
        return
    want = (c[free].double() - p).topk(min(reach, c.shape[1]), dim=1).indices.reshape(-1)
    owners = obj_row[want]
    rows = torch.unique(torch.cat([free, owners[owners >= 0]]))
    cols = torch.unique(torch.cat([(obj_row < 0).nonzero().squeeze(1), row_obj[rows][row_obj[rows] >= 0]]))
    sub = c[rows][:, cols].double().cpu().numpy()
    r, k = linear_sum_assignment(sub, maximize=True)
    rr, cc = rows[torch.from_numpy(r).to(c.device)], cols[torch.from_numpy(k).to(c.device)]
    row_obj[rr] = cc
    obj_row[cc] = rr


def _row_best(c: Tensor, p: Tensor, chunk: int = 1 << 24) -> Tensor:
    """``max_j (c[i, j] - p[j])`` per row, in float64, a bounded block of rows at a time."""
    step = max(1, chunk // max(1, c.shape[1]))
    return torch.cat([(c[i:i + step].double() - p).max(1).values for i in range(0, c.shape[0], step)])


def auction_assignment(c: Tensor, *, prices: Tensor | None = None, init: Tensor | None = None,
                       tol: float = 1e-7, stop: int | None = None, factor: float = 8.0, reach: int = 16,
                       max_rounds: int = 100_000, finish: bool = True) -> Auction:
    """Approximately maximise ``sum_i c[i, perm[i]]``.

    Args:
        c: ``(n, n)`` similarity matrix on any device (float32 is fine; prices are float64).
        prices, init (optional): warm start, the prices and assignment a previous call returned.
        tol (float, optional): the final epsilon, relative to the mean of the rows' largest
            entries: the bid-assigned rows are within ``n * eps`` of optimal. (default: ``1e-7``)
        stop (int, optional): end each epsilon phase when at most this many rows are
            unassigned (default: ``max(8, n // 64)``).
        factor (float, optional): epsilon shrinks by this factor per phase. (default: ``8``)
        reach (int, optional): the rows left unassigned are finished exactly together with
            the owners of their ``reach`` best columns. (default: ``16``)
        max_rounds (int, optional): bidding rounds per phase at most.
        finish (bool, optional): assign the rows left over exactly (see ``reach``); with
            ``False`` they are ``-1`` in ``perm``, for a caller that finishes them itself
            (``solve_assignment`` hands them to the C solver with these prices). (default: ``True``)

    Returns:
        Auction: the assignment, the column prices and the final epsilon.
    """
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"auction_assignment: expected a square matrix, got shape {tuple(c.shape)}")
    n, dev = c.shape[0], c.device
    if n == 0:
        return Auction(torch.zeros(0, dtype=torch.long, device=dev), torch.zeros(0, dtype=torch.float64, device=dev),
                       0.0)
    if not bool(torch.isfinite(c).all()):
        raise ValueError("auction_assignment: the similarity matrix has NaN or Inf (are the weights finite?)")
    stop = max(8, n // 64) if stop is None else max(0, int(stop))
    ar = torch.arange(n, device=dev)
    row_max = c.max(1).values
    span = float(row_max.max() - c.min())
    if span == 0.0:  # every assignment is optimal
        zero = torch.zeros(n, dtype=torch.float64, device=dev)
        return Auction(ar.clone(), zero, 0.0)
    eps_final = max(tol * float(row_max.double().abs().mean()), span * 1e-12)
    warm = prices is not None and init is not None and len(prices) == n
    if warm:
        p = prices.to(dev, torch.float64).clone()
        row_obj = init.to(dev).clone()
        eps = max(eps_final, span * 1e-4)
    else:
        p = torch.zeros(n, dtype=torch.float64, device=dev)
        row_obj = torch.full((n,), -1, dtype=torch.long, device=dev)
        eps = max(eps_final, span / 4)
    while True:
        # keep the rows that satisfy epsilon-complementary slackness at this epsilon
        best = _row_best(c, p)
        safe = row_obj.clamp(min=0)
        cur = c[ar, safe].double() - p[safe]
        ok = (row_obj >= 0) & (cur >= best - eps)
        row_obj = torch.where(ok, row_obj, torch.full_like(row_obj, -1))
        obj_row = torch.full((n,), -1, dtype=torch.long, device=dev)
        obj_row[row_obj[ok]] = ar[ok]
        for _ in range(max_rounds):
            free = (row_obj < 0).nonzero().squeeze(1)
            if free.numel() <= stop:
                break
            v = c[free].double() - p
            top = v.topk(2, dim=1)
            j1 = top.indices[:, 0]
            bid = p[j1] + (top.values[:, 0] - top.values[:, 1]) + eps
            high = torch.full((n,), -float("inf"), dtype=torch.float64, device=dev).scatter_reduce(0, j1, bid, "amax")
            win = bid >= high[j1]
            # one winner per column among equal bids: the lowest row
            who = torch.full((n,), n, dtype=torch.long, device=dev).scatter_reduce(0, j1[win], free[win], "amin")
            got = who < n
            cols = ar[got]
            rows = who[got]
            prev = obj_row[cols]
            row_obj[prev[prev >= 0]] = -1
            obj_row[cols] = rows
            row_obj[rows] = cols
            p[cols] = high[cols]
        if eps <= eps_final:
            break
        eps = max(eps / factor, eps_final)
    if finish:
        _finish(c, p, row_obj, obj_row, reach)
    return Auction(row_obj, p, eps)
