"""The sine activation of SIREN."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Sine(nn.Module):
    r"""Elementwise sine activation :math:`\sin(\omega_0 x)` from `"Implicit Neural Representations
    with Periodic Activation Functions" <https://arxiv.org/abs/2006.09661>`_.

    .. math::
        \mathrm{Sine}(x) = \sin(\omega_0 \, x)

    The class attribute ``elementwise = True`` tells structure tracers that it acts on each entry
    alone, so it commutes with permutations of its input like ReLU does.

    Args:
        w0 (float, optional): frequency :math:`\omega_0` (default: ``1.0``).

    Shapes:
        - input: ``(*)``
        - output: ``(*)``, same shape.
    """

    elementwise = True

    def __init__(self, w0: float = 1.0) -> None:
        super().__init__()
        self.w0 = float(w0)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.w0 * x)

    def extra_repr(self) -> str:
        return f"w0={self.w0}"
