"""Checkpoint I/O: read and write state dicts as ``.safetensors``, ``.pt``/``.pth``/``.bin``
and sharded Hugging Face checkpoints (``*.index.json``), eagerly or one tensor at a time.

Pickled files are always read with ``torch.load(..., weights_only=True)``, so a pickle that
carries code is refused, never run. Writes are atomic: each file goes to a temporary file in
the target directory (``.<name>.weightspace-tmp-<pid>-<random>@<host>``), is fsynced, then
renamed over the target with :func:`os.replace`; temporaries left by killed processes are
removed by the next write of the same target (see :mod:`merging._atomic`).
Every error is a single-line :class:`CheckpointError` naming the function and the file.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from merging._atomic import clean_stale, commit, write_temp

__all__ = ["CheckpointError", "CheckpointInfo", "Checkpoint", "load", "open_checkpoint", "save",
           "load_into", "check_fits", "check_finite", "check_not_input", "check_output"]

PathLike = str | os.PathLike
logger = logging.getLogger(__name__)

#: Keys under which training checkpoints keep the model's state dict, tried in this order.
STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "module", "net", "network",
                   "ema", "model_ema", "ema_state_dict", "params", "weights")
_TORCH_EXTS = (".pt", ".pth", ".bin", ".ckpt")
_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP and torch.compile wrappers
_PT_META = "weightspace_metadata"
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
              "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
              "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool, "C64": torch.complex64}


class CheckpointError(ValueError):
    """A checkpoint cannot be read, written or fitted to a model (bad input: CLI exit status 2)."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What was found when a checkpoint was opened.

    Args:
        path (Path): the file, or the ``*.index.json`` of a sharded checkpoint, that was read.
        format (str): ``"safetensors"`` or ``"torch"`` (pickled, read with ``weights_only``).
        files (tuple[Path, ...]): the data files (several for a sharded checkpoint).
        index (Path, optional): the ``*.index.json`` of a sharded checkpoint, else ``None``.
        key_used (str, optional): the key of a training checkpoint the state dict sat under,
            dotted when nested (``"model.state_dict"``), else ``None``.
        stripped_prefix (str, optional): the wrapper prefix removed from every key (``"module."``).
        metadata (dict[str, str]): the file's metadata (informative only).
        ignored (tuple[str, ...]): non-tensor entries skipped in the state dict.
    """

    path: Path
    format: str
    files: tuple[Path, ...]
    index: Path | None = None
    key_used: str | None = None
    stripped_prefix: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    ignored: tuple[str, ...] = ()


def _brief(e: BaseException) -> str:
    """The gist of a library exception as one short line."""
    m = re.search(r"GLOBAL (\S+)", str(e))
    text = f"unsupported GLOBAL {m.group(1)}" if m else (str(e).strip().splitlines() or [""])[0]
    text = text.split(". ")[0].strip()
    return f"{type(e).__name__}: {text[:200]}"


def _shape(shape: Iterable[int]) -> str:
    return str(tuple(int(s) for s in shape))


def _keys_list(keys: Iterable[Any], limit: int = 10) -> str:
    keys = list(keys)
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return repr(keys[:limit])[:-1] + "]" + more if keys else "[]"


def _resolve(path: PathLike, fn: str) -> tuple[Path, Path | None, list[Path]]:
    """Find the data files of a checkpoint: ``(entry, index or None, files)``."""
    p = Path(path)
    if p.is_dir():
        names = ["model.safetensors.index.json", "model.safetensors",
                 "pytorch_model.bin.index.json", "pytorch_model.bin"]
        found = [p / n for n in names if (p / n).is_file()]
        found = found or sorted(p.glob("*.index.json")) or sorted(p.glob("*.safetensors"))
        if len(found) == 0 or (len(found) > 1 and found[0].name not in names):
            listing = _keys_list(sorted(x.name for x in p.iterdir()))
            raise CheckpointError(f"{fn}: directory {p} holds no single checkpoint: expected "
                                  f"model.safetensors(.index.json), pytorch_model.bin(.index.json) "
                                  f"or one *.index.json, found {listing}")
        p = found[0]
    if not p.is_file():
        raise CheckpointError(f"{fn}: no such file: {p}")
    if p.name.endswith(".index.json"):
        return p, p, []  # shards are listed by _read_index
    if p.suffix not in (".safetensors", *_TORCH_EXTS):
        raise CheckpointError(f"{fn}: {p} has unknown extension {p.suffix!r}; expected .safetensors, "
                              f"{', '.join(_TORCH_EXTS)}, *.index.json or a directory")
    return p, None, [p]


def _read_index(index: Path, fn: str) -> tuple[list[Path], dict[str, tuple[int, str]]]:
    """Parse a Hugging Face ``*.index.json``: the shard files and key -> (shard, key)."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError(f"weight_map is a {type(weight_map).__name__}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{fn}: {index} is not a valid index: expected JSON with a "
                              f"'weight_map' object ({_brief(e)})") from e
    files: dict[Path, int] = {}
    where: dict[str, tuple[int, str]] = {}
    for k, name in weight_map.items():
        shard = index.parent / str(name)
        if shard not in files:
            if Path(str(name)).is_absolute() or ".." in Path(str(name)).parts:
                raise CheckpointError(f"{fn}: shard {name!r} named in {index} lies outside its directory")
            if not shard.is_file():
                raise CheckpointError(f"{fn}: shard {name!r} named in {index} (for {k!r}) does not exist")
            if shard.suffix not in (".safetensors", *_TORCH_EXTS):
                raise CheckpointError(f"{fn}: shard {name!r} named in {index} has unknown extension")
            files[shard] = len(files)
        where[k] = (files[shard], k)
    return list(files), where


def _torch_load(path: Path, fn: str, device: str, mmap: bool) -> Any:
    mmap = mmap and zipfile.is_zipfile(path)  # legacy (non-zip) files cannot be memory-mapped
    try:
        return torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except Exception as e:
        if "Weights only load failed" in str(e):
            raise CheckpointError(f"{fn}: {path} holds pickled code or objects that weights_only=True "
                                  f"refuses to load ({_brief(e)}); re-save only the state dict, or "
                                  f"use .safetensors") from e
        raise CheckpointError(f"{fn}: {path} is not a readable PyTorch checkpoint (truncated or "
                              f"corrupt?): {_brief(e)}") from e


def _extract(obj: Any, path: Path, fn: str, key: str | None, depth: int = 0
             ) -> tuple[dict[str, Tensor], str | None, tuple[str, ...]]:
    """Find the state dict in an unpickled object: ``(state, key_used, ignored)``."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{fn}: {path} holds a {type(obj).__name__}, expected a dict of tensors")
    top = _keys_list(obj.keys())
    if key is not None:  # an exact key, else a dotted path such as "model.state_dict"
        head, rest = (key, "") if key in obj else key.partition(".")[::2]
        if head not in obj:
            raise CheckpointError(f"{fn}: key {key!r} not found in {path}; top-level keys: {top}")
        state, _, ignored = _extract(obj[head], path, fn, rest or None, 99)
        return state, key, ignored
    is_tensor = {k: isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()}
    if not all(is_tensor.values()) and depth < 2:
        for k in STATE_DICT_KEYS:
            v = obj.get(k)
            if isinstance(v, Mapping) and any(isinstance(x, (Tensor, Mapping)) for x in v.values()):
                try:
                    state, used, ignored = _extract(v, path, fn, None, depth + 1)
                except CheckpointError:
                    continue
                return state, ".".join(filter(None, [k, used])), ignored
    if obj and not any(is_tensor.values()):
        raise CheckpointError(f"{fn}: {path} has no recognizable state dict (no tensors, and no key such "
                              f"as 'state_dict' or 'model' holding them); top-level keys: {top}; "
                              f"pass key=... to choose one")
    ignored = tuple(str(k) for k, ok in is_tensor.items() if not ok)
    if ignored:
        warnings.warn(f"{fn}: ignored {len(ignored)} non-tensor entries in {path}: {_keys_list(ignored)}",
                      stacklevel=2)
    return {k: v for k, v in obj.items() if is_tensor[k]}, None, ignored


class Checkpoint(Mapping[str, Tensor]):
    """A read-only, lazily loaded ``Mapping[str, Tensor]`` over a checkpoint; see :func:`open_checkpoint`."""

    def __init__(self, path: PathLike, *, device: str | torch.device = "cpu", key: str | None = None,
                 mmap: bool = True, _fn: str = "open_checkpoint", _lazy: bool = True) -> None:
        self._fn, self._lazy = _fn, _lazy
        self._headers: dict[int, tuple[int, dict[str, Any]]] | None = None if mmap else {}
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise CheckpointError(f"{_fn}: unknown device {device!r} for {path}") from e
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise CheckpointError(f"{_fn}: device {device!r} asked for {path}, but CUDA is not available")
        self._device = str(dev)
        entry, index, files = _resolve(path, _fn)
        where: dict[str, tuple[int, str]] = {}
        if index is not None:
            files, where = _read_index(index, _fn)
        self._files = files
        self._open_files: dict[int, tuple[Any, Any]] = {}  # file -> (handle or state, its keys)
        fmt = "safetensors" if ".safetensors" in (files[0] if files else entry).name else "torch"
        if key is not None and (fmt != "torch" or index is not None):
            raise CheckpointError(f"{_fn}: key={key!r} applies to a single pickled training checkpoint, "
                                  f"not to {entry}")
        key_used, ignored, metadata = None, (), {}
        if not files:
            pass
        elif index is None and fmt == "torch":
            obj = _torch_load(files[0], _fn, "cpu" if _lazy else self._device, _lazy)
            if isinstance(obj, Mapping) and isinstance(obj.get(_PT_META), Mapping):
                metadata = {str(k): str(v) for k, v in obj[_PT_META].items()}
            state, key_used, ignored = _extract(obj, files[0], _fn, key)
            self._open_files[0] = (state, state)
            where = {k: (0, k) for k in state}
        elif fmt == "safetensors":
            handle = self._open(0)[0]
            metadata = dict(handle.metadata() or {})
            if index is None:
                where = {k: (0, k) for k in handle.keys()}
        prefix = ""
        for p in _PREFIXES:
            while where and all(k.startswith(prefix + p) for k in where):
                prefix += p
        if prefix:
            where = {k[len(prefix):]: v for k, v in where.items()}
        self._where = where
        self.info = CheckpointInfo(path=entry, format=fmt, files=tuple(files), index=index,
                                   key_used=key_used, stripped_prefix=prefix or None,
                                   metadata=metadata, ignored=ignored)
        if key_used:
            logger.info("%s: %s: state dict found under key %r", _fn, entry, key_used)
        if prefix:
            logger.info("%s: %s: stripped prefix %r from every key", _fn, entry, prefix)

    def _open(self, i: int) -> tuple[Any, Any]:
        """File ``i`` opened: ``(safe_open handle or unpickled state dict, its keys)``."""
        if i not in self._open_files:
            f = self._files[i]
            if f.suffix == ".safetensors":
                try:
                    handle = safe_open(str(f), framework="pt", device=self._device)
                except (SafetensorError, OSError) as e:
                    raise CheckpointError(f"{self._fn}: {f} is not a valid safetensors file "
                                          f"(truncated or corrupt header?): {_brief(e)}") from e
                self._open_files[i] = (handle, set(handle.keys()))
                if self._headers is not None:  # read with plain file reads, not through the memory map
                    self._headers[i] = _st_header(f)
            else:
                obj = _torch_load(f, self._fn, "cpu" if self._lazy else self._device, self._lazy)
                state = _extract(obj, f, self._fn, None)[0]
                self._open_files[i] = (state, state)
        return self._open_files[i]

    def _locate(self, name: str) -> tuple[Any, Path, str]:
        if name not in self._where:
            raise KeyError(f"{name!r} is not in {self.info.path} ({len(self)} tensors)")
        i, stored = self._where[name]
        handle, keys = self._open(i)
        if stored not in keys:
            raise CheckpointError(f"{self._fn}: {name!r} is listed in {self.info.index} "
                                  f"but missing from shard {self._files[i]}")
        return handle, self._files[i], stored

    def __getitem__(self, name: str) -> Tensor:
        handle, f, stored = self._locate(name)
        if isinstance(handle, Mapping):
            return handle[stored].to(self._device) if self._lazy else handle[stored]
        i = self._where[name][0]
        if self._headers is not None and _ST_DTYPES.get(self._headers[i][1][stored]["dtype"]) is not None:
            return _st_pread(f, *self._headers[i], stored, self._fn).to(self._device)
        try:
            return handle.get_tensor(stored)
        except SafetensorError as e:
            raise CheckpointError(f"{self._fn}: cannot read {name!r} from {f}: {_brief(e)}") from e

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, name: object) -> bool:
        return name in self._where

    @property
    def metadata(self) -> dict[str, str]:
        """The checkpoint's metadata (``dict[str, str]``, informative only)."""
        return dict(self.info.metadata)

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of tensor ``name``, read from the header (safetensors) or a memory map (torch)."""
        handle, _, stored = self._locate(name)
        if isinstance(handle, Mapping):
            return tuple(handle[stored].shape)
        return tuple(handle.get_slice(stored).get_shape())

    def dtype(self, name: str) -> torch.dtype:
        """The dtype of tensor ``name``, without loading its data where the format allows."""
        handle, _, stored = self._locate(name)
        if isinstance(handle, Mapping):
            return handle[stored].dtype
        code = handle.get_slice(stored).get_dtype()
        return _ST_DTYPES.get(code) or self[name].dtype

    def close(self) -> None:
        """Release open files and memory maps (tensors already returned stay valid)."""
        for h, _ in self._open_files.values():
            if not isinstance(h, Mapping):
                h.__exit__(None, None, None)
        self._open_files.clear()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.info.path)!r}, {len(self)} tensors, format={self.info.format!r})"


def open_checkpoint(path: PathLike, *, device: str | torch.device = "cpu",
                    key: str | None = None, mmap: bool = True) -> Checkpoint:
    """Open a checkpoint for lazy, one-tensor-at-a-time reading.

    Args:
        path (str or PathLike): a ``.safetensors``, ``.pt``/``.pth``/``.bin``/``.ckpt`` file,
            a ``*.index.json`` of a sharded checkpoint, or a directory holding one.
        device (str or torch.device, optional): where returned tensors live. (default: ``"cpu"``)
        key (str, optional): the key of a training checkpoint holding the state dict, dotted when
            nested; found automatically when left out (see ``STATE_DICT_KEYS``). (default: ``None``)
        mmap (bool, optional): read safetensors tensors through ``safe_open``'s memory map. With
            ``False`` each tensor is read with plain file reads instead: the pages of a memory map
            stay resident (and count in the process's RSS) until the file is closed, so streaming
            through a checkpoint larger than memory needs ``False``. (default: ``True``)

    Returns:
        Checkpoint: a read-only ``Mapping[str, Tensor]``. ``ckpt[name]`` reads one tensor
        (``safe_open`` for safetensors, across shards; ``torch.load(mmap=True)`` for zip-format
        pickles); ``ckpt.shape(name)`` and ``ckpt.dtype(name)`` read no tensor data;
        ``ckpt.metadata`` and ``ckpt.info`` (:class:`CheckpointInfo`) describe what was found.
        A ``module.`` prefix is stripped when every key has it. Use it as a context manager.

    Raises:
        CheckpointError: missing file or shard, unknown extension, truncated or corrupt file,
            a pickle with code in it, or no recognizable state dict.

    Example:
        >>> import tempfile, torch
        >>> path = save({"fc.weight": torch.ones(3, 2)}, tempfile.mkdtemp() + "/m.safetensors")
        >>> with open_checkpoint(path) as ckpt:
        ...     print(list(ckpt), ckpt.shape("fc.weight"), ckpt["fc.weight"].sum().item())
        ['fc.weight'] (3, 2) 6.0
    """
    return Checkpoint(path, device=device, key=key, mmap=mmap)


def _st_header(f: Path) -> tuple[int, dict[str, Any]]:
    """``(offset of the data, header)`` of a safetensors file that ``safe_open`` accepted."""
    with open(f, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        return 8 + n, json.loads(fh.read(n))


def _st_pread(f: Path, start: int, header: dict[str, Any], stored: str, fn: str) -> Tensor:
    """Tensor ``stored`` of safetensors file ``f``, read into fresh memory (no memory map)."""
    entry = header[stored]
    begin, end = entry["data_offsets"]
    buf = torch.empty(end - begin, dtype=torch.uint8)
    with open(f, "rb", buffering=0) as fh:
        fh.seek(start + begin)
        got = fh.readinto(memoryview(buf.numpy())) if end > begin else 0
    if got != end - begin:
        raise CheckpointError(f"{fn}: cannot read {stored!r} from {f}: the file ends {end - begin - got} "
                              f"bytes early (truncated?)")
    return buf.view(_ST_DTYPES[entry["dtype"]]).reshape(entry["shape"])


@overload
def load(path: PathLike, *, device: str | torch.device = ..., key: str | None = ...,
         return_info: Literal[False] = ...) -> dict[str, Tensor]: ...


@overload
def load(path: PathLike, *, device: str | torch.device = ..., key: str | None = ...,
         return_info: Literal[True]) -> tuple[dict[str, Tensor], CheckpointInfo]: ...


def load(path: PathLike, *, device: str | torch.device = "cpu", key: str | None = None,
         return_info: bool = False) -> dict[str, Tensor] | tuple[dict[str, Tensor], CheckpointInfo]:
    """Read a whole checkpoint into a state dict.

    Args:
        path (str or PathLike): as for :func:`open_checkpoint`.
        device (str or torch.device, optional): where the tensors go. (default: ``"cpu"``)
        key (str, optional): as for :func:`open_checkpoint`. (default: ``None``)
        return_info (bool, optional): also return the :class:`CheckpointInfo` (key used,
            stripped prefix, metadata, format, files). (default: ``False``)

    Returns:
        dict[str, Tensor], or ``(state, info)`` when ``return_info`` is true. Files written by
        :func:`save` as ``.pt`` with metadata (``{"state_dict": ..., "weightspace_metadata": ...}``)
        give back the plain state dict, with the metadata in ``info.metadata``.

    Raises:
        CheckpointError: as for :func:`open_checkpoint`.

    Example:
        >>> import tempfile, torch
        >>> path = tempfile.mkdtemp() + "/last.ckpt"
        >>> torch.save({"epoch": 3, "state_dict": {"fc.bias": torch.zeros(2)}}, path)
        >>> state, info = load(path, return_info=True)
        >>> state, info.key_used
        ({'fc.bias': tensor([0., 0.])}, 'state_dict')
    """
    with Checkpoint(path, device=device, key=key, _fn="load", _lazy=False) as ckpt:
        state = {k: ckpt[k] for k in ckpt}
        return (state, ckpt.info) if return_info else state


def _parse_size(size: int | str, path: Path) -> int:
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


def _shard_names(target: Path) -> re.Pattern[str]:
    """The names a sharded save to index ``target`` writes: its shards (any count) and the index."""
    stem = re.escape(target.name[: -len(".safetensors.index.json")])
    return re.compile(rf"{stem}-\d{{5}}-of-\d{{5}}\.safetensors|{re.escape(target.name)}")


def _same(a: Path, b: Path) -> bool:
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
            if _same(w, f):
                raise CheckpointError(f"{fn}: refusing to overwrite input checkpoint {f} with the "
                                      f"output {w}; choose another output path")


def _layout(path: Path, max_shard_size: int | str | None) -> tuple[str, Path]:
    """``("safetensors" | "torch" | "sharded", file or index path)`` for an output ``path``."""
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
    kind, target = _layout(path, max_shard_size)
    if isinstance(state, Checkpoint):
        state = {k: state[k] for k in state}  # read each lazily held tensor once
    _validate(state, metadata, path, safetensors=kind != "torch")
    meta = dict(metadata) if metadata is not None else None
    groups: list[list[str]] = [[]]  # the keys of each shard
    if kind == "sharded":
        limit = _parse_size(max_shard_size, path) if max_shard_size is not None else None
        size = 0
        for k, t in state.items():
            n = t.numel() * t.element_size()
            if limit is not None and groups[-1] and size + n > limit:
                groups.append([])
                size = 0
            groups[-1].append(k)
            size += n
    stem = target.name[: -len(".safetensors.index.json")]
    names = [f"{stem}-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
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
            index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
                     "weight_map": {k: n for n, keys in zip(names, groups) for k in keys}}
            done.append((_atomic(target, lambda f: Path(f).write_text(json.dumps(index, indent=2))), target))
    except BaseException as e:
        for tmp, _ in done:
            os.unlink(tmp)
        if made_dir and not any(target.parent.iterdir()):
            target.parent.rmdir()
        if not isinstance(e, Exception):
            raise
        raise CheckpointError(f"save: writing {target} failed, nothing was replaced: {_brief(e)}") from e
    _commit_replacing(done, kind, target, names)
    return target


def _commit_replacing(done: list[tuple[str, Path]], kind: str, target: Path, names) -> None:
    """Rename the written files into place, then delete the shards of an earlier, differently
    split save to the same index that the new one no longer names."""
    stale = []
    if kind == "sharded" and target.is_file():
        stem = target.name[: -len(".safetensors.index.json")]
        try:
            old = json.loads(target.read_text()).get("weight_map", {}).values()
            pattern = re.compile(rf"{re.escape(stem)}-\d{{5}}-of-\d{{5}}\.safetensors")
            stale = [target.parent / n for n in set(old) - set(names) if pattern.fullmatch(str(n))]
        except (OSError, ValueError, AttributeError):
            pass
    _commit(done)
    for p in stale:
        p.unlink(missing_ok=True)


def check_not_input(out: PathLike, inputs: Iterable[PathLike]) -> None:
    """Raise if writing ``out`` would overwrite one of ``inputs`` (their shards included).

    Args:
        out (str or PathLike): the output path as given to :func:`save`.
        inputs (iterable of paths): checkpoint files, index files or directories.

    Raises:
        CheckpointError: when ``out`` (or the index or shards it would write) resolves to the
            same file as an input, through symlinks and hard links too.

    Example:
        >>> check_not_input("merged.safetensors", ["a.safetensors", "b.safetensors"])
    """
    out = Path(out)
    kind, target = _layout(out, None)
    written = [target]
    if kind == "sharded" and target.parent.is_dir():
        written += list(target.parent.glob("*-of-*.safetensors"))
    _check_overlap("check_not_input", written, inputs)


def _inside(a: Path, b: Path) -> bool:
    """Whether ``a`` is ``b`` or lies under it (paths resolved, symlinks followed)."""
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents


def _read_files(r: Path) -> list[Path]:
    """The files a command reads when given ``r``: a zoo's card, metrics and shards, a
    checkpoint's files and index, or ``r`` itself."""
    if r.is_dir() and (r / "zoo.json").is_file():
        return [r / "zoo.json", r / "metrics.csv", *sorted((r / "models").glob("*.safetensors"))]
    try:
        entry, index, files = _resolve(r, "check_output")
        return [entry, *(_read_index(index, "check_output")[0] if index else files)]
    except CheckpointError:
        return [r]


def check_output(out: PathLike, reads: Iterable[PathLike | None], *, fn: str = "check_output",
                 directory: bool = False) -> None:
    """Raise if writing ``out`` would write over (or into) something the command reads.

    Every command that writes calls this before any work: no command ever writes over a file
    it reads.

    Args:
        out (str or PathLike): the file (or, with ``directory``, the directory) to write.
        reads (iterable of paths): what the command reads: files, checkpoints (their shards and
            index count), zoo directories (their ``zoo.json``, ``metrics.csv`` and shards count),
            other directories. ``None`` entries are skipped.
        fn (str, optional): the name in the message. (default: ``"check_output"``)
        directory (bool, optional): ``out`` is a directory the command fills: it may be neither
            one of ``reads`` nor hold one. (default: ``False``)

    Raises:
        CheckpointError: one line naming the output and the input it would overwrite.

    Example:
        >>> check_output("metanet.pt", ["zoo/"])
    """
    out = Path(out)
    reads = [Path(r) for r in reads if r is not None]
    if directory:
        for r in reads:
            if _inside(r, out):
                raise CheckpointError(f"{fn}: refusing to write into {out}: it {'is' if _same(r, out) else 'holds'} "
                                      f"{r}, which this command reads; choose another directory")
        return
    try:
        kind, target = _layout(out, None)
        written = [target]
        if kind == "sharded" and target.parent.is_dir():
            written += list(target.parent.glob("*-of-*.safetensors"))
    except CheckpointError:
        written = [out]
    for r in reads:
        if r.is_dir() and _same(out, r):
            raise CheckpointError(f"{fn}: refusing to write {out}: it is the directory {r}, which this command "
                                  f"reads; choose another output path")
        for f in _read_files(r):
            for w in written:
                if _same(w, f):
                    raise CheckpointError(f"{fn}: refusing to overwrite {f}, which this command reads, with the "
                                          f"output {w}; choose another output path")


def check_finite(state: Mapping[str, Tensor], path: PathLike | None = None) -> None:
    """Raise naming the first tensor that holds NaN or Inf.

    Args:
        state (Mapping[str, Tensor]): a state dict or a lazy :class:`Checkpoint`.
        path (str or PathLike, optional): the file it came from, for the message. (default: ``None``)

    Raises:
        CheckpointError: e.g. ``check_finite: 'fc1.weight' in run3.safetensors has 2 NaN and 0 Inf
            values of 100``.

    Example:
        >>> check_finite({"w": torch.ones(2)}, "m.safetensors")
    """
    where = f" in {path}" if path is not None else ""
    for k in state:
        t = state[k]
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            nan = int(torch.isnan(t).sum())
            raise CheckpointError(f"check_finite: {k!r}{where} has {nan} NaN and "
                                  f"{int((~torch.isfinite(t)).sum()) - nan} Inf values of {t.numel()}")


def _is_counter(k: str) -> bool:
    return k.endswith("num_batches_tracked")


def check_fits(state: Mapping[str, Tensor], model: nn.Module | Mapping[str, Tensor], *,
               path: PathLike | None = None, strict: bool = True) -> tuple[list[str], list[str]]:
    """Check that a state dict fits a model (or an expected state dict) without touching either.

    Args:
        state (Mapping[str, Tensor]): the loaded tensors (a lazy :class:`Checkpoint` reads no data).
        model (nn.Module or Mapping[str, Tensor]): the model, or the state dict it expects.
        path (str or PathLike, optional): the file ``state`` came from, for messages. (default: ``None``)
        strict (bool, optional): missing and unexpected keys are errors; shape mismatches always
            are. Missing ``num_batches_tracked`` buffers are never errors, nor are keys of a
            model's tied weights whose shared tensor the state holds under another name (a Hugging
            Face model with ``tie_word_embeddings`` saves ``lm_head.weight`` once, as the
            embedding). (default: ``True``)

    Returns:
        tuple[list[str], list[str]]: ``(missing, unexpected)`` keys, sorted.

    Raises:
        CheckpointError: one line listing shape mismatches and (when strict) missing and
            unexpected keys, e.g. ``check_fits: 'fc1.weight' in zoo/run3.safetensors has shape
            (64, 784); the model expects (128, 784)``.

    Example:
        >>> check_fits({"w": torch.zeros(2, 3)}, {"w": torch.zeros(2, 3), "b": torch.zeros(2)}, strict=False)
        (['b'], [])
    """
    return _fits(state, model, path, strict, "check_fits")


def _fits(state: Mapping[str, Tensor], model: nn.Module | Mapping[str, Tensor], path: PathLike | None,
          strict: bool, fn: str) -> tuple[list[str], list[str]]:
    expected = model.state_dict() if isinstance(model, nn.Module) else model
    if isinstance(model, nn.Module) and "transformers" in sys.modules:  # a model whose files differ from its modules
        from .hf import checkpoint_layout

        expected = checkpoint_layout(model) or expected
    missing = sorted(k for k in expected if k not in state and not _is_counter(k))
    if missing and isinstance(model, nn.Module):
        missing = _untied(missing, model, state)
    unexpected = sorted(k for k in state if k not in expected)
    shape_of = state.shape if isinstance(state, Checkpoint) else (lambda k: tuple(state[k].shape))
    bad = [(k, shape_of(k), tuple(expected[k].shape)) for k in expected
           if k in state and tuple(shape_of(k)) != tuple(expected[k].shape)]
    where = f" in {path}" if path is not None else ""
    parts = []
    if bad:
        k, got, want = bad[0]
        parts.append(f"{k!r}{where} has shape {_shape(got)}; the model expects {_shape(want)}")
        if len(bad) > 1:
            parts.append(f"{len(bad) - 1} more shape mismatches: "
                         + ", ".join(f"{k!r} {_shape(g)} vs {_shape(w)}" for k, g, w in bad[1:6]))
    if strict and missing:
        parts.append(f"{len(missing)} missing keys{where}: {_keys_list(missing)}")
    if strict and unexpected:
        parts.append(f"{len(unexpected)} unexpected keys{where}: {_keys_list(unexpected)}")
    if parts:
        raise CheckpointError(f"{fn}: " + "; ".join(parts))
    return missing, unexpected


def tied_keys(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """The state-dict keys of ``model`` that name one shared tensor (tied weights, such as a
    language model's output projection and its input embedding): key -> the other keys of it."""
    names: dict[int, list[str]] = {}
    for k, t in model.state_dict(keep_vars=True).items():
        if t is not None:
            names.setdefault(id(t), []).append(k)
    return {k: tuple(x for x in ks if x != k) for ks in names.values() if len(ks) > 1 for k in ks}


def _untied(missing: list[str], model: nn.Module, state: Mapping[str, Tensor]) -> list[str]:
    """``missing`` less the keys tied to a tensor that ``state`` holds: loading that tensor
    fills them too, and checkpoints of tied models (Hugging Face ``tie_word_embeddings``) omit them."""
    tied = tied_keys(model)
    return [k for k in missing if not any(x in state for x in tied.get(k, ()))]


def load_into(model: nn.Module, path_or_state: PathLike | Mapping[str, Tensor], *, strict: bool = True,
              key: str | None = None) -> tuple[list[str], list[str]]:
    """Load a checkpoint (a path or a state dict) into ``model`` in place.

    Args:
        model (nn.Module): the model to fill.
        path_or_state (str, PathLike or Mapping[str, Tensor]): anything :func:`load` reads, or tensors.
        strict (bool, optional): as for :func:`check_fits`. (default: ``True``)
        key (str, optional): as for :func:`load`. (default: ``None``)

    Returns:
        tuple[list[str], list[str]]: ``(missing, unexpected)`` keys, sorted; missing
        ``num_batches_tracked`` buffers are left out (the model keeps its own).

    Raises:
        CheckpointError: a shape mismatch, or missing/unexpected keys when ``strict``; the model
            is unchanged then. Also anything :func:`load` raises.

    Example:
        >>> load_into(torch.nn.Linear(2, 3), {"weight": torch.zeros(3, 2), "bias": torch.zeros(3)})
        ([], [])
    """
    if isinstance(path_or_state, Mapping):
        state = path_or_state
        path = path_or_state.info.path if isinstance(path_or_state, Checkpoint) else None
    else:
        path, state = path_or_state, load(path_or_state, key=key)
    missing, unexpected = _fits(state, model, path, strict, "load_into")
    model.load_state_dict(dict(state), strict=False)
    return missing, unexpected


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, read in 4 MiB blocks (for provenance records)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def is_sharded(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a sharded checkpoint (a ``*.index.json`` or a directory holding one)."""
    try:
        return _resolve(path, "is_sharded")[1] is not None
    except CheckpointError:
        return False
