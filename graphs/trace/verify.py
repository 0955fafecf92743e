"""Verification: a random permutation of the network must leave its output unchanged.

Groups that fail the check are dropped (left unpermuted, with a reason and a warning);
that would be a tracer bug, so the check is the safety net, not the method."""
from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ..structure import Structure, Unit, Unpermuted, permute, random_permutation
from .labels import split_input, tree_tensors

__all__ = ["check_structure", "verify"]


def _flat_outputs(x) -> list[Tensor]:
    return [t for t in tree_tensors(x) if t.is_floating_point() or t.is_complex()]


def check_structure(module: nn.Module, structure: Structure, example_input: Any,
                    perms: dict[str, Tensor] | None = None, *, seed: int = 0) -> float:
    """Largest output change (relative to the output's scale, in float64) caused by
    permuting ``module``'s weights with ``perms`` (default: a random permutation).

    Shipped as a test helper: a correct structure gives ~1e-15.
    """
    return _Checker(module, example_input)(structure, random_permutation(structure, seed) if perms is None else perms)


class _Checker:
    """The float64 copy of a module and its inputs, made once for several checks."""

    def __init__(self, module: nn.Module, example_input: Any) -> None:
        args, kwargs = split_input(example_input)
        double = lambda t: t.double() if isinstance(t, Tensor) and t.is_floating_point() else t  # noqa: E731
        self.module = copy.deepcopy(module).double().eval()
        self.args = tuple(double(t) for t in args)
        self.kwargs = {k: double(t) for k, t in kwargs.items()}
        self.state = dict(self.module.state_dict())
        self._reference = None

    def _outputs(self, state: dict[str, Tensor]) -> list[Tensor]:
        return _flat_outputs(torch.func.functional_call(self.module, state, self.args, self.kwargs,
                                                        tie_weights=False))

    def __call__(self, structure: Structure, perms: dict[str, Tensor]) -> float:
        permuted = permute(structure, self.state, perms)
        with torch.no_grad():
            if self._reference is None:
                self._reference = self._outputs(self.state)
            b = self._outputs(permuted)
        err = 0.0
        for x, y in zip(self._reference, b):
            scale = 1.0 + float(x.abs().max()) if x.numel() else 1.0
            err = max(err, float((x - y).abs().max()) / scale if x.numel() else 0.0)
        return err


def verify(module: nn.Module, structure: Structure, inputs: Any, atol: float) -> Structure:
    """``structure`` if two random permutations keep the output within ``atol``; else
    the structure without the groups that change it (with a warning)."""
    if not structure.groups:
        return structure
    check = _Checker(module, inputs)  # one float64 copy and one reference pass for every check
    errs = {seed: check(structure, random_permutation(structure, seed)) for seed in (0, 1)}
    if max(errs.values()) <= atol:
        return structure
    bad = []
    for g in structure.groups:
        if any(check(structure, {g: random_permutation(structure, seed)[g]}) > atol for seed in (0, 1, 2)):
            bad.append(g)
    warnings.warn(f"trace: permuting {bad} changed the output of {type(module).__name__}; "
                  f"they are left unpermuted (please report this as a bug)")
    return _drop_groups(structure, set(bad), "permuting it changed the output (not provably safe)")


def _drop_groups(structure: Structure, bad: set[str], reason: str) -> Structure:
    def strip(a):
        if a is None:
            return None
        if isinstance(a, Unit):
            return Unit(None, a.size) if a.group in bad else a
        parts = tuple(strip(p) for p in a.parts)
        if all(isinstance(p, Unit) and p.group is None for p in parts):
            return Unit(None, a.size)
        return type(a)(parts)

    axes, unp = {}, list(structure.unpermuted)
    for k, ax in structure.axes.items():
        new = []
        for i, a in enumerate(ax):
            s = strip(a)
            if isinstance(s, Unit) and s.group is None:
                if a is not None and structure.shapes[k][i] > 1:
                    unp.append(Unpermuted(k, i, structure.shapes[k][i], reason))
                s = None
            new.append(s)
        axes[k] = tuple(new)
    out = Structure._finish(axes, structure.shapes, unp, structure.layers)
    out.outputs = structure.outputs
    out.buffers = structure.buffers
    out.front_end = structure.front_end
    return out
