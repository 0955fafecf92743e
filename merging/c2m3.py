"""Cycle-consistent matching of N models through a shared universe (C2M3)."""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from graphs import (
    Cat,
    Structure,
    Unit,
    compose_permutations,
    inverse_permutation,
    permute,
)
from merging.many import ManyMerge, _check, mean_state
from merging.matching._solve import solve_assignment
from merging.matching.weight import matching_keys, matching_state

__all__ = ["C2M3Matching", "c2m3_matching", "c2m3_matching_result", "c2m3_merge", "c2m3_merge_result",
           "pairwise_permutation", "soft_permute"]

_INITS = ("barycenter", "identity")
StateDict = dict[str, Tensor]
PermDict = dict[str, Tensor]


# ----------------------------------------------------------------------------- relaxed action
def _apply_axis(t: Tensor, dim: int, axis, mats: Mapping[str, Tensor]) -> Tensor:
    """Apply the (soft) matrices of the groups on one axis: ``new = S @ old`` along ``dim``."""
    if isinstance(axis, Unit):
        if axis.group is None or axis.group not in mats:
            return t
        moved = t.movedim(dim, 0)
        out = (mats[axis.group] @ moved.reshape(moved.shape[0], -1)).reshape(moved.shape)
        return out.movedim(0, dim)
    if isinstance(axis, Cat):
        pieces = t.split([p.size for p in axis.parts], dim)
        return torch.cat([_apply_axis(x, dim, p, mats) for x, p in zip(pieces, axis.parts)], dim)
    # Prod: row-major factors, the first the slowest-moving index (as graphs.permute_tensor)
    shape = t.shape
    sizes = [p.size for p in axis.parts]
    t = t.reshape(*shape[:dim], *sizes, *shape[dim + 1:])
    for i, p in enumerate(axis.parts):
        t = _apply_axis(t, dim + i, p, mats)
    return t.reshape(shape)


def soft_permute(structure: Structure, state: Mapping[str, Tensor], mats: Mapping[str, Tensor]) -> StateDict:
    r"""Act on a state dict with one matrix per group, the relaxation of :func:`graphs.permute`.

    A permutation ``perm`` of a group is the matrix :math:`P` with :math:`P_{u, \mathrm{perm}[u]} = 1`
    (``new = P @ old`` along every axis the group acts on); any other square matrix, e.g. a doubly
    stochastic one, acts the same way, which is what Frank-Wolfe's relaxed iterates need.
    Tensors the structure does not know pass through.

    Shapes:
        ``mats[g]``: ``(n_g, n_g)``; every tensor keeps its shape.
    """
    out: StateDict = {}
    for k, v in state.items():
        ax = structure.axes.get(k)
        if ax is None:
            out[k] = v
            continue
        t = v
        for i, a in enumerate(ax):
            if a is not None:
                t = _apply_axis(t, i, a, mats)
        out[k] = t
    return out


def _axis_degree(axis) -> int:
    if axis is None:
        return 0
    if isinstance(axis, Unit):
        return int(axis.group is not None)
    if isinstance(axis, Cat):
        return max((_axis_degree(p) for p in axis.parts), default=0)
    return sum(_axis_degree(p) for p in axis.parts)


def _perm_matrix(p: Tensor, dtype, device) -> Tensor:
    return torch.eye(len(p), dtype=dtype, device=device)[p.to(device)]


# ----------------------------------------------------------------------------- public API
def pairwise_permutation(perms: Sequence[Mapping[str, Tensor]], i: int, j: int) -> PermDict:
    r"""The map from model ``i``'s hidden units to model ``j``'s: :math:`P_j^{-1} \circ P_i`.

    ``perms`` are the maps of each model into the universe (as returned by
    :func:`c2m3_matching`), so ``permute(structure, states[i], pairwise_permutation(perms, i, j))``
    is model ``i`` in model ``j``'s basis. Maps built this way are cycle consistent:
    ``i -> j -> k`` equals ``i -> k`` and ``i -> j -> i`` is the identity.
    """
    return compose_permutations(perms[i], inverse_permutation(perms[j]))


@dataclass(frozen=True)
class C2M3Matching:
    """What :func:`c2m3_matching_result` found.

    Attributes:
        perms (list[dict[str, Tensor]]): one permutation dict per model, in model 0's basis.
        iterations (int): Frank-Wolfe iterations run.
        gap (float): the last duality gap.
        objective (float): the objective of the projected permutations.
        relaxed_objective (float): the relaxed objective at the end.
        converged (bool): the gap fell below ``tol`` before ``max_iter``.
        history (list[float]): the relaxed objective after each step.
    """

    perms: list[PermDict]
    iterations: int
    gap: float
    objective: float
    relaxed_objective: float
    converged: bool
    history: list[float] = field(default_factory=list)

    @property
    def info(self) -> dict[str, Any]:
        """``{"iterations", "gap", "objective", "relaxed_objective", "converged", "history"}``."""
        return {"iterations": self.iterations, "gap": self.gap, "objective": self.objective,
                "relaxed_objective": self.relaxed_objective, "converged": self.converged, "history": self.history}


def c2m3_matching(
    structure: Structure,
    states: Sequence[Mapping[str, Tensor]],
    *,
    max_iter: int = 100,
    tol: float = 1e-6,
    init: str = "barycenter",
    solver: str = "auto",
    device: str | torch.device | None = None,
    progress: bool = False,
    return_info: bool = False,
) -> list[PermDict]:
    r"""Cycle-consistent weight matching of N models through a universe space.

    C2M3 (Crisostomi et al., "C2M3: Cycle-Consistent Multi-Model Merging",
    https://arxiv.org/abs/2405.17897): every model :math:`i` gets, for every group
    :math:`g`, one map :math:`P_i^g` into a shared universe, and all maps are chosen together
    to maximise the summed similarity of every pair of models once both are in the universe,

    .. math::
        \max_{P} \sum_{i < j} \big\langle P_i(\theta_i),\ P_j(\theta_j) \big\rangle,

    where :math:`P_i(\theta_i)` permutes every tensor axis of every group (a weight matrix
    :math:`W` between groups :math:`g, h` becomes :math:`P_i^g W P_i^{h\top}`). The
    permutations are relaxed to doubly stochastic matrices and the objective is maximised by
    Frank-Wolfe from the identity: the gradient gives, per model and group, a linear
    assignment (the vertex of the Birkhoff polytope, :func:`merging.solve_assignment`), and an
    exact line search along the joint direction picks the step (the objective is a polynomial
    in the step size; it is evaluated at enough points to determine it). Iterations stop when
    the Frank-Wolfe duality gap falls below ``tol`` times the objective, or at ``max_iter``.
    Each relaxed matrix is then projected to the nearest permutation (a linear assignment).
    Since every pairwise map is :math:`P_j^{-1} \circ P_i`
    (:func:`pairwise_permutation`), the maps are cycle consistent by construction, which
    pairwise weight matching is not.

    Only parameters count in the similarity (BatchNorm running statistics are permuted along
    by :func:`graphs.permute`, as in :func:`merging.weight_matching`).

    Args:
        structure (Structure): from :func:`graphs.trace`.
        states (list[StateDict]): the N >= 2 models (not modified).
        max_iter (int, optional): Frank-Wolfe iterations at most. (default: ``100``)
        tol (float, optional): relative duality gap at which to stop. (default: ``1e-6``)
        solver (str, optional): the assignment solver, as for :func:`merging.solve_assignment`.
            (default: ``"auto"``)
        device (optional): where to compute (default: the device of model 0's tensors).
        progress (bool, optional): a progress bar over iterations on stderr. (default: ``False``)
        return_info (bool, optional): deprecated: also return ``{"iterations", "gap", "objective",
            "relaxed_objective", "converged", "history"}``; use :func:`c2m3_matching_result`.
            (default: ``False``)

    Shapes:
        ``perms[i][g]``: ``(n_g,)`` for each group ``g``.

    Returns:
        ``perms``: one permutation dict per model, expressed in model 0's basis (``perms[0]``
        is the identity): ``permute(structure, states[i], perms[i])`` is model ``i`` in the
        universe. :func:`c2m3_matching_result` returns them with the iterations, the gap and the
        objectives.

    Raises:
        ValueError: fewer than two models, models that do not match each other or the
            structure, or a bad ``max_iter`` / ``tol``.

    Example:
        >>> perms = c2m3_matching(structure, [s0, s1, s2])  # doctest: +SKIP
        >>> to_2 = pairwise_permutation(perms, 0, 2)  # model 0 in model 2's basis  # doctest: +SKIP
    """
    result = c2m3_matching_result(structure, states, max_iter=max_iter, tol=tol, init=init, solver=solver,
                                  device=device, progress=progress)
    if return_info:
        warnings.warn("c2m3_matching(return_info=True) is deprecated; use c2m3_matching_result",
                      DeprecationWarning, stacklevel=2)
        return result.perms, result.info  # type: ignore[return-value]
    return result.perms


def c2m3_matching_result(
    structure: Structure,
    states: Sequence[Mapping[str, Tensor]],
    *,
    max_iter: int = 100,
    tol: float = 1e-6,
    init: str = "barycenter",
    solver: str = "auto",
    device: str | torch.device | None = None,
    progress: bool = False,
) -> C2M3Matching:
    """:func:`c2m3_matching` (same arguments), returning the permutations with the iterations, the
    duality gap, the objective of the projected permutations, the relaxed one and its history.

    Raises:
        ValueError: as :func:`c2m3_matching`.
    """
    _check(structure, states)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"c2m3_matching: max_iter must be a non-negative integer, got {max_iter!r}")
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"c2m3_matching: tol must be a non-negative number, got {tol!r}")
    if init not in _INITS:
        raise ValueError(f"c2m3_matching: unknown init {init!r}; choose one of: {', '.join(_INITS)}")
    n = len(states)
    dev = torch.device(device) if device is not None else next(
        (v.device for v in states[0].values()), torch.device("cpu"))
    dtype = torch.float64 if dev.type == "cpu" else torch.float32
    floats = []
    keys = matching_keys(structure, states)
    for s in states:
        f = matching_state(s, structure, dev, keys=keys)
        # only tensors some group acts on: the others add a constant
        floats.append({k: v.to(dtype) for k, v in f.items()
                       if any(_axis_degree(a) for a in structure.axes[k])})
    groups = list(structure.groups)
    if not groups or not floats[0]:
        perms = [{g: torch.arange(structure.groups[g].size) for g in groups} for _ in range(n)]
        return C2M3Matching(perms, 0, 0.0, 0.0, 0.0, True, [0.0])
    degree = 2 * max(sum(_axis_degree(a) for a in structure.axes[k]) for k in floats[0])

    def objective(mats: list[dict[str, Tensor]]) -> Tensor:
        # sum_{i<j} <u_i, u_j> = (|sum_i u_i|^2 - sum_i |u_i|^2) / 2, linear in N
        total = torch.zeros((), dtype=dtype, device=dev)
        us = [soft_permute(structure, f, m) for f, m in zip(floats, mats)]
        for k in floats[0]:
            s = sum(u[k] for u in us)
            total = total + 0.5 * (s.square().sum() - sum(u[k].square().sum() for u in us))
        return total

    eye = {g: torch.eye(structure.groups[g].size, dtype=dtype, device=dev) for g in groups}
    if init == "identity":
        mats = [dict(eye) for _ in range(n)]
    else:  # the barycentre of the Birkhoff polytope: no unit preferred
        mats = [dict(eye)] + [{g: torch.full_like(e, 1.0 / len(e)) for g, e in eye.items()} for _ in range(n - 1)]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(desc="C2M3 Frank-Wolfe", unit="it", total=max_iter, leave=False)
    # Chebyshev nodes on [0, 1]: enough points to determine the objective along a direction
    nodes = 0.5 - 0.5 * np.cos(np.pi * (np.arange(degree + 1) + 0.5) / (degree + 1))
    grid = np.linspace(0.0, 1.0, 2001)
    it, gap, converged = 0, math.inf, max_iter == 0
    with torch.no_grad():
        value = float(objective(mats))
    history = [value]
    for it in range(1, max_iter + 1):
        # model 0's maps stay the identity: the universe is model 0's basis (a gauge choice;
        # left free, two models would chase each other's basis and the iterates average out)
        leaves = [mats[0]] + [{g: m.clone().requires_grad_(True) for g, m in ms.items()} for ms in mats[1:]]
        with torch.enable_grad():
            f = objective(leaves)
            grads = torch.autograd.grad(f, [m for ms in leaves[1:] for m in ms.values()])
        grad_of = iter(grads)
        vertices, gap = [mats[0]], 0.0
        for ms in mats[1:]:
            vs = {}
            for g, m in ms.items():
                grad = next(grad_of)
                p = solve_assignment(grad, solver=solver)
                vs[g] = _perm_matrix(p, dtype, dev)
                gap += float((grad * (vs[g] - m)).sum())
            vertices.append(vs)
        scale = max(1.0, abs(value))
        if gap <= tol * scale:
            converged = True
            break
        direction = [{g: vs[g] - ms[g] for g in ms} for ms, vs in zip(mats, vertices)]
        with torch.no_grad():
            samples = [float(objective([{g: ms[g] + float(t) * ds[g] for g in ms}
                                        for ms, ds in zip(mats, direction)])) for t in nodes]
        coef = np.polynomial.chebyshev.Chebyshev.fit(nodes, samples, degree, domain=[0.0, 1.0])
        step = float(grid[int(np.argmax(coef(grid)))])
        if step <= 0.0:
            converged = True
            break
        new_mats = [{g: ms[g] + step * ds[g] for g in ms} for ms, ds in zip(mats, direction)]
        with torch.no_grad():
            new_value = float(objective(new_mats))
        if not new_value > value:  # numerical noise: no progress along the direction
            converged = True
            break
        mats, value = new_mats, new_value
        history.append(value)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(gap=f"{gap / scale:.1e}")
    if bar is not None:
        bar.close()
    perms = [{g: solve_assignment(m, solver=solver).cpu() for g, m in ms.items()} for ms in mats]
    to_zero = inverse_permutation(perms[0])
    perms = [compose_permutations(p, to_zero) for p in perms]
    with torch.no_grad():
        hard = float(objective([{g: _perm_matrix(p[g], dtype, dev) for g in groups} for p in perms]))
    return C2M3Matching(perms, it, gap, hard, value, converged, history)


def c2m3_merge(
    structure: Structure,
    states: Sequence[Mapping[str, Tensor]],
    *,
    max_iter: int = 100,
    tol: float = 1e-6,
    solver: str = "auto",
    device: str | torch.device | None = None,
    progress: bool = False,
    return_info: bool = False,
) -> tuple[StateDict, list[PermDict]]:
    r"""Match N models cycle-consistently (:func:`c2m3_matching`) and average them in the universe.

    .. math::
        \theta = \frac1N \sum_i P_i(\theta_i)

    Buffers (BatchNorm statistics) are permuted along and averaged; reset them with
    :func:`merging.reset_batchnorm`, or fix the statistics with :func:`merging.repair_many`.

    Args:
        structure, states, max_iter, tol, solver, device, progress: as for :func:`c2m3_matching`.
        return_info (bool, optional): deprecated: also return the matching's info dict; use
            :func:`c2m3_merge_result`. (default: ``False``)

    Returns:
        ``(merged_state, perms)`` (model 0's basis).

    Raises:
        ValueError: as :func:`c2m3_matching`.
    """
    result = c2m3_merge_result(structure, states, max_iter=max_iter, tol=tol, solver=solver, device=device,
                               progress=progress)
    if return_info:
        warnings.warn("c2m3_merge(return_info=True) is deprecated; use c2m3_merge_result", DeprecationWarning,
                      stacklevel=2)
        return result.merged, result.perms, result.details.info  # type: ignore[return-value]
    return result.merged, result.perms


def c2m3_merge_result(
    structure: Structure,
    states: Sequence[Mapping[str, Tensor]],
    *,
    max_iter: int = 100,
    tol: float = 1e-6,
    solver: str = "auto",
    device: str | torch.device | None = None,
    progress: bool = False,
) -> ManyMerge:
    """:func:`c2m3_merge` (same arguments), returning the merge with its iterations and the matching's
    own result (:class:`C2M3Matching`, in ``details``).

    Raises:
        ValueError: as :func:`c2m3_matching`.
    """
    matching = c2m3_matching_result(structure, states, max_iter=max_iter, tol=tol, solver=solver, device=device,
                                    progress=progress)
    merged = mean_state([permute(structure, dict(s), p) for s, p in zip(states, matching.perms)])
    return ManyMerge(merged, matching.perms, matching.iterations, matching.converged, matching)
