"""Merge several independently trained models into one: naive averaging versus MergeMany.

    python examples/merge_many_models.py                    # trains 4 small MLPs on digits first
    python examples/merge_many_models.py --models 6 --width 32 --epochs 10

Every model is trained from its own initialisation, so their hidden units are in unrelated
orders; MergeMany (Git Re-Basin) aligns each to the mean of the others before averaging.
The same job from the shell:

    weightspace merge-many m0.safetensors m1.safetensors m2.safetensors -o merged.safetensors
    weightspace merge-many m*.safetensors -o merged.safetensors --repair --data digits
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

import merging
import weightspace
from weightspace.api import INPUT_SHAPE_KEY, MODEL_KEY
from weightspace.data import load_data
from weightspace.merge_many import merge_many_checkpoints
from weightspace.models import model_spec_to_json
from weightspace.training import train_classifier


def train_checkpoint(path: Path, *, seed: int, width: int, epochs: int, quiet: bool) -> Path:
    """Train an MLP on digits and save it with its model spec."""
    kwargs = {"in_features": 64, "hidden": [width, width], "out_features": 10}
    torch.manual_seed(seed)
    model = weightspace.get_model("mlp", **kwargs)
    train_classifier(model, "digits", epochs=epochs, lr=0.1, seed=seed, progress=not quiet)
    metadata = {MODEL_KEY: model_spec_to_json("mlp", kwargs), INPUT_SHAPE_KEY: "1,8,8"}
    return weightspace.save(model.state_dict(), path, metadata=metadata)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=int, default=4, help="how many models to train and merge (default: 4)")
    p.add_argument("--width", type=int, default=16, help="hidden width (default: 16)")
    p.add_argument("--epochs", type=int, default=5, help="training epochs per model (default: 5)")
    p.add_argument("--out", default="merge-many-example", help="directory for what is written")
    p.add_argument("--repair", action="store_true", help="also REPAIR the merged model on digits")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # tiny models: one thread is fastest
    paths = [train_checkpoint(out / f"m{i}.safetensors", seed=i, width=args.width, epochs=args.epochs,
                              quiet=args.quiet) for i in range(args.models)]

    test = load_data("digits", split="test", batch_size=256)
    module = weightspace.load_model(paths[0]).module
    results = {}
    for method in ("average", "mergemany"):
        r = merge_many_checkpoints(paths, out / f"{method}.safetensors", method=method, repair=args.repair,
                                   data="digits" if args.repair else None, progress=not args.quiet)
        ev = merging.evaluate(module, weightspace.load(r.path), test)
        results[method] = {"loss": ev.loss, "accuracy": ev.accuracy, "result": r}
    singles = [merging.evaluate(module, weightspace.load(pth), test) for pth in paths]
    print(f"{'model':<24} {'test loss':>9} {'accuracy':>9}")
    print(f"{'each model (mean)':<24} {sum(e.loss for e in singles) / len(singles):9.3f} "
          f"{100 * sum(e.accuracy for e in singles) / len(singles):8.1f}%")
    for method, label in (("average", "naive average"), ("mergemany", "MergeMany")):
        r = results[method]
        print(f"{label:<24} {r['loss']:9.3f} {100 * r['accuracy']:8.1f}%")
    return results


if __name__ == "__main__":
    main()
