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
    r"""DARE (Yu et al., "Language Models are Super Mario: Absorbing Abilities from Homologous
    Models as a Free Lunch", https://arxiv.org/abs/2311.03099), with TIES sign consensus.

    Each entry of each task vector :math:`\tau_i = \theta_i - \theta_{base}` is kept with
    probability ``density`` and the survivors are rescaled (``rescale``); the results are then
    combined as in :func:`ties`.

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
    return task_vector_merge(states, base, fn="dare_ties", weights=weights, density=density, scale=scale,
                             normalize=normalize, sparsify="random", consensus="sign",
                             rescale=rescale, seed=seed)
