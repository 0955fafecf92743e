"""``model_stock``: interpolate between the base and the models' average by their angle."""
from __future__ import annotations

import torch
from torch import Tensor

from ._common import StateDict, check_states, merge_each_tensor
from ._registry import merge_method


def model_stock_tensor(tensors: list[Tensor], base: Tensor, *, filter_wise: bool = False) -> Tensor:
    """Model Stock of one tensor (see :func:`model_stock`); all inputs in one dtype."""
    w0, ws = base, tensors
    if filter_wise:
        if w0.dim() == 1:
            w0, ws = w0.unsqueeze(0), [w.unsqueeze(0) for w in ws]
    else:
        w0, ws = w0.reshape(-1), [w.reshape(-1) for w in ws]
    offsets = [w - w0 for w in ws]
    cosines = []
    for i in range(len(offsets)):
        for j in range(i + 1, len(offsets)):
            norms = torch.norm(offsets[i], dim=-1) * torch.norm(offsets[j], dim=-1)
            cosines.append(((offsets[i] * offsets[j]).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    n = len(ws)
    den = 1 + (n - 1) * cos
    singular = den.abs() < 1e-6  # t = 0 (the base) where the formula divides by 0
    t = torch.where(singular, torch.zeros_like(cos), (n * cos) / torch.where(singular, torch.ones_like(den), den))
    avg = sum(ws) / n
    return (t * avg + (1 - t) * w0).reshape(base.shape)


@merge_method(name="model_stock", pretty_name="Model Stock", reference_url="https://arxiv.org/abs/2403.19522",
              needs_base=True)
def model_stock(states: list[StateDict], base: StateDict | None, *, filter_wise: bool = False) -> StateDict:
    r"""Model Stock (Jang et al., "Model Stock: All we need is just a few fine-tuned models",
    https://arxiv.org/abs/2403.19522), as mergekit computes it: with
    :math:`\cos\theta` the mean pairwise cosine of the task vectors :math:`\theta_i - \theta_0`,

    .. math::
        t = \frac{N \cos\theta}{1 + (N-1)\cos\theta},\qquad
        \theta = t\,\frac{1}{N}\sum_i \theta_i + (1-t)\,\theta_0

    over each whole tensor, or row by row with ``filter_wise`` (a vector is one row); where the
    denominator is within ``1e-6`` of 0, :math:`t = 0`.

    Args:
        states (list[StateDict]): at least two fine-tuned models.
        base (StateDict): the pre-trained model :math:`\theta_0`.
        filter_wise (bool, optional): one :math:`t` per row instead of per tensor. (default: ``False``)

    Shapes:
        every tensor keeps its shape.

    Returns:
        StateDict: a new state dict; non-floating tensors come from the base.

    Raises:
        ValueError: no base, fewer than two models, mismatched keys or shapes.
    """
    fn = "model_stock"
    check_states(fn, states, base, min_models=2, needs_base=True)
    return merge_each_tensor(base, states, lambda key, ts, b: model_stock_tensor(ts, b, filter_wise=filter_wise),
                             promote_with_models=False)
