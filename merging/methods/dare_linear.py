"""``dare_linear``: DARE random drop and rescale, without sign consensus."""
from __future__ import annotations

from collections.abc import Sequence

from ._common import StateDict
from ._registry import merge_method
from ._task_vector import task_vector_merge


@merge_method(name="dare_linear", pretty_name="DARE (linear)", reference_url="https://arxiv.org/abs/2311.03099", needs_base=True)
def dare_linear(states: list[StateDict], base: StateDict | None, *,
        weights: float | Sequence[float] | None = None, density: float | Sequence[float] = 1.0,
        scale: float = 1.0, normalize: bool = False, rescale: bool | str = True,
        int8_mask: bool = False, seed: int = 0) -> StateDict:
    r"""DARE (Yu et al., "Language Models are Super Mario: Absorbing Abilities from Homologous
    Models as a Free Lunch", https://arxiv.org/abs/2311.03099), without sign consensus.

    Each entry of each task vector :math:`\tau_i = \theta_i - \theta_{base}` is kept with
    probability ``density`` and the survivors are rescaled (``rescale``); the results are then
    combined as in :func:`task_arithmetic`.

    Args:
        states, base, weights, density, scale, normalize, rescale, int8_mask, seed: as for
            :func:`~merging.methods._task_vector.task_vector_merge`, with this method's defaults (its
            signature).

    Returns:
        StateDict: a new state dict of the same shapes; non-floating tensors come from the base.

    Raises:
        ValueError: no base, mismatched keys or shapes, a density outside ``[0, 1]``.
    """
    return task_vector_merge(states, base, fn="dare_linear", weights=weights, density=density, scale=scale,
                             normalize=normalize, sparsify="random", consensus="none",
                             rescale=rescale, seed=seed)
