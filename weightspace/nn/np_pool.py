"""NPPool: invariant pooling of weight-space features when every neuron set is permutable."""
from __future__ import annotations

from torch import Tensor, nn

from ._private import check_features, np_global_dim, np_globals, to_entries
from .network_spec import NetworkSpec
from .weight_space_features import WeightSpaceFeatures

__all__ = ["NPPool"]


class NPPool(nn.Module):
    r"""Invariant pooling for the NP symmetry (`"Permutation Equivariant Neural Functionals"
    <https://arxiv.org/abs/2302.14040>`_): the mean of every weight over both neuron axes and
    of every bias over its neurons, per channel (and kernel entry).

    .. math::
        P(W, b) = \big[\, W^1_{\star\star}, \dots, W^L_{\star\star},\ b^1_\star, \dots, b^L_\star \,\big]

    Args:
        spec (NetworkSpec): the shapes of the weight space.
        in_channels (int): ``C``.

    Shapes:
        - input: :class:`WeightSpaceFeatures` with ``C`` channels;
        - output: ``(B, NPPool.num_outputs(spec, C))``.

    Returns:
        Tensor: invariant features.

    Example:
        >>> spec = NetworkSpec.from_shapes([(8, 4), (3, 8)])
        >>> NPPool.num_outputs(spec, 16)
        64
    """

    def __init__(self, spec: NetworkSpec, in_channels: int) -> None:
        super().__init__()
        self.spec = spec
        self.in_channels = in_channels
        self.reset_parameters()

    def reset_parameters(self) -> None:
        pass

    @staticmethod
    def num_outputs(spec: NetworkSpec, in_channels: int) -> int:
        return np_global_dim(spec, in_channels)

    def __repr__(self) -> str:
        return f"NPPool({self.in_channels}, {self.num_outputs(self.spec, self.in_channels)})"

    def forward(self, x: WeightSpaceFeatures) -> Tensor:
        check_features("NPPool", self.spec, self.in_channels, x)
        return np_globals([to_entries(w) for w in x.weights], list(x.biases))
