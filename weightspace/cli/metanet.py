"""``weightspace metanet train|eval``: train a metanetwork on a zoo, or evaluate one."""
from __future__ import annotations

import argparse
import os

from ._common import add_common_args, add_output_arg, add_trust_arg, print_json, resolve_device

NAME = "metanet"
HELP = "train a metanetwork on a model zoo (predict accuracy or class from weights), or evaluate one"
DESCRIPTION = """Metanetworks: networks that read other networks' weights.

  weightspace metanet train zoo-cnn --task accuracy --arch gnn -o gnn.pt
  weightspace metanet train zoo-inr --task class --arch np -o np.pt --epochs 100
  weightspace metanet eval gnn.pt zoo-cnn --split test --json
  torchrun --nproc_per_node 4 -m weightspace.cli metanet train zoo-inr --task class -o gnn.pt

Archs: gnn, transformer (parameter graphs, any architecture; by default (--probes auto) each
network's activations on 32 fixed probe inputs are added as node features whenever the zoo's
networks can be run: images of the zoo's own training data when it loads (CNN zoos), else
uniform noise (INRs); on INRs fitted from independent initialisations they make the
difference: 12% -> 71% on MNIST SIRENs; --probes 0 switches them off; for --task accuracy
their readout also gets per-tensor weight statistics, --stats off switches them off), np,
hnp, dws (equivariant weight-space layers), statnn, mlp (baselines), probestat (an MLP on each
network's outputs on the 32 probe images plus its per-tensor weight statistics: invariant by
construction, features computed once per network; needs networks the zoo card lets us run; best on
the CNN zoos' accuracy prediction). Trains on the zoo's train split with random
permutations of the input networks (not probestat), keeps the best model on the val split (early stopping),
and reports Kendall tau and R^2 (accuracy) or accuracy (class) on every split. Under torchrun the
same training runs data-parallel (DistributedDataParallel; gloo on the CPU, nccl on CUDA);
--batch-size is the global batch and rank 0 writes the checkpoint and the output."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from weightspace.metanet import (
        DEFAULT_PROBES,
        LOSSES,
        SCHEDULES,
        SELECTS,
        METANET_ARCHS,
        TASKS,
    )

    sub = p.add_subparsers(dest="metanet_command", metavar="{train,eval}")
    t = sub.add_parser("train", help="train a metanetwork on a zoo", description="Train a metanetwork on a zoo.")
    t.add_argument("zoo", metavar="ZOO", help="the zoo directory")
    t.add_argument("--task", choices=TASKS, default="accuracy", help="what to predict (default: accuracy)")
    t.add_argument("--arch", choices=METANET_ARCHS.names(), default="gnn",
                   help="the metanetwork (default: gnn): "
                        + "; ".join(f"{e.name}: {e.description}" for e in METANET_ARCHS.entries()) + ". gnn and transformer learn from parameter graphs and train "
                        "for minutes to hours on a CPU; probestat reads the networks' outputs at probe inputs plus "
                        "weight statistics, trains in seconds, and predicts accuracy best (README, Benchmarks)")
    add_output_arg(t, metavar="OUT.pt", help="where to write the best metanetwork")
    t.add_argument("--epochs", type=int, default=None, help="most epochs (default: 50; probestat: 300)")
    t.add_argument("--lr", type=float, default=None, help="learning rate (default: 3e-4; probestat: 1e-3)")
    t.add_argument("--batch-size", type=int, default=None,
                   help="networks per step, over all processes under torchrun (default: 32; probestat: 64)")
    t.add_argument("--hidden", type=int, default=None, help="metanetwork width (default: per arch)")
    t.add_argument("--patience", type=int, default=None,
                   help="early-stopping patience in epochs (default: 10; probestat: 100)")
    t.add_argument("--weight-decay", type=float, default=None,
                   help="AdamW weight decay (default: 0; probestat: 1e-2)")
    t.add_argument("--loss", choices=LOSSES, default="mse",
                   help="--task accuracy: squared error (mse), or squared error plus a pairwise ranking term over "
                        "each batch (rank) (default: mse)")
    t.add_argument("--schedule", choices=SCHEDULES, default="constant",
                   help="learning rate over epochs: constant, or cosine decay to 0 at --epochs (default: constant)")
    t.add_argument("--select", choices=SELECTS, default="loss",
                   help="validation metric that keeps the epoch and stops early: loss, or kendall_tau "
                        "(--task accuracy) (default: loss)")
    t.add_argument("--target", default=None, help="metrics.csv column to predict (default: test_acc or label)")
    t.add_argument("--probes", type=_probes, default="auto", metavar="N|auto",
                   help=f"gnn/transformer: add activations on N probe inputs as node features; auto: "
                        f"{DEFAULT_PROBES} when the zoo's networks can be run, else 0; probestat: its N probe "
                        f"inputs, auto: {DEFAULT_PROBES} (default: auto)")
    t.add_argument("--probe-source", choices=("uniform", "data", "auto"), default="auto",
                   help="probe inputs: uniform in [-1, 1], images of the zoo's training data (data), or data "
                        "when it loads with the models' input shape, else uniform (auto) (default: auto)")
    t.add_argument("--stats", choices=("auto", "on", "off"), default="auto",
                   help="gnn/transformer: also feed the readout per-tensor weight statistics; auto: for "
                        "--task accuracy; probestat: add them to its features, auto: on (default: auto)")
    t.add_argument("--checkpoints", default="all", metavar="all|last|E[,E...]",
                   help="which stored epochs of each zoo model to learn from (default: all)")
    t.add_argument("--no-augment", action="store_true", help="no random permutations of the input networks")
    add_common_args(t)
    add_trust_arg(t)
    e = sub.add_parser("eval", help="evaluate a trained metanetwork on a zoo",
                       description="Metrics of a trained metanetwork on a split of a zoo.")
    e.add_argument("model", metavar="MODEL", help="a checkpoint written by `metanet train`")
    e.add_argument("zoo", metavar="ZOO", help="the zoo directory")
    e.add_argument("--split", default="test", choices=("train", "val", "test", "all"), help="(default: test)")
    add_common_args(e, seed=False, quiet=False)
    add_trust_arg(e)


def _fmt(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())


def _probes(spec: str):
    if spec == "auto":
        return spec
    try:
        n = int(spec)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of probe inputs or auto, got {spec!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number of probe inputs, got {n}")
    return n


def _checkpoints(spec: str):
    if spec in ("all", "last"):
        return spec
    try:
        return [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--checkpoints: expected all, last or comma-separated epochs, got {spec!r}") from None


def run(args: argparse.Namespace) -> int:
    from weightspace.metanet import evaluate_metanet, train_metanet

    if args.metanet_command is None:
        raise ValueError("choose a subcommand: train or eval (see `weightspace metanet --help`)")
    device = resolve_device(args.device)
    if args.metanet_command == "train":
        r = train_metanet(args.zoo, task=args.task, arch=args.arch, epochs=args.epochs, lr=args.lr,
                          batch_size=args.batch_size, hidden=args.hidden, augment=not args.no_augment,
                          patience=args.patience, weight_decay=args.weight_decay, target=args.target, seed=args.seed, probes=args.probes,
                          probe_source=args.probe_source, loss=args.loss, schedule=args.schedule,
                          select=args.select,
                          stats={"auto": "auto", "on": True, "off": False}[args.stats],
                          checkpoints=_checkpoints(args.checkpoints), device=device, out=args.output, progress=not args.quiet and not args.json)
        if int(os.environ.get("RANK", "0")) != 0:
            return 0   # under torchrun, rank 0 reports
        if args.json:
            print_json(r.to_dict())
        else:
            probes = r.config.get("probes", 0)
            print(f"{args.arch} metanetwork ({r.num_params:,} parameters"
                  f"{f', {probes} probe inputs' if probes else ''}), best epoch {r.best_epoch} of "
                  f"{len(r.history)}, {r.seconds:.1f} s -> {r.path}")
            for split, m in r.metrics.items():
                print(f"  {split}: {_fmt(m) if m else '(empty split)'}")
        return 0
    m = evaluate_metanet(args.model, args.zoo, split=args.split, device=device)
    if args.json:
        print_json(m)
    else:
        print(f"{args.split}: {_fmt(m)}")
    return 0
