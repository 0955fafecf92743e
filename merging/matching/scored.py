"""Weight matching candidates picked by the loss of the merged network on data."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from graphs import Structure, permute, random_permutation

from .starts import signature_start
from .weight import weight_matching

__all__ = ["scored_weight_matching"]


def scored_weight_matching(structure: Structure, model: nn.Module, state_a: Mapping[str, Tensor],
                           state_b: Mapping[str, Tensor], data: Iterable[Any], *, candidates: int = 20,
                           score_data: Iterable[Any] | None = None, seed: int = 0, solver: str = "auto",
                           device: str | torch.device | None = None, return_info: bool = False):
    """Weight matching run from several starts, the result picked by the merged network's loss.

    On narrow BatchNorm networks the weight-matching objective hardly predicts the barrier:
    permutations with near-equal objectives leave midpoints whose loss differs by a nat or
    more. This runs ``candidates`` weight matchings (the default's two starts, identity and
    unit signatures, then random permutations seeded by ``seed``), builds for each the
    midpoint ``(A + P(B)) / 2``, resets its BatchNorm statistics on ``data`` when the model has
    BatchNorm layers (REPAIR's reset, which a merge of such networks needs anyway), and keeps
    the permutations whose midpoint has the lowest loss on ``score_data``.

    Measured on BatchNorm ResNet-20 pairs (docs/width-sweep.md): it removes more of the
    naive + reset barrier than plain weight matching on average at each width tried, but not
    on every pair, and costs ``candidates`` forward passes over ``data`` and ``score_data``.

    Args:
        structure: from :func:`graphs.trace` on ``model``.
        model: the architecture (its own weights are not used).
        state_a, state_b: the two networks.
        data: batches ``(x, y)`` for the BatchNorm reset (and the score, if ``score_data`` is
            not given); use training data, not the data the merge is evaluated on.
        candidates (int, optional): weight matchings to compare, at least 1. (default: ``20``)
        score_data (optional): batches the candidates are scored on (default: ``data``).
        seed (int, optional): seeds the random starts. (default: ``0``)
        return_info (bool, optional): also return ``{"losses", "picked"}`` (each candidate's
            score, and the index of the one kept; 0 and 1 are the default's two starts).

    Returns:
        ``dict[group, LongTensor]`` (and the info with ``return_info``).
    """
    from merging._eval import batchnorm_layers, evaluate  # merging imports this package
    from merging.interpolate import interpolate
    from merging.repair import reset_batchnorm

    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
        raise ValueError(f"scored_weight_matching: candidates must be a positive integer, got {candidates!r}")
    data = list(data)
    score = data if score_data is None else list(score_data)

    def run(init, s=seed):
        return weight_matching(structure, state_a, state_b, init=init, seed=s, solver=solver, device=device)

    runs = [run(None)]
    if candidates > 1 and structure.groups:
        runs.append(run(signature_start(structure, state_a, state_b, solver=solver)))
    for r in range(candidates - len(runs)):
        runs.append(run(random_permutation(structure, seed + 1000 + r), seed + r))
    has_bn = bool(batchnorm_layers(model))
    losses = []
    for perms in runs:
        mid = interpolate(state_a, permute(structure, state_b, perms))
        if has_bn:
            mid = reset_batchnorm(model, mid, data, device=device)
        losses.append(evaluate(model, mid, score, device=device).loss)
    picked = min(range(len(runs)), key=losses.__getitem__)
    best = {g: p.cpu() for g, p in runs[picked].items()}
    return (best, {"losses": losses, "picked": picked}) if return_info else best
