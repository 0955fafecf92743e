"""Merge two sharded checkpoints tensor by tensor, as for models larger than memory.

    python examples/merge_sharded_checkpoints.py                  # trains two MLPs on digits first
    python examples/merge_sharded_checkpoints.py --shard-size 20kB --width 128

A and B are written in the Hugging Face sharded layout (``model-0000k-of-0000N.safetensors`` and
``model.safetensors.index.json``), as large models are distributed. Merging them reads one tensor
at a time: the model is traced on the meta device (no weights allocated), weight matching
accumulates each similarity matrix tensor by tensor, and the merged checkpoint is written shard
by shard. The result is the in-memory merge's, bit for bit, which the script checks. From the
shell:

    weightspace merge a/ b/ -o merged/ --max-shard-size 2GB
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import weightspace
from weightspace.api import INPUT_SHAPE_KEY, MODEL_KEY
from weightspace.data import load_data
from weightspace.merge import merge_checkpoints
from weightspace.models import model_spec_to_json
from weightspace.training import train_classifier


def accuracy(path: Path) -> float:
    """Test accuracy on digits of the checkpoint at ``path`` (a file, an index or a directory)."""
    model = weightspace.load_model(path).module
    correct = total = 0
    with torch.no_grad():
        for x, y in load_data("digits", split="test", batch_size=512):
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return correct / total


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="sharded-example", help="directory for what is written (default: ./sharded-example)")
    p.add_argument("--width", type=int, default=64, help="hidden width (default: 64)")
    p.add_argument("--epochs", type=int, default=10, help="training epochs (default: 10)")
    p.add_argument("--shard-size", default="10kB", help="bytes per shard, of inputs and output (default: 10kB)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # tiny models: one thread is fastest, and robust on a busy machine
    kwargs = {"in_features": 64, "hidden": [args.width] * 3, "out_features": 10}
    metadata = {MODEL_KEY: model_spec_to_json("mlp", kwargs), INPUT_SHAPE_KEY: "1,8,8"}
    for name, seed in (("a", 0), ("b", 1)):  # two training runs, saved sharded (and as one file)
        torch.manual_seed(seed)
        model = weightspace.get_model("mlp", **kwargs)
        train_classifier(model, "digits", epochs=args.epochs, lr=0.1, seed=seed, progress=not args.quiet)
        weightspace.save(model.state_dict(), out / name, metadata=metadata, max_shard_size=args.shard_size)
        weightspace.save(model.state_dict(), out / f"{name}.safetensors", metadata=metadata)

    # 1. the streaming merge: sharded in, sharded out, one tensor at a time
    merged = merge_checkpoints(out / "a", out / "b", out / "merged", max_shard_size=args.shard_size,
                               progress=not args.quiet)
    index = json.loads(merged.path.read_text())
    shards = sorted(set(index["weight_map"].values()))
    print(f"weight matching, tensor by tensor: {merged.sweeps} sweeps, {merged.units_moved} hidden units of B moved")
    print(f"wrote {merged.path} and {len(shards)} shards: {shards[0]} ... {shards[-1]}")

    # 2. the same merge in memory, from the single-file copies: the same tensors, bit for bit
    in_memory = merge_checkpoints(out / "a.safetensors", out / "b.safetensors", out / "in-memory.safetensors",
                                  progress=False)
    x, y = weightspace.load(merged.path), weightspace.load(in_memory.path)
    identical = x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    print(f"identical to the in-memory merge: {identical}")

    # 3. the merged checkpoint is an ordinary (sharded) checkpoint
    acc = {name: accuracy(path) for name, path in (("A", out / "a"), ("B", out / "b"), ("merged", merged.path))}
    print("test accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()))
    return {"merged": merged, "identical": identical, "shards": shards, "accuracy": acc}


if __name__ == "__main__":
    main()
