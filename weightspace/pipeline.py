"""The steps every merge shares: device, checks, loading a pair, data, structure, dtypes,
Hugging Face inputs and outputs, provenance, and the result a merge returns.

:mod:`weightspace.merge` (in memory), :mod:`weightspace.streaming` (tensor by tensor),
:mod:`weightspace.merge_many` and :mod:`weightspace.starlight` are built on these; none of them
imports another's internals.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from graphs import Structure

from .api import MODEL_KEY, PROVENANCE_KEY, LoadedModel, load_model, trace_model
from .checkpoint import is_sharded, open_checkpoint, save, sha256_file, tied_keys
from .models import model_spec_from_json

__all__ = ["BATCH", "REPAIR_SAMPLES", "MergeResult", "resolve_device", "check_alpha",
           "check_same_states", "load_pair", "resolve_data", "check_data_fits", "structure_of", "input_shape_of",
           "has_batchnorm", "run_dtype", "as_dtype", "hf_inputs", "hf_for_data", "save_hf", "file_record",
           "repair_batches", "is_counter", "first_batch", "example_from", "device_of", "is_sharded",
           "permute_loaded", "provenance", "TensorMerge"]

PathLike = str | os.PathLike

#: examples per batch of a ``--data`` spec
BATCH = 256
#: REPAIR / BatchNorm-reset statistics from this many training examples by default: a few
#: thousand estimate per-channel moments well (the REPAIR paper's setting), and each repaired
#: layer is one more pass over them
REPAIR_SAMPLES = 4096


@dataclass(frozen=True)
class MergeResult:
    """What :func:`merge_checkpoints` did.

    Attributes:
        path (Path): the merged checkpoint written.
        method (str): the alignment method (one of :func:`weightspace.alignment.list_alignment_methods`).
        alpha (float): weight of B: ``(1 - alpha) * A + alpha * P(B)``.
        repair (str): correction applied after interpolation: ``"none"``, ``"repair"`` or
            ``"reset_bn"`` (REPAIR of a BatchNorm network is the BatchNorm reset).
        reason (str): why this method (and correction) ran, in one line (``auto`` explains itself).
        perms (dict[str, Tensor]): the permutation applied to B, group -> LongTensor.
        sweeps (int, optional): weight-matching sweeps over the groups (``None`` for other methods).
        align_seconds (float): time spent aligning.
        seconds (float): total time, loading and writing included.
        model (str): the model spec (JSON) recorded in the output.
        input_shape (tuple[int, ...], optional): the input shape recorded in the output.
        provenance (dict): what is recorded under ``weightspace.provenance``.
        notes (tuple[str, ...]): one-line notes on fallbacks (inputs of different dtypes, and
            what was done), which the CLI prints on stderr.
        copied (tuple[str, ...]): the non-float tensors (counters, index buffers), copied from A
            and left out of matching and interpolation.
    """

    path: Path
    method: str
    alpha: float
    repair: str
    perms: dict[str, Tensor]
    sweeps: int | None
    align_seconds: float
    seconds: float
    model: str
    input_shape: tuple[int, ...] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    notes: tuple[str, ...] = ()
    copied: tuple[str, ...] = ()

    @property
    def units_moved(self) -> int:
        """How many hidden units the permutation moves, over all groups."""
        return sum(int((p != torch.arange(len(p))).sum()) for p in self.perms.values())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (the permutation itself is left out)."""
        return {
            "output": str(self.path),
            "method": self.method,
            "reason": self.reason,
            "alpha": self.alpha,
            "repair": self.repair,
            "sweeps": self.sweeps,
            "groups": {g: len(p) for g, p in self.perms.items()},
            "units_moved": self.units_moved,
            "align_seconds": round(self.align_seconds, 4),
            "seconds": round(self.seconds, 4),
            "model": json.loads(self.model),
            "input_shape": list(self.input_shape) if self.input_shape else None,
            "provenance": self.provenance,
            "notes": list(self.notes),
            "copied_from_a": list(self.copied),
        }


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; CUDA asked for but absent is an error."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device: unknown device {name!r}; use cpu, cuda or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} asked for, but CUDA is not available on this machine")
    return dev


def check_alpha(alpha: float, fn: str) -> float:
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"{fn}: alpha must be a number in [0, 1], got {alpha!r}") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{fn}: alpha must be in [0, 1] (0 gives A, 1 gives aligned B), got {alpha!r}")
    return value


def repair_batches(batches: Iterable[Any], samples: int | None, fn: str) -> int | None:
    """Whole batches covering ``samples`` examples (at least one), or ``None`` for all."""
    if samples is None:
        return None
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"{fn}: repair_samples must be a positive integer or None, got {samples!r}")
    first = next(iter(batches), None)
    size = len(first[0]) if first is not None else 1
    return max(1, math.ceil(samples / max(1, size)))


def is_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def check_same_states(sa: Mapping[str, Any], sb: Mapping[str, Any], name_a: Any, name_b: Any, fn: str,
                       shape_a: Any = None, shape_b: Any = None) -> None:
    """Raise unless A and B hold the same tensor names with the same shapes (counters aside)."""
    shape_a = shape_a or (lambda k: tuple(sa[k].shape))
    shape_b = shape_b or (lambda k: tuple(sb[k].shape))
    only_a = [k for k in sa if k not in sb and not is_counter(k)]
    only_b = [k for k in sb if k not in sa and not is_counter(k)]
    if only_a or only_b:
        k, here, there = (only_a[0], name_a, name_b) if only_a else (only_b[0], name_b, name_a)
        more = len(only_a) + len(only_b) - 1
        raise ValueError(f"{fn}: A and B have different architectures: {k!r} is in {here} but not in {there}"
                         + (f" ({more} more differing names)" if more else ""))
    bad = [k for k in sa if k in sb and tuple(shape_a(k)) != tuple(shape_b(k))]
    if bad:
        k = bad[0]
        more = f" ({len(bad) - 1} more tensors differ in shape)" if len(bad) > 1 else ""
        raise ValueError(f"{fn}: A and B have different architectures: {k!r} has shape "
                         f"{tuple(shape_a(k))} in {name_a} and {tuple(shape_b(k))} in {name_b}{more}")


def load_pair(path_a: PathLike, path_b: PathLike, model: str | None, model_kwargs: Any,
               input_shape: Any, device: torch.device, fn: str
               ) -> tuple[LoadedModel, LoadedModel, tuple[tuple[Path, ...], tuple[Path, ...]]]:
    """Load A and B into their architecture after a cheap header comparison of the two files."""
    with open_checkpoint(path_a) as ca, open_checkpoint(path_b) as cb:
        check_same_states(ca, cb, path_a, path_b, fn, ca.shape, cb.shape)
        files = (ca.info.files + ((ca.info.index,) if ca.info.index else ()),
                 cb.info.files + ((cb.info.index,) if cb.info.index else ()))
        b_records_model = MODEL_KEY in cb.metadata
    a = load_model(path_a, model, model_kwargs, input_shape=input_shape, device=device)
    if model is None and not b_records_model:
        name, kwargs = model_spec_from_json(a.spec)  # B records no model: it is A's
        b = load_model(path_b, name, kwargs, input_shape=input_shape, device=device)
    else:
        b = load_model(path_b, model, model_kwargs, input_shape=input_shape, device=device)
        if model is None and b.spec != a.spec:
            warnings.warn(f"{fn}: {path_a} records model {a.spec} but {path_b} records {b.spec}; "
                          f"using A's (pass --model to choose)", stacklevel=3)
    for k in set(a.state) ^ set(b.state):  # a num_batches_tracked counter only one side has
        (b.state if k in a.state else a.state)[k] = (a.state if k in a.state else b.state)[k].clone()
    if a.input_shape is None and b.input_shape is not None:
        a.input_shape = b.input_shape
    return a, b, files


def resolve_data(data: str | Iterable[Any], split: str) -> tuple[Iterable[Any], str]:
    """Batches and a label for the provenance: a spec is loaded, batches pass through."""
    if isinstance(data, str):
        from weightspace.data import load_data

        return load_data(data, split=split, batch_size=BATCH), data
    if isinstance(data, (bytes, Tensor)) or not isinstance(data, Iterable):
        raise TypeError(f"data must be a --data spec such as 'digits' or an iterable of (x, y) batches, "
                        f"got {type(data).__name__}")
    return data, f"<{type(data).__name__}>"


def first_batch(batches: Iterable[Any], label: str, fn: str) -> tuple[Tensor, Tensor]:
    batch = next(iter(batches), None)
    if batch is None:
        raise ValueError(f"{fn}: data {label} yielded no batches")
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[0], Tensor)):
        raise ValueError(f"{fn}: data {label} yields {type(batch).__name__}; expected (x, y) batches of tensors")
    return batch[0], batch[1]


def check_data_fits(lm: LoadedModel, batches: Iterable[Any], label: str, device: torch.device, fn: str) -> None:
    """Run A on a few examples of the data: the inputs must go through and the labels fit the outputs."""
    x, y = first_batch(batches, label, fn)
    where = f"the model of {lm.path}" if lm.path else "the model"
    try:
        with torch.no_grad():
            out = lm.module(x[:4].to(device))
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        msg = " ".join(str(e).split())[:160]
        ids = f" with token ids {int(x.min())}..{int(x.max())}" if not x.is_floating_point() and x.numel() else ""
        raise ValueError(f"{fn}: data {label} does not fit {where}: inputs of shape {tuple(x.shape[1:])}{ids} "
                         f"fail in the forward pass ({msg}); check --data, --model or --input-shape") from None
    if isinstance(out, Tensor) and out.ndim >= 2 and isinstance(y, Tensor) and not y.is_floating_point() \
            and y.numel():
        k = out.shape[1]
        hi, lo = int(y.max()), int(y.min())
        if hi >= k or lo < 0:
            raise ValueError(f"{fn}: data {label} has labels {lo}..{hi} but {where} has {k} outputs")
        try:
            F.cross_entropy(out, y[:4].to(device))
        except (RuntimeError, ValueError) as e:
            msg = " ".join(str(e).split())[:160]
            raise ValueError(f"{fn}: labels of data {label} (shape {tuple(y.shape[1:])}) do not fit the outputs "
                             f"of {where} (shape {tuple(out.shape[1:])}): {msg}") from None


def example_from(batches: Iterable[Any] | None) -> Tensor | None:
    if batches is None:
        return None
    batch = next(iter(batches), None)
    return batch[0][:2] if batch is not None else None


def permute_loaded(structure: Structure, lm: LoadedModel, state: Mapping[str, Tensor],
                   perms: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``permute(structure, state, perms)`` for ``lm``'s model, its tied tensors kept tied.

    A state prepared to run the model (:func:`hf_for_data`) holds a tied tensor under each of its
    names (an output layer that is the input embedding), the structure only under the one the
    tracer saw; the others take its permuted value.
    """
    from graphs import permute

    out = permute(structure, state, perms)
    for k, others in tied_keys(lm.module).items():
        if k in structure.axes and k in out:
            for o in others:
                if o in out and o not in structure.axes:
                    out[o] = out[k]
    return out


def structure_of(lm: LoadedModel, batches: Iterable[Any] | None) -> Structure:
    declares = lm.input_shape is not None or callable(getattr(lm.module, "example_input", None)) \
        or getattr(lm.module, "input_shape", None) is not None
    example = None if declares else example_from(batches)
    if example is not None:
        return trace_model(lm.module, example_input=example.to(device_of(lm)))
    return trace_model(lm.module, input_shape=lm.input_shape)


def device_of(lm: LoadedModel) -> torch.device:
    return next((v.device for v in lm.state.values()), torch.device("cpu"))


def input_shape_of(lm: LoadedModel, batches: Iterable[Any] | None) -> tuple[int, ...] | None:
    if lm.input_shape is not None:
        return tuple(lm.input_shape)
    declared = getattr(lm.module, "input_shape", None)
    if declared is not None:
        return tuple(int(s) for s in declared)
    example = example_from(batches)
    return tuple(example.shape[1:]) if example is not None else None


def has_batchnorm(lm: LoadedModel) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats
               for m in lm.module.modules())


def run_dtype(lm: LoadedModel) -> torch.dtype:
    """The float dtype ``lm.module`` computes in (its first float parameter's; float32 without one)."""
    return next((p.dtype for p in lm.module.parameters() if p.is_floating_point()), torch.float32)


def as_dtype(state: Mapping[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    """``state`` with its float tensors in ``dtype``, for running the model on it."""
    return {k: v.to(dtype) if v.is_floating_point() and v.dtype != dtype else v for k, v in state.items()}


def hf_inputs(paths: list[PathLike], model: str | None) -> bool:
    """Refuse a Hugging Face input whose config asks for remote code (``auto_map``) unless trusted;
    return whether the output is a Hugging Face directory (the first input is one, and no
    ``--model`` overrides its config)."""
    from .hf import check_remote_code, is_hf_dir

    for p in paths:
        if is_hf_dir(p):
            check_remote_code(p)
    return model is None and is_hf_dir(paths[0])


def hf_for_data(a: LoadedModel, b: LoadedModel, fn: str) -> None:
    """Transformers models run on ``(x, y)`` batches: their forward returns logits and their states
    use the modules' names (see :func:`weightspace.hf.for_evaluation`)."""
    from .hf import for_evaluation, is_hf_module

    for lm in (a, b):
        if is_hf_module(lm.module):
            lm.state = for_evaluation(lm.module, lm.state, lm.path, fn)


def save_hf(state: Mapping[str, Tensor], out: Path, source: PathLike, record: Mapping[str, Any],
             inputs: list[PathLike], max_shard_size: int | str | None = None) -> Path:
    """Write merged weights as a Hugging Face directory (``config.json`` and tokenizer from A), with
    the provenance ``record`` in the safetensors metadata."""
    from .hf import output_metadata, write_hf_dir

    meta = output_metadata(PROVENANCE_KEY, record)
    target = (lambda d: d) if max_shard_size is not None else (lambda d: d / "model.safetensors")
    return write_hf_dir(out, source, lambda d: save(state, target(d), metadata=meta, max_shard_size=max_shard_size),
                        inputs)


def file_record(path: PathLike, files: tuple[Path, ...]) -> dict[str, Any]:
    """``{"path", "sha256"}`` of a checkpoint file; a sharded one lists every file it is made of."""
    if len(files) == 1:
        return {"path": str(path), "sha256": sha256_file(files[0])}
    return {"path": str(path), "files": {f.name: sha256_file(f) for f in files}}


# --------------------------------------------------------------------------- the per-tensor plan


def provenance(tool: str, inputs: Iterable[Mapping[str, Any]] | None = None, **fields: Any) -> dict[str, Any]:
    """The provenance record a written file carries: ``tool``, the ``inputs`` (file records, see
    :func:`file_record`), then ``fields`` in order, the weightspace version and the UTC date."""
    from datetime import datetime, timezone

    from weightspace import __version__

    record: dict[str, Any] = {"tool": tool}
    if inputs is not None:
        record["inputs"] = list(inputs)
    record.update(fields)
    record["weightspace_version"] = __version__
    record["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return record


@dataclass(frozen=True)
class TensorMerge:
    """What a two-model merge does to each tensor once alignment has found the permutations:
    B's tensor permuted, ``(1 - alpha) * A + alpha * P(B)`` in the inputs' common dtype, the result
    cast to the output dtype and checked to be finite.

    The in-memory merge runs it over whole state dicts (:meth:`interpolate`, then REPAIR if asked,
    then :meth:`finish`); the low-memory merge one tensor at a time (:meth:`tensor`). Both give
    the same bits.

    Attributes:
        structure (Structure): the traced structure the permutations act on.
        perms (Mapping[str, Tensor]): one permutation per group (B's units to A's).
        alpha (float): the weight of B.
        dtypes (DtypePlan): the common and output dtypes (:func:`weightspace._dtypes.plan_dtypes`).
        fn (str): the caller, for error messages.
        out (Path): what is being written, for error messages.
    """

    structure: Structure
    perms: Mapping[str, Tensor]
    alpha: float
    dtypes: Any
    fn: str
    out: Path

    def interpolate(self, state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Interpolate A and the already permuted B, in the common dtype."""
        import merging

        return merging.interpolate(self.dtypes.widen(state_a, state_b), state_b, self.alpha)

    def finish(self, merged: Mapping[str, Tensor], state_a: Mapping[str, Tensor], *, after: str | None = None
               ) -> dict[str, Tensor]:
        """Cast to the output dtype; refuse NaN or Inf (``after``: the correction applied, for the message)."""
        return self._check_finite(self.dtypes.finish(merged, state_a), after)

    def tensor(self, key: str, a: Tensor, b: Tensor) -> Tensor:
        """One tensor, start to end: permute ``b``, interpolate, cast, check (the inputs are let go
        before the check, so that peak memory holds the result and one input at most)."""
        from graphs import permute

        pb = permute(self.structure, {key: b}, self.perms)
        del b
        out = self.dtypes.finish(self.interpolate({key: a}, pb), {key: a})
        del a, pb
        return self._check_finite(out)[key]

    def _check_finite(self, merged: dict[str, Tensor], after: str | None = None) -> dict[str, Tensor]:
        for k, v in merged.items():
            if (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all()):
                raise ValueError(f"{self.fn}: the merged tensor {k!r} has NaN or Inf values"
                                 f"{' after ' + after if after else ''}; nothing was written to {self.out}")
        return merged
