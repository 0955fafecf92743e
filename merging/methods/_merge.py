"""``merge_states``: run a registered merge method, optionally aligning every model to the base first."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from graphs import Structure, permute

from ._common import StateDict, check_states
from ._registry import get_method


def merge_states(
    method: str,
    states: Sequence[Mapping[str, Tensor]],
    *,
    base: Mapping[str, Tensor] | None = None,
    structure: Structure | None = None,
    align: bool = False,
    seed: int = 0,
    **parameters: Any,
) -> StateDict:
    """Merge N state dicts with the registered method ``method``.

    With ``align=True`` every model is first permuted onto the base's hidden units (or model
    0's when there is no base) by weight matching (Ainsworth et al., "Git Re-Basin",
    https://arxiv.org/abs/2209.04836), so that task vectors compare like with like. When
    ``structure`` is given, buffers (BatchNorm running statistics) are taken from the base
    (else model 0) rather than merged; non-floating tensors always are.

    Args:
        method (str): a name from :func:`list_methods`.
        states (list[StateDict]): the N models (not modified).
        base (StateDict, optional): the base model (needed by the task-vector methods).
        structure (Structure, optional): from :func:`graphs.trace`; needed by ``align``.
        align (bool, optional): align every model to the base first. (default: ``False``)
        seed (int, optional): seeds weight matching and the method's random drops (DARE, DELLA),
            unless ``seed`` is also given among the method's parameters. (default: ``0``)
        **parameters: the method's hyper-parameters (see ``get_method(method).parameters``).

    Shapes:
        every tensor keeps its shape.

    Returns:
        StateDict: the merged state dict.

    Raises:
        ValueError: unknown method (the message lists them), unknown parameter, ``align``
            without a structure, or models that do not match.

    Example:
        >>> merged = merge_states("ties", [ft1, ft2], base=pre, density=0.2)  # doctest: +SKIP
    """
    m = get_method(method)
    if "seed" in m.parameter_names:  # the methods that draw (dare_*) are seeded by ``seed`` too
        parameters.setdefault("seed", seed)
    m.check_parameters(parameters)
    if "seed" in m.parameter_names:
        parameters.setdefault("seed", seed)
    states = [dict(s) for s in states]
    ref = check_states("merge_states", states, base)
    if align:
        if structure is None:
            raise ValueError("merge_states: align=True needs the structure (structure=graphs.trace(model, x))")
        from merging.matching import weight_matching

        states = [s if s is ref else permute(structure, s, weight_matching(structure, ref, s, seed=seed))
                  for s in states]
    merged = m(states, dict(base) if base is not None else None, **parameters)
    if structure is not None:
        for k in merged:
            if structure.is_buffer(k):
                merged[k] = ref[k].clone()
    return merged
