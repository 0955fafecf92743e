"""One spelling and one meaning per flag across every subcommand."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
import torch

from weightspace.cli import build_parser, main


def _subparsers(parser: argparse.ArgumentParser, prefix: str = ""):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                path = f"{prefix} {name}".strip()
                nested = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
                if nested:
                    yield from _subparsers(sub, path)
                else:
                    yield path, sub


COMMANDS = dict(_subparsers(build_parser()))


def _options(sub: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in sub._actions for s in a.option_strings}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_flags_have_one_spelling(command):
    opts = _options(COMMANDS[command])
    if "--output" in opts or "--out" in opts:  # what a command writes: -o/--output, --out still read
        assert opts["-o"] is opts["--output"]
        assert opts["--out"].dest == "output" and opts["--out"].help == argparse.SUPPRESS
    if "--quiet" in opts:
        assert opts["--quiet"].help.startswith("no progress bars and no summary of what was written")
    if "--steps" in opts:  # optimisation steps; points on a path are --points
        assert "points" not in opts["--steps"].help
    if "--points" in opts:
        assert "points on" in opts["--points"].help
    if command not in ("inspect", "zoo info"):
        assert "--threads" in opts, command


def test_trust_flag_on_every_command_that_reads_model_files():
    for command in ("inspect", "merge", "barrier", "merge-many", "starlight", "graph", "hypernet train", "resample",
                    "metanet train", "metanet eval"):
        assert "--trust-model-code" in _options(COMMANDS[command]), command


def test_threads_sets_torch_threads(tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit) as e:
            main(["merge", "a", "b", "-o", str(tmp_path / "m.safetensors"), "--threads", "0"])
        assert e.value.code == 2 and "--threads" in capsys.readouterr().err
        rc = main(["merge", str(tmp_path / "missing.safetensors"), str(tmp_path / "b.safetensors"),
                   "-o", str(tmp_path / "m.safetensors"), "--threads", "2"])
        assert rc == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_out_is_still_read_and_output_is_required(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["zoo", "build", "cnn", "--data", "digits", "--n", "2"])
    assert e.value.code == 2 and "-o/--output" in capsys.readouterr().err
    args = build_parser().parse_args(["zoo", "build", "cnn", "--out", "z", "--n", "2"])
    assert args.output == "z"


def test_errors_start_with_what_the_user_gave(tmp_path, capsys):
    bad = tmp_path / "trunc.safetensors"
    bad.write_bytes(b"\x08\x00\x00")
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("weightspace inspect: error: ") and "open_checkpoint" not in err and str(bad) in err


def test_a_model_that_cannot_be_imported_hints_at_pythonpath(capsys):
    assert main(["inspect", "--model", "no_such_user_module:make"]) == 2
    assert "PYTHONPATH" in capsys.readouterr().err


def test_version_does_not_import_torch():
    code = "import sys; from weightspace.cli import main; main(['--version']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["weightspace", "0.1.0", "False"]
