"""CNN zoos: small CNNs of the Small CNN Zoo's family, trained many at a time."""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from graphs.registry import Registry
from weightspace.data import Dataset, load_dataset
from weightspace.models import CNN
from weightspace.models.cnn import conv_padding

from ._batched import OPTIMIZERS, IndexStream, StackedOptimizer, _cnn_path, _use_kernels, cnn_forward, model_generator
from ._build import ZooBuildResult, build_in_workers, check_positive_int, check_range, resolve_device, run_build
from ._metrics import Row
from .zoo_card import BASE_COLUMNS, DEFAULT_SPLITS, ZooCard, read_card

__all__ = ["CNN_COLUMNS", "CNN_FAMILIES", "CNN_RECIPE", "ZOO_FAMILIES", "build_cnn_zoo", "list_zoo_families",
           "register_zoo_family", "resize_images", "sample_cnn_hparams", "evaluate_cnns", "prepare_cnn_task",
           "train_cnn_shard", "train_cnn_single"]

#: architecture families of ``weightspace zoo build cnn --family``: recipe overrides
ZOO_FAMILIES: Registry[dict[str, Any]] = Registry("family")


def register_zoo_family(name: str, *, description: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Register a recipe override (a dict of :data:`CNN_RECIPE` keys) as the cnn zoo family ``name``:
    ``register_zoo_family("wide", description="...")({"channels": [64, 64, 64]})``.

    Raises:
        ValueError: a malformed or already registered name.
    """
    return ZOO_FAMILIES.register(name, description=description, caller="register_zoo_family")


def list_zoo_families() -> list[str]:
    """The cnn zoo families' names (``--family``), the default first."""
    return ZOO_FAMILIES.names()


register_zoo_family("smallcnnzoo", description="the default: stride-2 convolutions, TensorFlow 'SAME' padding, "
                                               "no pooling, as in the Small CNN Zoo"
                    )({"stride": 2, "padding": "tf_same", "pool": None})
register_zoo_family("pooled", description="stride-1 convolutions each followed by 2x2 average pooling (this "
                                          "package's default before strides existed)"
                    )({"stride": 1, "padding": "symmetric", "pool": "avg"})

#: the built-in families' recipe overrides by name
CNN_FAMILIES: dict[str, dict[str, Any]] = {name: ZOO_FAMILIES.get(name) for name in list_zoo_families()}

#: the default recipe of ``weightspace zoo build cnn`` (every key can be overridden)
CNN_RECIPE: dict[str, Any] = {
    "channels": [16, 16, 16],
    "kernel_size": 3,
    "stride": 2,
    "padding": "tf_same",
    "pool": None,
    "activation": "relu",
    "optimizer": "adam",
    "batch_size": 32,
    "lr_range": [3e-4, 3e-2],
    "weight_decay_range": [1e-8, 1e-2],
    "init_std_range": [2e-2, 0.5],
    "dropout_range": [0.0, 0.5],
    "train_fraction_range": [0.1, 1.0],
    "train_eval_size": 2000,
}
_HP = ("seed", "lr", "weight_decay", "init_std", "dropout", "train_fraction", "n_train")
CNN_COLUMNS = (*BASE_COLUMNS, *_HP, "train_loss", "train_acc", "test_loss", "test_acc")
_CITE = ("Recipe after the Small CNN Zoo: T. Unterthiner, D. Keysers, S. Gelly, O. Bousquet, I. Tolstikhin, "
         "\"Predicting Neural Network Accuracy from Weights\", arXiv:2002.11448 (2020).")
_NOTES = (
    "hyper-parameters are drawn per model from (seed, model_id): lr, weight_decay and init_std "
    "log-uniform, dropout and train_fraction uniform, within the recipe's ranges",
    "the cnn family has no dropout layer: dropout acts on the pooled features before the head during "
    "training only, so every checkpoint loads and runs as a plain cnn",
    "width is fixed per zoo (recipe channels): one zoo is one architecture",
    "weights are initialised N(0, init_std^2), biases 0; the learning rate is constant, so checkpoint e is "
    "the model after e epochs (the number of epochs is the checkpoint axis)",
    "an epoch is floor(train_size / batch_size) steps of batch_size examples; each model walks through its "
    "own random subset (train_fraction of the training split) in a fresh order per pass",
    "train_loss / train_acc are evaluated at each checkpoint on the first train_eval_size examples of the "
    "training split; test_loss / test_acc on the whole test split",
)


_TF_SAME_NOTE = ("convolutions have TensorFlow's 'SAME' padding: ceil(size / stride) outputs, the odd padded "
                 "row / column at the bottom / right (cnn padding='tf_same'), as in the Small CNN Zoo")


def _built_before_strides(out: str | os.PathLike) -> bool:
    """Whether ``out`` holds a cnn zoo whose card predates strides (no ``stride`` in its recipe)."""
    try:
        card = read_card(out)
    except ValueError:
        return False
    return card.model.get("name") == "cnn" and "stride" not in card.recipe


def sample_cnn_hparams(seed: int, model_id: int, recipe: Mapping[str, Any], n_train: int) -> dict[str, Any]:
    """The hyper-parameters of one model, a pure function of ``(seed, model_id)`` and the recipe.

    Returns:
        dict: ``seed`` (the zoo seed), ``lr``, ``weight_decay``, ``init_std`` (log-uniform),
        ``dropout``, ``train_fraction`` (uniform) and ``n_train`` (examples the model sees).
    """
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(model_id), 0xC22])

    def log_uniform(r: Sequence[float]) -> float:
        return float(math.exp(rng.uniform(math.log(r[0]), math.log(r[1])))) if r[0] < r[1] else float(r[0])

    def uniform(r: Sequence[float]) -> float:
        return float(rng.uniform(r[0], r[1])) if r[0] < r[1] else float(r[0])

    hp = {"seed": int(seed), "lr": log_uniform(recipe["lr_range"]),
          "weight_decay": log_uniform(recipe["weight_decay_range"]),
          "init_std": log_uniform(recipe["init_std_range"]), "dropout": uniform(recipe["dropout_range"]),
          "train_fraction": uniform(recipe["train_fraction_range"])}
    hp["n_train"] = int(min(n_train, max(recipe["batch_size"], round(hp["train_fraction"] * n_train))))
    return hp


def _init_state(template: nn.Module, init_std: float, generator: torch.Generator) -> dict[str, Tensor]:
    """Weights ``N(0, init_std^2)``, biases zero, drawn in state-dict order."""
    out = {}
    for k, p in template.state_dict().items():
        if k.endswith("weight"):
            out[k] = torch.randn(p.shape, generator=generator) * init_std
        else:
            out[k] = torch.zeros(p.shape)
    return out


#: dropout masks are drawn for this many steps at a time (by both trainers, so they draw alike)
MASK_BLOCK = 32


def _dropout_masks(p: Tensor, u: Tensor) -> Tensor:
    """Inverted-dropout multipliers from uniforms ``u`` ``(M, ...)`` and float64 rates ``p`` ``(M,)``."""
    p = p.view(-1, *([1] * (u.ndim - 1)))
    return (u >= p).to(u.dtype) / (1.0 - p).to(u.dtype)


@dataclass
class _Task:
    """Everything a shard needs: data on the device, the template, the recipe."""

    template: CNN
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    recipe: dict[str, Any]
    checkpoints: tuple[int, ...]
    seed: int
    device: torch.device

    @property
    def steps_per_epoch(self) -> int:
        return len(self.x_train) // self.recipe["batch_size"]

    def hparams(self, model_id: int) -> dict[str, Any]:
        return sample_cnn_hparams(self.seed, model_id, self.recipe, len(self.x_train))

    def init(self, model_id: int, hp: Mapping[str, Any]) -> dict[str, Tensor]:
        return _init_state(self.template, hp["init_std"], model_generator(self.seed, model_id, 1))

    def stream(self, model_id: int, hp: Mapping[str, Any]) -> IndexStream:
        return IndexStream(len(self.x_train), hp["n_train"], model_generator(self.seed, model_id, 2))

    def dropout_generator(self, model_id: int) -> torch.Generator:
        return model_generator(self.seed, model_id, 3)


def _eval_chunk(task: _Task, m: int) -> int:
    t = task.template
    s = conv_padding(t.image_size, t.kernel_size, t.stride, t.padding)[2]  # the largest feature map
    return max(16, int(2**25 // (4 * m * max(t.channels) * s * s)))  # activations of a chunk: about 32 MB


#: examples per forward pass when evaluating one model (the plain loop's evaluation batch too)
EVAL_BATCH = 512


@torch.no_grad()
def evaluate_cnns(task: _Task, params: Mapping[str, Tensor], x: Tensor, y: Tensor, *,
              grouped: bool | None = None) -> tuple[Tensor, Tensor]:
    """Mean loss and accuracy of every model on ``(x, y)``: two ``(M,)`` tensors.

    All models run at once, as grouped convolutions, on a GPU and on a CPU where our C
    kernels apply and are the faster path (2.4x faster than one model after another, digits, 64 models). Otherwise
    (or with ``grouped=False``) on a CPU the models are evaluated one after another, each on
    batches of :data:`EVAL_BATCH` examples: every model sees the same inputs here, and one
    oneDNN convolution over 512 examples runs faster than a grouped one over many models
    (measured 1.4-1.7x per model on small CNNs).
    """
    m = params["head.weight"].shape[0]
    loss = torch.zeros(m, dtype=torch.float64, device=x.device)
    correct = torch.zeros(m, dtype=torch.float64, device=x.device)
    if grouped is None:  # on a CPU: where our kernels run and are the faster (WEIGHTSPACE_GCONV)
        grouped = x.device.type != "cpu" or (_use_kernels(task.template, params, x)
                                             and _cnn_path(task.template, params, x[:_eval_chunk(task, m)]) == "ours")
    if not grouped:
        for j in range(m):
            state = {k: v[j] for k, v in params.items()}
            logits = torch.cat([functional_call(task.template, state, (x[i:i + EVAL_BATCH],))
                                for i in range(0, len(x), EVAL_BATCH)])
            loss[j] = float(F.cross_entropy(logits, y, reduction="sum"))
            correct[j] = float((logits.argmax(1) == y).sum())
        return loss / len(x), correct / len(x)
    chunk = _eval_chunk(task, m)
    for i in range(0, len(x), chunk):
        xb, yb = x[i:i + chunk], y[i:i + chunk]
        logits = cnn_forward(task.template, params, xb)
        k = logits.shape[-1]
        ce = F.cross_entropy(logits.reshape(-1, k), yb.repeat(m), reduction="none").view(m, -1)
        loss += ce.double().sum(1)
        correct += (logits.argmax(-1) == yb).double().sum(1)
    return (loss / len(x)).cpu(), (correct / len(x)).cpu()


#: training steps timed before a shard reports its pace (``on_pace``)
PACE_STEPS = MASK_BLOCK  # one block of dropout masks, drawn at its first step


def train_cnn_shard(task: _Task, shard: int, ids: range,
                 on_pace: Callable[[float], None] | None = None) -> tuple[dict[str, Tensor], list[Row]]:
    """Train the models ``ids`` of ``task`` (from :func:`prepare_cnn_task`) together: the shard's
    stacked tensors (a leading model axis per checkpoint) and its metrics rows. ``on_pace``, if given, is called once, after the
    first :data:`PACE_STEPS` steps, with the seconds this whole shard should take at their
    pace (set-up, the first checkpoint's evaluation and those steps, timed; the grouped
    convolutions' first-call measurement, once per process, left out)."""
    from . import _grouped_conv

    t_start = time.perf_counter()
    dev, rec = task.device, task.recipe
    hps = [task.hparams(i) for i in ids]
    inits = [task.init(i, hp) for i, hp in zip(ids, hps)]
    params = {k: torch.stack([s[k] for s in inits]).to(dev).requires_grad_() for k in inits[0]}
    streams = [task.stream(i, hp) for i, hp in zip(ids, hps)]
    drop_gens = [task.dropout_generator(i) for i in ids]
    drops = torch.tensor([hp["dropout"] for hp in hps], dtype=torch.float64)
    lr = torch.tensor([hp["lr"] for hp in hps])
    wd = torch.tensor([hp["weight_decay"] for hp in hps])
    opt = StackedOptimizer(params, lr, wd, kind=rec["optimizer"])
    m, b, steps = len(ids), rec["batch_size"], task.steps_per_epoch
    feat = task.template.channels[-1]
    n_eval = min(len(task.x_train), rec["train_eval_size"])
    snaps: list[dict[str, Tensor]] = []
    metrics: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []

    def checkpoint() -> None:
        detached = {k: v.detach() for k, v in params.items()}
        snaps.append({k: v.clone().cpu() for k, v in detached.items()})
        metrics.append((*evaluate_cnns(task, detached, task.x_train[:n_eval], task.y_train[:n_eval]),
                        *evaluate_cnns(task, detached, task.x_test, task.y_test)))

    t_setup, t_eval = time.perf_counter() - t_start, 0.0
    if 0 in task.checkpoints:
        t, m_eval = time.perf_counter(), _grouped_conv.measured_seconds
        checkpoint()
        t_eval = time.perf_counter() - t - (_grouped_conv.measured_seconds - m_eval)
    keys = list(params)
    n_steps = steps * max(task.checkpoints)
    pace_at = min(PACE_STEPS, n_steps) if on_pace is not None else -1
    done, t_steps, m_steps = 0, time.perf_counter(), _grouped_conv.measured_seconds
    for epoch in range(1, max(task.checkpoints) + 1):
        order = torch.stack([s.take(steps * b) for s in streams]).view(m, steps, b).to(dev)
        for step in range(steps):
            if step % MASK_BLOCK == 0:  # every model's masks for the next steps, drawn from its own generator
                n_block = min(MASK_BLOCK, steps - step)
                u = torch.stack([torch.rand((n_block, b, feat), generator=g) for g in drop_gens])
                masks = _dropout_masks(drops, u).to(dev)
            idx = order[:, step]
            xb, yb = task.x_train[idx], task.y_train[idx]
            logits = cnn_forward(task.template, params, xb, dropout=masks[:, step % MASK_BLOCK])
            loss = F.cross_entropy(logits.reshape(m * b, -1), yb.reshape(-1), reduction="none").view(m, b).mean(1)
            grads = torch.autograd.grad(loss.sum(), [params[k] for k in keys])
            opt.step(dict(zip(keys, grads)))
            done += 1
            if done == pace_at:
                per_step = (time.perf_counter() - t_steps - (_grouped_conv.measured_seconds - m_steps)) / done
                on_pace(t_setup + len(task.checkpoints) * t_eval + n_steps * per_step)
        if epoch in task.checkpoints:
            checkpoint()
    n_ck = len(task.checkpoints)
    tensors = {k: torch.stack([s[k] for s in snaps], 1).reshape(m * n_ck, *snaps[0][k].shape[1:]) for k in keys}
    rows: list[Row] = []
    for j, (mid, hp) in enumerate(zip(ids, hps)):
        for c, ck in enumerate(task.checkpoints):
            tr_l, tr_a, te_l, te_a = (float(t[j]) for t in metrics[c])
            rows.append({"model_id": mid, "shard": shard, "index": j * n_ck + c, "checkpoint": ck, **hp,
                         "train_loss": tr_l, "train_acc": tr_a, "test_loss": te_l, "test_acc": te_a})
    return tensors, rows


def train_cnn_single(task: _Task, model_id: int) -> tuple[list[dict[str, Tensor]], list[dict[str, float]]]:
    """The plain loop: one ``CNN`` module, ``torch.optim``, the same recipe, data order and masks.

    What :func:`build_cnn_zoo` computes for one model, computed the ordinary way; the
    benchmark's baseline and the test oracle of the batched trainer.

    Returns:
        ``(states, metrics)``: one state dict and one ``{train_loss, train_acc, test_loss,
        test_acc}`` per checkpoint.
    """
    rec, dev = task.recipe, task.device
    hp = task.hparams(model_id)
    model = CNN(**_model_kwargs(task.template)).to(dev)
    model.load_state_dict(task.init(model_id, hp))
    stream, gen = task.stream(model_id, hp), task.dropout_generator(model_id)
    if rec["optimizer"] == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    else:
        opt = torch.optim.SGD(model.parameters(), lr=hp["lr"], momentum=0.9, weight_decay=hp["weight_decay"])
    mask: list[Tensor | None] = [None]
    model.head.register_forward_pre_hook(lambda mod, args: (args[0] * mask[0],) if mask[0] is not None else None)
    b, steps, feat = rec["batch_size"], task.steps_per_epoch, task.template.channels[-1]
    n_eval = min(len(task.x_train), rec["train_eval_size"])
    states, metrics = [], []

    @torch.no_grad()
    def evaluate(x: Tensor, y: Tensor) -> tuple[float, float]:
        model.eval()
        logits = torch.cat([model(x[i:i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)])
        model.train()
        return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())

    def checkpoint() -> None:
        states.append({k: v.detach().clone().cpu() for k, v in model.state_dict().items()})
        (a, b_), (c, d) = evaluate(task.x_train[:n_eval], task.y_train[:n_eval]), evaluate(task.x_test, task.y_test)
        metrics.append({"train_loss": a, "train_acc": b_, "test_loss": c, "test_acc": d})

    model.train()
    if 0 in task.checkpoints:
        checkpoint()
    for epoch in range(1, max(task.checkpoints) + 1):
        order = stream.take(steps * b).view(steps, b).to(dev)
        for step in range(steps):
            if step % MASK_BLOCK == 0:
                u = torch.rand((min(MASK_BLOCK, steps - step), b, feat), generator=gen)
                masks = _dropout_masks(torch.tensor([hp["dropout"]], dtype=torch.float64), u[None])[0].to(dev)
            idx = order[step]
            mask[0] = masks[step % MASK_BLOCK]
            loss = F.cross_entropy(model(task.x_train[idx]), task.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            mask[0] = None
        if epoch in task.checkpoints:
            checkpoint()
    return states, metrics


def _model_kwargs(template: CNN) -> dict[str, Any]:
    return {"in_channels": template.in_channels, "channels": list(template.channels),
            "num_classes": template.num_classes, "image_size": template.image_size,
            "kernel_size": template.kernel_size, "stride": template.stride, "padding": template.padding,
            "pool": template.pool_kind, "flatten": template.flatten, "activation": template.activation}


def resize_images(ds: Dataset, size: int | None) -> Tensor:
    """The images of ``ds`` as float ``(N, C, size, size)`` (area downsampling, bilinear upsampling;
    ``size=None`` keeps theirs), as a cnn zoo trains on them.

    Raises:
        ValueError: inputs that are not square images.
    """
    x = ds.x.float()
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"zoo build cnn: {ds.name} holds inputs of shape {tuple(ds.x.shape[1:])}; expected square "
                         f"images (C, H, W)")
    if size is not None and size != x.shape[-1]:
        mode = "area" if size < x.shape[-1] else "bilinear"
        x = F.interpolate(x, size=(size, size), mode=mode, **({"align_corners": False} if mode == "bilinear" else {}))
    return x.contiguous()


def _check_checkpoints(checkpoints: Sequence[int] | str) -> tuple[int, ...]:
    if isinstance(checkpoints, str):
        try:
            checkpoints = [int(c) for c in checkpoints.split(",") if c.strip()]
        except ValueError:
            raise ValueError(f"zoo: --checkpoints must be comma-separated epochs such as 0,1,2,4,8, got "
                             f"{checkpoints!r}") from None
    cks = tuple(int(c) for c in checkpoints)
    if not cks or any(c < 0 for c in cks) or list(cks) != sorted(set(cks)) or max(cks) < 1:
        raise ValueError(f"zoo: checkpoints must be increasing epochs >= 0, the last >= 1 (e.g. 0,1,2,4,8), got "
                         f"{list(cks)}")
    return cks


def prepare_cnn_task(data: str, *, checkpoints: Sequence[int] | str = (0, 1, 2, 4, 8), seed: int = 0,
                     device: str | torch.device = "cpu", image_size: int | None = None,
                     recipe: Mapping[str, Any] | None = None) -> tuple[_Task, dict[str, Any]]:
    """Load and check everything a CNN zoo build needs: ``(task, dataset description)``."""
    rec = dict(CNN_RECIPE)
    unknown = set(recipe or {}) - set(rec)
    if unknown:
        raise ValueError(f"zoo build cnn: unknown recipe keys {sorted(unknown)}; known: {', '.join(sorted(rec))}")
    rec.update(recipe or {})
    rec["channels"] = [check_positive_int(c, "channels") for c in rec["channels"]]
    check_positive_int(rec["stride"], "stride")
    check_positive_int(rec["batch_size"], "batch_size")
    check_positive_int(rec["train_eval_size"], "train_eval_size")
    if rec["optimizer"] not in OPTIMIZERS:
        raise ValueError(f"zoo build cnn: unknown optimizer {rec['optimizer']!r}; choose one of: {', '.join(OPTIMIZERS)}")
    for k in ("lr_range", "weight_decay_range", "init_std_range"):
        rec[k] = list(check_range(rec[k], k, positive=True))
    for k in ("dropout_range", "train_fraction_range"):
        rec[k] = list(check_range(rec[k], k))
    if rec["dropout_range"][1] >= 1 or rec["train_fraction_range"][1] > 1 or rec["train_fraction_range"][0] <= 0:
        raise ValueError("zoo build cnn: dropout must lie in [0, 1) and train_fraction in (0, 1]")
    if image_size is not None:
        check_positive_int(image_size, "image_size")
    cks = _check_checkpoints(checkpoints)
    dev = resolve_device(device)
    train, test = load_dataset(data, split="train"), load_dataset(data, split="test")
    if train.num_classes is None or train.y.is_floating_point():
        raise ValueError(f"zoo build cnn: {data} has no integer class labels")
    x_train, x_test = resize_images(train, image_size), resize_images(test, image_size)
    if len(x_train) < rec["batch_size"]:
        raise ValueError(f"zoo build cnn: {data} has {len(x_train)} training examples, fewer than one batch "
                         f"({rec['batch_size']})")
    num_classes = max(int(train.num_classes), int(test.num_classes or 0))
    try:
        template = CNN(x_train.shape[1], rec["channels"], num_classes, x_train.shape[-1],
                       kernel_size=rec["kernel_size"], stride=rec["stride"], padding=rec["padding"], pool=rec["pool"],
                       flatten=False, activation=rec["activation"])
    except ValueError as e:
        raise ValueError(f"zoo build cnn: the recipe's architecture is invalid: {e}") from None
    task = _Task(template, x_train.to(dev), train.y.long().to(dev), x_test.to(dev), test.y.long().to(dev),
                 rec, cks, int(seed), dev)
    described = {"spec": data, "train_size": len(x_train), "test_size": len(x_test), "num_classes": num_classes,
                 "input_shape": list(x_train.shape[1:]), "native_image_size": int(train.x.shape[-1])}
    return task, described


def build_cnn_zoo(out: str | os.PathLike, data: str = "digits", *, n: int = 8, models_per_shard: int = 64,
                  checkpoints: Sequence[int] | str = (0, 1, 2, 4, 8), seed: int = 0,
                  shard: str | tuple[int, int] | None = None, device: str | torch.device = "cpu",
                  image_size: int | None = None, recipe: Mapping[str, Any] | None = None, progress: bool = True,
                  on_shard: Callable[[int], None] | None = None, workers: int = 1) -> ZooBuildResult:
    """Build (or resume) a zoo of small CNNs, many trained at once.

    The architecture is the Small CNN Zoo's (Unterthiner et al., arXiv:2002.11448): three 3x3
    convolutions of 16 channels with stride 2 and TensorFlow's "SAME" padding, global average
    pooling and a linear head, 4,970 parameters on one-channel images, as the ``cnn`` family
    (``--model cnn``). ``recipe=CNN_FAMILIES["pooled"]`` gives the earlier family: stride-1
    convolutions each followed by 2x2 average pooling (same parameter shapes). Each model draws its hyper-parameters from ``(seed, model_id)``
    (see :data:`CNN_RECIPE` and ``zoo.json``'s notes); the models of one shard train together
    as grouped convolutions with a per-model Adam (or SGD), each with its own data order.

    Args:
        out (str or PathLike): the zoo directory; an interrupted build there is resumed.
        data (str): dataset spec (``digits``, ``mnist-idx:DIR``, ``package.module:callable``).
        n (int): number of models. (default: ``8``)
        models_per_shard (int): models per shard file, trained together. (default: ``64``)
        checkpoints (sequence of int or str): epochs at which weights and metrics are kept;
            0 is the initialisation. (default: ``(0, 1, 2, 4, 8)``)
        seed (int): the zoo seed; model ``i`` depends only on ``(seed, i)``. (default: ``0``)
        shard (str, optional): ``"i/N"``: build only shards ``s`` with ``s % N == i``.
        device (str): ``cpu``, ``cuda`` or ``auto``. (default: ``"cpu"``)
        image_size (int, optional): resize inputs to this size first. (default: native)
        recipe (dict, optional): overrides of :data:`CNN_RECIPE`.
        progress (bool): progress bar on stderr, and after the first few steps one line with
            the time the build should take at their pace. (default: ``True``)
        on_shard (callable, optional): called with each shard index once it is on disk.
        workers (int): processes building disjoint shards at once (``shard`` ``i/workers``
            each), with ``cpu_count // workers`` threads each; on a CPU, one per core is
            fastest. (default: ``1``)

    Returns:
        ZooBuildResult: shards built and skipped, models per second.

    Raises:
        ValueError: bad arguments or data, or ``out`` holding a different zoo.

    Example:
        >>> r = build_cnn_zoo("zoo", "digits", n=8, checkpoints=(0, 1), progress=False)  # doctest: +SKIP
        >>> ZooDataset("zoo", split="train")[0]  # doctest: +SKIP
    """
    check_positive_int(n, "n")
    check_positive_int(models_per_shard, "models_per_shard")
    if check_positive_int(workers, "workers") > 1:
        kwargs = dict(out=out, data=data, n=n, models_per_shard=models_per_shard, checkpoints=checkpoints, seed=seed,
                      device=device, image_size=image_size, recipe=recipe)
        return build_in_workers(build_cnn_zoo, kwargs, workers, shard=shard, n_shards=-(-n // models_per_shard),
                                progress=progress, on_shard=on_shard, desc="zoo build cnn")
    task, described = prepare_cnn_task(data, checkpoints=checkpoints, seed=seed, device=device,
                                       image_size=image_size, recipe=recipe)
    kwargs = _model_kwargs(task.template)
    rec = dict(task.recipe)
    notes = _NOTES
    if (rec["stride"], rec["padding"]) == (1, "symmetric") and _built_before_strides(out):
        # a zoo started before the cnn family had strides (its card names neither): resumed as it began
        for d in (rec, kwargs):
            del d["stride"], d["padding"]
    elif rec["padding"] == "tf_same":
        notes = (*_NOTES, _TF_SAME_NOTE)
    card = ZooCard(
        task="image-classification", model={"name": "cnn", "kwargs": kwargs}, dataset=described,
        recipe={**rec, "seed": int(seed), "checkpoints": list(task.checkpoints),
                "image_size": task.template.image_size, "steps_per_epoch": task.steps_per_epoch},
        n_models=n, models_per_shard=models_per_shard, columns=CNN_COLUMNS, target="test_acc",
        input_shape=tuple(task.x_train.shape[1:]), checkpoints=task.checkpoints, checkpoint_unit="epoch",
        splits=dict(DEFAULT_SPLITS), cite=_CITE, notes=notes)
    return run_build(out, card, shard, lambda s, ids, on_pace: train_cnn_shard(task, s, ids, on_pace),
                     progress=progress, on_shard=on_shard, desc="zoo build cnn", paced=True)
