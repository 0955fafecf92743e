"""Train a metanetwork: build a tiny zoo of CNNs on digits, then predict their accuracy from weights.

    python examples/train_a_metanetwork.py --models 64 --arch gnn --epochs 30

Prints the Kendall tau between predicted and true test accuracy of the zoo's held-out models.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from weightspace.metanet import ARCHS, train_metanet
from weightspace.zoo import build_cnn_zoo


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="working directory (default: a temporary one)")
    p.add_argument("--models", type=int, default=16, help="CNNs in the zoo (default: 16)")
    p.add_argument("--arch", choices=ARCHS, default="gnn", help="metanetwork (default: gnn)")
    p.add_argument("--epochs", type=int, default=3, help="metanetwork epochs (default: 3)")
    p.add_argument("--hidden", type=int, default=16, help="metanetwork width (default: 16)")
    p.add_argument("--probes", type=int, default=0,
                   help="gnn/transformer: activations on this many probe inputs as node features (default: 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.out or tmp)
        zoo = work / "zoo"
        # checkpoints 0 and 1: untrained and trained models, so accuracies spread out
        build_cnn_zoo(zoo, "digits", n=args.models, checkpoints=(0, 1), progress=not args.quiet,
                      recipe={"channels": [8, 8, 8]})
        r = train_metanet(zoo, task="accuracy", arch=args.arch, epochs=args.epochs, hidden=args.hidden,
                          probes=args.probes, batch_size=8, out=work / "metanet.pt", progress=not args.quiet)
        split = "test" if r.metrics["test"] else "val"
        tau = r.metrics[split]["kendall_tau"]
        print(f"{args.arch} metanetwork, {r.num_params:,} parameters, {r.seconds:.1f} s")
        print(f"Kendall tau on the {split} split: {tau:.3f}")
        return {"result": r, "kendall_tau": tau, "split": split}


if __name__ == "__main__":
    main()
