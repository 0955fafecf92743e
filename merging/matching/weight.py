"""Weight matching (Git Re-Basin, Algorithm 1) on any traced structure."""
from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from graphs import Structure, Unit, axis_index, group_rows
from graphs import axis_groups as _axis_groups

from ._solve import solve_assignment_result

__all__ = ["WeightMatchingResult", "coordinate_descent", "matching_keys", "matching_objective",
           "matching_state", "similarity", "start_permutations", "weight_matching",
           "weight_matching_result", "work_dtype"]


@dataclass(frozen=True)
class WeightMatchingResult:
    """What a weight matching found.

    Attributes:
        perms (dict[str, Tensor]): group -> LongTensor on the CPU; apply with
            ``weightspace.permute(structure, state_b, perms)``.
        sweeps (int): sweeps of the coordinate descent over the groups.
        objective (float): :func:`matching_objective` of the result.
        solve_seconds (float): wall time in the assignment solver, host transfers included.
        start (str): the start the result descends from: ``"identity"``, or ``"unit signatures"``
            (:func:`from_two_starts`).
    """

    perms: dict[str, Tensor]
    sweeps: int
    objective: float
    solve_seconds: float = 0.0
    start: str = "identity"

    @property
    def info(self) -> dict:
        """``{"sweeps", "objective", "solve_seconds"}``, the dict that ``return_info=True`` gave."""
        return {"sweeps": self.sweeps, "objective": self.objective, "solve_seconds": self.solve_seconds}


def work_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The dtype two (or more) floating tensors are compared in: their promotion, at least float32."""
    work = torch.float32
    for d in dtypes:
        work = torch.promote_types(work, d)
    return work


def matching_keys(structure: Structure, states: Sequence[Mapping[str, Tensor]], include_buffers: bool = False
                  ) -> dict[str, torch.dtype]:
    """The tensors weight matching uses, each with the dtype it is computed in.

    A tensor counts when the structure knows it and it is floating point in every state; integer
    and boolean tensors (counters, index buffers) are left out, as are buffers unless asked for.
    States of different float dtypes (float32 against float64, bfloat16 against float16) are
    compared in their promoted dtype, at least float32.
    """
    first = states[0]
    out = {}
    for k, v in first.items():
        if k not in structure.axes or (structure.is_buffer(k) and not include_buffers):
            continue
        ts = [s[k] for s in states if k in s]
        if len(ts) == len(states) and all(t.is_floating_point() for t in ts):
            out[k] = work_dtype(*(t.dtype for t in ts))
    return out


def matching_state(state: Mapping[str, Tensor], structure: Structure, device,
                   include_buffers: bool = False, keys: Mapping[str, torch.dtype] | None = None) -> dict[str, Tensor]:
    """``state``'s tensors named by ``keys`` (default: its own floating ones), on ``device`` in
    the dtype ``keys`` gives (default: low precision widened to float32)."""
    if keys is None:
        keys = matching_keys(structure, [state], include_buffers)
    return {k: state[k].detach().to(device=device, dtype=dt) for k, dt in keys.items()}


def similarity(structure: Structure, state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor],
               group: str, perms: Mapping[str, Tensor] | None = None) -> Tensor:
    """``C[i, j]``: how well unit ``i`` of A matches unit ``j`` of B for one group.

    The sum, over every tensor axis the group acts on, of the inner products of the
    entries that move with each unit; other groups of B are permuted by ``perms`` first.

    Shapes:
        output: ``(n, n)`` with ``n = structure.groups[group].size``.
    """
    a = {k: v for k, v in state_a.items() if not structure.is_buffer(k)}
    b = {k: v for k, v in state_b.items() if not structure.is_buffer(k)}
    return _similarity(structure, [m for _, m in group_rows(structure, a, group)], b, group, perms)


def _similarity(structure, rows_a, state_b, group, perms) -> Tensor:
    rows_b = [m for _, m in group_rows(structure, state_b, group, perms)]
    dev = rows_a[0].device if rows_a else torch.device("cpu")
    return _accumulate(structure.groups[group].size, rows_a, rows_b, dev)


def _accumulate(n: int, rows_a, rows_b, device) -> Tensor:
    device = torch.device(device)
    c = torch.zeros(n, n, device=device, dtype=torch.float64)
    if rows_a:
        # one matmul over all occurrences: (n, R) @ (R, n)
        ra, rb = torch.cat(rows_a, 1), torch.cat(rows_b, 1)
        work = work_dtype(ra.dtype, rb.dtype)
        c += (ra.to(work) @ rb.to(work).T).to(c.dtype)
    return c


class _IncrementalSimilarity:
    """One group's similarity matrix, updated by low-rank corrections.

    The matrix is ``C = sum_k A_k P(B_k)^T`` over the tensor occurrences ``k`` touching the
    group, where the other groups' permutation ``P`` only reorders the columns (the entries
    moving with each unit). Only the sum is stored: when the columns of occurrence ``k``
    change, ``C += A_k[:, changed] (B_new - B_cur)[:, changed]^T``, in ``O(n^2 |changed|)``,
    so a call costs nothing for the occurrences that did not move and no pass over per-tensor
    matrices (a ResNet-50 stage's residual group sums about twenty). Tensors no other group
    touches never change and cost nothing after the first call.

    An occurrence whose axis is the group's own (every linear or convolution weight, bias
    and normalisation vector) keeps only its column order: a vector over the columns of B's
    row matrix, built from the other axes' permutations. Occurrences inside a packed axis
    (attention's ``[q; k; v]``, heads) track an index matrix into B's flat tensor instead.
    """

    def __init__(self, structure: Structure, a, b, group: str, device) -> None:
        self.structure, self.group = structure, group
        self.n = n = structure.groups[group].size
        self.slots: dict[str, list[int]] = {}  # tensor -> its occurrence slots
        self.rows_a: list[Tensor] = []
        self.fast: list[tuple[int, list] | None] = []  # (axis, other axes) for column-vector slots
        self.b_rows: list[Tensor | None] = []  # fast slots: B as (n, r) rows, unpermuted
        self.b_flat: dict[str, Tensor] = {}
        self.index: dict[str, Tensor] = {}
        generic: list[str] = []
        for name, axis_i in structure.groups[group].members:
            if name not in a or name in self.slots or name in generic:
                continue
            axes = structure.axes[name]
            own = [i for i, ax in enumerate(axes) if ax is not None and group in _axis_groups(ax)]
            if len(own) == 1 and isinstance(axes[axis_i], Unit):
                self.slots[name] = [len(self.rows_a)]
                self.rows_a.append(a[name].movedim(axis_i, 0).reshape(n, -1))
                self.b_rows.append(b[name].movedim(axis_i, 0).reshape(n, -1).contiguous())
                self.fast.append((axis_i, [(i, ax, a[name].shape[i]) for i, ax in enumerate(axes) if i != axis_i]))
            else:
                generic.append(name)
        if generic:
            # int32 halves the memory traffic of permuting the layouts (the matrices fit easily)
            for k in generic:
                self.b_flat[k] = b[k].reshape(-1)
                self.index[k] = torch.arange(b[k].numel(), device=b[k].device,
                                             dtype=torch.int32 if b[k].numel() < 2**31 else torch.int64
                                             ).reshape(b[k].shape)
            for name, m in group_rows(structure, {k: a[k] for k in generic}, group):
                self.slots.setdefault(name, []).append(len(self.rows_a))
                self.rows_a.append(m)
                self.b_rows.append(None)
                self.fast.append(None)
        # the other groups each tensor's layout depends on, and the permutations last seen
        self.deps = {k: sorted(_tensor_groups(structure, k) - {group}) for k in self.slots}
        self.seen: dict[str, list | None] = {k: None for k in self.slots}
        self.last: list[Tensor | None] = [None] * len(self.rows_a)
        self.dtype = torch.float64  # corrections accumulate in the sum: keep them exact
        # buffers reused across calls: a fresh n x n tensor is mapped and page-faulted anew
        # on every call (measured: 10x the cost of an add): the sum, one product, and B's
        # rows in each occurrence's current layout
        self.total: Tensor | None = None
        self.scratch: Tensor | None = None
        self.gathered: list[Tensor | None] = [None] * len(self.rows_a)

    def _columns(self, k: int, perms) -> Tensor:
        """Fast slot ``k``: B's row-matrix column shown in each column under ``perms``."""
        col = None
        for _, ax, size in self.fast[k][1]:
            idx = None if ax is None else axis_index(ax, perms, self.rows_a[k].device)
            if idx is None:
                idx = torch.arange(size, device=self.rows_a[k].device)
            col = idx if col is None else (col[:, None] * size + idx[None, :]).reshape(-1)
        if col is None:
            col = torch.zeros(1, dtype=torch.long, device=self.rows_a[k].device)
        return col

    def __call__(self, perms) -> Tensor:
        # only tensors whose other groups' permutations changed are looked at again
        stale = [k for k in self.slots
                 if self.seen[k] is None or any(perms[h] is not p for h, p in zip(self.deps[k], self.seen[k]))]
        if stale:
            others = {g: p for g, p in perms.items() if g != self.group}
            slow = [name for name in stale if self.fast[self.slots[name][0]] is None]
            for name in stale:
                k = self.slots[name][0]
                if self.fast[k] is not None:
                    self._update_fast(k, self._columns(k, others))
            if slow:
                occ = group_rows(self.structure, {k: self.index[k] for k in slow}, self.group, perms)
                slot_iter = [k for name in slow for k in self.slots[name]]
                for k, (name, idx) in zip(slot_iter, occ):
                    self._update(k, name, idx)
            for name in stale:
                self.seen[name] = [perms[h] for h in self.deps[name]]
        return self._total()

    def _total(self) -> Tensor:
        if self.total is None:
            dev = self.rows_a[0].device if self.rows_a else "cpu"
            self.total = torch.zeros(self.n, self.n, dtype=self.dtype, device=dev)
        return self.total

    def _product(self, a_rows: Tensor, b_rows: Tensor) -> Tensor:
        """``a_rows @ b_rows.T`` into a scratch matrix shared by this group's tensors."""
        if self.scratch is None or self.scratch.dtype != a_rows.dtype:
            self.scratch = torch.empty(self.n, self.n, dtype=a_rows.dtype, device=a_rows.device)
        return torch.mm(a_rows, b_rows.T, out=self.scratch)

    def _add(self, k: int, a_cols: Tensor, b_cols: Tensor) -> None:
        """``total += a_cols @ b_cols.T``: a new occurrence, or a correction (``b_cols`` the change)."""
        total = self._total()
        if 8 * b_cols.shape[1] <= a_cols.shape[0] or 8 * b_cols.shape[1] <= self.rows_a[k].shape[1]:
            # a thin correction: one fused float64 addmm beats a float32 product plus a
            # mixed-precision add over the whole matrix
            total.addmm_(a_cols.to(total.dtype), b_cols.to(total.dtype).T)
        else:
            total.add_(self._product(a_cols, b_cols))

    def _update_fast(self, k: int, col: Tensor) -> None:
        a_rows, b_rows, last = self.rows_a[k], self.b_rows[k], self.last[k]
        if last is None:
            self.gathered[k] = b_rows.index_select(1, col)
            self._add(k, a_rows, self.gathered[k])
        else:
            changed = (col != last).nonzero().squeeze(1)
            if len(changed) == 0:
                return
            # most columns moved: correct them all, through views instead of gathered copies
            cols = changed if 4 * len(changed) <= 3 * len(col) else slice(None)
            cur = self.gathered[k]
            new = b_rows.index_select(1, col[cols])
            delta = new - cur[:, cols]
            cur[:, cols] = new
            self._add(k, a_rows[:, cols], delta)
        self.last[k] = col

    def _update(self, k: int, name: str, idx: Tensor) -> None:
        a_rows, b_flat, last = self.rows_a[k], self.b_flat[name], self.last[k]
        if last is None:
            self._add(k, a_rows, b_flat.index_select(0, idx.reshape(-1)).view(idx.shape))
        else:
            changed = (idx != last).any(0).nonzero().squeeze(1)
            if len(changed) == 0:
                self.last[k] = idx
                return
            delta = b_flat[idx[:, changed]] - b_flat[last[:, changed]]
            self._add(k, a_rows[:, changed], delta)
        self.last[k] = idx


def _tensor_groups(structure: Structure, name: str) -> set[str]:
    from graphs import axis_groups
    return {g for a in structure.axes[name] for g in axis_groups(a)}


def _neighbours(structure: Structure) -> dict[str, set[str]]:
    from graphs import axis_groups
    out: dict[str, set[str]] = {g: set() for g in structure.groups}
    for ax in structure.axes.values():
        gs = {g for a in ax for g in axis_groups(a)}
        for g in gs:
            out[g] |= gs - {g}
    return out


def matching_objective(structure: Structure, state_a: Mapping[str, Tensor],
                       state_b: Mapping[str, Tensor], perms: Mapping[str, Tensor]) -> float:
    """``sum_k <A_k, P(B)_k>`` over every permuted floating parameter (larger is better)."""
    from graphs import permute
    names = [k for k, v in state_a.items()
             if k in state_b and v.is_floating_point() and state_b[k].is_floating_point()
             and not structure.is_buffer(k)
             and any(a is not None for a in structure.axes.get(k, ()))]
    pb = permute(structure, {k: state_b[k] for k in names}, perms)
    total = 0.0
    for k in names:
        total += float(torch.dot(state_a[k].reshape(-1).double(), pb[k].reshape(-1).double()))
    return total


def weight_matching(structure: Structure, state_a: Mapping[str, Tensor],
                    state_b: Mapping[str, Tensor], *, max_iter: int = 100, seed: int = 0,
                    init: Mapping[str, Tensor] | None = None, solver: str = "auto",
                    device: str | torch.device | None = None, progress: bool = False,
                    groups: list[str] | None = None, include_buffers: bool = False,
                    restarts: int = 1, return_info: bool = False) -> dict[str, Tensor]:
    """Permutations of B's hidden units that make its weights closest to A's.

    Coordinate descent over the groups (Ainsworth et al., "Git Re-Basin: Merging Models
    modulo Permutation Symmetries", https://arxiv.org/abs/2209.04836, Algorithm 1): every
    sweep visits the groups in a fresh random order and solves, for each, the linear
    assignment over the sum of all tensors that touch it (BatchNorm statistics and the
    blocks of attention heads included). Stops after a sweep without strict improvement
    or at ``max_iter`` sweeps.

    Args:
        structure: from :func:`graphs.trace`.
        state_a, state_b: state dicts of the same architecture (not modified).
        max_iter (int, optional): maximum number of sweeps. (default: ``100``)
        seed (int, optional): seeds the order of the groups. (default: ``0``)
        init (dict, optional): warm start (group -> permutation). (default: identity)
        solver (str, optional): ``"lap"`` (our warm-started exact C solver), ``"sparse"`` (the
            same on each row's best columns, priced against the whole matrix on its device:
            exact, and the fastest where the similarities live on a GPU), ``"scipy"``
            (exact, the reference), ``"auction"`` (a torch auction on ``device``, finished by
            the C solver: within ``2 n eps`` of optimal per step, eps about 1e-7 of the
            similarities, for the sweeps until the descent settles; then sweeps with the exact
            ``"lap"`` solver, warm-started from the auction's prices, run until one improves
            nothing, so the answer is a local optimum of the exact descent), or ``"auto"``:
            ``"sparse"`` on CUDA and ``"lap"`` elsewhere when built, else ``"scipy"``.
            (default: ``"auto"``)
        device (optional): where the similarity matrices are computed (default: A's device).
        progress (bool, optional): show a progress bar. (default: ``False``)
        groups (list, optional): optimise only these groups; the others keep ``init``.
        include_buffers (bool, optional): let buffers (BatchNorm running statistics) count
            in the similarity; by default only parameters do, as in the paper (buffers are
            always permuted along). On trained ResNets the statistics mislead matching.
            (default: ``False``)
        restarts (int, optional): run with seeds ``seed, seed+1, ...`` and keep the best
            objective. Coordinate descent is a local method: on attention with few, small
            heads it occasionally settles on a wrong head assignment. (default: ``1``)
        return_info (bool, optional): deprecated: also return ``{"sweeps", "objective",
            "solve_seconds"}``; use :func:`weight_matching_result`. (default: ``False``)

    Returns:
        ``dict[group, LongTensor]``; apply with ``weightspace.permute(structure, state_b, perms)``.
        :func:`weight_matching_result` returns them with the sweeps, objective and solver time.

    Raises:
        ValueError: the state dicts do not fit the structure.
    """
    result = _weight_matching(structure, state_a, state_b, max_iter=max_iter, seed=seed, init=init, solver=solver,
                              device=device, progress=progress, groups=groups, include_buffers=include_buffers,
                              restarts=restarts, measure=return_info)
    if return_info:
        warnings.warn("weight_matching(return_info=True) is deprecated; use weight_matching_result",
                      DeprecationWarning, stacklevel=2)
        return result.perms, result.info  # type: ignore[return-value]
    return result.perms


def weight_matching_result(structure: Structure, state_a: Mapping[str, Tensor],
                           state_b: Mapping[str, Tensor], *, max_iter: int = 100, seed: int = 0,
                           init: Mapping[str, Tensor] | None = None, solver: str = "auto",
                           device: str | torch.device | None = None, progress: bool = False,
                           groups: list[str] | None = None, include_buffers: bool = False,
                           restarts: int = 1) -> WeightMatchingResult:
    """:func:`weight_matching` (same arguments), returning the permutations with the sweeps, the
    objective and the time spent in the solver.

    Raises:
        ValueError: the state dicts do not fit the structure.
    """
    return _weight_matching(structure, state_a, state_b, max_iter=max_iter, seed=seed, init=init, solver=solver,
                            device=device, progress=progress, groups=groups, include_buffers=include_buffers,
                            restarts=restarts, measure=True)


def _weight_matching(structure: Structure, state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor], *,
                     max_iter: int, seed: int, init: Mapping[str, Tensor] | None, solver: str,
                     device: str | torch.device | None, progress: bool, groups: list[str] | None,
                     include_buffers: bool, restarts: int, measure: bool) -> WeightMatchingResult:
    """The descent; ``measure``: time the solver and compute the objective (NaN without)."""
    _check_states(structure, state_a, state_b)
    if restarts > 1:
        runs = [_weight_matching(structure, state_a, state_b, max_iter=max_iter, seed=seed + r, init=init,
                                 solver=solver, device=device, progress=progress, groups=groups,
                                 include_buffers=include_buffers, restarts=1, measure=True)
                for r in range(restarts)]
        return max(runs, key=lambda r: r.objective)
    if device is None:
        device = next((v.device for v in state_a.values()), torch.device("cpu"))
    keys = matching_keys(structure, [state_a, state_b], include_buffers)
    a = matching_state(state_a, structure, device, keys=keys)
    b = matching_state(state_b, structure, device, keys=keys)
    perms, groups = start_permutations(structure, init, groups, device, "weight_matching")
    # "auto" is resolved per matrix by solve_assignment: "sparse" for CUDA ones, else "lap"
    sims = {g: _IncrementalSimilarity(structure, a, b, g, device) for g in groups}
    stats: dict = {}
    sweeps = coordinate_descent(structure, groups, perms, lambda g: sims[g](perms), solver=solver, max_iter=max_iter,
                      seed=seed, progress="weight matching" if progress else None,
                      postfix=lambda: {"objective": f"{matching_objective(structure, a, b, perms):.7g}"},
                      stats=stats if measure else None)
    perms = {g: p.cpu() for g, p in perms.items()}
    objective = matching_objective(structure, state_a, state_b, perms) if measure else float("nan")
    return WeightMatchingResult(perms, sweeps, objective, stats.get("solve_seconds", 0.0))


def start_permutations(structure: Structure, init: Mapping[str, Tensor] | None, groups: list[str] | None, device,
                       fn: str) -> tuple[dict[str, Tensor], list[str]]:
    """The starting permutations of a descent (``init`` or the identity, on ``device``) and the
    groups to optimise (``groups``, default all).

    Raises:
        ValueError: ``groups`` names a group the structure does not have (``fn`` starts the message).
    """
    perms = {g: (init[g].to(device) if init is not None and g in init
                 else torch.arange(structure.groups[g].size, device=device)) for g in structure.groups}
    if groups is None:
        groups = list(structure.groups)
    unknown = [g for g in groups if g not in structure.groups]
    if unknown:
        raise ValueError(f"{fn}: unknown groups {unknown}; the structure has {sorted(structure.groups)}")
    return perms, groups


def coordinate_descent(structure: Structure, groups: list[str], perms: dict[str, Tensor], similarity, *,
                       solver: str, max_iter: int, seed: int, progress: str | None = None, postfix=None,
                       stats: dict | None = None) -> int:
    """Algorithm 1's coordinate descent, updating ``perms`` in place; returns the sweeps run.

    ``similarity(g)`` gives group ``g``'s matrix under the current ``perms``. Every sweep
    visits ``groups`` in a fresh random order; a group none of whose neighbours moved since
    it was last solved is skipped (its solution still holds). Stops after a sweep without
    strict improvement; with ``solver="auction"`` that is followed by exact sweeps, warm
    from the auction's prices, until one improves nothing. ``progress``: the bar's title.
    ``stats``: if given, ``stats["solve_seconds"]`` accumulates the time in the solver (on
    CUDA the similarity is waited for first, so its time is not counted as the solver's).
    """
    rng = torch.Generator().manual_seed(seed)
    neighbours = _neighbours(structure)
    dirty = {g: True for g in structure.groups}
    duals: dict = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(desc=progress, unit="sweep", leave=False)
    sweeps = 0
    pool = None
    try:
        for sweeps in range(1, max_iter + 1):
            improved = False
            order = [groups[gi] for gi in torch.randperm(len(groups), generator=rng).tolist()]
            for batch in _batches(order, dirty, neighbours):
                # the groups of a batch share no tensor, so none of their matrices depends on
                # another's answer: the outcome is the same as solving them one after the other.
                # With the matrices on a GPU the host's cores are idle, so they are solved at
                # once (the C solvers release the GIL); on a CPU, threads would only fight
                # torch's own (measured: ResNet-50 on 2 cores, 4.1 -> 5.3 s)
                mats = [similarity(g) for g in batch]
                if stats is not None:
                    for c in mats:
                        if c.is_cuda:
                            torch.cuda.synchronize(c.device)
                    t0 = time.perf_counter()
                jobs = [(c, perms[g], duals.get(g)) for g, c in zip(batch, mats)]
                if len(batch) > 1 and _in_parallel(mats):
                    if pool is None:
                        from concurrent.futures import ThreadPoolExecutor
                        pool = ThreadPoolExecutor(max_workers=min(len(groups), os.cpu_count() or 1))
                    answers = list(pool.map(lambda job: _solve_one(solver, *job), jobs))
                else:
                    answers = [_solve_one(solver, *job) for job in jobs]
                if stats is not None:
                    stats["solve_seconds"] = stats.get("solve_seconds", 0.0) + time.perf_counter() - t0
                for g, c, (new, duals[g]) in zip(batch, mats, answers):
                    dirty[g] = False
                    rows = torch.arange(len(new), device=c.device)
                    old_val = float(c[rows, perms[g].to(c.device)].sum())
                    new_val = float(c[rows, new.to(c.device)].sum())
                    if new_val > old_val + 1e-12 * max(1.0, abs(old_val)):
                        perms[g] = new.to(perms[g].device)
                        improved = True
                        for h in neighbours[g]:
                            dirty[h] = True
                del mats, jobs, answers
            if bar is not None:
                bar.update(1)
                bar.set_postfix(**(postfix() if postfix is not None else {}), solver=solver)
            if not improved:
                if solver != "auction":
                    break
                # the approximate sweeps settled: finish with exact ones, warm from the prices
                solver = "lap"
                dirty = {g: True for g in structure.groups}
    finally:
        if pool is not None:
            pool.shutdown()
        if bar is not None:
            bar.close()
    return sweeps


# below this size a matrix is solved faster than a thread is handed the work
_PARALLEL_MIN = 256


def _in_parallel(mats: list[Tensor]) -> bool:
    return all(c.is_cuda and len(c) >= _PARALLEL_MIN for c in mats)


def _solve_one(solver: str, c: Tensor, init: Tensor, duals):
    found = solve_assignment_result(c, solver=solver, init=init, duals=duals)
    return found.perm, found.duals


def _batches(order: list[str], dirty: dict[str, bool], neighbours: dict[str, set[str]]):
    """Runs of consecutive groups of ``order`` that need solving and share no tensor, each
    yielded before the next is formed (so ``dirty`` reflects the answers applied so far). A
    group next to one already in the run closes it: it is looked at again afterwards."""
    i = 0
    while i < len(order):
        batch: list[str] = []
        while i < len(order):
            g = order[i]
            if any(g in neighbours[h] for h in batch):
                break
            if dirty[g]:
                batch.append(g)
            i += 1
        if batch:
            yield batch


def _check_states(structure: Structure, state_a, state_b) -> None:
    for name, shape in structure.shapes.items():
        for label, st in (("A", state_a), ("B", state_b)):
            if name not in st:
                if name.endswith("num_batches_tracked"):
                    continue
                raise ValueError(f"weight_matching: tensor {name!r} is missing from {label}")
            if tuple(st[name].shape) != tuple(shape):
                raise ValueError(f"weight_matching: {name!r} has shape {tuple(st[name].shape)} in "
                                 f"{label}; the structure expects {tuple(shape)}")


def __getattr__(name: str):
    """The starts of weight matching live in :mod:`merging.matching.starts` (still importable from here)."""
    if name in ("from_two_starts", "signature_start"):
        from . import starts

        return getattr(starts, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
