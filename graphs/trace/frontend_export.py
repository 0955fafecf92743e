"""The ``torch.export`` front end, for modules torch.fx cannot trace (Hugging Face
transformers 5 models among them).

The module is captured with ``torch.export.export(module, args, kwargs, strict=False)``.
The graph is flat (no module calls): its nodes are ATen operators, which map to the same
canonical names as fx's functions (:mod:`graphs.trace.names`), so the same op rules run.
Parameters and buffers are lifted to graph inputs; the graph signature maps them back to
their state-dict names.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch.export.graph_signature import InputKind

__all__ = ["capture_export"]


@contextlib.contextmanager
def _quiet_torch() -> Iterator[None]:
    """torch logs a failed export at length (the partial graph, symbolic-shape notes) and warns
    about its internals; a failure here is reported by the tracer, in one line, as the reason."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)  # torch's loggers carry their own levels: switch them all off
    try:
        # a failed export also prints its partial graph to sys.stderr
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def capture_export(module: nn.Module, args: tuple, kwargs: dict) -> tuple[fx.GraphModule, dict[str, str], list]:
    """The exported graph, its placeholder -> state-dict (or constant) names, and the
    flat inputs to run it on (module tensors first, then the user's inputs)."""
    with _quiet_torch():
        ep = torch.export.export(module, tuple(args), dict(kwargs), strict=False)
    state_of: dict[str, str] = {}
    for spec in ep.graph_signature.input_specs:
        if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR) \
                and spec.target is not None:
            state_of[spec.arg.name] = spec.target
    flat: list[Any] = list(ep._graph_module_flat_inputs(tuple(args), dict(kwargs)))
    return ep.graph_module, state_of, flat
