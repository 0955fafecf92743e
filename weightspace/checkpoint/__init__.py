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

from .read import (SAFETENSORS_DTYPES, STATE_DICT_KEYS, brief_error, is_sharded, read_safetensors_tensor,
                   safetensors_header, sha256_file)
from .write import output_layout, parse_size, same_file
from .checks import tied_keys
from .streamed import TensorEntry, save_streamed, writable_dtype

__all__ = ["CheckpointError", "CheckpointInfo", "Checkpoint", "LoadedCheckpoint", "load", "load_checkpoint",
           "open_checkpoint", "save", "save_streamed",
           "load_into", "check_fits", "check_finite", "check_not_input", "check_output",
           # building blocks the merges, recipes and Hugging Face outputs share
           "SAFETENSORS_DTYPES", "STATE_DICT_KEYS", "TensorEntry", "brief_error", "is_sharded", "output_layout",
           "parse_size", "read_safetensors_tensor", "safetensors_header", "same_file", "sha256_file", "tied_keys",
           "writable_dtype"]
