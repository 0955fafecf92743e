"""Weight matching of checkpoints larger than memory: the similarity of each group accumulated
tensor by tensor from two lazily read states (:class:`weightspace.Checkpoint` or any mapping), every
tensor read, used and dropped. Peak memory is one ``n x n`` matrix and a few tensors."""
from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch
from torch import Tensor

from graphs import Structure, group_rows, permute

from .weight import WeightMatchingResult, coordinate_descent, start_permutations, work_dtype

__all__ = ["streaming_weight_matching", "streaming_weight_matching_result", "streaming_weight_matching_two_starts"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _shape(state: Mapping[str, Tensor], name: str) -> tuple[int, ...]:
    shape = getattr(state, "shape", None)
    return tuple(shape(name)) if callable(shape) else tuple(state[name].shape)


def _dtype(state: Mapping[str, Tensor], name: str) -> torch.dtype:
    dtype = getattr(state, "dtype", None)
    return dtype(name) if callable(dtype) else state[name].dtype


def _load(state: Mapping[str, Tensor], name: str, device: torch.device) -> Tensor:
    """One tensor as weight matching sees it: on ``device``, half precision widened to float32."""
    t = state[name].detach()
    return t.to(device=device, dtype=torch.float32 if t.dtype in _LOW_PRECISION else t.dtype)


def _similarity(structure: Structure, state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor],
                keys: set[str], group: str, perms: Mapping[str, Tensor], device: torch.device) -> Tensor:
    """``C = sum_k A_k P(B_k)^T`` over the tensors touching ``group``, each read, used and dropped."""
    dtype = torch.float64 if device.type == "cpu" else torch.float32
    c = None
    done: set[str] = set()
    for name, _ in structure.groups[group].members:
        if name not in keys or name in done:
            continue
        done.add(name)
        a, b = _load(state_a, name, device), _load(state_b, name, device)
        if a.dtype != b.dtype:  # float32 against float64: compare in the promoted dtype
            work = work_dtype(a.dtype, b.dtype)
            a, b = a.to(work), b.to(work)
        rows_b = [m.contiguous() for _, m in group_rows(structure, {name: b}, group, perms)]
        del b
        for (_, ra), rb in zip(group_rows(structure, {name: a}, group), rows_b):
            part = (ra @ rb.T).to(dtype)
            c = part if c is None else c.add_(part)
        del a, rows_b
    if c is None:
        n = structure.groups[group].size
        c = torch.zeros(n, n, dtype=dtype, device=device)
    return c


def _objective(structure: Structure, state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor],
               keys: set[str], perms: Mapping[str, Tensor]) -> float:
    """``sum_k <A_k, P(B)_k>`` over the matched tensors, in float64 chunks of 64k entries (a few hundred kB of temporaries)."""
    total = 0.0
    for k in state_a:
        if k not in keys or all(a is None for a in structure.axes[k]):
            continue
        a = state_a[k].reshape(-1)
        pb = permute(structure, {k: state_b[k]}, perms)[k].reshape(-1)
        for x, y in zip(a.split(1 << 16), pb.split(1 << 16)):
            total += float((x.double() * y.double()).sum())
        del a, pb
    return total


def _check_states(structure: Structure, state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor],
                  fn: str) -> None:
    for name, shape in structure.shapes.items():
        for label, st in (("A", state_a), ("B", state_b)):
            if name not in st:
                if name.endswith("num_batches_tracked"):
                    continue
                raise ValueError(f"{fn}: tensor {name!r} is missing from {label}")
            if _shape(st, name) != tuple(shape):
                raise ValueError(f"{fn}: {name!r} has shape {_shape(st, name)} in {label}; the structure "
                                 f"expects {tuple(shape)}")


def streaming_weight_matching(structure: Structure, state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor],
                              *, max_iter: int = 100, seed: int = 0, init: Mapping[str, Tensor] | None = None,
                              solver: str = "auto", device: str | torch.device = "cpu", progress: bool = False,
                              groups: list[str] | None = None, include_buffers: bool = False,
                              return_info: bool = False) -> dict[str, Tensor]:
    """Weight matching (Git Re-Basin, https://arxiv.org/abs/2209.04836, Algorithm 1) without
    holding either state dict in memory.

    The coordinate descent of :func:`merging.weight_matching`: every sweep visits the groups in
    a fresh random order (the same order for the same ``seed``), skips a group none of whose
    neighbours moved since it was last solved, and solves the linear assignment over

    .. math::
        C_g = \\sum_{k \\ni g} A_k^{(g)} \\, \\big(P_{-g} B_k\\big)^{(g)\\top}

    where :math:`A_k^{(g)}` is tensor :math:`k` of A with :math:`g`'s axis first and the others
    flattened, and :math:`P_{-g}` applies the current permutations of the other groups. Here
    :math:`C_g` is accumulated tensor by tensor: each pair :math:`(A_k, B_k)` is read from the
    checkpoints when needed and dropped after use, so memory holds one ``n x n`` matrix and a
    few tensors. Tensors are re-read at every step (cheap from the page cache); open the
    checkpoints with ``open_checkpoint(path, mmap=False)`` so reading does not leave the files
    mapped into the process.

    The similarity matrices are computed exactly as the in-memory matcher first computes them
    (float32 products of float32 weights, summed in float64 in the same order), so both find the
    same permutations; the in-memory matcher's later low-rank updates differ from a recomputation
    only by rounding.

    Args:
        structure (Structure): from :func:`graphs.trace` (or :func:`trace_without_weights`).
        state_a, state_b (Mapping[str, Tensor]): the two models; lazily loaded
            :class:`weightspace.Checkpoint` objects (or plain dicts).
        max_iter (int, optional): maximum number of sweeps. (default: ``100``)
        seed (int, optional): seeds the order of the groups. (default: ``0``)
        init (dict, optional): warm start (group -> permutation). (default: identity)
        solver (str, optional): ``"auto"``, ``"lap"``, ``"sparse"``, ``"scipy"`` or ``"auction"``, as
            for :func:`merging.weight_matching`. (default: ``"auto"``)
        device (str or torch.device, optional): where the products are computed. (default: ``"cpu"``)
        progress (bool, optional): a progress bar of sweeps on stderr. (default: ``False``)
        groups (list, optional): optimise only these groups; the others keep ``init``.
        include_buffers (bool, optional): let buffers count in the similarity. (default: ``False``)
        return_info (bool, optional): deprecated: also return ``{"sweeps", "objective"}``; use
            :func:`streaming_weight_matching_result`. (default: ``False``)

    Shapes:
        every similarity matrix: ``(n, n)`` with ``n = structure.groups[g].size``.

    Returns:
        ``dict[group, LongTensor]``; apply it with ``weightspace.permute(structure, state_b, perms)``.
        :func:`streaming_weight_matching_result` returns them with the sweeps and the objective.

    Raises:
        ValueError: the checkpoints do not fit the structure, or an unknown group.

    Example:
        >>> with open_checkpoint("a", mmap=False) as a, open_checkpoint("b", mmap=False) as b:  # doctest: +SKIP
        ...     perms = streaming_weight_matching(structure, a, b)
    """
    result = streaming_weight_matching_result(structure, state_a, state_b, max_iter=max_iter, seed=seed, init=init,
                                              solver=solver, device=device, progress=progress, groups=groups,
                                              include_buffers=include_buffers, objective=return_info)
    if return_info:
        warnings.warn("streaming_weight_matching(return_info=True) is deprecated; use "
                      "streaming_weight_matching_result", DeprecationWarning, stacklevel=2)
        return result.perms, {"sweeps": result.sweeps, "objective": result.objective}  # type: ignore[return-value]
    return result.perms


def streaming_weight_matching_result(structure: Structure, state_a: Mapping[str, Tensor],
                                     state_b: Mapping[str, Tensor], *, max_iter: int = 100, seed: int = 0,
                                     init: Mapping[str, Tensor] | None = None, solver: str = "auto",
                                     device: str | torch.device = "cpu", progress: bool = False,
                                     groups: list[str] | None = None, include_buffers: bool = False,
                                     objective: bool = True) -> WeightMatchingResult:
    """:func:`streaming_weight_matching` (same arguments), returning the permutations with the sweeps
    and, with ``objective`` (one more pass over the checkpoints), the matching objective (else NaN).

    Raises:
        ValueError: the checkpoints do not fit the structure, or an unknown group.
    """
    fn = "streaming_weight_matching"
    _check_states(structure, state_a, state_b, fn)
    keys = _keys(structure, state_a, state_b, include_buffers)
    perms, sweeps = _descend(structure, state_a, state_b, keys, max_iter, seed, init, solver, torch.device(device),
                             progress, groups, fn)
    value = _objective(structure, state_a, state_b, keys, perms) if objective else float("nan")
    return WeightMatchingResult(perms, sweeps, value)


def streaming_weight_matching_two_starts(structure: Structure, state_a: Mapping[str, Tensor],
                                         state_b: Mapping[str, Tensor], *, max_iter: int = 100, seed: int = 0,
                                         solver: str = "auto", device: str | torch.device = "cpu",
                                         progress: bool = False, fn: str = "streaming_weight_matching"
                                         ) -> WeightMatchingResult:
    """:func:`streaming_weight_matching_result` from the identity and from unit signatures
    (:func:`merging.matching.starts.from_two_starts`), the higher objective kept: what the in-memory
    :func:`merging.weight_matching` default does, tensor by tensor.

    Raises:
        ValueError: the checkpoints do not fit the structure (the message starts with ``fn``).
    """
    from .starts import from_two_starts

    _check_states(structure, state_a, state_b, fn)
    keys = _keys(structure, state_a, state_b, False)
    dev = torch.device(device)

    def run(init: Mapping[str, Tensor] | None) -> WeightMatchingResult:
        perms, sweeps = _descend(structure, state_a, state_b, keys, max_iter, seed, init, solver, dev, progress,
                                 None, fn)
        return WeightMatchingResult(perms, sweeps, _objective(structure, state_a, state_b, keys, perms))

    return from_two_starts(run, structure, state_a, state_b, solver=solver)


def _keys(structure: Structure, state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor],
          include_buffers: bool) -> set[str]:
    """The tensors weight matching reads: floating point in both, on the structure (buffers if asked)."""
    return {k for k in state_a if k in structure.axes and k in state_b and _dtype(state_a, k).is_floating_point
            and _dtype(state_b, k).is_floating_point and (include_buffers or not structure.is_buffer(k))}


def _descend(structure: Structure, state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor], keys: set[str],
             max_iter: int, seed: int, init: Mapping[str, Tensor] | None, solver: str, device: torch.device,
             progress: bool, groups: list[str] | None, fn: str) -> tuple[dict[str, Tensor], int]:
    """The coordinate descent of :func:`streaming_weight_matching` (weight matching's own loop,
    with similarities read tensor by tensor): ``(perms, sweeps)``."""
    perms, groups = start_permutations(structure, init, groups, device, fn)
    sweeps = coordinate_descent(structure, groups, perms,
                                 lambda g: _similarity(structure, state_a, state_b, keys, g, perms, device),
                                 solver=solver, max_iter=max_iter, seed=seed,
                                 progress="weight matching (streaming)" if progress else None)
    return {g: p.cpu() for g, p in perms.items()}, sweeps
