"""INR zoos: SIREN implicit neural representations fitted to the images of a dataset, many at once."""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from weightspace.data import load_dataset
from weightspace.models import SIREN

from ._batched import OPTIMIZERS, StackedOptimizer, model_generator, siren_forward
from ._build import ZooBuildResult, build_in_workers, check_positive_int, resolve_device, run_build
from ._metrics import Row
from .zoo_card import BASE_COLUMNS, ZooCard

__all__ = ["build_inr_zoo", "INR_RECIPE", "INR_COLUMNS", "fit_inr_shard", "image_grid", "prepare_inr_task",
           "train_inr_single"]

#: the default recipe of ``weightspace zoo build inr`` (every key can be overridden)
INR_RECIPE: dict[str, Any] = {
    "hidden": [32, 32],
    "w0": 30.0,
    "steps": 500,
    "lr": 3e-3,
    "optimizer": "adam",
    "psnr_stop": 40.0,
    "check_every": 10,
    "fits_per_image": 1,
}
INR_COLUMNS = (*BASE_COLUMNS, "image_index", "fit", "label", "seed", "lr", "w0", "steps", "mse", "psnr")
_CITE = ("SIREN: V. Sitzmann et al., \"Implicit Neural Representations with Periodic Activation Functions\", "
         "arXiv:2006.09661 (2020); INR zoos as in DWSNets (A. Navon et al., arXiv:2301.12780) and NFN "
         "(A. Zhou et al., arXiv:2302.14040).")
_NOTES = (
    "coordinates: an H x W grid of linspace(-1, 1) per axis, (row, column) order, row-major; targets: "
    "pixel intensities in [0, 1] mapped to [-1, 1]",
    "psnr = 10 log10(1 / mse) on the [0, 1] intensity scale, mse over every pixel (and channel)",
    "full-batch Adam on every pixel; a model stops when its psnr reaches psnr_stop (checked every "
    "check_every steps) or after steps; checkpoint = the steps it took",
    "initialisation as in the SIREN paper, drawn from (seed, model_id); fit f of image i is model "
    "i * fits_per_image + f, and all fits of one image share a split",
    "label = the image's class; the default target",
)


def image_grid(height: int, width: int) -> Tensor:
    """Pixel coordinates ``(H * W, 2)`` in ``[-1, 1]``, row-major, ``(row, column)`` order."""
    rows, cols = torch.linspace(-1, 1, height), torch.linspace(-1, 1, width)
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), -1).reshape(-1, 2)


def _siren_init(template: SIREN, generator: torch.Generator) -> dict[str, Tensor]:
    """The SIREN paper's initialisation (as :meth:`SIREN.reset_parameters`), from ``generator``."""
    out = {}
    for i, layer in enumerate(template.layers):
        n = layer.in_features
        bound = 1.0 / n if i == 0 else math.sqrt(6.0 / n) / template.w0
        out[f"layers.{i}.weight"] = (torch.rand(layer.weight.shape, generator=generator) * 2 - 1) * bound
        b = 1.0 / math.sqrt(n)
        out[f"layers.{i}.bias"] = (torch.rand(layer.bias.shape, generator=generator) * 2 - 1) * b
    return out


@dataclass
class _Task:
    template: SIREN
    images: Tensor  # (N, P, C) targets in [-1, 1]
    labels: Tensor  # (N,)
    coords: Tensor  # (P, 2)
    recipe: dict[str, Any]
    seed: int
    device: torch.device

    @property
    def fits(self) -> int:
        return int(self.recipe["fits_per_image"])

    def init(self, model_id: int) -> dict[str, Tensor]:
        return _siren_init(self.template, model_generator(self.seed, model_id, 11))


def _psnr(mse: Tensor) -> Tensor:
    """PSNR on the [0, 1] scale from the MSE of [-1, 1] targets."""
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-20))


def fit_inr_shard(task: _Task, shard: int, ids: range) -> tuple[dict[str, Tensor], list[Row]]:
    """Fit the INRs ``ids`` of ``task`` (from :func:`prepare_inr_task`) together: the shard's stacked
    tensors (a leading model axis) and its metrics rows."""
    rec, dev = task.recipe, task.device
    m = len(ids)
    inits = [task.init(i) for i in ids]
    params = {k: torch.stack([s[k] for s in inits]).to(dev).requires_grad_() for k in inits[0]}
    image_index = torch.tensor([i // task.fits for i in ids])
    target = task.images[image_index.to(task.images.device)].to(dev)  # (M, P, C)
    coords = task.coords.to(dev)
    opt = StackedOptimizer(params, torch.full((m,), float(rec["lr"])), torch.zeros(m), kind=rec["optimizer"])
    alive = torch.arange(m, device=dev)  # shard positions of the models still fitting
    final = {k: torch.empty_like(v, requires_grad=False) for k, v in params.items()}
    steps_taken = torch.full((m,), rec["steps"], dtype=torch.long)
    final_mse = torch.zeros(m, dtype=torch.float64)
    keys = list(params)
    stop = rec["psnr_stop"]

    def mse_of(p: dict[str, Tensor], tgt: Tensor) -> Tensor:
        return (siren_forward(task.template, p, coords) - tgt).pow(2).mean((1, 2))

    for step in range(1, rec["steps"] + 1):
        mse = mse_of(params, target)
        grads = torch.autograd.grad(mse.sum(), [params[k] for k in keys])
        opt.step(dict(zip(keys, grads)))
        if stop is not None and step % rec["check_every"] == 0 and step < rec["steps"]:
            with torch.no_grad():
                now = mse_of({k: v.detach() for k, v in params.items()}, target)
                done = _psnr(now) >= stop
                if bool(done.any()):  # finished models leave the batch: no more compute spent on them
                    for k in keys:
                        final[k][alive[done]] = params[k].detach()[done]
                    steps_taken[alive[done].cpu()] = step
                    final_mse[alive[done].cpu()] = now[done].double().cpu()
                    keep = (~done).nonzero().flatten()
                    alive, target = alive[keep], target[keep]
                    params = opt.select_(keep)
            if len(alive) == 0:
                break
    if len(alive):
        with torch.no_grad():
            for k in keys:
                final[k][alive] = params[k].detach()
            final_mse[alive.cpu()] = mse_of({k: v.detach() for k, v in params.items()}, target).double().cpu()
    params = final
    tensors = {k: v.detach().cpu() for k, v in params.items()}
    rows: list[Row] = []
    for j, mid in enumerate(ids):
        mse = float(final_mse[j])
        rows.append({"model_id": mid, "shard": shard, "index": j, "checkpoint": int(steps_taken[j]),
                     "image_index": mid // task.fits, "fit": mid % task.fits,
                     "label": int(task.labels[mid // task.fits]), "seed": task.seed, "lr": float(rec["lr"]),
                     "w0": float(task.template.w0), "steps": int(steps_taken[j]), "mse": mse,
                     "psnr": 10 * math.log10(4.0 / max(mse, 1e-20))})
    return tensors, rows


def train_inr_single(task: _Task, model_id: int) -> tuple[dict[str, Tensor], int, float]:
    """The plain loop for one INR (a ``SIREN`` module and ``torch.optim``), same recipe and stop rule.

    Returns:
        ``(state, steps, mse)``.
    """
    rec, dev = task.recipe, task.device
    model = SIREN(task.template.in_features, task.template.hidden, task.template.out_features,
                  task.template.w0).to(dev)
    model.load_state_dict(task.init(model_id))
    if rec["optimizer"] == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=rec["lr"])
    else:
        opt = torch.optim.SGD(model.parameters(), lr=rec["lr"], momentum=0.9)
    target, coords = task.images[model_id // task.fits].to(dev), task.coords.to(dev)
    steps = 0
    for step in range(1, rec["steps"] + 1):
        loss = (model(coords) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
        if rec["psnr_stop"] is not None and step % rec["check_every"] == 0:
            with torch.no_grad():
                if float(_psnr((model(coords) - target).pow(2).mean())) >= rec["psnr_stop"]:
                    break
    with torch.no_grad():
        mse = float((model(coords) - target).pow(2).mean())
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}, steps, mse


def prepare_inr_task(images: str, *, split: str = "all", n: int | None = None, seed: int = 0,
                     device: str | torch.device = "cpu", recipe: Mapping[str, Any] | None = None
                     ) -> tuple[_Task, dict[str, Any]]:
    """Load and check everything an INR zoo build needs: ``(task, dataset description)``."""
    rec = dict(INR_RECIPE)
    unknown = set(recipe or {}) - set(rec)
    if unknown:
        raise ValueError(f"zoo build inr: unknown recipe keys {sorted(unknown)}; known: {', '.join(sorted(rec))}")
    rec.update({k: v for k, v in (recipe or {}).items()})
    rec["hidden"] = [check_positive_int(h, "hidden") for h in rec["hidden"]]
    for k in ("steps", "check_every", "fits_per_image"):
        check_positive_int(rec[k], k)
    if not (isinstance(rec["lr"], (int, float)) and math.isfinite(rec["lr"]) and rec["lr"] > 0):
        raise ValueError(f"zoo build inr: lr must be a positive number, got {rec['lr']!r}")
    if not (isinstance(rec["w0"], (int, float)) and math.isfinite(rec["w0"]) and rec["w0"] > 0):
        raise ValueError(f"zoo build inr: w0 must be a positive number, got {rec['w0']!r}")
    if rec["psnr_stop"] is not None:
        rec["psnr_stop"] = float(rec["psnr_stop"])
    if rec["optimizer"] not in OPTIMIZERS:
        raise ValueError(f"zoo build inr: unknown optimizer {rec['optimizer']!r}; choose one of: {', '.join(OPTIMIZERS)}")
    rec["lr"], rec["w0"] = float(rec["lr"]), float(rec["w0"])
    dev = resolve_device(device)
    ds = load_dataset(images, split=split)
    x = ds.x.float()
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise ValueError(f"zoo build inr: {images} holds inputs of shape {tuple(ds.x.shape[1:])}; expected images "
                         f"(C, H, W)")
    if ds.y.is_floating_point() or ds.y.ndim != 1:
        raise ValueError(f"zoo build inr: {images} has no integer class labels")
    if n is not None:
        check_positive_int(n, "n")
        if n > len(x):
            raise ValueError(f"zoo build inr: --n {n} is more than the {len(x)} images of {images} ({split} split)")
        x, y = x[:n], ds.y[:n]
    else:
        y = ds.y
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"zoo build inr: {images} has pixel values in [{lo:.3g}, {hi:.3g}]; expected [0, 1]")
    c, h, w = x.shape[1:]
    targets = (x * 2 - 1).permute(0, 2, 3, 1).reshape(len(x), h * w, c).contiguous()
    template = SIREN(2, rec["hidden"], c, rec["w0"])
    task = _Task(template, targets.to(dev), y.long(), image_grid(h, w), rec, int(seed), dev)
    described = {"spec": images, "split": split, "n_images": len(x), "image_shape": [c, h, w],
                 "num_classes": int(y.max()) + 1 if len(y) else 0}
    return task, described


def build_inr_zoo(out: str | os.PathLike, images: str = "digits", *, split: str = "all", n: int | None = None,
                  models_per_shard: int = 256, seed: int = 0, shard: str | tuple[int, int] | None = None,
                  device: str | torch.device = "cpu", recipe: Mapping[str, Any] | None = None,
                  progress: bool = True, on_shard: Callable[[int], None] | None = None,
                  workers: int = 1) -> ZooBuildResult:
    """Build (or resume) a zoo of SIREN INRs, one (or ``fits_per_image``) per image, many at once.

    Every model is a ``siren`` (2-32-32-1 by default, ``w0 = 30``) fitted by full-batch Adam
    to one image: the pixel grid in ``[-1, 1]^2`` to intensities in ``[-1, 1]``, until its PSNR
    reaches ``psnr_stop`` or ``steps`` run out. The models of a shard are fitted together as
    batched matrix products with a per-model early stop. The label is the image's class.

    Args:
        out (str or PathLike): the zoo directory; an interrupted build there is resumed.
        images (str): dataset spec of the images (``digits``, ``mnist-idx:DIR``, ...).
        split (str): which split of it: ``train``, ``test`` or ``all``. (default: ``"all"``)
        n (int, optional): the first ``n`` images only. (default: all)
        models_per_shard (int): models per shard file, fitted together. (default: ``256``)
        seed (int): the zoo seed. (default: ``0``)
        shard (str, optional): ``"i/N"``: build only shards ``s`` with ``s % N == i``.
        device (str): ``cpu``, ``cuda`` or ``auto``. (default: ``"cpu"``)
        recipe (dict, optional): overrides of :data:`INR_RECIPE` (``hidden``, ``w0``, ``steps``,
            ``lr``, ``psnr_stop``, ``fits_per_image``, ...).
        progress (bool): progress bar on stderr. (default: ``True``)
        on_shard (callable, optional): called with each shard index once it is on disk.
        workers (int): processes building disjoint shards at once, as for
            :func:`build_cnn_zoo`. (default: ``1``)

    Returns:
        ZooBuildResult: shards built and skipped, models per second.

    Raises:
        ValueError: bad arguments or images, or ``out`` holding a different zoo.
    """
    check_positive_int(models_per_shard, "models_per_shard")
    if check_positive_int(workers, "workers") > 1:
        kwargs = dict(out=out, images=images, split=split, n=n, models_per_shard=models_per_shard, seed=seed,
                      device=device, recipe=recipe)
        return build_in_workers(build_inr_zoo, kwargs, workers, shard=shard, n_shards=None, progress=progress,
                                on_shard=on_shard, desc="zoo build inr")
    task, described = prepare_inr_task(images, split=split, n=n, seed=seed, device=device, recipe=recipe)
    t = task.template
    card = ZooCard(
        task="implicit-neural-representation",
        model={"name": "siren", "kwargs": {"in_features": 2, "hidden": list(t.hidden), "out_features": t.out_features,
                                           "w0": t.w0}},
        dataset=described, recipe={**task.recipe, "seed": int(seed)}, n_models=len(task.images) * task.fits,
        models_per_shard=models_per_shard, columns=INR_COLUMNS, target="label", input_shape=(2,),
        checkpoints=None, checkpoint_unit="step",
        splits={"by": "image_index", "fractions": {"train": 0.8, "val": 0.1, "test": 0.1}, "salt": "weightspace-zoo"},
        cite=_CITE, notes=_NOTES)
    return run_build(out, card, shard, lambda s, ids: fit_inr_shard(task, s, ids), progress=progress,
                     on_shard=on_shard, desc="zoo build inr")
