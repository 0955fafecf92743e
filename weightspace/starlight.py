"""Train a star model from N checkpoints: the library behind ``weightspace starlight``.

Everything is validated before training starts; the training state is saved after every epoch
(so a killed run continues with ``resume=True``) and the star is written atomically as
``.safetensors`` with its model, input shape and provenance in the metadata.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import merging
from merging.starlight import parse_t_dist

from .api import INPUT_SHAPE_KEY, MODEL_KEY, PROVENANCE_KEY
from .checkpoint import check_not_input, save
from ._dtypes import plan_dtypes
from .pipeline import (
    provenance,
    as_dtype,
    check_data_fits,
    file_record,
    input_shape_of,
    resolve_device,
    run_dtype,
    structure_of,
)
from .merge_many import _load_many
from .trust import takes_trust_flag

__all__ = ["EpochLoader", "StarlightResult", "starlight_checkpoints", "state_path_for"]

PathLike = str | os.PathLike


class EpochLoader:
    """Mini-batches of ``(x, y)`` tensors, reshuffled every epoch from ``seed + epoch``.

    :class:`merging.Starlight` calls :meth:`set_epoch` before every epoch, so the order of the
    batches depends only on the epoch, and a resumed run reads exactly what an uninterrupted
    one would have.

    Args:
        x (Tensor): inputs; y (Tensor): targets, same first axis.
        batch_size (int, optional): examples per batch. (default: ``128``)
        seed (int, optional): seeds the shuffling. (default: ``0``)

    Shapes:
        each batch: x ``(B, *input_shape)``, y ``(B,)``.
    """

    def __init__(self, x: Tensor, y: Tensor, batch_size: int = 128, *, seed: int = 0) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"EpochLoader: batch_size must be a positive integer, got {batch_size!r}")
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"EpochLoader: x and y need one non-zero length, got {len(x)} and {len(y)}")
        self.x, self.y, self.batch_size, self.seed, self.epoch = x, y, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(self.seed + self.epoch))
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.x[idx], self.y[idx]

    def __repr__(self) -> str:
        return f"EpochLoader(n={len(self.x)}, batch_size={self.batch_size}, seed={self.seed})"


@dataclass(frozen=True)
class StarlightResult:
    """What :func:`starlight_checkpoints` did.

    Attributes:
        path (Path): the star checkpoint written.
        state_path (Path): the training state (to resume from).
        epochs (int): epochs done in all (earlier runs included when resumed).
        resumed_from (int): the epoch the run started from (``0`` for a fresh run).
        history (list[float]): the mean training loss of every epoch.
        seconds (float): total time.
        model (str): the model spec recorded in the output.
        evaluation (dict, optional): test loss and accuracy of the star and of the sources (mean),
            when the data has a test split.
        provenance (dict): what is recorded under ``weightspace.provenance``.
        notes (tuple[str, ...]): one-line notes on dtypes (sources trained in the model's dtype).
    """

    path: Path
    state_path: Path
    epochs: int
    resumed_from: int
    history: list[float]
    seconds: float
    model: str
    input_shape: tuple[int, ...] | None = None
    evaluation: dict[str, Any] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"output": str(self.path), "state": str(self.state_path), "epochs": self.epochs,
                "resumed_from": self.resumed_from, "history": self.history, "seconds": round(self.seconds, 4),
                "model": json.loads(self.model), "input_shape": list(self.input_shape) if self.input_shape else None,
                "evaluation": self.evaluation, "provenance": self.provenance, "notes": list(self.notes)}


def state_path_for(out: PathLike) -> Path:
    """The default training-state file next to ``out``: ``star.safetensors`` -> ``star.starlight.pt``."""
    out = Path(out)
    return out.with_name(out.name[: -len(".safetensors")] + ".starlight.pt") if out.name.endswith(".safetensors") \
        else out.with_name(out.name + ".starlight.pt")


def _dataset(data: str | Any, batch_size: int, seed: int, fn: str) -> tuple[Iterable[Any], Any, str]:
    """Training batches (reshuffled per epoch), test batches or ``None``, and a label."""
    if isinstance(data, str):
        from weightspace.data import load_dataset

        train = load_dataset(data, split="train")
        test = load_dataset(data, split="test")
        test_batches = test.loader(512) if test.x.data_ptr() != train.x.data_ptr() else None
        return EpochLoader(train.x, train.y, batch_size, seed=seed), test_batches, data
    if isinstance(data, (bytes, Tensor)) or not isinstance(data, Iterable):
        raise TypeError(f"{fn}: data must be a --data spec such as 'digits' or re-iterable (x, y) batches, "
                        f"got {type(data).__name__}")
    return data, None, f"<{type(data).__name__}>"


@takes_trust_flag
def starlight_checkpoints(
    paths: Sequence[PathLike],
    out: PathLike,
    *,
    data: str | Iterable[Any],
    model: str | None = None,
    model_kwargs: str | Mapping[str, Any] | None = None,
    input_shape: str | tuple[int, ...] | None = None,
    epochs: int = 10,
    lr: float = 0.05,
    momentum: float = 0.9,
    batch_size: int = 128,
    schedule: str = "cosine",
    t_dist: str = "uniform",
    realign: bool = True,
    init: str = "first",
    resume: bool = False,
    state: PathLike | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    solver: str = "auto",
    progress: bool = True,
) -> StarlightResult:
    r"""Train a star model from N checkpoints with :class:`merging.Starlight` and write it.

    .. math::
        \theta_\star = \arg\min_\theta\ \mathbb{E}_{n, t}\ L\big((1-t)\,\theta + t\,\pi_n(\theta_n)\big)

    (Sonthalia et al., https://arxiv.org/abs/2403.07968.) The training state goes to ``state``
    (default :func:`state_path_for` ``(out)``) after every epoch; ``resume=True`` continues from
    it. The first checkpoint gives the basis of hidden units (and the star's start with
    ``init="first"``) and the recorded model.

    Args:
        paths (list of str or PathLike): the source checkpoints, at least two, one architecture.
        out (str or PathLike): the ``.safetensors`` file to write (not one of the inputs).
        data (str or Iterable): a ``--data`` spec (its train split, reshuffled every epoch with
            ``seed``; its test split, when it has one, evaluates the result) or re-iterable batches.
        model, model_kwargs, input_shape: as for :func:`weightspace.merge_checkpoints`.
        epochs, lr, momentum, schedule, t_dist, realign, init: as for :class:`merging.Starlight`.
        batch_size (int, optional): examples per step for a data spec. (default: ``128``)
        resume (bool, optional): continue from ``state``. (default: ``False``)
        state (str or PathLike, optional): the training-state file. (default: next to ``out``)
        device (str or torch.device, optional): ``"cpu"``, ``"cuda"`` or ``"auto"``. (default: ``"cpu"``)
        seed (int, optional): seeds the draws, the shuffling and weight matching. (default: ``0``)
        solver (str, optional): weight matching's assignment solver, one of
            :func:`merging.list_solvers`. (default: ``"auto"``)
        progress (bool, optional): progress bars on stderr. (default: ``True``)

    Returns:
        StarlightResult: paths, the loss history, the evaluation and provenance.

    Raises:
        ValueError: fewer than two inputs, a bad output or state path, bad settings, data that
            does not fit the model, or nothing to resume from.

    Example:
        >>> r = starlight_checkpoints(["a.safetensors", "b.safetensors", "c.safetensors"], "star.safetensors",
        ...                           data="digits", epochs=5)  # doctest: +SKIP
    """
    fn = "starlight_checkpoints"
    t0 = time.perf_counter()
    paths = list(paths)
    if len(paths) < 2:
        raise ValueError(f"{fn}: needs at least two checkpoints, got {len(paths)}")
    out = Path(out)
    if not out.name.endswith(".safetensors") or out.name == ".safetensors":
        raise ValueError(f"{fn}: the output {out} must end in .safetensors")
    if out.is_dir():
        raise ValueError(f"{fn}: the output {out} is a directory; give a file name ending in .safetensors")
    check_not_input(out, paths)
    state_path = Path(state) if state is not None else state_path_for(out)
    check_not_input(state_path, paths)
    if state_path.resolve() == out.resolve():
        raise ValueError(f"{fn}: the state file {state_path} must differ from the output")
    if not state_path.parent.is_dir():
        raise ValueError(f"{fn}: the directory of the state file {state_path} does not exist")
    if resume and not state_path.is_file():
        raise ValueError(f"{fn}: --resume: there is no training state at {state_path} (start without --resume)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{fn}: batch_size must be a positive integer, got {batch_size!r}")
    tdist = parse_t_dist(t_dist)
    merging.resolve_solver(solver, caller=fn)
    dev = resolve_device(device)
    models, files = _load_many(paths, model, model_kwargs, input_shape, dev, fn)
    a = models[0]
    batches, test, data_label = _dataset(data, batch_size, seed, fn)
    check_data_fits(a, batches, data_label, dev, fn)
    structure = structure_of(a, batches)
    shape = input_shape_of(a, batches)
    plan = plan_dtypes([m.state for m in models], paths, fn)
    run = run_dtype(a)  # the star is trained in the model's dtype, and written in the first source's
    dtypes = {v.dtype for m in models for v in m.state.values() if v.is_floating_point()}
    notes = [f"sources are {'/'.join(sorted(str(d).removeprefix('torch.') for d in dtypes))}: trained in "
             f"{str(run).removeprefix('torch.')} (the model's dtype), written as the first source's dtype"
             ] if dtypes - {run} else []
    sources = [as_dtype({k: v.to(dev) for k, v in m.state.items()}, run) for m in models]

    sl = merging.Starlight(a.module, structure, epochs=epochs, lr=lr, momentum=momentum, schedule=schedule,
                           t_dist=tdist, realign=realign, init=init, seed=seed, solver=solver, device=dev,
                           checkpoint=state_path, progress=progress)
    start = 0
    if resume:
        try:
            start = int(torch.load(state_path, map_location="cpu", weights_only=True).get("epoch", 0))
        except Exception:  # noqa: BLE001 - reported by fit with its own message
            start = 0
    sl.fit(sources, batches, resume=resume)
    star = sl.star_
    for k, v in star.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ValueError(f"{fn}: the star's tensor {k!r} has NaN or Inf values; nothing was written to {out} "
                             f"(lower the learning rate)")
    evaluation = None
    if test is not None:
        ev = merging.evaluate(a.module, star, test, device=dev)
        evs = [merging.evaluate(a.module, s, test, device=dev) for s in sources]
        evaluation = {"star": {"loss": ev.loss, "accuracy": ev.accuracy},
                      "sources_mean": {"loss": sum(e.loss for e in evs) / len(evs),
                                       "accuracy": sum(e.accuracy for e in evs) / len(evs)},
                      "n": ev.n}


    record = provenance(
        "weightspace starlight", [file_record(p, fs) for p, fs in zip(paths, files)],
        method="starlight", epochs=sl.n_epochs_, lr=lr, momentum=momentum, schedule=schedule, batch_size=batch_size,
        t_dist=str(tdist), realign=realign, init=init, seed=seed, data=data_label,
        final_loss=sl.history_[-1] if sl.history_ else None)
    metadata = {MODEL_KEY: a.spec, PROVENANCE_KEY: json.dumps(record, sort_keys=True)}
    if shape is not None:
        metadata[INPUT_SHAPE_KEY] = ",".join(str(s) for s in shape)
    star = plan.finish({k: v.detach().cpu() for k, v in star.items()}, a.state)
    path = save(star, out, metadata=metadata, inputs=paths)
    return StarlightResult(path=path, state_path=state_path, epochs=sl.n_epochs_, resumed_from=start,
                           history=list(sl.history_), seconds=time.perf_counter() - t0, model=a.spec,
                           input_shape=shape, evaluation=evaluation, provenance=record, notes=tuple(notes))
