"""Where weight matching starts from: the identity, unit signatures (each unit's weights sorted,
blind to every other group's permutation), and the better of the two by the matching objective."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from graphs import Structure, Unit, product_block, product_blocks

from ._solve import solve_assignment
from .weight import WeightMatchingResult, work_dtype

__all__ = ["signature_start", "from_two_starts"]


def signature_start(structure: Structure, state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor], *,
                    solver: str = "auto", include_buffers: bool = False) -> dict[str, Tensor]:
    """A start for :func:`weight_matching` from signatures of the units that no other group moves.

    Each unit of a group gets a signature: for every tensor axis that is exactly the group, the
    unit's slice (its row, column, kernels) with its entries sorted (at most 256 evenly spaced
    order statistics of it), all concatenated. Sorting
    makes the signature blind to every other group's permutation, so the signatures of B =
    P(A) are A's, reordered by P: one linear assignment per group, maximising the inner products
    of A's and B's signatures, recovers P exactly when the units are distinct (the sum of squared
    distances is then zero, and the sums of squared norms do not depend on the assignment).
    Coordinate descent from the identity can settle short of that where a group's weights carry
    little signal (an expansion or depthwise group between freshly initialised BatchNorm layers).
    On two independently trained networks it is one more informed start; compare the objectives.

    Each tensor is read once (``state_a`` and ``state_b`` may be lazily loaded checkpoints).
    Groups with no such axis (attention heads, which move as blocks) start at the identity.

    Returns:
        ``dict[group, LongTensor]``, to pass as ``init=`` to :func:`weight_matching`.
    """
    members: dict[str, list[tuple[str, int]]] = {g: [] for g in structure.groups}
    for name, axes in structure.axes.items():
        if name not in state_a or name not in state_b or (structure.is_buffer(name) and not include_buffers):
            continue
        for k, ax in enumerate(axes):
            if isinstance(ax, Unit) and ax.group in members:
                members[ax.group].append((name, k))
    perms = {}
    for g, slices in members.items():  # one group at a time: one n x n matrix and one tensor pair in memory
        sim = None
        for name, k in slices:
            ta, tb = state_a[name], state_b[name]
            if not (ta.is_floating_point() and tb.is_floating_point()):
                continue
            dt = work_dtype(ta.dtype, tb.dtype)
            fa = _sorted_rows(ta, k, dt)
            del ta
            part = (fa @ _sorted_rows(tb, k, dt).T).double()
            del tb
            sim = part if sim is None else sim.add_(part)
        perms[g] = torch.arange(structure.groups[g].size) if sim is None else solve_assignment(sim, solver=solver).cpu()
    _nested_signatures(structure, state_a, state_b, perms, members, solver)
    return perms


def _nested_signatures(structure: Structure, state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor],
                       perms: dict[str, Tensor], members: Mapping[str, list], solver: str) -> None:
    """Starts for the groups seen only inside a product of two groups (attention heads x the
    dimensions inside each head): a head's signature is its whole block sorted, blind to how its
    dimensions are ordered; then a dimension's is its values in each head, the heads of B taken in
    the matched order. Updates ``perms`` in place."""
    blocks: dict[tuple[str, str], list[tuple[str, int, int, object, int, int]]] = {}
    for name, axes in structure.axes.items():
        if name not in state_a or name not in state_b or structure.is_buffer(name):
            continue
        for k, ax in enumerate(axes):
            for off, prod, i, j in product_blocks(ax):
                key = (prod.parts[i].group, prod.parts[j].group)
                if not members[key[0]] or not members[key[1]]:  # a group without its own signature
                    blocks.setdefault(key, []).append((name, k, off, prod, i, j))
    if not blocks:
        return

    def signature(x: Tensor) -> Tensor:  # sort the last axis, keep evenly spaced order statistics
        x = x.sort(dim=-1).values
        keep = torch.linspace(0, x.shape[-1] - 1, min(x.shape[-1], _SIGNATURE_POINTS), device=x.device)
        return x[..., keep.round().long()]

    read = {}
    for key, sites in blocks.items():
        for name, k, off, prod, i, j in sites:
            ta, tb = state_a[name], state_b[name]
            if ta.is_floating_point() and tb.is_floating_point():
                dt = work_dtype(ta.dtype, tb.dtype)
                read.setdefault(key, []).append((product_block(ta.detach().movedim(k, 0), off, prod, i, j).to(dt),
                                                 product_block(tb.detach().movedim(k, 0), off, prod, i, j).to(dt)))
    for outer in sorted({o for o, _ in read}):
        if members[outer]:
            continue
        sim = None
        for (o, _), pairs in read.items():
            for ba, bb in pairs if o == outer else ():
                part = (signature(ba.flatten(1)) @ signature(bb.flatten(1)).T).double()
                sim = part if sim is None else sim + part
        if sim is not None:
            perms[outer] = solve_assignment(sim, solver=solver).cpu()
    inner_sim: dict[str, Tensor] = {}
    for (outer, inner), pairs in read.items():
        if members[inner]:
            continue
        heads = perms[outer]
        for ba, bb in pairs:
            sa = signature(ba).transpose(0, 1).flatten(1)            # (inner, outer * points)
            sb = signature(bb[heads.to(bb.device)]).transpose(0, 1).flatten(1)
            part = (sa @ sb.T).double()
            inner_sim[inner] = inner_sim[inner] + part if inner in inner_sim else part
    for inner, sim in inner_sim.items():
        perms[inner] = solve_assignment(sim, solver=solver).cpu()


#: order statistics kept of each unit's slice in its signature
_SIGNATURE_POINTS = 256


def _sorted_rows(t: Tensor, axis: int, dtype: torch.dtype, chunk: int = 8) -> Tensor:
    """``t`` with ``axis`` first and each slice flattened and sorted, reduced to at most
    :data:`_SIGNATURE_POINTS` evenly spaced order statistics; built a few rows at a time, so
    memory holds the tensor and ``rows x 256`` values, not sorted copies and their indices."""
    t = t.detach().movedim(axis, 0)
    m = t[0].numel() if t.shape[0] else 0
    keep = torch.linspace(0, max(m - 1, 0), min(m, _SIGNATURE_POINTS), device=t.device).round().long()
    out = torch.empty(t.shape[0], len(keep), dtype=dtype, device=t.device)
    for i in range(0, t.shape[0], chunk):
        rows = t[i:i + chunk].reshape(min(chunk, t.shape[0] - i), -1).to(dtype).sort(dim=1).values
        out[i:i + chunk] = rows[:, keep]
    return out


def from_two_starts(run: Callable[[Mapping[str, Tensor] | None], WeightMatchingResult], structure: Structure,
                    state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor], *,
                    solver: str = "auto") -> WeightMatchingResult:
    """``run(init) -> WeightMatchingResult`` (a weight matching from ``init``) from the identity
    and from :func:`signature_start`, keeping the higher objective; ``start`` says which.
    Ties keep the identity's, so a network whose descent already finds the optimum is unchanged."""
    first = dataclasses.replace(run(None), start="identity")
    if not structure.groups:
        return first
    second = run(signature_start(structure, state_a, state_b, solver=solver))
    if second.objective > first.objective:
        return dataclasses.replace(second, start="unit signatures")
    return first
