"""Writing a checkpoint whose tensors are produced one at a time: never all in memory.

:func:`save_streamed` lays the tensors out as :func:`weightspace.save` would (one
``.safetensors`` file, or shards of at most ``max_bytes`` plus a ``*.safetensors.index.json``),
asks ``produce(name)`` for each tensor as it writes it, and commits every file atomically
(:mod:`merging._atomic`, the package's one writer). The low-memory merge and mergekit-style
recipes write through it.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from merging._atomic import clean_stale

from .read import SAFETENSORS_DTYPES, CheckpointError, PathLike, brief_error
from .write import (_atomic, _check_overlap, _commit_replacing, _discard, _shard_file_names, _shard_names, _split_by_size,
                    _write_index)

__all__ = ["TensorEntry", "save_streamed", "writable_dtype"]

#: one tensor to write: ``(name, dtype, shape)``
TensorEntry = tuple[str, torch.dtype, tuple[int, ...]]

_ST_CODES = {v: k for k, v in SAFETENSORS_DTYPES.items()}


def save_streamed(entries: list[TensorEntry], produce: Callable[[str], Tensor], target: Path, *, kind: str,
                  max_bytes: int | None = None, metadata: Mapping[str, str] | None = None,
                  inputs: Iterable[PathLike] = (), progress: bool = False) -> Path:
    """Write the tensors ``entries`` names, each from ``produce(name)``, to ``target``.

    Args:
        entries (list of (name, dtype, shape)): the tensors, in file order.
        produce (callable): ``produce(name) -> Tensor`` of that dtype and shape (any device).
        target (Path): the ``.safetensors`` file, or the ``*.safetensors.index.json`` of a sharded
            checkpoint (its shards ``<stem>-0000i-of-0000N.safetensors`` go next to it).
        kind (str): ``"safetensors"`` or ``"sharded"`` (see :func:`output_layout`).
        max_bytes (int, optional): bytes per shard at most (``"sharded"``). (default: one shard)
        metadata (Mapping[str, str], optional): the safetensors metadata of every file.
        inputs (iterable of paths, optional): files that must not be overwritten.
        progress (bool, optional): a progress bar of tensors on stderr. (default: ``False``)

    Returns:
        ``target``.

    Raises:
        ValueError: a produced tensor of another dtype or shape than its entry (nothing is replaced).
        CheckpointError: an output that is one of ``inputs``, or a failed write (nothing is replaced).
    """
    groups = _split_by_size(((e, _nbytes(e)) for e in entries), max_bytes)
    if kind == "sharded":
        names = _shard_file_names(target, len(groups))
        paths = [target.parent / n for n in names]
    else:
        names, paths = [target.name], [target]
    _check_overlap("streaming_merge", [target, *paths], inputs)
    made_dir = not target.parent.exists()
    target.parent.mkdir(parents=True, exist_ok=True)
    if kind == "sharded":  # temporaries a killed merge left, for shards of any earlier split too
        clean_stale(target, _shard_names(target))
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(entries), desc="writing", unit="tensor", leave=False)
    done: list[tuple[str, Path]] = []
    try:
        for p, group in zip(paths, groups):
            done.append((_atomic(p, lambda f, g=group: _write_safetensors(f, g, produce, metadata, bar)), p))
        if kind == "sharded":
            done.append(_write_index(target, sum(_nbytes(e) for e in entries),
                                     {k: n for n, group in zip(names, groups) for k, _, _ in group}))
    except BaseException as e:
        _discard(done, target, made_dir)
        if isinstance(e, ValueError) or not isinstance(e, Exception):
            raise
        raise CheckpointError(f"streaming_merge: writing {target} failed, nothing was replaced: "
                              f"{brief_error(e)}") from e
    finally:
        if bar is not None:
            bar.close()
    _commit_replacing(done, kind, target, names)
    return target


def writable_dtype(dtype: torch.dtype) -> bool:
    """Whether :func:`save_streamed` can write tensors of ``dtype`` (safetensors has a code for it)."""
    return dtype in _ST_CODES


def _write_safetensors(tmp: str, entries: list[TensorEntry], produce: Callable[[str], Tensor],
                       metadata: Mapping[str, str] | None, bar: Any) -> None:
    """Write a ``.safetensors`` file whose tensors come one at a time from ``produce(name)``."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    off = 0
    for e in entries:
        k, dtype, shape = e
        nbytes = _nbytes(e)
        header[k] = {"dtype": _ST_CODES[dtype], "shape": list(shape), "data_offsets": [off, off + nbytes]}
        off += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(tmp, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for k, dtype, shape in entries:
            t = produce(k)
            if t.dtype != dtype or tuple(t.shape) != tuple(shape):
                raise ValueError(f"streaming_merge: {k!r} came out as {t.dtype} {tuple(t.shape)}, "
                                 f"expected {dtype} {tuple(shape)}")
            if t.numel():
                f.write(memoryview(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
            del t
            if bar is not None:
                bar.update(1)


def _nbytes(entry: TensorEntry) -> int:
    """The bytes of the tensor an entry names."""
    _, dtype, shape = entry
    n = torch.empty((), dtype=dtype).element_size()
    for s in shape:
        n *= int(s)
    return n
