"""Merge recipes in YAML (mergekit style): one file describes a reproducible merge.

.. code-block:: yaml

    merge_method: ties
    base_model: base.safetensors
    models:
      - model: math.safetensors
        parameters: {weight: 1.0, density: 0.3}
      - model: code.safetensors
        parameters: {weight: 0.5, density: 0.3}
    parameters: {lambda: 1.0}
    align: false          # permute every model onto the base first (weight matching)
    dtype: float32
    out: merged.safetensors

Relative paths are resolved against the recipe's directory. Per-model parameters become one
list per parameter (``weight`` -> ``weights``); ``lambda`` is the method's ``scale``.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import merging

from .api import INPUT_SHAPE_KEY, MODEL_KEY, PROVENANCE_KEY
from .checkpoint import check_not_input, load, open_checkpoint, save
from .trust import check_model_name, takes_trust_flag

__all__ = ["Recipe", "RecipeModel", "load_recipe", "run_recipe"]

PathLike = str | os.PathLike
_KEYS = {"merge_method", "base_model", "models", "parameters", "dtype", "out", "align", "seed", "model",
         "model_kwargs", "input_shape"}
_ALIASES = {"weight": "weights", "lambda": "scale"}
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


@dataclass(frozen=True)
class RecipeModel:
    """One input model of a recipe: its path and its own parameters (``weight``, ``density``)."""

    path: Path
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Recipe:
    """A validated merge recipe (see the module docstring for the YAML form).

    Attributes:
        merge_method (str): a name from :func:`merging.list_methods`.
        models (tuple[RecipeModel, ...]): the models merged.
        base_model (Path, optional): the base (needed by task-vector methods).
        parameters (dict): method-wide parameters, recipe names (``lambda``, ``t``, ...).
        dtype (str, optional): dtype of the floating output tensors.
        out (Path, optional): where to write (``-o`` overrides it).
        align (bool): permute every model onto the base (or the first model) first.
        seed (int): seeds random drops and weight matching.
        model, model_kwargs, input_shape: the architecture, for ``align`` when the checkpoints
            do not record it.
        source (Path, optional): the recipe file.
        text (str): the recipe as written (recorded in the provenance).
    """

    merge_method: str
    models: tuple[RecipeModel, ...]
    base_model: Path | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    out: Path | None = None
    align: bool = False
    seed: int = 0
    model: str | None = None
    model_kwargs: dict[str, Any] | None = None
    input_shape: str | None = None
    source: Path | None = None
    text: str = ""

    def method_parameters(self) -> dict[str, Any]:
        """Keyword arguments for the method: global parameters, and per-model ones as lists."""
        params = {_ALIASES.get(k, k): v for k, v in self.parameters.items()}
        per_model = sorted({k for m in self.models for k in m.parameters})
        for k in per_model:
            name = _ALIASES.get(k, k)
            default = self.parameters.get(k, 1.0)
            params[name] = [m.parameters.get(k, default) for m in self.models]
        return params


def _fail(where: str, msg: str) -> ValueError:
    return ValueError(f"load_recipe: {where}: {msg}")


@takes_trust_flag
def load_recipe(path: PathLike) -> Recipe:
    """Read and validate a YAML recipe; nothing is loaded or written yet.

    Checks the keys, that the method is registered and takes the given parameters, that every
    model file exists, and that all checkpoints hold the same tensors with the same shapes
    (from the file headers).

    Args:
        path (str or PathLike): the ``.yaml`` file.

    Returns:
        Recipe: the validated recipe, with paths resolved against the recipe's directory.

    Raises:
        ValueError: a missing or malformed file, an unknown key or method (the message lists the
            choices), a missing model file, or checkpoints of different shapes.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"load_recipe: {path}: no such file")
    text = path.read_text()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise _fail(str(path), f"not valid YAML ({' '.join(str(e).split())[:120]})") from None
    if not isinstance(raw, dict):
        raise _fail(str(path), "a recipe is a mapping with merge_method, models, base_model, parameters")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise _fail(str(path), f"unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(_KEYS))}")
    if "merge_method" not in raw:
        raise _fail(str(path), f"missing merge_method; choose one of: {', '.join(merging.list_methods())}")
    name = raw["merge_method"]
    if name not in merging.list_methods():
        raise _fail(str(path), f"unknown merge_method {name!r}; choose one of: {', '.join(merging.list_methods())}")
    root = path.parent

    def resolve(p: Any, what: str) -> Path:
        if not isinstance(p, (str, os.PathLike)) or not str(p):
            raise _fail(str(path), f"{what} must be a file path, got {p!r}")
        q = Path(p)
        q = q if q.is_absolute() else root / q
        if not q.exists():
            raise _fail(str(path), f"{what} {q}: no such file")
        return q

    entries = raw.get("models")
    if not isinstance(entries, list) or not entries:
        raise _fail(str(path), "models must be a non-empty list of {model: PATH, parameters: {...}}")
    models = []
    for i, e in enumerate(entries):
        if isinstance(e, str):
            e = {"model": e}
        if not isinstance(e, dict) or "model" not in e or set(e) - {"model", "parameters"}:
            raise _fail(str(path), f"models[{i}] must be {{model: PATH, parameters: {{...}}}}, got {e!r}")
        params = e.get("parameters") or {}
        if not isinstance(params, dict):
            raise _fail(str(path), f"models[{i}].parameters must be a mapping, got {params!r}")
        models.append(RecipeModel(resolve(e["model"], f"models[{i}]"), dict(params)))
    base = resolve(raw["base_model"], "base_model") if raw.get("base_model") is not None else None
    if base is not None and name == "slerp":  # mergekit lists the base among the models too
        models = [m for m in models if m.path.resolve() != base.resolve()]
    params = raw.get("parameters") or {}
    if not isinstance(params, dict):
        raise _fail(str(path), f"parameters must be a mapping, got {params!r}")
    dtype = raw.get("dtype")
    if dtype is not None and dtype not in _DTYPES:
        raise _fail(str(path), f"unknown dtype {dtype!r}; choose one of: {', '.join(_DTYPES)}")
    out = raw.get("out")
    if out is not None:
        out = Path(out) if Path(out).is_absolute() else root / out
    if raw.get("model") is not None:
        check_model_name(raw["model"], source=str(path))
    recipe = Recipe(merge_method=name, models=tuple(models), base_model=base, parameters=dict(params),
                    dtype=dtype, out=out, align=bool(raw.get("align", False)), seed=int(raw.get("seed", 0)),
                    model=raw.get("model"), model_kwargs=raw.get("model_kwargs"),
                    input_shape=None if raw.get("input_shape") is None else str(raw["input_shape"]),
                    source=path, text=text)
    try:
        merging.get_method(name).check_parameters(recipe.method_parameters())
    except ValueError as e:
        raise _fail(str(path), str(e)) from None
    _check_shapes(recipe)
    return recipe


def _inputs(recipe: Recipe) -> list[Path]:
    return ([recipe.base_model] if recipe.base_model is not None else []) + [m.path for m in recipe.models]


def _check_shapes(recipe: Recipe) -> None:
    files = _inputs(recipe)
    with open_checkpoint(files[0]) as ref:
        shapes = {k: ref.shape(k) for k in ref}
    for f in files[1:]:
        with open_checkpoint(f) as c:
            keys = set(c)
            if keys != set(shapes):
                k = sorted(keys ^ set(shapes))[0]
                raise _fail(str(recipe.source), f"{f} and {files[0]} hold different tensors ({k!r} is in only one)")
            for k in shapes:
                if tuple(c.shape(k)) != tuple(shapes[k]):
                    raise _fail(str(recipe.source), f"{k!r} has shape {tuple(c.shape(k))} in {f} and "
                                f"{tuple(shapes[k])} in {files[0]}")


@takes_trust_flag
def run_recipe(recipe: Recipe | PathLike, out: PathLike | None = None) -> Path:
    """Run a recipe and write the merged checkpoint atomically (``.safetensors``).

    The output records the model spec and input shape of the base (else the first model) and a
    provenance record: the recipe text, every input's SHA-256, the method and its parameters.

    Args:
        recipe (Recipe or path): from :func:`load_recipe`, or a recipe file.
        out (str or PathLike, optional): overrides the recipe's ``out``.

    Returns:
        Path: the file written.

    Raises:
        ValueError: no output given, a bad output path, or anything :func:`load_recipe` or the
            method rejects; nothing is written then.
    """
    from .merge import _file_record

    fn = "run_recipe"
    t0 = time.perf_counter()
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    out = Path(out) if out is not None else recipe.out
    if out is None:
        raise ValueError(f"{fn}: no output: give -o OUT or `out:` in the recipe {recipe.source}")
    if out.suffix != ".safetensors":
        raise ValueError(f"{fn}: the output {out} must end in .safetensors")
    check_not_input(out, _inputs(recipe))
    params = recipe.method_parameters()
    seed = params.pop("seed", recipe.seed)  # merge_states passes it on to the methods that draw (dare_*)
    base, base_info = (load(recipe.base_model, return_info=True) if recipe.base_model is not None else (None, None))
    states = []
    infos = []
    for m in recipe.models:
        s, info = load(m.path, return_info=True)
        states.append(s)
        infos.append(info)
    ref_meta = (base_info or infos[0]).metadata
    structure = None
    if recipe.align:
        from .api import load_model, trace_model

        lm = load_model(recipe.base_model or recipe.models[0].path, recipe.model, recipe.model_kwargs,
                        input_shape=recipe.input_shape)
        structure = trace_model(lm.module, input_shape=lm.input_shape)
    merged = merging.merge_states(recipe.merge_method, states, base=base, structure=structure,
                                  align=recipe.align, seed=seed, **params)
    if recipe.dtype is not None:
        merged = {k: v.to(_DTYPES[recipe.dtype]) if v.is_floating_point() else v for k, v in merged.items()}
    for k, v in merged.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ValueError(f"{fn}: the merged tensor {k!r} has NaN or Inf values; nothing was written to {out}")

    from weightspace import __version__

    provenance = {
        "tool": "weightspace merge --config",
        "recipe": recipe.text,
        "recipe_path": str(recipe.source) if recipe.source else None,
        "method": recipe.merge_method,
        "parameters": {k: v for k, v in params.items()},
        "align": recipe.align,
        "inputs": [_file_record(p, (p,)) for p in _inputs(recipe)],
        "seconds": round(time.perf_counter() - t0, 4),
        "weightspace_version": __version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    metadata = {PROVENANCE_KEY: json.dumps(provenance, sort_keys=True, default=str)}
    for key in (MODEL_KEY, INPUT_SHAPE_KEY):
        if key in ref_meta:
            metadata[key] = ref_meta[key]
    return save(merged, out, metadata=metadata, inputs=_inputs(recipe))
