"""Reading a recipe: YAML -> a validated :class:`Recipe` (:func:`load_recipe`); every key, method,
parameter, model and (through :func:`plan_recipe`) every input's header is checked before a tensor
is loaded, and errors name the file and the field.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import merging

from ..trust import check_model_name, takes_trust_flag
from .hf_output import _CHAT_TEMPLATES, _TOKENIZER_FILES
from .parameters import _check_setting, _kind, _kw, _per_model_kws, _yaml_name
from .plan import plan_recipe
from .spec import _DTYPES, PathLike, Recipe, RecipeError, RecipeModel, RecipeSlice, RecipeSource

_KEYS = {"merge_method", "base_model", "models", "slices", "parameters", "dtype", "out_dtype", "out", "align",
         "seed", "model", "model_kwargs", "input_shape", "tokenizer_source", "tokenizer", "chat_template"}


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
