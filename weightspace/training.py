"""Small, dependable training loops: enough to make checkpoints for demos, tests and examples.

Not a training framework: one classifier, one optimizer, a fixed number of epochs.
"""
from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

__all__ = ["train_classifier", "train_one_cycle", "logits_of"]

_OPTIMIZERS = ("sgd", "adam")


def logits_of(output: Any) -> Tensor:
    """The logits of a model's output, the class axis second as torch's losses expect.

    A tensor passes through; an output object gives its ``logits`` (a transformers
    ``ModelOutput``), a tuple its first element; a language model's ``(B, T, V)`` becomes
    ``(B, V, T)``, so next-token targets ``(B, T)`` fit :func:`torch.nn.functional.cross_entropy`.
    """
    if not isinstance(output, Tensor):
        logits = getattr(output, "logits", None)
        output = logits if isinstance(logits, Tensor) else output[0] if isinstance(output, (tuple, list)) else output
    if not isinstance(output, Tensor):
        raise TypeError(f"expected the model to return logits (a tensor), got {type(output).__name__}")
    return output.transpose(1, 2) if output.ndim == 3 else output


def train_classifier(
    model: nn.Module,
    data: str | Iterable[tuple[Tensor, Tensor]],
    *,
    epochs: int = 10,
    lr: float = 0.1,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    optimizer: str = "sgd",
    batch_size: int = 64,
    weight_decay: float = 0.0,
    warmup: int = 0,
) -> list[float]:
    r"""Train ``model`` in place with cross-entropy; return the mean training loss of each epoch.

    SGD uses momentum 0.9 and Nesterov steps; both optimizers follow a cosine learning-rate
    schedule from ``lr`` to zero over all steps, which makes short runs land in a stable basin.

    Args:
        model (nn.Module): the classifier (outputs logits ``(B, K)``); trained in place and
            left in eval mode on ``device``.
        data (str or Iterable): a dataset spec (``"digits"``, see :func:`weightspace.data.load_data`;
            its train split is shuffled with ``seed`` every epoch) or re-iterable ``(x, y)``
            batches (used in their own order).
        epochs (int, optional): passes over the data. (default: ``10``)
        lr (float, optional): peak learning rate. (default: ``0.1``)
        seed (int, optional): seeds the shuffling of a dataset spec. The weights' initialisation
            is the caller's (build the model under :func:`torch.manual_seed`). (default: ``0``)
        device (str or torch.device, optional): where to train. (default: ``"cpu"``)
        progress (bool, optional): show a progress bar on stderr. (default: ``True``)
        optimizer (str, optional): ``"sgd"`` or ``"adam"``. (default: ``"sgd"``)
        batch_size (int, optional): examples per batch for a dataset spec. (default: ``64``)
        weight_decay (float, optional): L2 penalty. (default: ``0.0``)
        warmup (int, optional): steps over which the learning rate rises linearly from
            ``lr / warmup`` to ``lr`` before the cosine decay (transformers train stably with a few
            hundred). (default: ``0``)

    Shapes:
        x: ``(B, *input_shape)``; y: ``(B,)`` class indices; output: ``(B, K)``. A language model
        (a transformers ``*ForCausalLM``, see :func:`logits_of`) trains on next-token data such as
        ``"python-stdlib"``: x and y ``(B, T)`` token ids, output ``(B, T, V)``.

    Returns:
        list[float]: mean training loss per epoch.

    Raises:
        ValueError: ``epochs`` or ``lr`` out of range, unknown ``optimizer``, empty data, or a
            loss that stops being finite (learning rate too high).

    Example:
        >>> from weightspace.models import MLP
        >>> model = MLP(64, (32,), 10)
        >>> losses = train_classifier(model, "digits", epochs=2, progress=False)  # doctest: +SKIP
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"train_classifier: epochs must be a positive integer, got {epochs!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"train_classifier: lr must be a positive number, got {lr!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"train_classifier: warmup must be a non-negative integer, got {warmup!r}")
    if optimizer not in _OPTIMIZERS:
        raise ValueError(f"train_classifier: unknown optimizer {optimizer!r}; choose one of: {', '.join(_OPTIMIZERS)}")
    if isinstance(data, str):
        from weightspace.data import load_data

        batches: Iterable[Any] = load_data(data, split="train", batch_size=batch_size, shuffle=True, seed=seed)
    else:
        batches = data
    dev = torch.device(device)
    model.to(dev).train()
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True,
                                                     weight_decay=weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    try:
        steps_per_epoch = len(batches)  # type: ignore[arg-type]
    except TypeError:
        steps_per_epoch = None
    total = steps_per_epoch * epochs if steps_per_epoch else None
    def factor(step: int) -> float:
        rise = min(1.0, (step + 1) / warmup) if warmup else 1.0
        return rise * (0.5 * (1 + math.cos(math.pi * min(step / total, 1.0))) if total else 1.0)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    history: list[float] = []
    bar = tqdm(total=total, desc="train", unit="step", file=sys.stderr, disable=not progress, leave=False)
    try:
        for epoch in range(epochs):
            loss_sum, n = 0.0, 0
            for x, y in batches:
                x, y = x.to(dev), y.to(dev)
                loss = F.cross_entropy(logits_of(model(x)), y)
                if not torch.isfinite(loss):
                    raise ValueError(f"train_classifier: the loss became {float(loss.detach())} in epoch {epoch + 1}; "
                                     f"lower lr (now {lr})")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                loss_sum += float(loss.detach()) * len(y)
                n += len(y)
                bar.update(1)
            if n == 0:
                raise ValueError("train_classifier: the data yielded no batches")
            history.append(loss_sum / n)
            bar.set_postfix(epoch=epoch + 1, loss=f"{history[-1]:.3f}")
    finally:
        bar.close()
        model.eval()
    return history


def train_one_cycle(model: nn.Module, data: Any, *, epochs: int, lr: float, seed: int, batch_size: int = 128,
                    weight_decay: float = 5e-4) -> dict[str, Tensor]:
    """The recipe of the width and Git Re-Basin benchmarks: ``model`` re-initialised from ``seed``
    (every submodule's ``reset_parameters``), SGD with Nesterov momentum 0.9 and weight decay, a
    one-cycle learning rate peaking at ``lr`` a quarter of the way in, batches of a
    :class:`weightspace.data.Dataset` shuffled with ``seed``. Deterministic on one thread.

    Returns:
        dict[str, Tensor]: the trained state dict (copies); the model is left trained, in eval mode.
    """
    torch.manual_seed(seed)
    for m in model.modules():
        if hasattr(m, "reset_parameters") and m is not model:
            m.reset_parameters()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    steps = epochs * ((len(data) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.25)
    for _ in range(epochs):
        for x, y in data.loader(batch_size, shuffle=True, seed=seed):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
    model.eval()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
