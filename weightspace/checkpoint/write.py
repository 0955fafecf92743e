"""Writing checkpoints atomically: :func:`save` (safetensors, ``torch.save`` or sharded safetensors
with an index), the output layout, shard sizes, and the refusal to write over an input.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from merging._atomic import clean_stale, commit, write_temp

from .read import _PT_META, _TORCH_EXTS, Checkpoint, CheckpointError, PathLike, brief_error, _read_index, _resolve

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(size: int | str, path: Path) -> int:
    """Bytes of a shard size: an int, or a string such as ``"2GB"`` or ``"500MiB"`` (``path`` names
    the output in the error).

    Raises:
        CheckpointError: not a positive size.
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(size))
    unit = _UNITS.get(m.group(2).lower(), 0) if m else 0
    n = math.floor(float(m.group(1)) * unit) if m else 0
    if isinstance(size, bool) or n <= 0:
        raise CheckpointError(f"save: max_shard_size={size!r} for {path} is not a positive size; "
                              f"expected bytes or a string such as '2GB' or '500MiB'")
    return n


def _validate(state: object, metadata: object, path: Path, safetensors: bool) -> None:
    if not isinstance(state, Mapping):
        raise CheckpointError(f"save: cannot write {path}: state has type {type(state).__name__}, "
                              f"expected a dict of str -> torch.Tensor")
    for k, t in state.items():
        if not isinstance(k, str):
            raise CheckpointError(f"save: cannot write {path}: key {k!r} has type {type(k).__name__}, "
                                  f"expected str")
        if not isinstance(t, Tensor):
            raise CheckpointError(f"save: cannot write {path}: {k!r} has type {type(t).__name__}, "
                                  f"expected torch.Tensor; drop non-tensor entries first")
        if t.is_meta:
            raise CheckpointError(f"save: cannot write {path}: {k!r} is on the meta device (no data)")
        if safetensors and t.layout != torch.strided:
            raise CheckpointError(f"save: cannot write {path}: {k!r} has layout {t.layout}; "
                                  f"safetensors stores dense tensors: call .to_dense()")
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            raise CheckpointError(f"save: metadata for {path} has type {type(metadata).__name__}, "
                                  f"expected dict[str, str]")
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise CheckpointError(f"save: metadata[{k!r}] for {path} has type {type(v).__name__}, "
                                      f"expected str (keys too); use json.dumps for structured values")


def _prepare(state: Mapping[str, Tensor], untie: bool) -> dict[str, Tensor]:
    """Detached CPU tensors; for safetensors contiguous with no shared storage, else compact."""
    out, seen = {}, set()
    for k, t in state.items():
        t = t.detach().cpu()
        if untie:
            t = t.contiguous()
            ptr = t.untyped_storage().data_ptr()
            if ptr in seen and t.numel():
                t = t.clone()
            seen.add(ptr)
        elif t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()  # torch.save would write the whole (larger) storage of a view
        out[k] = t
    return out


def _atomic(path: Path, write: Callable[[str], None]) -> str:
    """Write a temporary file next to ``path`` with ``write`` and fsync it; return its name
    (:func:`merging._atomic.write_temp`: the package's one atomic writer)."""
    return str(write_temp(path, write))


def _commit(pairs: list[tuple[str, Path]]) -> None:
    commit(pairs)


def _shard_stem(target: Path) -> str:
    """The stem of the shards of the index ``target``: ``model`` for ``model.safetensors.index.json``."""
    return target.name[: -len(".safetensors.index.json")]


def _shard_names(target: Path) -> re.Pattern[str]:
    """The names a sharded save to index ``target`` writes: its shards (any count) and the index."""
    stem = re.escape(_shard_stem(target))
    return re.compile(rf"{stem}-\d{{5}}-of-\d{{5}}\.safetensors|{re.escape(target.name)}")


def _shard_file_names(target: Path, count: int) -> list[str]:
    """The file names of ``count`` shards of the index ``target``: ``<stem>-0000i-of-0000N.safetensors``."""
    stem = _shard_stem(target)
    return [f"{stem}-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def _split_by_size(sized: Iterable[tuple[Any, int]], limit: int | None) -> list[list[Any]]:
    """The items of ``(item, bytes)`` pairs in order, in consecutive groups of at most ``limit``
    bytes (an item larger than that gets a group of its own); one group without a limit."""
    groups: list[list[Any]] = [[]]
    size = 0
    for item, n in sized:
        if limit is not None and groups[-1] and size + n > limit:
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += n
    return groups


def _write_index(target: Path, total_size: int, weight_map: dict[str, str]) -> tuple[str, Path]:
    """Write the index of a sharded checkpoint to a temporary file; return it paired with ``target``."""
    index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    return _atomic(target, lambda f: Path(f).write_text(json.dumps(index, indent=2))), target


def _discard(done: list[tuple[str, Path]], target: Path, made_dir: bool) -> None:
    """Undo a failed write: remove the temporary files in ``done``, and ``target``'s folder if the
    write made it and it is still empty."""
    for tmp, _ in done:
        os.unlink(tmp)
    if made_dir and not any(target.parent.iterdir()):
        target.parent.rmdir()


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are one file or directory (by inode where both exist, else by resolved path)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def _check_overlap(fn: str, written: Iterable[Path], inputs: Iterable[PathLike]) -> None:
    files: list[Path] = []
    for p in inputs:
        try:
            entry, index, fs = _resolve(p, fn)
            files += [entry, *(_read_index(index, fn)[0] if index else fs)]
        except CheckpointError:
            files.append(Path(p))
    for w in written:
        for f in files:
            if same_file(w, f):
                raise CheckpointError(f"{fn}: refusing to overwrite input checkpoint {f} with the "
                                      f"output {w}; choose another output path")


def output_layout(path: Path, max_shard_size: int | str | None) -> tuple[str, Path]:
    """``("safetensors" | "torch" | "sharded", file or index path)``: how :func:`save` writes to ``path``
    (a ``*.safetensors.index.json`` or a directory, or any path with ``max_shard_size``, is sharded).

    Raises:
        CheckpointError: a path no layout fits (a sharded ``.pt``, an unknown extension).
    """
    if path.name.endswith(".index.json"):
        if not path.name.endswith(".safetensors.index.json"):
            raise CheckpointError(f"save: {path}: sharded output is written as safetensors; name the "
                                  f"index *.safetensors.index.json")
        return "sharded", path
    if path.is_dir() or (not path.suffix and not path.exists()):
        return "sharded", path / "model.safetensors.index.json"
    if path.suffix not in (".safetensors", *_TORCH_EXTS):
        raise CheckpointError(f"save: {path} has unknown extension {path.suffix!r}; expected .safetensors, "
                              f"{', '.join(_TORCH_EXTS)}, *.safetensors.index.json or a directory")
    if max_shard_size is not None:
        raise CheckpointError(f"save: max_shard_size needs a directory or a *.safetensors.index.json "
                              f"path, got {path}")
    return ("safetensors" if path.suffix == ".safetensors" else "torch"), path


def save(state: Mapping[str, Tensor], path: PathLike, *, metadata: Mapping[str, str] | None = None,
         max_shard_size: int | str | None = None, inputs: Iterable[PathLike] = ()) -> Path:
    """Write a state dict atomically.

    Args:
        state (Mapping[str, Tensor]): the tensors; everything is validated before a byte is written.
        path (str or PathLike): ``.safetensors``; ``.pt``/``.pth``/``.bin``/``.ckpt`` (``torch.save``);
            or a directory / ``*.safetensors.index.json`` for a sharded Hugging Face layout
            (``model-00001-of-0000N.safetensors`` plus the index).
        metadata (dict[str, str], optional): informative metadata; keys ``weightspace.*`` are
            reserved for the library's own records. In ``.pt`` files it is stored as
            ``{"state_dict": state, "weightspace_metadata": metadata}``, which :func:`load` reads back;
            without metadata a ``.pt`` file holds the plain state dict. (default: ``None``)
        max_shard_size (int or str, optional): bytes per shard (``"2GB"``, ``"500MiB"``); a tensor
            larger than this gets a shard of its own. (default: ``None``, one shard)
        inputs (iterable of paths, optional): checkpoints this one was made from; writing over
            any of them (or their shards) is refused. (default: ``()``)

    Returns:
        Path: the file written (the index for sharded output).

    Raises:
        CheckpointError: invalid state or metadata, unknown extension, bad ``max_shard_size``,
            output equal to an input, or a failed write (the previous file is left untouched).

    Example:
        >>> import tempfile, torch
        >>> out = tempfile.mkdtemp() + "/merged.safetensors"
        >>> path = save({"fc.weight": torch.ones(3, 2)}, out, metadata={"weightspace.model": "mlp"})
        >>> open_checkpoint(path).metadata
        {'weightspace.model': 'mlp'}
    """
    path = Path(path)
    kind, target = output_layout(path, max_shard_size)
    if isinstance(state, Checkpoint):
        state = {k: state[k] for k in state}  # read each lazily held tensor once
    _validate(state, metadata, path, safetensors=kind != "torch")
    meta = dict(metadata) if metadata is not None else None
    groups: list[list[str]] = [[]]  # the keys of each shard
    if kind == "sharded":
        limit = parse_size(max_shard_size, path) if max_shard_size is not None else None
        groups = _split_by_size(((k, t.numel() * t.element_size()) for k, t in state.items()), limit)
    names = _shard_file_names(target, len(groups))
    _check_overlap("save", [target, *(target.parent / n for n in names if kind == "sharded")], inputs)
    tensors = _prepare(state, untie=kind != "torch")
    made_dir = not target.parent.exists()
    target.parent.mkdir(parents=True, exist_ok=True)
    if kind == "sharded":  # temporaries a killed save left, for shards of any earlier split too
        clean_stale(target, _shard_names(target))
    done: list[tuple[str, Path]] = []
    try:
        if kind == "safetensors":
            done.append((_atomic(target, lambda f: save_file(tensors, f, metadata=meta)), target))
        elif kind == "torch":
            obj = {"state_dict": tensors, _PT_META: meta} if meta is not None else tensors
            done.append((_atomic(target, lambda f: torch.save(obj, f)), target))
        else:
            for name, keys in zip(names, groups):
                shard = {k: tensors[k] for k in keys}
                p = target.parent / name
                done.append((_atomic(p, lambda f, s=shard: save_file(s, f, metadata=meta)), p))
            done.append(_write_index(target, sum(t.numel() * t.element_size() for t in tensors.values()),
                                     {k: n for n, keys in zip(names, groups) for k in keys}))
    except BaseException as e:
        _discard(done, target, made_dir)
        if not isinstance(e, Exception):
            raise
        raise CheckpointError(f"save: writing {target} failed, nothing was replaced: {brief_error(e)}") from e
    _commit_replacing(done, kind, target, names)
    return target


def _commit_replacing(done: list[tuple[str, Path]], kind: str, target: Path, names) -> None:
    """Rename the written files into place, then delete the shards of an earlier, differently
    split save to the same index that the new one no longer names."""
    stale = []
    if kind == "sharded" and target.is_file():
        try:
            old = json.loads(target.read_text()).get("weight_map", {}).values()
            pattern = re.compile(rf"{re.escape(_shard_stem(target))}-\d{{5}}-of-\d{{5}}\.safetensors")
            stale = [target.parent / n for n in set(old) - set(names) if pattern.fullmatch(str(n))]
        except (OSError, ValueError, AttributeError):
            pass
    _commit(done)
    for p in stale:
        p.unlink(missing_ok=True)

