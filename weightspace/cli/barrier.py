"""``weightspace barrier``: loss and accuracy along the linear path between two checkpoints."""
from __future__ import annotations

import argparse
import sys

from ._common import add_common_args, add_model_args, add_repair_args, add_solver_arg, print_json, repair_samples
from ._report import CORRECTIONS, barrier_table, endpoints_line, improvement_line

from weightspace.alignment import list_alignment_methods, method_label

NAME = "barrier"
HELP = "loss and accuracy along the straight line from A to B, naive and after aligning B"
DESCRIPTION = """Evaluate (1 - t) * A + t * B at --points points in [0, 1] and report the barrier.

  weightspace barrier a.safetensors b.safetensors --data digits
  weightspace barrier a.safetensors b.safetensors --data digits --method all --plot barrier.png
  weightspace barrier a.pt b.pt --model resnet20 --data mypkg.data:cifar10 --method weight --repair --json
  weightspace barrier lm-a/ lm-b/ --data python-stdlib --method activation     # language models: perplexity

Both barrier definitions in common use are printed, for loss and for accuracy:
  mean     max_t L(t) - (L(0) + L(1)) / 2                (Frankle et al.; Git Re-Basin)
  linear   max_t [L(t) - ((1 - t) L(0) + t L(1))]        (Entezari et al.)
Accuracy barriers are drops, in percentage points of accuracy.

With --method METHOD (""" + ", ".join(m for m in list_alignment_methods() if m != "none") + """) B is also aligned to A first and both
curves are shown, naive and aligned; --method all shows every method; --plot draws the
curves together with the table of barriers. The --split of --data
is evaluated (default test); alignment and --repair use its train split."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("a", metavar="A", help="checkpoint A (t = 0)")
    p.add_argument("b", metavar="B", help="checkpoint B (t = 1)")
    add_model_args(p)
    g = p.add_argument_group("barrier")
    g.add_argument("--data", metavar="D", default=None,
                   help="data to evaluate on (needed): digits, mnist-idx:DIR, python-stdlib, text:PATH (next-byte text for language models) or package.module:callable")
    g.add_argument("--split", default="test", metavar="{test,train,all}",
                   help="split of --data to evaluate (default: test)")
    choices = [m for m in list_alignment_methods() if m != "none"] + ["all", "none"]
    every = [m for m in list_alignment_methods() if method_label(m)]
    g.add_argument("--method", dest="align", default="none", metavar="{" + ",".join(choices) + "}",
                   help="also align B to A with this method and compare the curves; all: "
                        + ", ".join(every) + " matching in one table and one plot (default: none)")
    g.add_argument("--align", dest="align", help=argparse.SUPPRESS)  # the earlier spelling
    add_solver_arg(g)
    g.add_argument("--points", type=int, default=25, help="points on the path, endpoints included (default: 25)")
    add_repair_args(g, "fix activation statistics at interior points (REPAIR / BatchNorm reset)")
    g.add_argument("--plot", metavar="FILE.png", default=None, help="write loss and accuracy curves to this PNG")
    add_common_args(p)


def run(args: argparse.Namespace) -> int:
    from weightspace._dtypes import plan_dtypes
    from weightspace.checkpoint import open_checkpoint
    from weightspace.merge import barrier_between
    from weightspace.text import is_text_spec

    with open_checkpoint(args.a) as ca, open_checkpoint(args.b) as cb:  # headers only
        mixed = plan_dtypes([ca, cb], [args.a, args.b], "barrier", dtype_of=[ca.dtype, cb.dtype]).mixed
    if mixed is not None:
        print(f"weightspace barrier: note: inputs differ in dtype ({mixed[0]}): weights matched in "
              f"{str(mixed[1]).removeprefix('torch.')}, the path evaluated in the model's dtype", file=sys.stderr)
    results = barrier_between(
        args.a, args.b, model=args.model, model_kwargs=args.model_kwargs, input_shape=args.input_shape,
        data=args.data, align=args.align, steps=args.points, repair=args.repair, repair_samples=repair_samples(args), plot=args.plot,
        split=args.split, device=args.device, seed=args.seed, solver=args.solver,
        progress=not (args.quiet or args.json),
    )
    if args.json:
        print_json({"a": args.a, "b": args.b, "data": args.data, "split": args.split, "align": args.align,
                    "points": args.points, "repair": args.repair, "plot": args.plot,
                    "results": {k: v.to_dict() for k, v in results.items()}})
        return 0
    naive = results["naive"]
    text = is_text_spec(args.data)  # a language model: perplexities too
    print(f"{args.a} -> {args.b} on {args.data} ({args.split} split), {args.points} points"
          f"{CORRECTIONS[naive.correction]}")
    print(endpoints_line(naive, perplexity=text))
    print()
    print(barrier_table(results, perplexity=text))
    print()
    if len(results) > 1:  # the best aligned path, by loss barrier
        label, aligned = min(list(results.items())[1:], key=lambda kv: kv[1].loss_barrier)
        print(improvement_line(naive, aligned, label, perplexity=text))
    if args.plot:
        print(f"wrote {args.plot}")
    return 0
