"""The rule tables: a user's module type gets its own rule with one decorator."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from graphs import check_structure, trace
from graphs.trace import module_rule, op_rule
from nets import randomize


class Shrink(nn.Module):
    """Elementwise, but through a function the tracer has no rule for."""

    def forward(self, x):
        return F.softshrink(x, 0.1)


class RegisteredShrink(Shrink):
    pass


class ShrinkSubclass(RegisteredShrink):
    """No rule of its own: resolves to its base's along the MRO."""


@module_rule(RegisteredShrink)
def _elementwise(run, call):
    return list(call.lx)


def _net(act: nn.Module) -> nn.Module:
    return randomize(nn.Sequential(nn.Linear(3, 6), act, nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2)))


def test_without_a_rule_the_op_fixes_its_input():
    s = trace(_net(Shrink()), torch.randn(4, 3))
    assert s.axes["0.weight"][0] is None
    reason = [u.reason for u in s.unpermuted if (u.tensor, u.axis) == ("0.weight", 0)][0]
    assert "unsupported operation softshrink" in reason
    assert s.axes["2.weight"][0] is not None   # later layers still found


@pytest.mark.parametrize("act", [RegisteredShrink, ShrinkSubclass])
def test_a_registered_module_rule_is_used(act):
    model = _net(act())
    x = torch.randn(4, 3)
    s = trace(model, x)
    g = s.axes["0.weight"][0].group
    assert s.axes["2.weight"][1].group == g and s.groups[g].size == 6
    # the module is a leaf with the rule: no softshrink node reached the interpreter
    assert not any("softshrink" in u.reason for u in s.unpermuted)
    assert check_structure(model, s, x, seed=3) < 1e-12


def test_registration_rejects_duplicates_and_non_modules():
    with pytest.raises(ValueError, match="already have a rule"):
        op_rule("reshape")(lambda run, call: None)
    with pytest.raises(ValueError, match="replace=True"):
        module_rule(nn.Linear)(lambda run, call: None)
    with pytest.raises(TypeError, match="nn.Module subclasses"):
        module_rule(int)
    with pytest.raises(TypeError, match=r"rule\(run, call\)"):
        op_rule("my_unused_op")(lambda call: None)
