"""``nuslerp``: spherical interpolation of two models (or of their task vectors), row-wise or flattened."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._common import StateDict, check_states, merge_each_tensor, per_model
from ._registry import merge_method


def nuslerp_tensor(t: float, v0: Tensor, v1: Tensor, *, dim: int = -1, flatten: bool = False,
                   eps: float = 1e-8) -> Tensor:
    """SLERP of ``v0`` and ``v1`` along ``dim`` (each slice its own angle), or of the flattened
    tensors; (nearly) colinear slices, ``1 - cos^2 <= eps^2``, are interpolated linearly."""
    shape = v0.shape
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif dim != -1:
        v0, v1 = v0.transpose(dim, -1), v1.transpose(dim, -1)
    u0 = v0 / torch.norm(v0, dim=-1, keepdim=True).clamp(min=1e-7)
    u1 = v1 / torch.norm(v1, dim=-1, keepdim=True).clamp(min=1e-7)
    cos = torch.sum(u0 * u1, dim=-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos.square()) <= eps ** 2
    theta = torch.acos(torch.where(colinear, 0, cos))
    sin = torch.sin(theta)
    res = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / sin
    res = torch.where(colinear, (1 - t) * v0 + t * v1, res)
    if dim != -1 and not flatten:
        res = res.transpose(dim, -1)
    return res.reshape(shape)


@merge_method(name="nuslerp", pretty_name="NuSLERP", reference_url="https://github.com/arcee-ai/mergekit")
def nuslerp(states: list[StateDict], base: StateDict | None, *,
            weights: float | Sequence[float] | None = None, nuslerp_row_wise: bool = False,
            nuslerp_flatten: bool = True) -> StateDict:
    r"""mergekit's NuSLERP: spherical interpolation of two models at
    :math:`t = w_1 / (w_0 + w_1)` (``0.5`` when the weights sum to zero), either of the flattened
    tensors or slice by slice; with a base, of the two task vectors:

    .. math::
        \theta = \theta_{base} + \mathrm{slerp}(t, \theta_0 - \theta_{base}, \theta_1 - \theta_{base})

    Args:
        states (list[StateDict]): exactly two models.
        base (StateDict, optional): interpolate task vectors from it.
        weights (float or list[float], optional): the two weights. (default: ``[1, 1]``)
        nuslerp_row_wise (bool, optional): without flattening, interpolate each column slice
            (``dim=0``) rather than each row (the last axis). (default: ``False``)
        nuslerp_flatten (bool, optional): interpolate the flattened tensors. (default: ``True``)

    Shapes:
        every tensor keeps its shape.

    Returns:
        StateDict: a new state dict; non-floating tensors come from the base (else model 0).

    Raises:
        ValueError: not two models, mismatched keys or shapes.
    """
    fn = "nuslerp"
    ref = check_states(fn, states, base)
    if len(states) != 2:
        raise ValueError(f"{fn}: interpolates exactly two models (plus an optional base), got {len(states)}")
    w0, w1 = per_model(weights, 2, "weights", fn, 1.0)
    t = 0.5 if abs(w0 + w1) < 1e-6 else w1 / (w0 + w1)
    dim = 0 if nuslerp_row_wise else -1

    def interpolate(key: str, tensors: list[Tensor], r: Tensor) -> Tensor:
        a, b = tensors
        if base is None:
            return nuslerp_tensor(t, a, b, dim=dim, flatten=nuslerp_flatten)
        return r + nuslerp_tensor(t, a - r, b - r, dim=dim, flatten=nuslerp_flatten)  # r: the base's tensor

    return merge_each_tensor(ref, states, interpolate, promote_with_models=False)
