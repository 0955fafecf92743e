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
        states (list[StateDict]): the fine-tuned models.
        base (StateDict): the pre-trained model the task vectors start from.
        weights (float or list[float], optional): :math:`w_i`, one per model. (default: all ``1``)
        density (float or list[float], optional): the fraction of each task vector kept. (default: ``1.0``)
        scale (float, optional): :math:`\lambda` (``lambda`` in recipes). (default: ``1.0``)
        normalize (bool, optional): divide by the sum of the (agreeing) weights. (default: ``True``)
        rescale (bool or str, optional): after the drop, ``True``: scale the kept entries back to the
            task vector's L1 norm (mergekit's ``rescale``); ``"density"``: divide them by the keep
            probability (the paper's); ``False``: no rescaling. (default: ``True``)
        epsilon (float or list[float], optional): keep probabilities range over
            ``density -/+ epsilon`` by magnitude rank within each row. (default: ``0.15``)
        int8_mask (bool, optional): accepted for mergekit recipes (a memory option there); no effect
            on the result. (default: ``False``)
        seed (int, optional): seeds the random drop, per tensor name and model. (default: ``0``)

    Shapes:
        every tensor keeps its shape.

    Returns:
        StateDict: a new state dict; non-floating tensors come from the base.

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
    r"""DELLA-Merging (Deep et al., "DELLA-Merging: Reducing Interference in Model Merging through
    Magnitude-Based Sampling", https://arxiv.org/abs/2406.11617), without sign consensus.

    Within each row of each task vector, entries are ranked by magnitude and kept with
    probability from ``density - epsilon`` (smallest) to ``density + epsilon`` (largest), then
    rescaled; the results are combined as in :func:`task_arithmetic`.

    Args:
        states (list[StateDict]): the fine-tuned models.
        base (StateDict): the pre-trained model the task vectors start from.
        weights (float or list[float], optional): :math:`w_i`, one per model. (default: all ``1``)
        density (float or list[float], optional): the fraction of each task vector kept. (default: ``1.0``)
        scale (float, optional): :math:`\lambda` (``lambda`` in recipes). (default: ``1.0``)
        normalize (bool, optional): divide by the sum of the (agreeing) weights. (default: ``False``)
        rescale (bool or str, optional): after the drop, ``True``: scale the kept entries back to the
            task vector's L1 norm (mergekit's ``rescale``); ``"density"``: divide them by the keep
            probability (the paper's); ``False``: no rescaling. (default: ``True``)
        epsilon (float or list[float], optional): keep probabilities range over
            ``density -/+ epsilon`` by magnitude rank within each row. (default: ``0.15``)
        int8_mask (bool, optional): accepted for mergekit recipes (a memory option there); no effect
            on the result. (default: ``False``)
        seed (int, optional): seeds the random drop, per tensor name and model. (default: ``0``)

    Shapes:
        every tensor keeps its shape.

    Returns:
        StateDict: a new state dict; non-floating tensors come from the base.

    Raises:
        ValueError: no base, mismatched keys or shapes, a density outside ``[0, 1]``.
    """
    return task_vector_merge(states, base, fn="della_linear", weights=weights, density=density, scale=scale,
                             normalize=normalize, sparsify="della", consensus="none",
                             rescale=rescale, epsilon=epsilon, seed=seed)
