"""``weightspace resample``: sample a checkpoint of a given width from a hypernetwork."""
from __future__ import annotations

import argparse

from ._common import add_common_args, add_output_arg, add_trust_arg, print_json, resolve_device

NAME = "resample"
HELP = "sample a checkpoint of any width from a hypernetwork (`weightspace hypernet train`)"
DESCRIPTION = """Generate the weights of the family at a width and write an ordinary checkpoint.

  weightspace resample h.safetensors --width 32 -o w32.safetensors
  weightspace resample h.safetensors --ratio 0.5 -o half.safetensors --samples 5
  weightspace resample h.safetensors --ratio 0.5,1.0 -o mixed.safetensors    # one ratio per layer

--width W: the widest hidden layer gets W units, the others in proportion (or one width per
layer, comma-separated); --ratio R: fraction of the full width (or one per layer). Widths outside
the trained range are refused unless --allow-extrapolation. --samples K averages K draws with
noisy coordinates (--noise, default 0.1 half unit spacings). BatchNorm statistics are recomputed
from --data (default: the hypernetwork's training data). The output records its model spec at the
new width, so `weightspace inspect` and `load_model` read it without --model."""


def _numbers(text: str, kind: type, flag: str):
    try:
        vals = [kind(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected {'integers' if kind is int else 'numbers'}, comma-separated")
    if not vals:
        raise ValueError(f"{flag}: empty")
    return vals[0] if len(vals) == 1 else vals


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("hypernet", metavar="HYPERNET", help="a hypernetwork file")
    add_output_arg(p, metavar="OUT", help="the checkpoint to write (.safetensors)")
    p.add_argument("--width", default=None, metavar="W", help="units of the widest hidden layer (or one per layer)")
    p.add_argument("--ratio", default=None, metavar="R", help="fraction of full width (or one per layer)")
    p.add_argument("--samples", type=int, default=1, help="average this many noisy draws (default: 1)")
    p.add_argument("--noise", type=float, default=None, help="coordinate noise for --samples > 1 (default: 0.1)")
    p.add_argument("--data", default=None, metavar="D", help="data for BatchNorm statistics (default: the training data)")
    p.add_argument("--allow-extrapolation", action="store_true", help="allow widths outside the trained range")
    add_common_args(p)
    add_trust_arg(p)


def run(args: argparse.Namespace) -> int:
    from weightspace.hypernet import resample

    width = _numbers(args.width, int, "--width") if args.width is not None else None
    ratio = _numbers(args.ratio, float, "--ratio") if args.ratio is not None else None
    module, state, spec = resample(args.hypernet, args.output, width=width, ratio=ratio, samples=args.samples,
                                   noise=args.noise, data=args.data, allow_extrapolation=args.allow_extrapolation,
                                   device=resolve_device(args.device), seed=args.seed)
    n = sum(v.numel() for v in state.values() if v.is_floating_point())
    if args.json:
        print_json({"output": args.output, "model": spec, "parameters": n})
    elif not args.quiet:
        print(f"wrote {args.output}: {type(module).__name__} {spec}, {n} parameters")
    return 0
