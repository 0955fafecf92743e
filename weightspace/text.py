"""Text as next-token data for language models: bytes are the tokens.

Two datasets for ``--data``:

- ``text:PATH``: a text file, or every ``.py``, ``.txt``, ``.md`` and ``.rst`` file under a directory;
- ``python-stdlib``: the Python standard library's own sources, on every machine with Python,
  offline.

The files are read in sorted order as one stream of bytes and cut into windows of
:data:`SEQ_LEN` + 1 bytes; a window gives the input ``x`` (its first :data:`SEQ_LEN` bytes) and
the target ``y`` (the same bytes shifted by one), so the loss is the next-token cross-entropy and
its exponential the perplexity. One window in :data:`TEST_EVERY` is the test split, the others the
train split; at most :data:`MAX_WINDOWS` windows are read. The token ids are the byte values
``0..255``, so a model needs a vocabulary of at least 256 (a byte-level or character model).
"""
from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import torch

from .data import Dataset, register_dataset

__all__ = ["is_text_spec", "SEQ_LEN", "TEST_EVERY", "MAX_WINDOWS", "TEXT_SUFFIXES", "text_files", "text_dataset", "stdlib_dir"]

#: Tokens per sequence.
SEQ_LEN = 128
#: One window in ``TEST_EVERY`` goes to the test split.
TEST_EVERY = 17
#: Windows read at most: 4,096 train and 256 test sequences.
MAX_WINDOWS = 4352
#: The files read under a directory.
TEXT_SUFFIXES = (".py", ".txt", ".md", ".rst")


#: The ``--data`` names of next-token text.
TEXT_DATASETS = ("text", "python-stdlib")


def is_text_spec(spec: object) -> bool:
    """Whether a ``--data`` spec names next-token text (``text:PATH``, ``python-stdlib``)."""
    return isinstance(spec, str) and spec.strip().partition(":")[0] in TEXT_DATASETS


def stdlib_dir() -> Path:
    """The directory of the Python standard library's sources."""
    return Path(sysconfig.get_paths()["stdlib"])


def text_files(path: str | Path, *, skip: tuple[str, ...] = ()) -> list[Path]:
    """A file, or the text files under a directory (sorted by their path relative to it).

    Raises:
        ValueError: ``path`` does not exist, or a directory holds no text file.
    """
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise ValueError(f"text: {p} does not exist; give a text file or a directory of text files")
    found = []
    for root, dirs, names in os.walk(p):
        dirs[:] = [d for d in dirs if d not in skip and d != "__pycache__" and not d.startswith(".")]
        found += [Path(root) / n for n in names if Path(n).suffix in TEXT_SUFFIXES]
    files = sorted((f for f in found if f.is_file()), key=lambda f: f.relative_to(p).as_posix())
    if not files:
        raise ValueError(f"text: {p} holds no text file ({', '.join(TEXT_SUFFIXES)})")
    return files


def text_dataset(files: list[Path], split: str, name: str, *, seq_len: int = SEQ_LEN,
                 max_windows: int = MAX_WINDOWS, test_every: int = TEST_EVERY) -> Dataset:
    """Next-token sequences of the bytes of ``files`` (see the module's description).

    Shapes:
        - x: ``(N, seq_len)`` byte values (``int64``)
        - y: ``(N, seq_len)``, ``x`` shifted by one

    Raises:
        ValueError: an unreadable file, or too little text for one sequence of the split.
    """
    need = max_windows * (seq_len + 1)
    chunks, have = [], 0
    for f in files:
        try:
            data = f.read_bytes()
        except OSError as e:
            raise ValueError(f"text: cannot read {f} ({e.strerror or e})") from None
        chunks.append(data[: need - have])
        have += len(chunks[-1])
        if have >= need:
            break
    stream = torch.frombuffer(bytearray(b"".join(chunks)), dtype=torch.uint8)
    n = len(stream) // (seq_len + 1)
    windows = stream[: n * (seq_len + 1)].view(n, seq_len + 1).long()
    is_test = torch.arange(n) % test_every == test_every - 1
    chosen = {"test": is_test, "train": ~is_test, "all": torch.ones(n, dtype=torch.bool)}[split]
    windows = windows[chosen]
    if len(windows) == 0:
        where = files[0] if len(files) == 1 else f"{len(files)} files under {files[0].parent}"
        raise ValueError(f"text: {where} holds {len(stream)} bytes, too few for one {split} sequence of "
                         f"{seq_len} tokens ({test_every * (seq_len + 1)} bytes give one test sequence)")
    return Dataset(windows[:, :-1].contiguous(), windows[:, 1:].contiguous(), name, num_classes=256)


@register_dataset("text", arg="PATH",
                  description="next-byte sequences of a text file or of the text files under a directory "
                              "(language models with a byte vocabulary)")
def _load_text(arg: str | None, split: str) -> Dataset:
    return text_dataset(text_files(arg or ""), split, f"text:{arg}")


@register_dataset("python-stdlib",
                  description="next-byte sequences of the Python standard library's sources (language models)")
def _load_stdlib(arg: str | None, split: str) -> Dataset:
    return text_dataset(text_files(stdlib_dir(), skip=("site-packages", "dist-packages")), split, "python-stdlib")
