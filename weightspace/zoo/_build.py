"""The build loop shared by every zoo kind: shards assigned to this worker, skipped when done."""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from ._metrics import Row, parse_shard_spec, worker_shards
from .zoo_card import ZooCard
from .zoo_writer import ZooWriter

ShardFn = Callable[[int, range], tuple[dict[str, Tensor], list[Row]]]


@dataclass
class ZooBuildResult:
    """What one ``zoo build`` (one worker) did.

    Attributes:
        root (Path): the zoo directory.
        card (ZooCard): its card.
        worker (tuple[int, int]): ``(i, N)`` of ``--shard i/N``.
        shards (list[int]): the shards of this worker.
        built (list[int]): shards trained and written by this call.
        skipped (list[int]): shards found complete on disk and kept.
        models_built (int): models in ``built``.
        seconds (float): wall time of the call.
        train_seconds (float): time spent training and evaluating (writing excluded; with
            several worker processes, the wall time of the workers).
    """

    root: Path
    card: ZooCard
    worker: tuple[int, int]
    shards: list[int]
    built: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    models_built: int = 0
    seconds: float = 0.0
    train_seconds: float = 0.0

    @property
    def models_per_second(self) -> float:
        return self.models_built / self.train_seconds if self.train_seconds > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"root": str(self.root), "worker": list(self.worker), "shards": self.shards, "built": self.built,
                "skipped": self.skipped, "models_built": self.models_built, "seconds": round(self.seconds, 3),
                "train_seconds": round(self.train_seconds, 3), "n_models": self.card.n_models,
                "n_shards": self.card.n_shards, "task": self.card.task}


def run_build(out: str | os.PathLike, card: ZooCard, shard: str | tuple[int, int] | None, train_shard: ShardFn, *,
              progress: bool = True, on_shard: Callable[[int], None] | None = None, desc: str = "zoo",
              paced: bool = False) -> ZooBuildResult:
    """Build the shards of this worker that are not on disk yet.

    Args:
        out: the zoo directory.
        card: its card.
        shard: ``"i/N"``: this worker builds the shards ``s`` with ``s % N == i``.
        train_shard: ``(shard, model_ids) -> (tensors, rows)``.
        progress: progress bar on stderr.
        on_shard: called with each shard index once it is safely on disk (tests use it to
            stop a build half way).
        paced: ``train_shard`` takes a third argument, ``on_pace(seconds)``, which it calls
            early in a shard with the seconds the shard should take. With ``progress``, one
            line on stderr says how long this worker's shards should take at that pace (or
            at the first shard's, when it never calls it).
    """
    t0 = time.perf_counter()
    worker = parse_shard_spec(shard)
    mine = worker_shards(card.n_shards, *worker)
    writer = ZooWriter(out, card)
    done = writer.open(mine)
    result = ZooBuildResult(Path(out), card, worker, mine, skipped=sorted(done))
    todo = [s for s in mine if s not in done]
    n_todo = sum(len(card.shard_models(s)) for s in todo)
    bar = tqdm(total=n_todo, desc=desc, unit="model", file=sys.stderr, disable=not progress or not todo,
               dynamic_ncols=True)
    estimated = not progress or not todo

    def estimate(shard_seconds: float, ids: range) -> None:
        nonlocal estimated
        if not estimated:
            estimated = True
            bar.write(f"{desc}: about {format_duration(shard_seconds * n_todo / max(1, len(ids)))} for "
                      f"{n_todo} models at this pace", file=sys.stderr)

    try:
        for s in todo:
            ids = card.shard_models(s)
            t = time.perf_counter()
            if paced:
                tensors, rows = train_shard(s, ids, lambda sec, ids=ids: estimate(sec, ids))
            else:
                tensors, rows = train_shard(s, ids)
            if not estimated and s != todo[-1]:
                estimate(time.perf_counter() - t, ids)
            estimated = True
            result.train_seconds += time.perf_counter() - t
            writer.write_shard(s, tensors, rows)
            result.built.append(s)
            result.models_built += len(ids)
            bar.update(len(ids))
            if on_shard is not None:
                on_shard(s)
    finally:
        bar.close()
        result.seconds = time.perf_counter() - t0
    return result


def format_duration(seconds: float) -> str:
    """``"40 s"``, ``"12 min"``, ``"3.5 h"``: a rough duration."""
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    if seconds < 3600:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def build_in_workers(build: Callable[..., ZooBuildResult], kwargs: dict[str, Any], workers: int, *,
                     shard: str | tuple[int, int] | None, n_shards: int | None, progress: bool,
                     on_shard: Callable[[int], None] | None, desc: str) -> ZooBuildResult:
    """``build(**kwargs)`` in ``workers`` processes at once, worker ``i`` building ``--shard i/N``.

    Each process gets ``cpu_count // workers`` torch threads. Tiny models use one core badly
    (torch's kernels are too small to split), so on a CPU one process per core builds about
    ``workers`` times as fast as one process with all the threads. The workers share the zoo
    directory as independent ``--shard`` workers do (each shard written atomically,
    ``metrics.csv`` under a lock), so a killed run resumes like any other. ``on_shard`` is
    called here, in this process, as the workers report shards on disk.
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from queue import Empty

    if shard is not None and parse_shard_spec(shard) != (0, 1):
        raise ValueError("zoo: give workers or shard, not both (workers=N runs the shards i/N itself)")
    t0 = time.perf_counter()
    ctx = mp.get_context("spawn")  # no fork of a process that may hold CUDA or OpenMP state
    threads = max(1, (os.cpu_count() or 1) // workers)
    bar = tqdm(total=n_shards, desc=desc, unit="shard", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    try:
        with ctx.Manager() as manager, ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            queue = manager.Queue()
            # the workers start from this process's grouped-convolution choices (the same path for
            # the same sizes, so the shards equal those this process would train)
            from ._grouped_conv import CHOICES
            futures = [pool.submit(_worker, build, kwargs, f"{i}/{workers}", threads, queue, dict(CHOICES))
                       for i in range(workers)]

            def drain(timeout: float) -> None:
                try:
                    while True:
                        s = queue.get(timeout=timeout)
                        if progress and bar.n == 0 and n_shards:  # the first shard: the pace of them all
                            rounds = -(-n_shards // workers)
                            bar.write(f"{desc}: about {format_duration((time.perf_counter() - t0) * rounds)} for "
                                      f"{n_shards} shards in {workers} processes at this pace", file=sys.stderr)
                        bar.update(1)
                        if on_shard is not None:
                            on_shard(s)
                except Empty:
                    pass

            while not all(f.done() for f in futures):
                drain(0.2)
            drain(0.0)
            results = [f.result() for f in futures]  # a worker's error is raised here
    finally:
        bar.close()
    wall = time.perf_counter() - t0
    first = results[0]
    return ZooBuildResult(first.root, first.card, (0, 1), sorted(s for r in results for s in r.shards),
                          built=sorted(s for r in results for s in r.built),
                          skipped=sorted(s for r in results for s in r.skipped),
                          models_built=sum(r.models_built for r in results), seconds=wall, train_seconds=wall)


def _worker(build: Callable[..., ZooBuildResult], kwargs: dict[str, Any], shard: str, threads: int,
            queue: Any, choices: dict[tuple, str] | None = None) -> ZooBuildResult:
    torch.set_num_threads(threads)
    if choices:
        from ._grouped_conv import CHOICES
        CHOICES.update(choices)
    return build(**kwargs, shard=shard, progress=False, on_shard=queue.put)


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA if available else CPU; refuses CUDA where there is none."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"zoo: unknown device {device!r}; use cpu, cuda or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"zoo: device {device!r} asked for, but CUDA is not available")
    return dev


def check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"zoo: {name} must be a positive integer, got {value!r}")
    return value


def check_range(r: Any, name: str, *, low: float = 0.0, positive: bool = False) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in r)
    except (TypeError, ValueError):
        raise ValueError(f"zoo: {name} must be a pair (low, high), got {r!r}") from None
    if not (a <= b) or a < low or (positive and a <= 0) or b != b or a != a:
        raise ValueError(f"zoo: {name} must satisfy {'0 <' if positive else f'{low} <='} low <= high, got {r!r}")
    return a, b
