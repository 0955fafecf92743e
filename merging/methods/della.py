"""``della``: DELLA: magnitude-ranked random drop (MagPrune)."""
from __future__ import annotations

from collections.abc import Sequence

from ._common import StateDict
from ._registry import merge_method
from ._task_vector import task_vector_merge


@merge_method(name="della", pretty_name="DELLA", reference_url="https://arxiv.org/abs/2406.11617", needs_base=True)
def della(states: list[StateDict], base: StateDict | None, *,
        weights: float | Sequence[float] | None = None, density: float | Sequence[float] = 1.0,
        scale: float = 1.0, normalize: bool = True, rescale: bool | str = True,
        epsilon: float | Sequence[float] = 0.15,
        int8_mask: bool = False, seed: int = 0) -> StateDict:
    r"""DELLA-Merging (Deep et al., "DELLA-Merging: Reducing Interference in Model Merging through
    Magnitude-Based Sampling", https://arxiv.org/abs/2406.11617), with TIES sign consensus.

    Within each row of each task vector, entries are ranked by magnitude and kept with
    probability from ``density - epsilon`` (smallest) to ``density + epsilon`` (largest), then
    rescaled; the results are combined as in :func:`ties`.

    Args:
        states, base, weights, density, scale, normalize, rescale, epsilon, int8_mask, seed: as for
            :func:`~merging.methods._task_vector.task_vector_merge`, with this method's defaults (its
            signature).

    Returns:
        StateDict: a new state dict of the same shapes; non-floating tensors come from the base.

    Raises:
        ValueError: no base, mismatched keys or shapes, a density outside ``[0, 1]``.
    """
    return task_vector_merge(states, base, fn="della", weights=weights, density=density, scale=scale,
                             normalize=normalize, sparsify="della", consensus="sign",
                             rescale=rescale, epsilon=epsilon, seed=seed)


@merge_method(name="della_linear", pretty_name="DELLA (linear)", reference_url="https://arxiv.org/abs/2406.11617", needs_base=True)
def della_linear(states: list[StateDict], base: StateDict | None, *,
        weights: float | Sequence[float] | None = None, density: float | Sequence[float] = 1.0,
        scale: float = 1.0, normalize: bool = False, rescale: bool | str = True,
        epsilon: float | Sequence[float] = 0.15,
        int8_mask: bool = False, seed: int = 0) -> StateDict:
    r"""DELLA-Merging (:func:`della`) without sign consensus: the thinned task vectors are combined
    as in :func:`task_arithmetic`. Arguments, result and errors as for :func:`della` (here
    ``normalize`` defaults to ``False``).
    """
    return task_vector_merge(states, base, fn="della_linear", weights=weights, density=density, scale=scale,
                             normalize=normalize, sparsify="della", consensus="none",
                             rescale=rescale, epsilon=epsilon, seed=seed)
