"""Align and merge two checkpoints, and measure the barrier between them: the library behind
``weightspace merge`` and ``weightspace barrier``.

Everything is validated before the first long computation, and a merged checkpoint is written
atomically as ``.safetensors`` with its model, input shape and provenance in the metadata.
"""
from __future__ import annotations

import dataclasses
import json
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import merging
from graphs import Structure

from ._dtypes import parse_dtype, plan_dtypes
from .alignment import (METHODS, Alignment, check_method, list_alignment_methods, method_label, needs_data, resolve_method,
                        run_alignment)
from .api import INPUT_SHAPE_KEY, MODEL_KEY, PROVENANCE_KEY, LoadedModel, check_aligned
from .checkpoint import check_not_input, check_output, save
from .pipeline import (REPAIR_SAMPLES, MergeResult, PathLike, as_dtype, check_alpha,
                       check_data_fits, check_same_states, file_record, has_batchnorm,
                       hf_for_data, hf_inputs, input_shape_of, is_sharded, load_pair, repair_batches, resolve_data,
                       TensorMerge, permute_loaded, provenance, resolve_device, run_dtype, save_hf, structure_of)
from .trust import takes_trust_flag

__all__ = ["METHODS", "MergeResult", "align", "align_result", "merge_checkpoints", "barrier_between", "resolve_method"]


# --------------------------------------------------------------------------- public verbs


def align(
    model_a: LoadedModel,
    model_b: LoadedModel,
    *,
    method: str = "auto",
    data: str | Iterable[Any] | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    solver: str = "auto",
    progress: bool = False,
    structure: Structure | None = None,
    return_info: bool = False,
) -> dict[str, Tensor]:
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
        solver (str, optional): the assignment solver, one of :func:`merging.list_solvers`.
            (default: ``"auto"``)
        progress (bool, optional): progress bars on stderr. (default: ``False``)
        structure (Structure, optional): A's traced structure, if already at hand.
        return_info (bool, optional): deprecated: also return ``{"method", "sweeps", "seconds",
            "groups", "reason"}``; use :func:`align_result`. (default: ``False``)

    Returns:
        ``dict[group, LongTensor]``; apply it with ``weightspace.permute(structure, model_b.state, perms)``.
        :func:`align_result` returns it with how it was found (:class:`weightspace.Alignment`).

    Raises:
        ValueError: unknown method, A and B of different architectures, missing ``data``, or
            data that does not fit the model.

    Example:
        >>> a, b = load_model("a.safetensors"), load_model("b.safetensors")  # doctest: +SKIP
        >>> perms = align(a, b, method="weight")  # doctest: +SKIP
    """
    result = align_result(model_a, model_b, method=method, data=data, seed=seed, device=device, solver=solver,
                          progress=progress, structure=structure)
    if return_info:
        warnings.warn("align(return_info=True) is deprecated; use align_result", DeprecationWarning, stacklevel=2)
        return result.perms, result.to_dict()  # type: ignore[return-value]
    return result.perms


def align_result(
    model_a: LoadedModel,
    model_b: LoadedModel,
    *,
    method: str = "auto",
    data: str | Iterable[Any] | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    solver: str = "auto",
    progress: bool = False,
    structure: Structure | None = None,
) -> Alignment:
    """:func:`align` (same arguments), returning the permutation with the method that ran and why,
    weight matching's sweeps, the time spent and the size of each group.

    Raises:
        ValueError: as :func:`align`.

    Example:
        >>> r = align_result(a, b)  # doctest: +SKIP
        >>> r.method, r.reason  # doctest: +SKIP
        ('weight', 'auto: no --data given, so weight matching (pass --data for activation matching)')
    """
    method = check_method(method, "align")
    merging.resolve_solver(solver, caller="align")
    method, _, reason = resolve_method(method, has_data=data is not None)
    dev = resolve_device(device)
    check_same_states(model_a.state, model_b.state, model_a.path or "A", model_b.path or "B", "align")
    if needs_data(method) and data is None:
        raise ValueError(f"align: method {method!r} needs data (--data D, e.g. --data digits); "
                         f"use --method weight to align without data")
    batches = None
    if data is not None:
        batches, label = resolve_data(data, "train")
        check_data_fits(model_a, batches, label, dev, "align")
    if structure is None:
        structure = structure_of(model_a, batches)
    result = run_alignment(structure, model_a, model_b, method, batches, seed=seed, device=dev, progress=progress,
                           solver=solver)
    return dataclasses.replace(result, reason=reason)


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
    method = check_method(method, fn)
    alpha = check_alpha(alpha, fn)
    merging.resolve_solver(solver, caller=fn)
    parse_dtype(dtype, fn)
    out = Path(out)
    hf_out = hf_inputs([path_a, path_b], model)
    sharded_out = out.name.endswith(".index.json") or out.is_dir() or (not out.suffix and not out.exists())
    sharded_out = sharded_out and not hf_out  # a Hugging Face directory holds one file unless max_shard_size
    if low_memory or max_shard_size is not None or sharded_out or (
            method in ("auto", "weight", "none") and not repair and data is None and is_sharded(path_a)
            and is_sharded(path_b)):
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
    if data is None and (needs_data(method) or repair):
        why = "--repair" if not needs_data(method) else f"method {method!r}"
        raise ValueError(f"{fn}: {why} needs data (--data D, e.g. --data digits)")
    dev = resolve_device(device)
    a, b, files = load_pair(path_a, path_b, model, model_kwargs, input_shape, dev, fn)
    file_keys = list(a.state)
    if hf_out and data is not None:  # run on data: the module's names, tied tensors under each name
        hf_for_data(a, b, fn)
        if not set(file_keys) <= set(a.state):
            raise ValueError(f"{fn}: {type(a.module).__name__} names its weights differently in its files and "
                             f"its modules, so it cannot run on --data here; merge without --data "
                             f"(weight matching)")
    method, repair, reason = resolve_method(method, has_data=data is not None, has_norm=has_batchnorm(a),
                                            repair=repair)
    plan = plan_dtypes([a.state, b.state], [path_a, path_b], fn, dtype)
    batches, data_label = (None, None)
    if data is not None:
        batches, data_label = resolve_data(data, "train")
        check_data_fits(a, batches, data_label, dev, fn)
    structure = structure_of(a, batches)
    if method != "none":
        check_aligned(structure, source=str(path_a), require=require_aligned)
    shape = input_shape_of(a, batches)

    aligned = run_alignment(structure, a, b, method, batches, seed=seed, device=dev, progress=progress, solver=solver)
    perms = aligned.perms
    tensors = TensorMerge(structure, perms, alpha, plan, fn, out)
    pb = permute_loaded(structure, b, b.state, perms)
    merged = tensors.interpolate(a.state, pb)  # in the common dtype
    correction = "none"
    if repair:
        correction = "reset_bn" if has_batchnorm(a) else "repair"
        run = run_dtype(a)
        merged = merging.repair(a.module, as_dtype(a.state, run), as_dtype(pb, run), as_dtype(merged, run), batches,
                                alpha=alpha, device=dev, progress=progress,
                                num_batches=repair_batches(batches, repair_samples, fn))
    merged = tensors.finish(merged, a.state, after=correction if repair else None)

    record = provenance(
        "weightspace merge", [file_record(p, fs) for p, fs in zip((path_a, path_b), files)],
        method=method, method_reason=reason, alpha=alpha, repair=correction, seed=seed,
        data=data_label if (needs_data(method) or repair) else None, sweeps=aligned.sweeps,
        **({"dtype": str(plan.out).removeprefix("torch.")} if plan.out is not None else {}))
    metadata = {MODEL_KEY: a.spec, PROVENANCE_KEY: json.dumps(record, sort_keys=True)}
    if shape is not None:
        metadata[INPUT_SHAPE_KEY] = ",".join(str(s) for s in shape)
    if hf_out:
        merged = {k: merged[k] for k in file_keys}  # the files' keys: tied tensors once
        path = save_hf(merged, out, path_a, record, [path_a, path_b])
    else:
        path = save(merged, out, metadata=metadata, inputs=[path_a, path_b])
    return MergeResult(path=path, method=method, reason=reason, alpha=alpha, repair=correction, perms=perms,
                       sweeps=aligned.sweeps, align_seconds=aligned.seconds, seconds=time.perf_counter() - t0,
                       model=a.spec, input_shape=shape, provenance=record, notes=tuple(plan.notes),
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
    solver: str = "auto",
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
            data is given, and for a BatchNorm network the BatchNorm reset at interior points of
            every curve, as :func:`merge_checkpoints` does), or ``"all"``: weight, activation and STE
            matching, every curve in one result and one plot. (default: ``"none"``)
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
        solver (str, optional): the assignment solver of the alignment, one of
            :func:`merging.list_solvers`. (default: ``"auto"``)
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
        methods = [m for m in list_alignment_methods() if method_label(m)]
    elif align not in list_alignment_methods():
        raise ValueError(f"{fn}: unknown method {align!r}; choose one of: {', '.join(list_alignment_methods())}, all")
    else:
        method, _, _ = resolve_method(check_method(align, fn), has_data=True)
        methods = [] if method == "none" else [method]
    merging.resolve_solver(solver, caller=fn)
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
    dev = resolve_device(device)
    a, b, _ = load_pair(path_a, path_b, model, model_kwargs, input_shape, dev, fn)
    plan_dtypes([a.state, b.state], [path_a, path_b], fn)  # a tensor float in one and not in the other
    if align == "auto":  # as merge's auto: a BatchNorm network gets the BatchNorm reset (every curve)
        repair = resolve_method("auto", has_data=True, has_norm=has_batchnorm(a), repair=repair)[1]
    hf_for_data(a, b, fn)
    eval_batches, label = resolve_data(data, split)
    fit_batches = resolve_data(data, "train")[0] if isinstance(data, str) else eval_batches
    check_data_fits(a, eval_batches, label, dev, fn)

    correction = {"repair_data": fit_batches, "num_batches": repair_batches(fit_batches, repair_samples, fn)} \
        if repair else {}
    run = run_dtype(a)  # the model runs in its own dtype, whatever the checkpoints' dtypes
    results = {"naive": merging.barrier(a.module, as_dtype(a.state, run), as_dtype(b.state, run), eval_batches, steps=steps, device=dev,
                                        progress=progress, **correction)}
    structure = structure_of(a, eval_batches) if methods else None
    if structure is not None:
        check_aligned(structure, source=str(path_a))
    for method in methods:
        perms = run_alignment(structure, a, b, method, fit_batches, seed=seed, device=dev, progress=progress,
                              solver=solver).perms
        pb = permute_loaded(structure, b, b.state, perms)
        results[method_label(method)] = merging.barrier(a.module, as_dtype(a.state, run), as_dtype(pb, run), eval_batches, steps=steps, device=dev,
                                                   progress=progress, **correction)
    if plot is not None:
        plot.parent.mkdir(parents=True, exist_ok=True)
        where = f"{label} ({split} split)" if isinstance(data, str) else label
        title = f"{Path(path_a).name} to {Path(path_b).name} on {where}"
        merging.plot_barrier(results, plot, title=title)
    return results
