"""``dare_ties``: DARE random drop and rescale, with TIES sign consensus."""
from __future__ import annotations

from collections.abc import Sequence

from ._common import StateDict
from ._registry import merge_method
from ._task_vector import task_vector_merge


@merge_method(name="dare_ties", pretty_name="DARE (TIES)", reference_url="https://arxiv.org/abs/2311.03099", needs_base=True)
def dare_ties(states: list[StateDict], base: StateDict | None, *,
        weights: float | Sequence[float] | None = None, density: float | Sequence[float] = 1.0,
        scale: float = 1.0, normalize: bool = False, rescale: bool | str = True,
        int8_mask: bool = False, seed: int = 0) -> StateDict:
    r"""DARE (:func:`~merging.methods.dare_linear.dare_linear`) with TIES sign consensus: the thinned
    task vectors are combined as in :func:`ties`. Arguments, result and errors as for
    :func:`~merging.methods.dare_linear.dare_linear`.
    """
    return task_vector_merge(states, base, fn="dare_ties", weights=weights, density=density, scale=scale,
                             normalize=normalize, sparsify="random", consensus="sign",
                             rescale=rescale, seed=seed)
