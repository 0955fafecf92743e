"""Align and merge two checkpoints, and measure the barrier between them: the library behind
``weightspace merge`` and ``weightspace barrier``.

Everything is validated before the first long computation, and a merged checkpoint is written
atomically as ``.safetensors`` with its model, input shape and provenance in the metadata.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import merging
from merging.matching.weight import from_two_starts
from graphs import Structure, identity_permutation, permute

from ._dtypes import parse_dtype, plan_dtypes
from .api import INPUT_SHAPE_KEY, MODEL_KEY, PROVENANCE_KEY, LoadedModel, check_aligned, load_model, trace_model
from .checkpoint import check_not_input, check_output, open_checkpoint, save, sha256_file
from .models import model_spec_from_json
from .trust import takes_trust_flag

__all__ = ["METHODS", "MergeResult", "align", "merge_checkpoints", "barrier_between", "resolve_method"]

#: Alignment methods, in the order the CLI lists them; ``auto`` resolves to one of the others
#: (see :func:`resolve_method`).
METHODS = ("auto", "weight", "activation", "ste", "none")
_NEEDS_DATA = ("activation", "ste")
_LABELS = {"weight": "weight matching", "activation": "activation matching", "ste": "STE matching"}
_BATCH = 256
#: REPAIR / BatchNorm-reset statistics from this many training examples by default: a few
#: thousand estimate per-channel moments well (the REPAIR paper's setting), and each repaired
#: layer is one more pass over them
REPAIR_SAMPLES = 4096
PathLike = str | os.PathLike


@dataclass(frozen=True)
class MergeResult:
    """What :func:`merge_checkpoints` did.

    Attributes:
        path (Path): the merged checkpoint written.
        method (str): the alignment method (one of :data:`METHODS`).
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


# --------------------------------------------------------------------------- public verbs


def align(
    model_a: LoadedModel,
    model_b: LoadedModel,
    *,
    method: str = "auto",
    data: str | Iterable[Any] | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    structure: Structure | None = None,
    return_info: bool = False,
) -> dict[str, Tensor] | tuple[dict[str, Tensor], dict[str, Any]]:
    """The permutation of B's hidden units that aligns B to A.

    Traces A's module once (``model_a.structure()``, or with an input batch from ``data`` when
    the model declares no input shape), then solves for the permutation with the chosen method
    (Ainsworth et al., "Git Re-Basin", https://arxiv.org/abs/2209.04836):

    - ``"weight"``: weight matching (no data needed);
    - ``"activation"``: activation matching on the inputs of ``data``;
    - ``"ste"``: straight-through estimator, minimising the midpoint loss on ``data``;
    - ``"none"``: the identity (naive merging);
    - ``"auto"``: activation matching with ``data``, weight matching without (see :func:`resolve_method`).

    Args:
        model_a (LoadedModel): the reference, e.g. from :func:`weightspace.load_model`.
        model_b (LoadedModel): the model to align; same architecture.
        method (str, optional): one of :data:`METHODS`. (default: ``"auto"``)
        data (str or Iterable, optional): a ``--data`` spec (its train split is used) or
            re-iterable ``(x, y)`` batches; needed by ``"activation"`` and ``"ste"``.
        seed (int, optional): seeds the order of weight matching's sweeps and STE.
            (default: ``0``)
        device (str or torch.device, optional): ``"cpu"``, ``"cuda"`` or ``"auto"``. (default: ``"cpu"``)
        progress (bool, optional): progress bars on stderr. (default: ``False``)
        structure (Structure, optional): A's traced structure, if already at hand.
        return_info (bool, optional): also return ``{"method", "sweeps", "seconds", "groups"}``.

    Returns:
        ``dict[group, LongTensor]`` (and the info dict); apply it with
        ``weightspace.permute(structure, model_b.state, perms)``.

    Raises:
        ValueError: unknown method, A and B of different architectures, missing ``data``, or
            data that does not fit the model.

    Example:
        >>> a, b = load_model("a.safetensors"), load_model("b.safetensors")  # doctest: +SKIP
        >>> perms = align(a, b, method="weight")  # doctest: +SKIP
    """
    method = _check_method(method, "align")
    method, _, reason = resolve_method(method, has_data=data is not None)
    dev = _resolve_device(device)
    _check_same_states(model_a.state, model_b.state, model_a.path or "A", model_b.path or "B", "align")
    if method in _NEEDS_DATA and data is None:
        raise ValueError(f"align: method {method!r} needs data (--data D, e.g. --data digits); "
                         f"use --method weight to align without data")
    batches = None
    if data is not None:
        batches, label = _resolve_data(data, "train")
        _check_data_fits(model_a, batches, label, dev, "align")
    if structure is None:
        structure = _structure(model_a, batches)
    out = _align(structure, model_a, model_b, method, batches, seed, dev, progress, return_info)
    if return_info:
        out[1]["reason"] = reason
    return out


@takes_trust_flag
def merge_checkpoints(
    path_a: PathLike,
    path_b: PathLike,
    out: PathLike,
    *,
    model: str | None = None,
    model_kwargs: str | Mapping[str, Any] | None = None,
    input_shape: str | tuple[int, ...] | None = None,
    method: str = "auto",
    alpha: float = 0.5,
    data: str | Iterable[Any] | None = None,
    repair: bool = False,
    repair_samples: int | None = REPAIR_SAMPLES,
    device: str | torch.device = "cpu",
    seed: int = 0,
    solver: str = "auto",
    progress: bool = True,
    low_memory: bool = False,
    max_shard_size: int | str | None = None,
    require_aligned: float | None = None,
    dtype: str | torch.dtype | None = None,
) -> MergeResult:
    r"""Align B to A and write the interpolated checkpoint.

    .. math::
        \theta_{out} = (1 - \alpha)\, \theta_A + \alpha\, P(\theta_B)

    where :math:`P` permutes B's hidden units (see :func:`align`). With ``repair=True`` the
    merged network's activation statistics are fixed with ``data``: BatchNorm statistics are
    recomputed for BatchNorm networks, REPAIR (Jordan et al., https://arxiv.org/abs/2211.08403)
    rescales every other hidden layer. The output is written atomically as ``.safetensors`` with
    metadata ``weightspace.model`` (the model spec), ``weightspace.input_shape`` (when known) and
    ``weightspace.provenance`` (JSON: the inputs' SHA-256, method, alpha, repair, seed, data,
    weightspace version, date).

    Everything is checked before any long computation, and on any error nothing is written:
    the method, ``alpha``, the output path (``.safetensors``, not one of the inputs), that
    ``data`` is given when needed, that A and B have the same tensors, that each fits the model
    and is finite, and that the data fits the model.

    Args:
        path_a (str or PathLike): checkpoint A (the reference basis of hidden units).
        path_b (str or PathLike): checkpoint B.
        out (str or PathLike): the ``.safetensors`` file to write.
        model (str, optional): the ``--model`` spec; default: the one recorded in A (B falls back to
            A's when it records none).
        model_kwargs (str or Mapping, optional): keyword arguments of the family (JSON or dict).
        input_shape (str or tuple, optional): shape of one example without the batch axis, when
            neither the model nor the checkpoint declares it.
        method (str, optional): one of :data:`METHODS`; ``"auto"`` is activation matching (plus
            the BatchNorm reset for BatchNorm networks) with ``data``, weight matching without;
            see :func:`resolve_method`. (default: ``"auto"``)
        alpha (float, optional): weight of B, in ``[0, 1]``. (default: ``0.5``)
        data (str or Iterable, optional): a ``--data`` spec (its train split is used) or
            re-iterable ``(x, y)`` batches; needed by ``"activation"``, ``"ste"`` and ``repair``.
        repair (bool, optional): fix the activation statistics after interpolating. (default: ``False``)
        repair_samples (int, optional): training examples the statistics are measured on
            (whole batches, at least one); ``None`` for all of ``data``. (default: 4096)
        device (str or torch.device, optional): ``"cpu"``, ``"cuda"`` or ``"auto"``. (default: ``"cpu"``)
        seed (int, optional): seeds the alignment. (default: ``0``)
        progress (bool, optional): progress bars on stderr. (default: ``True``)
        low_memory (bool, optional): merge tensor by tensor with
            :func:`weightspace.streaming.streaming_merge` (weight matching or ``"none"`` only):
            memory bounded by a few tensors, not by the model. Chosen automatically when both
            inputs are sharded (and the method allows), the output is a directory or a
            ``*.safetensors.index.json``, or ``max_shard_size`` is given. (default: ``False``)
        max_shard_size (int or str, optional): write a sharded output (Hugging Face layout),
            at most this many bytes per shard (``"2GB"``). (default: ``None``)
        require_aligned (float, optional): refuse to merge when alignment can permute less than
            this fraction of the parameters (otherwise a warning below one half). (default: ``None``)
        dtype (str or torch.dtype, optional): the dtype of the merged float tensors:
            ``"float32"``, ``"float64"``, ``"bfloat16"`` or ``"float16"``. A and B may differ in
            dtype: they are aligned and interpolated in the promoted dtype (at least float32), and
            a note (``MergeResult.notes``) says so. Non-float tensors are copied from A.
            (default: ``None``: A's dtype, tensor by tensor)

    Returns:
        MergeResult: the output path, the permutation, timings and the recorded provenance.

    Raises:
        ValueError: any bad input above (:class:`weightspace.CheckpointError` for files), with a
            one-line message naming the file and the problem.

    Example:
        >>> r = merge_checkpoints("a.safetensors", "b.safetensors", "merged.safetensors")  # doctest: +SKIP
        >>> r.method, r.sweeps  # doctest: +SKIP
        ('weight', 4)
    """
    fn = "merge_checkpoints"
    t0 = time.perf_counter()
    method = _check_method(method, fn)
    alpha = _check_alpha(alpha, fn)
    parse_dtype(dtype, fn)
    out = Path(out)
    hf_out = _hf_inputs([path_a, path_b], model)
    sharded_out = out.name.endswith(".index.json") or out.is_dir() or (not out.suffix and not out.exists())
    sharded_out = sharded_out and not hf_out  # a Hugging Face directory holds one file unless max_shard_size
    if low_memory or max_shard_size is not None or sharded_out or (
            method in ("auto", "weight", "none") and not repair and data is None and _is_sharded(path_a)
            and _is_sharded(path_b)):
        if repair or data is not None:
            raise ValueError(f"{fn}: the low-memory (sharded) merge does not take --data or --repair: they "
                             f"run the model, which needs it in memory; merge into a .safetensors file "
                             f"without --low-memory / --max-shard-size")
        from .streaming import streaming_merge

        method, _, reason = resolve_method(method, has_data=False)
        result = streaming_merge(path_a, path_b, out, model=model, model_kwargs=model_kwargs,
                                 input_shape=input_shape, method=method, alpha=alpha, device=device, seed=seed,
                                 solver=solver, max_shard_size=max_shard_size, progress=progress,
                                 require_aligned=require_aligned, dtype=dtype)
        return dataclasses.replace(result, reason=reason)
    if hf_out:
        from .hf import check_output_dir

        check_output_dir(out, [path_a, path_b], fn)
    elif out.suffix != ".safetensors":
        raise ValueError(f"{fn}: the output {out} must end in .safetensors")
    elif out.is_dir():
        raise ValueError(f"{fn}: the output {out} is a directory; give a file name ending in .safetensors")
    else:
        check_not_input(out, [path_a, path_b])
    if data is None and (method in _NEEDS_DATA or repair):
        why = "--repair" if method not in _NEEDS_DATA else f"method {method!r}"
        raise ValueError(f"{fn}: {why} needs data (--data D, e.g. --data digits)")
    if hf_out and (method in _NEEDS_DATA or repair):
        why = "--repair" if method not in _NEEDS_DATA else f"method {method!r}"
        raise ValueError(f"{fn}: {why} runs the model on --data, which is not supported for Hugging Face "
                         f"directories yet (the tracer finds no groups in them); use --method weight or none")
    dev = _resolve_device(device)
    a, b, files = _load_pair(path_a, path_b, model, model_kwargs, input_shape, dev, fn)
    method, repair, reason = resolve_method(method, has_data=data is not None, has_norm=_has_batchnorm(a),
                                            repair=repair)
    plan = plan_dtypes([a.state, b.state], [path_a, path_b], fn, dtype)
    batches, data_label = (None, None)
    if data is not None:
        batches, data_label = _resolve_data(data, "train")
        _check_data_fits(a, batches, data_label, dev, fn)
    structure = _structure(a, batches)
    if method != "none":
        check_aligned(structure, source=str(path_a), require=require_aligned)
    shape = _input_shape(a, batches)

    perms, info = _align(structure, a, b, method, batches, seed, dev, progress, True, solver)
    pb = permute(structure, b.state, perms)
    merged = merging.interpolate(plan.widen(a.state, pb), pb, alpha)  # in the common dtype
    correction = "none"
    if repair:
        correction = "reset_bn" if _has_batchnorm(a) else "repair"
        run = _run_dtype(a)
        merged = merging.repair(a.module, _as(a.state, run), _as(pb, run), _as(merged, run), batches,
                                alpha=alpha, device=dev, progress=progress,
                                num_batches=_repair_batches(batches, repair_samples, fn))
    merged = plan.finish(merged, a.state)
    for k, v in merged.items():
        if (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all()):
            raise ValueError(f"{fn}: the merged tensor {k!r} has NaN or Inf values"
                             f"{' after ' + correction if repair else ''}; nothing was written to {out}")

    from weightspace import __version__

    provenance = {
        "tool": "weightspace merge",
        "inputs": [_file_record(p, fs) for p, fs in zip((path_a, path_b), files)],
        "method": method,
        "method_reason": reason,
        "alpha": alpha,
        "repair": correction,
        "seed": seed,
        "data": data_label if (method in _NEEDS_DATA or repair) else None,
        "sweeps": info["sweeps"],
        **({"dtype": str(plan.out).removeprefix("torch.")} if plan.out is not None else {}),
        "weightspace_version": __version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    metadata = {MODEL_KEY: a.spec, PROVENANCE_KEY: json.dumps(provenance, sort_keys=True)}
    if shape is not None:
        metadata[INPUT_SHAPE_KEY] = ",".join(str(s) for s in shape)
    if hf_out:
        path = _save_hf(merged, out, path_a, provenance, [path_a, path_b])
    else:
        path = save(merged, out, metadata=metadata, inputs=[path_a, path_b])
    return MergeResult(path=path, method=method, reason=reason, alpha=alpha, repair=correction, perms=perms,
                       sweeps=info["sweeps"], align_seconds=info["seconds"], seconds=time.perf_counter() - t0,
                       model=a.spec, input_shape=shape, provenance=provenance, notes=tuple(plan.notes),
                       copied=tuple(plan.copied))


@takes_trust_flag
def barrier_between(
    path_a: PathLike,
    path_b: PathLike,
    *,
    model: str | None = None,
    model_kwargs: str | Mapping[str, Any] | None = None,
    input_shape: str | tuple[int, ...] | None = None,
    data: str | Iterable[Any],
    align: str = "none",
    steps: int = 25,
    repair: bool = False,
    repair_samples: int | None = REPAIR_SAMPLES,
    plot: PathLike | None = None,
    split: str = "test",
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, merging.BarrierResult]:
    r"""Loss and accuracy along the linear path from A to B, naive and after aligning B.

    Evaluates :math:`(1-t)\theta_A + t\theta_B` at ``steps`` points with
    :func:`merging.barrier`; with ``align`` other than ``"none"`` the path to the aligned
    :math:`P(\theta_B)` is evaluated too, so the two can be compared (and plotted together).

    Args:
        path_a, path_b (str or PathLike): the two checkpoints.
        model, model_kwargs, input_shape: as for :func:`merge_checkpoints`.
        data (str or Iterable): a ``--data`` spec or re-iterable ``(x, y)`` batches. A spec's
            ``split`` is evaluated; alignment and REPAIR statistics use its train split.
        align (str, optional): one of :data:`METHODS` (``"auto"``: activation matching, as
            data is given), or ``"all"``: weight, activation and STE matching, every curve in one
            result and one plot. (default: ``"none"``)
        steps (int, optional): points on the path, endpoints included, ``>= 2``. (default: ``25``)
        repair (bool, optional): fix activation statistics at interior points (REPAIR, or the
            BatchNorm reset for BatchNorm networks). (default: ``False``)
        repair_samples (int, optional): training examples the statistics are measured on at
            each point; ``None`` for all. (default: 4096)
        plot (str or PathLike, optional): write both curves to this ``.png``. (default: ``None``)
        split (str, optional): the split of a data spec to evaluate: ``"test"``, ``"train"``
            or ``"all"``. (default: ``"test"``)
        device (str or torch.device, optional): ``"cpu"``, ``"cuda"`` or ``"auto"``. (default: ``"cpu"``)
        seed (int, optional): seeds the alignment. (default: ``0``)
        progress (bool, optional): progress bars on stderr. (default: ``True``)

    Returns:
        dict[str, BarrierResult]: ``{"naive": ...}``, plus ``{"weight matching": ...}`` (or
        ``"activation matching"``, ``"STE matching"``) when aligning. Each result has both
        barrier definitions for loss and accuracy (``loss_barrier``, ``loss_barrier_linear``,
        ``accuracy_barrier``, ``accuracy_barrier_linear``) and the midpoint values.

    Raises:
        ValueError: unknown method, ``steps < 2``, a bad plot path, A and B of different
            architectures, a checkpoint that does not fit the model, or data that does not fit.

    Example:
        >>> res = barrier_between("a.safetensors", "b.safetensors", data="digits", align="weight")  # doctest: +SKIP
        >>> res["naive"].loss_barrier > res["weight matching"].loss_barrier  # doctest: +SKIP
        True
    """
    fn = "barrier_between"
    if align == "all":
        methods = [m for m in METHODS if m not in ("auto", "none")]
    elif align not in METHODS:
        raise ValueError(f"{fn}: unknown method {align!r}; choose one of: {', '.join(METHODS)}, all")
    else:
        method, _, _ = resolve_method(_check_method(align, fn), has_data=True)
        methods = [] if method == "none" else [method]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"{fn}: steps must be an integer >= 2, got {steps!r}")
    if data is None:
        raise ValueError(f"{fn}: needs data to evaluate on (--data D, e.g. --data digits)")
    if split not in ("test", "train", "all"):
        raise ValueError(f"{fn}: split must be one of: test, train, all; got {split!r}")
    if plot is not None:
        plot = Path(plot)
        if plot.suffix.lower() != ".png":
            raise ValueError(f"{fn}: the plot {plot} must end in .png")
        check_output(plot, [path_a, path_b], fn=fn)
    dev = _resolve_device(device)
    a, b, _ = _load_pair(path_a, path_b, model, model_kwargs, input_shape, dev, fn)
    plan_dtypes([a.state, b.state], [path_a, path_b], fn)  # a tensor float in one and not in the other
    _hf_for_data(a, b, fn)
    eval_batches, label = _resolve_data(data, split)
    fit_batches = _resolve_data(data, "train")[0] if isinstance(data, str) else eval_batches
    _check_data_fits(a, eval_batches, label, dev, fn)

    correction = {"repair_data": fit_batches, "num_batches": _repair_batches(fit_batches, repair_samples, fn)} \
        if repair else {}
    run = _run_dtype(a)  # the model runs in its own dtype, whatever the checkpoints' dtypes
    results = {"naive": merging.barrier(a.module, _as(a.state, run), _as(b.state, run), eval_batches, steps=steps, device=dev,
                                        progress=progress, **correction)}
    structure = _structure(a, eval_batches) if methods else None
    if structure is not None:
        check_aligned(structure, source=str(path_a))
    for method in methods:
        perms = _align(structure, a, b, method, fit_batches, seed, dev, progress, False)
        pb = permute(structure, b.state, perms)
        results[_LABELS[method]] = merging.barrier(a.module, _as(a.state, run), _as(pb, run), eval_batches, steps=steps, device=dev,
                                                   progress=progress, **correction)
    if plot is not None:
        plot.parent.mkdir(parents=True, exist_ok=True)
        where = f"{label} ({split} split)" if isinstance(data, str) else label
        title = f"{Path(path_a).name} to {Path(path_b).name} on {where}"
        merging.plot_barrier(results, plot, title=title)
    return results


# --------------------------------------------------------------------------- helpers


def _resolve_device(device: str | torch.device) -> torch.device:
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


def resolve_method(method: str, *, has_data: bool, has_norm: bool = False, repair: bool = False
                   ) -> tuple[str, bool, str]:
    """What ``method`` means here: ``(method, repair, reason)``.

    ``"auto"`` is activation matching when data is given (it measures what the network
    computes; on narrow and normalised networks weight matching leaves most of the barrier,
    see the REPAIR paper, https://arxiv.org/abs/2211.08403), with REPAIR (for a BatchNorm
    network: resetting the BatchNorm statistics) when it has BatchNorm layers or ``repair`` is asked;
    without data it is weight matching. Explicit methods keep their meaning.

    Returns:
        The method that runs, whether to repair, and a one-line reason for the summary.
    """
    if method != "auto":
        return method, repair, f"--method {method}"
    if not has_data:
        return "weight", repair, "auto: no --data given, so weight matching (pass --data for activation matching)"
    why = "auto: --data given, so activation matching"
    if repair:
        return "activation", True, why + ", then REPAIR as asked"
    if has_norm:
        return "activation", True, why + ", then a BatchNorm statistics reset (the network has BatchNorm layers)"
    return "activation", False, why


def _check_method(method: str, fn: str) -> str:
    if method not in METHODS:
        raise ValueError(f"{fn}: unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    return method


def _check_alpha(alpha: float, fn: str) -> float:
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"{fn}: alpha must be a number in [0, 1], got {alpha!r}") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{fn}: alpha must be in [0, 1] (0 gives A, 1 gives aligned B), got {alpha!r}")
    return value


def _repair_batches(batches: Iterable[Any], samples: int | None, fn: str) -> int | None:
    """Whole batches covering ``samples`` examples (at least one), or ``None`` for all."""
    if samples is None:
        return None
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"{fn}: repair_samples must be a positive integer or None, got {samples!r}")
    first = next(iter(batches), None)
    size = len(first[0]) if first is not None else 1
    return max(1, math.ceil(samples / max(1, size)))


def _is_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def _check_same_states(sa: Mapping[str, Any], sb: Mapping[str, Any], name_a: Any, name_b: Any, fn: str,
                       shape_a: Any = None, shape_b: Any = None) -> None:
    """Raise unless A and B hold the same tensor names with the same shapes (counters aside)."""
    shape_a = shape_a or (lambda k: tuple(sa[k].shape))
    shape_b = shape_b or (lambda k: tuple(sb[k].shape))
    only_a = [k for k in sa if k not in sb and not _is_counter(k)]
    only_b = [k for k in sb if k not in sa and not _is_counter(k)]
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


def _load_pair(path_a: PathLike, path_b: PathLike, model: str | None, model_kwargs: Any,
               input_shape: Any, device: torch.device, fn: str
               ) -> tuple[LoadedModel, LoadedModel, tuple[tuple[Path, ...], tuple[Path, ...]]]:
    """Load A and B into their architecture after a cheap header comparison of the two files."""
    with open_checkpoint(path_a) as ca, open_checkpoint(path_b) as cb:
        _check_same_states(ca, cb, path_a, path_b, fn, ca.shape, cb.shape)
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


def _resolve_data(data: str | Iterable[Any], split: str) -> tuple[Iterable[Any], str]:
    """Batches and a label for the provenance: a spec is loaded, batches pass through."""
    if isinstance(data, str):
        from weightspace.data import load_data

        return load_data(data, split=split, batch_size=_BATCH), data
    if isinstance(data, (bytes, Tensor)) or not isinstance(data, Iterable):
        raise TypeError(f"data must be a --data spec such as 'digits' or an iterable of (x, y) batches, "
                        f"got {type(data).__name__}")
    return data, f"<{type(data).__name__}>"


def _first_batch(batches: Iterable[Any], label: str, fn: str) -> tuple[Tensor, Tensor]:
    batch = next(iter(batches), None)
    if batch is None:
        raise ValueError(f"{fn}: data {label} yielded no batches")
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[0], Tensor)):
        raise ValueError(f"{fn}: data {label} yields {type(batch).__name__}; expected (x, y) batches of tensors")
    return batch[0], batch[1]


def _check_data_fits(lm: LoadedModel, batches: Iterable[Any], label: str, device: torch.device, fn: str) -> None:
    """Run A on a few examples of the data: the inputs must go through and the labels fit the outputs."""
    x, y = _first_batch(batches, label, fn)
    where = f"the model of {lm.path}" if lm.path else "the model"
    try:
        with torch.no_grad():
            out = lm.module(x[:4].to(device))
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        msg = " ".join(str(e).split())[:160]
        raise ValueError(f"{fn}: data {label} does not fit {where}: inputs of shape {tuple(x.shape[1:])} "
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


def _example_from(batches: Iterable[Any] | None) -> Tensor | None:
    if batches is None:
        return None
    batch = next(iter(batches), None)
    return batch[0][:2] if batch is not None else None


def _structure(lm: LoadedModel, batches: Iterable[Any] | None) -> Structure:
    declares = lm.input_shape is not None or callable(getattr(lm.module, "example_input", None)) \
        or getattr(lm.module, "input_shape", None) is not None
    example = None if declares else _example_from(batches)
    if example is not None:
        return trace_model(lm.module, example_input=example.to(_device_of(lm)))
    return trace_model(lm.module, input_shape=lm.input_shape)


def _device_of(lm: LoadedModel) -> torch.device:
    return next((v.device for v in lm.state.values()), torch.device("cpu"))


def _input_shape(lm: LoadedModel, batches: Iterable[Any] | None) -> tuple[int, ...] | None:
    if lm.input_shape is not None:
        return tuple(lm.input_shape)
    declared = getattr(lm.module, "input_shape", None)
    if declared is not None:
        return tuple(int(s) for s in declared)
    example = _example_from(batches)
    return tuple(example.shape[1:]) if example is not None else None


def _has_batchnorm(lm: LoadedModel) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats
               for m in lm.module.modules())


def _align(structure: Structure, a: LoadedModel, b: LoadedModel, method: str, batches: Iterable[Any] | None,
           seed: int, device: torch.device, progress: bool, return_info: bool, solver: str = "auto") -> Any:
    t0 = time.perf_counter()
    sa = {k: v.to(device) for k, v in a.state.items()}
    sb = {k: v.to(device) for k, v in b.state.items()}
    a.module.to(device)
    sweeps = None
    if method == "none":
        perms = identity_permutation(structure)
    elif method == "weight":  # from the identity and from unit signatures: the better objective
        perms, wm = from_two_starts(
            lambda init: merging.weight_matching(structure, sa, sb, seed=seed, device=device, progress=progress,
                                                 solver=solver, init=init, return_info=True),
            structure, sa, sb, solver=solver)
        sweeps = wm["sweeps"]
    elif method in _NEEDS_DATA:  # these run the model: in its own dtype
        run = _run_dtype(a)
        sa, sb = _as(sa, run), _as(sb, run)
    if method == "activation":
        perms = merging.activation_matching(structure, a.module, sa, sb, batches, device=device, progress=progress,
                                            solver=solver)
    elif method == "ste":
        perms = merging.ste_matching(structure, a.module, sa, sb, batches, seed=seed, device=device,
                                     progress=progress, solver=solver)
    perms = {g: p.cpu() for g, p in perms.items()}
    if not return_info:
        return perms
    info = {"method": method, "sweeps": sweeps, "seconds": time.perf_counter() - t0,
            "groups": {g: grp.size for g, grp in structure.groups.items()}}
    return perms, info


def _run_dtype(lm: LoadedModel) -> torch.dtype:
    """The float dtype ``lm.module`` computes in (its first float parameter's; float32 without one)."""
    return next((p.dtype for p in lm.module.parameters() if p.is_floating_point()), torch.float32)


def _as(state: Mapping[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    """``state`` with its float tensors in ``dtype``, for running the model on it."""
    return {k: v.to(dtype) if v.is_floating_point() and v.dtype != dtype else v for k, v in state.items()}


def _hf_inputs(paths: list[PathLike], model: str | None) -> bool:
    """Refuse a Hugging Face input whose config asks for remote code (``auto_map``) unless trusted;
    return whether the output is a Hugging Face directory (the first input is one, and no
    ``--model`` overrides its config)."""
    from .hf import check_remote_code, is_hf_dir

    for p in paths:
        if is_hf_dir(p):
            check_remote_code(p)
    return model is None and is_hf_dir(paths[0])


def _hf_for_data(a: LoadedModel, b: LoadedModel, fn: str) -> None:
    """Transformers models run on ``(x, y)`` batches: their forward returns logits and their states
    use the modules' names (see :func:`weightspace.hf.for_evaluation`)."""
    from .hf import for_evaluation, is_hf_module

    for lm in (a, b):
        if is_hf_module(lm.module):
            lm.state = for_evaluation(lm.module, lm.state, lm.path, fn)


def _save_hf(state: Mapping[str, Tensor], out: Path, source: PathLike, provenance: Mapping[str, Any],
             inputs: list[PathLike], max_shard_size: int | str | None = None) -> Path:
    """Write merged weights as a Hugging Face directory (``config.json`` and tokenizer from A)."""
    from .hf import output_metadata, write_hf_dir

    meta = output_metadata(PROVENANCE_KEY, provenance)
    target = (lambda d: d) if max_shard_size is not None else (lambda d: d / "model.safetensors")
    return write_hf_dir(out, source, lambda d: save(state, target(d), metadata=meta, max_shard_size=max_shard_size),
                        inputs)


def _is_sharded(path: PathLike) -> bool:
    from .streaming import is_sharded

    return is_sharded(path)


def _file_record(path: PathLike, files: tuple[Path, ...]) -> dict[str, Any]:
    """``{"path", "sha256"}`` of a checkpoint file; a sharded one lists every file it is made of."""
    if len(files) == 1:
        return {"path": str(path), "sha256": sha256_file(files[0])}
    return {"path": str(path), "files": {f.name: sha256_file(f) for f in files}}
