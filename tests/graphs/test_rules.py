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


# ---------------------------------------------------------------------------- einsum
class EinsumAttention(nn.Module):
    """Multi-head attention written with einsum (projections as (heads, dim, model) tensors)."""

    def __init__(self, d: int = 16, h: int = 4, ellipsis: bool = False):
        super().__init__()
        e = d // h
        self.ellipsis = ellipsis
        self.inp = nn.Linear(6, d)
        self.wq, self.wk, self.wv = (nn.Parameter(torch.randn(h, e, d)) for _ in range(3))
        self.wo = nn.Parameter(torch.randn(d, h, e))
        self.fc = nn.Linear(d, 3)

    def forward(self, x):
        x = self.inp(x)
        q = torch.einsum("bsd,hed->bhse", x, self.wq)
        k = torch.einsum("bsd,hed->bhse", x, self.wk)
        v = torch.einsum("...sd,hed->...hse" if self.ellipsis else "bsd,hed->bhse", x, self.wv)
        a = torch.einsum("bhse,bhte->bhst", q, k).softmax(-1)
        o = torch.einsum("bhst,bhte->bshe", a, v)
        return self.fc(x + torch.einsum("bshe,dhe->bsd", o, self.wo))


def _out(model, state, x):
    with torch.no_grad():
        return torch.func.functional_call(model.double(), {k: v.double() for k, v in state.items()}, (x.double(),))


@pytest.mark.parametrize("front_end", ["fx", "export"])
@pytest.mark.parametrize("ellipsis", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_einsum_attention_permutes_heads_and_head_dims(front_end, ellipsis, seed):
    torch.manual_seed(seed)
    model, x = randomize(EinsumAttention(ellipsis=ellipsis), seed), torch.randn(2, 5, 6)
    s = trace(model, x, front_end=front_end)
    # heads (4), query/key dims (4), value dims (4) and the residual stream (16)
    assert sorted(g.size for g in s.groups.values()) == [4, 4, 4, 16]
    heads, qk = s.axes["wq"][0].group, s.axes["wq"][1].group
    assert s.axes["wk"][0].group == s.axes["wv"][0].group == s.axes["wo"][1].group == heads
    assert s.axes["wk"][1].group == qk and qk != s.axes["wv"][1].group
    assert s.permuted_fraction > 0.99
    assert check_structure(model, s, x, seed=seed) < 1e-12


def test_einsum_permuting_only_the_query_dims_changes_the_output():
    torch.manual_seed(0)
    model, x = randomize(EinsumAttention()), torch.randn(2, 5, 6)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    moved = dict(state, wq=state["wq"][:, torch.tensor([1, 0, 3, 2])])   # the keys' dims left as they are
    assert (_out(model, state, x) - _out(model, moved, x)).abs().max() > 1e-3


def test_einsum_rule_ties_diagonals_and_broadcasts():
    class Diag(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 5), nn.Linear(5, 2)
            self.m = nn.Parameter(torch.randn(5, 5))
            self.s = nn.Parameter(torch.randn(1, 5))

        def forward(self, x):
            h = self.a(x).relu()
            h = torch.einsum("bi,ii,ji->bi", h, self.m, self.s)   # diagonal, size-1 broadcast
            return self.b(h)

    model, x = randomize(Diag()), torch.randn(4, 3)
    for front_end in ("fx", "export"):
        s = trace(model, x, front_end=front_end)
        g = s.axes["a.weight"][0].group
        assert g is not None and s.axes["m"] == (s.axes["a.weight"][0],) * 2
        assert s.axes["s"][1].group == g and s.axes["b.weight"][1].group == g
        assert check_structure(model, s, x, seed=2) < 1e-12


# ---------------------------------------------------------------------------- grouped-query attention
class GQA(nn.Module):
    """Grouped-query attention as Llama writes it: keys and values repeated for the query
    heads of their group with ``expand`` + ``reshape``."""

    def __init__(self, d: int = 24, heads: int = 6, kv: int = 2):
        super().__init__()
        self.h, self.kv, self.hd = heads, kv, d // heads
        self.inp = nn.Linear(5, d)
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, kv * self.hd), nn.Linear(d, kv * self.hd)
        self.o, self.fc = nn.Linear(d, d), nn.Linear(d, 3)

    def repeat(self, t):
        b, kv, s, hd = t.shape
        return t[:, :, None].expand(b, kv, self.h // kv, s, hd).reshape(b, self.h, s, hd)

    def forward(self, x):
        x = self.inp(x)
        b, s, _ = x.shape
        q = self.q(x).view(b, s, self.h, self.hd).transpose(1, 2)
        k = self.repeat(self.k(x).view(b, s, self.kv, self.hd).transpose(1, 2))
        v = self.repeat(self.v(x).view(b, s, self.kv, self.hd).transpose(1, 2))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.fc(x + self.o(a.transpose(1, 2).reshape(b, s, -1)))


@pytest.mark.parametrize("front_end", ["fx", "export"])
@pytest.mark.parametrize("seed", [0, 1])
def test_gqa_query_heads_permute_within_their_key_value_group(front_end, seed):
    torch.manual_seed(seed)
    model, x = randomize(GQA(), seed), torch.randn(2, 7, 5)
    s = trace(model, x, front_end=front_end)
    q_rows = s.axes["q.weight"][0]
    groups = [p.group for p in q_rows.parts]
    sizes = [p.size for p in q_rows.parts]
    # key/value heads (2), the 3 query heads of each, the 4 query/key dims
    assert sizes == [2, 3, 4] and None not in groups
    assert s.axes["k.weight"][0].parts[0].group == groups[0]
    assert s.axes["o.weight"][1] == q_rows or [p.group for p in s.axes["o.weight"][1].parts][:2] == groups[:2]
    assert check_structure(model, s, x, seed=seed) < 1e-12


def test_gqa_permuting_query_heads_without_the_output_projection_changes_the_output():
    torch.manual_seed(0)
    model, x = randomize(GQA()), torch.randn(2, 7, 5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    # swap query heads 0 and 1 (both of key/value head 0) in q only
    idx = torch.arange(24).view(6, 4)[[1, 0, 2, 3, 4, 5]].reshape(-1)
    moved = dict(state, **{"q.weight": state["q.weight"][idx], "q.bias": state["q.bias"][idx]})
    assert (_out(model, state, x) - _out(model, moved, x)).abs().max() > 1e-3
    # with the output projection's columns swapped alike it is the same function
    moved["o.weight"] = state["o.weight"][:, idx]
    assert (_out(model, state, x) - _out(model, moved, x)).abs().max() < 1e-12


# ---------------------------------------------------------------------------- fused projections sliced
class FusedQKV(nn.Module):
    """Phi-3's layout: one linear for ``[q; k; v]`` (grouped-query sizes) sliced three times,
    one for ``[gate; up]`` chunked, and an empty slice (a rotary split at the head size)."""

    def __init__(self, d: int = 16, heads: int = 4, kv: int = 2):
        super().__init__()
        self.h, self.kv, self.hd = heads, kv, d // heads
        self.inp = nn.Linear(5, d)
        self.qkv = nn.Linear(d, d + 2 * kv * self.hd)
        self.o = nn.Linear(d, d)
        self.gate_up, self.down = nn.Linear(d, 2 * 24), nn.Linear(24, d)
        self.fc = nn.Linear(d, 3)

    def forward(self, x):
        x = self.inp(x)
        b, s, d = x.shape
        qkv = self.qkv(x)
        n = self.kv * self.hd
        q, k, v = qkv[..., :d], qkv[..., d:d + n], qkv[..., d + n:]
        q = q.view(b, s, self.h, self.hd).transpose(1, 2)
        q = torch.cat([q[..., :self.hd], q[..., self.hd:]], dim=-1)   # the second part is empty
        k = k.view(b, s, self.kv, self.hd).transpose(1, 2).repeat_interleave(self.h // self.kv, dim=1)
        v = v.view(b, s, self.kv, self.hd).transpose(1, 2).repeat_interleave(self.h // self.kv, dim=1)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, s, d)
        x = x + self.o(a)
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.fc(x + self.down(F.silu(gate) * up))


def _cat_parts(axis):
    """The leaves of a (nested) concatenation."""
    if type(axis).__name__ == "Cat":
        return [leaf for p in axis.parts for leaf in _cat_parts(p)]
    return [axis]


def _groups(axis) -> set:
    """The groups of an axis (a unit, product or concatenation)."""
    if axis is None:
        return {None}
    if hasattr(axis, "parts"):
        return set().union(*(_groups(p) for p in axis.parts))
    return {axis.group}


@pytest.mark.parametrize("front_end", ["fx", "export"])
def test_fused_qkv_slices_refine_into_q_k_v(front_end):
    torch.manual_seed(0)
    model, x = randomize(FusedQKV()), torch.randn(2, 6, 5)
    s = trace(model, x, front_end=front_end)
    parts = _cat_parts(s.axes["qkv.weight"][0])
    assert [p.size for p in parts] == [16, 8, 8]
    q, k, v = (_groups(p) for p in parts)
    assert None not in q | k | v
    # the key/value heads, the query heads of each, the query/key dims, the value dims
    assert len(q) == 3 and k < q and v & _groups(s.axes["o.weight"][1]) and not v <= k
    g = s.axes["down.weight"][1].group
    assert g is not None and s.axes["gate_up.weight"][0].parts[0].group == g
    assert check_structure(model, s, x, seed=1) < 1e-12


def test_permuting_only_the_fused_value_rows_changes_the_output():
    torch.manual_seed(0)
    model, x = randomize(FusedQKV()), torch.randn(2, 6, 5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    idx = torch.arange(32)
    idx[24:32] = idx[24:32].flip(0)          # the value rows, not the output projection's columns
    moved = dict(state, **{"qkv.weight": state["qkv.weight"][idx], "qkv.bias": state["qkv.bias"][idx]})
    assert (_out(model, state, x) - _out(model, moved, x)).abs().max() > 1e-3


# ---------------------------------------------------------------------------- ATen forms: numpy_T, in place
class TransposedWeights(nn.Module):
    """Falcon's ``x @ weight.T`` and an in-place residual add (``aten.numpy_T``, ``aten.add_``)."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(8, 4))
        self.w2 = nn.Parameter(torch.randn(8, 8))
        self.w3 = nn.Parameter(torch.randn(3, 8))

    def forward(self, x):
        h = torch.relu(x @ self.w1.T)
        h.add_(torch.tanh(h @ self.w2.T))
        return h @ self.w3.T


@pytest.mark.parametrize("front_end", ["fx", "export"])
def test_transposed_weights_and_in_place_adds(front_end):
    torch.manual_seed(0)
    model, x = randomize(TransposedWeights()), torch.randn(5, 4)
    s = trace(model, x, front_end=front_end)
    g = s.axes["w1"][0].group
    assert g is not None and s.axes["w2"] == (s.axes["w1"][0],) * 2 and s.axes["w3"][1].group == g
    assert s.permuted_fraction == 1.0
    assert check_structure(model, s, x, seed=1) < 1e-12


# ---------------------------------------------------------------------------- baddbmm
class AlibiAttention(nn.Module):
    """BLOOM's scores: ``baddbmm(alibi, q, k^T)`` with one ALiBi slope per head (so the heads
    are not interchangeable), batch and heads flattened together."""

    def __init__(self, d: int = 16, h: int = 4):
        super().__init__()
        self.h, self.hd = h, d // h
        self.inp, self.q, self.k, self.v = nn.Linear(5, d), nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.o, self.fc = nn.Linear(d, d), nn.Linear(d, 3)
        self.register_buffer("slopes", 2.0 ** -torch.arange(1, h + 1, dtype=torch.float32), persistent=False)

    def forward(self, x):
        x = self.inp(x)
        b, s, d = x.shape
        split = lambda t: t.view(b, s, self.h, self.hd).transpose(1, 2).reshape(b * self.h, s, self.hd)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        alibi = (self.slopes[:, None] * torch.arange(s, dtype=x.dtype)[None, :]).repeat(b, 1)[:, None, :]
        scores = torch.baddbmm(alibi, q, k.transpose(1, 2), beta=1.0, alpha=self.hd ** -0.5)
        a = torch.bmm(scores.softmax(-1), v).view(b, self.h, s, self.hd).transpose(1, 2).reshape(b, s, d)
        return self.fc(x + self.o(a))


@pytest.mark.parametrize("front_end", ["fx", "export"])
def test_baddbmm_ties_query_and_key_dims(front_end):
    torch.manual_seed(0)
    model, x = randomize(AlibiAttention()), torch.randn(2, 6, 5)
    s = trace(model, x, front_end=front_end)
    q_rows, k_rows, v_rows = (s.axes[f"{n}.weight"][0] for n in "qkv")
    assert [p.size for p in q_rows.parts] == [4, 4]
    assert q_rows.parts[0].group is None            # heads: each has its own ALiBi slope
    assert q_rows.parts[1].group is not None and q_rows.parts[1].group == k_rows.parts[1].group
    assert v_rows.parts[1].group not in (None, q_rows.parts[1].group)
    assert check_structure(model, s, x, seed=1) < 1e-12
