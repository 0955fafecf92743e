"""Helpers shared by the merge methods: input checks and per-model parameters."""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor

StateDict = dict[str, Tensor]


def is_float(t: Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


def check_states(fn: str, states: Sequence[Mapping[str, Tensor]], base: Mapping[str, Tensor] | None, *,
                 min_models: int = 1, needs_base: bool = False) -> Mapping[str, Tensor]:
    """Check that every state has the reference's keys and shapes; return the reference (base or first)."""
    if isinstance(states, Mapping):
        raise TypeError(f"{fn}: states must be a list of state dicts, got a single {type(states).__name__}")
    if len(states) < min_models:
        raise ValueError(f"{fn}: needs at least {min_models} model(s), got {len(states)}")
    if needs_base and base is None:
        raise ValueError(f"{fn}: needs a base model (the task vectors are differences to it); pass base=")
    ref = base if base is not None else states[0]
    ref_label = "the base" if base is not None else "model 0"
    for i, s in enumerate(states):
        if set(s) != set(ref):
            extra, missing = sorted(set(s) - set(ref)), sorted(set(ref) - set(s))
            k, how = (missing[0], f"missing from model {i}") if missing else (extra[0], f"not in {ref_label}")
            raise ValueError(f"{fn}: model {i} has different tensors than {ref_label}: {k!r} is {how}")
        for k, v in s.items():
            if not isinstance(v, Tensor):
                raise TypeError(f"{fn}: {k!r} in model {i} is a {type(v).__name__}, expected a torch.Tensor")
            if tuple(v.shape) != tuple(ref[k].shape):
                raise ValueError(f"{fn}: {k!r} has shape {tuple(v.shape)} in model {i} and "
                                 f"{tuple(ref[k].shape)} in {ref_label}; all models must share one architecture")
    return ref


def per_model(value: float | Sequence[float] | None, n: int, name: str, fn: str, default: float) -> list[float]:
    """A scalar or one value per model, as a list of ``n`` floats."""
    if value is None:
        return [float(default)] * n
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)] * n
    if isinstance(value, Tensor):
        value = value.tolist()
    values = list(value)
    if len(values) != n:
        raise ValueError(f"{fn}: {name} has {len(values)} values for {n} models; give one per model or one number")
    return [float(v) for v in values]


_UPCAST: contextvars.ContextVar[bool] = contextvars.ContextVar("weightspace_merge_upcast", default=True)


def work_dtype(t: Tensor, *others: Tensor) -> torch.dtype:
    """The dtype ``t`` is mixed with ``others`` in: their promoted dtype, and at least float32
    (low-precision tensors mixed in float32) unless inside :func:`compute_in_input_dtype`."""
    work = torch.float32 if _UPCAST.get() else t.dtype
    for x in (t, *others):
        work = torch.promote_types(work, x.dtype)
    return work


def merge_each_tensor(ref: Mapping[str, Tensor], states: Sequence[Mapping[str, Tensor]],
                      merge_tensor: Callable[[str, list[Tensor], Tensor], Tensor], *,
                      promote_with_models: bool = True) -> StateDict:
    """Merge ``states`` tensor by tensor over the keys of ``ref`` (the base, else model 0).

    A non-floating tensor (a counter) is copied from ``ref``. A floating one is merged in its work
    dtype ``dt`` (:func:`work_dtype` of ``ref``'s tensor and, with ``promote_with_models``, the
    models'): ``merge_tensor(key, tensors, reference)`` gets the models' tensors on ``ref``'s device
    and ``ref``'s tensor, all in ``dt``; its result is cast back to ``ref``'s dtype.
    """
    out: StateDict = {}
    for key, r in ref.items():
        if not is_float(r):
            out[key] = r.clone()
            continue
        dt = work_dtype(r, *(s[key] for s in states)) if promote_with_models else work_dtype(r)
        out[key] = merge_tensor(key, [s[key].to(device=r.device, dtype=dt) for s in states], r.to(dt)).to(r.dtype)
    return out


@contextlib.contextmanager
def compute_in_input_dtype() -> Iterator[None]:
    """Inside this block the methods compute in their inputs' dtype (mergekit's rule: a recipe's
    ``dtype`` is the compute dtype), instead of mixing float16/bfloat16 in float32."""
    token = _UPCAST.set(False)
    try:
        yield
    finally:
        _UPCAST.reset(token)
