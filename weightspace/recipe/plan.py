"""The per-tensor plan: each input read one tensor at a time (:class:`_Input`), then which tensors
of which models make each output tensor, across layers and slices, with the method's parameters for
it (:func:`plan_recipe`); headers only, no tensor is loaded.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import merging
from merging.methods import REQUIRED

from ..checkpoint import SAFETENSORS_DTYPES, safetensors_header, read_safetensors_tensor, open_checkpoint
from .parameters import _per_model_kws, _yaml_name, evaluate_setting
from .spec import Recipe, RecipeError, _err_for
from .vocab import _Vocabulary, plan_vocabulary, vocabulary_tensors

#: methods for which a base model, when given, is the origin rather than one more model (mergekit's optional base)
_BASE_OPTIONAL = ("slerp", "nuslerp", "multislerp")
#: methods that merge the base with exactly one other model
_ONE_OTHER = ("nearswap", "arcee_fusion")

_LAYER = re.compile(r"^(.*?(?:^|\.)(?:layers|h|blocks|layer)\.)(\d+)(\..+)$")


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
                self._headers[f] = safetensors_header(f)
            self._where[k] = (f, k)

    def _add_file(self, f: Path) -> None:
        self._headers[f] = safetensors_header(f)
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
        if code not in SAFETENSORS_DTYPES:
            raise ValueError(f"{k!r} in {f} has dtype {code}, which torch cannot read")
        return SAFETENSORS_DTYPES[code]

    def get(self, k: str) -> Tensor:
        if self._ckpt is not None:
            return self._ckpt[k]
        f, stored = self._where[k]
        return read_safetensors_tensor(f, *self._headers[f], stored, "run_recipe")

    # read as a mapping (streaming weight matching takes one): names -> tensors, loaded when asked
    def __getitem__(self, k: str) -> Tensor:
        return self.get(k)

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def close(self) -> None:
        if self._ckpt is not None:
            self._ckpt.close()


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
    vocab: bool = False  # re-indexed to the output vocabulary before the merge


@dataclass
class _Plan:
    inputs: list[_Input]
    paths: list[Path]
    entries: list[_Entry]
    num_layers: int | None
    donor: int
    notices: list[str]
    vocab: _Vocabulary | None = None



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
            if method.needs_base or method.name in _BASE_OPTIONAL:
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
    vocab = None
    if recipe.tokenizer_source is not None:
        vocab = plan_vocabulary(err, recipe.tokenizer_source, paths, [inp.config for inp in inputs], base_i)
        if vocab is not None:
            for i, inp in enumerate(inputs):
                names = vocabulary_tensors(inp.keys(), inp.shape, _vocab_rows(inp), lambda k: _layer_of(k) is not None)
                if not names:
                    raise err("tokenizer_source", f"{paths[i]} has no embedding with {_vocab_rows(inp)} rows "
                                                  f"(its vocab_size) to align to the output vocabulary")
                vocab.names |= names
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
        for p in method.parameters:
            if p.required and (p.name not in out or any(v is REQUIRED for v in (
                    out[p.name] if isinstance(out[p.name], list) else [out[p.name]]))):
                y = _yaml_name(method, p.name)
                raise err(f"parameters.{y}", f"merge method {method.name!r} requires {y!r}; no value is given for "
                                             f"{tensor!r}")
        return out

    def add(out_name: str, in_names: list[str], t: float, sl, where: str) -> None:
        sources, sbase, sparams, _ = sl
        merged = [(i, nm) for (i, _, _, _), nm in zip(sources, in_names)]
        bref = None
        if method.needs_base or (method.name in _BASE_OPTIONAL and sbase is not None):
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
        is_vocab = vocab is not None and all(nm in vocab.names for _, nm in merged + ([bref] if bref else []))
        for i, nm in merged:
            if inputs[i].shape(nm)[is_vocab:] != shape[is_vocab:]:
                raise err(where, f"{nm!r} has shape {inputs[i].shape(nm)} in {paths[i]} and {shape} in "
                                 f"{paths[refi]}; all models must share one architecture")
        if is_vocab:
            shape = (vocab.size, *shape[1:])
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
            if method.name in _ONE_OTHER and n_models != 1:
                raise err("models", f"{method.name} merges the base_model with exactly one other model, got "
                                    f"{n_models}")
            if method.name == "model_stock" and n_models < 2:
                raise err("models", f"model_stock needs a base_model and at least two other models, got {n_models}")
        entries.append(_Entry(out_name, merged, bref, params, shape, dt, floating, is_vocab))

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
    return _Plan(inputs, paths, entries, out_layer if recipe.slices is not None else None, donor, notices, vocab)


def _vocab_rows(inp: _Input) -> int:
    from .vocab import _vocab_size

    return _vocab_size(inp.config) or 0
