"""Smoothing permutation: order each hidden group so that neighbouring units have similar weights.

Neural Metamorphosis (NeuMeta, Yang et al., ECCV 2024, arXiv 2410.11878) learns the weights
of a network as a continuous function of their coordinates. A trained network's hidden units
come in an arbitrary order, so that function would jump from one unit to the next. Before
fitting it, each hidden group is permuted along a short Hamiltonian path through its units
(an open travelling-salesman tour) where the distance between two units is the Euclidean
distance between everything that moves with them: their incoming weights, bias, normalisation
parameters and outgoing weights. The permutation is applied through the traced
:class:`graphs.Structure`, so the network computes exactly the same function.

The distance between two units of one group does not depend on how the *other* groups are
ordered (their permutations move the entries of both rows alike), so each group is solved
on its own.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from graphs import Structure, group_rows, permute

__all__ = ["SmoothResult", "smooth", "unit_features", "path_length", "shortest_path"]

_METHODS = ("2opt", "greedy", "christofides", "none")


@dataclass
class SmoothResult:
    """The outcome of :func:`smooth`.

    Attributes:
        state (dict[str, Tensor]): the permuted state dict (same function as the input).
        perms (dict[str, Tensor]): group -> permutation, ``new[i] = old[perm[i]]``.
        before (dict[str, float]): group -> total distance between neighbouring units, as given.
        after (dict[str, float]): the same after smoothing (never larger than ``before``).
    """

    state: dict[str, Tensor]
    perms: dict[str, Tensor]
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)

    @property
    def total_before(self) -> float:
        return float(sum(self.before.values()))

    @property
    def total_after(self) -> float:
        return float(sum(self.after.values()))


def unit_features(structure: Structure, state: Mapping[str, Tensor], group: str) -> Tensor:
    """One row per unit of ``group``: every parameter entry that moves with it, concatenated.

    Buffers (BatchNorm running statistics) are left out: they describe data, not weights.

    Shapes:
        output: ``(n, r)`` with ``n = structure.groups[group].size``.
    """
    rows = [m.detach().float().reshape(m.shape[0], -1)
            for name, m in group_rows(structure, state, group) if not structure.is_buffer(name)]
    if not rows:
        raise ValueError(f"unit_features: group {group!r} acts on no parameter of the state dict")
    return torch.cat([r.cpu() for r in rows], dim=1)


def path_length(features: Tensor, order: Tensor | None = None) -> float:
    """Sum of Euclidean distances between consecutive rows of ``features[order]``."""
    f = features if order is None else features[order]
    if len(f) < 2:
        return 0.0
    return float((f[1:] - f[:-1]).double().norm(dim=1).sum())


def _distances(features: Tensor) -> np.ndarray:
    f = features.double()
    return torch.cdist(f, f).numpy()


def _nearest_neighbour(d: np.ndarray, start: int) -> list[int]:
    n = len(d)
    seen = np.zeros(n, dtype=bool)
    order = [start]
    seen[start] = True
    for _ in range(n - 1):
        row = np.where(seen, np.inf, d[order[-1]])
        nxt = int(np.argmin(row))
        order.append(nxt)
        seen[nxt] = True
    return order


def _two_opt(d: np.ndarray, order: list[int], max_sweeps: int = 50) -> list[int]:
    """Improve an open path by 2-opt moves (segment reversals), including reversals of a suffix.

    Reversing ``path[i+1 .. j]`` replaces the edges ``(p_i, p_{i+1})`` and ``(p_j, p_{j+1})``
    by ``(p_i, p_j)`` and ``(p_{i+1}, p_{j+1})``; for ``j`` the last position only the first
    edge exists (an open path has free ends). Each sweep takes the best move for every ``i``.
    """
    p = np.asarray(order, dtype=np.int64)
    n = len(p)
    if n < 4:
        return p.tolist()
    for _ in range(max_sweeps):
        improved = False
        for i in range(n - 2):
            a, b = p[i], p[i + 1]
            js = np.arange(i + 2, n)
            c = p[js]
            nxt = np.where(js + 1 < n, p[np.minimum(js + 1, n - 1)], -1)
            has_next = nxt >= 0
            old = d[a, b] + np.where(has_next, d[c, np.maximum(nxt, 0)], 0.0)
            new = d[a, c] + np.where(has_next, d[b, np.maximum(nxt, 0)], 0.0)
            gain = old - new
            k = int(np.argmax(gain))
            if gain[k] > 1e-12 * (1.0 + old[k]):
                j = int(js[k])
                p[i + 1:j + 1] = p[i + 1:j + 1][::-1].copy()
                improved = True
        # reversing a prefix (free start): edge (p_j, p_{j+1}) -> (p_0, p_{j+1})
        for j in range(1, n - 1):
            if d[p[0], p[j + 1]] < d[p[j], p[j + 1]] - 1e-12 * (1.0 + d[p[j], p[j + 1]]):
                p[:j + 1] = p[:j + 1][::-1].copy()
                improved = True
        if not improved:
            break
    return p.tolist()


def _networkx_path(d: np.ndarray, method: str, seed: int) -> list[int]:
    import networkx as nx
    from networkx.algorithms import approximation as approx

    n = len(d)
    g = nx.complete_graph(n)
    for u, v in g.edges:
        g[u][v]["weight"] = float(d[u, v])
    algo = approx.christofides if method == "christofides" else approx.greedy_tsp
    cycle = approx.traveling_salesman_problem(g, weight="weight", cycle=True, method=algo)
    cycle = cycle[:-1] if len(cycle) > 1 and cycle[0] == cycle[-1] else cycle
    # an open path: drop the longest edge of the tour
    edges = [d[cycle[i], cycle[(i + 1) % n]] for i in range(n)]
    cut = int(np.argmax(edges))
    return [int(u) for u in cycle[cut + 1:] + cycle[:cut + 1]]


def shortest_path(features: Tensor, *, method: str = "2opt", restarts: int = 4, seed: int = 0) -> Tensor:
    """An order of the rows of ``features`` along a short open Hamiltonian path.

    Args:
        features (Tensor): one row per unit, ``(n, r)``.
        method (str, optional): ``"2opt"``: nearest-neighbour tours from ``restarts`` start units,
            each polished by 2-opt (ours); ``"greedy"`` or ``"christofides"``: the tour of
            :func:`networkx.algorithms.approximation.traveling_salesman_problem` with that
            method, cut at its longest edge and polished by 2-opt; ``"none"``: the identity.
            (default: ``"2opt"``)
        restarts (int, optional): start units tried by ``"2opt"``. (default: ``4``)
        seed (int, optional): picks the start units. (default: ``0``)

    Returns:
        LongTensor ``(n,)``: the order; never longer than the identity order (which is kept
        when no heuristic beats it).
    """
    if method not in _METHODS:
        raise ValueError(f"shortest_path: unknown method {method!r}; choose one of: {', '.join(_METHODS)}")
    n = len(features)
    identity = list(range(n))
    if n < 3 or method == "none":
        return torch.arange(n)
    d = _distances(features)
    candidates = [identity]
    if method == "2opt":
        rng = np.random.default_rng(seed)
        starts = {int(np.argmax(d.sum(1)))} | {int(s) for s in rng.choice(n, size=min(n, max(restarts, 1) - 1),
                                                                            replace=False)}
        for s in sorted(starts):
            candidates.append(_two_opt(d, _nearest_neighbour(d, s)))
    else:
        candidates.append(_two_opt(d, _networkx_path(d, method, seed)))

    def length(order: list[int]) -> float:
        o = np.asarray(order)
        return float(d[o[:-1], o[1:]].sum())

    best = min(candidates, key=length)
    return torch.tensor(best, dtype=torch.long)


def smooth(structure: Structure, state: Mapping[str, Tensor], *, method: str = "2opt", groups=None,
           restarts: int = 4, seed: int = 0) -> SmoothResult:
    """Permute every hidden group of ``state`` along a short path through its units.

    Args:
        structure (Structure): from :func:`graphs.trace`.
        state (Mapping[str, Tensor]): the trained network's state dict (not modified).
        method (str, optional): see :func:`shortest_path`. (default: ``"2opt"``)
        groups (iterable of str, optional): the groups to smooth. (default: all)
        restarts (int, optional): see :func:`shortest_path`. (default: ``4``)
        seed (int, optional): see :func:`shortest_path`. (default: ``0``)

    Returns:
        SmoothResult: the permuted state dict (the same function), the permutations and each
        group's total neighbour distance before and after.

    Raises:
        KeyError: a group not in the structure.

    Example:
        >>> r = smooth(structure, state)  # doctest: +SKIP
        >>> r.total_after <= r.total_before  # doctest: +SKIP
        True
    """
    names = list(structure.groups) if groups is None else list(groups)
    perms: dict[str, Tensor] = {}
    before: dict[str, float] = {}
    after: dict[str, float] = {}
    for g in names:
        if g not in structure.groups:
            raise KeyError(f"smooth: unknown group {g!r}; the structure's groups are {sorted(structure.groups)}")
        f = unit_features(structure, state, g)
        order = shortest_path(f, method=method, restarts=restarts, seed=seed)
        perms[g] = order
        before[g] = path_length(f)
        after[g] = path_length(f, order)
        if not math.isfinite(after[g]):
            raise ValueError(f"smooth: group {g!r} has non-finite weights")
    return SmoothResult(permute(structure, state, perms), perms, before, after)
