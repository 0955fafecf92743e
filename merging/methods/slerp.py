"""``slerp``: spherical linear interpolation of two models, tensor by tensor."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ._common import StateDict, check_states, is_float
from ._registry import merge_method


_CHUNK = 1024 * 1024


def slerp_tensor(v0: Tensor, v1: Tensor, t: float, dot_threshold: float = 0.9995, eps: float = 1e-8) -> Tensor:
    r"""Spherical interpolation of two tensors seen as flat vectors (Shoemake 1985), as mergekit
    0.1.5 computes it: in float32 (float64 for float64 inputs), on directions :math:`v/\|v\|`
    (a vector of norm at most ``eps`` is left unnormalised, so a zero tensor is interpolated as
    a vector orthogonal to the other), norms and dot product summed over chunks of 2^20 entries.

    .. math::
        \Omega = \arccos\frac{\langle v_0, v_1\rangle}{\|v_0\|\|v_1\|},\qquad
        v(t) = \frac{\sin((1-t)\Omega)}{\sin\Omega} v_0 + \frac{\sin(t\Omega)}{\sin\Omega} v_1

    Falls back to :math:`(1-t) v_0 + t v_1` when the directions are nearly colinear
    (``|cos Omega| > dot_threshold``). The result has ``v0``'s dtype.
    """
    dt = torch.float64 if v0.dtype == torch.float64 else torch.float32
    a, b = v0.reshape(1, -1), v1.reshape(1, -1)
    tt = torch.tensor([[float(t)]], dtype=dt, device=v0.device)
    if not a.shape[1]:
        return ((1 - tt) * a + tt * b).reshape(v0.shape).to(v0.dtype)
    starts = range(0, a.shape[1], _CHUNK)
    na = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(a[:, i:i + _CHUNK].to(dt), dim=1, keepdim=True)
                                               for i in starts]), dim=0)
    nb = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(b[:, i:i + _CHUNK].to(dt), dim=1, keepdim=True)
                                               for i in starts]), dim=0)
    na = torch.where(na > eps, na, 1)
    nb = torch.where(nb > eps, nb, 1)
    dot = torch.stack([((a[:, i:i + _CHUNK].to(dt) / na) * (b[:, i:i + _CHUNK].to(dt) / nb)).sum(dim=1, keepdim=True)
                       for i in starts]).sum(dim=0).clamp(-1, 1)
    linear = dot.abs() > dot_threshold
    theta = torch.acos(torch.where(linear, 0, dot))
    sin = torch.sin(theta)
    ca = torch.where(linear, 1 - tt, torch.sin((1 - tt) * theta) / sin)
    cb = torch.where(linear, tt, torch.sin(tt * theta) / sin)
    out = torch.empty_like(a)
    for i in starts:
        out[:, i:i + _CHUNK] = ca * a[:, i:i + _CHUNK].to(dt) + cb * b[:, i:i + _CHUNK].to(dt)
    return out.reshape(v0.shape)


@merge_method(name="slerp", pretty_name="SLERP", reference_url="https://dl.acm.org/doi/10.1145/325165.325242")
def slerp(states: list[StateDict], base: StateDict | None, *, t: float = 0.5,
          dot_threshold: float = 0.9995) -> StateDict:
    r"""Spherical linear interpolation between two models, per tensor (Shoemake, "Animating
    rotation with quaternion curves", 1985; computed as mergekit 0.1.5 does, see :func:`slerp_tensor`).

    .. math::
        \theta_k(t) = \frac{\sin((1-t)\Omega_k)}{\sin\Omega_k}\theta^{(0)}_k
                    + \frac{\sin(t\Omega_k)}{\sin\Omega_k}\theta^{(1)}_k,\qquad
        \cos\Omega_k = \frac{\langle\theta^{(0)}_k,\theta^{(1)}_k\rangle}{\|\theta^{(0)}_k\|\|\theta^{(1)}_k\|}

    with a linear fallback where the two tensors are nearly colinear.

    Args:
        states (list[StateDict]): the other endpoint (one model) when ``base`` is given, else both
            endpoints (two models).
        base (StateDict, optional): the endpoint at ``t = 0``.
        t (float, optional): position, ``0`` gives the first endpoint. (default: ``0.5``)
        dot_threshold (float, optional): above this ``|cos Omega|`` interpolate linearly.
            (default: ``0.9995``)

    Shapes:
        every tensor keeps its shape.

    Returns:
        StateDict: a new state dict; non-floating tensors come from the first endpoint.

    Raises:
        ValueError: not exactly two endpoints, mismatched keys or shapes.
    """
    fn = "slerp"
    ends = ([base] if base is not None else []) + list(states)
    if len(ends) != 2:
        raise ValueError(f"{fn}: interpolates exactly two models (a base and one model, or two models); "
                         f"got {len(ends)}")
    check_states(fn, ends[1:], ends[0])
    t = float(t)
    if not math.isfinite(t):
        raise ValueError(f"{fn}: t must be a finite number, got {t!r}")
    out: StateDict = {}
    for key, a in ends[0].items():
        if not is_float(a):
            out[key] = a.clone()
            continue
        b_ = ends[1][key].to(a.device)
        if b_.dtype != a.dtype:  # mixed inputs: interpolate in their promoted dtype, write in the first's
            dt = torch.promote_types(a.dtype, b_.dtype)
            out[key] = slerp_tensor(a.to(dt), b_.to(dt), t, dot_threshold).to(a.dtype)
        else:
            out[key] = slerp_tensor(a, b_, t, dot_threshold)
    return out
