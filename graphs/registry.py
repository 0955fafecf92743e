"""One registry pattern for every family of choices (merge methods, alignment methods, solvers, ...).

A family is a :class:`Registry`; its module exposes a decorator that registers an entry under a
name with a one-line description, ``list_*()`` for the names, and ``get_*()`` whose error lists
every valid name. It lives in the lowest layer so that ``graphs``, ``merging`` and
``weightspace`` all share it.

Example:
    >>> SOLVERS = Registry("solver")
    >>> @SOLVERS.register("greedy", description="take the best column of each row in turn")
    ... def greedy(cost): ...
    >>> SOLVERS.names()
    ['greedy']
    >>> SOLVERS.get("lap", caller="solve")
    Traceback (most recent call last):
    ...
    ValueError: solve: unknown solver 'lap'; choose one of: greedy
"""
from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, TypeVar

__all__ = ["Entry", "Registry"]

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered choice.

    Attributes:
        name (str): the name users type (``--solver lap``, ``method="weight"``).
        value: what was registered (a function, a class or a plain value such as a recipe).
        description (str): one line for ``--help`` and listings.
        info (Mapping[str, Any]): family-specific facts given at registration (read-only).
    """

    name: str
    value: T
    description: str
    info: Mapping[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Named choices of one family, in registration order.

    Args:
        kind (str): what one entry is called in messages (``"solver"``, ``"method"``).
        allow_colon (bool, optional): whether names may contain ``:`` (names of models and
            datasets may not: ``package.module:callable`` is code). (default: ``True``)
        sort (bool, optional): list names sorted rather than in registration order (for
            families that grow by plugins, where order means nothing). (default: ``False``)
    """

    def __init__(self, kind: str, *, allow_colon: bool = True, sort: bool = False) -> None:
        self.kind = kind
        self.allow_colon = allow_colon
        self.sort = sort
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, *, description: str, caller: str | None = None,
                 **info: Any) -> Callable[[T], T]:
        """Decorator registering a value under ``name``; it returns the value unchanged.

        Args:
            name (str): non-empty, without whitespace (and without ``:`` unless allowed).
            description (str): one line saying what the choice does.
            caller (str, optional): the name errors start with (default: ``register <kind>``).
            **info: family-specific facts, kept in :attr:`Entry.info`.

        Raises:
            ValueError: a malformed name, or a name already registered (naming who registered it).
        """
        who = caller or f"register {self.kind}"
        if not isinstance(name, str) or not name or any(c.isspace() for c in name) \
                or (":" in name and not self.allow_colon):
            extra = "" if self.allow_colon else " or ':'"
            raise ValueError(f"{who}: bad name {name!r}; use a non-empty name without whitespace{extra}")

        def decorator(value: T) -> T:
            if name in self._entries:
                raise ValueError(f"{who}: {self.kind} name {name!r} is already registered "
                                 f"(by {_qualname(self._entries[name].value)}); choose another name")
            self._entries[name] = Entry(name, value, str(description), MappingProxyType(dict(info)))
            return value

        return decorator

    def names(self) -> list[str]:
        """The registered names, in registration order (sorted if the registry sorts)."""
        return sorted(self._entries) if self.sort else list(self._entries)

    def entry(self, name: str, *, caller: str | None = None) -> Entry[T]:
        """The entry of ``name``.

        Raises:
            ValueError: an unknown name; the message lists every registered name.
        """
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            who = f"{caller}: " if caller else ""
            raise ValueError(f"{who}unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
                             ) from None

    def get(self, name: str, *, caller: str | None = None) -> T:
        """The value registered as ``name`` (errors as :meth:`entry`)."""
        return self.entry(name, caller=caller).value

    def entries(self) -> list[Entry[T]]:
        """Every entry, in the order of :meth:`names`."""
        return [self._entries[n] for n in self.names()]

    def help(self, names: list[str] | None = None, *, width: int = 12, line: int = 92) -> str:
        """``name  description`` for each entry (or each of ``names``), wrapped to ``line``
        characters, for the ``--help`` texts of the CLI."""
        out = []
        for n in self.names() if names is None else names:
            out.extend(textwrap.wrap(self.entry(n).description, line, initial_indent=f"  {n:<{width}} ",
                                     subsequent_indent=" " * (width + 3)))
        return "\n".join(out)

    def metavar(self, *extra: str) -> str:
        """``{a,b,c}`` for an argparse ``metavar``, with ``extra`` choices appended."""
        return "{" + ",".join([*self.names(), *extra]) + "}"

    def copy(self) -> Registry[T]:
        """A registry with the same entries, for tests that register and must not leak."""
        new: Registry[T] = Registry(self.kind, allow_colon=self.allow_colon, sort=self.sort)
        new._entries = dict(self._entries)
        return new

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


def _qualname(obj: Any) -> str:
    if not hasattr(obj, "__qualname__"):  # a record (a merge method, a model entry): name its function
        obj = next((getattr(obj, a) for a in ("fn", "factory", "loader") if callable(getattr(obj, a, None))), obj)
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    return f"{module}.{qualname}" if module and qualname else repr(obj)[:60]
