"""zoo build's time estimate: one line on stderr after the first steps, none with --quiet."""
from __future__ import annotations

import re

from weightspace.cli import main
from weightspace.zoo._build import format_duration

# (the bar, without a terminal, writes carriage returns before it)
ESTIMATE = re.compile(r"zoo build cnn: about \d+(?:\.\d)? (?:s|min|h) for 4 models at this pace\n")


def test_zoo_build_prints_an_estimate_once_and_not_with_quiet(tmp_path, capsys):
    argv = ["zoo", "build", "cnn", "--data", "digits", "--n", "4", "--checkpoints", "0,1"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert len(ESTIMATE.findall(err)) == 1, err
    assert main([*argv, "--out", str(tmp_path / "b"), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "at this pace" not in err + out
    # resumed with nothing left to build: nothing to estimate
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert "at this pace" not in capsys.readouterr().err


def test_format_duration():
    assert [format_duration(s) for s in (0.2, 40, 90, 1500, 5400)] == ["1 s", "40 s", "2 min", "25 min", "1.5 h"]
