"""``weightspace merge-many``: align N checkpoints to each other and write their average."""
from __future__ import annotations

import argparse
import json

from ._common import (add_common_args, add_dtype_arg, add_model_args, add_output_arg, add_solver_arg, copied_line,
                      report_result)

from merging.many_methods import MANY_MODEL_METHODS

NAME = "merge-many"
HELP = "align N checkpoints to each other (MergeMany) and write their average"
DESCRIPTION = """Merge N checkpoints of one architecture into one.

  weightspace merge-many a.safetensors b.safetensors c.safetensors -o merged.safetensors
  weightspace merge-many models/*.safetensors -o merged.safetensors --repair --data digits
  weightspace merge-many models/*.safetensors -o merged.safetensors --method c2m3  # cycle-consistent
  weightspace merge-many models/*.safetensors -o avg.safetensors --method average   # naive averaging

Methods:
""" + MANY_MODEL_METHODS.help(width=11) + """

--repair fixes the merged network's activation statistics from --data (REPAIR towards the
models' mean statistics, Jordan et al. arXiv 2211.08403; BatchNorm reset for BN networks).
The first checkpoint gives the basis of hidden units and the recorded model. The output is
.safetensors, written atomically, with a provenance record (SHA-256 of every input)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoints", nargs="+", metavar="CKPT", help="two or more checkpoints of one architecture")
    add_output_arg(p, metavar="OUT", help="the merged checkpoint to write (.safetensors)")
    add_model_args(p)
    g = p.add_argument_group("merge")
    g.add_argument("--method", default="mergemany", metavar=MANY_MODEL_METHODS.metavar(),
                   help="how to align the models (default: mergemany)")
    g.add_argument("--max-iter", type=int, default=100, metavar="N", help="MergeMany passes / C2M3 iterations at most (default: 100)")
    g.add_argument("--data", metavar="D", default=None,
                   help="data for --repair (train split): digits, mnist-idx:DIR or package.module:callable")
    g.add_argument("--repair", action="store_true", help="fix the merged network's activation statistics from --data")
    add_solver_arg(g)
    add_dtype_arg(g, "the first checkpoint")
    add_common_args(p)


def run(args: argparse.Namespace) -> int:
    from weightspace.merge_many import merge_many_checkpoints

    quiet = args.quiet or args.json
    r = merge_many_checkpoints(
        args.checkpoints, args.output, model=args.model, model_kwargs=args.model_kwargs,
        input_shape=args.input_shape, method=args.method, data=args.data, repair=args.repair,
        max_iter=args.max_iter, device=args.device, seed=args.seed, solver=args.solver, progress=not quiet,
        dtype=args.dtype,
    )
    if report_result(args, r):
        return 0
    if r.copied:
        print(copied_line(r.copied, "the first checkpoint"))
    if r.method == "average":
        print(f"no alignment (--method average): mean of {len(r.perms)} checkpoints")
    elif r.method == "c2m3":
        print(f"C2M3: {r.passes} Frank-Wolfe iterations over {len(r.perms)} models, {r.units_moved} hidden units "
              f"moved ({r.align_seconds:.2f} s)")
    else:
        print(f"MergeMany: {r.passes} passes over {len(r.perms)} models, {r.units_moved} hidden units moved "
              f"({r.align_seconds:.2f} s)")
    if r.repair != "none":
        print({"repair": "then REPAIR", "reset_bn": "then BatchNorm statistics reset"}[r.repair])
    name = json.loads(r.model)["name"]
    print(f"wrote {r.path} (model {name}) in {r.seconds:.2f} s")
    return 0
