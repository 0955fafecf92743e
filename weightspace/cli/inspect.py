"""``weightspace inspect``: the traced permutation structure of a model or checkpoint."""
from __future__ import annotations

import argparse

from ._common import add_common_args, add_model_args, print_json

NAME = "inspect"
HELP = "show a model's permutation groups, each tensor's axes, and what is left unpermuted"
DESCRIPTION = """Trace a network and print its permutation symmetry.

  weightspace inspect --model resnet20                     # a built-in family, no checkpoint
  weightspace inspect ckpt.safetensors                     # model recorded in the checkpoint
  weightspace inspect llama/                               # a Hugging Face directory (config.json)
  weightspace inspect ckpt.pt --model mypkg.nets:make_net --input-shape 3,32,32

Groups are sets of hidden units / channels that can be permuted together without
changing the network's function; an axis such as (layer3 x ·49) is a flattened
feature map, [a | b] a concatenation. Inputs and outputs are never permuted; what
else is left alone is listed with the reason."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="?", help="checkpoint file (.safetensors, .pt, .bin, sharded index) or Hugging Face "
                        "directory; optional with --model")
    add_model_args(p)
    p.add_argument("--list-models", action="store_true", help="list the built-in model families and exit")
    p.add_argument("--tensors", action="store_true", help="also list every tensor with its axes")
    add_common_args(p, device=False, seed=False, quiet=False)


def run(args: argparse.Namespace) -> int:
    from weightspace.api import build_model, check_aligned, load_model, trace_model
    from weightspace.models import list_models

    if args.list_models:
        names = list_models()
        print_json(names) if args.json else print("\n".join(names))
        return 0
    if args.checkpoint is None:
        if args.model is None:
            raise ValueError("give a checkpoint or --model (see --help)")
        module, spec = build_model(args.model, args.model_kwargs)
        shape = args.input_shape
        source = f"model {args.model}"
    else:
        lm = load_model(args.checkpoint, args.model, args.model_kwargs, input_shape=args.input_shape)
        module, spec, shape = lm.module, lm.spec, lm.input_shape
        source = args.checkpoint
    s = trace_model(module, input_shape=shape)
    check_aligned(s, source=source)
    if args.json:
        d = s.to_dict()
        d.update({"source": source, "model": spec, "num_parameters": s.num_parameters,
                  "permuted_fraction": s.permuted_fraction})
        print_json(d)
        return 0
    print(f"{source}: {type(module).__name__}, {s.num_parameters:,} parameters in {len(s.shapes)} tensors, "
          f"{s.permuted_fraction:.0%} of the parameters permutable")
    print(f"\n{len(s.groups)} permutation groups:")
    width = max((len(g) for g in s.groups), default=10)
    for g in s.groups.values():
        print(f"  {g.name:<{width}}  size {g.size:>5}  acts on {len(g.members)} tensor axes")
    if args.tensors:
        print("\ntensors:")
        w = max(len(k) for k in s.axes)
        for k, ax in s.axes.items():
            shape_s = "x".join(str(d) for d in s.shapes[k]) or "scalar"
            axes = ", ".join(str(a) if a is not None else "·" for a in ax)
            print(f"  {k:<{w}}  {shape_s:<14} [{axes}]")
    print(f"\nleft unpermuted ({len(s.unpermuted)} axes):")
    by_reason: dict[str, list[str]] = {}
    for u in s.unpermuted:
        by_reason.setdefault(u.reason, []).append(f"{u.tensor}[{u.axis}]")
    for reason, items in by_reason.items():
        shown = ", ".join(items[:6]) + (f", ... ({len(items)} in all)" if len(items) > 6 else "")
        print(f"  {reason}: {shown}")
    return 0
