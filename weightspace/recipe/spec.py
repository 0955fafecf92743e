"""The recipe's data: the validated :class:`Recipe` with its models, slice sources and slices,
:class:`RecipeError`, the dtype names a recipe takes, and the helpers every stage shares (an error
naming the recipe file and the field, a notice, a dtype's name).
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import merging

from .parameters import _KW_TO_YAML, _default, _kw, _per_model_kws

PathLike = str | os.PathLike
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
           "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class RecipeError(ValueError):
    """A recipe that cannot run: the message names the file and the field."""


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


def _err_for(recipe: Recipe) -> Callable[[str, str], RecipeError]:
    src = str(recipe.source) if recipe.source else "recipe"
    return lambda where, msg: RecipeError(f"{src}: {where}: {msg}" if where else f"{src}: {msg}")


def _notice(msg: str) -> None:
    warnings.warn(msg, UserWarning, stacklevel=3)


def _name(dt: torch.dtype | None) -> str:
    return str(dt).replace("torch.", "")
