"""``breadcrumbs``: Model Breadcrumbs: drop the largest and the smallest task-vector entries."""
from __future__ import annotations

from collections.abc import Sequence

from ._common import StateDict
from ._registry import merge_method
from ._task_vector import task_vector_merge


@merge_method(name="breadcrumbs", pretty_name="Model Breadcrumbs", reference_url="https://arxiv.org/abs/2312.06795", needs_base=True)
def breadcrumbs(states: list[StateDict], base: StateDict | None, *,
        weights: float | Sequence[float] | None = None, density: float | Sequence[float] = 1.0,
        scale: float = 1.0, normalize: bool = False, rescale: bool | str = False,
        gamma: float | Sequence[float] = 0.01,
        int8_mask: bool = False) -> StateDict:
    r"""Model Breadcrumbs (Davari and Belilovsky, "Model Breadcrumbs: Scaling Multi-Task Model
    Merging with Sparse Masks", https://arxiv.org/abs/2312.06795).

    Each task vector loses its ``gamma`` fraction of largest magnitudes (outliers) and then its
    smallest magnitudes down to ``density``, as mergekit's ``magnitude_outliers``; the results
    are combined as in :func:`task_arithmetic`.

    Args:
        states, base, weights, density, scale, normalize, rescale, gamma, int8_mask: as for
            :func:`~merging.methods._task_vector.task_vector_merge`, with this method's defaults (its
            signature).

    Returns:
        StateDict: a new state dict of the same shapes; non-floating tensors come from the base.

    Raises:
        ValueError: no base, mismatched keys or shapes, a density outside ``[0, 1]``.
    """
    return task_vector_merge(states, base, fn="breadcrumbs", weights=weights, density=density, scale=scale,
                             normalize=normalize, sparsify="magnitude_outliers", consensus="none",
                             rescale=rescale, gamma=gamma)


@merge_method(name="breadcrumbs_ties", pretty_name="Model Breadcrumbs with TIES", reference_url="https://arxiv.org/abs/2312.06795", needs_base=True)
def breadcrumbs_ties(states: list[StateDict], base: StateDict | None, *,
        weights: float | Sequence[float] | None = None, density: float | Sequence[float] = 1.0,
        scale: float = 1.0, normalize: bool = False, rescale: bool | str = False,
        gamma: float | Sequence[float] = 0.01,
        int8_mask: bool = False) -> StateDict:
    r"""Model Breadcrumbs (:func:`breadcrumbs`) with TIES sign consensus: the thinned task vectors
    are combined as in :func:`ties`. Arguments, result and errors as for :func:`breadcrumbs`.
    """
    return task_vector_merge(states, base, fn="breadcrumbs_ties", weights=weights, density=density, scale=scale,
                             normalize=normalize, sparsify="magnitude_outliers", consensus="sign",
                             rescale=rescale, gamma=gamma)
