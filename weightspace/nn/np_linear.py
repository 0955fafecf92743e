"""NPLinear: the equivariant linear map of weight space when every neuron set is permutable."""
from __future__ import annotations

from torch import Tensor, nn

from ._private import ChannelLinear, check_features, from_entries, np_global_dim, np_globals, np_set_dims, \
    np_set_features, to_entries
from .network_spec import NetworkSpec
from .weight_space_features import WeightSpaceFeatures

__all__ = ["NPLinear"]


class NPLinear(nn.Module):
    r"""The NP layer of `"Permutation Equivariant Neural Functionals"
    <https://arxiv.org/abs/2302.14040>`_ (Zhou et al., 2023): a linear map between weight-space
    features that commutes with independent permutations of *every* neuron set (inputs and
    outputs included).

    With :math:`\bar{\cdot}` a mean over the starred index, the output weight and bias of
    layer :math:`i` (neurons :math:`j \in` set :math:`i`, :math:`k \in` set :math:`i-1`) are

    .. math::
        H(W)^i_{jk} &= A^i W^i_{jk} + R^i f^i_j + Q^i f^{i-1}_k + G^i g + c^i, \qquad
        H(b)^i_j = R'^i f^i_j + G'^i g + c'^i, \\
        f^s_j &= \big[\, b^s_j,\ W^s_{j\star},\ W^{s+1}_{\star j} \,\big], \qquad
        g = \big[\, W^1_{\star\star}, \dots, W^L_{\star\star},\ b^1_\star, \dots, b^L_\star \,\big],

    where every :math:`A, R, Q, G` is a channel-mixing matrix. These are all the terms the
    paper's NP layer has: the entry itself, the row and column means of the same layer, the
    row mean of the previous layer (:math:`W^{i-1}_{k\star}`) and column mean of the next
    (:math:`W^{i+1}_{\star j}`), the biases :math:`b^i_j` and :math:`b^{i-1}_k`, and the global
    means of every weight and bias (terms absent at the ends: no :math:`b^0`, :math:`W^0`,
    :math:`W^{L+1}`). For a convolution the ``K`` kernel entries are extra channels (each
    layer maps ``C * K_l`` to ``C_out * K_l``), as in ``nfn``.

    Args:
        spec (NetworkSpec): the shapes of the weight space.
        in_channels (int): ``C``.
        out_channels (int): ``C_out``.

    Shapes:
        - input: :class:`WeightSpaceFeatures`, weights ``(B, C, n_l, n_{l-1}, *kernel)``,
          biases ``(B, C, n_l)``;
        - output: the same with ``C_out`` channels.

    Returns:
        WeightSpaceFeatures: equivariant features.

    Raises:
        ValueError: the input does not fit ``spec`` or ``in_channels``.

    Example:
        >>> spec = NetworkSpec.from_shapes([(8, 4), (3, 8)])
        >>> layer = NPLinear(spec, 1, 16)
        >>> x = WeightSpaceFeatures.from_tensors((torch.randn(5, 8, 4), torch.randn(5, 3, 8)),
        ...                                      (torch.randn(5, 8), torch.randn(5, 3)))
        >>> layer(x).weights[1].shape
        torch.Size([5, 16, 3, 8])
    """

    def __init__(self, spec: NetworkSpec, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.spec = spec
        self.in_channels = in_channels
        self.out_channels = out_channels
        c, o, L = in_channels, out_channels, spec.num_layers
        ks = [spec.kernel_size(l) for l in range(L)]
        dset, dg = np_set_dims(spec, c), np_global_dim(spec, c)
        self.entry = nn.ModuleList(ChannelLinear(c * ks[l], o * ks[l]) for l in range(L))
        self.row = nn.ModuleList(ChannelLinear(dset[l + 1], o * ks[l]) for l in range(L))
        self.col = nn.ModuleList(ChannelLinear(dset[l], o * ks[l]) for l in range(L))
        self.glob = nn.ModuleList(ChannelLinear(dg, o * ks[l], bias=True) for l in range(L))
        self.bias_row = nn.ModuleList(ChannelLinear(dset[l + 1], o) for l in range(L))
        self.bias_glob = nn.ModuleList(ChannelLinear(dg, o, bias=True) for l in range(L))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for l in range(self.spec.num_layers):
            fan = self.entry[l].fan_in + self.row[l].fan_in + self.col[l].fan_in + self.glob[l].fan_in
            for m in (self.entry[l], self.row[l], self.col[l], self.glob[l]):
                m.reset_parameters(fan)
            fan = self.bias_row[l].fan_in + self.bias_glob[l].fan_in
            self.bias_row[l].reset_parameters(fan)
            self.bias_glob[l].reset_parameters(fan)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.in_channels}, {self.out_channels})"

    def forward(self, x: WeightSpaceFeatures) -> WeightSpaceFeatures:
        check_features(type(self).__name__, self.spec, self.in_channels, x)
        W = [to_entries(w) for w in x.weights]
        b = list(x.biases)
        f = np_set_features(W, b)
        g = np_globals(W, b)
        ws, bs = [], []
        for l in range(self.spec.num_layers):
            y: Tensor = self.entry[l](W[l]) + self.row[l](f[l + 1])[..., :, None] \
                + self.col[l](f[l])[..., None, :] + self.glob[l](g)[..., None, None]
            ws.append(from_entries(y, self.out_channels, tuple(self.spec.weight_shapes[l][2:])))
            bs.append(self.bias_row[l](f[l + 1]) + self.bias_glob[l](g)[..., None])
        return WeightSpaceFeatures(tuple(ws), tuple(bs))
