"""Merging checkpoints larger than memory: weight matching and interpolation one tensor at a time.

:func:`streaming_weight_matching` runs the same coordinate descent as
:func:`merging.weight_matching` (same sweep order, same skipping of groups whose neighbours did
not move, same warm-started solver), but never holds a state dict: each group's similarity
matrix is accumulated tensor by tensor from two lazily opened checkpoints, every tensor being
read, used and dropped. :func:`streaming_merge` then writes the merged checkpoint tensor by
tensor into ``.safetensors`` shards (Hugging Face layout with its ``*.index.json``), every file
atomically. Peak memory is a few tensors plus one ``n x n`` similarity matrix, whatever the
size of the model. The model is only traced, on the ``meta`` device, so it is never allocated.
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
from torch import Tensor, nn

from graphs import Structure, group_rows, identity_permutation, permute, trace
from merging.matching.weight import (WeightMatchingResult, coordinate_descent, from_two_starts, start_permutations,
                                     work_dtype)

from .api import INPUT_SHAPE_KEY, MODEL_KEY, PROVENANCE_KEY, build_model, check_aligned, recorded_spec, trace_model
from .checkpoint import (
    brief_error,
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
from .models import example_input_for, parse_input_shape
from .hf import is_hf_module
from .alignment import check_method
from .pipeline import (MergeResult, TensorMerge, check_alpha, check_same_states, file_record, hf_inputs, provenance,
                       resolve_device)
from .trust import takes_trust_flag

__all__ = ["streaming_weight_matching", "streaming_weight_matching_result", "streaming_merge", "trace_without_weights", "is_sharded"]

PathLike = str | os.PathLike
logger = logging.getLogger(__name__)
_LOW_PRECISION = (torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------- matching


def _shape(state: Mapping[str, Tensor], name: str) -> tuple[int, ...]:
    shape = getattr(state, "shape", None)
    return tuple(shape(name)) if callable(shape) else tuple(state[name].shape)


def _dtype(state: Mapping[str, Tensor], name: str) -> torch.dtype:
    dtype = getattr(state, "dtype", None)
    return dtype(name) if callable(dtype) else state[name].dtype


def _load(state: Mapping[str, Tensor], name: str, device: torch.device) -> Tensor:
    """One tensor as weight matching sees it: on ``device``, half precision widened to float32."""
    t = state[name].detach()
    return t.to(device=device, dtype=torch.float32 if t.dtype in _LOW_PRECISION else t.dtype)


def _similarity(structure: Structure, state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor],
                keys: set[str], group: str, perms: Mapping[str, Tensor], device: torch.device) -> Tensor:
    """``C = sum_k A_k P(B_k)^T`` over the tensors touching ``group``, each read, used and dropped."""
    dtype = torch.float64 if device.type == "cpu" else torch.float32
    c = None
    done: set[str] = set()
    for name, _ in structure.groups[group].members:
        if name not in keys or name in done:
            continue
        done.add(name)
        a, b = _load(state_a, name, device), _load(state_b, name, device)
        if a.dtype != b.dtype:  # float32 against float64: compare in the promoted dtype
            work = work_dtype(a.dtype, b.dtype)
            a, b = a.to(work), b.to(work)
        rows_b = [m.contiguous() for _, m in group_rows(structure, {name: b}, group, perms)]
        del b
        for (_, ra), rb in zip(group_rows(structure, {name: a}, group), rows_b):
            part = (ra @ rb.T).to(dtype)
            c = part if c is None else c.add_(part)
        del a, rows_b
    if c is None:
        n = structure.groups[group].size
        c = torch.zeros(n, n, dtype=dtype, device=device)
    return c


def _objective(structure: Structure, state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor],
               keys: set[str], perms: Mapping[str, Tensor]) -> float:
    """``sum_k <A_k, P(B)_k>`` over the matched tensors, in float64 chunks of 64k entries (a few hundred kB of temporaries)."""
    total = 0.0
    for k in state_a:
        if k not in keys or all(a is None for a in structure.axes[k]):
            continue
        a = state_a[k].reshape(-1)
        pb = permute(structure, {k: state_b[k]}, perms)[k].reshape(-1)
        for x, y in zip(a.split(1 << 16), pb.split(1 << 16)):
            total += float((x.double() * y.double()).sum())
        del a, pb
    return total


def _check_states(structure: Structure, state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor],
                  fn: str) -> None:
    for name, shape in structure.shapes.items():
        for label, st in (("A", state_a), ("B", state_b)):
            if name not in st:
                if name.endswith("num_batches_tracked"):
                    continue
                raise ValueError(f"{fn}: tensor {name!r} is missing from {label}")
            if _shape(st, name) != tuple(shape):
                raise ValueError(f"{fn}: {name!r} has shape {_shape(st, name)} in {label}; the structure "
                                 f"expects {tuple(shape)}")


def streaming_weight_matching(structure: Structure, state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor],
                              *, max_iter: int = 100, seed: int = 0, init: Mapping[str, Tensor] | None = None,
                              solver: str = "auto", device: str | torch.device = "cpu", progress: bool = False,
                              groups: list[str] | None = None, include_buffers: bool = False,
                              return_info: bool = False) -> dict[str, Tensor]:
    """Weight matching (Git Re-Basin, https://arxiv.org/abs/2209.04836, Algorithm 1) without
    holding either state dict in memory.

    The coordinate descent of :func:`merging.weight_matching`: every sweep visits the groups in
    a fresh random order (the same order for the same ``seed``), skips a group none of whose
    neighbours moved since it was last solved, and solves the linear assignment over

    .. math::
        C_g = \\sum_{k \\ni g} A_k^{(g)} \\, \\big(P_{-g} B_k\\big)^{(g)\\top}

    where :math:`A_k^{(g)}` is tensor :math:`k` of A with :math:`g`'s axis first and the others
    flattened, and :math:`P_{-g}` applies the current permutations of the other groups. Here
    :math:`C_g` is accumulated tensor by tensor: each pair :math:`(A_k, B_k)` is read from the
    checkpoints when needed and dropped after use, so memory holds one ``n x n`` matrix and a
    few tensors. Tensors are re-read at every step (cheap from the page cache); open the
    checkpoints with ``open_checkpoint(path, mmap=False)`` so reading does not leave the files
    mapped into the process.

    The similarity matrices are computed exactly as the in-memory matcher first computes them
    (float32 products of float32 weights, summed in float64 in the same order), so both find the
    same permutations; the in-memory matcher's later low-rank updates differ from a recomputation
    only by rounding.

    Args:
        structure (Structure): from :func:`graphs.trace` (or :func:`trace_without_weights`).
        state_a, state_b (Mapping[str, Tensor]): the two models; lazily loaded
            :class:`weightspace.Checkpoint` objects (or plain dicts).
        max_iter (int, optional): maximum number of sweeps. (default: ``100``)
        seed (int, optional): seeds the order of the groups. (default: ``0``)
        init (dict, optional): warm start (group -> permutation). (default: identity)
        solver (str, optional): ``"auto"``, ``"lap"``, ``"sparse"``, ``"scipy"`` or ``"auction"``, as
            for :func:`merging.weight_matching`. (default: ``"auto"``)
        device (str or torch.device, optional): where the products are computed. (default: ``"cpu"``)
        progress (bool, optional): a progress bar of sweeps on stderr. (default: ``False``)
        groups (list, optional): optimise only these groups; the others keep ``init``.
        include_buffers (bool, optional): let buffers count in the similarity. (default: ``False``)
        return_info (bool, optional): deprecated: also return ``{"sweeps", "objective"}``; use
            :func:`streaming_weight_matching_result`. (default: ``False``)

    Shapes:
        every similarity matrix: ``(n, n)`` with ``n = structure.groups[g].size``.

    Returns:
        ``dict[group, LongTensor]``; apply it with ``weightspace.permute(structure, state_b, perms)``.
        :func:`streaming_weight_matching_result` returns them with the sweeps and the objective.

    Raises:
        ValueError: the checkpoints do not fit the structure, or an unknown group.

    Example:
        >>> with open_checkpoint("a", mmap=False) as a, open_checkpoint("b", mmap=False) as b:  # doctest: +SKIP
        ...     perms = streaming_weight_matching(structure, a, b)
    """
    result = streaming_weight_matching_result(structure, state_a, state_b, max_iter=max_iter, seed=seed, init=init,
                                              solver=solver, device=device, progress=progress, groups=groups,
                                              include_buffers=include_buffers, objective=return_info)
    if return_info:
        warnings.warn("streaming_weight_matching(return_info=True) is deprecated; use "
                      "streaming_weight_matching_result", DeprecationWarning, stacklevel=2)
        return result.perms, {"sweeps": result.sweeps, "objective": result.objective}  # type: ignore[return-value]
    return result.perms


def streaming_weight_matching_result(structure: Structure, state_a: Mapping[str, Tensor],
                                     state_b: Mapping[str, Tensor], *, max_iter: int = 100, seed: int = 0,
                                     init: Mapping[str, Tensor] | None = None, solver: str = "auto",
                                     device: str | torch.device = "cpu", progress: bool = False,
                                     groups: list[str] | None = None, include_buffers: bool = False,
                                     objective: bool = True) -> WeightMatchingResult:
    """:func:`streaming_weight_matching` (same arguments), returning the permutations with the sweeps
    and, with ``objective`` (one more pass over the checkpoints), the matching objective (else NaN).

    Raises:
        ValueError: the checkpoints do not fit the structure, or an unknown group.
    """
    fn = "streaming_weight_matching"
    _check_states(structure, state_a, state_b, fn)
    keys = {k for k in state_a if k in structure.axes and k in state_b and _dtype(state_a, k).is_floating_point
            and _dtype(state_b, k).is_floating_point and (include_buffers or not structure.is_buffer(k))}
    perms, sweeps = _descend(structure, state_a, state_b, keys, max_iter, seed, init, solver, torch.device(device),
                             progress, groups, fn)
    value = _objective(structure, state_a, state_b, keys, perms) if objective else float("nan")
    return WeightMatchingResult(perms, sweeps, value)


def _descend(structure: Structure, state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor], keys: set[str],
             max_iter: int, seed: int, init: Mapping[str, Tensor] | None, solver: str, device: torch.device,
             progress: bool, groups: list[str] | None, fn: str) -> tuple[dict[str, Tensor], int]:
    """The coordinate descent of :func:`streaming_weight_matching` (weight matching's own loop,
    with similarities read tensor by tensor): ``(perms, sweeps)``."""
    perms, groups = start_permutations(structure, init, groups, device, fn)
    sweeps = coordinate_descent(structure, groups, perms,
                                 lambda g: _similarity(structure, state_a, state_b, keys, g, perms, device),
                                 solver=solver, max_iter=max_iter, seed=seed,
                                 progress="weight matching (streaming)" if progress else None)
    return {g: p.cpu() for g, p in perms.items()}, sweeps


# --------------------------------------------------------------------------- tracing


def _distinct_meta_storage(module: nn.Module) -> nn.Module:
    """Give every parameter and buffer of a meta-device module its own place in one meta storage.

    Meta tensors all report ``data_ptr() == 0``, which would make the tracer take every two
    tensors of one shape for tied weights. Views at distinct offsets of one meta storage have
    distinct ``data_ptr()`` and still hold no memory; truly tied tensors (one object) stay one.
    """
    new: dict[int, tuple[Tensor, int]] = {}
    sizes: dict[torch.dtype, int] = {}
    for m in module.modules():
        for d in (m._parameters, m._buffers):
            for t in d.values():
                if t is not None and id(t) not in new:
                    new[id(t)] = (t, sizes.get(t.dtype, 0))
                    sizes[t.dtype] = sizes.get(t.dtype, 0) + max(t.numel(), 1)
    stores = {dt: torch.empty(n, dtype=dt, device="meta") for dt, n in sizes.items()}
    views: dict[int, Tensor] = {}
    for i, (t, off) in new.items():
        v = stores[t.dtype][off:off + t.numel()].view(t.shape)
        views[i] = nn.Parameter(v, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else v
    for m in module.modules():
        for d in (m._parameters, m._buffers):
            for k, t in list(d.items()):
                if t is not None:
                    d[k] = views[id(t)]
    return module


@takes_trust_flag
def trace_without_weights(model: str | None = None, model_kwargs: str | Mapping[str, Any] | None = None, *,
                          metadata: Mapping[str, str] | None = None, path: str | None = None,
                          input_shape: str | tuple[int, ...] | None = None
                          ) -> tuple[Structure, nn.Module, str]:
    """Trace a model family's permutation structure without allocating its weights.

    The module is built under ``torch.device("meta")`` and traced on a meta example input, so
    neither its parameters nor its activations take memory. A meta module computes no values,
    so the tracer's numerical check (permuting the network at random and comparing outputs) is
    skipped; the structure is the one the checked trace gives (tested on every built-in family).
    A model whose forward pass cannot run on the meta device (a data-dependent branch, say) is
    built and traced for real instead, which takes memory of the model's size; a warning says so.

    Args:
        model, model_kwargs: the ``--model`` spec, as for :func:`weightspace.build_model`.
        metadata (Mapping[str, str], optional): a checkpoint's metadata recording the model.
        path (str, optional): that checkpoint, for messages.
        input_shape (str or tuple, optional): one example's shape without the batch axis.

    Returns:
        ``(structure, module, spec)``: the module (on the meta device unless traced for real)
        serves shape checks with :func:`weightspace.check_fits`.

    Raises:
        ValueError: unknown model or bad arguments, or no input shape known.
    """
    with torch.device("meta"):
        module, spec = build_model(model, model_kwargs, metadata=metadata, path=path)
    shape = parse_input_shape(input_shape) if input_shape is not None else None
    try:
        _distinct_meta_storage(module)
        if shape is None and is_hf_module(module):  # a transformers model: keyword inputs, traced by trace_hf
            from .hf import example_input, trace_hf

            return trace_hf(module, _to_meta(example_input(module)), check=False), module, spec
        example = example_input_for(module, shape, batch_size=2)
        example = example.to("meta") if isinstance(example, Tensor) else \
            tuple(x.to("meta") if isinstance(x, Tensor) else x for x in example)
        return trace(module, example, check=False), module, spec
    except Exception as e:  # a forward pass that needs values: trace the real model
        if isinstance(e, ValueError) and "input shape" in str(e):
            raise
        warnings.warn(f"streaming_merge: the model cannot be traced on the meta device ({brief_error(e)}); "
                      f"building it for real, which takes memory of the model's size", stacklevel=2)
        module, spec = build_model(model, model_kwargs, metadata=metadata, path=path)
        return trace_model(module, input_shape=shape), module, spec


def _to_meta(example: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.to("meta") if isinstance(v, Tensor) else v for k, v in example.items()}


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
            _check_states(structure, ca, cb, fn)
            keys = {k for k in ca if k in structure.axes and k in cb and ca.dtype(k).is_floating_point
                    and cb.dtype(k).is_floating_point and not structure.is_buffer(k)}
            def run(init):  # the descent and its objective, as streaming_weight_matching_result reports them
                p, n = _descend(structure, ca, cb, keys, 100, seed, init, solver, dev, progress, None, fn)
                return WeightMatchingResult(p, n, _objective(structure, ca, cb, keys, p))

            found = from_two_starts(run, structure, ca, cb, solver=solver)
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
