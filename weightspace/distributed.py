"""Data-parallel training under ``torchrun``: the process group from the launcher's environment,
sharded prediction and reductions.

``torchrun --nproc_per_node K`` (or any launcher that sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``) starts ``K`` copies of a script;
:func:`distributed_context` turns that environment into a :class:`DistContext` and joins the
process group (``gloo`` on the CPU, ``nccl`` on CUDA). Without those variables it returns the
single-process context, so the same code runs both ways.

    torchrun --nproc_per_node 2 -m weightspace.cli metanet train zoo -o m.pt --device cpu
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["DistContext", "distributed_context"]

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass
class DistContext:
    """Where this process stands in a data-parallel job.

    Attributes:
        rank (int): this process, ``0 .. world_size - 1``. (default: ``0``)
        world_size (int): processes in the job. (default: ``1``)
        local_rank (int): this process on its machine (picks its GPU). (default: ``0``)
        backend (str, optional): ``"gloo"`` or ``"nccl"`` when distributed.
        owns_group (bool): this context created the process group (and :meth:`close` ends it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints, metrics and progress bars."""
        return self.rank == 0

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` in :class:`~torch.nn.parallel.DistributedDataParallel` (itself when single-process)."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index if device.index is not None else self.local_rank] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def all_reduce_sum(self, values: list[float], device: torch.device) -> list[float]:
        """Sums of ``values`` over every process (the values themselves when single-process)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu().tolist()

    def shard(self, n: int) -> range:
        """The rows ``rank, rank + K, ...`` of ``n`` that this process handles in :meth:`gather_rows`."""
        return range(self.rank, n, self.world_size)

    def gather_rows(self, local: Tensor, n: int, device: torch.device) -> Tensor:
        """Reassemble rows computed by every process on its :meth:`shard` of ``n`` rows.

        Args:
            local (Tensor): ``(len(shard(n)), *F)``, this process's rows in order.
            n (int): rows in all.

        Returns:
            Tensor: ``(n, *F)`` on the CPU, identical on every process.
        """
        if not self.enabled:
            return local.cpu()
        K = self.world_size
        per = -(-n // K)
        feat = tuple(local.shape[1:])
        pad = torch.zeros(per, *feat, dtype=local.dtype, device=device)
        pad[:len(local)] = local.to(device)
        parts = [torch.empty_like(pad) for _ in range(K)]
        dist.all_gather(parts, pad)
        out = torch.empty(n, *feat, dtype=local.dtype)
        for r, part in enumerate(parts):
            m = len(range(r, n, K))
            out[r::K] = part[:m].cpu()
        return out

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        """End the process group if this context started it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def _env_int(name: str) -> int:
    raw = os.environ.get(name)
    try:
        return int(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"distributed: environment variable {name}={raw!r} is not an integer; launch "
                         f"with torchrun, which sets {', '.join(_ENV)}") from None


def distributed_context(device: torch.device) -> tuple[DistContext, torch.device]:
    """The data-parallel context from the environment, and this process's device.

    Reads ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (as ``torchrun`` sets them). With
    ``WORLD_SIZE`` missing or 1, returns the single-process context and ``device`` as given.
    Otherwise joins the default process group (unless one exists already) with ``gloo`` for
    a CPU ``device`` or ``nccl`` for CUDA, and maps ``cuda`` to ``cuda:LOCAL_RANK``.

    Raises:
        ValueError: malformed variables, a rank out of range, or CUDA asked for with fewer
            GPUs than local ranks.
    """
    if "WORLD_SIZE" not in os.environ or _env_int("WORLD_SIZE") <= 1:
        return DistContext(), device
    world = _env_int("WORLD_SIZE")
    rank = _env_int("RANK")
    local = _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else rank
    if not 0 <= rank < world:
        raise ValueError(f"distributed: RANK={rank} is outside 0..{world - 1} (WORLD_SIZE={world})")
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ValueError(f"distributed: LOCAL_RANK={local} but only {torch.cuda.device_count()} GPUs are "
                             f"visible; start at most that many processes per machine")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world)
        owns = True
    ctx = DistContext(rank=rank, world_size=world, local_rank=local, backend=dist.get_backend(), owns_group=owns)
    return ctx, device
