"""``trace``: front end, interpreter, resolution and verification in one call."""
from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from ..structure import Structure
# the rule modules register their rules on import
from . import rules_attention, rules_layers, rules_tensor  # noqa: F401
from .frontend_fx import FxTracer
from .resolve import build, untraceable
from .run import Run
from .verify import verify

__all__ = ["trace"]


def trace(module: nn.Module, example_input: Any, *, check: bool = True,
          atol: float = 1e-6) -> Structure:
    """Find the permutation symmetry of ``module``: its groups of interchangeable units.

    Works on any ``nn.Module`` that ``torch.fx`` can trace (submodules it cannot trace
    are treated as opaque and their parameters left unpermuted, with the reason).
    Residual adds tie groups together, flatten ties channels to blocks of the next layer's
    inputs, concatenation composes groups, grouped/depthwise convolutions tie input and
    output channels, attention heads permute as blocks. Inputs and outputs are never
    permuted. Each operation is handled by a small rule (see :mod:`graphs.trace.registry`
    to add one); whatever has no rule fixes what it touches.

    Args:
        module: the network (its parameters' values are not used except by ``check``).
        example_input: one input batch (a tensor, or a tuple of positional inputs).
        check (bool, optional): verify that a random permutation leaves the output
            unchanged; groups that fail are fixed with a reason and a warning is issued,
            which would indicate a tracer bug. (default: ``True``)
        atol (float, optional): tolerance of the check, relative to the output's scale,
            computed in float64. (default: ``1e-6``)

    Returns:
        The :class:`Structure`, with every state-dict tensor's axes.

    Raises:
        TypeError: ``module`` is not an ``nn.Module``.
        ValueError: running the module on the example input failed.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> s = trace(net, torch.randn(2, 4))
        >>> sorted(s.groups)
        ['0']
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"trace: expected an nn.Module, got {type(module).__name__}")
    inputs = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    tracer = FxTracer()
    was_training = module.training
    module.eval()
    try:
        try:
            graph = tracer.trace(module)
            gm = fx.GraphModule(tracer.root, graph)
            gm.graph.eliminate_dead_code()
        except Exception as e:
            return untraceable(module, f"torch.fx could not trace {type(module).__name__} "
                                       f"({type(e).__name__}: {str(e).splitlines()[0][:160]})")
        run = Run(gm, module, tracer.opaque)
        with torch.no_grad():
            try:
                run.run(*inputs)
            except Exception as e:
                raise ValueError(f"trace: running {type(module).__name__} on the example input "
                                 f"failed: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    finally:
        module.train(was_training)
    structure = build(module, run)
    if check:
        structure = verify(module, structure, inputs, atol)
    return structure
