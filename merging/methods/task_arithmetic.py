"""``task_arithmetic``: the base plus the scaled sum of task vectors."""
from __future__ import annotations

from collections.abc import Sequence

from ._common import StateDict
from ._registry import merge_method
from ._task_vector import task_vector_merge


@merge_method(name="task_arithmetic", pretty_name="Task Arithmetic", reference_url="https://arxiv.org/abs/2212.04089", needs_base=True)
def task_arithmetic(states: list[StateDict], base: StateDict | None, *,
        weights: float | Sequence[float] | None = None, scale: float = 1.0,
        normalize: bool = False, int8_mask: bool = False) -> StateDict:
    r"""Task arithmetic (Ilharco et al., "Editing Models with Task Arithmetic",
    https://arxiv.org/abs/2212.04089).

    .. math::
        \theta = \theta_{base} + \lambda \sum_i w_i (\theta_i - \theta_{base})

    (divided by :math:`\sum_i w_i` with ``normalize``; a weight sum of 0 divides by 1).

    Args:
        states, base, weights, scale, normalize, int8_mask: as for
            :func:`~merging.methods._task_vector.task_vector_merge`, with this method's defaults (its
            signature).

    Returns:
        StateDict: a new state dict of the same shapes; non-floating tensors come from the base.

    Raises:
        ValueError: no base, mismatched keys or shapes.
    """
    return task_vector_merge(states, base, fn="task_arithmetic", weights=weights, density=1.0, scale=scale,
                             normalize=normalize, sparsify="none", consensus="none")
