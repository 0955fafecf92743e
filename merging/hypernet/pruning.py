"""Structured magnitude pruning: shrink every hidden group to a given width (a baseline for resampling)."""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from graphs import Structure
from graphs import axis_index

__all__ = ["unit_norms", "magnitude_prune", "select_units"]


def unit_norms(structure: Structure, state: Mapping[str, Tensor], group: str) -> Tensor:
    """The L2 norm of each unit's incoming parameters (the tensors whose axis 0 the group is).

    Shapes:
        output: ``(n,)``.
    """
    sq = None
    for name, axis in structure.groups[group].members:
        if axis != 0 or structure.is_buffer(name) or name not in state:
            continue
        t = state[name].detach().float()
        part = t.reshape(t.shape[0], -1).pow(2).sum(1)
        sq = part if sq is None else sq + part
    if sq is None:
        raise ValueError(f"unit_norms: group {group!r} is the output axis of no parameter")
    return sq.sqrt()


def select_units(structure: Structure, state: Mapping[str, Tensor], keep: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Keep only the units ``keep[group]`` (index tensors) of each group, along every axis it acts on."""
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        axes = structure.axes.get(k)
        if axes is None:
            out[k] = v
            continue
        t = v
        for i, a in enumerate(axes):
            if a is None:
                continue
            idx = axis_index(a, keep, t.device)
            if idx is not None:
                t = t.index_select(i, idx)
        out[k] = t.contiguous()
    return out


def magnitude_prune(structure: Structure, state: Mapping[str, Tensor], sizes: Mapping[str, int]) -> dict[str, Tensor]:
    """Prune each group to ``sizes[group]`` units, keeping those with the largest incoming-weight norm.

    The kept units stay in their original order and keep their weights unchanged (no rescaling,
    no fine-tuning); groups not in ``sizes`` are kept whole.

    Raises:
        ValueError: a size below 1 or above the group's width.
    """
    keep: dict[str, Tensor] = {}
    for g, k in sizes.items():
        n = structure.groups[g].size
        if not 1 <= int(k) <= n:
            raise ValueError(f"magnitude_prune: group {g!r} has {n} units; cannot keep {k}")
        norms = unit_norms(structure, state, g)
        keep[g] = torch.topk(norms, int(k)).indices.sort().values
    return select_units(structure, state, keep)
