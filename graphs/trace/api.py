"""``trace``: front end, interpreter, resolution and verification in one call."""
from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from ..structure import Structure
# the rule modules register their rules on import
from . import rules_attention, rules_layers, rules_tensor  # noqa: F401
from .frontend_export import capture_export
from .frontend_fx import FxTracer
from .labels import first_line, split_input
from .resolve import build, untraceable
from .run import Run
from .verify import verify

__all__ = ["trace"]


FRONT_ENDS = ("auto", "fx", "export")


def trace(module: nn.Module, example_input: Any, *, check: bool = True,
          atol: float = 1e-6, front_end: str = "auto") -> Structure:
    """Find the permutation symmetry of ``module``: its groups of interchangeable units.

    The graph is captured with ``torch.fx`` first (submodules it cannot trace are treated
    as opaque and their parameters left unpermuted, with the reason), and with
    ``torch.export`` (non-strict) where fx fails for the whole module, where its run on
    the example input fails, or where opaque submodules hold most of the parameters (as
    for Hugging Face transformers models). Residual adds tie groups together, flatten
    ties channels to blocks of the next layer's inputs, concatenation composes groups,
    grouped/depthwise convolutions tie input and output channels, attention heads permute
    as blocks. Inputs and outputs are never permuted. Each operation is handled by a
    small rule (see :mod:`graphs.trace.registry` to add one); whatever has no rule fixes
    what it touches.

    Args:
        module: the network (its parameters' values are not used except by ``check``).
        example_input: one input batch: a tensor, a tuple of positional inputs, or a dict
            of keyword inputs (``{"input_ids": ids, "attention_mask": mask}``). Optional
            arguments left out keep their defaults (they are not traced).
        check (bool, optional): verify that a random permutation leaves the output
            unchanged; groups that fail are fixed with a reason and a warning is issued,
            which would indicate a tracer bug. (default: ``True``)
        atol (float, optional): tolerance of the check, relative to the output's scale,
            computed in float64. (default: ``1e-6``)
        front_end (str, optional): ``"auto"``, ``"fx"`` or ``"export"``. (default: ``"auto"``)

    Returns:
        The :class:`Structure`, with every state-dict tensor's axes; its ``front_end``
        says which front end captured the graph and ``permuted_fraction`` how much of the
        parameters a group acts on.

    Raises:
        TypeError: ``module`` is not an ``nn.Module``.
        ValueError: an unknown ``front_end``, inputs that do not fit ``module.forward``,
            or running the module on the example input failed.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> s = trace(net, torch.randn(2, 4))
        >>> sorted(s.groups), s.front_end
        (['0'], 'fx')
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"trace: expected an nn.Module, got {type(module).__name__}")
    if front_end not in FRONT_ENDS:
        raise ValueError(f"trace: front_end must be one of {FRONT_ENDS}, got {front_end!r}")
    args, kwargs = split_input(example_input)
    was_training = module.training
    module.eval()
    try:
        run, used, failures, run_error = None, None, [], None
        if front_end in ("auto", "fx"):
            try:
                run = _run_fx(module, args, kwargs)
                used = "fx"
            except _CaptureError as e:
                failures.append(str(e))
            except ValueError as e:  # the graph was captured, running it failed
                run_error = e
        if front_end == "export" or (front_end == "auto" and (run is None or _mostly_opaque(module, run.opaque))):
            try:
                run, used = _run_export(module, args, kwargs), "export"
            except _CaptureError as e:
                failures.append(str(e))
        if run is None:
            if run_error is not None:
                raise run_error
            return untraceable(module, "; ".join(failures))
    finally:
        module.train(was_training)
    structure = build(module, run)
    structure.front_end = used
    if check:
        structure = verify(module, structure, example_input, atol)
    return structure


class _CaptureError(Exception):
    """A front end could not capture the module's graph."""


def _fx_inputs(module: nn.Module, args: tuple, kwargs: dict) -> tuple[list, dict | None]:
    """The values of the graph's placeholders, and the omitted optional arguments
    (fixed to their defaults with fx's ``concrete_args``)."""
    try:
        sig = inspect.signature(module.forward)
    except (TypeError, ValueError):
        sig = None
    params = list(sig.parameters.values()) if sig is not None else []
    if sig is None or any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        if kwargs:
            raise _CaptureError(f"torch.fx cannot take keyword inputs {sorted(kwargs)} to "
                                f"{type(module).__name__}.forward, which has *args or **kwargs")
        return list(args), None
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as e:
        raise ValueError(f"trace: the example input does not fit {type(module).__name__}.forward"
                         f"{sig}: {e}") from e
    concrete = {p.name: p.default for p in params if p.name not in bound.arguments}
    return [bound.arguments.get(p.name, p.default) for p in params], concrete or None


def _run_fx(module: nn.Module, args: tuple, kwargs: dict) -> Run:
    values, concrete = _fx_inputs(module, args, kwargs)
    try:
        gm, opaque = _fx_trace(module, concrete)
    except Exception as e:
        raise _CaptureError(f"torch.fx could not trace {type(module).__name__} ({first_line(e, 160)})") from e
    run = Run(gm, module, opaque)
    with torch.no_grad():
        try:
            run.run(*values)
        except Exception as e:
            raise ValueError(f"trace: running {type(module).__name__} on the example input "
                             f"failed: {first_line(e)}") from e
    return run


def _fx_trace(module: nn.Module, concrete: dict | None) -> tuple[fx.GraphModule, dict[str, str]]:
    """The fx graph (dead code removed) and the opaque submodules with their reasons."""
    tracer = FxTracer()
    graph = tracer.trace(module, concrete_args=concrete)
    gm = fx.GraphModule(tracer.root, graph)
    gm.graph.eliminate_dead_code(is_impure_node=_impure)
    return gm, tracer.opaque


def _impure(n: fx.Node) -> bool:
    """Kept by dead-code elimination: fx's impure nodes and in-place Tensor methods
    (``h.add_(y)`` with its result unused still changes ``h``; fx counts every method pure)."""
    return n.is_impure() or (n.op == "call_method" and isinstance(n.target, str)
                             and n.target.endswith("_") and not n.target.endswith("__"))


def _run_export(module: nn.Module, args: tuple, kwargs: dict) -> Run:
    try:
        gm, state_of, flat = capture_export(module, args, kwargs)
    except Exception as e:
        raise _CaptureError(f"torch.export could not export {type(module).__name__} ({first_line(e, 160)})") from e
    run = Run(gm, module, placeholder_state=state_of)
    with torch.no_grad():
        try:
            run.run(*flat)
        except Exception as e:
            raise _CaptureError(f"running the exported graph of {type(module).__name__} failed "
                                f"({first_line(e, 160)})") from e
    return run


def _mostly_opaque(module: nn.Module, opaque: dict[str, str]) -> bool:
    """Whether submodules fx could not trace hold most of the parameter elements."""
    if not opaque:
        return False
    total = hidden = 0
    for k, p in module.named_parameters():
        total += p.numel()
        if any(k.startswith(q + ".") for q in opaque):
            hidden += p.numel()
    return hidden * 2 > total
