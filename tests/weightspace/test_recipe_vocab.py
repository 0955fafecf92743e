"""``tokenizer_source`` over models whose vocabularies differ: the output holds the union (or the
base's, or a model's) vocabulary, every input's embedding rows are re-indexed to it token by token,
and a token an input lacks takes the row mergekit gives it (one owner: its row; several with the
base: the base's; several without: their mean). The expected rows are computed here token by token."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from weightspace.recipe import load_recipe, run_recipe

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

BASE_WORDS = ["<unk>"] + [f"w{j}" for j in range(15)]
VOCABS = {
    "base": BASE_WORDS,
    "m1": [w for w in BASE_WORDS if w != "w3"][::-1][:-1][::-1] + ["<unk>", "both1"],  # no w3, ids shuffled
    "m2": BASE_WORDS + ["both1", "only2a", "only2b"],
}
VOCAB_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")


def tiny_tokenizer(words, path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>").save_pretrained(str(path))


@pytest.fixture()
def models(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    out = {}
    for seed, (name, words) in enumerate(VOCABS.items()):
        torch.manual_seed(seed)
        m = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1, vocab_size=len(words)))
        m.save_pretrained(tmp_path / name)
        tiny_tokenizer(words, tmp_path / name)
        out[name] = tmp_path / name
    return out


def weights(d):
    return load_file(str(d / "model.safetensors"))


def rows_of(name, state, token):
    """The row of ``token`` in model ``name`` (None when its vocabulary lacks it)."""
    words = VOCABS[name]
    return None if token not in words else {k: state[k][words.index(token)] for k in VOCAB_TENSORS}


def filled(token, own, base="base"):
    """mergekit's rows for a token, per model: its own, else the one owner's, else the base's, else the mean."""
    present = {n: r for n, r in own.items() if r is not None}
    out = {}
    for n, r in own.items():
        if r is not None:
            out[n] = r
        elif len(present) == 1:
            out[n] = next(iter(present.values()))
        elif base in present:
            out[n] = present[base]
        else:
            out[n] = {k: sum(p[k] for p in present.values()) / len(present) for k in VOCAB_TENSORS}
    return out


def test_union_vocabulary_task_arithmetic(tmp_path, models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = tmp_path / "recipe.yaml"
    p.write_text(f"merge_method: task_arithmetic\nbase_model: {models['base']}\nmodels:\n"
                 f"  - model: {models['m1']}\n    parameters: {{weight: 0.7}}\n"
                 f"  - model: {models['m2']}\n    parameters: {{weight: 0.4}}\n"
                 f"tokenizer_source: union\n")
    out = run_recipe(load_recipe(p), tmp_path / "merged")
    tok = AutoTokenizer.from_pretrained(out)
    vocab = tok.get_vocab()
    # the base's tokens keep their ids; the others follow in input order
    assert {w: vocab[w] for w in BASE_WORDS} == {w: i for i, w in enumerate(BASE_WORDS)}
    assert [vocab[w] for w in ("both1", "only2a", "only2b")] == [16, 17, 18] and len(vocab) == 19
    assert tok("w3 only2a both1")["input_ids"] == [vocab["w3"], vocab["only2a"], vocab["both1"]]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.vocab_size == 19 and json.loads((out / "config.json").read_text())["vocab_size"] == 19
    merged = weights(out)
    assert merged["model.embed_tokens.weight"].shape == (19, 16) and merged["lm_head.weight"].shape == (19, 16)
    for k, v in model.state_dict().items():
        assert torch.equal(v, merged[k])
    ins = {n: weights(d) for n, d in models.items()}
    for token, i in vocab.items():
        f = filled(token, {n: rows_of(n, ins[n], token) for n in ins})
        for k in VOCAB_TENSORS:
            expected = f["base"][k] + 0.7 * (f["m1"][k] - f["base"][k]) + 0.4 * (f["m2"][k] - f["base"][k])
            torch.testing.assert_close(merged[k][i], expected, msg=f"{token} {k}")
    for k in VOCAB_TENSORS:  # a token only m2 knows keeps m2's row exactly
        assert torch.equal(merged[k][vocab["only2b"]], ins["m2"][k][VOCABS["m2"].index("only2b")])
    for k, v in merged.items():
        if k not in VOCAB_TENSORS:
            b = ins["base"][k]
            torch.testing.assert_close(v, b + 0.7 * (ins["m1"][k] - b) + 0.4 * (ins["m2"][k] - b))


def test_union_without_base_and_the_base_vocabulary(tmp_path, models):
    ins = {n: weights(d) for n, d in models.items()}
    p = tmp_path / "recipe.yaml"
    # linear over m1 and m2, no base: a token both know averages; one only m2 knows is m2's
    p.write_text(f"merge_method: linear\nmodels: [{models['m1']}, {models['m2']}]\ntokenizer_source: union\n")
    out = run_recipe(load_recipe(p), tmp_path / "lin")
    merged = weights(out)
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(out).get_vocab()
    assert set(vocab) == set(VOCABS["m1"]) | set(VOCABS["m2"])
    assert [w for w, _ in sorted(vocab.items(), key=lambda kv: kv[1])][:15] == VOCABS["m1"][:15]  # m1 leads
    for token, i in vocab.items():
        f = filled(token, {n: rows_of(n, ins[n], token) for n in ("m1", "m2")}, base=None)
        for k in VOCAB_TENSORS:
            torch.testing.assert_close(merged[k][i], (f["m1"][k] + f["m2"][k]) / 2)
    assert torch.equal(merged["lm_head.weight"][vocab["only2a"]], ins["m2"]["lm_head.weight"][17])
    # tokenizer_source: base: the base's 16 tokens, every model's rows re-indexed to them
    p.write_text(f"merge_method: ties\nbase_model: {models['base']}\nmodels: [{models['m1']}, {models['m2']}]\n"
                 f"tokenizer_source: base\n")
    out = run_recipe(load_recipe(p), tmp_path / "b")
    merged = weights(out)
    assert merged["model.embed_tokens.weight"].shape == (16, 16)
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 16
    import merging

    for i, token in enumerate(BASE_WORDS):
        f = filled(token, {n: rows_of(n, ins[n], token) for n in ins})
        for k in VOCAB_TENSORS:
            exp = merging.merge_states("ties", [{k: f["m1"][k]}, {k: f["m2"][k]}], base={k: f["base"][k]})[k]
            torch.testing.assert_close(merged[k][i], exp)


def test_a_safetensors_output_says_it_holds_no_tokenizer(tmp_path, models):
    p = tmp_path / "recipe.yaml"
    p.write_text(f"merge_method: linear\nmodels: [{models['base']}, {models['m2']}]\ntokenizer_source: union\n")
    with pytest.warns(UserWarning, match="the embeddings follow the output vocabulary \\(19 tokens\\), but a "
                                         ".safetensors output holds no tokenizer"):
        out = run_recipe(load_recipe(p), tmp_path / "m.safetensors")
    assert load_file(str(out))["lm_head.weight"].shape == (19, 16)
