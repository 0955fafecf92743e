"""Merging N models at once: MergeMany (Git Re-Basin) and REPAIR for N endpoints."""
from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from graphs import Structure, compose_permutations, identity_permutation, inverse_permutation, permute

from merging.matching.weight import weight_matching

__all__ = ["ManyMerge", "merge_many", "merge_many_result", "mean_state", "repair_many"]

StateDict = dict[str, Tensor]


@dataclass(frozen=True)
class ManyMerge:
    """N models merged into one.

    Attributes:
        merged (dict[str, Tensor]): the average of the aligned models.
        perms (list[dict[str, Tensor]]): the permutation applied to each model (model 0's basis).
        iterations (int, optional): MergeMany's passes or C2M3's Frank-Wolfe iterations
            (``None`` for a method that does not iterate).
        converged (bool, optional): whether the iterations stopped before their limit.
        details (optional): the alignment's own result, where it has more to say
            (:class:`merging.c2m3.C2M3Matching` for C2M3).
    """

    merged: StateDict
    perms: list[dict[str, Tensor]]
    iterations: int | None
    converged: bool | None = None
    details: Any = None


def mean_state(states: Sequence[Mapping[str, Tensor]]) -> StateDict:
    """Entry-wise mean of N state dicts; non-floating tensors (counters) come from the first.

    Each mean is computed in the promoted dtype of the N tensors (at least float32) and has the
    dtype of the first state's tensor."""
    if not states:
        raise ValueError("mean_state: needs at least one state dict")
    out: StateDict = {}
    for k, v in states[0].items():
        if v.is_floating_point() or v.is_complex():
            work = torch.float32
            for s in states:
                work = torch.promote_types(work, s[k].dtype)
            out[k] = (sum(s[k].to(device=v.device, dtype=work) for s in states) / len(states)).to(v.dtype)
        else:
            out[k] = v.clone()
    return out


def _check(structure: Structure, states: Sequence[Mapping[str, Tensor]]) -> None:
    if isinstance(states, Mapping) or len(states) < 2:
        raise ValueError(f"merge_many: needs a list of at least two state dicts, got "
                         f"{len(states) if not isinstance(states, Mapping) else 'one dict'}")
    ref = states[0]
    for i, s in enumerate(states[1:], 1):
        if set(s) != set(ref):
            k = sorted(set(s) ^ set(ref))[0]
            raise ValueError(f"merge_many: model {i} and model 0 hold different tensors ({k!r} is in only one)")
        for k, v in s.items():
            if tuple(v.shape) != tuple(ref[k].shape):
                raise ValueError(f"merge_many: {k!r} has shape {tuple(v.shape)} in model {i} and "
                                 f"{tuple(ref[k].shape)} in model 0")
    for name, shape in structure.shapes.items():
        if name in ref and tuple(ref[name].shape) != tuple(shape):
            raise ValueError(f"merge_many: {name!r} has shape {tuple(ref[name].shape)}; the structure expects "
                             f"{tuple(shape)}")


def merge_many(
    structure: Structure,
    states: Sequence[Mapping[str, Tensor]],
    *,
    max_iter: int = 100,
    seed: int = 0,
    solver: str = "auto",
    return_info: bool = False,
    progress: bool = False,
) -> tuple[StateDict, list[dict[str, Tensor]]]:
    r"""MergeMany: align N models to each other and average them.

    Git Re-Basin's algorithm for N models (Ainsworth et al., "Git Re-Basin: Merging Models
    modulo Permutation Symmetries", https://arxiv.org/abs/2209.04836, Appendix "Merging
    Many Models"): repeatedly visit the models in a random order and re-align each one, by
    weight matching, to the mean of the others (as currently aligned), until a full pass
    changes no permutation or ``max_iter`` passes are done:

    .. math::
        \pi_i \leftarrow \arg\max_{\pi} \Big\langle \frac{1}{N-1}\sum_{j \ne i} \pi_j(\theta_j),
        \ \pi(\theta_i) \Big\rangle, \qquad
        \theta = \frac{1}{N}\sum_i \pi_i(\theta_i)

    The permutations are returned in model 0's basis (``perms[0]`` is the identity), so
    merging permuted copies of one network gives back that network exactly. Buffers
    (BatchNorm statistics) are permuted along and averaged; reset them with
    :func:`merging.reset_batchnorm` afterwards.

    Args:
        structure (Structure): from :func:`graphs.trace`.
        states (list[StateDict]): the N >= 2 models (not modified).
        max_iter (int, optional): maximum number of passes over the models. (default: ``100``)
        seed (int, optional): seeds the visiting order and weight matching. (default: ``0``)
        solver (str, optional): weight matching's assignment solver, one of
            :func:`merging.list_solvers`. (default: ``"auto"``)
        return_info (bool, optional): deprecated: also return ``{"passes", "converged"}``; use
            :func:`merge_many_result`. (default: ``False``)
        progress (bool, optional): a progress bar over passes on stderr. (default: ``False``)

    Shapes:
        every tensor keeps its shape; ``perms[i][g]``: ``(n_g,)`` for each group ``g``.

    Returns:
        ``(merged_state, perms_list)`` with ``perms_list[i]`` the permutation applied to model
        ``i`` (``permute(structure, states[i], perms_list[i])``), and the info dict when asked.

    Raises:
        ValueError: fewer than two models, or models that do not match each other or the structure.

    Example:
        >>> merged, perms = merge_many(structure, [s0, s1, s2])  # doctest: +SKIP
    """
    result = merge_many_result(structure, states, max_iter=max_iter, seed=seed, solver=solver, progress=progress)
    if return_info:
        warnings.warn("merge_many(return_info=True) is deprecated; use merge_many_result", DeprecationWarning,
                      stacklevel=2)
        return result.merged, result.perms, {"passes": result.iterations,  # type: ignore[return-value]
                                             "converged": result.converged}
    return result.merged, result.perms


def merge_many_result(
    structure: Structure,
    states: Sequence[Mapping[str, Tensor]],
    *,
    max_iter: int = 100,
    seed: int = 0,
    solver: str = "auto",
    progress: bool = False,
) -> ManyMerge:
    """:func:`merge_many` (same arguments), returning the merge with its passes and whether they
    converged (``iterations``, ``converged``).

    Raises:
        ValueError: as :func:`merge_many`.
    """
    _check(structure, states)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"merge_many: max_iter must be a positive integer, got {max_iter!r}")
    n = len(states)
    states = [dict(s) for s in states]
    perms = [identity_permutation(structure) for _ in range(n)]
    aligned = [dict(s) for s in states]
    rng = torch.Generator().manual_seed(int(seed))
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(desc="MergeMany", unit="pass", total=max_iter, leave=False)
    passes, converged = 0, False
    for passes in range(1, max_iter + 1):
        changed = False
        for i in torch.randperm(n, generator=rng).tolist():
            others = mean_state([aligned[j] for j in range(n) if j != i])
            new = weight_matching(structure, others, states[i], init=perms[i], seed=int(seed) + passes * n + i,
                                  solver=solver)
            if any(not torch.equal(new[g], perms[i][g]) for g in new):
                changed = True
                perms[i] = new
                aligned[i] = permute(structure, states[i], new)
        if bar is not None:
            bar.update(1)
        if not changed:
            converged = True
            break
    if bar is not None:
        bar.close()
    # express everything in model 0's basis
    to_zero = inverse_permutation(perms[0])
    perms = [compose_permutations(p, to_zero) for p in perms]
    aligned = [permute(structure, s, p) for s, p in zip(states, perms)]
    return ManyMerge(mean_state(aligned), perms, passes, converged)


def repair_many(
    model: nn.Module,
    states: Sequence[Mapping[str, Tensor]],
    state_merged: Mapping[str, Tensor],
    data: Iterable[Any],
    *,
    num_batches: int | None = None,
    device: torch.device | str | None = None,
    eps: float = 1e-10,
) -> StateDict:
    r"""REPAIR for a merge of N aligned models: rescale the merged network's channels so their
    mean and standard deviation are the averages over the N models
    (Jordan et al., https://arxiv.org/abs/2211.08403, with :math:`\mu_* = \frac1N\sum_i\mu_i`,
    :math:`\sigma_* = \frac1N\sum_i\sigma_i`). For BatchNorm networks this is
    :func:`merging.reset_batchnorm` of ``state_merged``.

    Args:
        model (nn.Module): the architecture (its own weights are ignored).
        states (list[StateDict]): the N models, aligned.
        state_merged (StateDict): their merge.
        data (Iterable): re-iterable ``(x, y)`` batches.
        num_batches, device, eps: as for :func:`merging.repair`.

    Returns:
        StateDict: a new state dict.

    Raises:
        ValueError: as :func:`merging.repair`.
    """
    from merging._eval import batchnorm_layers, prepare_state, resolve_device
    from merging.repair import _apply_repair, _measure, _Moments, _repair_plan, _RepairPlan, reset_batchnorm

    if batchnorm_layers(model):
        return reset_batchnorm(model, state_merged, data, num_batches=num_batches, device=device)
    if len(states) < 1:
        raise ValueError("repair_many: needs at least one model")
    dev = resolve_device(state_merged, device)
    plan = _repair_plan(model, states[0], states[-1], data, device=dev, num_batches=num_batches)
    if not plan.layers:
        return dict(state_merged)
    stats = [_measure(model, prepare_state(model, s, dev, fn="repair"), data, plan.layers, device=dev,
                      num_batches=num_batches) for s in states]
    target = {}
    for name in plan.layers:
        mean = sum(st[name].mean for st in stats) / len(stats)
        std = sum(st[name].std for st in stats) / len(stats)
        target[name] = _Moments(mean=mean, var=std.square())
    plan = _RepairPlan(layers=plan.layers, stats_a=target, stats_b=target)
    return _apply_repair(model, plan, state_merged, data, alpha=0.0, device=dev, num_batches=num_batches, eps=eps)
