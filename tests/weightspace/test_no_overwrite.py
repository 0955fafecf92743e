"""No command writes over a file it reads: each refuses with exit status 2 and one line naming
the file, and leaves every input byte for byte as it was."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

import weightspace
from weightspace.api import MODEL_KEY
from weightspace.cli import main
from weightspace.models import model_spec_to_json
from weightspace.zoo import build_cnn_zoo

MLP = {"in_features": 64, "hidden": [8, 8], "out_features": 10}


def _digest(root: Path) -> dict[str, str]:
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and p.name != ".lock")
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo") / "cnn"
    build_cnn_zoo(root, "digits", n=4, models_per_shard=2, checkpoints=(0, 1), progress=False,
                  recipe={"channels": [4, 4, 4], "train_eval_size": 64})
    return root


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        out.append(weightspace.save(weightspace.get_model("mlp", **MLP).state_dict(), d / f"m{seed}.safetensors",
                                    metadata={MODEL_KEY: model_spec_to_json("mlp", MLP)}))
    return out


def _refused(argv, capsys, *watched: Path, name: str | None = None) -> str:
    before = {w: _digest(w) for w in watched}
    assert main(argv) == 2, argv
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert name is None or name in err, err
    assert all(_digest(w) == d for w, d in before.items()), argv
    return err


@pytest.mark.parametrize("target", ["zoo.json", "metrics.csv", "models/shard-00000.safetensors"])
def test_metanet_train_refuses_to_write_over_the_zoo(zoo, capsys, target):
    err = _refused(["metanet", "train", str(zoo), "-o", str(zoo / target), "--arch", "np", "--epochs", "1",
                    "--quiet"], capsys, zoo, name=target.split("/")[-1])
    assert "refusing to overwrite" in err


def test_metanet_train_may_write_a_new_file_into_the_zoo_directory(zoo, capsys):
    out = zoo.parent / "np.pt"
    assert main(["metanet", "train", str(zoo), "-o", str(out), "--arch", "np", "--epochs", "1", "--hidden", "4",
                 "--quiet"]) == 0
    assert out.is_file()


def test_zoo_build_refuses_a_foreign_non_empty_directory(tmp_path, capsys):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"\xff\xd8 not a zoo")
    err = _refused(["zoo", "build", "cnn", "--data", "digits", "--out", str(foreign), "--n", "2", "--quiet"],
                   capsys, foreign, name="holiday.jpg")
    assert "not a zoo" in err and sorted(p.name for p in foreign.iterdir()) == ["holiday.jpg"]  # nothing added


def test_zoo_build_resumes_its_own_zoo_and_fills_an_empty_directory(zoo, tmp_path, capsys):
    before = _digest(zoo)
    args = ["--data", "digits", "--n", "4", "--models-per-shard", "2", "--checkpoints", "0,1",
            "--recipe", '{"channels": [4, 4, 4], "train_eval_size": 64}', "--quiet"]
    assert main(["zoo", "build", "cnn", "--out", str(zoo), *args]) == 0  # its own zoo: complete, kept
    assert _digest(zoo) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["zoo", "build", "cnn", "--out", str(empty), "--n", "1", "--data", "digits", "--checkpoints", "0,1",
                 "--recipe", '{"channels": [2, 2, 2], "train_eval_size": 16}', "--quiet"]) == 0
    assert (empty / "zoo.json").is_file()


def test_zoo_import_refuses_its_source(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "weights.npy").write_bytes(b"x")
    _refused(["zoo", "import", "smallcnnzoo", str(src), "--out", str(src), "--quiet"], capsys, src, name=str(src))
    _refused(["zoo", "import", "smallcnnzoo", str(src / "weights.npy"), "--out", str(src), "--quiet"], capsys,
             src, name=str(src))


def test_zoo_info_hist_refuses_the_zoo_files(zoo, capsys):
    _refused(["zoo", "info", str(zoo), "--hist", str(zoo / "metrics.csv")], capsys, zoo, name="metrics.csv")


def test_other_writers_refuse_their_inputs(ckpts, tmp_path, capsys):
    a, b = (str(p) for p in ckpts)
    _refused(["merge", a, b, "-o", b, "--quiet"], capsys, ckpts[1], name="m1.safetensors")
    _refused(["merge-many", a, b, "-o", a, "--quiet"], capsys, ckpts[0], name="m0.safetensors")
    pt = tmp_path / "m.pt"
    weightspace.save(weightspace.load(a), pt, metadata={MODEL_KEY: model_spec_to_json("mlp", MLP)})
    _refused(["graph", str(pt), "-o", str(pt)], capsys, pt, name="m.pt")
    # a shard of a sharded input counts as the input (the check every writer runs)
    from weightspace.checkpoint import check_output

    shard_dir = tmp_path / "sharded"
    weightspace.save(weightspace.load(a), shard_dir, max_shard_size="1KB")
    shard = next(shard_dir.glob("model-00001-of-*.safetensors"))
    with pytest.raises(weightspace.CheckpointError, match="refusing to overwrite .*model-00001"):
        check_output(shard, [shard_dir])
    check_output(tmp_path / "new.png", [shard_dir, a])


def test_resample_and_hypernet_refuse_their_inputs(ckpts, tmp_path, capsys):
    a = str(ckpts[0])
    _refused(["hypernet", "train", "--model", "mlp", "--model-kwargs", '{"in_features": 64, "hidden": [8, 8]}',
              "--from", a, "-o", a, "--quiet"], capsys, ckpts[0], name="m0.safetensors")
    fake = tmp_path / "h.safetensors"
    fake.write_bytes(b"not a hypernet")
    _refused(["resample", str(fake), "-o", str(fake), "--ratio", "0.5", "--quiet"], capsys, fake,
             name="h.safetensors")
