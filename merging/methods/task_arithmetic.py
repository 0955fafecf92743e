"""``task_arithmetic``: the base plus the scaled sum of task vectors."""
from __future__ import annotations

from collections.abc import Sequence

from ._common import StateDict
from ._registry import merge_method
from ._task_vector import task_vector_merge


@merge_method(name="task_arithmetic", pretty_name="Task Arithmetic",
              reference_url="https://arxiv.org/abs/2212.04089")
def task_arithmetic(states: list[StateDict], base: StateDict | None, *,
                    weights: float | Sequence[float] | None = None, scale: float = 1.0,
                    normalize: bool = False) -> StateDict:
    r"""Task arithmetic (Ilharco et al., "Editing Models with Task Arithmetic",
    https://arxiv.org/abs/2212.04089).

    .. math::
        \theta = \theta_{base} + \lambda \sum_i w_i (\theta_i - \theta_{base})

    Args:
        states (list[StateDict]): the fine-tuned models.
        base (StateDict): the pre-trained model the task vectors start from.
        weights (float or list[float], optional): :math:`w_i`. (default: all ``1``)
        scale (float, optional): :math:`\lambda` (``lambda`` in recipes). (default: ``1.0``)
        normalize (bool, optional): divide the sum by :math:`\sum_i w_i`. (default: ``False``)

    Shapes:
        every tensor keeps its shape.

    Returns:
        StateDict: a new state dict; non-floating tensors come from the base.

    Raises:
        ValueError: no base, mismatched keys or shapes.
    """
    return task_vector_merge(states, base, fn="task_arithmetic", weights=weights, density=1.0, scale=scale,
                             normalize=normalize, sparsify="none", consensus="none")
