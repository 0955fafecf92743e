"""Test helpers for metanetworks, shipped to users: equivariance and invariance as assertions.

After ``e3nn.util.test.assert_equivariant``: a layer on weight-space features must commute with
permutations of the neurons, a model that predicts a property of the network must not see them.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from weightspace.nn import NetworkSpec, WeightSpaceFeatures

__all__ = ["assert_equivariant", "assert_invariant", "equivariance_error", "random_neuron_perms"]

Perms = Sequence["Tensor | None"]


def random_neuron_perms(spec: NetworkSpec, *, hidden_only: bool = True,
                        generator: torch.Generator | None = None) -> list[Tensor | None]:
    """One random permutation per neuron set (``None`` for inputs and outputs when
    ``hidden_only``), as :meth:`WeightSpaceFeatures.permute` takes them.

    Shapes:
        output: ``L + 1`` entries, each ``(n_s,)`` or ``None``.
    """
    n, L = spec.neurons, spec.num_layers
    return [None if hidden_only and s in (0, L) else torch.randperm(n[s], generator=generator)
            for s in range(L + 1)]


def _max_diff(a: Any, b: Any) -> float:
    if isinstance(a, WeightSpaceFeatures):
        return max(_max_diff(x, y) for x, y in zip((*a.weights, *a.biases), (*b.weights, *b.biases)))
    if isinstance(a, (tuple, list)):
        return max(_max_diff(x, y) for x, y in zip(a, b))
    if a.shape != b.shape:
        raise ValueError(f"assert_equivariant: outputs have shapes {tuple(a.shape)} and {tuple(b.shape)}")
    return float((a - b).abs().max()) if a.numel() else 0.0


def equivariance_error(layer: Callable[[WeightSpaceFeatures], WeightSpaceFeatures], features: WeightSpaceFeatures,
                       perms: Perms) -> float:
    """``max |layer(P x) - P layer(x)|`` over every output entry."""
    with torch.no_grad():
        return _max_diff(layer(features.permute(perms)), layer(features).permute(perms))


def assert_equivariant(layer: Callable[[WeightSpaceFeatures], WeightSpaceFeatures], features: WeightSpaceFeatures,
                       perms: Perms, *, atol: float = 1e-5) -> float:
    """Assert that ``layer`` commutes with the neuron permutation ``perms``.

    Args:
        layer: a map between :class:`~weightspace.nn.WeightSpaceFeatures`.
        features (WeightSpaceFeatures): the input.
        perms (sequence): one permutation (or ``None``) per neuron set, see
            :func:`random_neuron_perms`.
        atol (float, optional): largest allowed absolute error. (default: ``1e-5``)

    Returns:
        float: the error found.

    Raises:
        AssertionError: the error exceeds ``atol``.

    Example:
        >>> from weightspace.nn import NPLinear
        >>> spec = NetworkSpec.from_shapes([(8, 4), (3, 8)])
        >>> x = WeightSpaceFeatures.from_tensors([torch.randn(2, *s) for s in spec.weight_shapes],
        ...                                      [torch.randn(2, *s) for s in spec.bias_shapes])
        >>> err = assert_equivariant(NPLinear(spec, 1, 4), x, random_neuron_perms(spec))
    """
    err = equivariance_error(layer, features, perms)
    if not err <= atol:
        raise AssertionError(f"assert_equivariant: {type(layer).__name__} does not commute with the permutation: "
                             f"max abs error {err:.3g} > atol {atol:g}")
    return err


def assert_invariant(model: Callable[[Any], Tensor], features: Any, perms: Perms | Any, *,
                     atol: float = 1e-5) -> float:
    """Assert that ``model`` gives the same output for a network and its permutation.

    Args:
        model: a map from inputs to tensors.
        features: the input: :class:`~weightspace.nn.WeightSpaceFeatures`, or anything else
            (a PyG batch of parameter graphs) when ``perms`` is the permuted input itself.
        perms: one permutation (or ``None``) per neuron set, applied with
            :meth:`WeightSpaceFeatures.permute`; or the permuted input, built by the caller
            (for graphs: the graph of the permuted network).
        atol (float, optional): largest allowed absolute error. (default: ``1e-5``)

    Returns:
        float: the error found.

    Raises:
        AssertionError: the outputs differ by more than ``atol``.
    """
    permuted = features.permute(perms) if isinstance(features, WeightSpaceFeatures) and \
        isinstance(perms, (list, tuple)) else perms
    with torch.no_grad():
        err = _max_diff(model(features), model(permuted))
    if not err <= atol:
        raise AssertionError(f"assert_invariant: {type(model).__name__} changes its output when the network is "
                             f"permuted: max abs error {err:.3g} > atol {atol:g}")
    return err
