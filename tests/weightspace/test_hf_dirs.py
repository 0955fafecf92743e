"""Hugging Face model directories as checkpoints: inspect, merge (in memory, low memory, sharded),
merge-many, the trust checks (auto_map, architectures), and an output that ``from_pretrained`` loads.

Tiny models built from configs and written with ``save_pretrained``; nothing is downloaded.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

import weightspace  # noqa: E402
from weightspace.api import PROVENANCE_KEY  # noqa: E402
from weightspace.cli import main  # noqa: E402
from weightspace.trust import UntrustedCodeError  # noqa: E402

LLAMA = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=128)
GPT2 = dict(n_embd=32, n_layer=2, n_head=4, vocab_size=128, n_positions=64, bos_token_id=0, eos_token_id=0)
TOKENIZER_CONFIG = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 64, "note": "from A"}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No network: transformers must never try the Hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _save_pretrained(kind: str, seed: int, path: Path) -> Path:
    torch.manual_seed(seed)
    if kind == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA))
    else:
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2))
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """Two seeds of a tiny Llama and GPT-2 (tied embeddings: no lm_head.weight in the file)."""
    d = tmp_path_factory.mktemp("hf")
    out = {}
    for kind in ("llama", "gpt2"):
        for seed, name in ((0, "a"), (1, "b")):
            out[kind, name] = _save_pretrained(kind, seed, d / f"{kind}-{name}")
        a = out[kind, "a"]
        (a / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG))
        (a / "merges.txt").write_text("#version: 0.2\n")
        gen = json.loads((a / "generation_config.json").read_text())
        gen["max_new_tokens"] = 7
        (a / "generation_config.json").write_text(json.dumps(gen))
    return out


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return weightspace.load(path)


def _reloaded(path: Path) -> dict[str, torch.Tensor]:
    model = transformers.AutoModelForCausalLM.from_pretrained(path)
    return {k: v.detach() for k, v in model.state_dict().items()}


def _expected(a: Path, b: Path, alpha: float = 0.5) -> dict[str, torch.Tensor]:
    """(1 - alpha) * A + alpha * B as merging.interpolate computes it (torch.lerp: exact at the ends)."""
    sa, sb = _weights(a), _weights(b)
    out = {k: torch.lerp(sa[k], sb[k], alpha) for k in sa}
    for k in sa:  # the average, up to the rounding of lerp
        torch.testing.assert_close(out[k], (1 - alpha) * sa[k] + alpha * sb[k], rtol=1e-6, atol=1e-7)
    return out


def _check_output(out: Path, a: Path, b: Path, alpha: float = 0.5) -> None:
    expected = _expected(a, b, alpha)
    merged = _weights(out)
    assert set(merged) == set(expected)
    for k, v in expected.items():
        assert torch.equal(merged[k], v), k  # --method none: exactly the interpolation
    reloaded = _reloaded(out)
    for k, v in expected.items():
        assert torch.equal(reloaded[k], v), k
    if "lm_head.weight" not in expected:  # tied: transformers ties it again on loading
        assert torch.equal(reloaded["lm_head.weight"], expected["transformer.wte.weight"])
    assert json.loads((out / "config.json").read_text()) == json.loads((a / "config.json").read_text())
    assert (out / "generation_config.json").read_text() == (a / "generation_config.json").read_text()
    assert json.loads((out / "tokenizer_config.json").read_text()) == TOKENIZER_CONFIG
    assert (out / "merges.txt").is_file()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # no temporaries left


def _st_metadata(out: Path) -> dict[str, str]:
    from safetensors import safe_open

    files = sorted(out.glob("*.safetensors"))
    with safe_open(str(files[0]), "pt") as f:
        return dict(f.metadata())


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_cli_merge_in_memory(dirs, kind, tmp_path, capsys):
    a, b = dirs[kind, "a"], dirs[kind, "b"]
    out = tmp_path / "merged"
    assert main(["merge", str(a), str(b), "-o", str(out), "--method", "none", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert f"wrote {out}" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json", "merges.txt",
                                                     "model.safetensors", "tokenizer_config.json"]
    _check_output(out, a, b)
    meta = _st_metadata(out)
    assert meta["format"] == "pt"
    prov = json.loads(meta[PROVENANCE_KEY])
    assert prov["method"] == "none" and [i["path"] for i in prov["inputs"]] == [str(a), str(b)]


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_cli_merge_aligns_a_permuted_copy_back(dirs, tmp_path, capsys, kind):
    """Weight matching on a Hugging Face model traced through torch.export: B is A with its hidden
    units permuted at random (the same function), and aligning B to A brings every tensor back,
    so the merge at alpha 0.5 is A itself."""
    from safetensors.torch import save_file

    a = dirs[kind, "a"]
    lm = weightspace.load_model(a)
    structure = lm.structure()
    assert structure.front_end == "export" and structure.groups and structure.permuted_fraction > 0.9
    state = _weights(a)
    shuffled = weightspace.permute(structure, state, weightspace.random_permutation(structure, seed=3))
    assert any(not torch.equal(shuffled[k], state[k]) for k in state)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    save_file({k: v.contiguous() for k, v in shuffled.items()}, str(b / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "merged"
    assert main(["merge", str(a), str(b), "-o", str(out), "--device", "cpu", "--quiet"]) == 0
    assert "alignment can permute" not in capsys.readouterr().err
    merged = _weights(out)
    for k, v in state.items():
        torch.testing.assert_close(merged[k], v, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_cli_merge_low_memory(dirs, kind, tmp_path):
    a, b = dirs[kind, "a"], dirs[kind, "b"]
    out = tmp_path / "merged"
    assert main(["merge", str(a), str(b), "-o", str(out), "--method", "none", "--low-memory", "--quiet",
                 "--device", "cpu"]) == 0
    assert (out / "model.safetensors").is_file() and not (out / "model.safetensors.index.json").exists()
    _check_output(out, a, b)
    assert json.loads(_st_metadata(out)[PROVENANCE_KEY])["streaming"] is True


def test_cli_merge_sharded_output(dirs, tmp_path):
    a, b = dirs["gpt2", "a"], dirs["gpt2", "b"]
    out = tmp_path / "merged"
    assert main(["merge", str(a), str(b), "-o", str(out), "--method", "none", "--max-shard-size", "20KB",
                 "--quiet", "--device", "cpu"]) == 0
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").is_file()
    assert not (out / "model.safetensors").exists()
    assert _st_metadata(out)["format"] == "pt"
    _check_output(out, a, b)


def test_sharded_inputs(dirs, tmp_path):
    """Sharded Hugging Face inputs (save_pretrained with a small max_shard_size) merge and reload."""
    a = tmp_path / "a"
    b = tmp_path / "b"
    for src, dst in ((dirs["llama", "a"], a), (dirs["llama", "b"], b)):
        transformers.AutoModelForCausalLM.from_pretrained(src).save_pretrained(dst, max_shard_size="30KB")
        assert (dst / "model.safetensors.index.json").is_file()
    shutil.copyfile(dirs["llama", "a"] / "tokenizer_config.json", a / "tokenizer_config.json")
    shutil.copyfile(dirs["llama", "a"] / "merges.txt", a / "merges.txt")
    shutil.copyfile(dirs["llama", "a"] / "generation_config.json", a / "generation_config.json")
    out = tmp_path / "merged"
    assert main(["merge", str(a), str(b), "-o", str(out), "--method", "none", "--quiet", "--device", "cpu"]) == 0
    _check_output(out, a, b)


def test_api_merge_and_replace_earlier_output(dirs, tmp_path):
    a, b = dirs["gpt2", "a"], dirs["gpt2", "b"]
    out = tmp_path / "merged"
    r = weightspace.merge_checkpoints(a, b, out, method="none", alpha=0.3, progress=False)
    assert r.path == out and json.loads(r.model)["name"] == "GPT2LMHeadModel"
    _check_output(out, a, b, 0.3)
    # an earlier model directory at the output is replaced whole, also by the low-memory merge
    (out / "stale.txt").write_text("old")
    r = weightspace.merge_checkpoints(a, b, out, method="none", alpha=0.7, progress=False, low_memory=True)
    assert not (out / "stale.txt").exists()
    _check_output(out, a, b, 0.7)


def test_pytorch_model_bin_input(dirs, tmp_path):
    """pytorch_model.bin (read with weights_only=True) works as well as safetensors."""
    a = tmp_path / "a"
    model = transformers.AutoModelForCausalLM.from_pretrained(dirs["gpt2", "a"])
    model.save_pretrained(a, safe_serialization=False) if _takes_safe_serialization() else None
    if not (a / "pytorch_model.bin").is_file():  # transformers 5 writes safetensors only
        a.mkdir(exist_ok=True)
        shutil.copyfile(dirs["gpt2", "a"] / "config.json", a / "config.json")
        state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
        torch.save(state, a / "pytorch_model.bin")
        (a / "model.safetensors").unlink(missing_ok=True)
    out = tmp_path / "merged"
    assert main(["merge", str(a), str(dirs["gpt2", "b"]), "-o", str(out), "--method", "none", "--quiet",
                 "--device", "cpu"]) == 0
    expected = _expected(a, dirs["gpt2", "b"])
    reloaded = _reloaded(out)
    for k, v in expected.items():
        assert torch.equal(reloaded[k], v), k


def _takes_safe_serialization() -> bool:
    import inspect

    return "safe_serialization" in inspect.signature(transformers.PreTrainedModel.save_pretrained).parameters


def test_merge_many(dirs, tmp_path):
    a, b = dirs["gpt2", "a"], dirs["gpt2", "b"]
    out = tmp_path / "many"
    assert main(["merge-many", str(a), str(b), str(a), "-o", str(out), "--method", "average", "--quiet",
                 "--device", "cpu"]) == 0
    sa, sb = _weights(a), _weights(b)
    reloaded = _reloaded(out)
    for k in sa:
        torch.testing.assert_close(reloaded[k], (2 * sa[k] + sb[k]) / 3, rtol=1e-6, atol=1e-7)
    assert (out / "tokenizer_config.json").is_file()


def test_inspect(dirs, capsys):
    assert main(["inspect", str(dirs["llama", "a"]), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert json.loads(out["model"])["name"] == "LlamaForCausalLM"
    assert "model.layers.0.self_attn.q_proj.weight" in out["tensors"]
    assert main(["inspect", str(dirs["gpt2", "a"])]) == 0
    text = capsys.readouterr().out
    assert "GPT2LMHeadModel" in text and "lm_head.weight" not in json.dumps(text)  # tied: listed once


def test_load_model_and_example_input(dirs):
    lm = weightspace.load_model(dirs["gpt2", "a"])
    assert isinstance(lm.module, transformers.GPT2LMHeadModel)
    assert "lm_head.weight" not in lm.state  # tied to the embedding; check_fits accepts that
    assert torch.equal(lm.module.lm_head.weight, lm.state["transformer.wte.weight"])
    x = lm.example_input()
    assert set(x) == {"input_ids", "attention_mask", "use_cache"} and x["use_cache"] is False and x["input_ids"].shape == (2, 8)
    assert int(x["input_ids"].max()) < 128 and x["input_ids"].dtype == torch.long
    with torch.no_grad():
        lm.module(**x)
    weightspace.check_fits(weightspace.open_checkpoint(dirs["gpt2", "a"]), lm.module)


def _vit(path: Path, seed: int) -> Path:
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                    intermediate_size=64, image_size=16, patch_size=8, num_labels=3)
    torch.manual_seed(seed)
    transformers.ViTForImageClassification(config).save_pretrained(path)
    return path


def test_vision_example_input(tmp_path):
    path = _vit(tmp_path / "vit", 0)
    lm = weightspace.load_model(path)
    x = lm.example_input()
    assert list(x) == ["pixel_values"] and x["pixel_values"].shape == (2, 3, 16, 16)
    with torch.no_grad():
        got = lm.module(**x).logits
        want = transformers.ViTForImageClassification.from_pretrained(path).eval()(**x).logits
    assert torch.equal(got, want)  # the weights were loaded (transformers renames ViT's on loading)
    s = lm.structure()  # the files' names differ from the modules': nothing can be permuted, and it says why
    assert not s.groups and "weight conversion" in s.unpermuted[0].reason


@pytest.mark.parametrize("low_memory", [False, True])
def test_merge_vit_renamed_weights(tmp_path, low_memory):
    """transformers 5 stores ViT's weights under their original names and renames them on loading:
    the merge works on the files' names and its output loads again."""
    a, b = _vit(tmp_path / "a", 0), _vit(tmp_path / "b", 1)
    out = tmp_path / "merged"
    argv = ["merge", str(a), str(b), "-o", str(out), "--method", "none", "--quiet", "--device", "cpu"]
    assert main(argv + (["--low-memory"] if low_memory else [])) == 0
    expected = _expected(a, b)
    merged = _weights(out)
    assert set(merged) == set(expected) and all(torch.equal(merged[k], v) for k, v in expected.items())
    model = transformers.AutoModelForImageClassification.from_pretrained(out)
    ref_a = transformers.AutoModelForImageClassification.from_pretrained(a)
    ref_b = transformers.AutoModelForImageClassification.from_pretrained(b)
    sa, sb, sm = ref_a.state_dict(), ref_b.state_dict(), model.state_dict()
    for k in sm:
        assert torch.equal(sm[k], torch.lerp(sa[k], sb[k], 0.5)), k


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if not line.startswith("weightspace: warning")]
    assert len(lines) == 1, err
    return lines[0]


def _with_auto_map(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig",
                          "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize("where", ["a", "b", "b-low-memory", "inspect"])
def test_auto_map_refused(dirs, tmp_path, capsys, where):
    evil = _with_auto_map(dirs["gpt2", "a"], tmp_path / "evil")
    marker = tmp_path / "ran"
    (evil / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    (evil / "configuration_evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    out = tmp_path / "out"
    other = str(dirs["gpt2", "b"])
    argv = {"a": ["merge", str(evil), other, "-o", str(out)],
            "b": ["merge", other, str(evil), "-o", str(out)],
            "b-low-memory": ["merge", other, str(evil), "-o", str(out), "--low-memory"],
            "inspect": ["inspect", str(evil)]}[where]
    assert main(argv) == 2
    line = _one_line_error(capsys)
    assert "auto_map" in line and "--trust-remote-code" in line and str(evil / "config.json") in line
    assert not out.exists() and not marker.exists()
    with pytest.raises(UntrustedCodeError, match="auto_map"):
        weightspace.merge_checkpoints(evil, other, out, progress=False)


def test_auto_map_allowed_reaches_transformers(dirs, tmp_path, capsys):
    """With --trust-remote-code our check passes; the code is not there (and nothing is downloaded),
    so transformers' own error comes back as one line with exit status 2."""
    evil = _with_auto_map(dirs["gpt2", "a"], tmp_path / "remote")
    out = tmp_path / "out"
    assert main(["merge", str(evil), str(dirs["gpt2", "b"]), "-o", str(out), "--trust-remote-code"]) == 2
    line = _one_line_error(capsys)
    assert "transformers cannot read this config" in line and "configuration_evil" in line
    assert not out.exists()


def test_missing_config_and_unknown_architecture(dirs, tmp_path, capsys):
    no_config = tmp_path / "no-config"
    no_config.mkdir()
    shutil.copyfile(dirs["gpt2", "a"] / "model.safetensors", no_config / "model.safetensors")
    out = tmp_path / "out"
    assert main(["merge", str(no_config), str(dirs["gpt2", "b"]), "-o", str(out)]) == 2
    line = _one_line_error(capsys)
    assert str(no_config / "config.json") in line and "missing" in line
    unknown = tmp_path / "unknown"
    shutil.copytree(dirs["gpt2", "a"], unknown)
    config = json.loads((unknown / "config.json").read_text())
    config["architectures"] = ["os.system"]
    (unknown / "config.json").write_text(json.dumps(config))
    for argv in (["merge", str(unknown), str(dirs["gpt2", "b"]), "-o", str(out)], ["inspect", str(unknown)]):
        assert main(argv) == 2
        line = _one_line_error(capsys)
        assert "'os.system'" in line and "not a model class of transformers" in line
    bad_json = tmp_path / "bad-json"
    shutil.copytree(dirs["gpt2", "a"], bad_json)
    (bad_json / "config.json").write_text("{not json")
    assert main(["inspect", str(bad_json)]) == 2
    assert str(bad_json / "config.json") in _one_line_error(capsys)
    assert not out.exists()


def test_bad_outputs(dirs, tmp_path, capsys):
    a, b = dirs["gpt2", "a"], dirs["gpt2", "b"]
    before = {p: p.stat().st_mtime_ns for p in a.iterdir()}
    assert main(["merge", str(a), str(b), "-o", str(a)]) == 2
    assert "refusing to write the output" in _one_line_error(capsys)
    assert main(["merge", str(a), str(b), "-o", str(tmp_path / "m.safetensors")]) == 2
    assert "give a directory path" in _one_line_error(capsys)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert main(["merge", str(a), str(b), "-o", str(busy)]) == 2
    assert "not a model directory" in _one_line_error(capsys)
    assert (busy / "notes.txt").read_text() == "mine"
    assert {p: p.stat().st_mtime_ns for p in a.iterdir()} == before
    parent = a.parent
    assert main(["merge", str(a), str(b), "-o", str(parent)]) == 2  # would swallow the inputs
    _one_line_error(capsys)


def test_different_architectures(dirs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["merge", str(dirs["llama", "a"]), str(dirs["gpt2", "b"]), "-o", str(out)]) == 2
    assert "different architectures" in _one_line_error(capsys)
    assert not out.exists()


def test_transformers_missing_message(dirs, tmp_path, monkeypatch, capsys):
    """Without transformers an HF directory gets the install hint, in one line."""
    import builtins
    import sys

    real_import = builtins.__import__

    def no_transformers(name, *args, **kwargs):
        if name == "transformers" or name.startswith("transformers."):
            raise ImportError("No module named 'transformers'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_transformers)
    monkeypatch.delitem(sys.modules, "transformers")
    assert main(["inspect", str(dirs["gpt2", "a"])]) == 2
    assert "pip install 'weightspace[hf]'" in _one_line_error(capsys)


def test_no_transformers_import_at_module_level():
    """transformers is optional: importing weightspace does not import it."""
    import subprocess
    import sys

    code = "import sys, weightspace, weightspace.hf, weightspace.cli; print('transformers' in sys.modules)"
    env = dict(os.environ, PYTHONPATH=str(Path(weightspace.__file__).resolve().parent.parent))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


def _digits_vit(path: Path, seed: int) -> Path:
    """A ViT classifier that takes the 8x8 digits (one channel, ten classes)."""
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                    intermediate_size=64, image_size=8, patch_size=4, num_channels=1,
                                    num_labels=10)
    torch.manual_seed(seed)
    transformers.ViTForImageClassification(config).save_pretrained(path)
    return path


def test_barrier_vision_model(tmp_path, capsys):
    """barrier on Hugging Face directories where the data fits: the endpoints are the models that
    from_pretrained loads (weights renamed by transformers 5 included)."""
    from weightspace.data import load_data

    a, b = _digits_vit(tmp_path / "a", 0), _digits_vit(tmp_path / "b", 1)
    res = weightspace.barrier_between(a, b, data="digits", align="weight", steps=3, progress=False)
    assert set(res) == {"naive", "weight matching"}
    for path, i in ((a, 0), (b, -1)):
        model = transformers.ViTForImageClassification.from_pretrained(path).eval()
        correct = total = 0
        losses = []
        with torch.no_grad():
            for x, y in load_data("digits", split="test", batch_size=256):
                logits = model(x).logits
                correct += int((logits.argmax(1) == y).sum())
                total += len(y)
                losses.append(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
        assert res["naive"].accuracies[i] == pytest.approx(correct / total)
        assert res["naive"].losses[i] == pytest.approx(float(sum(losses)) / total, rel=1e-5)
    assert main(["barrier", str(a), str(b), "--data", "digits", "--points", "3", "--quiet", "--device", "cpu"]) == 0
    assert "loss barrier" in capsys.readouterr().out


def test_text_model_on_image_data_refused(dirs, tmp_path, capsys):
    """A language model given images: one line naming the data and the model, exit 2, nothing written
    (language models run on next-token text: tests/weightspace/test_language_models.py)."""
    a, b = dirs["gpt2", "a"], dirs["gpt2", "b"]
    assert main(["barrier", str(a), str(b), "--data", "digits", "--points", "3", "--quiet"]) == 2
    assert "does not fit" in _one_line_error(capsys)
    out = tmp_path / "out"
    for extra in (["--method", "activation"], ["--method", "none", "--repair"]):
        assert main(["merge", str(a), str(b), "-o", str(out), "--data", "digits", *extra]) == 2
        err = _one_line_error(capsys)
        assert "data digits does not fit the model of" in err and str(a) in err
    assert not out.exists()


def test_tracer_gets_keyword_inputs(dirs, monkeypatch):
    """The pipeline hands the tracer a dict of keyword inputs; a tracer that rejects it costs a
    one-line warning and a structure without groups, not a crash."""
    import graphs

    seen = []
    real = graphs.trace

    def spy(module, example, **kwargs):
        seen.append(example)
        return real(module, example, **kwargs)

    monkeypatch.setattr(graphs, "trace", spy)
    lm = weightspace.load_model(dirs["llama", "a"])
    s = lm.structure()
    assert isinstance(seen[-1], dict) and set(seen[-1]) == {"input_ids", "attention_mask", "use_cache"}
    assert seen[-1]["input_ids"].shape == (2, 8) and int(seen[-1]["input_ids"].max()) < 128
    assert set(s.axes) == set(lm.state) and s.groups  # traced through torch.export

    def rejects_dicts(module, example, **kwargs):
        if isinstance(example, dict):
            raise TypeError("trace: example_input must be a tensor or a tuple")
        return real(module, example, **kwargs)

    monkeypatch.setattr(graphs, "trace", rejects_dicts)
    s = lm.structure()
    assert not s.groups and set(s.axes) == set(lm.state)
    assert "the tracer rejected" in s.unpermuted[0].reason and "input_ids" in s.unpermuted[0].reason


def test_low_memory_builds_on_meta(dirs):
    from weightspace.streaming import trace_without_weights

    structure, module, spec = trace_without_weights(path=str(dirs["gpt2", "a"]))
    assert isinstance(module, transformers.GPT2LMHeadModel)
    assert all(p.is_meta for p in module.parameters())
    assert "lm_head.weight" not in structure.axes and "transformer.wte.weight" in structure.axes
    assert json.loads(spec)["name"] == "GPT2LMHeadModel"


def test_trust_remote_code_api(dirs, tmp_path):
    evil = _with_auto_map(dirs["gpt2", "a"], tmp_path / "remote")
    out = tmp_path / "out"
    with pytest.raises(weightspace.CheckpointError, match="transformers cannot read this config"):
        weightspace.merge_checkpoints(evil, dirs["gpt2", "b"], out, trust_remote_code=True, progress=False)
    with pytest.raises(UntrustedCodeError):
        weightspace.load_model(evil)
    with weightspace.trusting_remote_code(), pytest.raises(weightspace.CheckpointError, match="configuration_evil"):
        weightspace.load_model(evil)
    assert not out.exists()


@pytest.mark.parametrize("low_memory", [False, True])
def test_failed_write_leaves_output_untouched(dirs, tmp_path, capsys, monkeypatch, low_memory):
    """A write that fails half way (here: copying the tokenizer files, as on a full disk) stops the
    merge with one line; an earlier output directory is left as it was, and no temporary stays."""
    import weightspace.hf

    def disk_full(source, dest):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(weightspace.hf, "_copy_side_files", disk_full)
    out = tmp_path / "merged"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "model.safetensors").write_bytes(b"earlier")
    argv = ["merge", str(dirs["gpt2", "a"]), str(dirs["gpt2", "b"]), "-o", str(out), "--method", "none", "--quiet"]
    assert main(argv + (["--low-memory"] if low_memory else [])) == 2
    line = _one_line_error(capsys)
    assert f"writing {out} failed, nothing was replaced" in line and "No space left" in line
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert (out / "model.safetensors").read_bytes() == b"earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


def _tiny_models():
    T = transformers
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=100,
                max_position_embeddings=16)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=16,
                  patch_size=8)
    return {
        "clip": lambda: T.CLIPModel(T.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)),
        "clip-vision": lambda: T.CLIPVisionModel(T.CLIPVisionConfig(**vision)),
        "t5": lambda: T.T5ForConditionalGeneration(T.T5Config(d_model=32, d_ff=64, num_layers=1, num_heads=4, d_kv=8,
                                                              vocab_size=100)),
        "bert": lambda: T.BertForMaskedLM(T.BertConfig(**dict(text, max_position_embeddings=64))),
    }


@pytest.mark.parametrize("name, keys", [("clip", {"pixel_values", "input_ids", "attention_mask"}),
                                        ("clip-vision", {"pixel_values"}),
                                        ("t5", {"input_ids", "attention_mask", "decoder_input_ids"}),
                                        ("bert", {"input_ids", "attention_mask"})])
def test_example_inputs_run(name, keys):
    from weightspace.hf import example_input

    model = _tiny_models()[name]().eval()
    x = example_input(model)
    assert set(x) - {"use_cache"} == keys
    with torch.no_grad():
        model(**x)


def test_merge_bert(tmp_path):
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        _tiny_models()["bert"]().save_pretrained(tmp_path / f"bert{seed}")
        paths.append(tmp_path / f"bert{seed}")
    out = tmp_path / "merged"
    assert main(["merge", str(paths[0]), str(paths[1]), "-o", str(out), "--method", "none", "--quiet",
                 "--device", "cpu"]) == 0
    expected = _expected(*paths)
    model = transformers.AutoModelForMaskedLM.from_pretrained(out)
    sd = model.state_dict()
    for k, v in expected.items():
        assert torch.equal(sd[k], v), k


def test_bench_trace_large_runs_on_a_small_shape(capsys):
    """bench/trace_large.py: a Llama built from its config alone traces on the meta device."""
    from repo_scripts import REPO, load_script

    bench = load_script(REPO / "bench" / "trace_large.py", "_bench_trace_large")
    assert bench.main(["--layers", "2", "--hidden", "32", "--intermediate", "64", "--heads", "4", "--kv-heads", "2",
                       "--vocab", "128"]) == 0
    row = [c.strip() for c in capsys.readouterr().out.splitlines()[-1].split("|")]
    groups, front, permuted = int(row[4]), row[5], row[6]
    assert front == "export" and permuted == "100%" and groups >= 7  # residual stream, and per layer heads and MLP
