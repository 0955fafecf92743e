"""The data-derived prior of a residual hypernetwork: the smoothed source merged down to any width.

After smoothing (:func:`merging.hypernet.smooth`) neighbouring units of a hidden group are alike,
so a narrower network is obtained by cutting the group's axis into ``n`` contiguous runs and
merging each run into one unit. The runs come from a greedy agglomeration along the axis: start
from the ``N`` units and repeatedly merge the two adjacent runs whose merge costs least, which
gives one nested partition per width ``n = N, N - 1, ..., 1``.

A unit ``j`` with incoming weights ``a_j`` (every tensor with the group on axis 0: weight rows,
bias, normalisation parameters) and outgoing weights ``b_j`` contributes
``b_j relu(a_j . x)`` downstream. Write ``a_j = |a_j| d_j`` and let ``s_j = |a_j| |b_j|`` be its
importance. A run ``C`` becomes one unit with incoming weights ``a_C = k_C d_C``, where ``d_C`` is
the unit direction of the ``s^2``-weighted mean of the ``d_j`` and ``k_C`` the ``s^2``-weighted mean
of the ``|a_j|``, and outgoing weights ``sum_j alpha_j b_j`` with
``alpha_j = max(0, a_j . a_C) / |a_C|^2`` (so ``a_j ~ alpha_j a_C``: for a positively homogeneous
activation, ``relu(a_j . x) ~ alpha_j relu(a_C . x)``). The cost of merging two runs is Ward's
criterion on the directions with weights ``s_j^2`` (about the squared error that merging adds
downstream): units that matter little merge first, whatever their direction, and important
units merge only with near-copies of themselves. A single unit is left as it is, so the full
width reproduces the source exactly.

Wider networks than the source split each unit (:func:`merging.hypernet._coords.area_matrices`).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from graphs import Structure

__all__ = ["cluster_partitions", "merge_matrices", "merge_partitions", "runs", "unit_io"]

_EPS = 1e-12


def unit_io(structure: Structure, state: Mapping[str, Tensor], group: str) -> tuple[Tensor, Tensor]:
    """``(incoming, outgoing)`` weights of every unit of ``group``, one row per unit.

    Incoming: every parameter with the group on axis 0; outgoing: every parameter with the group on
    another axis (a flattened ``C x H x W`` axis gives each unit its ``H x W`` entries).

    Shapes:
        output: ``(N, a)`` and ``(N, b)`` (``b`` may be 0: a group with no consumer).
    """
    n = structure.groups[group].size
    inc, out = [], []
    for name, axis in structure.groups[group].members:
        if structure.is_buffer(name) or name not in state:
            continue
        t = state[name].detach().float().cpu().movedim(axis, 0)
        rows = t.reshape(n, -1)  # a flattened C x H x W axis is channel-major
        (inc if axis == 0 else out).append(rows)
    if not inc:
        raise ValueError(f"merge: group {group!r} is the output axis of no parameter")
    return torch.cat(inc, 1), (torch.cat(out, 1) if out else torch.zeros(n, 0))


def _unit_stats(inc: Tensor, out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per unit: direction ``d_j``, incoming norm ``|a_j|`` and weight ``s_j^2`` (float64)."""
    inc, out = inc.double(), out.double()
    norm_in = inc.norm(dim=1)
    d = inc / norm_in.clamp(min=_EPS)[:, None]
    norm_out = out.norm(dim=1) if out.shape[1] else torch.ones_like(norm_in)
    return d, norm_in, (norm_in * norm_out).pow(2)


def merge_partitions(inc: Tensor, out: Tensor) -> list[list[int]]:
    """Greedy adjacent agglomeration: ``parts[n]`` lists the first unit of each of the ``n`` runs.

    ``parts`` has ``N + 1`` entries (``parts[0]`` is empty); ``parts[N]`` is ``[0, 1, ..., N - 1]``
    and each ``parts[n - 1]`` is ``parts[n]`` with two adjacent runs merged (see the module text).
    """
    d, _, w = _unit_stats(inc, out)
    n = len(d)
    starts = list(range(n))
    weight = [float(x) for x in w]
    mean = [d[j].clone() for j in range(n)]   # w-weighted mean direction of each run
    parts: list[list[int]] = [[] for _ in range(n + 1)]
    parts[n] = list(starts)

    def cost(i: int) -> float:  # merging runs i and i + 1
        wa, wb = weight[i], weight[i + 1]
        if wa + wb <= _EPS:
            return 0.0
        return wa * wb / (wa + wb) * float((mean[i] - mean[i + 1]).pow(2).sum())

    costs = [cost(i) for i in range(n - 1)]
    for m in range(n - 1, 0, -1):
        i = min(range(len(costs)), key=costs.__getitem__)
        wa, wb = weight[i], weight[i + 1]
        mean[i] = (mean[i] * wa + mean[i + 1] * wb) / (wa + wb) if wa + wb > _EPS else (mean[i] + mean[i + 1]) / 2
        weight[i] = wa + wb
        del starts[i + 1], weight[i + 1], mean[i + 1], costs[i]
        if i < len(costs):
            costs[i] = cost(i)
        if i > 0:
            costs[i - 1] = cost(i - 1)
        parts[m] = list(starts)
    return parts


def cluster_partitions(inc: Tensor, out: Tensor) -> list[list[list[int]]]:
    """Greedy agglomeration without the adjacency constraint: ``parts[n]`` lists ``n`` clusters of units.

    Same cost as :func:`merge_partitions` (Ward's criterion on the directions, weights ``s_j^2``),
    but any two clusters may merge. Each cluster is a sorted list of units; the clusters are
    ordered by the mean position of their units.
    """
    d, _, w = _unit_stats(inc, out)
    n = len(d)
    mean, weight = d.clone(), w.clone()
    members: list[list[int] | None] = [[j] for j in range(n)]
    alive = torch.ones(n, dtype=torch.bool)

    def costs(a: int) -> Tensor:
        tot = weight[a] + weight
        c = torch.where(tot > _EPS, weight[a] * weight / tot.clamp(min=_EPS), torch.zeros_like(tot)) \
            * (mean - mean[a]).pow(2).sum(1)
        c[~alive] = float("inf")
        c[a] = float("inf")
        return c

    cost = torch.stack([costs(a) for a in range(n)]) if n > 1 else torch.full((n, n), float("inf"))
    parts: list[list[list[int]]] = [[] for _ in range(n + 1)]

    def snapshot() -> list[list[int]]:
        cl = [sorted(m) for m in members if m is not None]
        return sorted(cl, key=lambda m: sum(m) / len(m))

    parts[n] = snapshot()
    for m in range(n - 1, 0, -1):
        flat = int(cost.argmin())
        a, b = divmod(flat, n)
        a, b = min(a, b), max(a, b)
        wa, wb = weight[a], weight[b]
        mean[a] = (mean[a] * wa + mean[b] * wb) / (wa + wb) if wa + wb > _EPS else (mean[a] + mean[b]) / 2
        weight[a] = wa + wb
        members[a] = members[a] + members[b]  # type: ignore[operator]
        members[b] = None
        alive[b] = False
        cost[b, :] = float("inf")
        cost[:, b] = float("inf")
        row = costs(a)
        cost[a, :] = row
        cost[:, a] = row
        parts[m] = snapshot()
    return parts


def merge_matrices(inc: Tensor, out: Tensor, clusters: list[list[int]]) -> tuple[Tensor, Tensor]:
    """``(P, Q)``, each ``(n, N)``, that merge each of the ``n`` clusters of units into one unit.

    Row ``i`` of ``P`` gives cluster ``i``'s incoming weights ``a_C`` as a combination of the source
    rows; ``Q[i, j] = alpha_j`` for the units ``j`` of cluster ``i``. A one-unit cluster gives an
    identity row.
    """
    d, norm_in, w = _unit_stats(inc, out)
    n_full, n = len(d), len(clusters)
    p = torch.zeros(n, n_full, dtype=torch.float64)
    q = torch.zeros(n, n_full, dtype=torch.float64)
    inc = inc.double()
    for i, members in enumerate(clusters):
        idx = torch.tensor(members, dtype=torch.long)
        if len(members) == 1:
            p[i, idx] = q[i, idx] = 1.0
            continue
        wi = w[idx]
        if float(wi.sum()) <= _EPS:  # nothing in the cluster matters: a plain average, outputs summed
            p[i, idx] = 1.0 / len(members)
            q[i, idx] = 1.0
            continue
        mu = (wi[:, None] * d[idx]).sum(0) / wi.sum()
        k = float((wi * norm_in[idx]).sum() / wi.sum())
        scale = k / max(float(mu.norm()), _EPS)
        # a_C = scale * mu = sum_j (scale w_j / (W |a_j|)) a_j
        p[i, idx] = scale * wi / wi.sum() / norm_in[idx].clamp(min=_EPS)
        a_c = p[i, idx] @ inc[idx]
        q[i, idx] = (inc[idx] @ a_c).clamp(min=0) / max(float(a_c.pow(2).sum()), _EPS)
    return p.float(), q.float()


def runs(starts: list[int], full: int) -> list[list[int]]:
    """The clusters of the contiguous runs that begin at ``starts``."""
    bounds = list(starts) + [full]
    return [list(range(bounds[i], bounds[i + 1])) for i in range(len(starts))]
