"""Labels: the factors of each dimension of a traced value, in the value's own nesting."""
from __future__ import annotations

from typing import Any, Iterator

from torch import Tensor

from .._factors import Factor

__all__ = ["dims", "first_line", "fresh", "split_input", "tree_labels", "tree_tensors"]


def tree_tensors(x: Any) -> Iterator[Tensor]:
    """The tensors in nested lists, tuples and dicts."""
    if isinstance(x, Tensor):
        yield x
    elif isinstance(x, (list, tuple)):
        for y in x:
            yield from tree_tensors(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from tree_tensors(y)


def tree_labels(vals: Any, labs: Any) -> Iterator[tuple[Tensor, list[Factor]]]:
    """Pairs (tensor, labels) in matching nested structures."""
    if isinstance(vals, Tensor):
        if labs is not None:
            yield vals, labs
    elif isinstance(vals, (list, tuple)) and isinstance(labs, (list, tuple)):
        for v, l in zip(vals, labs):
            yield from tree_labels(v, l)
    elif isinstance(vals, dict) and isinstance(labs, dict):
        for k in vals:
            yield from tree_labels(vals[k], labs.get(k))


def fresh(val: Any, reason: str, fixed: bool = True) -> Any:
    """New labels for every tensor in ``val`` (fixed with ``reason`` by default)."""
    if isinstance(val, Tensor):
        return [Factor(s, fixed=fixed, reason=reason) for s in val.shape]
    if isinstance(val, (list, tuple)):
        return type(val)(fresh(v, reason, fixed) for v in val) if not hasattr(val, "_fields") \
            else tuple(fresh(v, reason, fixed) for v in val)
    return None


def dims(d: Any, nd: int) -> list[int]:
    """A ``dim`` argument (``None``, an int or a sequence) as non-negative dimensions."""
    if d is None:
        return list(range(nd))
    if isinstance(d, int):
        d = [d]
    return [x % nd if nd else 0 for x in d]


def split_input(example_input: Any) -> tuple[tuple, dict]:
    """An example input (a tensor, a tuple or list of positional inputs, or a dict of
    keyword inputs) as ``(args, kwargs)``."""
    if isinstance(example_input, dict):
        return (), dict(example_input)
    if isinstance(example_input, (tuple, list)):
        return tuple(example_input), {}
    return (example_input,), {}


def first_line(e: BaseException, limit: int | None = None) -> str:
    """``"TypeName: first line of the message"`` (at most ``limit`` characters of it)."""
    lines = str(e).splitlines()
    return f"{type(e).__name__}: {(lines[0] if lines else '')[:limit]}"
