"""Merge two checkpoints the way a training pipeline would: train (or load) A and B, align, merge.

    python examples/merge_two_checkpoints.py                       # trains two MLPs on digits first
    python examples/merge_two_checkpoints.py --a a.safetensors --b b.safetensors --data digits

Each checkpoint records its model in its metadata, so nothing else has to be said about the
architecture. The same job from the shell:

    weightspace merge a.safetensors b.safetensors -o merged.safetensors
    weightspace barrier a.safetensors b.safetensors --data digits --align weight
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import weightspace
from weightspace.api import INPUT_SHAPE_KEY, MODEL_KEY
from weightspace.merge import barrier_between, merge_checkpoints
from weightspace.models import model_spec_to_json
from weightspace.training import train_classifier


def train_checkpoint(path: Path, *, seed: int, width: int, epochs: int, quiet: bool) -> Path:
    """Train an MLP on digits and save it with its model spec, as any training script could."""
    kwargs = {"in_features": 64, "hidden": [width] * 3, "out_features": 10}
    torch.manual_seed(seed)
    model = weightspace.get_model("mlp", **kwargs)
    train_classifier(model, "digits", epochs=epochs, lr=0.1, seed=seed, progress=not quiet)
    metadata = {MODEL_KEY: model_spec_to_json("mlp", kwargs), INPUT_SHAPE_KEY: "1,8,8"}
    return weightspace.save(model.state_dict(), path, metadata=metadata)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", help="checkpoint A (default: train one)")
    p.add_argument("--b", help="checkpoint B (default: train one)")
    p.add_argument("--data", default="digits", help="data to evaluate the barrier on (default: digits)")
    p.add_argument("--out", default="merge-example", help="directory for what is written (default: ./merge-example)")
    p.add_argument("--method", default="weight", choices=["weight", "activation", "ste", "none"])
    p.add_argument("--width", type=int, default=64, help="hidden width when training (default: 64)")
    p.add_argument("--epochs", type=int, default=10, help="epochs when training (default: 10)")
    p.add_argument("--steps", type=int, default=11, help="points on the path (default: 11)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # tiny models: one thread is fastest, and robust on a busy machine
    a = Path(args.a) if args.a else train_checkpoint(out / "a.safetensors", seed=0, width=args.width,
                                                     epochs=args.epochs, quiet=args.quiet)
    b = Path(args.b) if args.b else train_checkpoint(out / "b.safetensors", seed=1, width=args.width,
                                                     epochs=args.epochs, quiet=args.quiet)

    # 1. merge: align B to A, interpolate, write with provenance
    data = args.data if args.method in ("activation", "ste") else None
    merged = merge_checkpoints(a, b, out / "merged.safetensors", method=args.method, data=data,
                               progress=not args.quiet)
    print(f"wrote {merged.path}: {merged.method} matching, {merged.units_moved} hidden units of B moved")

    # 2. the merged file is an ordinary checkpoint that records its model and where it came from
    loaded = weightspace.load_model(merged.path)
    provenance = json.loads(loaded.metadata["weightspace.provenance"])
    print(f"  loads as {type(loaded.module).__name__}; inputs {[i['sha256'][:12] for i in provenance['inputs']]}")

    # 3. barriers along the straight line from A to B, naive and aligned
    align = args.method if args.method != "none" else "weight"
    results = barrier_between(a, b, data=args.data, align=align, steps=args.steps, plot=out / "barrier.png",
                              progress=not args.quiet)
    for label, r in results.items():
        print(f"  {label:<20} loss barrier {r.loss_barrier:6.3f}   accuracy drop {100 * r.accuracy_barrier:5.1f}%"
              f"   merged accuracy {100 * r.midpoint_accuracy:5.1f}%")
    print(f"  plot: {out / 'barrier.png'}")
    return {"merged": merged, "barriers": results}


if __name__ == "__main__":
    main()
