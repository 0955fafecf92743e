"""Merging language models trained from different initialisations: the perplexity along the
straight path between two byte-level causal LMs (GPT-2 and Llama layouts), naive and after
weight or activation matching, at several widths.

    python bench/lm_merge.py                                  # gpt2 + llama, widths 64 128 256, depth 2
    python bench/lm_merge.py --cache /tmp/lm --widths 128     # keep the trained models (HF directories)
    python bench/lm_merge.py --data text:DIR --depth 4        # another corpus, deeper models
    python bench/lm_merge.py --tiny                           # seconds: for tests

Each pair is two models of one family and size trained on ``--data`` (default ``python-stdlib``,
the Python standard library's sources as bytes: 4,096 training sequences of 128 bytes) from seeds
0 and 1 with Adam (linear warmup, cosine decay), saved as Hugging Face directories, then compared with
``weightspace.barrier_between`` (what ``weightspace barrier A B --data python-stdlib --method
weight`` runs) on the 256 test sequences. The table gives the endpoints' perplexity, the
perplexity at the midpoint ``t = 1/2`` and the midpoint loss barrier ``L(1/2) - (L(0) + L(1)) / 2``
(nats per byte) of each path.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from weightspace.merge import barrier_between
from weightspace.models import LANGUAGE_FAMILIES, byte_language_model
from weightspace.training import train_classifier

METHODS = ("weight", "activation")


def log(args, *msg) -> None:
    if not args.quiet:
        print(*msg, file=sys.stderr, flush=True)


def trained(args, family: str, width: int, seed: int, root: Path) -> Path:
    """The Hugging Face directory of a model of ``family``/``width`` trained from ``seed`` (cached)."""
    out = root / f"{family}-w{width}-d{args.depth}-e{args.epochs}-wu{args.warmup}-lr{args.lr:g}-s{seed}"
    if (out / "config.json").is_file():
        return out
    torch.manual_seed(seed)
    model = byte_language_model(family, width=width, depth=args.depth, heads=args.heads)
    t0 = time.perf_counter()
    losses = train_classifier(model, args.data, epochs=args.epochs, lr=args.lr, seed=seed, optimizer="adam",
                              batch_size=args.batch_size, warmup=args.warmup, progress=not args.quiet)
    log(args, f"  trained {out.name}: loss {losses[-1]:.3f} in {time.perf_counter() - t0:.0f} s")
    model.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", nargs="+", default=list(LANGUAGE_FAMILIES), choices=LANGUAGE_FAMILIES)
    p.add_argument("--widths", nargs="+", type=int, default=[64, 128, 256], help="residual widths")
    p.add_argument("--depth", type=int, default=2, help="transformer blocks (default: 2)")
    p.add_argument("--heads", type=int, default=4, help="attention heads (default: 4)")
    p.add_argument("--epochs", type=int, default=2, help="passes over the training text (default: 2)")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam's peak learning rate (default: 2e-3)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--warmup", type=int, default=50, help="steps of linear learning-rate warmup (default: 50)")
    p.add_argument("--data", default="python-stdlib", help="next-token text: python-stdlib or text:PATH")
    p.add_argument("--points", type=int, default=9, help="points on each path (default: 9)")
    p.add_argument("--cache", type=Path, default=None, help="keep the trained models here")
    p.add_argument("--tiny", action="store_true", help="width 16, one family, a few steps: seconds")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.tiny:
        args.families, args.widths, args.epochs, args.points, args.warmup = ["gpt2"], [16], 1, 3, 0
    if args.cache is None:
        import tempfile

        root = Path(tempfile.mkdtemp(prefix="lm-merge-"))
    else:
        root = args.cache
        root.mkdir(parents=True, exist_ok=True)

    rows = []
    for family in args.families:
        for width in args.widths:
            a, b = (trained(args, family, width, s, root) for s in (0, 1))
            t0 = time.perf_counter()
            res = {}
            for method in METHODS:
                r = barrier_between(a, b, data=args.data, align=method, steps=args.points, progress=False)
                res.setdefault("naive", r["naive"])
                res[method] = r[f"{method} matching"]
            params = sum(p.numel() for p in byte_language_model(family, width=width, depth=args.depth,
                                                                 heads=args.heads).parameters())
            rows.append((family, width, params, res, time.perf_counter() - t0))
            log(args, f"  {family} width {width}: naive {res['naive'].midpoint_perplexity:.2f}, weight "
                      f"{res['weight'].midpoint_perplexity:.2f}, activation {res['activation'].midpoint_perplexity:.2f}")

    print(f"Perplexity on {args.data} (test split) of two models trained from seeds 0 and 1, depth {args.depth}, "
          f"{args.epochs} epochs; midpoint t = 1/2 of the straight path\n")
    print("| family | width | parameters | perplexity A / B | midpoint: naive | weight | activation "
          "| loss barrier: naive | weight | activation | time (s) |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for family, width, params, res, secs in rows:
        ppl = res["naive"].perplexities
        mid = " | ".join(f"{res[m].midpoint_perplexity:.2f}" for m in ("naive", *METHODS))
        lb = " | ".join(f"{res[m].loss_barrier:.3f}" for m in ("naive", *METHODS))
        print(f"| {family} | {width} | {params:,} | {ppl[0]:.2f} / {ppl[-1]:.2f} | {mid} | {lb} | {secs:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
