"""FlatMLP: a baseline MLP on the flattened weights (no symmetry)."""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from ._private import check_features, mlp
from .network_spec import NetworkSpec
from .weight_space_features import WeightSpaceFeatures

__all__ = ["FlatMLP"]


class FlatMLP(nn.Module):
    r"""An MLP on every weight and bias flattened into one vector: the symmetry-blind baseline
    of `"Equivariant Architectures for Learning in Deep Weight Spaces"
    <https://arxiv.org/abs/2301.12780>`_ and `"Permutation Equivariant Neural Functionals"
    <https://arxiv.org/abs/2302.14040>`_. Neither invariant nor equivariant: train it with
    permutation augmentation.

    .. math::
        y = \mathrm{MLP}\big(\mathrm{vec}(W^1), \mathrm{vec}(b^1), \dots, \mathrm{vec}(W^L), \mathrm{vec}(b^L)\big)

    Args:
        spec (NetworkSpec): the shapes of the weight space.
        in_channels (int): ``C``.
        out_channels (int): size of the output.
        hidden (sequence of int, optional): hidden widths. (default: ``(256, 256)``)
        dropout (float, optional): dropout between layers. (default: ``0.0``)

    Shapes:
        - input: :class:`WeightSpaceFeatures` with ``C`` channels;
        - output: ``(B, out_channels)``.

    Example:
        >>> spec = NetworkSpec.from_shapes([(8, 4), (3, 8)])
        >>> FlatMLP(spec, 1, 10)
        FlatMLP(67, 10)
    """

    def __init__(self, spec: NetworkSpec, in_channels: int, out_channels: int, *,
                 hidden: Sequence[int] = (256, 256), dropout: float = 0.0) -> None:
        super().__init__()
        self.spec = spec
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.hidden = tuple(hidden)
        self.dropout = dropout
        self.num_features = spec.num_params * in_channels
        self.mlp = mlp([self.num_features, *self.hidden, out_channels], dropout=dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                m.reset_parameters()

    def __repr__(self) -> str:
        return f"FlatMLP({self.num_features}, {self.out_channels})"

    def forward(self, x: WeightSpaceFeatures) -> Tensor:
        check_features("FlatMLP", self.spec, self.in_channels, x)
        return self.mlp(x.flatten())
