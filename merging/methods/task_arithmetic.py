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
        states (list[StateDict]): the fine-tuned models.
        base (StateDict): the pre-trained model the task vectors start from.
        weights (float or list[float], optional): :math:`w_i`, one per model. (default: all ``1``)
        scale (float, optional): :math:`\lambda` (``lambda`` in recipes). (default: ``1.0``)
        normalize (bool, optional): divide by the sum of the (agreeing) weights. (default: ``False``)
        int8_mask (bool, optional): accepted for mergekit recipes (a memory option there); no effect
            on the result. (default: ``False``)

    Shapes:
        every tensor keeps its shape.

    Returns:
        StateDict: a new state dict; non-floating tensors come from the base.

    Raises:
        ValueError: no base, mismatched keys or shapes.
    """
    return task_vector_merge(states, base, fn="task_arithmetic", weights=weights, density=1.0, scale=scale,
                             normalize=normalize, sparsify="none", consensus="none")
