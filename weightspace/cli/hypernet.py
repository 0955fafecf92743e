"""``weightspace hypernet train``: learn a weight-manifold hypernetwork over a family of widths."""
from __future__ import annotations

import argparse

from ._common import add_common_args, add_output_arg, add_model_args, print_json, resolve_device

NAME = "hypernet"
HELP = "train a weight-manifold hypernetwork (Neural Metamorphosis) that generates the family at any width"
DESCRIPTION = """Learn one implicit function of weight coordinates that generates a network of the family at
any width (NeuMeta, Yang et al., arXiv 2410.11878); then `weightspace resample` samples a checkpoint.

  weightspace hypernet train --model mlp --data digits -o mlp.hypernet.safetensors
  weightspace hypernet train --model cnn --data digits --widths 0.25:1.0 -o cnn.hypernet.safetensors
  weightspace hypernet train --from full.safetensors --data digits --widths 16,32,48,64 -o h.safetensors

Without --from, a full-width network is first trained on --data (--epochs, --lr). Its hidden units
are then smoothed (each group reordered along a short path through its units; the function is
unchanged). The hypernetwork is residual (--base): a network of any width is the source merged to
that width (clusters of alike units become one unit; wider than the source, units are split) plus
a correction from the implicit function of the weights' coordinates, which vanishes at full width,
so the full width is the source exactly. The correction is trained on the task loss of generated
networks at widths drawn from --widths plus distillation from the source (--distill).
With --base none the plain implicit function is trained, with reconstruction of the source.

--widths: LO:HI (widths drawn continuously) or A,B,C (a discrete set); integers are units of the
widest hidden layer, numbers with a point are ratios of the full width (default 0.25:1.0).
Built-in families with widths: mlp (hidden), cnn (channels); others: --width-kwarg NAME."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    t = sub.add_parser("train", help="train a hypernetwork and write it (.safetensors)",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_output_arg(t, metavar="HYPERNET", help="the hypernetwork file to write")
    t.add_argument("--from", dest="source", metavar="CKPT", default=None,
                   help="a trained full-width checkpoint to smooth and reconstruct (default: train one on --data)")
    add_model_args(t)
    t.add_argument("--width-kwarg", metavar="NAME", default=None,
                   help="the model keyword holding the hidden widths (default: hidden for mlp, channels for cnn)")
    t.add_argument("--data", default="digits", metavar="D", help="training data: digits, mnist-idx:DIR, ... (default: digits)")
    t.add_argument("--widths", default="0.25:1.0", metavar="LO:HI", help="training widths (default: 0.25:1.0)")
    t.add_argument("--steps", type=int, default=600, help="hypernetwork training steps (default: 600)")
    t.add_argument("--hyper-lr", type=float, default=1e-2, help="Adam learning rate of the hypernetwork (default: 0.01)")
    t.add_argument("--recon-weight", type=float, default=10.0, help="weight of the reconstruction loss (--base none only; default: 10)")
    t.add_argument("--coord-noise", type=float, default=0.5,
                   help="noise on unit coordinates, in half unit spacings (default: 0.5)")
    t.add_argument("--distill", type=float, default=1.0,
                   help="weight of distillation from the source network (0: task loss only; default: 1)")
    t.add_argument("--low-bias", type=float, default=1.5,
                   help="with LO:HI widths, draw LO + (HI - LO) u^B: above 1 narrow widths more often (default: 1.5)")
    t.add_argument("--base", choices=("cluster", "merge", "area", "none"), default="cluster",
                   help="prior of the residual hypernetwork: the source merged to the width by clusters of alike "
                        "units (cluster), runs of adjacent units (merge) or uniform resampling (area), plus a "
                        "learned correction; none: the plain implicit function (default: cluster)")
    t.add_argument("--hidden", type=int, default=128, help="hypernetwork width (default: 128)")
    t.add_argument("--depth", type=int, default=2, help="residual blocks of the hypernetwork (default: 2)")
    t.add_argument("--epochs", type=int, default=10, help="epochs of the full-width network without --from (default: 10)")
    t.add_argument("--lr", type=float, default=0.05, help="learning rate of the full-width network (default: 0.05)")
    add_common_args(t)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "action", None) != "train":
        raise ValueError("give an action: weightspace hypernet train ... (see --help)")
    from weightspace.hypernet import train_hypernet_file

    for flag, v in (("--steps", args.steps), ("--hidden", args.hidden), ("--depth", args.depth),
                    ("--epochs", args.epochs)):
        if v < 1:
            raise ValueError(f"{flag} must be a positive integer, got {v}")
    if args.distill < 0:
        raise ValueError(f"--distill must be non-negative, got {args.distill}")
    if args.low_bias <= 0:
        raise ValueError(f"--low-bias must be positive, got {args.low_bias}")
    quiet = args.quiet or args.json
    hf, summary = train_hypernet_file(
        args.output, model=args.model, model_kwargs=args.model_kwargs, data=args.data, widths=args.widths,
        source=args.source, width_kwarg=args.width_kwarg, epochs=args.epochs, lr=args.lr, steps=args.steps,
        hyper_lr=args.hyper_lr, recon_weight=args.recon_weight, coord_noise=args.coord_noise, distill=args.distill,
        low_bias=args.low_bias, hparams={"hidden": args.hidden, "depth": args.depth,
                                         **({"residual": False} if args.base == "none" else {"base": args.base})},
        device=resolve_device(args.device), seed=args.seed,
        progress=not quiet)
    summary = {"output": args.output, "model": hf.spec, "widths": args.widths, **summary}
    if args.json:
        print_json(summary)
    elif not args.quiet:
        lo, hi = hf.bounds
        print(f"source accuracy {summary['source_accuracy']:.4f}; smoothing: neighbour distance "
              f"{summary['smoothing_before']:.1f} -> {summary['smoothing_after']:.1f}")
        print(f"hypernetwork: {args.steps} steps in {summary['train_seconds']:.1f} s, final task loss "
              f"{summary['final_task_loss']:.4f}, reconstruction {summary['final_recon_loss']:.4f}")
        print(f"wrote {args.output} (widths {lo:g}..{hi:g} of {hf.full_widths}); sample with "
              f"`weightspace resample {args.output} --ratio 0.5 -o out.safetensors`")
    return 0
