"""Every script in examples/ runs end to end on tiny settings, as a user would run it."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from repo_scripts import REPO, load_script

EXAMPLES = REPO / "examples"


def _load(name: str):
    return load_script(EXAMPLES / f"{name}.py", f"_example_{name}")


def test_every_example_is_tested():
    assert {p.stem for p in EXAMPLES.glob("*.py")} == {"merge_two_checkpoints", "align_and_permute",
                                                     "parameter_graphs", "merge_many_models",
                                                     "build_a_zoo", "train_a_metanetwork",
                                                     "merge_sharded_checkpoints", "star_model",
                                                     "resample_widths", "merge_hf_models", "merge_with_a_recipe",
                                                     "merge_language_models"}


def test_merge_two_checkpoints(tmp_path, capsys):
    result = _load("merge_two_checkpoints").main(
        ["--out", str(tmp_path), "--width", "32", "--epochs", "6", "--steps", "5", "--quiet"])
    out = capsys.readouterr().out
    assert "weight matching" in out and (tmp_path / "merged.safetensors").is_file()
    assert (tmp_path / "barrier.png").is_file()
    naive, aligned = result["barriers"]["naive"], result["barriers"]["weight matching"]
    assert aligned.loss_barrier < naive.loss_barrier


def test_merge_two_checkpoints_given_files(tmp_path, capsys):
    mod = _load("merge_two_checkpoints")
    a = mod.train_checkpoint(tmp_path / "x.safetensors", seed=3, width=16, epochs=1, quiet=True)
    b = mod.train_checkpoint(tmp_path / "y.safetensors", seed=4, width=16, epochs=1, quiet=True)
    result = mod.main(["--a", str(a), "--b", str(b), "--out", str(tmp_path / "o"), "--method", "none",
                       "--steps", "3", "--quiet"])
    assert result["merged"].method == "none"
    assert "loads as MLP" in capsys.readouterr().out


def test_align_and_permute(capsys):
    result = _load("align_and_permute").main(["--width", "8", "--seed", "1"])
    assert result["output_diff"] < 1e-5
    assert result["recovered"] and result["weight_diff"] == 0.0
    assert "recovered the inverse permutation: True" in capsys.readouterr().out


def test_parameter_graphs(tmp_path, capsys):
    result = _load("parameter_graphs").main(["--width", "8", "--out", str(tmp_path / "edited.safetensors")])
    out = capsys.readouterr().out
    assert "GNN embeddings of the batch: (2, 8)" in out
    assert result["changed_rows"] == [3] and result["same_elsewhere"]
    assert result["output_change"] > 0 and (tmp_path / "edited.safetensors").is_file()


def test_merge_many_models(tmp_path, capsys):
    result = _load("merge_many_models").main(["--out", str(tmp_path), "--models", "3", "--width", "16",
                                              "--epochs", "4", "--quiet"])
    out = capsys.readouterr().out
    assert "MergeMany" in out and (tmp_path / "mergemany.safetensors").is_file()
    assert result["mergemany"]["loss"] < result["average"]["loss"]


def test_merge_sharded_checkpoints(tmp_path, capsys):
    result = _load("merge_sharded_checkpoints").main(["--out", str(tmp_path), "--width", "16", "--epochs", "2",
                                                      "--shard-size", "2kB", "--quiet"])
    out = capsys.readouterr().out
    assert result["identical"] and "identical to the in-memory merge: True" in out
    assert len(result["shards"]) > 2 and result["merged"].provenance["streaming"]
    assert (tmp_path / "merged" / "model.safetensors.index.json").is_file()
    assert set(result["accuracy"]) == {"A", "B", "merged"}


@pytest.mark.parametrize("arch, low_memory", [("llama", False), ("gpt2", True)])
def test_merge_hf_models(tmp_path, capsys, monkeypatch, arch, low_memory):
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = ["--out", str(tmp_path), "--arch", arch, "--size", "16", "--quiet"] + (["--low-memory"] if low_memory else [])
    result = _load("merge_hf_models").main(argv)
    out = capsys.readouterr().out
    assert "loaded by from_pretrained" in out and result["max_diff"] < 1e-6
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= set(result["files"])


@pytest.mark.slow
def test_merge_language_models(tmp_path, capsys, monkeypatch):
    """Two byte-level GPT-2s trained briefly on a small corpus: alignment lowers the midpoint
    perplexity below naive averaging's, and the merged directory loads and generates."""
    import argparse as corpus_source

    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    corpus = tmp_path / "corpus.py"
    corpus.write_bytes(Path(corpus_source.__file__).read_bytes())
    result = _load("merge_language_models").main(
        ["--out", str(tmp_path), "--width", "16", "--epochs", "1", "--warmup", "0", "--data", f"text:{corpus}",
         "--points", "3", "--quiet"])
    out = capsys.readouterr().out
    assert "loaded by from_pretrained completes" in out and result["completion"].startswith("def main(")
    curves = result["curves"]
    naive = curves["naive"].midpoint_perplexity
    assert curves["weight matching"].midpoint_perplexity < naive
    assert curves["activation matching"].midpoint_perplexity < naive
    assert result["merged"].method == "activation" and (tmp_path / "barrier.png").is_file()


def test_star_model(tmp_path, capsys):
    result = _load("star_model").main(["--out", str(tmp_path), "--sources", "3", "--held-out", "1", "--width", "8",
                                       "--epochs", "3", "--star-epochs", "2", "--steps", "3", "--quiet"])
    out = capsys.readouterr().out
    assert "star <-> held-out models" in out and (tmp_path / "star.safetensors").is_file()
    assert (tmp_path / "star.starlight.pt").is_file() and result["star"].epochs == 2
    # the star sits on low-loss lines to its sources: lower than unaligned pairs of models
    assert result["star_sources"] < result["pairs_naive"]
    assert 0.0 <= result["star_domain"].ece <= 1.0 and 0.0 <= result["ensemble"].ece <= 1.0


def test_resample_widths(tmp_path, capsys):
    result = _load("resample_widths").main(["--width", "16", "--epochs", "3", "--steps", "40", "--out", str(tmp_path),
                                            "--quiet"])
    out = capsys.readouterr().out
    assert set(result["accuracies"]) == {4, 8, 16} and "sampled at width" in out
    assert all(0.0 <= a <= 1.0 for a in result["accuracies"].values())
    assert (tmp_path / "mlp_w8.safetensors").is_file()


def test_merge_with_a_recipe(tmp_path, capsys):
    with pytest.warns(UserWarning, match="out_dtype: writing bfloat16"):
        result = _load("merge_with_a_recipe").main(["--out", str(tmp_path), "--hidden", "16", "--layers", "2",
                                                    "--quiet"])
    out = capsys.readouterr().out
    assert "merged ties" in out and (tmp_path / "merged" / "config.json").is_file()
    assert result["dtype"] == torch.bfloat16
    assert all(0 < d < 1 for d in result["distance"].values())
