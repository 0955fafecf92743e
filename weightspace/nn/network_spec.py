"""The shapes of a weight space: one weight and one bias per layer of an MLP-like network."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from torch import Tensor

__all__ = ["NetworkSpec"]


@dataclass(frozen=True)
class NetworkSpec:
    r"""The shapes of a chain network's weights and biases, without batch or channel axes.

    After ``nfn``'s ``NetworkSpec`` (`"Permutation Equivariant Neural Functionals"
    <https://arxiv.org/abs/2302.14040>`_). Layer ``l`` maps neuron set ``l - 1`` to neuron set
    ``l``: its weight is ``(n_l, n_{l-1}, *kernel)`` (no kernel for a linear layer), its bias
    ``(n_l,)``. A CNN whose convolutions end in global pooling and a linear head fits (the
    head's inputs are the last convolution's channels).

    Args:
        weight_shapes (tuple of tuple of int): ``(n_out, n_in, *kernel)`` per layer.
        bias_shapes (tuple of tuple of int): ``(n_out,)`` per layer.

    Raises:
        ValueError: the layers do not chain (``n_in`` of layer ``l`` is not ``n_out`` of layer
            ``l - 1``) or a bias does not match its weight.

    Example:
        >>> spec = NetworkSpec.from_shapes([(8, 4), (3, 8)])
        >>> spec.num_layers, spec.neurons
        (2, (4, 8, 3))
    """

    weight_shapes: tuple[tuple[int, ...], ...]
    bias_shapes: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        ws, bs = self.weight_shapes, self.bias_shapes
        if not ws:
            raise ValueError("NetworkSpec: no layers; pass one (n_out, n_in, *kernel) shape per layer")
        if len(ws) != len(bs):
            raise ValueError(f"NetworkSpec: {len(ws)} weight shapes but {len(bs)} bias shapes; they must agree")
        for l, (w, b) in enumerate(zip(ws, bs)):
            if len(w) < 2 or tuple(b) != (w[0],):
                raise ValueError(f"NetworkSpec: layer {l} has weight {tuple(w)} and bias {tuple(b)}; expected "
                                 f"(n_out, n_in, *kernel) and (n_out,)")
            if l and w[1] != ws[l - 1][0]:
                raise ValueError(f"NetworkSpec: layer {l} reads {w[1]} inputs but layer {l - 1} has {ws[l - 1][0]} "
                                 f"outputs; the layers must chain")

    @classmethod
    def from_shapes(cls, weight_shapes: Sequence[Sequence[int]]) -> "NetworkSpec":
        """The spec of weights with these shapes and a bias for each."""
        ws = tuple(tuple(int(d) for d in s) for s in weight_shapes)
        return cls(ws, tuple((w[0],) for w in ws))

    @classmethod
    def from_tensors(cls, weights: Sequence[Tensor], biases: Sequence[Tensor], *, lead: int = 0) -> "NetworkSpec":
        """The spec of ``(weights, biases)`` whose first ``lead`` axes are batch/channel axes."""
        return cls(tuple(tuple(w.shape[lead:]) for w in weights), tuple(tuple(b.shape[lead:]) for b in biases))

    @property
    def num_layers(self) -> int:
        return len(self.weight_shapes)

    @property
    def neurons(self) -> tuple[int, ...]:
        """``(n_0, n_1, ..., n_L)``: the size of every neuron set, inputs first."""
        return (self.weight_shapes[0][1], *(w[0] for w in self.weight_shapes))

    def kernel_size(self, l: int) -> int:
        """Number of kernel entries of layer ``l`` (1 for a linear layer)."""
        k = 1
        for d in self.weight_shapes[l][2:]:
            k *= d
        return k

    @property
    def num_params(self) -> int:
        return sum(w[0] * w[1] * self.kernel_size(l) + w[0] for l, w in enumerate(self.weight_shapes))

    def to_dict(self) -> dict[str, list]:
        return {"weight_shapes": [list(w) for w in self.weight_shapes],
                "bias_shapes": [list(b) for b in self.bias_shapes]}

    @classmethod
    def from_dict(cls, d: dict[str, list]) -> "NetworkSpec":
        return cls(tuple(tuple(w) for w in d["weight_shapes"]), tuple(tuple(b) for b in d["bias_shapes"]))
