"""The rule tables: one decorator for operations, one for module types.

An *op rule* handles one family of tensor operations, keyed by the canonical name the
tracer gives a node (``"reshape"``, ``"matmul"``, ``"linear"``, a ``Tensor`` method's own
name, ...; see :mod:`graphs.trace.names`). A *module rule* handles a module type and its
subclasses (looked up along the MRO, so a subclass uses its base's rule unless it
registers its own); a module type with a rule is a leaf of the fx trace.

A rule is ``rule(run, call) -> labels``: ``run`` is the interpreter (its helpers tie,
fix and create factors, see :class:`graphs.trace.run.Run`), ``call`` the node's
arguments, their labels and its output (:class:`Call`). It returns the labels of the
output (one factor per dimension of each output tensor, ``None`` for non-tensors). A
rule that raises, or no rule at all, fixes everything the node touches.

Example:
    >>> from graphs.trace import module_rule
    >>> class Swish(nn.Module):
    ...     def forward(self, x):
    ...         return x * torch.sigmoid(x)
    >>> @module_rule(Swish)
    ... def _swish(run, call):
    ...     return list(call.lx)          # elementwise: the labels pass through
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch.fx as fx
import torch.nn as nn

__all__ = ["Call", "Elementwise", "op_rule", "module_rule", "get_op_rule", "get_module_rule"]

Rule = Callable[[Any, "Call"], Any]

_OP_RULES: dict[str, Rule] = {}
_MODULE_RULES: dict[type, Rule] = {}


class Elementwise(nn.Module):
    """Key of the rule for modules that declare themselves elementwise (a class attribute
    ``elementwise = True``, as :class:`weightspace.models.sine.Sine` does) and have no rule
    of their own; never instantiated."""


@dataclass
class Call:
    """One node as a rule sees it.

    Attributes:
        node: the graph node.
        name: the canonical operation name (op rules) or ``None`` (module rules).
        args, kwargs: the argument values.
        largs, lkwargs: their labels, in the same nested structure (``None`` for values
            that carry none).
        out: the node's output value.
        where: a short description for reasons (``"Linear 'fc1'"``, ``"matmul (matmul_2)"``).
        module: the called module (module rules), else ``None``.
    """

    node: fx.Node
    name: str | None
    args: tuple
    kwargs: dict
    largs: Any
    lkwargs: Any
    out: Any
    where: str
    module: nn.Module | None = None
    nargs: tuple = ()   # the node's own arguments (nodes), in the order of ``args``

    @property
    def x(self) -> Any:
        """The first argument."""
        return self.args[0] if self.args else None

    @property
    def lx(self) -> Any:
        """The labels of the first argument."""
        return self.largs[0] if self.largs else None

    @property
    def target(self) -> str:
        """The module's qualified name (module rules)."""
        return self.node.target

    def pname(self, s: str) -> str:
        """State-dict name of the called module's tensor ``s``."""
        t = self.node.target
        return f"{t}.{s}" if t else s

    def arg(self, i: int, key: str, default: Any = None) -> Any:
        """Argument ``i`` by position, else by keyword ``key``."""
        return self.args[i] if len(self.args) > i else self.kwargs.get(key, default)

    def larg(self, i: int, key: str) -> Any:
        """The labels of argument ``i`` by position, else of keyword ``key``."""
        return self.largs[i] if len(self.args) > i else self.lkwargs.get(key)


def op_rule(*names: str, replace: bool = False) -> Callable[[Rule], Rule]:
    """Register the decorated function as the rule of the operations ``names``.

    Raises:
        TypeError: the function does not take ``(run, call)``.
        ValueError: a name already has a rule (pass ``replace=True`` to override it).
    """
    def deco(fn: Rule) -> Rule:
        _register(_OP_RULES, names, fn, replace, "op_rule")
        return fn
    return deco


def module_rule(*types: type, replace: bool = False) -> Callable[[Rule], Rule]:
    """Register the decorated function as the rule of the module types ``types`` (and
    their subclasses without a rule of their own); those modules become fx leaves.

    Raises:
        TypeError: an entry is not an ``nn.Module`` subclass, or the function does not
            take ``(run, call)``.
        ValueError: a type already has a rule (pass ``replace=True`` to override it).
    """
    for t in types:
        if not (isinstance(t, type) and issubclass(t, nn.Module)):
            raise TypeError(f"module_rule: expected nn.Module subclasses, got {t!r}")

    def deco(fn: Rule) -> Rule:
        _register(_MODULE_RULES, types, fn, replace, "module_rule")
        return fn
    return deco


def _register(table: dict, keys: tuple, fn: Rule, replace: bool, who: str) -> None:
    if not keys:
        raise ValueError(f"{who}: name at least one key to register {fn.__name__} for")
    try:
        inspect.signature(fn).bind(None, None)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{who}: a rule is called as rule(run, call); {getattr(fn, '__name__', fn)!r} "
                        f"does not take those two arguments ({e})") from e
    taken = [k for k in keys if k in table and not replace]
    if taken:
        shown = [getattr(k, "__name__", k) for k in taken]
        raise ValueError(f"{who}: {shown} already have a rule ({[table[k].__name__ for k in taken]}); "
                         f"pass replace=True to override")
    for k in keys:
        table[k] = fn


def get_op_rule(name: str | None) -> Rule | None:
    """The rule of the canonical operation ``name``, or ``None``."""
    return _OP_RULES.get(name) if name is not None else None


def get_module_rule(module: nn.Module) -> Rule | None:
    """The rule of the closest type in ``module``'s MRO that has one (then the
    :class:`Elementwise` rule for a module with ``elementwise = True``), or ``None``."""
    for t in type(module).__mro__:
        rule = _MODULE_RULES.get(t)
        if rule is not None:
            return rule
    if getattr(module, "elementwise", False):
        return _MODULE_RULES.get(Elementwise)
    return None
