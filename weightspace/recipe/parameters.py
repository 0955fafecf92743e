"""A recipe's parameters: recipe names and the method's keywords (``weight`` -> ``weights``,
``lambda`` -> ``scale``), what a value of each parameter must be, and the settings themselves:
scalars, gradients over the layers and lists of ``{filter, value}`` (checked, then evaluated per tensor).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import merging

if TYPE_CHECKING:
    from .spec import RecipeError

_YAML_TO_KW = {"weight": "weights", "lambda": "scale"}
_KW_TO_YAML = {"weights": "weight", "scale": "lambda"}


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
