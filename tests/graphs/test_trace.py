"""Tracing: every supported layer kind, permuted at random, computes the same function."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import graphs
from graphs import Structure, permute, random_permutation, trace


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BatchNorm running statistics (so permuting them matters)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.dim() > 1:
                fan_in = max(t[0].numel(), 1)
                t.copy_(torch.randn(t.shape, generator=g) / math.sqrt(fan_in))
            elif name.endswith("weight"):
                t.copy_(1 + 0.2 * torch.randn(t.shape, generator=g))
            else:
                t.copy_(0.2 * torch.randn(t.shape, generator=g))
    return model.eval()


def assert_invariant(model: nn.Module, x, seed: int = 0, atol: float = 1e-5) -> Structure:
    model = randomize(model, seed)
    s = trace(model, x)
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


# ----------------------------------------------------------------------------- models
def mlp(widths):
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class Residual(nn.Module):
    """A ResNet basic block with an optional projection shortcut."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return F.relu(self.b2(self.c2(F.relu(self.b1(self.c1(x))))) + self.short(x))


class TinyResNet(nn.Module):
    def __init__(self, w=4, blocks=2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.stage1 = nn.Sequential(*[Residual(w, w) for _ in range(blocks)])
        self.stage2 = nn.Sequential(Residual(w, 2 * w, 2), *[Residual(2 * w, 2 * w) for _ in range(blocks - 1)])
        self.head = nn.Linear(2 * w, 5)

    def forward(self, x):
        x = self.stage2(self.stage1(self.stem(x)))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class HandAttention(nn.Module):
    """Fused qkv, reshape into heads, softmax(q k^T) v, heads merged back."""

    def __init__(self, d=8, h=2):
        super().__init__()
        self.h = h
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.h, C // self.h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = (q @ k.transpose(-2, -1)) * (C // self.h) ** -0.5
        out = (att.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(out)


class SplitAttention(nn.Module):
    """Separate q, k, v projections, view/transpose into heads, chunked variant too."""

    def __init__(self, d=8, h=2, chunk=False):
        super().__init__()
        self.h, self.chunk = h, chunk
        if chunk:
            self.qkv = nn.Linear(d, 3 * d)
        else:
            self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.o = nn.Linear(d, d)

    def forward(self, x):
        B, N, C = x.shape
        if self.chunk:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        else:
            q, k, v = self.q(x), self.k(x), self.v(x)
        q, k, v = (t.view(B, N, self.h, -1).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.o(y.transpose(1, 2).contiguous().view(B, N, C))


class Encoder(nn.Module):
    def __init__(self, att: nn.Module, d=8, torch_mha=False):
        super().__init__()
        self.embed = nn.Linear(5, d)
        self.pos = nn.Parameter(torch.zeros(1, 4, d))
        self.norm1 = nn.LayerNorm(d)
        self.att = att
        self.torch_mha = torch_mha
        self.norm2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.out = nn.Linear(d, 3)

    def forward(self, x):
        x = self.embed(x) + self.pos
        y = self.norm1(x)
        x = x + (self.att(y, y, y, need_weights=False)[0] if self.torch_mha else self.att(y))
        x = x + self.mlp(self.norm2(x))
        return self.out(x[:, 0])


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 5)
        self.b = nn.Linear(6, 7)
        self.c = nn.Linear(12, 4)
        self.d = nn.Linear(4 + 6, 2)

    def forward(self, x):
        h = torch.cat([self.a(x).relu(), self.b(x).tanh()], dim=-1)
        h = self.c(h).relu()
        return self.d(torch.cat([h, x], dim=1))


class Embed(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.fc = nn.Linear(6, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, tok):
        return self.head(F.gelu(self.fc(self.emb(tok))).mean(1))


class Functional(nn.Module):
    """Parameters used through torch.nn.functional, names that mean nothing."""

    def __init__(self):
        super().__init__()
        self.W0 = nn.Parameter(torch.randn(9, 4))
        self.beta = nn.Parameter(torch.randn(9))
        self.W1 = nn.Parameter(torch.randn(2, 9))

    def forward(self, x):
        return F.linear(torch.tanh(F.linear(x, self.W0, self.beta)), self.W1)


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleDict({
            "first": nn.Sequential(nn.Conv1d(2, 6, 3), nn.GroupNorm(3, 6), nn.SiLU()),
            "second": nn.ModuleList([nn.Conv1d(6, 6, 3, padding=1), nn.BatchNorm1d(6)]),
        })
        self.head = nn.Linear(6 * 6, 3)

    def forward(self, x):
        x = self.blocks["first"](x)
        x = x + self.blocks["second"][1](self.blocks["second"][0](x))
        return self.head(torch.flatten(F.relu(x), 1))


CASES = {
    "mlp": (lambda: mlp([4, 8, 16, 8, 3]), lambda: torch.randn(3, 4)),
    "conv1d": (lambda: nn.Sequential(nn.Conv1d(2, 5, 3), nn.ReLU(), nn.Conv1d(5, 4, 3, bias=False), nn.AdaptiveMaxPool1d(1), nn.Flatten(), nn.Linear(4, 2)), lambda: torch.randn(2, 2, 9)),
    "conv2d_flatten": (lambda: nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 3 * 3, 5)), lambda: torch.randn(2, 3, 8, 8)),
    "conv3d": (lambda: nn.Sequential(nn.Conv3d(1, 4, 3), nn.BatchNorm3d(4), nn.ReLU(), nn.Conv3d(4, 4, 1), nn.AvgPool3d(2), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 2)), lambda: torch.randn(2, 1, 6, 6, 6)),
    "grouped": (lambda: nn.Sequential(nn.Conv2d(2, 8, 3), nn.ReLU(), nn.Conv2d(8, 12, 3, groups=4), nn.ReLU(), nn.Conv2d(12, 24, 1, groups=12), nn.ReLU(), nn.Conv2d(24, 24, 3, padding=1, groups=24, bias=False), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 3)), lambda: torch.randn(2, 2, 9, 9)),
    "conv_transpose": (lambda: nn.Sequential(nn.Conv2d(2, 8, 3), nn.ReLU(), nn.ConvTranspose2d(8, 12, 3, groups=4), nn.ReLU(), nn.ConvTranspose2d(12, 12, 3, groups=12), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 3)), lambda: torch.randn(2, 2, 9, 9)),
    "batchnorm1d": (lambda: nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2)), lambda: torch.randn(5, 4)),
    "layernorm_groupnorm": (lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(4, 8), nn.GELU(), nn.Conv2d(8, 6, 3), nn.GroupNorm(1, 6), nn.Flatten(), nn.Linear(6 * 4 * 4, 7), nn.LayerNorm(7), nn.SiLU(), nn.Linear(7, 2)), lambda: torch.randn(2, 3, 8, 8)),
    "resnet": (lambda: TinyResNet(), lambda: torch.randn(2, 3, 8, 8)),
    "concat": (lambda: Concat(), lambda: torch.randn(3, 6)),
    "embedding": (lambda: Embed(), lambda: torch.randint(0, 11, (2, 5))),
    "torch_mha": (lambda: Encoder(nn.MultiheadAttention(8, 2, batch_first=True), torch_mha=True), lambda: torch.randn(2, 4, 5)),
    "hand_attention": (lambda: Encoder(HandAttention()), lambda: torch.randn(2, 4, 5)),
    "split_attention": (lambda: Encoder(SplitAttention()), lambda: torch.randn(2, 4, 5)),
    "chunk_attention": (lambda: Encoder(SplitAttention(chunk=True)), lambda: torch.randn(2, 4, 5)),
    "functional": (lambda: Functional(), lambda: torch.randn(3, 4)),
    "nested": (lambda: Nested(), lambda: torch.randn(2, 2, 8)),
}


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
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(7, 5)
            self.mid = nn.Linear(5, 5)
            self.out = nn.Linear(5, 7, bias=False)
            self.out.weight = self.emb.weight

        def forward(self, t):
            return self.out(self.mid(self.emb(t)).relu())

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
