"""``linear``: the weighted average of N models (model soups)."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ._common import StateDict, check_states, is_float, per_model
from ._registry import merge_method


@merge_method(name="linear", pretty_name="Linear (weighted average)",
              reference_url="https://arxiv.org/abs/2203.05482")
def linear(states: list[StateDict], base: StateDict | None, *,
           weights: float | Sequence[float] | None = None, normalize: bool = True) -> StateDict:
    r"""Weighted average of N models (Wortsman et al., "Model soups",
    https://arxiv.org/abs/2203.05482).

    .. math::
        \theta = \frac{\sum_i w_i \theta_i}{\sum_i w_i} \quad(\text{normalize}),\qquad
        \theta = \sum_i w_i \theta_i \quad(\text{otherwise})

    computed as mergekit 0.1.5 does: accumulated model by model in float32 (float64 for float64
    inputs), then divided by the sum of the weights. The base, when given, is not averaged in (recipes add a
    ``base_model`` that is not among the models as one more model, as mergekit does); it (else
    model 0) supplies non-floating tensors.

    Args:
        states (list[StateDict]): the N models, same keys and shapes.
        base (StateDict, optional): source of non-floating tensors.
        weights (float or list[float], optional): one weight per model. (default: all ``1``)
        normalize (bool, optional): divide by the sum of the weights. (default: ``True``)

    Shapes:
        every tensor keeps its shape.

    Returns:
        StateDict: a new state dict.

    Raises:
        ValueError: no models, mismatched keys or shapes, wrong number of weights, zero weight sum.
    """
    fn = "linear"
    ref = check_states(fn, states, base)
    ws = per_model(weights, len(states), "weights", fn, 1.0)
    if normalize and sum(ws) == 0:
        raise ValueError(f"{fn}: the weights {ws} sum to zero; cannot normalize (pass normalize=False)")
    out: StateDict = {}
    for key, r in ref.items():
        if not is_float(r):
            out[key] = r.clone()
            continue
        dt = torch.float64 if any(x.dtype == torch.float64 for x in (r, *(s[key] for s in states))) else torch.float32
        w = torch.tensor(ws, dtype=dt, device=r.device)
        acc = torch.zeros(r.shape, dtype=dt, device=r.device)
        for s, c in zip(states, w.unbind(0)):
            acc.addcmul_(s[key].to(r.device), c)
        if normalize:
            acc.div_(w.sum())
        out[key] = acc.to(r.dtype)
    return out
