"""StatNN: an invariant baseline on per-layer statistics of the weights."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ._private import check_features, mlp
from .network_spec import NetworkSpec
from .weight_space_features import WeightSpaceFeatures

__all__ = ["StatNN"]

_QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


class StatNN(nn.Module):
    r"""The StatNN baseline of `"Predicting Neural Network Accuracy from Weights"
    <https://arxiv.org/abs/2002.11448>`_ (Unterthiner et al., 2020): per layer, channel and
    tensor (weight, bias) the mean, variance and 0, 25, 50, 75, 100% quantiles, standardised
    by a batch norm and fed to an MLP. Invariant to every permutation of neurons (and to much
    more: it sees only the distribution of each tensor's values).

    .. math::
        y = \mathrm{MLP}\big(\mathrm{BN}\big[\, \mu(W^l), \sigma^2(W^l), q_{0..1}(W^l),\
        \mu(b^l), \sigma^2(b^l), q_{0..1}(b^l) \,\big]_{l = 1..L}\big)

    Args:
        spec (NetworkSpec): the shapes of the weight space.
        in_channels (int): ``C``.
        out_channels (int): size of the output.
        hidden (sequence of int, optional): hidden widths of the MLP. (default: ``(256, 256)``)
        dropout (float, optional): dropout between MLP layers. (default: ``0.0``)

    Shapes:
        - input: :class:`WeightSpaceFeatures` with ``C`` channels;
        - output: ``(B, out_channels)``.

    Example:
        >>> spec = NetworkSpec.from_shapes([(8, 4), (3, 8)])
        >>> StatNN(spec, 1, 1)
        StatNN(28, 1)
    """

    def __init__(self, spec: NetworkSpec, in_channels: int, out_channels: int, *,
                 hidden: Sequence[int] = (256, 256), dropout: float = 0.0) -> None:
        super().__init__()
        self.spec = spec
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.hidden = tuple(hidden)
        self.dropout = dropout
        self.num_features = spec.num_layers * 2 * (2 + len(_QUANTILES)) * in_channels
        self.norm = nn.BatchNorm1d(self.num_features)
        self.mlp = mlp([self.num_features, *self.hidden, out_channels], dropout=dropout)
        self.register_buffer("quantiles", torch.tensor(_QUANTILES), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.norm.reset_parameters()
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                m.reset_parameters()

    def __repr__(self) -> str:
        return f"StatNN({self.num_features}, {self.out_channels})"

    def statistics(self, x: WeightSpaceFeatures) -> Tensor:
        """``(B, num_features)``: the statistics, before the batch norm."""
        check_features("StatNN", self.spec, self.in_channels, x)
        out = []
        for t in (u for pair in zip(x.weights, x.biases) for u in pair):
            t = t.reshape(t.shape[0], t.shape[1], -1)
            q = torch.quantile(t, self.quantiles.to(t.dtype), dim=-1).permute(1, 2, 0)
            out += [t.mean(-1), t.var(-1, unbiased=False), q.reshape(t.shape[0], -1)]
        return torch.cat(out, 1)

    def forward(self, x: WeightSpaceFeatures) -> Tensor:
        return self.mlp(self.norm(self.statistics(x)))
