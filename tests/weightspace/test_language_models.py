"""Language models as checkpoints: next-byte text data, perplexity along the path, and weight and
activation matching of Hugging Face causal LMs (GPT-2 with tied embeddings, Llama with grouped-query
attention) on data.

Tiny byte-level models built from configs (``byte_language_model``); nothing is downloaded.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

import weightspace  # noqa: E402
from weightspace.cli import main  # noqa: E402
from weightspace.data import load_dataset  # noqa: E402
from weightspace.models import byte_language_model  # noqa: E402
from weightspace.training import logits_of, train_classifier  # noqa: E402


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """About 60 kB of Python source: 27 test and 437 train sequences of 128 bytes."""
    import json as source

    path = tmp_path_factory.mktemp("text") / "corpus.py"
    path.write_bytes((Path(source.__file__).parent / "decoder.py").read_bytes() * 6)
    return path


def _weights(d: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(d / "model.safetensors"))


# --------------------------------------------------------------------------- text data


def test_python_stdlib_is_next_byte_prediction():
    train, test = load_dataset("python-stdlib", split="train"), load_dataset("python-stdlib", split="test")
    assert train.x.shape == (4096, 128) and test.x.shape == (256, 128)
    for ds in (train, test):
        assert ds.x.dtype == ds.y.dtype == torch.int64 and ds.num_classes == 256
        assert torch.equal(ds.x[:, 1:], ds.y[:, :-1])  # y is x shifted by one byte
        assert int(ds.x.min()) >= 0 and int(ds.x.max()) < 256
    # the splits are different windows of the same stream
    train_rows = {tuple(r.tolist()) for r in train.x[:600]}
    assert not any(tuple(r.tolist()) in train_rows for r in test.x[:30])


def test_text_path_reads_a_file_or_a_directory(tmp_path, corpus):
    one = load_dataset(f"text:{corpus}", split="all")
    assert one.x.shape == (len(corpus.read_bytes()) // 129, 128)
    assert bytes(one.x[0].tolist()) == corpus.read_bytes()[:128]
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "b.txt").write_bytes(b"B" * 3000)
    (d / "a.md").write_bytes(b"A" * 3000)
    (d / "skip.bin").write_bytes(b"\0" * 3000)
    both = load_dataset(f"text:{d}", split="all")
    stream = bytes(both.x[:, :1].flatten().tolist())
    assert set(stream) == {ord("A"), ord("B")} and stream.index(b"B") > stream.rindex(b"A")  # sorted, no .bin


def test_text_errors_name_the_path(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_dataset(f"text:{tmp_path / 'nope'}")
    (tmp_path / "short.txt").write_text("x" * 200)
    with pytest.raises(ValueError, match=r"short\.txt holds 200 bytes, too few for one test sequence"):
        load_dataset(f"text:{tmp_path / 'short.txt'}", split="test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no text file"):
        load_dataset(f"text:{tmp_path / 'empty'}")


def test_cli_refuses_text_data_that_does_not_fit(tmp_path, capsys, corpus):
    """A model with a vocabulary under 256 cannot take bytes: one line, exit 2."""
    for seed in (0, 1):
        torch.manual_seed(seed)
        cfg = transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=100, n_positions=128,
                                      bos_token_id=0, eos_token_id=0)
        transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / f"m{seed}")
    capsys.readouterr()
    code = main(["barrier", str(tmp_path / "m0"), str(tmp_path / "m1"), "--data", f"text:{corpus}", "--points", "3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "with token ids" in err[0] and "fail in the forward pass" in err[0]
    assert "corpus.py" in err[0]


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_train_classifier_trains_a_language_model(family, corpus):
    torch.manual_seed(0)
    model = byte_language_model(family, width=16, heads=2)
    ds = load_dataset(f"text:{corpus}", split="train")
    batches = [(ds.x[i:i + 32], ds.y[i:i + 32]) for i in range(0, 320, 32)]
    losses = train_classifier(model, batches, epochs=3, lr=3e-3, optimizer="adam", warmup=5, progress=False)
    assert losses[0] < math.log(256) + 0.1 and losses[-1] < losses[0] - 0.5
    out = logits_of(model(ds.x[:2]))
    assert out.shape == (2, 256, 128)


def test_warmup_must_be_a_count():
    with pytest.raises(ValueError, match="warmup must be a non-negative integer, got -1"):
        train_classifier(byte_language_model("gpt2", width=16, heads=2), [], warmup=-1)


def test_byte_language_model_checks_its_sizes():
    with pytest.raises(ValueError, match="unknown family 'bert'"):
        byte_language_model("bert")
    with pytest.raises(ValueError, match="width 30 is not a multiple of heads 4"):
        byte_language_model("gpt2", width=30)
    with pytest.raises(ValueError, match="heads 4 is not a multiple of kv_heads 3"):
        byte_language_model("llama", width=32, kv_heads=3)


# --------------------------------------------------------------------------- alignment on data


def _permuted_copy(a: Path, dest: Path, seed: int = 3) -> Path:
    """A's directory with its hidden units permuted at random: the same function."""
    from safetensors.torch import save_file

    structure = weightspace.load_model(a).structure()
    state = _weights(a)
    shuffled = weightspace.permute(structure, state, weightspace.random_permutation(structure, seed=seed))
    assert any(not torch.equal(shuffled[k], state[k]) for k in state)
    shutil.copytree(a, dest)
    save_file({k: v.contiguous() for k, v in shuffled.items()}, str(dest / "model.safetensors"),
              metadata={"format": "pt"})
    return dest


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_activation_matching_brings_a_permuted_language_model_back(family, tmp_path, corpus):
    """B is A with its units permuted: B computes what A does, activation matching on text finds
    the permutation, so the aligned path is flat at A's loss and the merge is A (GPT-2's tied
    output layer permuted with the embedding it shares)."""
    torch.manual_seed(0)
    byte_language_model(family, width=16, heads=2).save_pretrained(tmp_path / "a")
    a = tmp_path / "a"
    b = _permuted_copy(a, tmp_path / "b")
    data = f"text:{corpus}"
    res = weightspace.barrier_between(a, b, data=data, align="activation", steps=3, progress=False)
    naive, aligned = res["naive"], res["activation matching"]
    assert naive.losses[-1] == pytest.approx(naive.losses[0], rel=1e-5)  # B is A's function
    assert naive.loss_barrier > 1e-3  # averaging two orders of the same units is not A
    for v in aligned.losses:
        assert v == pytest.approx(aligned.losses[0], rel=1e-5, abs=1e-6)
    result = weightspace.merge_checkpoints(a, b, tmp_path / "merged", data=data, progress=False)
    assert result.method == "activation"
    merged, state = _weights(result.path), _weights(a)
    assert set(merged) == set(state)  # the files' keys: a tied tensor once
    for k, v in state.items():
        torch.testing.assert_close(merged[k], v, rtol=0, atol=1e-6)
    model = transformers.AutoModelForCausalLM.from_pretrained(result.path)
    prov = json.loads(model.config.to_json_string())  # the config is A's
    assert prov["vocab_size"] == 256


def test_weight_matching_path_ends_at_b_with_tied_embeddings(tmp_path, corpus):
    """The endpoint of the aligned path is B itself, permuted: GPT-2's output layer (the token
    embedding under a second name) moves with the embedding."""
    for seed in (0, 1):
        torch.manual_seed(seed)
        byte_language_model("gpt2", width=16, heads=2).save_pretrained(tmp_path / f"m{seed}")
    res = weightspace.barrier_between(tmp_path / "m0", tmp_path / "m1", data=f"text:{corpus}", align="weight",
                                      steps=3, progress=False)
    assert res["weight matching"].losses[-1] == pytest.approx(res["naive"].losses[-1], rel=1e-5)


def test_cli_barrier_on_text_reports_perplexity(tmp_path, capsys, corpus):
    for seed in (0, 1):
        torch.manual_seed(seed)
        byte_language_model("llama", width=16, heads=2).save_pretrained(tmp_path / f"m{seed}")
    args = ["barrier", str(tmp_path / "m0"), str(tmp_path / "m1"), "--data", f"text:{corpus}", "--points", "3",
            "--method", "weight", "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "A perplexity " in out and "ppl barrier" in out and "merged model has perplexity" in out
    assert main(args + ["--json"]) == 0
    res = json.loads(capsys.readouterr().out)["results"]["naive"]
    assert res["midpoint_perplexity"] == pytest.approx(math.exp(res["midpoint_loss"]))
    assert res["endpoint_perplexities"][0] == pytest.approx(math.exp(res["losses"][0]))


def test_repair_of_a_model_without_hidden_linear_layers_says_so(tmp_path, corpus):
    """GPT-2's hidden layers are transformers' Conv1D, which REPAIR does not correct: one warning."""
    for seed in (0, 1):
        torch.manual_seed(seed)
        byte_language_model("gpt2", width=16, heads=2).save_pretrained(tmp_path / f"m{seed}")
    with pytest.warns(UserWarning, match="runs no nn.Linear or nn.Conv.d layer before its output layer"):
        weightspace.merge_checkpoints(tmp_path / "m0", tmp_path / "m1", tmp_path / "merged",
                                      data=f"text:{corpus}", repair=True, progress=False)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("seed", [1, 3, 5])
def test_weight_matching_brings_permuted_heads_back(family, seed, tmp_path):
    """Heads and the dimensions inside them permuted together: the unit-signature start matches the
    heads by their sorted blocks, then their dimensions, so weight matching finds the permutation
    even where descent from the identity stops at a local optimum."""
    torch.manual_seed(0)
    byte_language_model(family, width=16, heads=2 if family == "gpt2" else 4, kv_heads=2).save_pretrained(tmp_path / "a")
    a = tmp_path / "a"
    b = _permuted_copy(a, tmp_path / "b", seed=seed)
    result = weightspace.merge_checkpoints(a, b, tmp_path / "merged", method="weight", progress=False)
    merged, state = _weights(result.path), _weights(a)
    for k, v in state.items():
        torch.testing.assert_close(merged[k], v, rtol=0, atol=1e-6)
