"""Train a weight-manifold hypernetwork on digits, then sample networks of three widths from it.

    python examples/resample_widths.py                 # ~1 minute on a laptop CPU
    python examples/resample_widths.py --steps 100 --quiet

Steps: train a full-width MLP, smooth its hidden units (same function), fit the hypernetwork
(Neural Metamorphosis) across widths, then sample checkpoints at three widths and evaluate them.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from merging import evaluate
from weightspace.api import load_model
from weightspace.data import load_data
from weightspace.hypernet import resample, train_hypernet_file


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=64, help="full hidden width of the MLP (default: 64)")
    p.add_argument("--epochs", type=int, default=10, help="epochs of the full-width network (default: 10)")
    p.add_argument("--steps", type=int, default=600, help="hypernetwork steps (default: 600)")
    p.add_argument("--out", default=None, help="directory for the files (default: a temporary one)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    hpath = out / "mlp.hypernet.safetensors"
    hf, summary = train_hypernet_file(
        hpath, model="mlp", model_kwargs={"hidden": [args.width, args.width]}, data="digits",
        widths="0.25:1.0", epochs=args.epochs, steps=args.steps, progress=not args.quiet)
    test = load_data("digits", split="test", batch_size=512)
    print(f"full-width source network: accuracy {summary['source_accuracy']:.3f}")
    accuracies = {}
    for w in (args.width // 4, args.width // 2, args.width):
        path = out / f"mlp_w{w}.safetensors"
        resample(hpath, path, width=w)
        m = load_model(path)  # an ordinary checkpoint: the model spec at width w is recorded
        accuracies[w] = evaluate(m.module, m.state, test).accuracy
        print(f"sampled at width {w:3d}: accuracy {accuracies[w]:.3f}  ({path.name})")
    return {"accuracies": accuracies, "source_accuracy": summary["source_accuracy"], "hypernet": hpath}


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
