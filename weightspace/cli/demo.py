"""``weightspace demo``: the embedded default job, no download needed."""
from __future__ import annotations

import argparse
import json

from ._common import add_common_args, add_output_arg, print_json
from ._report import barrier_table, endpoints_line, improvement_line

NAME = "demo"
HELP = "train two small MLPs on bundled data, merge them naively and with weight matching, compare"
DESCRIPTION = """The whole job in one command, in seconds on a CPU and with no download:

  1. train two MLPs (64-128-128-128-10) from different seeds on the 8x8 digits that
     ship with scikit-learn (1400 train / 397 test images);
  2. interpolate them naively, and after aligning B's hidden units to A's with weight
     matching (Git Re-Basin, arXiv 2209.04836);
  3. print the loss and accuracy barriers of both paths and the merged (t = 0.5) model;
  4. write both checkpoints, the weight-matched merge and barrier.png into -o DIR.

  weightspace demo
  weightspace demo -o /tmp/demo --width 256 --epochs 30 --seed 3
  weightspace demo --json --quiet

Then try the other commands on what it wrote:

  cd weightspace-demo
  weightspace inspect model_a.safetensors
  weightspace barrier model_a.safetensors model_b.safetensors --data digits --method activation
  weightspace merge model_a.safetensors model_b.safetensors -o my_merge.safetensors --method ste --data digits"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_output_arg(p, metavar="DIR", default="weightspace-demo",
                   help="directory to write into, created if missing (default: ./weightspace-demo)")
    p.add_argument("--epochs", type=int, default=20, help="training epochs of each model (default: 20)")
    p.add_argument("--width", type=int, default=128, help="width of the three hidden layers (default: 128)")
    p.add_argument("--points", type=int, default=25, help="points on the interpolation path (default: 25)")
    add_common_args(p)


def run(args: argparse.Namespace) -> int:
    from weightspace.demo import run_demo

    r = run_demo(args.output, epochs=args.epochs, width=args.width, seed=args.seed, steps=args.points,
                 device=args.device, progress=not (args.quiet or args.json))
    if args.json:
        print_json(r.to_dict())
        return 0
    hidden = "-".join(str(h) for h in json.loads(r.model)["kwargs"]["hidden"])
    print(f"weightspace demo: two MLPs 64-{hidden}-10 trained on digits for {args.epochs} epochs, "
          f"seeds {args.seed} and {args.seed + 1} ({r.train_seconds:.1f} s)")
    print("on the test split: " + endpoints_line(r.naive))
    print()
    print(barrier_table(r.barriers))
    print()
    print(improvement_line(r.naive, r.aligned, "weight matching"))
    print(f"wrote {r.checkpoints[0]}, {r.checkpoints[1]},")
    print(f"      {r.merged} (weight matching, alpha 0.5) and {r.plot}  [{r.seconds:.1f} s in all]")
    a, b = r.checkpoints
    print(f"next: weightspace barrier {a} {b} --data digits --method activation")
    return 0
