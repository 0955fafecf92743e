"""Merge N checkpoints at once: the library behind ``weightspace merge-many``.

Everything is validated before the first long computation; the merged checkpoint is written
atomically as ``.safetensors`` with its model, input shape and provenance in the metadata.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import merging
from graphs import permute
from merging.many_methods import get_many_method, list_many_methods

from .api import INPUT_SHAPE_KEY, MODEL_KEY, PROVENANCE_KEY, LoadedModel, load_model
from ._dtypes import parse_dtype, plan_dtypes
from .checkpoint import check_not_input, open_checkpoint, save
from .pipeline import (as_dtype, provenance, check_data_fits, check_same_states, file_record, has_batchnorm, hf_inputs,
                    input_shape_of, resolve_data, resolve_device, run_dtype, save_hf, structure_of)
from .models import model_spec_from_json
from .trust import takes_trust_flag

__all__ = ["MANY_METHODS", "MergeManyResult", "merge_many_checkpoints"]

#: Methods of ``weightspace merge-many``, in the order the CLI lists them (:func:`merging.list_many_methods`).
MANY_METHODS = tuple(list_many_methods())
PathLike = str | os.PathLike


@dataclass(frozen=True)
class MergeManyResult:
    """What :func:`merge_many_checkpoints` did.

    Attributes:
        path (Path): the merged checkpoint written.
        method (str): one of :data:`MANY_METHODS`.
        repair (str): ``"none"``, ``"repair"`` or ``"reset_bn"``.
        perms (list[dict[str, Tensor]]): the permutation applied to each input (model 0's basis).
        passes (int, optional): MergeMany passes over the models, or C2M3's Frank-Wolfe
            iterations (``None`` for ``average``).
        align_seconds (float): time spent aligning.
        seconds (float): total time.
        model (str): the model spec recorded in the output.
        input_shape (tuple[int, ...], optional): the input shape recorded in the output.
        provenance (dict): what is recorded under ``weightspace.provenance``.
        notes (tuple[str, ...]): one-line notes on fallbacks (inputs of different dtypes).
        copied (tuple[str, ...]): non-float tensors, copied from the first checkpoint.
    """

    path: Path
    method: str
    repair: str
    perms: list[dict[str, Tensor]]
    passes: int | None
    align_seconds: float
    seconds: float
    model: str
    input_shape: tuple[int, ...] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    copied: tuple[str, ...] = ()

    @property
    def units_moved(self) -> int:
        """Hidden units moved, over all models and groups."""
        return sum(int((p != torch.arange(len(p))).sum()) for ps in self.perms for p in ps.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.path), "method": self.method, "repair": self.repair, "passes": self.passes,
            "models": len(self.perms), "units_moved": self.units_moved,
            "align_seconds": round(self.align_seconds, 4), "seconds": round(self.seconds, 4),
            "model": json.loads(self.model), "input_shape": list(self.input_shape) if self.input_shape else None,
            "provenance": self.provenance, "notes": list(self.notes), "copied_from_a": list(self.copied),
        }


def _load_many(paths: Sequence[PathLike], model: str | None, model_kwargs: Any, input_shape: Any,
               device: torch.device, fn: str) -> tuple[list[LoadedModel], list[tuple[Path, ...]]]:
    """Compare every file's header with the first, then load all into one architecture."""
    files = []
    with open_checkpoint(paths[0]) as c0:
        files.append(c0.info.files + ((c0.info.index,) if c0.info.index else ()))
        for p in paths[1:]:
            with open_checkpoint(p) as c:
                check_same_states(c0, c, paths[0], p, fn, c0.shape, c.shape)
                files.append(c.info.files + ((c.info.index,) if c.info.index else ()))
    first = load_model(paths[0], model, model_kwargs, input_shape=input_shape, device=device)
    models = [first]
    for p in paths[1:]:
        if model is None:
            name, kwargs = model_spec_from_json(first.spec)
            models.append(load_model(p, name, kwargs, input_shape=input_shape, device=device))
        else:
            models.append(load_model(p, model, model_kwargs, input_shape=input_shape, device=device))
    for m in models[1:]:  # a num_batches_tracked counter only some have
        for k in set(first.state) - set(m.state):
            m.state[k] = first.state[k].clone()
        for k in set(m.state) - set(first.state):
            del m.state[k]
    if first.input_shape is None:
        first.input_shape = next((m.input_shape for m in models if m.input_shape is not None), None)
    return models, files


@takes_trust_flag
def merge_many_checkpoints(
    paths: Sequence[PathLike],
    out: PathLike,
    *,
    model: str | None = None,
    model_kwargs: str | Mapping[str, Any] | None = None,
    input_shape: str | tuple[int, ...] | None = None,
    method: str = "mergemany",
    data: str | Iterable[Any] | None = None,
    repair: bool = False,
    max_iter: int = 100,
    device: str | torch.device = "cpu",
    seed: int = 0,
    solver: str = "auto",
    progress: bool = True,
    dtype: str | torch.dtype | None = None,
) -> MergeManyResult:
    r"""Align N checkpoints to each other and write their average.

    .. math::
        \theta_{out} = \frac1N \sum_i \pi_i(\theta_i)

    ``"mergemany"`` finds the :math:`\pi_i` with :func:`merging.merge_many` (Git Re-Basin,
    https://arxiv.org/abs/2209.04836); ``"c2m3"`` with :func:`merging.c2m3_merge`
    (cycle-consistent matching through a universe space, https://arxiv.org/abs/2405.17897);
    ``"average"`` uses identities (naive averaging). With
    ``repair=True`` the merged statistics are fixed with ``data`` (:func:`merging.repair_many`:
    REPAIR towards the mean statistics, or the BatchNorm reset). Everything is validated before
    any long computation and nothing is written on error.

    Args:
        paths (list of str or PathLike): at least two checkpoints of one architecture; the first
            gives the basis of hidden units and the recorded model.
        out (str or PathLike): the ``.safetensors`` file to write (not one of the inputs).
        model, model_kwargs, input_shape: as for :func:`weightspace.merge_checkpoints`.
        method (str, optional): one of :data:`MANY_METHODS`. (default: ``"mergemany"``)
        data (str or Iterable, optional): needed by ``repair`` (its train split is used).
        repair (bool, optional): fix the activation statistics. (default: ``False``)
        max_iter (int, optional): MergeMany passes or C2M3 iterations at most. (default: ``100``)
        device (str or torch.device, optional): ``"cpu"``, ``"cuda"`` or ``"auto"``. (default: ``"cpu"``)
        seed (int, optional): seeds the alignment. (default: ``0``)
        solver (str, optional): the assignment solver of the alignment, one of
            :func:`merging.list_solvers`. (default: ``"auto"``)
        progress (bool, optional): progress bars on stderr. (default: ``True``)
        dtype (str or torch.dtype, optional): the dtype of the merged float tensors
            (``"float32"``, ``"float64"``, ``"bfloat16"``, ``"float16"``); inputs of different
            dtypes are aligned and averaged in their promoted dtype (a note in
            ``MergeManyResult.notes`` says so); non-float tensors are copied from the first.
            (default: ``None``: the first checkpoint's dtype)

    Returns:
        MergeManyResult: the output path, permutations, timings and provenance.

    Raises:
        ValueError: unknown method, fewer than two inputs, a bad output path, missing data for
            ``repair``, inputs of different architectures (:class:`weightspace.CheckpointError` for files).

    Example:
        >>> r = merge_many_checkpoints(["a.safetensors", "b.safetensors", "c.safetensors"], "m.safetensors")  # doctest: +SKIP
    """
    fn = "merge_many_checkpoints"
    t0 = time.perf_counter()
    merge_fn = get_many_method(method, fn).value
    merging.resolve_solver(solver, caller=fn)
    paths = list(paths)
    if len(paths) < 2:
        raise ValueError(f"{fn}: needs at least two checkpoints, got {len(paths)}")
    parse_dtype(dtype, fn)
    out = Path(out)
    hf_out = hf_inputs(paths, model)
    if hf_out:  # Hugging Face directories in, one out
        from .hf import check_output_dir

        check_output_dir(out, paths, fn)
    elif out.suffix != ".safetensors":
        raise ValueError(f"{fn}: the output {out} must end in .safetensors")
    elif out.is_dir():
        raise ValueError(f"{fn}: the output {out} is a directory; give a file name ending in .safetensors")
    else:
        check_not_input(out, paths)
    if repair and data is None:
        raise ValueError(f"{fn}: --repair needs data (--data D, e.g. --data digits)")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"{fn}: max_iter must be a positive integer, got {max_iter!r}")
    dev = resolve_device(device)
    models, files = _load_many(paths, model, model_kwargs, input_shape, dev, fn)
    plan = plan_dtypes([m.state for m in models], paths, fn, dtype)
    a = models[0]
    batches, data_label = (None, None)
    if data is not None:
        batches, data_label = resolve_data(data, "train")
        check_data_fits(a, batches, data_label, dev, fn)
    structure = structure_of(a, batches)
    shape = input_shape_of(a, batches)

    t_align = time.perf_counter()
    states = [{k: v.to(dev) for k, v in m.state.items()} for m in models]
    # the first model's float tensors in the common dtype: the means come out in it
    states[0] = {k: v.to(plan.work_dtype(*(s[k].dtype for s in states))) if v.is_floating_point() else v
                 for k, v in states[0].items()}
    many = merge_fn(structure, states, max_iter=max_iter, seed=seed, solver=solver, progress=progress)
    merged, perms, passes = many.merged, many.perms, many.iterations
    align_seconds = time.perf_counter() - t_align
    correction = "none"
    if repair:
        correction = "reset_bn" if has_batchnorm(a) else "repair"
        aligned = [permute(structure, s, p) for s, p in zip(states, perms)]
        run = run_dtype(a)  # the model runs in its own dtype
        merged = merging.repair_many(a.module, [as_dtype(s, run) for s in aligned], as_dtype(merged, run), batches,
                                     device=dev)
    merged = plan.finish(merged, a.state)
    for k, v in merged.items():
        if (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all()):
            raise ValueError(f"{fn}: the merged tensor {k!r} has NaN or Inf values; nothing was written to {out}")


    record = provenance(
        "weightspace merge-many", [file_record(p, fs) for p, fs in zip(paths, files)],
        method=method, repair=correction, seed=seed, max_iter=max_iter, data=data_label if repair else None,
        passes=passes, **({"dtype": str(plan.out).removeprefix("torch.")} if plan.out is not None else {}))
    metadata = {MODEL_KEY: a.spec, PROVENANCE_KEY: json.dumps(record, sort_keys=True)}
    if shape is not None:
        metadata[INPUT_SHAPE_KEY] = ",".join(str(s) for s in shape)
    if hf_out:
        path = save_hf({k: v.cpu() for k, v in merged.items()}, out, paths[0], record, paths)
    else:
        path = save({k: v.cpu() for k, v in merged.items()}, out, metadata=metadata, inputs=paths)
    return MergeManyResult(path=path, method=method, repair=correction, perms=[{g: p.cpu() for g, p in ps.items()}
                                                                            for ps in perms],
                           passes=passes, align_seconds=align_seconds, seconds=time.perf_counter() - t0,
                           model=a.spec, input_shape=shape, provenance=record, notes=tuple(plan.notes),
                           copied=tuple(plan.copied))
