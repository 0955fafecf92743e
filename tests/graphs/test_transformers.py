"""Hugging Face transformers models end to end: tiny configs (random weights, nothing
downloaded) traced with the torch.export front end, a random permutation of the weights
leaves the outputs unchanged in float64, and the share of parameters permuted stays at
least what the rules reach today (``bench/coverage.py`` prints the same rows)."""
from __future__ import annotations

import logging
import warnings

import pytest
import torch
import torch.nn as nn

from graphs import check_structure, permute, random_permutation, trace
from nets import randomize

tf = pytest.importorskip("transformers")
from weightspace.hf import example_input  # noqa: E402

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100)
VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=16,
              patch_size=4)


class LogitsOnly(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, **inputs):
        return self.model(**inputs).logits


def _t5():
    return tf.T5ForConditionalGeneration(tf.T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                                     vocab_size=100))


# name -> (builder, least permuted fraction, least number of groups)
MODELS = {
    "bert": (lambda: tf.BertForMaskedLM(tf.BertConfig(**TINY, max_position_embeddings=32)), 0.99, 9),
    "distilbert": (lambda: tf.DistilBertForMaskedLM(tf.DistilBertConfig(
        dim=32, n_layers=2, n_heads=4, hidden_dim=64, vocab_size=100, max_position_embeddings=32)), 0.99, 9),
    "roberta": (lambda: tf.RobertaForMaskedLM(tf.RobertaConfig(**TINY, max_position_embeddings=40)), 0.99, 9),
    "gpt2": (lambda: tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100,
                                                      n_positions=32, bos_token_id=0, eos_token_id=0)), 0.999, 9),
    # grouped-query attention (4 query heads, 2 key/value heads): 2 groups per layer for the
    # key/value heads and the query heads within each, plus value dims and the gated MLP
    "llama": (lambda: tf.LlamaForCausalLM(tf.LlamaConfig(**TINY, num_key_value_heads=2,
                                                         max_position_embeddings=32)), 0.999, 9),
    "mistral": (lambda: tf.MistralForCausalLM(tf.MistralConfig(**TINY, num_key_value_heads=2,
                                                               max_position_embeddings=32)), 0.999, 9),
    "qwen2": (lambda: tf.Qwen2ForCausalLM(tf.Qwen2Config(**TINY, num_key_value_heads=2,
                                                         max_position_embeddings=32)), 0.999, 9),
    "gemma": (lambda: tf.GemmaForCausalLM(tf.GemmaConfig(**TINY, num_key_value_heads=2, head_dim=8,
                                                         max_position_embeddings=32)), 0.999, 9),
    # fused [q; k; v] and [gate; up] projections, sliced
    "phi3": (lambda: tf.Phi3ForCausalLM(tf.Phi3Config(**TINY, num_key_value_heads=2, max_position_embeddings=32,
                                                      pad_token_id=0)), 0.999, 9),
    # x @ weight.T (aten.numpy_T) and in-place adds
    "falcon": (lambda: tf.FalconForCausalLM(tf.FalconConfig(hidden_size=32, num_hidden_layers=2,
                                                            num_attention_heads=4, vocab_size=100)), 0.999, 5),
    # partial rotary embeddings: the rotated half of each query/key head stays, the rest permutes
    "gpt-neox": (lambda: tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(**TINY, max_position_embeddings=32, rotary_pct=0.5)),
                 0.999, 9),
    "phi": (lambda: tf.PhiForCausalLM(tf.PhiConfig(**TINY, max_position_embeddings=32, partial_rotary_factor=0.5)),
            0.99, 9),
    # multi-query attention in one fused projection
    "gpt-bigcode": (lambda: tf.GPTBigCodeForCausalLM(tf.GPTBigCodeConfig(n_embd=32, n_layer=2, n_head=4,
                                                                         vocab_size=100, n_positions=32)), 0.999, 9),
    # ALiBi scores with baddbmm; heads stay (one slope each)
    "bloom": (lambda: tf.BloomForCausalLM(tf.BloomConfig(hidden_size=32, n_layer=2, n_head=4, vocab_size=100)),
              0.999, 5),
    # T5's output includes encoder_last_hidden_state, the encoder's residual stream: as a
    # model output it is never permuted; with the logits alone everything is
    "t5": (_t5, 0.75, 18),
    "t5-logits": (lambda: LogitsOnly(_t5()), 0.999, 19),
    "vit": (lambda: tf.ViTForImageClassification(tf.ViTConfig(**VISION, num_labels=10)), 0.99, 9),
    "clip": (lambda: tf.CLIPForImageClassification(tf.CLIPConfig(
        text_config=TINY, vision_config=VISION, projection_dim=16, num_labels=10)), 0.99, 9),
}


def _build(name):
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(0)
            model = randomize(MODELS[name][0]())   # not LayerNorm's ones and zeros
    finally:
        logging.disable(logging.NOTSET)
    inner = model.model if isinstance(model, LogitsOnly) else model
    return model, example_input(inner)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_transformers_model_is_traced_and_permutes_without_changing_its_outputs(name):
    model, x = _build(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)   # the tracer's own check warns when a group fails it
        s = trace(model, x)
    _, least_fraction, least_groups = MODELS[name]
    assert s.front_end == "export"
    assert s.permuted_fraction >= least_fraction
    assert len(s.groups) >= least_groups
    perms = random_permutation(s, 1)
    state = model.state_dict()
    moved = permute(s, state, perms)
    assert sum(not torch.equal(state[k], moved[k]) for k in state) > len(state) // 2
    # float32 internals (RMSNorm and T5's LayerNorm compute in float32) leave ~1e-8
    assert check_structure(model, s, x, perms) <= 1e-6


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_grouped_query_heads_permute_within_their_key_value_head(name):
    model, x = _build(name)
    s = trace(model, x)
    attn = "model.layers.0.self_attn"
    q_rows = s.axes[f"{attn}.q_proj.weight"][0]
    kv, rep = q_rows.parts[0], q_rows.parts[1]
    assert (kv.size, rep.size) == (2, 2) and kv.group is not None and rep.group is not None
    assert s.axes[f"{attn}.k_proj.weight"][0].parts[0].group == kv.group
    assert rep.group in [p.group for p in s.axes[f"{attn}.o_proj.weight"][1].parts]
    # rotary embeddings: the query/key dimensions inside a head stay in place
    assert q_rows.parts[2].group is None and q_rows.parts[2].size == 8
    # gated MLP: gate and up share their axis, down's input is it
    g = s.axes["model.layers.0.mlp.gate_proj.weight"][0].group
    assert s.axes["model.layers.0.mlp.up_proj.weight"][0].group == g
    assert s.axes["model.layers.0.mlp.down_proj.weight"][1].group == g


def test_a_bare_encoder_keeps_its_residual_stream_as_the_output():
    """BertModel returns the residual stream: that axis is a model output and not permuted
    (the task-head models above permute it)."""
    logging.disable(logging.WARNING)
    try:
        torch.manual_seed(0)
        model = randomize(tf.BertModel(tf.BertConfig(**TINY, max_position_embeddings=32)))
    finally:
        logging.disable(logging.NOTSET)
    x = example_input(model)
    s = trace(model, x)
    assert s.axes["embeddings.word_embeddings.weight"][1] is None
    assert any(u.tensor == "embeddings.LayerNorm.weight" and u.reason == "model output" for u in s.unpermuted)
    assert 0.7 < s.permuted_fraction < 0.9
    assert check_structure(model, s, x, seed=1) <= 1e-6


def test_partial_rotary_heads_permute_their_unrotated_dims():
    model, x = _build("phi")
    s = trace(model, x)
    q_rows = s.axes["model.layers.0.self_attn.q_proj.weight"][0]
    heads, dims = q_rows.parts
    assert heads.size == 4 and heads.group is not None
    rotated, passed = dims.parts     # head_dim 8: the first 4 rotate, the last 4 pass through
    assert (rotated.size, rotated.group) == (4, None) and passed.size == 4 and passed.group is not None
    assert s.axes["model.layers.0.self_attn.k_proj.weight"][0] == q_rows
