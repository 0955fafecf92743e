"""`weightspace hypernet train` and `weightspace resample` end to end, and their bad-input exits."""
from __future__ import annotations

import pytest
import torch

from weightspace.api import load_model
from weightspace.cli import main


@pytest.fixture(scope="module")
def hypernet_file(tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("hn") / "h.safetensors"
    rc = main(["hypernet", "train", "--model", "mlp", "--model-kwargs", '{"hidden": [16, 16]}', "--data", "digits",
               "--widths", "4:16", "--steps", "30", "--epochs", "2", "--hidden", "16", "--depth", "1",
               "-o", str(path), "--device", "cpu", "--quiet"])
    torch.set_num_threads(n)
    assert rc == 0
    return path


def test_resample_writes_a_loadable_checkpoint(hypernet_file, tmp_path, capsys):
    out = tmp_path / "w8.safetensors"
    assert main(["resample", str(hypernet_file), "--width", "8", "-o", str(out), "--device", "cpu"]) == 0
    loaded = load_model(out)  # no --model: the spec at the new width is recorded
    assert loaded.module.hidden == (8, 8)
    assert loaded.state["layers.0.weight"].shape == (8, 64)
    assert main(["inspect", str(out)]) == 0
    assert "layers.0" in capsys.readouterr().out
    out2 = tmp_path / "r.safetensors"
    assert main(["resample", str(hypernet_file), "--ratio", "0.5,1.0", "-o", str(out2), "--samples", "2",
                 "--device", "cpu", "--quiet"]) == 0
    assert load_model(out2).module.hidden == (8, 16)


def test_train_from_a_checkpoint(hypernet_file, tmp_path):
    src = tmp_path / "src.safetensors"
    assert main(["resample", str(hypernet_file), "--width", "16", "-o", str(src), "--device", "cpu", "--quiet"]) == 0
    out = tmp_path / "h2.safetensors"
    assert main(["hypernet", "train", "--from", str(src), "--data", "digits", "--widths", "8,16", "--steps", "5",
                 "--hidden", "8", "--depth", "1", "-o", str(out), "--device", "cpu", "--quiet"]) == 0
    assert main(["resample", str(out), "--width", "12", "-o", str(tmp_path / "w12.safetensors"),
                 "--device", "cpu", "--quiet"]) == 0


def test_default_hypernetwork_is_residual_and_exact_at_full_width(hypernet_file, tmp_path):
    from weightspace.hypernet import load_hypernet

    hf = load_hypernet(hypernet_file)
    assert hf.hypernet.residual and hf.hypernet.config["base"] == "cluster"
    out = tmp_path / "w16.safetensors"
    assert main(["resample", str(hypernet_file), "--width", "16", "-o", str(out), "--device", "cpu", "--quiet"]) == 0
    source = hf.hypernet.source_state()
    assert all(torch.equal(v, source[k]) for k, v in load_model(out).state.items())
    # --base none: the plain implicit function, trained with reconstruction
    plain = tmp_path / "plain.safetensors"
    assert main(["hypernet", "train", "--from", str(out), "--data", "digits", "--widths", "8,16", "--steps", "3",
                 "--hidden", "8", "--depth", "1", "--base", "none", "-o", str(plain), "--device", "cpu",
                 "--quiet"]) == 0
    assert not load_hypernet(plain).hypernet.residual


@pytest.mark.parametrize("argv,needle", [
    (["resample", "{h}", "--width", "40", "-o", "{t}/x.safetensors"], "outside the trained range"),
    (["resample", "{h}", "--width", "0", "-o", "{t}/x.safetensors"], "positive"),
    (["resample", "{h}", "-o", "{t}/x.safetensors"], "exactly one"),
    (["resample", "{t}/w.safetensors", "--width", "8", "-o", "{t}/x.safetensors"], "not a hypernetwork"),
    (["resample", "{t}/missing.safetensors", "--width", "8", "-o", "{t}/x.safetensors"], "missing"),
    (["hypernet", "train", "--model", "nosuchmodel", "-o", "{t}/y.safetensors"], "unknown model"),
    (["hypernet", "train", "--model", "mlp", "--widths", "0:9", "--steps", "1", "--epochs", "1",
      "-o", "{t}/y.safetensors"], "--widths"),
    (["hypernet", "train", "--model", "mlp", "--width-kwarg", "nope", "--steps", "1", "--epochs", "1",
      "-o", "{t}/y.safetensors"], "nope"),
    (["hypernet", "train", "--model", "mlp", "--distill", "-1", "--steps", "1", "--epochs", "1",
      "-o", "{t}/y.safetensors"], "--distill"),
    (["hypernet", "train", "--model", "mlp", "--low-bias", "0", "--steps", "1", "--epochs", "1",
      "-o", "{t}/y.safetensors"], "--low-bias"),
])
def test_bad_input_exits_2(hypernet_file, tmp_path, capsys, argv, needle):
    main(["resample", str(hypernet_file), "--width", "8", "-o", str(tmp_path / "w.safetensors"), "--device", "cpu",
          "--quiet"])
    capsys.readouterr()
    argv = [a.format(h=hypernet_file, t=tmp_path) for a in argv] + ["--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err
