"""``ties``: trim, elect sign, disjoint merge."""
from __future__ import annotations

from collections.abc import Sequence

from ._common import StateDict
from ._registry import merge_method
from ._task_vector import task_vector_merge


@merge_method(name="ties", pretty_name="TIES-Merging", reference_url="https://arxiv.org/abs/2306.01708")
def ties(states: list[StateDict], base: StateDict | None, *,
         weights: float | Sequence[float] | None = None, density: float | Sequence[float] = 0.2,
         scale: float = 1.0, normalize: bool = True) -> StateDict:
    r"""TIES-Merging (Yadav et al., "Resolving Interference When Merging Models",
    https://arxiv.org/abs/2306.01708).

    Per tensor: keep the top ``density`` fraction of each task vector
    :math:`\tau_i = \theta_i - \theta_{base}` by magnitude (:math:`\hat\tau_i`), elect the sign
    of the summed mass :math:`\gamma = \mathrm{sgn}(\sum_i w_i \hat\tau_i)`, and average only
    the entries that agree with it (disjoint mean):

    .. math::
        \theta = \theta_{base} + \lambda\,
        \frac{\sum_{i \in A} w_i \hat\tau_i}{\sum_{i \in A} w_i},\qquad
        A = \{i : \mathrm{sgn}(w_i \hat\tau_i) = \gamma\}

    Args:
        states (list[StateDict]): the fine-tuned models.
        base (StateDict): the pre-trained model.
        weights (float or list[float], optional): :math:`w_i`. (default: all ``1``)
        density (float or list[float], optional): fraction kept by the trim, ``k`` of the
            paper. (default: ``0.2``)
        scale (float, optional): :math:`\lambda`. (default: ``1.0``)
        normalize (bool, optional): divide by :math:`\sum_{i\in A} w_i` (the disjoint mean).
            (default: ``True``)

    Shapes:
        every tensor keeps its shape.

    Returns:
        StateDict: a new state dict; non-floating tensors come from the base.

    Raises:
        ValueError: no base, mismatched keys or shapes, density outside ``[0, 1]``.
    """
    return task_vector_merge(states, base, fn="ties", weights=weights, density=density, scale=scale,
                             normalize=normalize, sparsify="magnitude", consensus="sign")
