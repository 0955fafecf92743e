"""Flags shared by the subcommands, and the error-to-exit-status mapping."""
from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from typing import Any, Callable

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


#: torch threads unless --threads says otherwise: one. Our workloads are many small operations
#: and a C solver; on a 2-core machine one thread ran the demo as fast as two (4.4 / 4.3 s) and
#: a weight-matching merge of two 784-2048x3 MLPs faster (8.6 / 16.0 s: torch's idle threads
#: spin beside the solver), and under load torch's default of one thread per core was 5-8x slower.
DEFAULT_THREADS = 1


def add_common_args(p: argparse.ArgumentParser, *, json_flag: bool = True, device: bool = True,
                    seed: bool = True, quiet: bool = True, threads: bool = True) -> None:
    """The flags every command shares, with one meaning each."""
    if json_flag:
        p.add_argument("--json", action="store_true", help="print a machine-readable JSON result on stdout")
    if device:
        p.add_argument("--device", default="auto", metavar="{cpu,cuda,auto}",
                       help="where to compute (default: auto = cuda if available)")
    if seed:
        p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    if quiet:
        p.add_argument("--quiet", action="store_true",
                       help="no progress bars and no summary of what was written; a report, errors and "
                            "warnings still print")
    if threads:
        p.add_argument("--threads", type=_positive_int, default=DEFAULT_THREADS, metavar="N",
                       help=f"CPU threads for torch (default: {DEFAULT_THREADS}; more helps only large matrix work "
                            "on a quiet machine with many cores)")


def add_solver_arg(g: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--solver``: the assignment solver of every alignment, its choices and help from the registry."""
    from merging.matching import ASSIGNMENT_SOLVERS

    g.add_argument("--solver", default="auto", choices=ASSIGNMENT_SOLVERS.names(),
                   help="assignment solver of the alignment: "
                        + "; ".join(f"{e.name}: {e.description}" for e in ASSIGNMENT_SOLVERS.entries()))


def add_dtype_arg(g: argparse.ArgumentParser | argparse._ArgumentGroup, first: str) -> None:
    """``--dtype``: the dtype of the merged float tensors."""
    from weightspace._dtypes import OUTPUT_DTYPES

    g.add_argument("--dtype", default=None, choices=list(OUTPUT_DTYPES),
                   help=f"dtype of the merged float tensors (default: {first}'s). Inputs of "
                        "different dtypes are aligned and merged in their promoted dtype (at least float32), "
                        "and a note on stderr says so; non-float tensors (counters, index buffers) are copied "
                        f"from {first}")


def add_require_aligned_arg(g: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    g.add_argument("--require-aligned", nargs="?", type=float, const=0.5, default=None, metavar="FRACTION",
                   help="exit with status 2 instead of merging when alignment can permute less than FRACTION of "
                        "the parameters (default FRACTION: 0.5; without the flag a warning says so)")


def add_repair_args(g: argparse.ArgumentParser | argparse._ArgumentGroup, help: str) -> None:
    g.add_argument("--repair", action="store_true", help=help)
    g.add_argument("--repair-samples", type=int, default=4096, metavar="N",
                   help="training examples REPAIR / the BatchNorm reset measures (whole batches; 0 = all of "
                        "--data; default: 4096, as in the REPAIR paper)")


def repair_samples(args: argparse.Namespace) -> int | None:
    n = args.repair_samples
    if n < 0:
        raise ValueError(f"--repair-samples must be 0 (all) or a positive count, got {n}")
    return None if n == 0 else n


def add_output_arg(p: argparse.ArgumentParser, *, metavar: str, help: str, required: bool = True,
                   default: str | None = None) -> None:
    """``-o/--output``, the one spelling of what a command writes (``--out`` is still read)."""
    p.add_argument("-o", "--output", default=default, metavar=metavar, help=help)
    p.add_argument("--out", dest="output", help=argparse.SUPPRESS)
    if required and default is None:  # checked after parsing, so that --out counts too
        p.set_defaults(_needs_output=p)


def check_required_output(args: argparse.Namespace) -> None:
    """``-o/--output`` is required where :func:`add_output_arg` said so (argparse's own check
    would not count the ``--out`` spelling)."""
    parser = getattr(args, "_needs_output", None)
    if parser is not None and getattr(args, "output", None) is None:
        parser.error("the following arguments are required: -o/--output")


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def resolve_device(name: str) -> Any:
    import torch

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


def report_result(args: argparse.Namespace, result: Any) -> bool:
    """Print a merge result's notes on stderr, and the result as JSON with ``--json``; return
    whether the command is done (``--json`` or ``--quiet``) or should go on to print its summary."""
    for note in result.notes:
        print(f"weightspace {args.command}: note: {note}", file=sys.stderr)
    if args.json:
        print_json(result.to_dict())
        return True
    return bool(args.quiet)


_PREFIX = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*): ")
_OUR_PACKAGES = ("weightspace", "merging", "graphs")


def _is_our_function(name: str) -> bool:
    """Whether ``name`` is a function or class of one of our loaded modules (``open_checkpoint``)."""
    for mod_name, mod in list(sys.modules.items()):
        if mod is not None and mod_name.split(".")[0] in _OUR_PACKAGES and callable(getattr(mod, name, None)):
            return True
    return False


def _user_facing(msg: str) -> str:
    """The message without the library's function-name prefixes (``open_checkpoint: ``): a
    command's error starts with what the user gave, not with our internals. Prefixes that are
    not our functions (a parameter such as ``t_dist``) stay."""
    while True:
        m = _PREFIX.match(msg)
        if not m or len(msg) == m.end() or not _is_our_function(m.group(1)):
            return msg
        msg = msg[m.end():]


def copied_line(copied, source: str = "A") -> str:
    """The summary line on non-float tensors a merge copied from the first checkpoint."""
    names = ", ".join(copied[:5]) + (f" (+{len(copied) - 5} more)" if len(copied) > 5 else "")
    return (f"{len(copied)} non-float tensor{'s' if len(copied) > 1 else ''} (counters, index buffers) copied "
            f"from {source}, not matched or averaged: {names}")


def run_command(fn: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run a subcommand; bad input becomes one line on stderr and exit status 2."""
    from weightspace.trust import trusting_model_code, trusting_remote_code

    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
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
        msg = _user_facing(" ".join(msg.split())) or type(e).__name__
        print(f"weightspace {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_BAD_INPUT
