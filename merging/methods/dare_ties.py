"""``dare_ties``: DARE random drop and rescale, with TIES sign consensus and disjoint mean."""
from __future__ import annotations

from collections.abc import Sequence

from ._common import StateDict
from ._registry import merge_method
from ._task_vector import task_vector_merge


@merge_method(name="dare_ties", pretty_name="DARE (TIES)", reference_url="https://arxiv.org/abs/2311.03099")
def dare_ties(states: list[StateDict], base: StateDict | None, *,
               weights: float | Sequence[float] | None = None, density: float | Sequence[float] = 0.5,
               scale: float = 1.0, normalize: bool = True, seed: int = 0) -> StateDict:
    r"""DARE (Yu et al., "Language Models are Super Mario: Absorbing Abilities from Homologous
    Models as a Free Lunch", https://arxiv.org/abs/2311.03099), with TIES sign consensus and disjoint mean.

    Each entry of each task vector :math:`\tau_i = \theta_i - \theta_{base}` is dropped with
    probability :math:`p = 1 - \text{density}` and the survivors are rescaled by
    :math:`1/(1-p)`, so the expected task vector is unchanged; the results are then combined
    as in :func:`ties`.

    Args:
        states (list[StateDict]): the fine-tuned models.
        base (StateDict): the pre-trained model.
        weights (float or list[float], optional): :math:`w_i`. (default: all ``1``)
        density (float or list[float], optional): keep probability :math:`1 - p`. (default: ``0.5``)
        scale (float, optional): :math:`\lambda`. (default: ``1.0``)
        normalize (bool, optional): divide by the sum of the (kept) weights. (default: ``True``)
        seed (int, optional): seeds the random drop. (default: ``0``)

    Shapes:
        every tensor keeps its shape.

    Returns:
        StateDict: a new state dict; non-floating tensors come from the base.

    Raises:
        ValueError: no base, mismatched keys or shapes, density outside ``[0, 1]``.
    """
    return task_vector_merge(states, base, fn="dare_ties", weights=weights, density=density, scale=scale,
                             normalize=normalize, sparsify="random", consensus="sign", seed=seed)
