"""HNPLinear: the equivariant linear map of weight space when only hidden neurons permute."""
from __future__ import annotations

from torch import nn

from ._private import ChannelLinear, check_features, from_entries, hnp_global_dim, hnp_globals, hnp_set_dims, \
    hnp_set_features, to_entries, unfold_first, unfold_last
from .network_spec import NetworkSpec
from .weight_space_features import WeightSpaceFeatures

__all__ = ["HNPLinear"]


class HNPLinear(nn.Module):
    r"""The HNP layer of `"Permutation Equivariant Neural Functionals"
    <https://arxiv.org/abs/2302.14040>`_ (Zhou et al., 2023): a linear map between weight-space
    features that commutes with permutations of the *hidden* neurons only; the network's
    inputs (set 0) and outputs (set ``L``) are fixed, so terms may depend on their index.

    The fixed axes are folded into channels (``W^1`` is a feature of length ``C n_0`` on each
    neuron of set 1, ``W^L`` one of length ``C n_L`` on each neuron of set ``L-1``, ``b^L`` is a
    global vector), and then every hidden set :math:`s` carries

    .. math::
        f^s_j = \big[\, b^s_j,\ \text{rows}(W^s)_j,\ \text{cols}(W^{s+1})_j \,\big],

    with :math:`\text{rows}(W^1)_j = W^1_{j,:}` whole and :math:`\text{rows}(W^s)_j = W^s_{j\star}`
    otherwise, :math:`\text{cols}(W^L)_j = W^L_{:,j}` whole and
    :math:`\text{cols}(W^{s+1})_j = W^{s+1}_{\star j}` otherwise; the invariants are
    :math:`g = [W^1_{\star,:}, W^2_{\star\star}, \dots, W^{L-1}_{\star\star}, W^L_{:,\star},
    b^1_\star, \dots, b^{L-1}_\star, b^L]`. The outputs are

    .. math::
        H(W)^i_{jk} &= A^i W^i_{jk} + R^i f^i_j + Q^i f^{i-1}_k + G^i g + c^i \quad (1 < i < L), \\
        H(W)^1_{j,:} &= R^1 f^1_j + G^1 g + c^1, \qquad H(W)^L_{:,k} = Q^L f^{L-1}_k + G^L g + c^L, \\
        H(b)^i_j &= R'^i f^i_j + G'^i g + c'^i \quad (i < L), \qquad H(b)^L = G'^L g + c'^L.

    This holds every NP term (each fixed index is free, so the NP terms are a special case)
    plus the full mixing along the fixed input and output axes that the HNP symmetry allows.
    Kernel entries of a convolution are channels, as in :class:`NPLinear`.

    Args:
        spec (NetworkSpec): the shapes of the weight space (at least two layers).
        in_channels (int): ``C``.
        out_channels (int): ``C_out``.

    Shapes:
        - input: :class:`WeightSpaceFeatures`, weights ``(B, C, n_l, n_{l-1}, *kernel)``,
          biases ``(B, C, n_l)``;
        - output: the same with ``C_out`` channels.

    Returns:
        WeightSpaceFeatures: equivariant features.

    Raises:
        ValueError: fewer than two layers (no hidden neurons), or the input does not fit.

    Example:
        >>> spec = NetworkSpec.from_shapes([(8, 4), (8, 8), (3, 8)])
        >>> layer = HNPLinear(spec, 1, 16)
        >>> x = WeightSpaceFeatures.from_tensors([torch.randn(5, *s) for s in spec.weight_shapes],
        ...                                      [torch.randn(5, *s) for s in spec.bias_shapes])
        >>> layer(x).biases[2].shape
        torch.Size([5, 16, 3])
    """

    _reduction = "mean"

    def __init__(self, spec: NetworkSpec, in_channels: int, out_channels: int) -> None:
        super().__init__()
        if spec.num_layers < 2:
            raise ValueError(f"{type(self).__name__}: the network has {spec.num_layers} layer(s), hence no hidden "
                             f"neurons; use NPLinear or FlatMLP")
        self.spec = spec
        self.in_channels = in_channels
        self.out_channels = out_channels
        c, o, L, n = in_channels, out_channels, spec.num_layers, spec.neurons
        ks = [spec.kernel_size(l) for l in range(L)]
        dset, dg = hnp_set_dims(spec, c), hnp_global_dim(spec, c)
        self.entry = nn.ModuleList(ChannelLinear(c * ks[l], o * ks[l]) for l in range(1, L - 1))
        # weight l (0-based) maps hidden set l to hidden set l + 1, whose features are dset[l]
        self.row = nn.ModuleList(ChannelLinear(dset[l], o * ks[l]) for l in range(1, L - 1))
        self.col = nn.ModuleList(ChannelLinear(dset[l - 1], o * ks[l]) for l in range(1, L - 1))
        self.first = ChannelLinear(dset[0], o * ks[0] * n[0])
        self.last = ChannelLinear(dset[L - 2], o * ks[L - 1] * n[L])
        outs = [o * ks[0] * n[0]] + [o * ks[l] for l in range(1, L - 1)] + [o * ks[L - 1] * n[L]]
        self.glob = nn.ModuleList(ChannelLinear(dg, d, bias=True) for d in outs)
        self.bias_row = nn.ModuleList(ChannelLinear(dset[l], o) for l in range(L - 1))
        self.bias_glob = nn.ModuleList(ChannelLinear(dg, o if l < L - 1 else o * n[L], bias=True)
                                       for l in range(L))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        L = self.spec.num_layers
        groups = [[self.first, self.glob[0]], [self.last, self.glob[L - 1]]]
        groups += [[self.entry[i], self.row[i], self.col[i], self.glob[i + 1]] for i in range(L - 2)]
        groups += [[self.bias_row[l], self.bias_glob[l]] for l in range(L - 1)] + [[self.bias_glob[L - 1]]]
        for ms in groups:
            fan = sum(m.fan_in for m in ms)
            for m in ms:
                m.reset_parameters(fan)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.in_channels}, {self.out_channels})"

    def forward(self, x: WeightSpaceFeatures) -> WeightSpaceFeatures:
        check_features(type(self).__name__, self.spec, self.in_channels, x)
        how, L, n, o = self._reduction, self.spec.num_layers, self.spec.neurons, self.out_channels
        W = [to_entries(w) for w in x.weights]
        b = list(x.biases)
        f = hnp_set_features(W, b, how)  # f[s - 1]: hidden set s
        g = hnp_globals(W, b, how)
        ys = [unfold_first(self.first(f[0]) + self.glob[0](g)[..., None], n[0])]
        for i, l in enumerate(range(1, L - 1)):
            ys.append(self.entry[i](W[l]) + self.row[i](f[l])[..., :, None]
                      + self.col[i](f[l - 1])[..., None, :] + self.glob[l](g)[..., None, None])
        ys.append(unfold_last(self.last(f[L - 2]) + self.glob[L - 1](g)[..., None], n[L]))
        ws = tuple(from_entries(y, o, tuple(self.spec.weight_shapes[l][2:])) for l, y in enumerate(ys))
        bs = [self.bias_row[l](f[l]) + self.bias_glob[l](g)[..., None] for l in range(L - 1)]
        bs.append(self.bias_glob[L - 1](g).reshape(g.shape[0], o, n[L]))
        return WeightSpaceFeatures(ws, tuple(bs))

