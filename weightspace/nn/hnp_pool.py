"""HNPPool: invariant pooling of weight-space features when only hidden neurons permute."""
from __future__ import annotations

from torch import Tensor, nn

from ._private import check_features, hnp_global_dim, hnp_globals, to_entries
from .network_spec import NetworkSpec
from .weight_space_features import WeightSpaceFeatures

__all__ = ["HNPPool"]


class HNPPool(nn.Module):
    r"""Invariant pooling for the HNP symmetry (`"Permutation Equivariant Neural Functionals"
    <https://arxiv.org/abs/2302.14040>`_): hidden axes are averaged, fixed input and output
    axes are kept.

    .. math::
        P(W, b) = \big[\, W^1_{\star,:},\ W^2_{\star\star}, \dots, W^{L-1}_{\star\star},\
        W^L_{:,\star},\ b^1_\star, \dots, b^{L-1}_\star,\ b^L \,\big]

    Args:
        spec (NetworkSpec): the shapes of the weight space (at least two layers).
        in_channels (int): ``C``.

    Shapes:
        - input: :class:`WeightSpaceFeatures` with ``C`` channels;
        - output: ``(B, HNPPool.num_outputs(spec, C))``.

    Returns:
        Tensor: invariant features.

    Raises:
        ValueError: fewer than two layers.

    Example:
        >>> spec = NetworkSpec.from_shapes([(8, 4), (3, 8)])
        >>> HNPPool.num_outputs(spec, 2)   # 2*4 + 2*3 + 2 + 2*3
        22
    """

    def __init__(self, spec: NetworkSpec, in_channels: int) -> None:
        super().__init__()
        if spec.num_layers < 2:
            raise ValueError(f"HNPPool: the network has {spec.num_layers} layer(s), hence no hidden neurons; "
                             f"use NPPool")
        self.spec = spec
        self.in_channels = in_channels
        self.reset_parameters()

    def reset_parameters(self) -> None:
        pass

    @staticmethod
    def num_outputs(spec: NetworkSpec, in_channels: int) -> int:
        return hnp_global_dim(spec, in_channels)

    def __repr__(self) -> str:
        return f"HNPPool({self.in_channels}, {self.num_outputs(self.spec, self.in_channels)})"

    def forward(self, x: WeightSpaceFeatures) -> Tensor:
        check_features("HNPPool", self.spec, self.in_channels, x)
        return hnp_globals([to_entries(w) for w in x.weights], list(x.biases))
