"""``karcher``: the Riemannian (Karcher) mean of the models' directions, scaled by their mean norm."""
from __future__ import annotations

import torch
from torch import Tensor

from ._common import StateDict, check_states, merge_each_tensor
from ._registry import merge_method


def karcher_tensor(tensors: list[Tensor], *, max_iter: int = 10, tol: float = 1e-5) -> Tensor:
    """Karcher mean on the unit sphere of equally weighted tensors, times their mean norm
    (norms in float32, float64 for float64 inputs, as mergekit 0.1.5)."""
    n = len(tensors)
    if n == 1:
        return tensors[0]
    dt = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32
    alphas = [1.0 / n] * n
    norms, units = [], []
    for x in tensors:
        nrm = torch.linalg.vector_norm(x.to(dt))
        norms.append(nrm)
        units.append(torch.zeros_like(x) if nrm.item() == 0.0 else (x / nrm).to(x.dtype))
    valid = [i for i, v in enumerate(norms) if v.item() > tol]
    if not valid:
        return sum(x * 0 for x in tensors)
    total = sum(alphas[i] for i in valid)
    a_valid = [alphas[i] / total for i in valid]
    u_valid = [units[i] for i in valid]
    u = torch.zeros_like(u_valid[0])
    for a, ui in zip(a_valid, u_valid):
        u += a * ui
    nu = torch.linalg.vector_norm(u.to(dt))
    u = u_valid[0].clone() if nu.item() < tol else (u / nu).to(u.dtype)
    for _ in range(max_iter):
        tangent = torch.zeros_like(u)
        for a, ui in zip(a_valid, u_valid):
            dot = torch.clamp(torch.dot(u.flatten(), ui.flatten()), -1.0, 1.0)
            theta = torch.arccos(dot)
            if theta.item() < tol:
                continue
            tangent += a * (theta / torch.sin(theta)) * (ui - dot * u)
        nt = torch.linalg.vector_norm(tangent.to(dt))
        if nt.item() < tol:
            break
        u = (torch.cos(nt) * u + torch.sin(nt) * (tangent / nt)).to(u.dtype)
        nu2 = torch.linalg.vector_norm(u.to(dt))
        if nu2.item() > tol:
            u = (u / nu2).to(u.dtype)
    scale = sum(a * v for a, v in zip(alphas, norms))
    return scale * u


@merge_method(name="karcher", pretty_name="Karcher mean", reference_url="https://arxiv.org/abs/2603.04972")
def karcher(states: list[StateDict], base: StateDict | None, *, max_iter: int = 10, tol: float = 1e-5) -> StateDict:
    r"""The Karcher (Riemannian) mean of N models, per tensor, as mergekit's ``karcher``: the
    tensors' directions :math:`u_i = \theta_i/\|\theta_i\|` are averaged on the unit sphere by
    fixed-point iteration from their normalised arithmetic mean,

    .. math::
        T = \sum_i \alpha_i \frac{\phi_i}{\sin\phi_i}(u_i - \cos\phi_i\, u),\qquad
        u \leftarrow \cos\|T\|\, u + \sin\|T\| \frac{T}{\|T\|},

    and the result is rescaled by the mean norm :math:`\sum_i \alpha_i \|\theta_i\|`
    (:math:`\alpha_i = 1/N`).

    Args:
        states (list[StateDict]): the N models.
        base (StateDict, optional): supplies non-floating tensors (recipes add a ``base_model``
            that is not among the models as one more model, as mergekit does).
        max_iter (int, optional): iterations of the fixed point. (default: ``10``)
        tol (float, optional): stop when the tangent's norm is below it. (default: ``1e-5``)

    Shapes:
        every tensor keeps its shape.

    Returns:
        StateDict: a new state dict.

    Raises:
        ValueError: no models, mismatched keys or shapes.
    """
    ref = check_states("karcher", states, base)
    iters, tolerance = int(max_iter), float(tol)
    return merge_each_tensor(ref, states, lambda key, ts, r: karcher_tensor(ts, max_iter=iters, tol=tolerance),
                             promote_with_models=False)
