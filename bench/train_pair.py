"""Train a pair of networks from different seeds and write them as weightspace checkpoints
(safetensors that record their model), ready for ``weightspace merge`` / ``weightspace barrier``.

    python bench/train_pair.py --data mnist-idx:DIR -o /tmp/pair          # ResNet-20, 16/32/64 channels,
                                                                         # 1 epoch, seeds 0 and 1
    weightspace barrier /tmp/pair/a.safetensors /tmp/pair/b.safetensors --data mnist-idx:DIR --method all

The training recipe is the width sweep's (``bench/width_sweep.py``): SGD with Nesterov momentum
0.9, weight decay 5e-4, one-cycle learning rate (peak 0.1), batches of 128, the data's train
split (for ``mnist-idx:DIR`` with only the 10,000 test images: the first 8,000). Prints each
network's test accuracy.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import weightspace
from weightspace.data import load_dataset
from weightspace.models import get_model
from weightspace.models._registry import model_spec_to_json


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="digits", help="digits or mnist-idx:DIR (default: digits)")
    ap.add_argument("--model", default="resnet20", help="a built-in family (default: resnet20)")
    ap.add_argument("--model-kwargs", default='{"width": 1}', help='JSON (default: {"width": 1})')
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--seeds", type=int, nargs=2, default=[0, 1])
    ap.add_argument("-o", "--output", required=True, help="directory for a.safetensors and b.safetensors")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from bench.width_sweep import train  # the sweep's recipe (no cache: CACHE is None here)

    train_ds = load_dataset(args.data, split="train")
    test = load_dataset(args.data, split="test").loader(1000)
    kwargs = json.loads(args.model_kwargs)
    if args.model in ("resnet20", "cnn", "vgg"):
        kwargs.setdefault("in_channels", train_ds.input_shape[0])
        kwargs.setdefault("image_size", train_ds.input_shape[-1])
    elif args.model == "mlp":
        kwargs.setdefault("in_features", int(torch.tensor(train_ds.input_shape).prod()))
    model = get_model(args.model, **kwargs)
    spec = model_spec_to_json(args.model, kwargs)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for name, seed in zip("ab", args.seeds):
        t0 = time.time()
        state = train(model, train_ds, epochs=args.epochs, lr=args.lr, seed=seed)
        model.load_state_dict(state)
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in test:
                correct += int((model(x).argmax(1) == y).sum())
                total += len(y)
        path = weightspace.save(state, out / f"{name}.safetensors", metadata={"weightspace.model": spec})
        print(f"{path}: seed {seed}, test accuracy {100 * correct / total:.2f}% ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
