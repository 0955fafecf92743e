"""Tracing: every supported layer kind, permuted at random, computes the same function."""
from __future__ import annotations


import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import graphs
from graphs import Structure, permute, random_permutation, trace
from nets import (CASES, Tied, Encoder, Functional, SplitAttention, TinyResNet,
                  mlp, randomize)


def assert_invariant(model: nn.Module, x, seed: int = 0, atol: float = 1e-5, **trace_kwargs) -> Structure:
    model = randomize(model, seed)
    s = trace(model, x, **trace_kwargs)
    state = model.state_dict()
    perms = random_permutation(s, seed)
    permuted = permute(s, state, perms)
    xs = x if isinstance(x, tuple) else (x,)
    with torch.no_grad():
        a = torch.func.functional_call(model, state, xs, tie_weights=False)
        b = torch.func.functional_call(model, permuted, xs, tie_weights=False)
    a = a[0] if isinstance(a, tuple) else a
    b = b[0] if isinstance(b, tuple) else b
    assert (a - b).abs().max().item() <= atol
    # the permutation really moved something
    if any(not torch.equal(p, torch.arange(len(p))) for p in perms.values()):
        assert any(not torch.equal(state[k], permuted[k]) for k in state)
    return s


@pytest.mark.parametrize("case", sorted(CASES))
def test_random_permutation_preserves_function(case):
    make, inp = CASES[case]
    torch.manual_seed(0)
    s = assert_invariant(make(), inp())
    assert s.groups, f"{case}: no group found"


@pytest.mark.parametrize("case", sorted(CASES))
@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_invariance_over_seeds(case, seed):
    make, inp = CASES[case]
    torch.manual_seed(seed)
    assert_invariant(make(), inp(), seed=seed)


@settings(max_examples=10, deadline=None)
@given(widths=st.lists(st.integers(2, 12), min_size=1, max_size=4), seed=st.integers(0, 100))
def test_mlp_groups_are_maximal(widths, seed):
    model = mlp([3, *widths, 2])
    s = assert_invariant(model, torch.randn(2, 3), seed)
    assert len(s.groups) == len(widths)
    assert sorted(g.size for g in s.groups.values()) == sorted(widths)


@settings(max_examples=6, deadline=None)
@given(w=st.integers(2, 6), blocks=st.integers(1, 3), seed=st.integers(0, 100))
def test_resnet_stage_is_one_group(w, blocks, seed):
    model = TinyResNet(w, blocks)
    s = assert_invariant(model, torch.randn(2, 3, 8, 8), seed)
    stream1 = s.axes["stage1.0.b2.weight"][0].group
    stream2 = s.axes["stage2.0.b2.weight"][0].group
    for i in range(blocks):
        assert s.axes[f"stage1.{i}.b2.weight"][0].group == stream1
        assert s.axes[f"stage2.{i}.b2.weight"][0].group == stream2
    assert s.axes["stem.0.weight"][0].group == stream1
    assert s.axes["stage2.0.short.0.weight"][0].group == stream2
    assert s.axes["stage2.0.short.0.weight"][1].group == stream1
    # one stream per stage plus one inner group per block
    assert len(s.groups) == 2 + 2 * blocks
    assert s.axes["stage1.0.b1.running_mean"][0].group == s.axes["stage1.0.c1.weight"][0].group


def test_attention_heads_permute_as_blocks():
    model = Encoder(nn.MultiheadAttention(8, 2, batch_first=True), torch_mha=True)
    s = trace(model, torch.randn(2, 4, 5))
    ax = s.axes["att.in_proj_weight"][0]
    assert str(ax) == "[(att.heads x att.qk) | (att.heads x att.qk) | (att.heads x att.v)]"
    assert s.groups["att.heads"].size == 2 and s.groups["att.qk"].size == 4
    assert str(s.axes["att.out_proj.weight"][1]) == "(att.heads x att.v)"


def test_flatten_ties_channels_to_blocks():
    make, inp = CASES["conv2d_flatten"]
    s = trace(make(), inp())
    ax = s.axes["6.weight"][1]
    assert isinstance(ax, graphs.Prod) and ax.parts[0].group == s.axes["3.weight"][0].group
    assert ax.parts[1] == graphs.Unit(None, 9)


def test_inputs_and_outputs_are_never_permuted():
    s = trace(mlp([4, 8, 3]), torch.randn(2, 4))
    assert s.axes["0.weight"][1] is None and s.axes["2.weight"][0] is None
    reasons = {(u.tensor, u.axis): u.reason for u in s.unpermuted}
    assert reasons[("0.weight", 1)] == "model input"
    assert reasons[("2.weight", 0)] == "model output"


class Cumsum(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 6), nn.Linear(6, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = torch.cumsum(self.a(x), dim=-1)   # order-dependent: must not be permuted
        return self.c(self.b(h).relu())


def test_unsupported_operation_is_reported_not_guessed():
    s = assert_invariant(Cumsum(), torch.randn(2, 3))
    assert s.axes["a.weight"][0] is None
    assert s.axes["b.weight"][0] is not None     # later group still found
    msg = [u for u in s.unpermuted if u.tensor == "a.weight" and u.axis == 0][0].reason
    assert "cumsum" in msg


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:          # data-dependent control flow
            return self.inner(x)
        return -self.inner(x)


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.pre = nn.Linear(3, 4)
        self.odd = Untraceable()
        self.post = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))

    def forward(self, x):
        return self.post(self.odd(self.pre(x)))


def test_untraceable_submodule_is_opaque():
    s = assert_invariant(Outer(), torch.randn(2, 3))
    assert s.axes["odd.inner.weight"] == (None, None)
    assert s.axes["post.0.weight"][0] is not None
    assert any("could not be traced" in u.reason for u in s.unpermuted if u.tensor.startswith("odd"))


def test_tied_weights_share_a_group():
    s = assert_invariant(Tied(), torch.randint(0, 7, (2, 3)))
    assert s.axes["out.weight"] == s.axes["emb.weight"]


def test_hand_written_structure_matches_traced():
    model = mlp([4, 8, 3])
    traced = trace(model, torch.randn(2, 4))
    hand = Structure.from_axes({"0.weight": ("h", None), "0.bias": ("h",), "2.weight": (None, "h"),
                                "2.bias": (None,)}, model.state_dict())
    p = {"h": torch.randperm(8)}
    a = permute(hand, model.state_dict(), p)
    b = permute(traced, model.state_dict(), {"0": p["h"]})
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="has 2 axes"):
        Structure.from_axes({"0.weight": ("h",)}, model.state_dict())


def test_structure_json_round_trip():
    make, inp = CASES["torch_mha"]
    s = trace(make(), inp())
    s2 = Structure.from_dict(s.to_dict())
    assert s2.axes == s.axes and set(s2.groups) == set(s.groups)


def test_layers_in_forward_order():
    s = trace(TinyResNet(), torch.randn(2, 3, 8, 8))
    names = [l.name for l in s.layers]
    assert names[0] == "stem.0" and names[-1] == "head"
    assert s.layers[-1].kind == "linear"
    assert s.layers[1].kind == "batchnorm"


def test_functional_layers_and_sources():
    s = trace(Functional(), torch.randn(3, 4))
    assert [l.kind for l in s.layers] == ["linear", "linear"]
    assert s.layers[0].tensors == {"weight": "W0", "bias": "beta"} and s.layers[0].attrs["functional"]
    assert s.layers[1].sources == (s.layers[0].name,)
    # shape queries do not leak into sources (B, N, C = x.shape before the projection)
    enc = trace(Encoder(SplitAttention()), torch.randn(2, 4, 5))
    o = [l for l in enc.layers if l.name == "att.o"][0]
    assert o.sources == ("att.v",) or set(o.sources) <= {"att.q", "att.k", "att.v"}
    assert "norm1" not in o.sources


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 6)

    def forward(self, x):
        if x.sum() > 0:          # data-dependent control flow, two levels down
            return self.lin(x)
        return -self.lin(x)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.healthy = nn.Linear(6, 6)
        self.br = Branchy()
        self.out = nn.Linear(6, 6)

    def forward(self, x):
        return self.out(self.br(torch.relu(self.healthy(x))).relu())


def test_untraceable_grandchild_costs_only_itself():
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), Block(), nn.ReLU(), nn.Linear(6, 2))
    s = assert_invariant(model, torch.randn(4, 3))
    assert s.axes["2.br.lin.weight"] == (None, None) and s.axes["2.br.lin.bias"] == (None,)
    # the healthy sibling and the parent's other layers are still permuted
    assert s.axes["2.healthy.weight"][1].group == s.axes["0.weight"][0].group
    assert s.axes["2.out.weight"][0].group == s.axes["4.weight"][1].group
    reasons = {u.reason for u in s.unpermuted if u.tensor.startswith("2.")}
    assert reasons and all(r.startswith("Branchy could not be traced") for r in reasons if "model" not in r)
    assert any("control flow" in r for r in reasons)
    assert not any("Unexpected key" in u.reason or "Block" in u.reason for u in s.unpermuted)


class RelativePositionAttention(nn.Module):
    """Swin-style: a per-head bias table indexed by an integer buffer."""

    def __init__(self, n=4, h=2, d=8, direct=False):
        super().__init__()
        self.h, self.direct = h, direct
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.relative_position_bias_table = nn.Parameter(torch.randn(2 * n - 1, h))
        index = torch.arange(n)[:, None] - torch.arange(n)[None, :] + n - 1
        self.register_buffer("relative_position_index", index)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.h, C // self.h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.direct:   # the buffer itself is the index: (N, N, h)
            bias = self.relative_position_bias_table[self.relative_position_index]
        else:             # a view of it, which fx computes once when tracing
            bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(N, N, -1)
        att = q @ k.transpose(-2, -1) + bias.permute(2, 0, 1).unsqueeze(0)
        return self.proj((att.softmax(-1) @ v).transpose(1, 2).reshape(B, N, C))


@pytest.mark.parametrize("front_end", ["fx", "export"])
@pytest.mark.parametrize("direct", [False, True])
def test_integer_index_buffer_is_used_not_permuted(direct, front_end):
    model = nn.Sequential(nn.Linear(5, 8), RelativePositionAttention(direct=direct), nn.Linear(8, 3))
    s = assert_invariant(model, torch.randn(2, 4, 5), front_end=front_end)
    assert s.front_end == front_end
    reasons = {u.axis: u.reason for u in s.unpermuted if u.tensor == "1.relative_position_index"}
    assert reasons == {0: "integer index buffer (used as index data, not permuted)",
                       1: "integer index buffer (used as index data, not permuted)"}
    assert s.axes["1.relative_position_index"] == (None, None)
    # the gathered table's rows are fixed; its head axis permutes with the heads
    table = s.axes["1.relative_position_bias_table"]
    assert table[0] is None and table[1] is not None
    assert table[1].group in {g for a in s.axes["1.qkv.weight"][:1] for g in graphs.axis_groups(a)}


class ChannelsLastPad(nn.Module):
    """Swin pads (B, H, W, C) feature maps with ``(0, 0, 0, pad_w, 0, pad_h)``."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = F.pad(self.a(x).relu(), (0, 0, 0, 1, 0, 2))
        return self.b(h.mean((1, 2)))


@pytest.mark.parametrize("front_end", ["fx", "export"])
def test_padding_fixes_only_the_padded_dimensions(front_end):
    s = assert_invariant(ChannelsLastPad(), torch.randn(2, 4, 5, 3), front_end=front_end)
    assert s.groups["a"].size == 6 and s.axes["b.weight"][1].group == "a"


def test_transposed_conv_groups_are_named_after_the_layer():
    make, inp = CASES["conv_transpose"]
    s = trace(make(), inp())
    out = s.axes["2.weight"][1]         # (in, out / groups, k, k): axis 1 is the output
    assert out.group == "2" and "2" in s.groups and not any(g.endswith(".in") for g in s.groups)
