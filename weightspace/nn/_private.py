"""Helpers shared by the weight-space layers: layouts, channel-mixing maps, set features."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .network_spec import NetworkSpec
from .weight_space_features import WeightSpaceFeatures

REDUCTIONS = ("mean", "sum", "max")


def reduce(x: Tensor, dims: int | tuple[int, ...], how: str = "mean") -> Tensor:
    """A permutation-invariant reduction over ``dims``."""
    dims = (dims,) if isinstance(dims, int) else dims
    if how == "mean":
        return x.mean(dim=dims)
    if how == "sum":
        return x.sum(dim=dims)
    for d in sorted((d % x.dim() for d in dims), reverse=True):
        x = x.amax(dim=d)
    return x


def to_entries(w: Tensor) -> Tensor:
    """``(B, C, n_out, n_in, *kernel)`` -> ``(B, C * K, n_out, n_in)`` (kernel entries as channels)."""
    B, C, no, ni = w.shape[:4]
    w = w.reshape(B, C, no, ni, -1)
    return w.permute(0, 1, 4, 2, 3).reshape(B, -1, no, ni)


def from_entries(w: Tensor, channels: int, kernel: tuple[int, ...]) -> Tensor:
    """Inverse of :func:`to_entries`: ``(B, C * K, n_out, n_in)`` -> ``(B, C, n_out, n_in, *kernel)``."""
    B, _, no, ni = w.shape
    w = w.reshape(B, channels, -1, no, ni).permute(0, 1, 3, 4, 2)
    return w.reshape(B, channels, no, ni, *kernel)


class ChannelLinear(nn.Module):
    """``(B, C_in, *) -> (B, C_out, *)``: one linear map of axis 1, shared over the other axes."""

    def __init__(self, in_channels: int, out_channels: int, *, bias: bool = False) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.fan_in = in_channels
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self, fan_in: int | None = None) -> None:
        bound = 1.0 / math.sqrt(max(1, fan_in or self.fan_in))
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.einsum("oc,bc...->bo...", self.weight, x)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, *([1] * (x.dim() - 2)))
        return y


def check_features(caller: str, spec: NetworkSpec, channels: int, x: WeightSpaceFeatures) -> None:
    if not isinstance(x, WeightSpaceFeatures):
        raise TypeError(f"{caller}: expected WeightSpaceFeatures, got {type(x).__name__}; wrap (weights, biases) "
                        f"with WeightSpaceFeatures.from_tensors")
    got = x.spec
    if got != spec or x.channels != channels:
        raise ValueError(f"{caller}: input has {x.channels} channels and shapes {list(got.weight_shapes)}; the "
                         f"layer expects {channels} channels and {list(spec.weight_shapes)}")


# ---------------------------------------------------------------- NP: every neuron set permutable
def np_set_dims(spec: NetworkSpec, c: int) -> list[int]:
    L = spec.num_layers
    out = []
    for s in range(L + 1):
        d = (c + c * spec.kernel_size(s - 1)) if s >= 1 else 0
        d += c * spec.kernel_size(s) if s <= L - 1 else 0
        out.append(d)
    return out


def np_global_dim(spec: NetworkSpec, c: int) -> int:
    return sum(c * spec.kernel_size(l) for l in range(spec.num_layers)) + spec.num_layers * c


def np_set_features(W: list[Tensor], b: list[Tensor], how: str = "mean") -> list[Tensor]:
    """Set ``s``: ``b^s``, row reduction of ``W^s`` (over ``n_{s-1}``), column reduction of
    ``W^{s+1}`` (over ``n_{s+1}``): ``(B, D_s, n_s)``."""
    L = len(W)
    out = []
    for s in range(L + 1):
        parts = []
        if s >= 1:
            parts += [b[s - 1], reduce(W[s - 1], -1, how)]
        if s <= L - 1:
            parts.append(reduce(W[s], -2, how))
        out.append(torch.cat(parts, 1))
    return out


def np_globals(W: list[Tensor], b: list[Tensor], how: str = "mean") -> Tensor:
    return torch.cat([reduce(w, (-2, -1), how) for w in W] + [reduce(x, -1, how) for x in b], 1)


# ---------------------------------------------------------------- HNP: inputs and outputs fixed
def hnp_set_dims(spec: NetworkSpec, c: int) -> list[int]:
    """Feature sizes of the hidden sets ``1 .. L-1`` (index ``s - 1``)."""
    L, n = spec.num_layers, spec.neurons
    out = []
    for s in range(1, L):
        d = c
        d += c * spec.kernel_size(0) * n[0] if s == 1 else c * spec.kernel_size(s - 1)
        d += c * spec.kernel_size(L - 1) * n[L] if s == L - 1 else c * spec.kernel_size(s)
        out.append(d)
    return out


def hnp_global_dim(spec: NetworkSpec, c: int) -> int:
    L, n = spec.num_layers, spec.neurons
    d = c * spec.kernel_size(0) * n[0] + c * spec.kernel_size(L - 1) * n[L]
    d += sum(c * spec.kernel_size(l) for l in range(1, L - 1))
    return d + (L - 1) * c + c * n[L]


def fold_first(w: Tensor) -> Tensor:
    """``(B, D, n_1, n_0)`` -> ``(B, D * n_0, n_1)``: the fixed input axis as channels."""
    B, D, n1, n0 = w.shape
    return w.transpose(2, 3).reshape(B, D * n0, n1)


def unfold_first(y: Tensor, n0: int) -> Tensor:
    B, Dn0, n1 = y.shape
    return y.reshape(B, Dn0 // n0, n0, n1).transpose(2, 3)


def fold_last(w: Tensor) -> Tensor:
    """``(B, D, n_L, n_{L-1})`` -> ``(B, D * n_L, n_{L-1})``: the fixed output axis as channels."""
    B, D, nL, nh = w.shape
    return w.reshape(B, D * nL, nh)


def unfold_last(y: Tensor, nL: int) -> Tensor:
    B, DnL, nh = y.shape
    return y.reshape(B, DnL // nL, nL, nh)


def hnp_set_features(W: list[Tensor], b: list[Tensor], how: str = "mean") -> list[Tensor]:
    """Hidden set ``s`` (``1 .. L-1``): ``b^s``; ``W^1`` rows whole (``s = 1``) or ``W^s`` row
    reduction; ``W^L`` columns whole (``s = L - 1``) or ``W^{s+1}`` column reduction."""
    L = len(W)
    out = []
    for s in range(1, L):
        parts = [b[s - 1], fold_first(W[0]) if s == 1 else reduce(W[s - 1], -1, how),
                 fold_last(W[L - 1]) if s == L - 1 else reduce(W[s], -2, how)]
        out.append(torch.cat(parts, 1))
    return out


def hnp_globals(W: list[Tensor], b: list[Tensor], how: str = "mean") -> Tensor:
    L, B = len(W), W[0].shape[0]
    parts = [reduce(W[0], -2, how).reshape(B, -1)]
    parts += [reduce(W[l], (-2, -1), how) for l in range(1, L - 1)]
    parts.append(reduce(W[L - 1], -1, how).reshape(B, -1))
    parts += [reduce(b[l], -1, how) for l in range(L - 1)]
    parts.append(b[L - 1].reshape(B, -1))
    return torch.cat(parts, 1)


def mlp(sizes: list[int], *, dropout: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)
