"""``weightspace starlight`` and ``weightspace merge-many --method c2m3`` end to end, and bad input."""
from __future__ import annotations

import json

import pytest
import torch

import merging
import weightspace
from graphs import permute, random_permutation
from weightspace.api import INPUT_SHAPE_KEY, MODEL_KEY, PROVENANCE_KEY
from weightspace.cli import main
from weightspace.data import load_data
from weightspace.models import model_spec_to_json
from weightspace.starlight import EpochLoader, state_path_for
from weightspace.training import train_classifier

MLP = {"in_features": 64, "hidden": [16, 16], "out_features": 10}


def _meta():
    return {MODEL_KEY: model_spec_to_json("mlp", MLP), INPUT_SHAPE_KEY: "1,8,8"}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Three MLPs trained briefly on digits from different initialisations."""
    d = tmp_path_factory.mktemp("sources")
    paths = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = weightspace.get_model("mlp", **MLP)
        train_classifier(model, "digits", epochs=8, lr=0.1, seed=seed, progress=False)
        paths.append(weightspace.save(model.state_dict(), d / f"m{seed}.safetensors", metadata=_meta()))
    return paths


def _args(paths, out, *extra):
    return ["starlight", *map(str, paths), "--data", "digits", "-o", str(out), "--device", "cpu", *extra]


def test_starlight_writes_the_star_and_its_state(sources, tmp_path, capsys):
    out = tmp_path / "star.safetensors"
    assert main(_args(sources, out, "--epochs", "2")) == 0
    text = capsys.readouterr().out
    assert "Starlight: 2 epochs over 3 source models" in text and "test (397 examples): star loss" in text
    found = weightspace.load_checkpoint(out)
    star, info = found.state, found.info
    prov = json.loads(info.metadata[PROVENANCE_KEY])
    assert prov["method"] == "starlight" and prov["epochs"] == 2 and len(prov["inputs"]) == 3
    assert prov["t_dist"] == "uniform" and prov["realign"] is True
    assert info.metadata[MODEL_KEY] == _meta()[MODEL_KEY] and info.metadata[INPUT_SHAPE_KEY] == "1,8,8"
    state = torch.load(state_path_for(out), weights_only=True)
    assert state["epoch"] == 2 and state["format"] == merging.starlight.STATE_FORMAT
    assert all(torch.equal(state["star"][k], star[k]) for k in star)
    model = weightspace.load_model(out).module
    assert merging.evaluate(model, star, load_data("digits", split="test")).accuracy > 0.5


def test_json_and_options(sources, tmp_path, capsys):
    out = tmp_path / "s.safetensors"
    state = tmp_path / "elsewhere.pt"
    assert main(_args(sources, out, "--epochs", "1", "--json", "--t-dist", "beta:2,2", "--no-realign",
                      "--init", "mergemany", "--state", str(state), "--schedule", "constant")) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["epochs"] == 1 and r["state"] == str(state) and state.is_file()
    assert r["provenance"]["t_dist"] == "beta:2,2" and r["provenance"]["init"] == "mergemany"
    assert set(r["evaluation"]) == {"star", "sources_mean", "n"}


def test_resume_continues_to_the_uninterrupted_result(sources, tmp_path, capsys):
    full, part = tmp_path / "full.safetensors", tmp_path / "part.safetensors"
    common = ("--schedule", "constant", "--quiet")
    assert main(_args(sources, full, "--epochs", "3", *common)) == 0
    assert main(_args(sources, part, "--epochs", "1", *common)) == 0
    assert main(_args(sources, part, "--epochs", "3", "--resume", "--schedule", "constant")) == 0
    assert "resumed at epoch 1" in capsys.readouterr().out
    a, b = weightspace.load(full), weightspace.load(part)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_epoch_loader_order_depends_only_on_the_epoch():
    x, y = torch.arange(10.0)[:, None], torch.arange(10)
    a, b = EpochLoader(x, y, 4, seed=1), EpochLoader(x, y, 4, seed=1)
    first = [yb.tolist() for _, yb in a]
    a.set_epoch(1)
    second = [yb.tolist() for _, yb in a]
    b.set_epoch(1)
    assert [yb.tolist() for _, yb in b] == second != first
    assert len(a) == 3 and sorted(v for batch in second for v in batch) == list(range(10))


def test_bad_input_exits_2_and_writes_nothing(sources, tmp_path, capsys):
    out = tmp_path / "star.safetensors"
    cases = [
        (["starlight", str(sources[0]), "--data", "digits", "-o", str(out)], "at least two"),
        (_args(sources, tmp_path / "star.pt"), "must end in .safetensors"),
        (_args(sources, out, "--t-dist", "normal"), "t_dist"),
        (_args(sources, out, "--epochs", "0"), "epochs"),
        (_args(sources, out, "--lr", "-1"), "lr"),
        (_args(sources, out, "--init", "zero"), "init"),
        (_args(sources, out, "--schedule", "step"), "schedule"),
        (_args(sources, out, "--resume"), "no training state"),
        (_args(sources, sources[0]), "input"),
        (_args(sources, out, "--data", "nope"), "nope"),
        (_args(sources, out, "--state", str(tmp_path / "missing" / "s.pt")), "does not exist"),
        (_args(sources, out, "--batch-size", "0"), "batch_size"),
    ]
    for argv, msg in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, (argv, err)
    assert not out.exists() and not state_path_for(out).exists()
    # resuming with other settings
    ok = tmp_path / "ok.safetensors"
    assert main(_args(sources, ok, "--epochs", "1", "--quiet")) == 0
    assert main(_args(sources, ok, "--epochs", "1", "--lr", "0.2", "--resume")) == 2
    assert "lr was 0.05, now 0.2" in capsys.readouterr().err


def test_merge_many_c2m3_recovers_permuted_copies(tmp_path, capsys):
    torch.manual_seed(0)
    model = weightspace.get_model("mlp", **MLP)
    structure = weightspace.trace_model(model, input_shape="1,8,8")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    paths = [weightspace.save(state, tmp_path / "m0.safetensors", metadata=_meta())]
    for s in range(1, 4):
        paths.append(weightspace.save(permute(structure, state, random_permutation(structure, seed=s)),
                                      tmp_path / f"m{s}.safetensors", metadata=_meta()))
    out = tmp_path / "merged.safetensors"
    assert main(["merge-many", *map(str, paths), "-o", str(out), "--method", "c2m3", "--device", "cpu"]) == 0
    assert "C2M3" in capsys.readouterr().out
    found = weightspace.load_checkpoint(out)
    merged, info = found.state, found.info
    for k in state:
        torch.testing.assert_close(merged[k], state[k], rtol=0, atol=1e-6)
    assert json.loads(info.metadata[PROVENANCE_KEY])["method"] == "c2m3"
