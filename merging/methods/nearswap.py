"""``nearswap``: take the other model's value where it is close to the base's."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ._common import StateDict, check_states, merge_each_tensor
from ._registry import REQUIRED, merge_method


def nearswap_tensor(base: Tensor, other: Tensor, t: float) -> Tensor:
    """NearSwap of one tensor (see :func:`nearswap`); both inputs in one dtype."""
    weight = (t / torch.abs(base - other).clamp(min=1e-6)).clamp(min=0, max=1)
    return weight * other + (1 - weight) * base


@merge_method(name="nearswap", pretty_name="NearSwap",
              reference_url="https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001", needs_base=True)
def nearswap(states: list[StateDict], base: StateDict | None, *, t: float = REQUIRED) -> StateDict:
    r"""NearSwap (alchemonaut, https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001), as
    mergekit 0.1.5 computes it: entry by entry, move from the base :math:`a` towards the other
    model :math:`b` by

    .. math::
        w = \mathrm{clamp}\Big(\frac{t}{\max(|a - b|, 10^{-6})}, 0, 1\Big),\qquad
        \theta = w\, b + (1 - w)\, a

    so entries that differ by at most ``t`` take :math:`b`'s value, and entries that differ a lot
    stay near :math:`a`'s.

    Args:
        states (list[StateDict]): exactly one model (besides the base).
        base (StateDict): the base model :math:`a`.
        t (float): the closeness threshold (required, as in mergekit).

    Shapes:
        every tensor keeps its shape.

    Returns:
        StateDict: a new state dict; non-floating tensors come from the base.

    Raises:
        ValueError: no base, not one model, mismatched keys or shapes, ``t`` missing or not finite.

    Example:
        >>> merged = nearswap([ft], pre, t=1e-4)  # doctest: +SKIP
    """
    fn = "nearswap"
    check_states(fn, states, base, needs_base=True)
    if len(states) != 1:
        raise ValueError(f"{fn}: swaps between the base and exactly one other model, got {len(states)} models")
    if t is REQUIRED:
        raise ValueError(f"{fn}: t is required (the closeness threshold)")
    t = float(t)
    if not math.isfinite(t):
        raise ValueError(f"{fn}: t must be a finite number, got {t!r}")
    return merge_each_tensor(base, states, lambda key, ts, a: nearswap_tensor(a, ts[0], t))
