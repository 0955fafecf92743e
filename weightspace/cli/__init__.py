"""The ``weightspace`` command: one thin subcommand per library verb."""
from __future__ import annotations

import argparse
import importlib
import sys

from ._common import check_required_output, run_command

__all__ = ["main", "build_parser"]

# subcommand modules, each with NAME, HELP, add_arguments(parser) and run(args), in --help order
_COMMANDS = ["demo", "inspect", "merge", "barrier", "merge_many", "starlight", "graph", "zoo", "metanet", "hypernet",
             "resample"]


def build_parser() -> argparse.ArgumentParser:
    from weightspace import __version__

    parser = argparse.ArgumentParser(
        prog="weightspace",
        description="Trained neural networks as data: trace their permutation symmetry, align and "
                    "merge checkpoints, learn on weights. Every command takes --help.",
        epilog="Exit status: 0 on success, 2 on bad input (the one-line message names the file and the problem).",
    )
    parser.add_argument("--version", action="version", version=f"weightspace {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        mod = importlib.import_module(f"{__name__}.{name}")
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in == ["--version"]:  # answered before the subcommands (and torch) are imported
        from weightspace import __version__

        print(f"weightspace {__version__}")
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    check_required_output(args)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    return run_command(args._run, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
