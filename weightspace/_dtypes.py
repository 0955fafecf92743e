"""Dtypes of the checkpoints a merge reads and of the one it writes.

Checkpoints of one architecture may come in different float dtypes (a float64 export, a
bfloat16 fine-tune). Alignment and interpolation then run in the promoted dtype (at least
float32; the matchers in ``merging`` do so tensor by tensor), and the output keeps A's dtype
unless ``dtype=`` / ``--dtype`` names another; a one-line note says what was done. Tensors that
are not floating point (``num_batches_tracked`` counters, index buffers) are never matched or
interpolated: they are copied from A. A tensor floating in one input and not in another is bad
input.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["OUTPUT_DTYPES", "parse_dtype", "DtypePlan", "plan_dtypes"]

#: Output dtypes accepted by ``dtype=`` and ``--dtype``.
OUTPUT_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
                 "float16": torch.float16}


def parse_dtype(dtype: str | torch.dtype | None, fn: str) -> torch.dtype | None:
    """``None``, or one of :data:`OUTPUT_DTYPES` given by name or as a ``torch.dtype``."""
    if dtype is None or (isinstance(dtype, torch.dtype) and dtype in OUTPUT_DTYPES.values()):
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in OUTPUT_DTYPES:
        raise ValueError(f"{fn}: unknown output dtype {dtype!r}; choose one of: {', '.join(OUTPUT_DTYPES)}")
    return OUTPUT_DTYPES[name]


def _name(d: torch.dtype) -> str:
    return str(d).removeprefix("torch.")


class DtypePlan:
    """What :func:`plan_dtypes` found: the non-float tensors, the output dtype, the notes to print."""

    def __init__(self, copied: list[str], out: torch.dtype | None, notes: list[str],
                 mixed: tuple[str, torch.dtype] | None = None) -> None:
        self.copied = copied  #: names of non-float tensors, copied from A
        self.out = out  #: the dtype asked for, else None (each tensor keeps A's dtype)
        self.notes = notes  #: one-line notes on dtypes (for stderr)
        self.mixed = mixed  #: when the inputs' float dtypes differ: (their listing, the promoted dtype)

    def work_dtype(self, *dtypes: torch.dtype) -> torch.dtype:
        """The dtype a float tensor stored in ``dtypes`` is merged in: their promotion with the
        output dtype, at least float32."""
        work = torch.float32
        for d in (*dtypes, *((self.out,) if self.out is not None else ())):
            work = torch.promote_types(work, d)
        return work

    def widen(self, state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor]
              ) -> dict[str, torch.Tensor]:
        """A's float tensors in the dtype they are merged in (``torch.lerp`` then computes in it)."""
        return {k: v.to(self.work_dtype(v.dtype, state_b[k].dtype)) if v.is_floating_point() and k in state_b
                else v for k, v in state_a.items()}

    def finish(self, merged: Mapping[str, torch.Tensor], state_a: Mapping[str, torch.Tensor]
               ) -> dict[str, torch.Tensor]:
        """Merged float tensors rounded once to the output dtype (``dtype=``, else A's)."""
        return {k: v.to(self.out_dtype(state_a[k].dtype) if k in state_a else v.dtype)
                if v.is_floating_point() else v for k, v in merged.items()}

    def out_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The dtype a tensor stored as ``dtype`` in A is written in."""
        return self.out if self.out is not None and dtype.is_floating_point else dtype


def plan_dtypes(states: Sequence[Mapping[str, Any]], paths: Sequence[Any], fn: str,
                dtype: str | torch.dtype | None = None, dtype_of: Sequence[Any] | None = None) -> DtypePlan:
    """Check the inputs' dtypes against each other and say what the merge does with them.

    Args:
        states: the inputs (state dicts, or lazy checkpoints with ``dtype_of``), A first.
        paths: their files, for messages.
        fn: the calling function, for messages.
        dtype: the output dtype asked for, if any.
        dtype_of: per input, a function ``name -> torch.dtype`` that reads no data.

    Raises:
        ValueError: a tensor floating point in one input and not in another.
    """
    out = parse_dtype(dtype, fn)
    getters = list(dtype_of) if dtype_of is not None else [(lambda k, s=s: s[k].dtype) for s in states]
    first = states[0]
    copied: list[str] = []
    floats: list[set[torch.dtype]] = [set() for _ in states]
    for k in first:
        ds = [(i, g(k)) for i, (s, g) in enumerate(zip(states, getters)) if k in s]
        kinds = {d.is_floating_point or d.is_complex for _, d in ds}
        if len(kinds) > 1:
            (i, di), (j, dj) = ds[0], next((i, d) for i, d in ds if (d.is_floating_point or d.is_complex)
                                           != (ds[0][1].is_floating_point or ds[0][1].is_complex))
            raise ValueError(f"{fn}: {k!r} is {_name(di)} in {paths[i]} but {_name(dj)} in {paths[j]}: one is "
                             f"floating point and the other is not; convert it or leave it out of one checkpoint")
        if not kinds.pop():
            copied.append(k)
            continue
        for i, d in ds:
            if d.is_floating_point:
                floats[i].add(d)
    notes: list[str] = []
    mixed = None
    every = set().union(*floats)
    a_dtypes = sorted(_name(d) for d in floats[0])
    if len(every) > 1:
        work = torch.float32
        for d in every:
            work = torch.promote_types(work, d)
        listing = ", ".join(f"{Path(str(p)).name}: {'/'.join(sorted(_name(d) for d in f)) or '-'}"
                            for p, f in zip(paths, floats))
        target = f"{_name(out)} (--dtype)" if out is not None else f"{'/'.join(a_dtypes)} (A's dtype; --dtype to choose)"
        notes.append(f"inputs differ in dtype ({listing}): weights matched and interpolated in {_name(work)}, "
                     f"written as {target}")
        mixed = (listing, work)
    elif out is not None and every and every != {out}:
        notes.append(f"inputs are {'/'.join(a_dtypes)}: written as {_name(out)} (--dtype)")
    return DtypePlan(copied, out, notes, mixed)
