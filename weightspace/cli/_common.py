"""Flags shared by the subcommands, and the error-to-exit-status mapping."""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Any, Callable

import torch

EXIT_BAD_INPUT = 2


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      file: Any = None, line: str | None = None) -> None:
    """A fallback or notice is one line on stderr, not a source location and a code line."""
    text = " ".join(str(message).split())
    print(f"weightspace: warning: {text}", file=sys.stderr if file is None else file)


def add_model_args(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", required=required, metavar="M",
                   help="architecture: a built-in family (see `weightspace inspect --list-models`) or "
                        "package.module:callable returning an nn.Module; default: the one recorded in the checkpoint")
    g.add_argument("--model-kwargs", metavar="JSON", default=None,
                   help='keyword arguments for the family, e.g. \'{"hidden": [512, 512]}\'')
    g.add_argument("--input-shape", metavar="S", default=None,
                   help="shape of one example without the batch axis (784 or 3,32,32) when the model does not declare one")
    add_trust_arg(g)
    add_remote_code_arg(g)


def add_remote_code_arg(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow a Hugging Face directory whose config.json has auto_map to load its model code "
                        "(transformers' trust_remote_code); without it such a directory is refused (exit 2) and "
                        "models come only from transformers' own classes")


def add_trust_arg(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--trust-model-code", action="store_true",
                   help="allow a package.module:callable named inside an input file (checkpoint metadata, zoo "
                        "card, recipe, hypernetwork) to be imported and called; without it only built-in "
                        "families run, and a file that names code is refused (exit 2)")


def add_common_args(p: argparse.ArgumentParser, *, json_flag: bool = True, device: bool = True,
                    seed: bool = True) -> None:
    if json_flag:
        p.add_argument("--json", action="store_true", help="print a machine-readable JSON result on stdout")
    if device:
        p.add_argument("--device", default="auto", metavar="{cpu,cuda,auto}",
                       help="where to compute (default: auto = cuda if available)")
    if seed:
        p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device: unknown device {name!r}; use cpu, cuda or auto") from None


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def run_command(fn: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run a subcommand; bad input becomes one line on stderr and exit status 2."""
    from weightspace.trust import trusting_model_code, trusting_remote_code

    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            with trusting_model_code(getattr(args, "trust_model_code", False)), \
                    trusting_remote_code(getattr(args, "trust_remote_code", False)):
                return int(fn(args) or 0)
    except KeyboardInterrupt:
        print("weightspace: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, KeyError, OSError) as e:
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        msg = " ".join(msg.split()) or type(e).__name__
        print(f"weightspace {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_BAD_INPUT
