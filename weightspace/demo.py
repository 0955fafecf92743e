"""The embedded default job behind ``weightspace demo``: no download, seconds on a laptop CPU.

Two small MLPs are trained from different seeds on the bundled 8x8 digits; merging them naively
(averaging the weights) breaks them, aligning B's hidden units to A's first (Git Re-Basin weight
matching) does not. Everything is written with the same public verbs a user calls.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import merging

from .api import INPUT_SHAPE_KEY, MODEL_KEY, PROVENANCE_KEY
from .checkpoint import save
from .merge import barrier_between, merge_checkpoints
from .pipeline import MergeResult, resolve_device
from .models import get_model, model_spec_to_json
from .training import train_classifier

__all__ = ["DemoResult", "run_demo"]

_DATA = "digits"
_DEPTH = 3
_LR = 0.1


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` trained, measured and wrote.

    Attributes:
        out (Path): the output directory.
        checkpoints (tuple[Path, Path]): the two trained models A and B.
        merged (Path): A merged with weight-matched B at ``alpha = 0.5``.
        plot (Path): loss and accuracy along the path, naive against weight matching.
        model (str): the model spec (JSON) of both.
        barriers (dict[str, BarrierResult]): ``"naive"`` and ``"weight matching"`` curves on the
            test split; ``t = 0`` is A, ``t = 1`` is B, ``t = 0.5`` the merged model.
        merge (MergeResult): the merge that wrote ``merged``.
        train_seconds (float): time spent training both models.
        seconds (float): total time.
    """

    out: Path
    checkpoints: tuple[Path, Path]
    merged: Path
    plot: Path
    model: str
    barriers: dict[str, merging.BarrierResult]
    merge: MergeResult
    train_seconds: float
    seconds: float

    @property
    def naive(self) -> merging.BarrierResult:
        return self.barriers["naive"]

    @property
    def aligned(self) -> merging.BarrierResult:
        return self.barriers["weight matching"]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "out": str(self.out),
            "checkpoints": [str(p) for p in self.checkpoints],
            "merged": str(self.merged),
            "plot": str(self.plot),
            "model": json.loads(self.model),
            "data": _DATA,
            "results": {k: v.to_dict() for k, v in self.barriers.items()},
            "merge": self.merge.to_dict(),
            "train_seconds": round(self.train_seconds, 3),
            "seconds": round(self.seconds, 3),
        }


def run_demo(
    out: str | os.PathLike = "weightspace-demo",
    *,
    epochs: int = 20,
    width: int = 128,
    seed: int = 0,
    steps: int = 25,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> DemoResult:
    """Train two MLPs on digits, merge them naively and with weight matching, compare the barriers.

    Writes into ``out``: ``model_a.safetensors`` and ``model_b.safetensors`` (each recording its
    model and input shape, so every other command works on them without ``--model``),
    ``merged.safetensors`` (weight matching, ``alpha = 0.5``) and ``barrier.png``.

    Args:
        out (str or PathLike, optional): the output directory, created if missing; files of an
            earlier demo there are replaced. (default: ``"weightspace-demo"``)
        epochs (int, optional): training epochs of each model. (default: ``20``)
        width (int, optional): hidden width of the three hidden layers. (default: ``128``)
        seed (int, optional): model A is initialised and shuffled with ``seed``, B with
            ``seed + 1``. (default: ``0``)
        steps (int, optional): points on the interpolation path, ``>= 3``. (default: ``25``)
        device (str or torch.device, optional): ``"cpu"``, ``"cuda"`` or ``"auto"``. (default: ``"cpu"``)
        progress (bool, optional): progress bars on stderr. (default: ``True``)

    Returns:
        DemoResult: the files written and both barrier curves.

    Raises:
        ValueError: bad ``epochs``, ``width`` or ``steps``, or ``out`` is an existing file.
    """
    t0 = time.perf_counter()
    for name, value, low in (("epochs", epochs, 1), ("width", width, 1), ("steps", steps, 3)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"run_demo: {name} must be an integer >= {low}, got {value!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"run_demo: the output {out} exists and is not a directory")
    dev = resolve_device(device)
    out.mkdir(parents=True, exist_ok=True)
    with _one_thread(dev):
        return _run(out, epochs, width, seed, steps, dev, progress, t0)


@contextlib.contextmanager
def _one_thread(device: torch.device) -> Iterator[None]:
    """One intra-op thread on CPU while the demo runs (restored after).

    The demo's matrices are tiny: a second thread gains nothing, and on a busy machine
    OpenMP threads waiting for a core slow every step down by one or two orders of magnitude.
    """
    if device.type != "cpu":
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _run(out: Path, epochs: int, width: int, seed: int, steps: int, dev: torch.device, progress: bool,
         t0: float) -> DemoResult:
    kwargs = {"in_features": 64, "hidden": [width] * _DEPTH, "out_features": 10}
    spec = model_spec_to_json("mlp", kwargs)
    paths = (out / "model_a.safetensors", out / "model_b.safetensors")
    for path, s in zip(paths, (seed, seed + 1)):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            model = get_model("mlp", **kwargs)
        losses = train_classifier(model, _DATA, epochs=epochs, lr=_LR, seed=s, device=dev, progress=progress)
        recipe = {"tool": "weightspace demo", "data": _DATA, "epochs": epochs, "lr": _LR, "optimizer": "sgd",
                  "batch_size": 64, "seed": s, "final_train_loss": round(losses[-1], 5)}
        save(model.state_dict(), path, metadata={MODEL_KEY: spec, INPUT_SHAPE_KEY: "1,8,8",
                                                 PROVENANCE_KEY: json.dumps(recipe, sort_keys=True)})
    train_seconds = time.perf_counter() - t0

    merged = merge_checkpoints(paths[0], paths[1], out / "merged.safetensors", method="weight", alpha=0.5,
                               device=dev, seed=seed, progress=progress)
    plot = out / "barrier.png"
    barriers = barrier_between(paths[0], paths[1], data=_DATA, align="weight", steps=steps, plot=plot,
                               device=dev, seed=seed, progress=progress)
    return DemoResult(out=out, checkpoints=paths, merged=merged.path, plot=plot, model=spec, barriers=barriers,
                      merge=merged, train_seconds=train_seconds, seconds=time.perf_counter() - t0)
