"""The registry of merge methods: ``@merge_method`` checks a method when it is defined.

A merge method is a pure function over state dicts,

    fn(states: list[StateDict], base: StateDict | None, *, <hyper-parameter>: <type> = <default>, ...)
        -> StateDict

registered under a unique name with a human-readable name and the paper it follows
(the mergekit ``easy_define`` contract, with duplicate names rejected).
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from graphs.registry import Registry

__all__ = ["REQUIRED", "MergeMethod", "MethodParameter", "merge_method", "get_method", "list_methods"]

StateDict = dict[str, Tensor]


class _Required:
    """The default of a hyper-parameter the caller must give (mergekit's parameters without a default)."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()


@dataclass(frozen=True)
class MethodParameter:
    """One hyper-parameter of a merge method, read from its annotated, defaulted signature.

    Attributes:
        name (str): the keyword.
        annotation (str): its type annotation, as written.
        default (Any): its default value; :data:`REQUIRED` when the caller must give it.
    """

    name: str
    annotation: str
    default: Any

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method: call it like the function it wraps.

    Attributes:
        name (str): registry name (``get_method(name)``, ``merge_method:`` in recipes).
        pretty_name (str): human-readable name.
        reference_url (str): the paper the method follows.
        fn (callable): the pure function ``fn(states, base, **parameters) -> StateDict``.
        parameters (tuple[MethodParameter, ...]): its hyper-parameters in signature order.
        needs_base (bool): whether the method needs a base model (``base_model`` in recipes).
    """

    name: str
    pretty_name: str
    reference_url: str
    fn: Callable[..., StateDict]
    parameters: tuple[MethodParameter, ...]
    needs_base: bool = False

    def __call__(self, states: list[StateDict], base: StateDict | None = None, **parameters: Any) -> StateDict:
        self.check_parameters(parameters)
        return self.fn(list(states), base, **parameters)

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters)

    def check_parameters(self, parameters: dict[str, Any]) -> None:
        """Raise ``ValueError`` naming any keyword this method does not take (with the valid ones)
        or a required one that is missing."""
        unknown = sorted(set(parameters) - set(self.parameter_names))
        if unknown:
            raise ValueError(f"merge method {self.name!r}: unknown parameter(s) {', '.join(unknown)}; "
                             f"it takes: {', '.join(self.parameter_names) or 'no parameters'}")
        missing = [p.name for p in self.parameters if p.required and parameters.get(p.name, REQUIRED) is REQUIRED]
        if missing:
            raise ValueError(f"merge method {self.name!r}: missing required parameter(s) {', '.join(missing)}")

    def __repr__(self) -> str:
        return f"MergeMethod({self.name!r}, {', '.join(self.parameter_names)})"


#: the registered merge methods (listed sorted: plugins add to them)
MERGE_METHODS: Registry[MergeMethod] = Registry("merge method", sort=True)


def _annotation(p: inspect.Parameter) -> str:
    a = p.annotation
    return a if isinstance(a, str) else getattr(a, "__name__", repr(a))


def merge_method(*, name: str, pretty_name: str, reference_url: str,
                 needs_base: bool = False) -> Callable[[Callable[..., StateDict]], MergeMethod]:
    """Decorator registering a pure merge function under ``name``.

    The signature is checked here, at definition time, not when a merge runs: the first two
    parameters must be ``states`` and ``base`` (annotated), every other parameter must be
    keyword-only, annotated and defaulted (``= REQUIRED`` for one the caller must give), and the
    return type must be annotated.

    Args:
        name (str): registry name: non-empty, no whitespace.
        pretty_name (str): human-readable name.
        reference_url (str): link to the paper.
        needs_base (bool, optional): the method needs a base model. (default: ``False``)

    Returns:
        A decorator that returns the :class:`MergeMethod` (callable like the function).

    Raises:
        ValueError: a malformed name, a name already registered, or a bad signature.

    Example:
        >>> @merge_method(name="first", pretty_name="First model", reference_url="https://example.org")  # doctest: +SKIP
        ... def first(states: list[StateDict], base: StateDict | None) -> StateDict:
        ...     return dict(states[0])
    """
    register = MERGE_METHODS.register(name, description=pretty_name, caller="merge_method")

    def decorator(fn: Callable[..., StateDict]) -> MergeMethod:
        where = f"merge_method {name!r} ({getattr(fn, '__qualname__', fn)!r})"
        if name in MERGE_METHODS:
            register(fn)  # raises: the name is taken
        if not callable(fn):
            raise ValueError(f"{where}: must decorate a function")
        sig = inspect.signature(fn)
        params = list(sig.parameters.values())
        if len(params) < 2 or [p.name for p in params[:2]] != ["states", "base"]:
            raise ValueError(f"{where}: the first two parameters must be (states, base), got "
                             f"({', '.join(p.name for p in params[:2])})")
        for p in params[:2]:
            if p.annotation is inspect.Parameter.empty:
                raise ValueError(f"{where}: parameter {p.name!r} must be annotated")
            if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                raise ValueError(f"{where}: parameter {p.name!r} must be positional")
        hyper = []
        for p in params[2:]:
            if p.kind != p.KEYWORD_ONLY:
                raise ValueError(f"{where}: hyper-parameter {p.name!r} must be keyword-only (after *)")
            if p.annotation is inspect.Parameter.empty:
                raise ValueError(f"{where}: hyper-parameter {p.name!r} must be annotated")
            if p.default is inspect.Parameter.empty:
                raise ValueError(f"{where}: hyper-parameter {p.name!r} must have a default")
            hyper.append(MethodParameter(p.name, _annotation(p), p.default))
        if sig.return_annotation is inspect.Signature.empty:
            raise ValueError(f"{where}: the return type must be annotated (StateDict)")
        return register(MergeMethod(name, pretty_name, reference_url, fn, tuple(hyper), bool(needs_base)))

    return decorator


def get_method(name: str) -> MergeMethod:
    """The merge method registered as ``name``.

    Raises:
        ValueError: unknown name; the message lists every registered name.
    """
    return MERGE_METHODS.get(name, caller="get_method")


def list_methods() -> list[str]:
    """Sorted names of the registered merge methods."""
    return MERGE_METHODS.names()
