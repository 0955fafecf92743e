"""Fix the activation statistics of merged networks: BatchNorm reset and REPAIR."""

from __future__ import annotations

import warnings

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from merging._eval import (
    StateDict,
    batchnorm_layers,
    batchnorm_train_mode,
    call,
    check_reiterable,
    eval_mode,
    iter_batches,
    prepare_state,
    resolve_device,
)

__all__ = ["reset_batchnorm", "repair"]


def reset_batchnorm(
    model: nn.Module,
    state: Mapping[str, Tensor],
    data: Iterable[Any],
    *,
    num_batches: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> dict[str, Tensor]:
    """Recompute BatchNorm running statistics of ``state`` from ``data``.

    Interpolated weights make the stored running statistics wrong; resetting them (the
    "RESET" baseline of REPAIR, arXiv 2211.08403) restores much of the lost accuracy. Each
    BatchNorm layer runs in train mode with ``momentum=None`` (a cumulative average over
    batches of the batch means and unbiased batch variances); every other module is in eval
    mode, and no gradients are taken. The model's modes and momenta are restored afterwards,
    and neither ``state`` nor the model is mutated.

    Args:
        model (nn.Module): the architecture (its own weights are ignored).
        state (Mapping[str, Tensor]): a complete state dict for ``model``.
        data (Iterable): batches ``(x, y)``; ``y`` is ignored.
        num_batches (int, optional): use only the first ``num_batches`` batches (default all).
        device (torch.device or str, optional): where to run; default the device of ``state``.
        progress (bool, optional): a progress bar over the batches on stderr. (default: ``False``)

    Shapes:
        ``running_mean``, ``running_var``: (C,) per BatchNorm layer; ``num_batches_tracked``
        becomes the number of batches used.

    Returns:
        dict[str, Tensor]: a new state dict; the BatchNorm statistics are new tensors on the
        device of the entries they replace, all other entries are the input tensors (shared,
        not copied). Without BatchNorm layers, a shallow copy of ``state``.

    Raises:
        ValueError: ``state`` does not fit ``model`` or ``data`` yields no batches.
    """
    dev = resolve_device(state, device)
    full = prepare_state(model, state, dev, fn="reset_batchnorm")
    bns = batchnorm_layers(model)
    out = dict(state)
    if not bns:
        return out
    keys: list[str] = []
    for name, _ in bns:
        prefix = f"{name}." if name else ""
        mean_key, var_key, count_key = (prefix + s for s in ("running_mean", "running_var", "num_batches_tracked"))
        # Fresh tensors: BatchNorm updates its buffers in place, and these must not alias `state`.
        full[mean_key] = torch.zeros_like(full[mean_key])
        full[var_key] = torch.ones_like(full[var_key])
        full[count_key] = torch.zeros_like(full[count_key])
        keys += [mean_key, var_key, count_key]
    seen = 0
    with batchnorm_train_mode(model), torch.no_grad(), \
            _bar("BatchNorm reset", "batch", num_batches, progress) as bar:
        for x, _ in iter_batches(data, dev, num_batches=num_batches, fn="reset_batchnorm"):
            call(model, full, x)
            seen += 1
            bar.update(1)
    if seen == 0:
        raise ValueError("reset_batchnorm: data yielded no batches; pass a non-empty DataLoader or list of (x, y)")
    for key in keys:
        out[key] = full[key].to(state[key].device)
    return out


def repair(
    model: nn.Module,
    state_a: Mapping[str, Tensor],
    state_b: Mapping[str, Tensor],
    state_merged: Mapping[str, Tensor],
    data: Iterable[Any],
    *,
    alpha: float = 0.5,
    num_batches: int | None = None,
    device: torch.device | str | None = None,
    eps: float = 1e-10,
    progress: bool = False,
) -> dict[str, Tensor]:
    r"""REPAIR: rescale the merged network's channels to the interpolated statistics.

    From "REPAIR: REnormalizing Permuted Activations for Interpolation Repair"
    (Jordan et al., https://arxiv.org/abs/2211.08403). For every ``nn.Linear`` and
    (non-transposed) ``nn.Conv*d`` layer except the output layer (the last one to run in
    a forward pass), the per-channel mean :math:`\mu` and standard deviation
    :math:`\sigma` of the layer's output (pre-activation) are measured in A, B and the
    merged network, and the merged layer is rescaled so its statistics hit

    .. math::
        \mu_* = (1-\alpha)\mu_A + \alpha\mu_B, \qquad
        \sigma_* = (1-\alpha)\sigma_A + \alpha\sigma_B,

    .. math::
        W' = W \cdot \sigma_* / \sigma_M, \qquad
        b' = (b - \mu_M)\, \sigma_* / \sigma_M + \mu_*

    (per output channel). Layers are corrected in forward order and the merged network's
    statistics of layer :math:`k` are measured after layers :math:`< k` are corrected.
    Statistics are population moments over all positions (batch and spatial), accumulated
    in float64. A channel whose merged variance is ``<= eps`` (dead) is only shifted.

    .. note::
        For a network with BatchNorm layers the BatchNorm layers already normalise each
        channel, and REPAIR reduces to resetting their running statistics; ``repair`` then
        returns :func:`reset_batchnorm` of ``state_merged`` (``state_a``, ``state_b`` and
        ``alpha`` are not used).

    Args:
        model (nn.Module): the architecture (its own weights are ignored; left unchanged).
        state_a (Mapping[str, Tensor]): endpoint A.
        state_b (Mapping[str, Tensor]): endpoint B, aligned to A.
        state_merged (Mapping[str, Tensor]): the merged state, e.g.
            ``interpolate(state_a, state_b, alpha)``.
        data (Iterable): re-iterable batches ``(x, y)`` (a ``DataLoader`` or a list); ``y``
            is ignored.
        alpha (float, optional): weight of B in the targets. (default: ``0.5``)
        num_batches (int, optional): use only the first ``num_batches`` batches (default all).
        device (torch.device or str, optional): where to run; default the device of
            ``state_merged``.
        eps (float, optional): variance below which a channel is treated as dead.
            (default: ``1e-10``)
        progress (bool, optional): a progress bar on stderr over the passes through ``data``
            (A, B, then one per repaired layer). (default: ``False``)

    Shapes:
        statistics: (C,) per layer, ``C`` = output features (Linear, last axis of the output)
        or output channels (Conv, axis 1).

    Returns:
        dict[str, Tensor]: a new state dict; repaired weights and biases are new tensors on
        the device of the entries they replace, other entries are shared with
        ``state_merged``.

    Raises:
        ValueError: a state does not fit ``model``, a repaired layer has no bias, a layer
            runs more than once per forward pass, or ``data`` yields no batches.
        TypeError: ``data`` is a one-shot iterator.
    """
    if batchnorm_layers(model):
        return reset_batchnorm(model, state_merged, data, num_batches=num_batches, device=device, progress=progress)
    check_reiterable(data, "repair")
    dev = resolve_device(state_merged, device)
    with _bar("REPAIR", "pass", None, progress) as bar:
        plan = _repair_plan(model, state_a, state_b, data, device=dev, num_batches=num_batches, bar=bar)
        return _apply_repair(model, plan, state_merged, data, alpha=alpha, device=dev, num_batches=num_batches,
                             eps=eps, bar=bar)


# --------------------------------------------------------------------------- internals


class _Stop(Exception):
    """Raised from a forward hook to end a forward pass early."""


@dataclass(frozen=True)
class _Moments:
    mean: Tensor  # (C,) float64
    var: Tensor  # (C,) float64, population variance

    @property
    def std(self) -> Tensor:
        return self.var.clamp_min(0).sqrt()


@dataclass(frozen=True)
class _RepairPlan:
    """Everything REPAIR needs that does not depend on the merged state (reused by ``barrier``)."""

    layers: list[str]  # repaired layers in forward order (output layer excluded)
    stats_a: dict[str, _Moments]
    stats_b: dict[str, _Moments]


class _Accumulator:
    """Per-channel mean and population variance over batches (Chan et al. pairwise update, float64)."""

    def __init__(self, channel_axis: int) -> None:
        self.axis = channel_axis
        self.n = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def update(self, out: Tensor) -> None:
        x = out.detach().movedim(self.axis, -1)
        x = x.reshape(-1, x.shape[-1]).to(torch.float64)
        nb = x.shape[0]
        if nb == 0:
            return
        mb = x.mean(dim=0)
        m2b = (x - mb).square().sum(dim=0)
        if self.mean is None or self.m2 is None:
            self.n, self.mean, self.m2 = nb, mb, m2b
            return
        total = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / total)
        self.m2 = self.m2 + m2b + delta.square() * (self.n * nb / total)
        self.n = total

    def result(self) -> _Moments:
        if self.mean is None or self.m2 is None:
            raise ValueError("repair: data yielded no batches; pass a non-empty DataLoader or list of (x, y)")
        return _Moments(mean=self.mean, var=self.m2 / self.n)


def _is_repairable(m: nn.Module) -> bool:
    if isinstance(m, nn.Linear):
        return True
    return isinstance(m, nn.modules.conv._ConvNd) and not m.transposed


def _channel_axis(m: nn.Module) -> int:
    return -1 if isinstance(m, nn.Linear) else 1


def _forward_order(model: nn.Module, full: StateDict, data: Iterable[Any], device: torch.device) -> list[str]:
    """Names of Linear/Conv layers in the order they first run, from a dry run on one batch."""
    modules = {name: m for name, m in model.named_modules() if _is_repairable(m)}
    order: list[str] = []
    calls: dict[str, int] = {}

    def make_hook(name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            if calls[name] == 1:
                order.append(name)

        return hook

    handles = [m.register_forward_hook(make_hook(name)) for name, m in modules.items()]
    try:
        with eval_mode(model), torch.no_grad():
            batch = next(iter_batches(data, device, num_batches=1, fn="repair"), None)
            if batch is None:
                raise ValueError("repair: data yielded no batches; pass a non-empty DataLoader or list of (x, y)")
            call(model, full, batch[0])
    finally:
        for h in handles:
            h.remove()
    shared = sorted(name for name, c in calls.items() if c > 1)
    if shared:
        raise ValueError(
            f"repair: layer {shared[0]!r} runs {calls[shared[0]]} times per forward pass; "
            "REPAIR folds one correction into each layer and cannot handle shared layers"
        )
    return order


def _measure(
    model: nn.Module,
    full: StateDict,
    data: Iterable[Any],
    layers: list[str],
    *,
    device: torch.device,
    num_batches: int | None,
    stop_after: str | None = None,
) -> dict[str, _Moments]:
    """Per-channel output moments of ``layers`` over ``data``; the pass ends at ``stop_after``."""
    modules = dict(model.named_modules())
    accs = {name: _Accumulator(_channel_axis(modules[name])) for name in layers}

    def make_hook(name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            accs[name].update(output)
            if name == stop_after:
                raise _Stop

        return hook

    handles = [modules[name].register_forward_hook(make_hook(name)) for name in layers]
    try:
        with eval_mode(model), torch.no_grad():
            for x, _ in iter_batches(data, device, num_batches=num_batches, fn="repair"):
                try:
                    call(model, full, x)
                except _Stop:
                    pass
    finally:
        for h in handles:
            h.remove()
    return {name: acc.result() for name, acc in accs.items()}


def _repair_plan(
    model: nn.Module,
    state_a: Mapping[str, Tensor],
    state_b: Mapping[str, Tensor],
    data: Iterable[Any],
    *,
    device: torch.device,
    num_batches: int | None,
    bar: Any = None,
) -> _RepairPlan:
    """Find the layers to repair and measure the endpoints' statistics (once per pair A, B)."""
    full_a = prepare_state(model, state_a, device, fn="repair")
    full_b = prepare_state(model, state_b, device, fn="repair")
    order = _forward_order(model, full_a, data, device)
    if not order:
        raise ValueError(
            f"repair: {type(model).__name__} runs no nn.Linear or nn.Conv*d layer; nothing to repair"
        )
    layers = order[:-1]
    modules = dict(model.named_modules())
    for name in layers:
        if modules[name].bias is None:
            raise ValueError(
                f"repair: layer {name!r} ({type(modules[name]).__name__}) has no bias, so its channel "
                "means cannot be shifted; build it with bias=True, or add BatchNorm and use reset_batchnorm"
            )
    if not layers:
        warnings.warn(f"repair: {type(model).__name__} runs no nn.Linear or nn.Conv*d layer before its output "
                      f"layer ({order[-1]!r}); nothing was corrected", stacklevel=3)
        return _RepairPlan(layers=[], stats_a={}, stats_b={})
    if bar is not None:
        bar.total = 2 + len(layers)
        bar.refresh()
    stats_a = _measure(model, full_a, data, layers, device=device, num_batches=num_batches)
    _tick(bar)
    stats_b = _measure(model, full_b, data, layers, device=device, num_batches=num_batches)
    _tick(bar)
    return _RepairPlan(layers=layers, stats_a=stats_a, stats_b=stats_b)


def _apply_repair(
    model: nn.Module,
    plan: _RepairPlan,
    state_merged: Mapping[str, Tensor],
    data: Iterable[Any],
    *,
    alpha: float,
    device: torch.device,
    num_batches: int | None,
    eps: float,
    bar: Any = None,
) -> dict[str, Tensor]:
    """Correct ``state_merged`` layer by layer towards the interpolated endpoint statistics."""
    full = prepare_state(model, state_merged, device, fn="repair")
    out = dict(state_merged)
    alpha = float(alpha)
    for name in plan.layers:
        merged = _measure(model, full, data, [name], device=device, num_batches=num_batches, stop_after=name)[name]
        sa, sb = plan.stats_a[name], plan.stats_b[name]
        mean_t = (1.0 - alpha) * sa.mean + alpha * sb.mean
        std_t = (1.0 - alpha) * sa.std + alpha * sb.std
        alive = merged.var > eps
        scale = torch.where(alive, std_t / merged.std.clamp_min(eps**0.5), torch.ones_like(std_t))
        w_key, b_key = f"{name}.weight", f"{name}.bias"
        w, b = full[w_key], full[b_key]
        new_w = (w.to(torch.float64) * scale.reshape(-1, *([1] * (w.ndim - 1)))).to(w.dtype)
        new_b = ((b.to(torch.float64) - merged.mean) * scale + mean_t).to(b.dtype)
        full[w_key], full[b_key] = new_w, new_b
        out[w_key] = new_w.to(state_merged[w_key].device)
        out[b_key] = new_b.to(state_merged[b_key].device)
        _tick(bar)
    return out


def _bar(desc: str, unit: str, total: int | None, enabled: bool) -> Any:
    """A progress bar on stderr (a no-op one when disabled)."""
    return tqdm(desc=desc, unit=unit, total=total, file=sys.stderr, disable=not enabled, leave=False)


def _tick(bar: Any) -> None:
    if bar is not None:
        bar.update(1)
