"""``weightspace starlight``: train a star model linearly connected to N checkpoints."""
from __future__ import annotations

import argparse
import json

from ._common import add_common_args, add_output_arg, add_model_args, add_solver_arg, report_result

from merging.starlight import SCHEDULES, STAR_INITS

NAME = "starlight"
HELP = "train a star model from N checkpoints (Starlight): low loss on the segment to each of them"
DESCRIPTION = """Train a star model: one network joined by low-loss straight lines to every source model
(Sonthalia et al., "Do Deep Neural Network Solutions Form a Star Domain?", arXiv 2403.07968).

  weightspace starlight m0.safetensors m1.safetensors m2.safetensors --data digits -o star.safetensors
  weightspace starlight models/*.safetensors --data mnist-idx:DIR -o star.safetensors --epochs 20 --lr 0.05
  weightspace starlight models/*.safetensors --data digits -o star.safetensors --resume   # continue a killed run

Each step draws a source n and t (--t-dist: uniform, beta:A,B or const:T), takes the loss of one
batch at (1 - t) * star + t * source_n and moves the star by that gradient, which carries the
factor (1 - t). Before every epoch the sources are re-aligned to the star by weight matching
(--no-realign: once, at the start). SGD with momentum, cosine learning-rate decay by default.

The training state (star, optimiser, epoch, permutations, random generators) is written
atomically after every epoch to --state (default: OUT with .starlight.pt); --resume continues
from it and gives the star an uninterrupted run would have. The star is .safetensors, written
atomically, with its model, input shape and a provenance record. With a test split (built-in
data), the star's test loss and accuracy are printed beside the sources' mean.

BatchNorm networks: interpolated networks train with the statistics of each batch, and the
star's running statistics are recomputed from the data after every epoch; evaluate points
between the star and a source with `weightspace barrier --repair` (BatchNorm statistics reset
at every point)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoints", nargs="+", metavar="CKPT", help="two or more source checkpoints of one architecture")
    add_output_arg(p, metavar="STAR", help="the star checkpoint to write (.safetensors)")
    p.add_argument("--data", required=True, metavar="D",
                   help="training data (train split): digits, mnist-idx:DIR or package.module:callable")
    add_model_args(p)
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=10, help="passes over the data (default: 10)")
    g.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (default: 0.05)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: 0.9)")
    g.add_argument("--batch-size", type=int, default=128, help="examples per step (default: 128)")
    g.add_argument("--schedule", default="cosine", metavar="{" + ",".join(SCHEDULES) + "}",
                   help="learning-rate schedule (default: cosine decay to zero)")
    g.add_argument("--t-dist", default="uniform", metavar="DIST",
                   help="how t is drawn: uniform, beta:A,B or const:T (default: uniform)")
    g.add_argument("--init", default="first", metavar="{" + ",".join(STAR_INITS) + "}",
                   help="the star's start: a copy of the first checkpoint, or the MergeMany merge (default: first)")
    g.add_argument("--no-realign", action="store_true",
                   help="align the sources to the star once, not before every epoch")
    add_solver_arg(g)
    g.add_argument("--resume", action="store_true", help="continue from the training state in --state")
    g.add_argument("--state", metavar="FILE", default=None,
                   help="the training-state file (default: STAR with .starlight.pt instead of .safetensors)")
    add_common_args(p)


def run(args: argparse.Namespace) -> int:
    from weightspace.starlight import starlight_checkpoints

    quiet = args.quiet or args.json
    r = starlight_checkpoints(
        args.checkpoints, args.output, data=args.data, model=args.model, model_kwargs=args.model_kwargs,
        input_shape=args.input_shape, epochs=args.epochs, lr=args.lr, momentum=args.momentum,
        batch_size=args.batch_size, schedule=args.schedule, t_dist=args.t_dist, realign=not args.no_realign,
        init=args.init, resume=args.resume, state=args.state, device=args.device, seed=args.seed,
        solver=args.solver, progress=not quiet,
    )
    if report_result(args, r):
        return 0
    n = len(r.provenance["inputs"])
    start = f", resumed at epoch {r.resumed_from}" if r.resumed_from else ""
    last = f", final training loss {r.history[-1]:.4f}" if r.history else ""
    print(f"Starlight: {r.epochs} epochs over {n} source models{start}{last}")
    if r.evaluation:
        e = r.evaluation
        print(f"test ({e['n']} examples): star loss {e['star']['loss']:.4f}, accuracy {100 * e['star']['accuracy']:.2f}%; "
              f"sources (mean) loss {e['sources_mean']['loss']:.4f}, accuracy {100 * e['sources_mean']['accuracy']:.2f}%")
    name = json.loads(r.model)["name"]
    print(f"wrote {r.path} (model {name}) and the training state {r.state_path} in {r.seconds:.2f} s")
    return 0
