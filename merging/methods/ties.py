"""``ties``: trim, elect sign, disjoint merge."""
from __future__ import annotations

from collections.abc import Sequence

from ._common import StateDict
from ._registry import merge_method
from ._task_vector import task_vector_merge


@merge_method(name="ties", pretty_name="TIES-Merging", reference_url="https://arxiv.org/abs/2306.01708", needs_base=True)
def ties(states: list[StateDict], base: StateDict | None, *,
        weights: float | Sequence[float] | None = None, density: float | Sequence[float] = 1.0,
        scale: float = 1.0, normalize: bool = True, rescale: bool | str = False,
        int8_mask: bool = False) -> StateDict:
    r"""TIES-Merging (Yadav et al., "Resolving Interference When Merging Models",
    https://arxiv.org/abs/2306.01708), with mergekit's conventions.

    Per tensor: keep the top ``density`` fraction of each task vector
    :math:`\tau_i = \theta_i - \theta_{base}` by magnitude (:math:`\hat\tau_i`; among equal
    magnitudes the lower index), elect the sign of the summed mass
    :math:`\gamma = \mathrm{sgn}(\sum_i w_i \hat\tau_i)` (:math:`+1` where the sum is 0), and
    average only the entries that agree with it (disjoint mean):

    .. math::
        \theta = \theta_{base} + \lambda\,
        \frac{\sum_{i \in A} w_i \hat\tau_i}{\sum_{i \in A} w_i},\qquad
        A = \{i : \mathrm{sgn}(w_i \hat\tau_i) = \gamma\}

    Args:
        states, base, weights, density, scale, normalize, rescale, int8_mask: as for
            :func:`~merging.methods._task_vector.task_vector_merge`, with this method's defaults (its
            signature).

    Returns:
        StateDict: a new state dict of the same shapes; non-floating tensors come from the base.

    Raises:
        ValueError: no base, mismatched keys or shapes, a density outside ``[0, 1]``, or a density that keeps no entry of a tensor.
    """
    return task_vector_merge(states, base, fn="ties", weights=weights, density=density, scale=scale,
                             normalize=normalize, sparsify="magnitude", consensus="sign",
                             rescale=rescale)
