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

from .read import Checkpoint, CheckpointError, CheckpointInfo, LoadedCheckpoint, load, load_checkpoint, open_checkpoint
from .write import save
from .checks import check_finite, check_fits, check_not_input, check_output, load_into

# the names other modules import from here (pipeline, streaming, hf, recipe), outside __all__
from .read import STATE_DICT_KEYS, is_sharded, sha256_file  # noqa: F401
from .read import _ST_DTYPES, _brief, _resolve, _st_header, _st_pread  # noqa: F401
from .write import _atomic, _check_overlap, _commit_replacing, _layout, _parse_size, _same, _shard_names  # noqa: F401
from .checks import tied_keys  # noqa: F401

__all__ = ["CheckpointError", "CheckpointInfo", "Checkpoint", "LoadedCheckpoint", "load", "load_checkpoint",
           "open_checkpoint", "save",
           "load_into", "check_fits", "check_finite", "check_not_input", "check_output"]
