"""``multislerp``: spherical interpolation of N models (barycentric, through the tangent space)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._common import StateDict, check_states, merge_each_tensor, per_model
from ._registry import merge_method


def multislerp_tensor(tensors: list[Tensor], weights: Sequence[float], base: Tensor | None = None, *,
                      normalize_weights: bool = True, eps: float = 1e-8) -> Tensor:
    """Multi-SLERP of one tensor (see :func:`multislerp`); all inputs in one dtype.

    Raises:
        ValueError: three or more directions whose weighted mean is zero (antipodal inputs).
    """
    if len(tensors) == 1:
        return tensors[0]
    x = torch.stack(tensors)  # (N, *shape)
    if base is not None:
        x = x - base
    flat = x.reshape(x.shape[0], -1)
    w = torch.tensor(list(weights), dtype=x.dtype, device=x.device)
    if normalize_weights:
        w = w / w.sum()
    norms = torch.linalg.vector_norm(flat, dim=-1, keepdim=True)  # (N, 1)
    units = flat / (norms + eps)
    mean = (units * w.view(-1, 1)).sum(0)
    mean_norm = torch.linalg.vector_norm(mean)
    if mean_norm < eps:
        if x.shape[0] != 2:
            raise ValueError("the weighted mean of the directions is zero (antipodal models whose weights balance "
                             "out); change the weights")
        res = (x[0] * w[0] + x[1] * w[1]).reshape(x.shape[1:])  # two antipodal directions: a weighted sum
        return res if base is None else res + base
    mean = mean / mean_norm
    tangent = units - (units * mean).sum(-1, keepdim=True) * mean  # log map at the mean (first order)
    step = (tangent * w.view(-1, 1)).sum(0)
    step_norm = torch.linalg.vector_norm(step) + eps
    res = mean * torch.cos(step_norm) + step * (torch.sin(step_norm) / step_norm)  # exp map back
    res = (res * (norms.squeeze(-1) * w).sum()).reshape(x.shape[1:])
    return res if base is None else res + base


@merge_method(name="multislerp", pretty_name="Multi-SLERP",
              reference_url="https://goddard.blog/posts/multislerp-wow-what-a-cool-idea")
def multislerp(states: list[StateDict], base: StateDict | None, *,
               weights: float | Sequence[float] | None = None, normalize_weights: bool = True,
               eps: float = 1e-8) -> StateDict:
    r"""Multi-SLERP (C. Goddard, https://goddard.blog/posts/multislerp-wow-what-a-cool-idea): the
    weighted spherical mean of N models, per tensor, as mergekit 0.1.5 computes it. The flattened
    tensors (task vectors :math:`\theta_i - \theta_{base}` with a base) are projected on the unit
    sphere, :math:`u_i = x_i / (\|x_i\| + \epsilon)`; with :math:`m` their normalised weighted mean,

    .. math::
        T = \sum_i w_i \big(u_i - \langle u_i, m\rangle m\big),\qquad
        x = \Big(\cos\|T\|\, m + \sin\|T\| \frac{T}{\|T\|}\Big) \sum_i w_i \|x_i\|

    (:math:`\|T\|` includes :math:`\epsilon`); one model is returned as it is.

    Args:
        states (list[StateDict]): the N models.
        base (StateDict, optional): interpolate task vectors from it.
        weights (float or list[float], optional): one per model (mergekit requires them; here
            they default to equal weights). (default: all ``1``)
        normalize_weights (bool, optional): divide the weights by their sum. (default: ``True``)
        eps (float, optional): :math:`\epsilon`. (default: ``1e-8``)

    Shapes:
        every tensor keeps its shape.

    Returns:
        StateDict: a new state dict; non-floating tensors come from the base (else model 0).

    Raises:
        ValueError: no models, mismatched keys or shapes, or three or more models whose weighted
            mean direction is zero for a tensor.

    Example:
        >>> merged = multislerp([a, b, c], None, weights=[0.5, 0.3, 0.2])  # doctest: +SKIP
    """
    fn = "multislerp"
    ref = check_states(fn, states, base)
    ws = per_model(weights, len(states), "weights", fn, 1.0)

    def interpolate(key: str, tensors: list[Tensor], r: Tensor) -> Tensor:
        try:  # r is the base's tensor when there is a base
            return multislerp_tensor(tensors, ws, None if base is None else r,
                                     normalize_weights=bool(normalize_weights), eps=float(eps))
        except ValueError as e:
            raise ValueError(f"{fn}: {key!r}: {e}") from None

    return merge_each_tensor(ref, states, interpolate)
