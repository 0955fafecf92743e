"""DWSLayer: a DWSNets weight-space layer (weight-to-weight and bias blocks, hidden symmetry)."""
from __future__ import annotations

from ._private import REDUCTIONS
from .hnp_linear import HNPLinear
from .network_spec import NetworkSpec

__all__ = ["DWSLayer"]


class DWSLayer(HNPLinear):
    r"""The layer of `"Equivariant Architectures for Learning in Deep Weight Spaces"
    <https://arxiv.org/abs/2301.12780>`_ (Navon et al., 2023): weight-to-weight,
    weight-to-bias, bias-to-weight and bias-to-bias blocks, each equivariant to permutations
    of the hidden neurons of an MLP (inputs and outputs fixed).

    DWSNets' blocks, summed, span the same term set as :class:`HNPLinear`: for a target block
    :math:`W^i` a source :math:`W^m` or :math:`b^m` contributes only its pooled invariants when
    :math:`|i - m| > 1`, its reductions along the shared neuron set when :math:`m = i \pm 1`,
    and the entry, row, column and full reductions when :math:`m = i`; fixed input and output
    axes are mixed fully. What differs is the set reduction, which DWSNets leaves open:

    .. math::
        \rho_{k}\, W^i_{jk} \in \Big\{ \tfrac{1}{n}\textstyle\sum_k,\ \sum_k,\ \max_k \Big\}.

    With ``reduction="max"`` the layer is no longer linear, but still equivariant.

    Args:
        spec (NetworkSpec): the shapes of the weight space (at least two layers).
        in_channels (int): ``C``.
        out_channels (int): ``C_out``.
        reduction (str, optional): ``"mean"``, ``"sum"`` or ``"max"``. (default: ``"mean"``)

    Shapes:
        - input: :class:`WeightSpaceFeatures`, weights ``(B, C, n_l, n_{l-1}, *kernel)``,
          biases ``(B, C, n_l)``;
        - output: the same with ``C_out`` channels.

    Returns:
        WeightSpaceFeatures: equivariant features.

    Raises:
        ValueError: unknown ``reduction``, fewer than two layers, or input not fitting ``spec``.

    Example:
        >>> spec = NetworkSpec.from_shapes([(8, 2), (8, 8), (1, 8)])
        >>> DWSLayer(spec, 1, 8, reduction="max")
        DWSLayer(1, 8, reduction='max')
    """

    def __init__(self, spec: NetworkSpec, in_channels: int, out_channels: int, *, reduction: str = "mean") -> None:
        if reduction not in REDUCTIONS:
            raise ValueError(f"DWSLayer: unknown reduction {reduction!r}; choose one of: {', '.join(REDUCTIONS)}")
        self.reduction = reduction
        super().__init__(spec, in_channels, out_channels)

    @property
    def _reduction(self) -> str:  # type: ignore[override]
        return self.reduction

    def __repr__(self) -> str:
        return f"DWSLayer({self.in_channels}, {self.out_channels}, reduction={self.reduction!r})"
