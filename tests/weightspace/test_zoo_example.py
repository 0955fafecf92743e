"""examples/build_a_zoo.py runs end to end on tiny settings, as a user would run it."""
from __future__ import annotations

from repo_scripts import REPO, load_script

EXAMPLE = REPO / "examples" / "build_a_zoo.py"


def _load():
    return load_script(EXAMPLE, "_example_build_a_zoo")


def test_build_a_zoo(tmp_path, capsys):
    argv = ["--out", str(tmp_path / "zoo"), "--n", "12", "--checkpoints", "0,1", "--models-per-shard", "6", "--quiet"]
    result = _load().main(argv)
    out = capsys.readouterr().out
    assert "test_acc at each model's last checkpoint (12 models)" in out
    assert result["build"].built == [0, 1] and (tmp_path / "zoo" / "zoo.json").is_file()
    assert result["n_train"] > 0 and result["n_held_out"] > 0 and 0 <= result["mae"] <= 1
    assert "mean absolute error" in out
    again = _load().main(argv)  # a finished zoo is read, not rebuilt
    assert again["build"].built == [] and again["build"].skipped == [0, 1]
