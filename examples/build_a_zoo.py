"""Build a small CNN zoo, look at it, and predict each model's accuracy from its weights alone.

    python examples/build_a_zoo.py                               # 32 CNNs on the bundled digits
    python examples/build_a_zoo.py --data mnist-idx:DIR --n 256 --out zoo-mnist

The zoo is an ordinary directory (zoo.json, models/shard-*.safetensors, metrics.csv); run
the script again and the build resumes or, when complete, is read as it is. The same from
the shell:

    weightspace zoo build cnn --data digits --out zoo --n 32
    weightspace zoo info zoo --hist zoo/accuracy.png

The predictor is the simplest of Unterthiner et al. (arXiv:2002.11448): statistics of each
layer's weights (mean, spread, quantiles) and ridge regression. It sees every checkpoint
of the training models and predicts the test accuracy of the held-out models' checkpoints.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from weightspace.zoo import ZooDataset, build_cnn_zoo, format_summary, zoo_summary


def weight_statistics(weights: tuple[torch.Tensor, ...], biases: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Per layer and tensor: mean, std, and the 0/25/50/75/100% quantiles (7 numbers each)."""
    feats = []
    for t in (*weights, *biases):
        v = t.flatten().double()
        feats += [v.mean(), v.std() if v.numel() > 1 else v.new_zeros(()),
                  *torch.quantile(v, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=v.dtype))]
    return torch.stack(feats)


def features(ds: ZooDataset) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for i in range(len(ds)):
        (weights, biases), acc = ds[i]
        xs.append(weight_statistics(weights, biases))
        ys.append(float(acc))
    return torch.stack(xs), torch.tensor(ys, dtype=torch.float64)


def fit_ridge(x: torch.Tensor, y: torch.Tensor, alpha: float = 1e-2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-12)
    z = torch.cat([(x - mu) / sd, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    w = torch.linalg.solve(z.T @ z + alpha * torch.eye(z.shape[1], dtype=x.dtype), z.T @ y)
    return w, mu, sd


def predict(model: tuple[torch.Tensor, torch.Tensor, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    w, mu, sd = model
    return torch.cat([(x - mu) / sd, torch.ones(len(x), 1, dtype=x.dtype)], 1) @ w


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="zoo-digits", help="zoo directory (default: ./zoo-digits)")
    p.add_argument("--data", default="digits", help="dataset (default: digits)")
    p.add_argument("--n", type=int, default=32, help="number of models (default: 32)")
    p.add_argument("--checkpoints", default="0,1,2,4", help="epochs to keep (default: 0,1,2,4)")
    p.add_argument("--models-per-shard", type=int, default=32, help="models trained together (default: 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    out = Path(args.out)
    build = build_cnn_zoo(out, args.data, n=args.n, checkpoints=args.checkpoints, seed=args.seed,
                          models_per_shard=args.models_per_shard, progress=not args.quiet)
    summary = zoo_summary(out)
    print(format_summary(summary))

    train = ZooDataset(out, split="train", view="tensors", target="accuracy", checkpoints="all")
    held_out = [ZooDataset(out, split=s, view="tensors", target="accuracy", checkpoints="all") for s in ("val", "test")]
    x_train, y_train = features(train)
    parts = [features(ds) for ds in held_out if len(ds)]
    result = {"zoo": out, "build": build, "summary": summary, "n_train": len(train), "n_held_out": 0}
    if not parts:
        print("\nno held-out models in so small a zoo: build more (--n) to test the predictor")
        return result
    x_test, y_test = torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])
    model = fit_ridge(x_train, y_train)
    pred = predict(model, x_test).clamp(0, 1)
    mae = float((pred - y_test).abs().mean())
    baseline = float((y_train.mean() - y_test).abs().mean())
    print(f"\naccuracy from weight statistics (ridge regression), trained on {len(train)} checkpoints of "
          f"{len(train.model_ids)} models, tested on {len(y_test)} checkpoints of held-out models:")
    print(f"  mean absolute error {100 * mae:.1f} points (predicting the mean: {100 * baseline:.1f} points)")
    result.update({"n_held_out": len(y_test), "mae": mae, "baseline_mae": baseline})
    return result


if __name__ == "__main__":
    main()
