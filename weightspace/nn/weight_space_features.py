"""A batch of networks (or of features on their weights) as per-layer tensors."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from .network_spec import NetworkSpec

__all__ = ["WeightSpaceFeatures"]


@dataclass(frozen=True)
class WeightSpaceFeatures:
    r"""Features on the weights and biases of a batch of chain networks, in ``nfn``'s layout.

    The layout of ``nfn.common.WeightSpaceFeatures`` (`"Permutation Equivariant Neural
    Functionals" <https://arxiv.org/abs/2302.14040>`_) and of :func:`graphs.state_dict_to_nfn`:
    a network's tensors are features with ``C = 1`` channel.

    Args:
        weights (tuple of Tensor): ``(B, C, n_out, n_in, *kernel)`` per layer.
        biases (tuple of Tensor): ``(B, C, n_out)`` per layer.

    Shapes:
        ``B`` networks, ``C`` channels, ``L`` layers; layer ``l`` maps ``n_{l-1}`` to ``n_l`` neurons.

    Example:
        >>> w = (torch.randn(2, 8, 4), torch.randn(2, 3, 8))
        >>> b = (torch.randn(2, 8), torch.randn(2, 3))
        >>> f = WeightSpaceFeatures.from_tensors(w, b)
        >>> f.weights[0].shape, f.spec.neurons
        (torch.Size([2, 1, 8, 4]), (4, 8, 3))
    """

    weights: tuple[Tensor, ...]
    biases: tuple[Tensor, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "weights", tuple(self.weights))
        object.__setattr__(self, "biases", tuple(self.biases))
        if len(self.weights) != len(self.biases):
            raise ValueError(f"WeightSpaceFeatures: {len(self.weights)} weights and {len(self.biases)} biases; "
                             f"they must agree")
        for l, (w, b) in enumerate(zip(self.weights, self.biases)):
            if w.dim() < 4 or b.dim() != 3 or w.shape[:3] != b.shape:
                raise ValueError(f"WeightSpaceFeatures: layer {l} has weight {tuple(w.shape)} and bias "
                                 f"{tuple(b.shape)}; expected (B, C, n_out, n_in, *kernel) and (B, C, n_out)")

    @classmethod
    def from_tensors(cls, weights: Sequence[Tensor], biases: Sequence[Tensor]) -> "WeightSpaceFeatures":
        """Batched network tensors ``(B, n_out, n_in, *kernel)`` / ``(B, n_out)`` (the collated
        ``"tensors"`` view of a :class:`~weightspace.zoo.ZooDataset`) with a channel axis added."""
        return cls(tuple(w.unsqueeze(1) for w in weights), tuple(b.unsqueeze(1) for b in biases))

    @property
    def spec(self) -> NetworkSpec:
        return NetworkSpec.from_tensors(self.weights, self.biases, lead=2)

    @property
    def batch_size(self) -> int:
        return int(self.weights[0].shape[0])

    @property
    def channels(self) -> int:
        return int(self.weights[0].shape[1])

    def __len__(self) -> int:
        return len(self.weights)

    def map(self, fn: Callable[[Tensor], Tensor]) -> "WeightSpaceFeatures":
        """Apply ``fn`` to every tensor (an elementwise ``fn`` keeps equivariance)."""
        return WeightSpaceFeatures(tuple(fn(w) for w in self.weights), tuple(fn(b) for b in self.biases))

    def to(self, *args, **kwargs) -> "WeightSpaceFeatures":
        return self.map(lambda t: t.to(*args, **kwargs))

    def detach(self) -> "WeightSpaceFeatures":
        return self.map(Tensor.detach)

    def __add__(self, other: "WeightSpaceFeatures") -> "WeightSpaceFeatures":
        return WeightSpaceFeatures(tuple(a + b for a, b in zip(self.weights, other.weights)),
                                   tuple(a + b for a, b in zip(self.biases, other.biases)))

    def __mul__(self, other: "WeightSpaceFeatures | float") -> "WeightSpaceFeatures":
        if isinstance(other, WeightSpaceFeatures):
            return WeightSpaceFeatures(tuple(a * b for a, b in zip(self.weights, other.weights)),
                                       tuple(a * b for a, b in zip(self.biases, other.biases)))
        return self.map(lambda t: t * other)

    __rmul__ = __mul__

    def flatten(self) -> Tensor:
        """``(B, C * num_params)``: every weight and bias, flattened and concatenated."""
        B = self.batch_size
        return torch.cat([t.reshape(B, -1) for pair in zip(self.weights, self.biases) for t in pair], dim=1)

    def permute(self, perms: Sequence[Tensor | None]) -> "WeightSpaceFeatures":
        """Permute the neurons: ``perms[s]`` reorders neuron set ``s`` (``0``: inputs, ``L``:
        outputs; ``None`` leaves a set as it is). Row ``j`` of layer ``l`` becomes row
        ``perms[l][j]`` of the input, and so do the columns of layer ``l + 1``.

        Shapes:
            perms: ``L + 1`` entries, each ``(n_s,)`` or ``None``.

        Raises:
            ValueError: wrong number of permutations.
        """
        L = len(self.weights)
        if len(perms) != L + 1:
            raise ValueError(f"WeightSpaceFeatures.permute: {len(perms)} permutations for {L + 1} neuron sets "
                             f"(inputs, {L - 1} hidden, outputs); pass None for a set left alone")
        ws, bs = [], []
        for l, (w, b) in enumerate(zip(self.weights, self.biases)):
            po, pi = perms[l + 1], perms[l]
            if po is not None:
                w, b = w.index_select(2, po.to(w.device)), b.index_select(2, po.to(b.device))
            if pi is not None:
                w = w.index_select(3, pi.to(w.device))
            ws.append(w)
            bs.append(b)
        return WeightSpaceFeatures(tuple(ws), tuple(bs))
