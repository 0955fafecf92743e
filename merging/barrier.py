"""Loss and accuracy along the linear path between two networks, and the barrier on it."""

from __future__ import annotations

import bisect
import math
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from merging._atomic import atomic_write
from merging._eval import LossFn, batchnorm_layers, check_reiterable, evaluate, prepare_state, resolve_device
from merging.interpolate import interpolate, path_ts
from merging.repair import _apply_repair, _repair_plan, reset_batchnorm

__all__ = ["BarrierResult", "barrier", "plot_barrier"]


@dataclass(frozen=True)
class BarrierResult:
    r"""Loss and accuracy at points ``t`` of the path :math:`(1-t)\theta_A + t\theta_B`.

    Both barrier definitions in common use are reported, for loss and for accuracy; with
    :math:`L_A = L(0)`, :math:`L_B = L(1)`:

    - *mean* (Frankle et al. 2020; Ainsworth et al., Git Re-Basin):
      :math:`\max_t L(t) - \tfrac12 (L_A + L_B)`;
    - *linear* (Entezari et al. 2022):
      :math:`\max_t \,[L(t) - ((1-t) L_A + t L_B)]`.

    Accuracy barriers are drops, reported as positive numbers:
    :math:`\tfrac12 (a_A + a_B) - \min_t a(t)` and
    :math:`\max_t \,[(1-t) a_A + t a_B - a(t)]`. With the endpoints on the grid both
    definitions are ``>= 0``, they are equal when the endpoint values are equal, and they
    differ by at most half the gap between the endpoint values.

    Attributes:
        ts (tuple[float, ...]): the points, strictly increasing; the first and last are the
            endpoints A and B (``0.0`` and ``1.0`` from :func:`barrier`).
        losses (tuple[float, ...]): mean loss per example at each point.
        accuracies (tuple[float, ...]): accuracy at each point (``nan`` if not classification).
        correction (str): what was done at interior points: ``"none"``, ``"reset_bn"`` or
            ``"repair"``.
    """

    ts: tuple[float, ...]
    losses: tuple[float, ...]
    accuracies: tuple[float, ...]
    correction: str = "none"

    def __post_init__(self) -> None:
        object.__setattr__(self, "ts", tuple(float(t) for t in self.ts))
        object.__setattr__(self, "losses", tuple(float(v) for v in self.losses))
        object.__setattr__(self, "accuracies", tuple(float(v) for v in self.accuracies))
        n = len(self.ts)
        if n < 2 or len(self.losses) != n or len(self.accuracies) != n:
            raise ValueError(
                f"BarrierResult: ts, losses and accuracies need one equal length >= 2, got "
                f"{n}, {len(self.losses)} and {len(self.accuracies)}"
            )
        if any(b <= a for a, b in zip(self.ts, self.ts[1:])):
            raise ValueError("BarrierResult: ts must be strictly increasing")

    # ---- loss
    @property
    def loss_barrier(self) -> float:
        """Loss barrier, mean definition: ``max_t L(t) - (L(0) + L(1)) / 2``."""
        return _nanmax(self.losses) - 0.5 * (self.losses[0] + self.losses[-1])

    @property
    def loss_barrier_linear(self) -> float:
        """Loss barrier, linear definition: ``max_t [L(t) - ((1-t) L(0) + t L(1))]``."""
        line = self._line(self.losses)
        return _nanmax([v - l for v, l in zip(self.losses, line)])

    @property
    def midpoint_loss(self) -> float:
        """Loss at ``t = 0.5`` (linearly interpolated between the two nearest points if absent)."""
        return self._at(self.losses, 0.5)

    # ---- accuracy
    @property
    def accuracy_barrier(self) -> float:
        """Accuracy drop, mean definition: ``(a(0) + a(1)) / 2 - min_t a(t)``."""
        return 0.5 * (self.accuracies[0] + self.accuracies[-1]) - _nanmin(self.accuracies)

    @property
    def accuracy_barrier_linear(self) -> float:
        """Accuracy drop, linear definition: ``max_t [(1-t) a(0) + t a(1) - a(t)]``."""
        line = self._line(self.accuracies)
        return _nanmax([l - v for v, l in zip(self.accuracies, line)])

    @property
    def midpoint_accuracy(self) -> float:
        """Accuracy at ``t = 0.5`` (linearly interpolated between the two nearest points if absent)."""
        return self._at(self.accuracies, 0.5)

    # ---- perplexity (language models: the loss is the mean next-token cross-entropy in nats)
    @property
    def perplexities(self) -> tuple[float, ...]:
        """``exp(L(t))`` at each point: the perplexity when the loss is a mean cross-entropy per token."""
        return tuple(_exp(v) for v in self.losses)

    @property
    def perplexity_barrier(self) -> float:
        """Perplexity barrier, mean definition: ``max_t exp(L(t)) - (exp(L(0)) + exp(L(1))) / 2``."""
        ppl = self.perplexities
        return _nanmax(ppl) - 0.5 * (ppl[0] + ppl[-1])

    @property
    def midpoint_perplexity(self) -> float:
        """``exp`` of the loss at ``t = 0.5``."""
        return _exp(self.midpoint_loss)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the curves and every summary number (non-finite values become ``None``)."""
        return {
            "correction": self.correction,
            "ts": list(self.ts),
            "losses": [_json(v) for v in self.losses],
            "accuracies": [_json(v) for v in self.accuracies],
            "loss_barrier": _json(self.loss_barrier),
            "loss_barrier_linear": _json(self.loss_barrier_linear),
            "accuracy_barrier": _json(self.accuracy_barrier),
            "accuracy_barrier_linear": _json(self.accuracy_barrier_linear),
            "midpoint_loss": _json(self.midpoint_loss),
            "midpoint_accuracy": _json(self.midpoint_accuracy),
            "endpoint_losses": [_json(self.losses[0]), _json(self.losses[-1])],
            "endpoint_accuracies": [_json(self.accuracies[0]), _json(self.accuracies[-1])],
            "perplexity_barrier": _json(self.perplexity_barrier),
            "midpoint_perplexity": _json(self.midpoint_perplexity),
            "endpoint_perplexities": [_json(self.perplexities[0]), _json(self.perplexities[-1])],
        }

    def _line(self, values: tuple[float, ...]) -> list[float]:
        t0, t1 = self.ts[0], self.ts[-1]
        v0, v1 = values[0], values[-1]
        return [v0 + (t - t0) / (t1 - t0) * (v1 - v0) for t in self.ts]

    def _at(self, values: tuple[float, ...], t: float) -> float:
        i = bisect.bisect_left(self.ts, t)
        if i < len(self.ts) and self.ts[i] == t:
            return values[i]
        if i == 0 or i == len(self.ts):
            return math.nan
        t0, t1 = self.ts[i - 1], self.ts[i]
        w = (t - t0) / (t1 - t0)
        return (1.0 - w) * values[i - 1] + w * values[i]


def barrier(
    model: nn.Module,
    state_a: Mapping[str, Tensor],
    state_b: Mapping[str, Tensor],
    data: Iterable[Any],
    *,
    steps: int = 25,
    reset_bn_data: Iterable[Any] | None = None,
    repair_data: Iterable[Any] | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    loss_fn: LossFn = F.cross_entropy,
    num_batches: int | None = None,
) -> BarrierResult:
    r"""Evaluate loss and accuracy along :math:`(1-t)\theta_A + t\theta_B`.

    ``state_b`` should already be aligned to ``state_a`` (e.g. by weight matching); this
    function only walks the straight line. At each interior point the BatchNorm statistics
    can be reset (:func:`merging.reset_batchnorm`) or REPAIR applied (:func:`merging.repair`
    with ``alpha = t``; the endpoint statistics are measured once). The endpoints are
    evaluated as given.

    Args:
        model (nn.Module): the architecture (its own weights are ignored; left unchanged).
        state_a (Mapping[str, Tensor]): the state at ``t = 0``.
        state_b (Mapping[str, Tensor]): the state at ``t = 1``.
        data (Iterable): batches ``(x, y)`` to evaluate on; read once per point, so a
            ``DataLoader`` or a list.
        steps (int, optional): number of evenly spaced points in [0, 1], ``>= 2``.
            (default: ``25``)
        reset_bn_data (Iterable, optional): batches to recompute BatchNorm statistics from.
        repair_data (Iterable, optional): batches to measure REPAIR statistics on.
        device (torch.device or str, optional): where to run; default the device of
            ``state_a``.
        progress (bool, optional): show a progress bar on stderr. (default: ``True``)
        loss_fn (callable, optional): ``loss_fn(output, y)``, the mean loss over a batch.
            (default: :func:`torch.nn.functional.cross_entropy`)
        num_batches (int, optional): batches of ``reset_bn_data`` / ``repair_data`` to use
            (default all).

    Returns:
        BarrierResult: the curves, both barrier definitions, midpoint values.

    Raises:
        ValueError: the states do not fit ``model`` or each other, ``steps < 2``, or both
            ``reset_bn_data`` and ``repair_data`` are given.
        TypeError: ``data`` (or a correction's data) is a one-shot iterator.
    """
    ts = path_ts(steps, fn="barrier")
    if reset_bn_data is not None and repair_data is not None:
        raise ValueError(
            "barrier: pass reset_bn_data or repair_data, not both (for a BatchNorm network REPAIR "
            "is the BatchNorm reset)"
        )
    check_reiterable(data, "barrier")
    if reset_bn_data is not None:
        check_reiterable(reset_bn_data, "barrier")
    if repair_data is not None:
        check_reiterable(repair_data, "barrier")
    dev = resolve_device(state_a, device)
    # Validate everything before the first (possibly long) evaluation.
    prepare_state(model, state_a, dev, fn="barrier")
    prepare_state(model, state_b, dev, fn="barrier")
    a = {k: v.to(dev) for k, v in state_a.items()}
    b = {k: v.to(dev) for k, v in state_b.items()}
    interpolate(a, b, 0.0)  # key/shape check with interpolate's message

    correction = "none"
    plan = None
    if reset_bn_data is not None:
        correction = "reset_bn"
    elif repair_data is not None:
        correction = "repair"
        if batchnorm_layers(model):  # REPAIR of a BatchNorm network is the BatchNorm reset
            reset_bn_data, repair_data, correction = repair_data, None, "reset_bn"
        else:
            plan = _repair_plan(model, a, b, repair_data, device=dev, num_batches=num_batches)

    losses: list[float] = []
    accuracies: list[float] = []
    for t in tqdm(ts, desc="barrier", unit="pt", file=sys.stderr, disable=not progress, leave=False):
        state = interpolate(a, b, t)
        if 0.0 < t < 1.0:
            if reset_bn_data is not None:
                state = reset_batchnorm(model, state, reset_bn_data, num_batches=num_batches, device=dev)
            elif plan is not None and repair_data is not None:
                state = _apply_repair(
                    model, plan, state, repair_data, alpha=t, device=dev, num_batches=num_batches, eps=1e-10
                )
        result = evaluate(model, state, data, device=dev, loss_fn=loss_fn)
        losses.append(result.loss)
        accuracies.append(result.accuracy)
    return BarrierResult(ts=tuple(ts), losses=tuple(losses), accuracies=tuple(accuracies), correction=correction)


def _barrier_table(ax: Any, results: Mapping[str, BarrierResult]) -> None:
    """The barriers of every curve as a table on ``ax`` (mean definitions; accuracy in points)."""
    def num(v: float, fmt: str) -> str:
        return format(v, fmt) if math.isfinite(v) else "n/a"

    ax.axis("off")
    cells = [[label, num(r.loss_barrier, ".3f"), num(100.0 * r.accuracy_barrier, ".1f"),
              num(r.midpoint_loss, ".3f"), num(100.0 * r.midpoint_accuracy, ".1f")] for label, r in results.items()]
    table = ax.table(cellText=cells, colLabels=["path", "loss barrier", "accuracy drop (pts)", "midpoint loss",
                                                "midpoint accuracy (%)"], loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(9)


def plot_barrier(
    results: Mapping[str, BarrierResult], path: str | os.PathLike[str], *, title: str | None = None
) -> Path:
    """Plot loss and accuracy against ``t``, one curve per label, and below them the table of
    barriers (loss barrier, accuracy drop, midpoint accuracy per label), into one PNG.

    The file is written atomically: rendered to a temporary file in the same directory, then
    moved over ``path`` with :func:`os.replace`. Uses matplotlib's Agg canvas directly, so
    no global backend is changed.

    Args:
        results (Mapping[str, BarrierResult]): label (e.g. ``"naive"``, ``"weight matching"``)
            to result.
        path (str or PathLike): the PNG to write; its directory must exist.
        title (str, optional): a figure title.

    Returns:
        Path: ``path``.

    Raises:
        ValueError: ``results`` is empty or the directory of ``path`` does not exist.
        TypeError: a value is not a :class:`BarrierResult`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not results:
        raise ValueError("plot_barrier: results is empty; pass {label: BarrierResult}")
    for label, res in results.items():
        if not isinstance(res, BarrierResult):
            raise TypeError(f"plot_barrier: results[{label!r}] is a {type(res).__name__}, expected a BarrierResult")
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise ValueError(f"plot_barrier: directory '{directory}' of {str(path)!r} does not exist; create it first")

    rows = len(results)
    fig = Figure(figsize=(10, 4.4 + 0.3 * (rows + 1)), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 2, height_ratios=[4.0, 0.4 + 0.3 * (rows + 1)])
    ax_loss, ax_acc = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
    _barrier_table(fig.add_subplot(grid[1, :]), results)
    for label, res in results.items():
        ax_loss.plot(res.ts, res.losses, marker=".", label=label)
        ax_acc.plot(res.ts, [100.0 * v for v in res.accuracies], marker=".", label=label)
    ax_loss.set(xlabel="t", ylabel="loss", title="loss")
    ax_acc.set(xlabel="t", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.set_xlim(0.0, 1.0)
        ax.grid(True, alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)

    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    return path


def _nanmax(values: Iterable[float]) -> float:
    vals = list(values)
    return math.nan if any(math.isnan(v) for v in vals) else max(vals)


def _nanmin(values: Iterable[float]) -> float:
    vals = list(values)
    return math.nan if any(math.isnan(v) for v in vals) else min(vals)


def _json(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _exp(v: float) -> float:
    if math.isnan(v):
        return math.nan
    return math.exp(v) if v < 700 else math.inf
