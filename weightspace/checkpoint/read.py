"""Reading checkpoints: the :class:`Checkpoint` mapping (one tensor at a time), :func:`open_checkpoint`,
:func:`load`, the errors and what was found (:class:`CheckpointError`, :class:`CheckpointInfo`), finding
a checkpoint's files (directories, ``*.index.json``), plain-read safetensors tensors, and file hashes.
"""
from __future__ import annotations

import json
import logging
import os
import re
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

PathLike = str | os.PathLike
logger = logging.getLogger("weightspace.checkpoint")

#: Keys under which training checkpoints keep the model's state dict, tried in this order.
STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "module", "net", "network",
                   "ema", "model_ema", "ema_state_dict", "params", "weights")
_TORCH_EXTS = (".pt", ".pth", ".bin", ".ckpt")
_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP and torch.compile wrappers
_PT_META = "weightspace_metadata"
#: the safetensors dtype codes this package reads and writes, and their torch dtypes
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
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


def brief_error(e: BaseException) -> str:
    """The gist of a library exception as one short line (``"TypeError: ..."``), for error messages."""
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
                              f"'weight_map' object ({brief_error(e)})") from e
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
                                  f"refuses to load ({brief_error(e)}); re-save only the state dict, or "
                                  f"use .safetensors") from e
        raise CheckpointError(f"{fn}: {path} is not a readable PyTorch checkpoint (truncated or "
                              f"corrupt?): {brief_error(e)}") from e


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
                                          f"(truncated or corrupt header?): {brief_error(e)}") from e
                self._open_files[i] = (handle, set(handle.keys()))
                if self._headers is not None:  # read with plain file reads, not through the memory map
                    self._headers[i] = safetensors_header(f)
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
        if self._headers is not None and SAFETENSORS_DTYPES.get(self._headers[i][1][stored]["dtype"]) is not None:
            return read_safetensors_tensor(f, *self._headers[i], stored, self._fn).to(self._device)
        try:
            return handle.get_tensor(stored)
        except SafetensorError as e:
            raise CheckpointError(f"{self._fn}: cannot read {name!r} from {f}: {brief_error(e)}") from e

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
        return SAFETENSORS_DTYPES.get(code) or self[name].dtype

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


def safetensors_header(f: Path) -> tuple[int, dict[str, Any]]:
    """``(offset of the data, header)`` of a safetensors file that ``safe_open`` accepted: the
    header as JSON (tensor name -> ``{"dtype", "shape", "data_offsets"}``, and ``__metadata__``)."""
    with open(f, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        return 8 + n, json.loads(fh.read(n))


def read_safetensors_tensor(f: Path, start: int, header: dict[str, Any], stored: str, fn: str) -> Tensor:
    """Tensor ``stored`` of safetensors file ``f`` (``start`` and ``header`` from
    :func:`safetensors_header`), read into fresh memory (no memory map); ``fn`` names the caller in errors."""
    entry = header[stored]
    begin, end = entry["data_offsets"]
    buf = torch.empty(end - begin, dtype=torch.uint8)
    with open(f, "rb", buffering=0) as fh:
        fh.seek(start + begin)
        got = fh.readinto(memoryview(buf.numpy())) if end > begin else 0
    if got != end - begin:
        raise CheckpointError(f"{fn}: cannot read {stored!r} from {f}: the file ends {end - begin - got} "
                              f"bytes early (truncated?)")
    return buf.view(SAFETENSORS_DTYPES[entry["dtype"]]).reshape(entry["shape"])


def load(path: PathLike, *, device: str | torch.device = "cpu", key: str | None = None,
         return_info: bool = False) -> dict[str, Tensor]:
    """Read a whole checkpoint into a state dict.

    Args:
        path (str or PathLike): as for :func:`open_checkpoint`.
        device (str or torch.device, optional): where the tensors go. (default: ``"cpu"``)
        key (str, optional): as for :func:`open_checkpoint`. (default: ``None``)
        return_info (bool, optional): deprecated: also return the :class:`CheckpointInfo`; use
            :func:`load_checkpoint`. (default: ``False``)

    Returns:
        dict[str, Tensor]. Files written by :func:`save` as ``.pt`` with metadata
        (``{"state_dict": ..., "weightspace_metadata": ...}``) give back the plain state dict;
        :func:`load_checkpoint` gives the metadata too (``info.metadata``).

    Raises:
        CheckpointError: as for :func:`open_checkpoint`.

    Example:
        >>> import tempfile, torch
        >>> path = tempfile.mkdtemp() + "/last.ckpt"
        >>> torch.save({"epoch": 3, "state_dict": {"fc.bias": torch.zeros(2)}}, path)
        >>> load(path)
        {'fc.bias': tensor([0., 0.])}
    """
    loaded = load_checkpoint(path, device=device, key=key)
    if return_info:
        warnings.warn("load(return_info=True) is deprecated; use load_checkpoint", DeprecationWarning, stacklevel=2)
        return loaded.state, loaded.info  # type: ignore[return-value]
    return loaded.state


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint read whole: its state dict and what was learnt reading it.

    Attributes:
        state (dict[str, Tensor]): the tensors.
        info (CheckpointInfo): the key used, the stripped prefix, the metadata, the format and files.
    """

    state: dict[str, Tensor]
    info: CheckpointInfo


def load_checkpoint(path: PathLike, *, device: str | torch.device = "cpu", key: str | None = None
                    ) -> LoadedCheckpoint:
    """:func:`load`, returning the state dict with its :class:`CheckpointInfo`.

    Raises:
        CheckpointError: as for :func:`open_checkpoint`.

    Example:
        >>> import tempfile, torch
        >>> path = tempfile.mkdtemp() + "/last.ckpt"
        >>> torch.save({"epoch": 3, "state_dict": {"fc.bias": torch.zeros(2)}}, path)
        >>> found = load_checkpoint(path)
        >>> found.state, found.info.key_used
        ({'fc.bias': tensor([0., 0.])}, 'state_dict')
    """
    # errors name the function users know, as load's do
    with Checkpoint(path, device=device, key=key, _fn="load", _lazy=False) as ckpt:
        return LoadedCheckpoint({k: ckpt[k] for k in ckpt}, ckpt.info)


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
