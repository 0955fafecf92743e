"""Shared evaluation helpers: run an ``nn.Module`` with the weights of a state dict.

The model is never mutated: weights are swapped in with :func:`torch.func.functional_call`,
module modes (``train``/``eval``) and BatchNorm momenta are restored on exit, and the
tensors of a caller's state dict are only read (code that runs BatchNorm in train mode
passes fresh buffers, which BatchNorm updates in place).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

StateDict = dict[str, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class EvalResult:
    """Loss and accuracy of one model on one data set.

    Attributes:
        loss (float): mean loss per example.
        accuracy (float): fraction of examples classified correctly (argmax over the class
            axis), or ``nan`` when the outputs and targets do not look like classification.
        n (int): number of examples seen.
    """

    loss: float
    accuracy: float
    n: int


def evaluate(
    model: nn.Module,
    state: Mapping[str, Tensor],
    data: Iterable[Any],
    *,
    device: torch.device | str | None = None,
    loss_fn: LossFn = F.cross_entropy,
    num_batches: int | None = None,
) -> EvalResult:
    """Loss and accuracy of ``model`` run with the weights in ``state``.

    The model runs in eval mode under ``torch.no_grad()`` through
    :func:`torch.func.functional_call`; the model itself is left unchanged (its modes are
    restored, its own tensors are not used except for non-persistent buffers).

    Args:
        model (nn.Module): the architecture (its own weights are ignored).
        state (Mapping[str, Tensor]): a complete state dict for ``model``.
        data (Iterable): batches ``(x, y)``; a ``DataLoader`` or a list of tuples. ``x`` may
            be a tuple of positional inputs.
        device (torch.device or str, optional): where to run; default the device of the
            first tensor of ``state``.
        loss_fn (callable, optional): ``loss_fn(output, y)`` returning the *mean* loss over
            the batch. (default: :func:`torch.nn.functional.cross_entropy`)
        num_batches (int, optional): use only the first ``num_batches`` batches.

    Shapes:
        x: (B, ...); output: (B, K, ...) logits; y: (B, ...) class indices, or (B, K, ...)
        class probabilities.

    Returns:
        EvalResult: ``loss`` (mean per example), ``accuracy`` and ``n``.

    Raises:
        ValueError: ``state`` does not fit ``model``, or ``data`` yields no batches.
        TypeError: ``data`` is not an iterable of ``(x, y)`` batches.
    """
    dev = resolve_device(state, device)
    full = prepare_state(model, state, dev, fn="evaluate")
    # Sums stay on the device (float64) so CUDA runs do not synchronise on every batch.
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    correct_sum = torch.zeros((), dtype=torch.float64, device=dev)
    n = 0
    classification = True
    with eval_mode(model), torch.no_grad():
        for x, y in iter_batches(data, dev, num_batches=num_batches, fn="evaluate"):
            out = call(model, full, x)
            b = _batch_size(y)
            loss_sum += loss_fn(out, y).to(torch.float64) * b
            correct = _correct(out, y)
            if correct is None:
                classification = False
            elif classification:
                correct_sum += correct
            n += b
    if n == 0:
        raise ValueError("evaluate: data yielded no batches; pass a non-empty DataLoader or list of (x, y)")
    accuracy = float(correct_sum) / n if classification else math.nan
    return EvalResult(loss=float(loss_sum) / n, accuracy=accuracy, n=n)


# --------------------------------------------------------------------------- helpers


def resolve_device(state: Mapping[str, Tensor], device: torch.device | str | None) -> torch.device:
    """``device`` if given, else the device of the first tensor of ``state`` (CPU if none)."""
    if device is not None:
        return torch.device(device)
    for value in state.values():
        if isinstance(value, Tensor):
            return value.device
    return torch.device("cpu")


def prepare_state(
    model: nn.Module, state: Mapping[str, Tensor], device: torch.device, *, fn: str
) -> StateDict:
    """Validate ``state`` against ``model`` and return a full tensor dict on ``device``.

    The result holds every entry of ``state`` (moved to ``device``, not copied when already
    there) plus the model's non-persistent buffers, which a state dict does not carry.

    Raises:
        ValueError: missing or unexpected keys, or a shape that differs from the model's.
    """
    expected = model.state_dict(keep_vars=True)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {short_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {short_keys(unexpected)}")
        raise ValueError(
            f"{fn}: the state dict does not fit {type(model).__name__}: {'; '.join(parts)}; "
            "check that the model spec matches the checkpoint"
        )
    out: StateDict = {}
    for key, ref in expected.items():
        value = state[key]
        if not isinstance(value, Tensor):
            raise TypeError(f"{fn}: {key!r} is a {type(value).__name__}, expected a torch.Tensor")
        if ref.device.type != "meta" and tuple(value.shape) != tuple(ref.shape):
            raise ValueError(
                f"{fn}: {key!r} has shape {tuple(value.shape)} in the state dict; "
                f"the model expects {tuple(ref.shape)}"
            )
        out[key] = value.to(device)
    for name, buf in model.named_buffers():
        if name not in out and buf is not None:
            out[name] = buf.to(device)
    return out


def call(model: nn.Module, full_state: Mapping[str, Tensor], x: Any) -> Tensor:
    """``model(x)`` with the weights of ``full_state``; a tuple/list ``x`` is unpacked.

    Each state-dict key is bound on its own (``tie_weights=False``): tied parameters take the
    values their keys hold, which interpolation keeps equal when the inputs' are.
    """
    args = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    return functional_call(model, dict(full_state), args, tie_weights=False)


def check_reiterable(data: Iterable[Any], fn: str) -> None:
    """Raise ``TypeError`` if ``data`` is a one-shot iterator (it must be read several times)."""
    if isinstance(data, Iterator):
        raise TypeError(
            f"{fn}: data is a one-shot iterator ({type(data).__name__}) but is read several "
            "times; pass a DataLoader or a list of (x, y) batches"
        )


def iter_batches(
    data: Iterable[Any], device: torch.device, *, num_batches: int | None, fn: str
) -> Iterator[tuple[Any, Tensor]]:
    """Yield ``(x, y)`` batches moved to ``device``, at most ``num_batches`` of them."""
    if num_batches is not None and num_batches < 1:
        raise ValueError(f"{fn}: num_batches must be a positive integer or None, got {num_batches!r}")
    it: Iterable[Any] = data if num_batches is None else islice(data, num_batches)
    for i, batch in enumerate(it):
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise TypeError(
                f"{fn}: batch {i} is a {type(batch).__name__}"
                f"{f' of length {len(batch)}' if isinstance(batch, (tuple, list)) else ''}; "
                "expected an (x, y) pair"
            )
        x, y = batch
        yield _to(x, device), _to(y, device)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module in eval mode; restore each module's own mode on exit."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def batchnorm_train_mode(model: nn.Module) -> Iterator[list[tuple[str, nn.Module]]]:
    """Eval mode everywhere except BatchNorm layers, which train with ``momentum=None``.

    ``momentum=None`` makes the running statistics a cumulative (equal-weight) average over
    batches. Modes and momenta are restored on exit. Yields the ``(name, module)`` list of
    BatchNorm layers that track running statistics.
    """
    bns = batchnorm_layers(model)
    momenta = [(m, m.momentum) for _, m in bns]
    with eval_mode(model):
        try:
            for _, m in bns:
                m.train()
                m.momentum = None
            yield bns
        finally:
            for m, momentum in momenta:
                m.momentum = momentum


def batchnorm_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every BatchNorm layer that tracks running statistics."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, (tuple, list)):
        return type(x)(_to(v, device) for v in x)
    return x


def _batch_size(y: Tensor) -> int:
    return int(y.shape[0]) if y.ndim > 0 else 1


def _correct(out: Tensor, y: Tensor) -> Tensor | None:
    """Number of correctly classified examples (a 0-d tensor), or None if not classification.

    For dense targets (e.g. segmentation) an example counts by its fraction of correct
    positions.
    """
    if out.ndim < 2 or out.shape[1] < 2:
        return None
    if not y.is_floating_point() and not y.is_complex() and y.dtype != torch.bool:
        if tuple(y.shape) != (out.shape[0], *out.shape[2:]):
            return None
        hits = out.argmax(dim=1) == y
    elif y.is_floating_point() and y.shape == out.shape:
        hits = out.argmax(dim=1) == y.argmax(dim=1)
    else:
        return None
    return hits.reshape(hits.shape[0], -1).to(torch.float64).mean(dim=1).sum()


def short_keys(keys: list[str], limit: int = 5) -> str:
    """``['a', 'b' and 3 more]``: a short listing of keys for error messages."""
    shown = ", ".join(repr(k) for k in keys[:limit])
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"[{shown}{more}]"
