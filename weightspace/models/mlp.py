"""Multilayer perceptron."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from weightspace.models._common import ExampleInputMixin, int_tuple, make_activation, positive_int
from weightspace.models._registry import register_model


@register_model("mlp", pretty_name="Multilayer perceptron")
class MLP(ExampleInputMixin, nn.Module):
    r"""Fully connected network: ``Linear`` layers with one elementwise activation between them.

    .. math::
        h_0 = \mathrm{flatten}(x), \quad h_{l} = \sigma(W_l h_{l-1} + b_l), \quad y = W_L h_{L-1} + b_L

    The input is flattened from the second axis on, so an MLP with ``in_features=64`` takes
    ``(B, 64)`` as well as ``(B, 1, 8, 8)`` images.

    Args:
        in_features (int, optional): input size after flattening (default: ``784``).
        hidden (sequence of int, optional): hidden widths; empty for a linear model
            (default: ``(512, 512, 512)``).
        out_features (int, optional): output size (default: ``10``).
        activation (str, optional): ``"relu"``, ``"gelu"``, ``"tanh"``, ``"sigmoid"``, ``"silu"``,
            ``"leaky_relu"``, ``"elu"``, ``"softplus"`` or ``"identity"`` (default: ``"relu"``).
        bias (bool, optional): whether the linear layers have biases (default: ``True``).

    Shapes:
        - input: ``(B, in_features)`` or ``(B, *)`` with ``prod(*) == in_features``
        - output: ``(B, out_features)``

    State dict: ``layers.{l}.weight`` ``(n_out, n_in)`` and ``layers.{l}.bias`` ``(n_out,)`` for
    ``l = 0 .. len(hidden)``.

    Example:
        >>> model = MLP(64, (32, 32), 10)
        >>> model(model.example_input(4)).shape
        torch.Size([4, 10])
    """

    def __init__(
        self,
        in_features: int = 784,
        hidden: Sequence[int] = (512, 512, 512),
        out_features: int = 10,
        activation: str = "relu",
        *,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.in_features = positive_int(in_features, owner="MLP", name="in_features")
        self.hidden = int_tuple(hidden, owner="MLP", name="hidden")
        self.out_features = positive_int(out_features, owner="MLP", name="out_features")
        self.activation = activation
        self.bias = bias
        self.input_shape: tuple[int, ...] = (self.in_features,)
        sizes = (self.in_features, *self.hidden, self.out_features)
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in zip(sizes[:-1], sizes[1:]))
        self.act = make_activation(activation, owner="MLP")
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise every layer with PyTorch's default ``Linear`` initialisation."""
        for layer in self.layers:
            layer.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        for layer in self.layers[:-1]:
            x = self.act(layer(x))
        return self.layers[-1](x)
