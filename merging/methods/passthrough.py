"""``passthrough``: copy one model's tensors (optionally scaled); with recipe ``slices``, stack layers."""
from __future__ import annotations

from collections.abc import Sequence

from ._common import StateDict, check_states, is_float, per_model
from ._registry import merge_method


@merge_method(name="passthrough", pretty_name="Passthrough", reference_url="https://github.com/arcee-ai/mergekit")
def passthrough(states: list[StateDict], base: StateDict | None, *,
                scale: float | Sequence[float] | None = None) -> StateDict:
    r"""Return the one model's tensors unchanged, or multiplied by ``scale``. In recipes,
    ``slices`` make it a layer-stacking tool: output layer :math:`i` is a source's layer
    :math:`j`, renumbered.

    Args:
        states (list[StateDict]): exactly one model.
        base (StateDict, optional): ignored.
        scale (float or list[float], optional): multiply the floating tensors. (default: ``None``)

    Shapes:
        every tensor keeps its shape.

    Returns:
        StateDict: a new state dict.

    Raises:
        ValueError: not exactly one model.
    """
    fn = "passthrough"
    if len(states) != 1:
        raise ValueError(f"{fn}: copies exactly one model per tensor, got {len(states)}; use slices to "
                         f"take layers from several models")
    check_states(fn, states, None)
    s = None if scale is None else per_model(scale, 1, "scale", fn, 1.0)[0]
    return {k: (v * s if s is not None and is_float(v) else v.clone()) for k, v in states[0].items()}
