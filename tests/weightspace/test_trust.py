"""Files are data, never code: a hostile file runs nothing through any entry point.

Each hostile file names ``os:system`` with a command that would create a marker file; every
entry point that reads such a file must refuse it (exit status 2 from the CLI, a
``UntrustedCodeError`` from Python) and the marker must not exist afterwards. Code named in a
file runs only when the user names it again (``--model``) or passes ``--trust-model-code``.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import weightspace
from weightspace.api import MODEL_KEY
from weightspace.cli import main
from weightspace.trust import UntrustedCodeError, check_data_spec, check_model_name, trusting_model_code

MLP = {"in_features": 64, "hidden": [8], "out_features": 10}


def _hostile_spec(marker: Path) -> str:
    return json.dumps({"name": "os:system", "kwargs": {"command": f"touch {marker}"}})


def _mlp_file(path: Path, seed: int, spec: str | None = None) -> Path:
    torch.manual_seed(seed)
    model = weightspace.get_model("mlp", **MLP)
    meta = {MODEL_KEY: spec or json.dumps({"name": "mlp", "kwargs": MLP})}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=meta)
    return path


def _rewrite_metadata(path: Path, **changes: str) -> None:
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        state = {k: f.get_tensor(k) for k in f.keys()}
    meta.update(changes)
    save_file(state, str(path), metadata=meta)


@pytest.fixture
def files(tmp_path):
    marker = tmp_path / "PWNED"
    good = _mlp_file(tmp_path / "good.safetensors", 0)
    good_b = _mlp_file(tmp_path / "good_b.safetensors", 1)
    bad = _mlp_file(tmp_path / "bad.safetensors", 2, _hostile_spec(marker))
    return marker, good, good_b, bad


def _refused(capsys, rc: int, marker: Path) -> str:
    err = capsys.readouterr().err
    assert rc == 2, err
    assert not marker.exists(), "the file's code ran"
    assert "os:system" in err and "--trust-model-code" in err, err
    assert len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize("command", ["inspect", "merge", "merge-low-memory", "barrier-as-b", "merge-many",
                                     "starlight", "graph", "merge-b-only"])
def test_cli_refuses_code_named_in_a_checkpoint(files, tmp_path, capsys, command):
    marker, good, good_b, bad = files
    out = tmp_path / "out.safetensors"
    argv = {
        "inspect": ["inspect", str(bad)],
        "merge": ["merge", str(bad), str(good), "-o", str(out), "--device", "cpu"],
        "merge-low-memory": ["merge", str(bad), str(good), "-o", str(out), "--low-memory", "--device", "cpu"],
        "merge-b-only": ["merge", str(good), str(bad), "-o", str(out), "--device", "cpu"],
        "barrier-as-b": ["barrier", str(good), str(bad), "--data", "digits", "--points", "3", "--device", "cpu"],
        "merge-many": ["merge-many", str(bad), str(good), str(good_b), "-o", str(out), "--device", "cpu"],
        "starlight": ["starlight", str(bad), str(good), "-o", str(out), "--data", "digits", "--epochs", "1",
                      "--device", "cpu"],
        "graph": ["graph", str(bad), "-o", str(tmp_path / "g.pt")],
    }[command]
    _refused(capsys, main(argv), marker)
    assert not out.exists()


def test_load_model_refuses_and_trust_allows(files, tmp_path):
    marker, _, _, bad = files
    with pytest.raises(UntrustedCodeError, match="os:system"):
        weightspace.load_model(bad)
    assert not marker.exists()
    # trusted: the named callable is imported and called (and then fails: os.system is no model)
    with pytest.raises(ValueError, match="expected a torch.nn.Module"):
        weightspace.load_model(bad, trust_model_code=True)
    assert marker.exists()


def test_a_callable_named_again_by_the_user_runs(tmp_path, capsys):
    spec = json.dumps({"name": "nets:teacher_mlp", "kwargs": {}})
    torch.manual_seed(0)
    import nets

    path = tmp_path / "t.safetensors"
    save_file({k: v.contiguous() for k, v in nets.teacher_mlp().state_dict().items()}, str(path),
              metadata={MODEL_KEY: spec})
    with pytest.raises(UntrustedCodeError):
        weightspace.load_model(path)
    assert main(["inspect", str(path), "--input-shape", "16"]) == 2
    assert "nets:teacher_mlp" in capsys.readouterr().err
    # named again on the command line, or allowed: it runs
    assert main(["inspect", str(path), "--model", "nets:teacher_mlp", "--input-shape", "16"]) == 0
    assert main(["inspect", str(path), "--trust-model-code", "--input-shape", "16"]) == 0
    assert weightspace.load_model(path, "nets:teacher_mlp").module is not None
    with trusting_model_code():
        assert weightspace.load_model(path).module is not None


def test_api_entry_points_refuse(files, tmp_path):
    marker, good, good_b, bad = files
    out = tmp_path / "m.safetensors"
    with pytest.raises(UntrustedCodeError):
        weightspace.merge_checkpoints(good, bad, out, method="weight")
    with pytest.raises(UntrustedCodeError):
        weightspace.merge_checkpoints(bad, good, out, method="weight", low_memory=True)
    with pytest.raises(UntrustedCodeError):
        weightspace.barrier_between(good, bad, data="digits", steps=3)
    with pytest.raises(UntrustedCodeError):
        weightspace.merge_many_checkpoints([bad, good, good_b], out)
    assert not marker.exists() and not out.exists()


def test_recipe_naming_code_is_refused_before_loading(files, tmp_path, capsys):
    marker, good, good_b, _ = files
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"merge_method: linear\nmodels:\n  - model: {good}\n  - model: {good_b}\n"
                      f"align: true\nmodel: os:system\nmodel_kwargs: {{command: 'touch {marker}'}}\n")
    _refused(capsys, main(["merge", "--config", str(recipe), "-o", str(tmp_path / "o.safetensors")]), marker)
    with pytest.raises(UntrustedCodeError):
        weightspace.load_recipe(recipe)


def test_hypernetwork_file_naming_code_is_refused(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    hn = tmp_path / "h.safetensors"
    assert main(["hypernet", "train", "--model", "mlp", "--model-kwargs", '{"hidden": [8]}', "--data", "digits",
                 "--widths", "4:8", "--steps", "2", "--epochs", "1", "--hidden", "8", "--depth", "1",
                 "-o", str(hn), "--device", "cpu", "--quiet"]) == 0
    _rewrite_metadata(hn, **{MODEL_KEY: json.dumps({"name": "os:system",
                                                    "kwargs": {"command": f"touch {marker}", "hidden": [8]}})})
    _refused(capsys, main(["resample", str(hn), "--width", "6", "-o", str(tmp_path / "r.safetensors"),
                           "--device", "cpu"]), marker)


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    from weightspace.zoo import build_cnn_zoo

    root = tmp_path_factory.mktemp("zoo") / "cnn"
    build_cnn_zoo(root, "digits", n=4, checkpoints=(1,), progress=False,
                  recipe={"channels": [4, 4, 4], "train_eval_size": 32})
    return root


def test_zoo_card_naming_code_is_refused(tiny_zoo, tmp_path, capsys):
    import shutil

    from weightspace.zoo import ZooDataset

    marker = tmp_path / "PWNED"
    zoo = tmp_path / "zoo"
    shutil.copytree(tiny_zoo, zoo)
    card = json.loads((zoo / "zoo.json").read_text())
    card["model"] = {"name": "os:system", "kwargs": {"command": f"touch {marker}"}}
    (zoo / "zoo.json").write_text(json.dumps(card))
    _refused(capsys, main(["metanet", "train", str(zoo), "--arch", "mlp", "--epochs", "1",
                           "-o", str(tmp_path / "m.pt"), "--device", "cpu"]), marker)
    # the shards record the built-in family, so reading them runs nothing either way
    assert isinstance(ZooDataset(zoo, "all")[0][0], dict) and not marker.exists()


def test_zoo_shard_naming_code_is_refused(tiny_zoo, tmp_path):
    import shutil

    from weightspace.zoo import ZooDataset

    marker = tmp_path / "PWNED"
    zoo = tmp_path / "zoo"
    shutil.copytree(tiny_zoo, zoo)
    for shard in sorted((zoo / "models").glob("*.safetensors")):
        _rewrite_metadata(shard, **{MODEL_KEY: _hostile_spec(marker)})
    with pytest.raises(UntrustedCodeError, match="os:system"):
        ZooDataset(zoo, "all")[0]
    assert not marker.exists()


def test_checks_pass_data_and_refuse_code():
    check_model_name("mlp", source="f")
    check_model_name("no-such-family", source="f")  # unknown, but no code: fails later as unknown
    check_data_spec("digits", source="f")
    check_data_spec("mnist-idx:/some/dir", source="f")
    with pytest.raises(UntrustedCodeError, match="f names the model code 'pkg.mod:fn'"):
        check_model_name("pkg.mod:fn", source="f")
    with pytest.raises(UntrustedCodeError, match="--data pkg.mod:fn"):
        check_data_spec("pkg.mod:fn", source="f")
    check_model_name("pkg.mod:fn", source="f", trusted=True)
    with trusting_model_code():
        check_data_spec("pkg.mod:fn", source="f")
        with trusting_model_code(False):  # nesting never takes trust away
            check_model_name("pkg.mod:fn", source="f")
    with pytest.raises(UntrustedCodeError):
        check_model_name("pkg.mod:fn", source="f")
