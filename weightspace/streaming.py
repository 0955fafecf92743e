"""The low-memory merge: checkpoints larger than memory, merged one tensor at a time.

The model is traced on the ``meta`` device (:func:`weightspace.api.trace_without_weights`), so it
is never allocated; weight matching reads each group's tensors from the lazily opened checkpoints
(:mod:`merging.matching.streamed`); the per-tensor plan (:class:`weightspace.pipeline.TensorMerge`)
then permutes, interpolates and casts each tensor as :func:`streaming_merge` writes it into
``.safetensors`` shards (Hugging Face layout with its ``*.index.json``), every file atomically. Peak
memory is a few tensors plus one ``n x n`` similarity matrix, whatever the size of the model.
``streaming_weight_matching`` and ``trace_without_weights`` are importable from here too.
"""
from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from graphs import identity_permutation
from merging.matching.streamed import (streaming_weight_matching, streaming_weight_matching_result,
                                       streaming_weight_matching_two_starts)

from .api import INPUT_SHAPE_KEY, MODEL_KEY, PROVENANCE_KEY, check_aligned, recorded_spec, trace_without_weights
from .checkpoint import (
    check_finite,
    check_fits,
    check_not_input,
    is_sharded,
    open_checkpoint,
    output_layout,
    parse_size,
    save_streamed,
    writable_dtype,
)
from ._dtypes import parse_dtype, plan_dtypes
from .models import parse_input_shape
from .alignment import check_method
from .pipeline import (MergeResult, TensorMerge, check_alpha, check_same_states, file_record, hf_inputs, provenance,
                       resolve_device)
from .trust import takes_trust_flag

__all__ = ["streaming_weight_matching", "streaming_weight_matching_result", "streaming_merge", "trace_without_weights", "is_sharded"]

PathLike = str | os.PathLike
logger = logging.getLogger(__name__)
_LOW_PRECISION = (torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------- matching


# --------------------------------------------------------------------------- merging


@takes_trust_flag
def streaming_merge(
    path_a: PathLike,
    path_b: PathLike,
    out: PathLike,
    *,
    model: str | None = None,
    model_kwargs: str | Mapping[str, Any] | None = None,
    input_shape: str | tuple[int, ...] | None = None,
    method: str = "weight",
    alpha: float = 0.5,
    device: str | torch.device = "cpu",
    seed: int = 0,
    solver: str = "auto",
    max_shard_size: int | str | None = None,
    progress: bool = True,
    require_aligned: float | None = None,
    dtype: str | torch.dtype | None = None,
):
    r"""Align B to A and write the interpolated checkpoint, one tensor at a time.

    .. math::
        \theta_{out} = (1 - \alpha)\, \theta_A + \alpha\, P(\theta_B)

    The result is the one :func:`weightspace.merge_checkpoints` computes in memory (same
    permutation, same tensors bit for bit), but neither checkpoint is ever loaded whole: the
    model is traced on the meta device (:func:`trace_without_weights`), the permutation found by
    :func:`streaming_weight_matching`, and every merged tensor computed from one tensor of A and
    one of B and appended to the output. Peak memory is a few tensors plus one similarity matrix.

    Everything is checked before the matching starts: the method (``"weight"`` or ``"none"``;
    activation and STE matching and REPAIR run the model, so they need it in memory), ``alpha``,
    the output path, that A and B have the same tensor names and shapes (from the file headers),
    that both fit the model and are finite. The output is written atomically: every shard and
    the index go to temporary files renamed into place only when all were written, so a failure
    (a merged tensor that overflows, a full disk) leaves the previous output, if any, untouched.

    Args:
        path_a, path_b (str or PathLike): checkpoints A (the reference) and B: ``.safetensors``
            files, sharded Hugging Face checkpoints (``*.index.json`` or their directory), or
            ``.pt`` files (read whole: only safetensors is read tensor by tensor).
        out (str or PathLike): a ``.safetensors`` file, or a directory or
            ``*.safetensors.index.json`` for the sharded layout (``model-00001-of-0000N.safetensors``
            and ``model.safetensors.index.json``).
        model, model_kwargs, input_shape: as for :func:`weightspace.merge_checkpoints`.
        method (str, optional): ``"weight"`` or ``"none"``. (default: ``"weight"``)
        alpha (float, optional): weight of B, in ``[0, 1]``. (default: ``0.5``)
        device (str or torch.device, optional): where the similarity products are computed
            (``"cpu"``, ``"cuda"``, ``"auto"``); tensors are read to the CPU. (default: ``"cpu"``)
        seed (int, optional): seeds weight matching's sweep order. (default: ``0``)
        solver (str, optional): the assignment solver. (default: ``"auto"``)
        max_shard_size (int or str, optional): bytes per output shard (``"2GB"``, ``"500MiB"``);
            needs a sharded output. (default: ``None``: one shard)
        progress (bool, optional): progress bars on stderr. (default: ``True``)
        dtype (str or torch.dtype, optional): the dtype of the merged float tensors, as for
            :func:`weightspace.merge_checkpoints`. (default: ``None``: A's dtype)

    Returns:
        MergeResult: as :func:`weightspace.merge_checkpoints` returns (``path`` is the index for
        a sharded output); ``provenance["streaming"]`` is true.

    Raises:
        ValueError: any bad input above, with a one-line message naming the file and the problem.

    Example:
        >>> streaming_merge("a/", "b/", "merged/", max_shard_size="2GB")  # doctest: +SKIP
    """

    fn = "merge_checkpoints"
    t0 = time.perf_counter()
    method = check_method(method, fn)
    if method not in ("weight", "none"):
        raise ValueError(f"{fn}: the low-memory (streaming) merge aligns by weight matching or not at all; "
                         f"method {method!r} runs the model on data and needs it in memory (drop "
                         f"--low-memory / --max-shard-size, or use --method weight)")
    alpha = check_alpha(alpha, fn)
    parse_dtype(dtype, fn)
    out = Path(out)
    hf_out = hf_inputs([path_a, path_b], model)
    if hf_out:  # a Hugging Face directory: model.safetensors, or shards with max_shard_size
        from .hf import check_output_dir

        check_output_dir(out, [path_a, path_b], fn)
        kind, target = output_layout(out / "model.safetensors.index.json", max_shard_size) if max_shard_size is not None \
            else ("safetensors", out / "model.safetensors")
    else:
        kind, target = output_layout(out, max_shard_size)
    if kind == "torch":
        raise ValueError(f"{fn}: the low-memory merge writes safetensors; the output {out} must end in "
                         f".safetensors or .safetensors.index.json, or be a directory")
    limit = parse_size(max_shard_size, out) if max_shard_size is not None else None
    if not hf_out:
        check_not_input(out, [path_a, path_b])
    dev = resolve_device(device)
    with open_checkpoint(path_a, mmap=False) as ca, open_checkpoint(path_b, mmap=False) as cb:
        check_same_states(ca, cb, path_a, path_b, fn, ca.shape, cb.shape)
        shape = input_shape
        if shape is None:
            shape = ca.metadata.get(INPUT_SHAPE_KEY) or cb.metadata.get(INPUT_SHAPE_KEY)
        meta_b = cb.metadata if MODEL_KEY in cb.metadata else ca.metadata
        if model is None and MODEL_KEY not in ca.metadata and MODEL_KEY in cb.metadata:
            meta_a = cb.metadata  # A records no model: it is B's
        else:
            meta_a = ca.metadata
        structure, module, spec = trace_without_weights(model, model_kwargs, metadata=meta_a, path=str(path_a),
                                                        input_shape=shape)
        if method != "none":
            check_aligned(structure, source=str(path_a), require=require_aligned)
        if model is None and MODEL_KEY in meta_b:
            spec_b = recorded_spec(meta_b, model_kwargs)
            if spec_b != spec:
                warnings.warn(f"{fn}: {path_a} records model {spec} but {path_b} records {spec_b}; "
                              f"using A's (pass --model to choose)", stacklevel=2)
        check_fits(ca, module, path=str(path_a))
        check_fits(cb, module, path=str(path_b))
        check_finite(ca, str(path_a))
        check_finite(cb, str(path_b))
        plan = plan_dtypes([ca, cb], [path_a, path_b], fn, dtype, dtype_of=[ca.dtype, cb.dtype])
        if shape is None and getattr(module, "input_shape", None) is not None:
            shape = module.input_shape
        shape = tuple(int(s) for s in parse_input_shape(shape)) if shape is not None else None
        del module

        t1 = time.perf_counter()
        sweeps = None
        if method == "weight":
            found = streaming_weight_matching_two_starts(structure, ca, cb, seed=seed, solver=solver, device=dev,
                                                         progress=progress, fn=fn)
            perms, sweeps = found.perms, found.sweeps
        else:
            perms = identity_permutation(structure)
        align_seconds = time.perf_counter() - t1

        files = (ca.info.files + ((ca.info.index,) if ca.info.index else ()),
                 cb.info.files + ((cb.info.index,) if cb.info.index else ()))
        record = provenance(
            "weightspace merge", [file_record(p, fs) for p, fs in zip((path_a, path_b), files)],
            method=method, alpha=alpha, repair="none", seed=seed, data=None, sweeps=sweeps, streaming=True,
            **({"dtype": str(plan.out).removeprefix("torch.")} if plan.out is not None else {}))
        metadata = {MODEL_KEY: spec, PROVENANCE_KEY: json.dumps(record, sort_keys=True)}
        if shape is not None:
            metadata[INPUT_SHAPE_KEY] = ",".join(str(s) for s in shape)

        keys = list(ca) + [k for k in cb if k not in ca]  # a counter only B has comes last, as in memory

        tensors = TensorMerge(structure, perms, alpha, plan, fn, out)

        def merged(k: str) -> Tensor:
            if k not in ca:
                return cb[k].clone()
            if not (ca.dtype(k).is_floating_point or ca.dtype(k).is_complex):
                return ca[k]
            return tensors.tensor(k, ca[k], cb[k])  # no reference kept here: the inputs go as soon as used

        entries = []
        for k in keys:
            dtype = plan.out_dtype(ca.dtype(k)) if k in ca else cb.dtype(k)
            if not writable_dtype(dtype):
                raise ValueError(f"{fn}: {k!r} has dtype {dtype}, which the streaming writer cannot store")
            entries.append((k, dtype, ca.shape(k) if k in ca else cb.shape(k)))
        if hf_out:
            from .hf import output_metadata, write_hf_dir

            meta = output_metadata(PROVENANCE_KEY, record)
            path = write_hf_dir(out, path_a, lambda d: save_streamed(entries, merged, d / target.name, kind=kind,
                                                                     max_bytes=limit, metadata=meta,
                                                                     inputs=[path_a, path_b], progress=progress),
                                [path_a, path_b], fn)
        else:
            path = save_streamed(entries, merged, target, kind=kind, max_bytes=limit, metadata=metadata,
                                 inputs=[path_a, path_b], progress=progress)
    return MergeResult(path=path, method=method, alpha=alpha, repair="none", perms=perms, sweeps=sweeps,
                       align_seconds=align_seconds, seconds=time.perf_counter() - t0, model=spec,
                       input_shape=shape, provenance=record, notes=tuple(plan.notes), copied=tuple(plan.copied))
