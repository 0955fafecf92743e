"""Running a recipe (:func:`run_recipe`): tensor by tensor, each output tensor read, merged in the
compute dtype, cast to the written dtype, checked finite and written; a ``.safetensors`` file with
its provenance, or a Hugging Face directory (:mod:`weightspace.recipe.hf_output`); ``align: true``
permutes the models onto the base first.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import merging
from merging.methods import compute_in_input_dtype

from ..api import INPUT_SHAPE_KEY, MODEL_KEY, PROVENANCE_KEY
from ..checkpoint import check_not_input, sha256_file
from ..pipeline import provenance
from ..trust import takes_trust_flag
from .hf_output import _write_hf_dir
from .parse import load_recipe
from .plan import _Entry, _Plan, plan_recipe
from .spec import _DTYPES, PathLike, Recipe, RecipeError, _err_for, _name, _notice

def _record(path: Path, files: list[Path]) -> dict[str, Any]:
    """Provenance of one input: its path and the SHA-256 of every weight file it is made of."""
    if len(files) == 1 and files[0] == path:
        return {"path": str(path), "sha256": sha256_file(path)}
    return {"path": str(path), "files": {str(f.relative_to(path) if path.is_dir() else f.name): sha256_file(f)
                                          for f in files}}


@takes_trust_flag
def run_recipe(recipe: Recipe | PathLike, out: PathLike | None = None, *, max_shard_size: int | str | None = None,
               progress: bool = False) -> Path:
    """Run a recipe tensor by tensor and write the merged model atomically.

    Each output tensor is made from one tensor of each input, read from disk when it is
    needed, merged in the compute dtype (``dtype``, else the inputs' own), cast to
    ``out_dtype`` (else ``dtype``) and written: memory holds a few tensors, not the models.
    ``out`` ending in ``.safetensors`` is one file recording the model spec and provenance
    (the recipe text, every input file's SHA-256, the method); any other ``out`` is a Hugging
    Face directory that ``from_pretrained`` loads: the weights, the base's (else the first
    model's) ``config.json`` (layer count and dtype updated), its tokenizer (or
    ``tokenizer_source``'s) and the recipe.

    Args:
        recipe (Recipe or path): from :func:`load_recipe`, or a recipe file.
        out (str or PathLike, optional): overrides the recipe's ``out``.
        max_shard_size (int or str, optional): shard the weights of a directory output.
        progress (bool, optional): a progress bar on stderr. (default: ``False``)

    Returns:
        Path: the file or directory written.

    Raises:
        RecipeError: anything :func:`load_recipe` rejects, no output, an output that is an
            input, or a merged tensor with NaN or Inf; nothing is written then.
    """
    fn = "run_recipe"
    t0 = time.perf_counter()
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    err = _err_for(recipe)
    out = Path(out) if out is not None else recipe.out
    if out is None:
        raise RecipeError(f"{fn}: no output: give -o OUT or `out:` in the recipe {recipe.source}")
    hf = out.suffix != ".safetensors"
    if out.suffix in (".pt", ".pth", ".bin", ".ckpt") or out.name.endswith(".json"):
        raise err("out", f"{out}: write a .safetensors file or a directory (a Hugging Face model)")
    if hf and out.exists() and not (out.is_dir() and (not any(out.iterdir()) or
                                                      (out / "weightspace_recipe.yaml").is_file())):
        raise err("out", f"{out} exists and is not an earlier merge output (no weightspace_recipe.yaml in it); "
                         f"choose a new directory or remove it")
    plan = plan_recipe(recipe)
    if not hf:
        for key in ("tokenizer_source", "chat_template"):
            if getattr(recipe, key) is None:
                continue
            if key == "tokenizer_source" and plan.vocab is not None:
                _notice(f"{recipe.source}: {key}: the embeddings follow the output vocabulary ({plan.vocab.size} "
                        f"tokens), but a .safetensors output holds no tokenizer; write a directory (-o merged/) "
                        f"for a Hugging Face model with its tokenizer")
            else:
                _notice(f"{recipe.source}: {key}: ignored: a .safetensors output holds weights only; write a "
                        f"directory (-o merged/) for a Hugging Face model with its tokenizer")
    try:
        return _run(recipe, plan, out, hf, max_shard_size, progress, t0)
    finally:
        for inp in plan.inputs:
            inp.close()


def _run(recipe: Recipe, plan: _Plan, out: Path, hf: bool, max_shard_size: int | str | None, progress: bool,
         t0: float) -> Path:

    from ..checkpoint import save_streamed

    err = _err_for(recipe)
    inputs_paths = plan.paths
    for p in inputs_paths:
        if hf and out.exists() and (out.resolve() == p.resolve() or out.resolve() in p.resolve().parents):
            raise err("out", f"refusing to write {out} over the input {p}; choose another output path")
    if not hf:
        try:
            check_not_input(out, [f for inp in plan.inputs for f in inp.files] + inputs_paths)
        except ValueError as e:
            raise err("out", str(e)) from None
    compute = _DTYPES[recipe.dtype] if recipe.dtype else None
    write = _DTYPES[recipe.out_dtype] if recipe.out_dtype else compute
    in_dtypes = sorted({str(e.in_dtype).replace("torch.", "") for e in plan.entries if e.floating})
    for n in plan.notices:
        _notice(f"{recipe.source}: {n}")
    mixed = sorted({str(plan.inputs[i].dtype(n)).replace("torch.", "") for e in plan.entries if e.floating
                    for i, n in e.inputs + ([e.base] if e.base is not None else [])})
    if compute is None and len(mixed) > 1:
        written = sorted({str(e.in_dtype).replace("torch.", "") for e in plan.entries if e.floating})
        _notice(f"{recipe.source}: the inputs differ in dtype ({', '.join(mixed)}): merged in their promoted dtype, "
                f"written as {', '.join(written)} (set dtype: / out_dtype: to choose)")
    if compute is not None and in_dtypes != [recipe.dtype]:
        _notice(f"{recipe.source}: dtype: computing in {_name(compute)} (the inputs are {', '.join(in_dtypes)})")
    if write is not None and write != compute:
        _notice(f"{recipe.source}: out_dtype: writing {_name(write)} (computed in "
                f"{_name(compute) if compute else ', '.join(in_dtypes)})")
    method = merging.get_method(recipe.merge_method)
    fetch = plan.inputs.__getitem__  # fetch(i)(name): one tensor of input i, as merged
    if recipe.align:
        fetch = _aligned(recipe, plan)

    def read(i: int, name: str) -> Tensor:
        t = fetch(i)[name] if recipe.align else plan.inputs[i].get(name)
        if compute is not None and t.is_floating_point():
            t = t.to(compute)
        return t

    takes_seed = "seed" in method.parameter_names
    by_name = {e.name: e for e in plan.entries}

    def produce(name: str) -> Tensor:
        e = by_name[name]
        if not e.floating:
            i, nm = e.base if e.base else e.inputs[0]
            return fetch(i)[nm] if recipe.align else plan.inputs[i].get(nm)
        if e.vocab:  # each input's rows re-indexed to the output vocabulary first
            srcs = e.inputs + ([e.base] if e.base else [])
            aligned = plan.vocab.align({i: read(i, nm) for i, nm in srcs})
            states = [{name: aligned[i]} for i, _ in e.inputs]
            base = {name: aligned[e.base[0]]} if e.base else None
        else:
            states = [{name: read(i, nm)} for i, nm in e.inputs]
            base = {name: read(*e.base)} if e.base else None
        params = dict(e.params)
        if takes_seed:
            params["seed"] = recipe.seed
        try:
            with compute_in_input_dtype():
                merged = method(states, base, **params)[name]
        except ValueError as exc:
            raise err(name, str(exc)) from None
        if write is not None:
            merged = merged.to(write)
        if not bool(torch.isfinite(merged).all()):
            raise err(name, f"the merged tensor has NaN or Inf values; nothing was written to {out}")
        return merged.contiguous()

    def out_dtype(e: _Entry) -> torch.dtype:
        if not e.floating:
            return e.in_dtype
        return write or e.in_dtype

    entries = [(e.name, out_dtype(e), tuple(e.shape)) for e in plan.entries]
    record = provenance(
        "weightspace merge --config", [_record(p, inp.files) for p, inp in zip(plan.paths, plan.inputs)],
        recipe=recipe.text, recipe_path=str(recipe.source) if recipe.source else None, method=recipe.merge_method,
        parameters=recipe.parameters, seed=recipe.seed, align=recipe.align)
    metadata = {PROVENANCE_KEY: json.dumps(record, sort_keys=True, default=str)}
    if not hf:
        ref_meta = plan.inputs[plan.donor].metadata
        for key in (MODEL_KEY, INPUT_SHAPE_KEY):
            if key in ref_meta:
                metadata[key] = ref_meta[key]
        try:
            return save_streamed(entries, produce, out, kind="safetensors", metadata=metadata, progress=progress)
        except RecipeError:
            raise
        except ValueError as e:
            raise err("", str(e)) from None
    metadata["format"] = "pt"
    return _write_hf_dir(recipe, plan, out, entries, produce, metadata, max_shard_size, progress, write)


def _aligned(recipe: Recipe, plan: _Plan):
    """``align: true``: every input permuted onto the base (else the first model) by weight
    matching, tensor by tensor: the model is traced on the meta device (no weights allocated),
    each input matched to the reference with :func:`weightspace.streaming_weight_matching` (its
    similarity matrices accumulated from one tensor pair at a time), and each tensor permuted when
    it is read. Buffers (BatchNorm statistics) come from the reference. Returns ``fetch(i)``, a
    mapping from tensor names to input ``i``'s aligned tensors."""
    from graphs import permute

    from ..api import INPUT_SHAPE_KEY
    from merging.matching import streaming_weight_matching

    from ..api import trace_without_weights

    ref = plan.inputs[plan.donor]
    shape = recipe.input_shape or ref.metadata.get(INPUT_SHAPE_KEY)
    structure, _, _ = trace_without_weights(recipe.model, recipe.model_kwargs, metadata=ref.metadata,
                                            path=str(plan.paths[plan.donor]), input_shape=shape)
    perms = {i: streaming_weight_matching(structure, ref, inp, seed=recipe.seed)
             for i, inp in enumerate(plan.inputs) if i != plan.donor}

    class _Aligned:
        def __init__(self, i: int) -> None:
            self.i = i

        def __getitem__(self, name: str) -> Tensor:
            if structure.is_buffer(name) and name in ref:
                return ref.get(name)
            t = plan.inputs[self.i].get(name)
            if self.i == plan.donor or name not in structure.axes:
                return t
            return permute(structure, {name: t}, perms[self.i])[name]

    views = {i: _Aligned(i) for i in range(len(plan.inputs))}
    return views.__getitem__
