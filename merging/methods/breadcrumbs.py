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
        states (list[StateDict]): the fine-tuned models.
        base (StateDict): the pre-trained model the task vectors start from.
        weights (float or list[float], optional): :math:`w_i`, one per model. (default: all ``1``)
        density (float or list[float], optional): the fraction of each task vector kept. (default: ``1.0``)
        scale (float, optional): :math:`\lambda` (``lambda`` in recipes). (default: ``1.0``)
        normalize (bool, optional): divide by the sum of the (agreeing) weights. (default: ``False``)
        rescale (bool or str, optional): after the drop, ``True``: scale the kept entries back to the
            task vector's L1 norm (mergekit's ``rescale``); ``"density"``: divide them by the keep
            probability (the paper's); ``False``: no rescaling. (default: ``False``)
        gamma (float or list[float], optional): the fraction of largest-magnitude entries dropped as
            outliers. (default: ``0.01``)
        int8_mask (bool, optional): accepted for mergekit recipes (a memory option there); no effect
            on the result. (default: ``False``)

    Shapes:
        every tensor keeps its shape.

    Returns:
        StateDict: a new state dict; non-floating tensors come from the base.

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
    r"""Model Breadcrumbs (Davari and Belilovsky, "Model Breadcrumbs: Scaling Multi-Task Model
    Merging with Sparse Masks", https://arxiv.org/abs/2312.06795), with TIES sign consensus.

    Each task vector loses its ``gamma`` fraction of largest magnitudes (outliers) and then its
    smallest magnitudes down to ``density``, as mergekit's ``magnitude_outliers``; the results
    are combined as in :func:`ties`.

    Args:
        states (list[StateDict]): the fine-tuned models.
        base (StateDict): the pre-trained model the task vectors start from.
        weights (float or list[float], optional): :math:`w_i`, one per model. (default: all ``1``)
        density (float or list[float], optional): the fraction of each task vector kept. (default: ``1.0``)
        scale (float, optional): :math:`\lambda` (``lambda`` in recipes). (default: ``1.0``)
        normalize (bool, optional): divide by the sum of the (agreeing) weights. (default: ``False``)
        rescale (bool or str, optional): after the drop, ``True``: scale the kept entries back to the
            task vector's L1 norm (mergekit's ``rescale``); ``"density"``: divide them by the keep
            probability (the paper's); ``False``: no rescaling. (default: ``False``)
        gamma (float or list[float], optional): the fraction of largest-magnitude entries dropped as
            outliers. (default: ``0.01``)
        int8_mask (bool, optional): accepted for mergekit recipes (a memory option there); no effect
            on the result. (default: ``False``)

    Shapes:
        every tensor keeps its shape.

    Returns:
        StateDict: a new state dict; non-floating tensors come from the base.

    Raises:
        ValueError: no base, mismatched keys or shapes, a density outside ``[0, 1]``.
    """
    return task_vector_merge(states, base, fn="breadcrumbs_ties", weights=weights, density=density, scale=scale,
                             normalize=normalize, sparsify="magnitude_outliers", consensus="sign",
                             rescale=rescale, gamma=gamma)
