"""SIREN: sine-activated MLP for implicit neural representations."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from weightspace.models._common import ExampleInputMixin, device_and_dtype, int_tuple, positive_int, random_input
from weightspace.models._registry import register_model
from weightspace.models.sine import Sine


@register_model("siren", pretty_name="SIREN", reference_url="https://arxiv.org/abs/2006.09661")
class SIREN(ExampleInputMixin, nn.Module):
    r"""SIREN from `"Implicit Neural Representations with Periodic Activation Functions"
    <https://arxiv.org/abs/2006.09661>`_: ``Linear`` layers with :class:`Sine` activations and a
    linear output layer.

    .. math::
        h_l = \sin(\omega_0 (W_l h_{l-1} + b_l)), \quad y = W_L h_{L-1} + b_L

    Initialisation follows the paper: the first layer's weights are
    :math:`\mathcal{U}(-1/n, 1/n)`, later ones :math:`\mathcal{U}(-\sqrt{6/n}/\omega_0, \sqrt{6/n}/\omega_0)`
    with :math:`n` the fan-in; biases keep PyTorch's default.

    Args:
        in_features (int, optional): coordinate dimension (default: ``2``).
        hidden (sequence of int, optional): hidden widths (default: ``(32, 32)``).
        out_features (int, optional): output dimension (default: ``1``).
        w0 (float, optional): frequency :math:`\omega_0` of every sine (default: ``30.0``).
        w0_first (float, optional): frequency of the first sine if different (default: ``w0``).

    Shapes:
        - input: ``(*, in_features)`` coordinates, typically in ``[-1, 1]``
        - output: ``(*, out_features)``

    State dict: ``layers.{l}.weight`` ``(n_out, n_in)`` and ``layers.{l}.bias`` for
    ``l = 0 .. len(hidden)``; the sines hold no tensors.

    Example:
        >>> model = SIREN(2, (32, 32), 1)
        >>> model(model.example_input(5)).shape
        torch.Size([5, 1])
    """

    def __init__(
        self,
        in_features: int = 2,
        hidden: Sequence[int] = (32, 32),
        out_features: int = 1,
        w0: float = 30.0,
        *,
        w0_first: float | None = None,
    ) -> None:
        super().__init__()
        self.in_features = positive_int(in_features, owner="SIREN", name="in_features")
        self.hidden = int_tuple(hidden, owner="SIREN", name="hidden")
        if not self.hidden:
            raise ValueError("SIREN: hidden must hold at least one width, got ()")
        self.out_features = positive_int(out_features, owner="SIREN", name="out_features")
        self.w0 = float(w0)
        self.w0_first = float(w0 if w0_first is None else w0_first)
        self.input_shape: tuple[int, ...] = (self.in_features,)
        sizes = (self.in_features, *self.hidden, self.out_features)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.sines = nn.ModuleList(
            Sine(self.w0_first if i == 0 else self.w0) for i in range(len(self.hidden))
        )
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """SIREN initialisation (see the class docstring)."""
        for i, layer in enumerate(self.layers):
            layer.reset_parameters()
            fan_in = layer.in_features
            bound = 1.0 / fan_in if i == 0 else math.sqrt(6.0 / fan_in) / self.w0
            layer.weight.uniform_(-bound, bound)

    def example_input(self, batch_size: int = 2, *, seed: int = 0) -> Tensor:
        """Deterministic coordinates, uniform in ``[-1, 1)``, of shape ``(B, in_features)``."""
        device, dtype = device_and_dtype(self)
        return random_input(self.input_shape, batch_size, seed=seed, device=device, dtype=dtype, low=-1.0, high=1.0)

    def forward(self, x: Tensor) -> Tensor:
        for layer, sine in zip(self.layers[:-1], self.sines):
            x = sine(layer(x))
        return self.layers[-1](x)
