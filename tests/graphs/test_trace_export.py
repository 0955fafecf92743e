"""The torch.export front end (the same rules on ATen graphs), keyword inputs, and the
front end and permuted fraction a structure reports."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from graphs import Structure, check_structure, permute, random_permutation, trace
from nets import CASES, EXTRA_CASES, Functional, mlp, randomize

ALL_CASES = {**CASES, **EXTRA_CASES}


def assert_preserved(model: nn.Module, x, s: Structure, seed: int = 0) -> None:
    """A random permutation moves some weights and keeps the output (float64)."""
    perms = random_permutation(s, seed)
    state = model.state_dict()
    moved = permute(s, state, perms)
    assert any(not torch.equal(state[k], moved[k]) for k in state)
    assert check_structure(model, s, x, perms) <= 1e-6


@pytest.mark.parametrize("case", ["mlp", "conv1d", "conv2d_flatten", "conv3d", "grouped", "conv_transpose",
                                  "batchnorm1d", "layernorm_groupnorm", "resnet", "concat", "embedding",
                                  "hand_attention", "split_attention", "chunk_attention", "nested",
                                  "conv_transpose_instancenorm", "module_twice", "cross_attention", "tied"])
def test_export_front_end_finds_the_same_groups_as_fx(case):
    make, inp = ALL_CASES[case]
    torch.manual_seed(0)
    model, x = randomize(make()), inp()
    a = trace(model, x)
    b = trace(model, x, front_end="export")
    assert (a.front_end, b.front_end) == ("fx", "export")
    assert sorted(g.size for g in b.groups.values()) == sorted(g.size for g in a.groups.values())
    assert b.permuted_fraction == pytest.approx(a.permuted_fraction)
    assert_preserved(model, x, b)


def test_export_records_functional_layers_under_state_dict_names():
    s = trace(Functional(), torch.randn(3, 4), front_end="export")
    assert [l.kind for l in s.layers] == ["linear", "linear"]
    assert s.layers[0].tensors == {"weight": "W0", "bias": "beta"}
    assert s.layers[1].sources == (s.layers[0].name,)


class Masked(nn.Module):
    """Optional arguments: traced as proxies, ``mask is not None`` would take the wrong branch."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x, mask=None, scale=2.0):
        h = self.a(x).relu() * scale
        if mask is not None:
            h = h * mask
        return self.b(h)


@pytest.mark.parametrize("example", ["tensor", "tuple", "dict", "dict_with_mask"])
def test_keyword_inputs_and_omitted_defaults(example):
    model, x = randomize(Masked()), torch.randn(2, 4)
    inp = {"tensor": x, "tuple": (x,), "dict": {"x": x},
           "dict_with_mask": {"x": x, "mask": torch.rand(2, 1)}}[example]
    s = trace(model, inp)
    assert s.front_end == "fx"
    assert sorted(s.groups) == ["a"] and s.groups["a"].size == 8
    assert_preserved(model, inp, s)


def test_bad_arguments_are_errors():
    with pytest.raises(ValueError, match="does not fit Masked.forward"):
        trace(Masked(), {"y": torch.randn(2, 4)})
    with pytest.raises(ValueError, match="front_end must be one of"):
        trace(Masked(), torch.randn(2, 4), front_end="jit")


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x):
        if x.sum() > 0:   # at the root: neither front end can capture it
            return self.b(self.a(x))
        return self.b(-self.a(x))


def test_when_no_front_end_captures_the_module_every_reason_is_given():
    s = trace(DataDependent(), torch.randn(2, 4))
    assert not s.groups and s.front_end is None and s.permuted_fraction == 0.0
    reason = s.unpermuted[0].reason
    assert "torch.fx could not trace DataDependent" in reason and "torch.export" in reason


def test_structure_reports_front_end_and_permuted_fraction():
    s = trace(mlp([4, 8, 3]), torch.randn(2, 4))
    # 0.weight (32) and 0.bias (8) by their rows, 2.weight (24) by its columns; 2.bias (3) not
    assert s.permuted_fraction == pytest.approx(64 / 67)
    assert "front_end='fx'" in repr(s) and "permuted=96%" in repr(s)
    s2 = Structure.from_dict(s.to_dict())
    assert s2.front_end == "fx" and s2.permuted_fraction == s.permuted_fraction
    assert Structure.from_axes({"w": ("h", None)}, {"w": (3, 2)}).front_end is None


# ------------------------------------------------------------------------- transformers
def _tiny_bert():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, vocab_size=100)
    torch.manual_seed(0)
    model = transformers.BertModel(cfg).eval()
    ids = torch.randint(0, 100, (2, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    return model, {"input_ids": ids, "attention_mask": mask}


def _tiny_gpt2():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=16)
    torch.manual_seed(0)
    model = transformers.GPT2Model(cfg).eval()
    return model, {"input_ids": torch.randint(0, 100, (2, 5)), "use_cache": False}


def test_bert_traces_through_export():
    model, inp = _tiny_bert()
    s = trace(model, inp)
    assert s.front_end == "export" and s.permuted_fraction > 0.3
    for i in range(2):
        mlp_group = s.axes[f"encoder.layer.{i}.intermediate.dense.weight"][0].group
        assert s.groups[mlp_group].size == 64
        assert s.axes[f"encoder.layer.{i}.output.dense.weight"][1].group == mlp_group
        # the query rows are heads x head dimension: heads permute as blocks
        q = s.axes[f"encoder.layer.{i}.attention.self.query.weight"][0]
        assert [p.size for p in q.parts] == [4, 8]
        assert s.axes[f"encoder.layer.{i}.attention.self.key.weight"][0] == q
    assert_preserved(model, inp, s)
    # not over-symmetric: permuting the MLP's rows alone changes the output
    state = model.state_dict()
    g = s.axes["encoder.layer.0.intermediate.dense.weight"][0].group
    alone = Structure.from_axes({"encoder.layer.0.intermediate.dense.weight": (g, None)}, state)
    assert check_structure(model, alone, inp, {g: torch.roll(torch.arange(64), 1)}) > 1e-3


def test_gpt2_traces_through_export():
    model, inp = _tiny_gpt2()
    s = trace(model, inp)
    assert s.front_end == "export" and s.permuted_fraction > 0.5
    for i in range(2):
        g = s.axes[f"h.{i}.mlp.c_fc.weight"][1].group          # Conv1D: weight is (in, out)
        assert s.groups[g].size == 128 and s.axes[f"h.{i}.mlp.c_proj.weight"][0].group == g
        qkv = s.axes[f"h.{i}.attn.c_attn.weight"][1]            # [q | k | v], each heads x head dim
        assert [p.size for p in qkv.parts] == [32, 32, 32]
    assert_preserved(model, inp, s)


def test_llama_and_swin_trace_through_export():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    llama = transformers.LlamaModel(transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=100, max_position_embeddings=32)).eval()
    inp = {"input_ids": torch.randint(0, 100, (2, 6)), "use_cache": False}
    s = trace(llama, inp)
    assert s.front_end == "export"
    g = s.axes["layers.0.mlp.gate_proj.weight"][0].group      # SwiGLU: gate and up rows together
    assert s.axes["layers.0.mlp.up_proj.weight"][0].group == g and s.groups[g].size == 64
    assert_preserved(llama, inp, s)

    swin = transformers.SwinModel(transformers.SwinConfig(
        image_size=16, patch_size=2, embed_dim=8, depths=[1, 1], num_heads=[2, 2], window_size=2)).eval()
    inp = {"pixel_values": torch.randn(2, 3, 16, 16)}
    s = trace(swin, inp)
    assert s.front_end == "export" and s.permuted_fraction > 0.5
    table = s.axes["encoder.layers.0.blocks.0.attention.relative_position_bias.relative_position_bias_table"]
    assert table[0] is None and table[1] is not None           # rows gathered, heads permuted
    assert_preserved(swin, inp, s)


@pytest.mark.parametrize("front_end", ["fx", "export"])
def test_rms_norm_and_prelu_as_functions(front_end):
    model = randomize(nn.Sequential(nn.Linear(4, 6), nn.PReLU(6), nn.Linear(6, 6), nn.RMSNorm(6), nn.Linear(6, 2)))
    x = torch.randn(3, 4)
    s = trace(model, x, front_end=front_end)
    assert s.axes["1.weight"][0].group == s.axes["0.weight"][0].group        # the PReLU slopes
    assert s.axes["3.weight"][0].group == s.axes["2.weight"][0].group        # the RMSNorm scale
    assert_preserved(model, x, s)


@pytest.mark.parametrize("case", ["mlp", "resnet", "embedding", "layernorm_groupnorm", "conv2d_flatten", "nested",
                                  "conv_transpose_instancenorm", "concat", "layernorm_chw"])
def test_export_records_the_layers_fx_records(case):
    make, inp = ALL_CASES[case]
    torch.manual_seed(0)
    model, x = randomize(make()), inp()
    a, b = trace(model, x), trace(model, x, front_end="export")
    assert [(l.name, l.kind, l.tensors, l.sources, l.activation, str(l.inputs), str(l.output)) for l in b.layers] == \
        [(l.name, l.kind, l.tensors, l.sources, l.activation, str(l.inputs), str(l.output)) for l in a.layers]


class Rows(nn.Module):
    """Iterates over its input's rows: fx cannot (an opaque submodule), torch.export can."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 32), nn.Linear(32, 6)

    def forward(self, x):
        return torch.stack([self.b(self.a(r).relu()) for r in x])


def test_export_is_used_when_fx_leaves_most_parameters_opaque():
    model = randomize(nn.Sequential(nn.Linear(3, 6), nn.ReLU(), Rows(), nn.ReLU(), nn.Linear(6, 2)))
    x = torch.randn(4, 3)
    fx_only = trace(model, x, front_end="fx")
    assert fx_only.permuted_fraction == 0.0
    assert any("Rows could not be traced" in u.reason for u in fx_only.unpermuted)
    s = trace(model, x)
    assert s.front_end == "export" and s.permuted_fraction == pytest.approx(1 - 2 / 460)   # all but 4.bias
    assert s.groups["2.a"].size == 32 and s.axes["2.b.weight"][1].group == "2.a"
    assert_preserved(model, x, s)
