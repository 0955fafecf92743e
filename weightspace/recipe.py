"""Merge recipes in YAML: mergekit's recipe language, run tensor by tensor.

.. code-block:: yaml

    merge_method: ties
    base_model: base/                 # a Hugging Face directory, a .safetensors file or a sharded index
    models:
      - model: math/
        parameters:
          weight: [0.2, 0.5, 1.0]     # a gradient over the layers
          density: 0.5
      - model: code/
        parameters:
          weight:
            - filter: self_attn       # tensors whose name contains "self_attn"
              value: 0.8
            - value: 0.3              # every other tensor
          density: 0.5
    parameters: {lambda: 1.0, normalize: true}
    dtype: float32                    # compute dtype (inputs are cast to it)
    out_dtype: bfloat16               # written dtype (default: dtype)
    tokenizer_source: base
    out: merged/                      # a directory: a Hugging Face model; or merged.safetensors

``slices`` (with ``sources`` and ``layer_range``) replace ``models`` to stack or mix layer ranges,
as in mergekit. Our own keys: ``align: true`` (permute every model onto the base by weight
matching first, for our MLP/CNN families), ``seed`` (random drops), ``model``/``model_kwargs``/
``input_shape`` (the architecture for ``align``). Relative paths are resolved against the recipe's
directory. See ``docs/recipes.md`` for the semantics and where they differ from mergekit.

Every field of the recipe is checked, and every input's header read, before a tensor is loaded;
errors name the file and the field: ``recipe.yaml: models[1].parameters.weight: expected ...``.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import merging
from merging.methods import compute_in_input_dtype

from .api import INPUT_SHAPE_KEY, MODEL_KEY, PROVENANCE_KEY
from .checkpoint import _ST_DTYPES, _st_header, _st_pread, check_not_input, open_checkpoint, sha256_file
from .trust import check_model_name, takes_trust_flag

__all__ = ["Recipe", "RecipeError", "RecipeModel", "RecipeSlice", "RecipeSource", "load_recipe", "plan_recipe",
           "run_recipe"]

PathLike = str | os.PathLike
_KEYS = {"merge_method", "base_model", "models", "slices", "parameters", "dtype", "out_dtype", "out", "align",
         "seed", "model", "model_kwargs", "input_shape", "tokenizer_source", "tokenizer", "chat_template"}
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
           "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_YAML_TO_KW = {"weight": "weights", "lambda": "scale"}
_KW_TO_YAML = {"weights": "weight", "scale": "lambda"}
_LAYER = re.compile(r"^(.*?(?:^|\.)(?:layers|h|blocks|layer)\.)(\d+)(\..+)$")
_TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer.model",
                    "added_tokens.json", "merges.txt", "vocab.json", "vocab.txt", "chat_template.jinja",
                    "chat_template.json", "generation_config.json")
_CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
           "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
           "{% endif %}")
_CHAT_TEMPLATES = {"chatml": _CHATML}


class RecipeError(ValueError):
    """A recipe that cannot run: the message names the file and the field."""


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class RecipeModel:
    """One input model of a recipe: its path and its own parameters (``weight``, ``density``, ...)."""

    path: Path
    parameters: dict[str, Any] = field(default_factory=dict)
    label: str = ""


@dataclass(frozen=True)
class RecipeSource:
    """One source of an output slice: a model and the layers ``[start, stop)`` it contributes."""

    path: Path
    layer_range: tuple[int, int]
    parameters: dict[str, Any] = field(default_factory=dict)
    label: str = ""


@dataclass(frozen=True)
class RecipeSlice:
    """An output slice: its sources (same number of layers each), optional base and parameters."""

    sources: tuple[RecipeSource, ...]
    base_model: Path | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    label: str = ""


@dataclass(frozen=True)
class Recipe:
    """A validated merge recipe (see the module docstring for the YAML form).

    Attributes:
        merge_method (str): a name from :func:`merging.list_methods`.
        models (tuple[RecipeModel, ...]): the models merged (empty with ``slices``).
        base_model (Path, optional): the base (needed by the task-vector methods).
        parameters (dict): method-wide parameters, recipe names (``lambda``, ``t``, ...).
        dtype (str, optional): the compute dtype (inputs are cast to it).
        out_dtype (str, optional): the written dtype (default: ``dtype``).
        out (Path, optional): where to write (``-o`` overrides it).
        align (bool): permute every model onto the base (or the first model) first.
        seed (int): seeds random drops and weight matching.
        model, model_kwargs, input_shape: the architecture, for ``align``.
        slices (tuple[RecipeSlice, ...], optional): output slices instead of ``models``.
        tokenizer_source (str or Path, optional): ``"base"`` or a model whose tokenizer is copied.
        chat_template (str, optional): a template name (``chatml``, ``auto``) or a Jinja template.
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
    out_dtype: str | None = None
    slices: tuple[RecipeSlice, ...] | None = None
    tokenizer_source: str | Path | None = None
    chat_template: str | None = None

    def method_parameters(self) -> dict[str, Any]:
        """Keyword arguments for the method when every parameter is a plain number: method-wide
        ones, and per-model ones as lists (for :func:`merging.merge_states`)."""
        method = merging.get_method(self.merge_method)
        per_model = _per_model_kws(method)
        params = {_kw(method, k): v for k, v in self.parameters.items() if _kw(method, k) not in per_model}
        for name in sorted({_kw(method, k) for m in self.models for k in m.parameters} |
                           {_kw(method, k) for k in self.parameters if _kw(method, k) in per_model}):
            default = self.parameters.get(_KW_TO_YAML.get(name, name), _default(method, name))
            params[name] = [m.parameters.get(_KW_TO_YAML.get(name, name), default) for m in self.models]
        return params


# --------------------------------------------------------------------------- parameters


def _kw(method: merging.MergeMethod, yaml_name: str) -> str:
    """The method's keyword for a recipe name (``weight`` -> ``weights``, ``lambda`` -> ``scale``)."""
    kw = _YAML_TO_KW.get(yaml_name, yaml_name)
    if yaml_name == "lambda" and "scale" in _per_model_kws(method):
        return "lambda"  # passthrough's scale is per model: no lambda
    return kw


def _yaml_name(method: merging.MergeMethod, kw: str) -> str:
    if kw == "scale" and kw in _per_model_kws(method):
        return "scale"
    return _KW_TO_YAML.get(kw, kw)


def _per_model_kws(method: merging.MergeMethod) -> set[str]:
    return {p.name for p in method.parameters if "Sequence" in p.annotation}


def _default(method: merging.MergeMethod, kw: str) -> Any:
    for p in method.parameters:
        if p.name == kw:
            return p.default
    return None


def _kind(method: merging.MergeMethod, kw: str) -> str:
    """``number``, ``bool``, ``rescale`` or ``any``: what a leaf value of this parameter must be."""
    if kw == "rescale":
        return "rescale"
    ann = next(p.annotation for p in method.parameters if p.name == kw)
    if "float" in ann or "int" in ann:
        return "number"
    if "bool" in ann:
        return "bool"
    return "any"


_SHAPE_HELP = "expected a number, a list of numbers (a gradient) or a list of {filter, value}"


def _leaf_ok(kind: str, v: Any) -> bool:
    if kind == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if kind == "bool":
        return isinstance(v, bool)
    if kind == "rescale":
        return isinstance(v, bool) or v in ("l1", "density", "none")
    return isinstance(v, (int, float, bool, str))


def _expected(kind: str) -> str:
    return {"number": _SHAPE_HELP, "bool": "expected true or false (or a list of {filter, value})",
            "rescale": "expected true (L1, as mergekit), false or 'density' (or a list of {filter, value})",
            "any": "expected a value, a list (a gradient) or a list of {filter, value}"}[kind]


def _check_setting(err: Callable[[str, str], RecipeError], where: str, kind: str, v: Any, nested: bool = False) -> None:
    """Check one parameter setting: a scalar, a gradient, or a list of {filter, value}."""
    if isinstance(v, dict):
        v = [v]
    if isinstance(v, list):
        if not v:
            raise err(where, f"{_expected(kind)}, got an empty list")
        if all(not isinstance(e, (dict, list)) for e in v):
            for i, e in enumerate(v):
                if not _leaf_ok(kind, e):
                    raise err(f"{where}[{i}]", f"{_expected(kind)}, got {e!r}")
            return
        if nested:
            raise err(where, f"{_expected(kind)}; a filter's value cannot hold filters, got {v!r}")
        for i, e in enumerate(v):
            if not isinstance(e, dict) or "value" not in e or set(e) - {"filter", "value"}:
                raise err(f"{where}[{i}]", f"expected {{filter: NAME, value: ...}} (filter left out for the "
                                           f"default), got {e!r}")
            if e.get("filter") is not None and not isinstance(e["filter"], str):
                raise err(f"{where}[{i}].filter", f"expected a part of a tensor name, got {e['filter']!r}")
            _check_setting(err, f"{where}[{i}].value", kind, e["value"], nested=True)
        return
    if not _leaf_ok(kind, v):
        raise err(where, f"{_expected(kind)}, got {v!r}")


def evaluate_setting(setting: Any, tensor_name: str, t: float) -> Any:
    """The value of one parameter setting for a tensor at layer position ``t`` in ``[0, 1]``.

    A scalar is itself; a list of numbers is a gradient, interpolated piecewise linearly at
    ``t * (len - 1)``; a list of other scalars takes the entry at ``int(t * (len - 1))``; a
    list of ``{filter, value}`` takes the first entry whose filter is a substring of the tensor
    name (or is missing or ``*``), and ``None`` when none matches. As mergekit's
    ``evaluate_setting``.
    """
    if isinstance(setting, dict):
        setting = [setting]
    if not isinstance(setting, list):
        return setting
    if all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in setting):
        scaled = t * (len(setting) - 1)
        i0 = int(scaled)
        i1 = min(len(setting) - 1, i0 + 1)
        frac = scaled - i0
        return (1 - frac) * setting[i0] + frac * setting[i1]
    if all(not isinstance(e, (dict, list)) for e in setting):
        return setting[int(t * (len(setting) - 1))]
    for cond in setting:
        f = cond.get("filter")
        if f is None or f == "*" or (tensor_name and f in tensor_name):
            return evaluate_setting(cond["value"], tensor_name, t)
    return None


# --------------------------------------------------------------------------- inputs


class _Input:
    """One input model read one tensor at a time with plain file reads (no memory map): a
    ``.safetensors`` file, a sharded index, a directory (``config.json`` + safetensors shards,
    with or without an index), or a pickled checkpoint (through :func:`open_checkpoint`)."""

    def __init__(self, path: Path, err: Callable[[str, str], RecipeError], label: str) -> None:
        self.path = path
        self.config: dict[str, Any] | None = None
        self._where: dict[str, tuple[Path, str]] = {}
        self._headers: dict[Path, tuple[int, dict[str, Any]]] = {}
        self._ckpt = None
        self.files: list[Path] = []
        p = path
        try:
            if p.is_dir():
                if (p / "config.json").is_file():
                    try:
                        self.config = json.loads((p / "config.json").read_text())
                    except ValueError as e:
                        raise err(label, f"{p / 'config.json'} is not valid JSON ({e})") from None
                index = sorted(p.glob("*.safetensors.index.json"))
                shards = sorted(p.glob("*.safetensors"))
                if index:
                    self._read_index(index[0])
                    self.files = [index[0], *sorted({f for f, _ in self._where.values()})]
                elif shards:
                    for f in shards:
                        self._add_file(f)
                    self.files = shards
                else:
                    self._open_other(p, err, label)
            elif p.name.endswith(".safetensors.index.json"):
                self._read_index(p)
                self.files = [p, *sorted({f for f, _ in self._where.values()})]
            elif p.suffix == ".safetensors":
                self._add_file(p)
                self.files = [p]
            else:
                self._open_other(p, err, label)
        except RecipeError:
            raise
        except (OSError, ValueError, KeyError) as e:
            raise err(label, f"cannot read {p}: {' '.join(str(e).split())[:200]}") from None

    def _read_index(self, index: Path) -> None:
        weight_map = json.loads(index.read_text())["weight_map"]
        for k, name in weight_map.items():
            f = index.parent / str(name)
            if Path(str(name)).is_absolute() or ".." in Path(str(name)).parts:
                raise ValueError(f"shard {name!r} named in {index} lies outside its directory")
            if f not in self._headers:
                self._headers[f] = _st_header(f)
            self._where[k] = (f, k)

    def _add_file(self, f: Path) -> None:
        self._headers[f] = _st_header(f)
        for k in self._headers[f][1]:
            if k != "__metadata__":
                if k in self._where:
                    raise ValueError(f"{k!r} is in both {self._where[k][0].name} and {f.name}")
                self._where[k] = (f, k)

    def _open_other(self, p: Path, err: Callable[[str, str], RecipeError], label: str) -> None:
        self._ckpt = open_checkpoint(p)
        self.files = list(self._ckpt.info.files) or [p]
        if self._ckpt.info.index is not None:
            self.files = [self._ckpt.info.index, *self.files]

    @property
    def metadata(self) -> dict[str, str]:
        if self._ckpt is not None:
            return self._ckpt.metadata
        if len(self._headers) == 1:
            return dict(next(iter(self._headers.values()))[1].get("__metadata__") or {})
        return {}

    def keys(self) -> list[str]:
        return list(self._ckpt) if self._ckpt is not None else list(self._where)

    def __contains__(self, k: str) -> bool:
        return k in (self._ckpt if self._ckpt is not None else self._where)

    def shape(self, k: str) -> tuple[int, ...]:
        if self._ckpt is not None:
            return tuple(self._ckpt.shape(k))
        f, stored = self._where[k]
        return tuple(self._headers[f][1][stored]["shape"])

    def dtype(self, k: str) -> torch.dtype:
        if self._ckpt is not None:
            return self._ckpt.dtype(k)
        f, stored = self._where[k]
        code = self._headers[f][1][stored]["dtype"]
        if code not in _ST_DTYPES:
            raise ValueError(f"{k!r} in {f} has dtype {code}, which torch cannot read")
        return _ST_DTYPES[code]

    def get(self, k: str) -> Tensor:
        if self._ckpt is not None:
            return self._ckpt[k]
        f, stored = self._where[k]
        return _st_pread(f, *self._headers[f], stored, "run_recipe")

    def close(self) -> None:
        if self._ckpt is not None:
            self._ckpt.close()


# --------------------------------------------------------------------------- loading


@takes_trust_flag
def load_recipe(path: PathLike) -> Recipe:
    """Read and validate a YAML recipe; nothing is loaded or written yet.

    Checks every key and its type, that the method is registered and takes the given parameters
    (scalars, gradients and filter lists, each leaf of the right type), that every model exists,
    and, from the file headers, that the inputs hold the tensors the merge needs with matching
    shapes (:func:`plan_recipe`).

    Args:
        path (str or PathLike): the ``.yaml`` file.

    Returns:
        Recipe: the validated recipe, with paths resolved against the recipe's directory.

    Raises:
        RecipeError: (a ``ValueError``) naming the file and the field: a missing or malformed file,
            an unknown key or method (the message lists the choices), a parameter of the wrong
            type, a missing model, or checkpoints that do not fit together.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"load_recipe: {path}: no such file")
    text = path.read_text()
    src = str(path)

    def err(where: str, msg: str) -> RecipeError:
        return RecipeError(f"{src}: {where}: {msg}" if where else f"{src}: {msg}")

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise err("", f"not valid YAML ({' '.join(str(e).split())[:120]})") from None
    if not isinstance(raw, dict):
        raise err("", "a recipe is a mapping with merge_method, models (or slices), base_model, parameters")
    unknown = sorted(set(map(str, raw)) - _KEYS)
    if unknown:
        raise err(unknown[0], f"unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(_KEYS))}")
    if "merge_method" not in raw:
        raise err("merge_method", f"missing; choose one of: {', '.join(merging.list_methods())}")
    name = raw["merge_method"]
    if name not in merging.list_methods():
        raise err("merge_method", f"unknown merge_method {name!r}; choose one of: {', '.join(merging.list_methods())}")
    method = merging.get_method(name)
    root = path.parent

    def resolve(p: Any, where: str) -> Path:
        if not isinstance(p, (str, os.PathLike)) or not str(p):
            raise err(where, f"expected a path to a model (a directory or a checkpoint file), got {p!r}")
        q = Path(p).expanduser()
        q = q if q.is_absolute() else root / q
        if not q.exists():
            raise err(where, f"{q}: no such file or directory")
        return q

    def params_of(v: Any, where: str, per_model_only: bool) -> dict[str, Any]:
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise err(where, f"expected a mapping of parameter names to values, got {v!r}")
        per_model = _per_model_kws(method)
        valid = sorted(_yaml_name(method, p.name) for p in method.parameters if p.name != "seed")
        for k, setting in v.items():
            kw = _kw(method, str(k))
            if kw not in method.parameter_names or kw == "seed":
                raise err(f"{where}.{k}", f"merge method {name!r} takes no parameter {k!r}; it takes: "
                                          f"{', '.join(valid) or 'no parameters'}")
            if per_model_only and kw not in per_model:
                raise err(f"{where}.{k}", f"{k!r} is a method-wide parameter of {name!r}: put it under the "
                                          f"top-level (or slice) parameters")
            _check_setting(err, f"{where}.{k}", _kind(method, kw), setting)
        return dict(v)

    if raw.get("models") is not None and raw.get("slices") is not None:
        raise err("slices", "give either models or slices, not both")
    models: list[RecipeModel] = []
    slices: list[RecipeSlice] | None = None
    if raw.get("slices") is not None:
        entries = raw["slices"]
        if not isinstance(entries, list) or not entries:
            raise err("slices", "expected a non-empty list of {sources: [{model, layer_range}], parameters}")
        slices = []
        for i, s in enumerate(entries):
            w = f"slices[{i}]"
            if not isinstance(s, dict) or "sources" not in s or set(s) - {"sources", "base_model", "parameters",
                                                                           "residual_weight"}:
                raise err(w, f"expected {{sources: [...], base_model, parameters}}, got {s!r}")
            if s.get("residual_weight") is not None:
                raise err(f"{w}.residual_weight", "not supported")
            if not isinstance(s["sources"], list) or not s["sources"]:
                raise err(f"{w}.sources", "expected a non-empty list of {model, layer_range, parameters}")
            sources = []
            for j, e in enumerate(s["sources"]):
                ws = f"{w}.sources[{j}]"
                if not isinstance(e, dict) or "model" not in e or "layer_range" not in e or \
                        set(e) - {"model", "layer_range", "parameters"}:
                    raise err(ws, f"expected {{model: PATH, layer_range: [START, STOP], parameters}}, got {e!r}")
                lr = e["layer_range"]
                if not (isinstance(lr, list) and len(lr) == 2 and all(isinstance(x, int) and not isinstance(x, bool)
                                                                      for x in lr) and 0 <= lr[0] < lr[1]):
                    raise err(f"{ws}.layer_range", f"expected [START, STOP] with 0 <= START < STOP, got {lr!r}")
                sources.append(RecipeSource(resolve(e["model"], f"{ws}.model"), (lr[0], lr[1]),
                                            params_of(e.get("parameters"), f"{ws}.parameters", True), ws))
            lengths = {b - a for a, b in (x.layer_range for x in sources)}
            if len(lengths) != 1:
                raise err(f"{w}.sources", f"every source of a slice must span the same number of layers, got "
                                          f"{[list(x.layer_range) for x in sources]}")
            sb = resolve(s["base_model"], f"{w}.base_model") if s.get("base_model") is not None else None
            slices.append(RecipeSlice(tuple(sources), sb, params_of(s.get("parameters"), f"{w}.parameters", False), w))
    else:
        entries = raw.get("models")
        if not isinstance(entries, list) or not entries:
            raise err("models", "expected a non-empty list of {model: PATH, parameters: {...}} (or slices)")
        for i, e in enumerate(entries):
            w = f"models[{i}]"
            if isinstance(e, str):
                e = {"model": e}
            if not isinstance(e, dict) or "model" not in e or set(e) - {"model", "parameters"}:
                raise err(w, f"expected {{model: PATH, parameters: {{...}}}}, got {e!r}")
            models.append(RecipeModel(resolve(e["model"], f"{w}.model"),
                                      params_of(e.get("parameters"), f"{w}.parameters", True), w))
    base = resolve(raw["base_model"], "base_model") if raw.get("base_model") is not None else None
    params = params_of(raw.get("parameters"), "parameters", False)
    for key in ("dtype", "out_dtype"):
        if raw.get(key) is not None and raw[key] not in _DTYPES:
            raise err(key, f"unknown dtype {raw[key]!r}; choose one of: {', '.join(_DTYPES)}")
    out = raw.get("out")
    if out is not None:
        if not isinstance(out, str) or not out:
            raise err("out", f"expected a path, got {out!r}")
        out = Path(out).expanduser()
        out = out if out.is_absolute() else root / out
    for key in ("align",):
        if key in raw and not isinstance(raw[key], bool):
            raise err(key, f"expected true or false, got {raw[key]!r}")
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise err("seed", f"expected an integer, got {seed!r}")
    tok = raw.get("tokenizer_source")
    if raw.get("tokenizer") is not None:
        t = raw["tokenizer"]
        if tok is not None:
            raise err("tokenizer", "give tokenizer_source or tokenizer, not both")
        if not isinstance(t, dict) or set(t) - {"source", "tokens", "pad_to_multiple_of"}:
            raise err("tokenizer", f"expected {{source: base | PATH}}, got {t!r}")
        if t.get("tokens") or t.get("pad_to_multiple_of"):
            raise err("tokenizer.tokens" if t.get("tokens") else "tokenizer.pad_to_multiple_of",
                      "not supported: weightspace copies a source's tokenizer and does not edit vocabularies")
        tok = t.get("source")
    if tok is not None:
        if tok == "base" or tok == "union":
            if base is None and tok == "base":
                raise err("tokenizer_source", "'base' needs a base_model")
        else:
            tok = resolve(tok, "tokenizer_source")
        tdir = base if tok == "base" else tok
        if tok != "union" and not (tdir.is_dir() and any((tdir / f).is_file() for f in _TOKENIZER_FILES
                                                         if f.startswith(("tokenizer", "vocab")))):
            raise err("tokenizer_source", f"{tdir} is not a model directory holding a tokenizer")
    chat = raw.get("chat_template")
    if chat is not None:
        if not isinstance(chat, str) or not (chat in _CHAT_TEMPLATES or chat == "auto" or
                                             (len(chat) >= 20 and "{" in chat)):
            raise err("chat_template", f"expected auto, {', '.join(_CHAT_TEMPLATES)} or a Jinja template, got "
                                       f"{chat!r}")
    if raw.get("model") is not None:
        check_model_name(raw["model"], source=src)
    recipe = Recipe(merge_method=name, models=tuple(models), base_model=base, parameters=params,
                    dtype=raw.get("dtype"), out=out, align=bool(raw.get("align", False)), seed=seed,
                    model=raw.get("model"), model_kwargs=raw.get("model_kwargs"),
                    input_shape=None if raw.get("input_shape") is None else str(raw["input_shape"]),
                    source=path, text=text, out_dtype=raw.get("out_dtype"),
                    slices=None if slices is None else tuple(slices), tokenizer_source=tok,
                    chat_template=chat)
    if recipe.align and slices is not None:
        raise err("align", "align works on models, not slices")
    plan_recipe(recipe)
    return recipe


# --------------------------------------------------------------------------- planning


@dataclass
class _Entry:
    """One output tensor: where its inputs come from and the method's parameters for it."""

    name: str
    inputs: list[tuple[int, str]]  # (input index, tensor name) of the merged models
    base: tuple[int, str] | None
    params: dict[str, Any]
    shape: tuple[int, ...]
    in_dtype: torch.dtype
    floating: bool


@dataclass
class _Plan:
    inputs: list[_Input]
    paths: list[Path]
    entries: list[_Entry]
    num_layers: int | None
    donor: int
    notices: list[str]


def _err_for(recipe: Recipe) -> Callable[[str, str], RecipeError]:
    src = str(recipe.source) if recipe.source else "recipe"
    return lambda where, msg: RecipeError(f"{src}: {where}: {msg}" if where else f"{src}: {msg}")


def _layer_of(name: str) -> tuple[str, int, str] | None:
    m = _LAYER.match(name)
    return (m.group(1), int(m.group(2)), m.group(3)) if m else None


def plan_recipe(recipe: Recipe) -> _Plan:
    """Read every input's header and plan the merge tensor by tensor: which tensors of which
    models make each output tensor, and the method's parameters for it (gradients and filters
    evaluated). Nothing is loaded. Raises :class:`RecipeError` naming the file and the field."""
    err = _err_for(recipe)
    method = merging.get_method(recipe.merge_method)
    inputs: list[_Input] = []
    paths: list[Path] = []
    index: dict[Path, int] = {}

    def open_input(p: Path, label: str) -> int:
        key = p.resolve()
        if key not in index:
            index[key] = len(inputs)
            inputs.append(_Input(p, err, label))
            paths.append(p)
        return index[key]

    base_i = open_input(recipe.base_model, "base_model") if recipe.base_model is not None else None
    notices: list[str] = []
    if recipe.slices is None:
        srcs = [(open_input(m.path, m.label), m.parameters, m.label) for m in recipe.models]
        if base_i is not None and base_i not in [s[0] for s in srcs]:
            if method.needs_base or method.name in ("slerp", "nuslerp"):
                pass  # the base is its own input
            else:  # mergekit adds the base as one more model
                srcs.append((base_i, {}, "base_model"))
                notices.append(f"{recipe.merge_method}: the base_model is merged as one more model (as mergekit "
                               f"does); list it under models to give it parameters")
        slices = [([(i, (0, None), p, lab) for i, p, lab in srcs], base_i, {}, "models")]
    else:
        slices = []
        for s in recipe.slices:
            sb = open_input(s.base_model, f"{s.label}.base_model") if s.base_model is not None else base_i
            slices.append(([(open_input(x.path, f"{x.label}.model"), x.layer_range, x.parameters, x.label)
                            for x in s.sources], sb, s.parameters, s.label))

    if recipe.slices is None:
        ref_i = base_i if base_i is not None else slices[0][0][0][0]
        ref_keys = set(inputs[ref_i].keys())
        for i, _, _, lab in slices[0][0]:
            keys = set(inputs[i].keys())
            if keys != ref_keys:
                k = sorted(keys ^ ref_keys)[0]
                where = paths[i] if k in keys else paths[ref_i]
                raise err(lab, f"{paths[i]} and {paths[ref_i]} hold different tensors ({k!r} is only in {where})")
    layer_names: dict[int, dict[int, list[tuple[str, str]]]] = {}

    def layers_of(i: int) -> dict[int, list[tuple[str, str]]]:
        if i not in layer_names:
            d: dict[int, list[tuple[str, str]]] = {}
            for k in inputs[i].keys():
                lay = _layer_of(k)
                if lay is not None:
                    d.setdefault(lay[1], []).append((lay[0], lay[2]))
            layer_names[i] = d
        return layer_names[i]

    def n_layers(i: int) -> int:
        cfg = inputs[i].config or {}
        if isinstance(cfg.get("num_hidden_layers"), int):
            return cfg["num_hidden_layers"]
        d = layers_of(i)
        return max(d) + 1 if d else 0

    entries: list[_Entry] = []
    glob = recipe.parameters
    per_model = _per_model_kws(method)

    def evaluate(tensor: str, in_names: list[str], t: float, sources, slice_params, where: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for p in method.parameters:
            if p.name == "seed":
                continue
            y = _yaml_name(method, p.name)
            if p.name in per_model:
                values, fields = [], []
                for (i, _, sp, lab), nm in zip(sources, in_names):
                    v, origin = None, None
                    for level, lw in ((sp, f"{lab}.parameters"), (slice_params, f"{where}.parameters"),
                                      (glob, "parameters")):
                        if y in level:
                            v, origin = evaluate_setting(level[y], nm, t), f"{lw}.{y}"
                            if v is not None:
                                break
                    values.append((1.0 if p.default is None else p.default) if v is None else v)
                    fields.append(origin)
                out[p.name] = values
                if p.name == "density":
                    for d, origin in zip(values, fields):
                        if not 0.0 <= d <= 1.0:
                            raise err(origin, f"{d:g} for {tensor!r}: a density is in [0, 1]")
            else:
                v = None
                for level in (slice_params, glob):
                    if y in level:
                        v = evaluate_setting(level[y], tensor, t)
                        if v is not None:
                            break
                if v is not None:
                    out[p.name] = v
        return out

    def add(out_name: str, in_names: list[str], t: float, sl, where: str) -> None:
        sources, sbase, sparams, _ = sl
        merged = [(i, nm) for (i, _, _, _), nm in zip(sources, in_names)]
        bref = None
        if method.needs_base or (method.name in ("slerp", "nuslerp") and sbase is not None):
            if sbase is None:
                raise err("base_model", f"merge method {recipe.merge_method!r} needs a base_model (the model the "
                                        f"task vectors start from)")
            pos = [k for k, (i, _) in enumerate(merged) if i == sbase]
            if pos:
                bref = merged[pos[0]]
                keep = [k for k in range(len(merged)) if k not in pos]
                merged = [merged[k] for k in keep]
                sources = [sources[k] for k in keep]
                in_names = [in_names[k] for k in keep]
            elif recipe.slices is not None:
                raise err(f"{where}.sources", f"the base model {paths[sbase]} must be one of the slice's sources")
            else:
                bref = (sbase, out_name)
        for i, nm in merged + ([bref] if bref else []):
            if nm not in inputs[i]:
                raise err(where, f"{paths[i]} has no tensor {nm!r} ({len(inputs[i].keys())} tensors)")
        refi, refn = bref if bref else merged[0]
        shape, dt = inputs[refi].shape(refn), inputs[refi].dtype(refn)
        for i, nm in merged:
            if inputs[i].shape(nm) != shape:
                raise err(where, f"{nm!r} has shape {inputs[i].shape(nm)} in {paths[i]} and {shape} in "
                                 f"{paths[refi]}; all models must share one architecture")
        floating = dt.is_floating_point
        params = evaluate(out_name, in_names, t, sources, sparams, where) if floating else {}
        n_models = len(merged)
        if floating:
            if method.name in ("slerp",) and n_models + (bref is not None) != 2:
                raise err("models", f"slerp interpolates two models (the base_model and one other), got "
                                    f"{n_models + (bref is not None)}")
            if method.name == "nuslerp" and n_models != 2:
                raise err("models", f"nuslerp interpolates two models (plus an optional base_model), got {n_models}")
            if method.name == "passthrough" and n_models != 1:
                raise err("models", f"passthrough copies one model per tensor, got {n_models}; use slices to "
                                    f"take layers from several models")
            if method.name == "model_stock" and n_models < 2:
                raise err("models", f"model_stock needs a base_model and at least two other models, got {n_models}")
        entries.append(_Entry(out_name, merged, bref, params, shape, dt, floating))

    first_sources = slices[0][0]
    nonlayer = [k for k in inputs[first_sources[0][0]].keys() if _layer_of(k) is None]
    pre = [k for k in nonlayer if "embed" in k or k.endswith(("wte.weight", "wpe.weight"))]
    post = [k for k in nonlayer if k not in pre]
    for k in pre:
        add(k, [k] * len(first_sources), 0.0, slices[0], slices[0][3])
    out_layer = 0
    for sl in slices:
        sources = sl[0]
        if recipe.slices is None:  # every input holds the same names (checked): layer j stays layer j
            present = layers_of(sources[0][0])
            idxs = sorted(present)
            for rank, j in enumerate(idxs):
                t = rank / (len(idxs) - 1) if len(idxs) > 1 else 1.0
                for prefix, suffix in present[j]:
                    add(f"{prefix}{j}{suffix}", [f"{prefix}{j}{suffix}"] * len(sources), t, sl, sl[3])
            continue
        else:
            ranges = [r for _, r, _, _ in sources]
            for (i, r, _, lab) in sources:
                if r[1] > n_layers(i):
                    raise err(f"{lab}.layer_range", f"{paths[i].name} has {n_layers(i)} layers; {list(r)} is out "
                                                    f"of range")
        count = ranges[0][1] - ranges[0][0]
        for offset in range(count):
            t = offset / (count - 1) if count > 1 else 1.0
            i0 = sources[0][0]
            j0 = ranges[0][0] + offset
            names = layers_of(i0).get(j0)
            if not names:
                raise err(f"{sl[3]}", f"{paths[i0]} has no layer {j0} (it has {n_layers(i0)})")
            for prefix, suffix in names:
                in_names = []
                for (i, _, _, lab), (a, _) in zip(sources, ranges):
                    in_names.append(f"{prefix}{a + offset}{suffix}")
                add(f"{prefix}{out_layer}{suffix}", in_names, t, sl, sl[3])
            out_layer += 1
    last = slices[-1]
    for k in post:
        add(k, [k] * len(last[0]), 0.0, last, last[3])
    if not entries:
        raise err("models", "the inputs hold no tensors")
    donor = base_i if base_i is not None else slices[0][0][0][0]
    if recipe.tokenizer_source == "union":
        _check_union(err, paths)
    return _Plan(inputs, paths, entries, out_layer if recipe.slices is not None else None, donor, notices)


# --------------------------------------------------------------------------- running


def _check_union(err: Callable[[str, str], RecipeError], paths: list[Path]) -> None:
    """``tokenizer_source: union`` is supported when it is trivial: every input holds the same
    tokenizer (then the union is that tokenizer, copied). Different vocabularies would need new
    embedding rows, which weightspace does not make."""
    seen: dict[bytes, Path] = {}
    for p in paths:
        if not p.is_dir():
            raise err("tokenizer_source", f"'union' needs model directories holding tokenizers; {p} is a file")
        blob = b"".join((p / f).read_bytes() for f in ("tokenizer.json", "tokenizer.model", "vocab.json",
                                                         "merges.txt", "added_tokens.json") if (p / f).is_file())
        if not blob:
            raise err("tokenizer_source", f"'union': {p} holds no tokenizer")
        seen.setdefault(blob, p)
    if len(seen) > 1:
        a, b = list(seen.values())[:2]
        raise err("tokenizer_source", f"'union' of different vocabularies ({a.name} and {b.name}) is not "
                                      f"supported: it would add embedding rows; use base or one model's tokenizer")


def _record(path: Path, files: list[Path]) -> dict[str, Any]:
    """Provenance of one input: its path and the SHA-256 of every weight file it is made of."""
    if len(files) == 1 and files[0] == path:
        return {"path": str(path), "sha256": sha256_file(path)}
    return {"path": str(path), "files": {str(f.relative_to(path) if path.is_dir() else f.name): sha256_file(f)
                                          for f in files}}


def _notice(msg: str) -> None:
    warnings.warn(msg, UserWarning, stacklevel=3)


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
    if not hf:
        for key in ("tokenizer_source", "chat_template"):
            if getattr(recipe, key) is not None:
                _notice(f"{recipe.source}: {key}: ignored: a .safetensors output holds weights only; write a "
                        f"directory (-o merged/) for a Hugging Face model with its tokenizer")
    plan = plan_recipe(recipe)
    try:
        return _run(recipe, plan, out, hf, max_shard_size, progress, t0)
    finally:
        for inp in plan.inputs:
            inp.close()


def _run(recipe: Recipe, plan: _Plan, out: Path, hf: bool, max_shard_size: int | str | None, progress: bool,
         t0: float) -> Path:
    from weightspace import __version__

    from .streaming import _write

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
    states_override: list[dict[str, Tensor]] | None = None
    if recipe.align:
        states_override = _aligned(recipe, plan)

    def read(i: int, name: str) -> Tensor:
        t = states_override[i][name] if states_override is not None else plan.inputs[i].get(name)
        if compute is not None and t.is_floating_point():
            t = t.to(compute)
        return t

    takes_seed = "seed" in method.parameter_names
    by_name = {e.name: e for e in plan.entries}

    def produce(name: str) -> Tensor:
        e = by_name[name]
        if not e.floating:
            i, nm = e.base if e.base else e.inputs[0]
            return plan.inputs[i].get(nm) if states_override is None else states_override[i][nm]
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
    provenance = {
        "tool": "weightspace merge --config",
        "recipe": recipe.text,
        "recipe_path": str(recipe.source) if recipe.source else None,
        "method": recipe.merge_method,
        "parameters": recipe.parameters,
        "seed": recipe.seed,
        "align": recipe.align,
        "inputs": [_record(p, inp.files) for p, inp in zip(plan.paths, plan.inputs)],
        "weightspace_version": __version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    metadata = {PROVENANCE_KEY: json.dumps(provenance, sort_keys=True, default=str)}
    if not hf:
        ref_meta = plan.inputs[plan.donor].metadata
        for key in (MODEL_KEY, INPUT_SHAPE_KEY):
            if key in ref_meta:
                metadata[key] = ref_meta[key]
        try:
            return _write(entries, produce, out, "safetensors", None, metadata, [], progress)
        except RecipeError:
            raise
        except ValueError as e:
            raise err("", str(e)) from None
    metadata["format"] = "pt"
    return _write_hf_dir(recipe, plan, out, entries, produce, metadata, max_shard_size, progress, write)


def _name(dt: torch.dtype | None) -> str:
    return str(dt).replace("torch.", "")


def _write_hf_dir(recipe: Recipe, plan: _Plan, out: Path, entries, produce, metadata: dict[str, str],
                  max_shard_size: int | str | None, progress: bool, write: torch.dtype | None) -> Path:
    """Write a Hugging Face model directory next to ``out``, then move it into place."""
    from .checkpoint import _parse_size
    from .streaming import _write

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        if max_shard_size is not None:
            limit = _parse_size(max_shard_size, out)
            _write(entries, produce, tmp / "model.safetensors.index.json", "sharded", limit, metadata, [], progress)
        else:
            _write(entries, produce, tmp / "model.safetensors", "safetensors", None, metadata, [], progress)
        donor = plan.paths[plan.donor]
        cfg = plan.inputs[plan.donor].config
        if cfg is not None:
            cfg = dict(cfg)
            if plan.num_layers is not None:
                cfg["num_hidden_layers"] = plan.num_layers
                for key in ("layer_types",):
                    if isinstance(cfg.get(key), list) and len(cfg[key]) != plan.num_layers:
                        cfg.pop(key)
            if write is not None:
                cfg["dtype" if "torch_dtype" not in cfg else "torch_dtype"] = _name(write)
            (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        else:
            _notice(f"{recipe.source}: {donor} has no config.json; the output directory holds weights only")
        tok_dir = None
        if recipe.tokenizer_source == "base":
            tok_dir = recipe.base_model
        elif recipe.tokenizer_source == "union":  # every input's tokenizer is the same (checked)
            tok_dir = donor
        elif recipe.tokenizer_source is not None:
            tok_dir = Path(recipe.tokenizer_source)
        elif donor.is_dir():
            tok_dir = donor
        if tok_dir is not None:
            copied = [f for f in _TOKENIZER_FILES if (tok_dir / f).is_file()]
            for f in copied:
                shutil.copy2(tok_dir / f, tmp / f)
        if recipe.chat_template is not None:
            template = _chat_template(recipe, plan)
            if template is not None:
                (tmp / "chat_template.jinja").write_text(template)
                tc = tmp / "tokenizer_config.json"
                if tc.is_file():
                    conf = json.loads(tc.read_text())
                    if "chat_template" in conf:
                        conf.pop("chat_template")
                        tc.write_text(json.dumps(conf, indent=2))
        (tmp / "weightspace_recipe.yaml").write_text(recipe.text)
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
            os.replace(out, old / "x")
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def _chat_template(recipe: Recipe, plan: _Plan) -> str | None:
    name = recipe.chat_template
    if name in _CHAT_TEMPLATES:
        return _CHAT_TEMPLATES[name]
    if name != "auto":
        return name
    found: dict[str, int] = {}
    for p in plan.paths:
        for f in ("chat_template.jinja",):
            if (p / f).is_file() if p.is_dir() else False:
                t = (p / f).read_text().strip()
                found[t] = found.get(t, 0) + 1
        tc = p / "tokenizer_config.json" if p.is_dir() else None
        if tc is not None and tc.is_file():
            t = json.loads(tc.read_text()).get("chat_template")
            if isinstance(t, str) and t.strip():
                found[t.strip()] = found.get(t.strip(), 0) + 1
    if not found:
        _notice(f"{recipe.source}: chat_template: auto found no chat template among the inputs; none written")
        return None
    return max(found.items(), key=lambda kv: kv[1])[0]


def _aligned(recipe: Recipe, plan: _Plan) -> list[dict[str, Tensor]]:
    """``align: true``: every input in memory, permuted onto the base (else the first model)."""
    from graphs import permute
    from merging.matching import weight_matching

    from .api import load_model, trace_model

    lm = load_model(recipe.base_model or recipe.models[0].path, recipe.model, recipe.model_kwargs,
                    input_shape=recipe.input_shape)
    structure = trace_model(lm.module, input_shape=lm.input_shape)
    states = [{k: inp.get(k) for k in inp.keys()} for inp in plan.inputs]
    ref = states[plan.donor]
    out = []
    for i, s in enumerate(states):
        out.append(s if i == plan.donor else permute(structure, s, weight_matching(structure, ref, s,
                                                                                   seed=recipe.seed)))
    buffers = [k for k in ref if structure.is_buffer(k)]
    for s in out:
        for k in buffers:
            s[k] = ref[k]
    return out

