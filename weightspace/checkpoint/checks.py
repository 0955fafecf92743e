"""Checks before and after reading or writing: an output that would overwrite an input
(:func:`check_not_input`, :func:`check_output`), non-finite tensors (:func:`check_finite`), a state
dict that does not fit a model (:func:`check_fits`, :func:`load_into`), and tied weights.
"""
from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from .read import Checkpoint, CheckpointError, PathLike, _keys_list, _read_index, _resolve, _shape, load
from .write import _check_overlap, output_layout, same_file

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
    kind, target = output_layout(out, None)
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
                raise CheckpointError(f"{fn}: refusing to write into {out}: it {'is' if same_file(r, out) else 'holds'} "
                                      f"{r}, which this command reads; choose another directory")
        return
    try:
        kind, target = output_layout(out, None)
        written = [target]
        if kind == "sharded" and target.parent.is_dir():
            written += list(target.parent.glob("*-of-*.safetensors"))
    except CheckpointError:
        written = [out]
    for r in reads:
        if r.is_dir() and same_file(out, r):
            raise CheckpointError(f"{fn}: refusing to write {out}: it is the directory {r}, which this command "
                                  f"reads; choose another output path")
        for f in _read_files(r):
            for w in written:
                if same_file(w, f):
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
        from ..hf import checkpoint_layout

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
