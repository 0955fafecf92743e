"""Zoo building throughput: models per second of batched training (many models as one, grouped
kernels and a stacked optimizer) against a plain loop that trains the same models one at a time
(an ``nn.Module`` and ``torch.optim``) with the same recipe, data order, dropout masks and
evaluations; and, with ``--full``, a 1,000-model CNN zoo on MNIST with its accuracy spread.

    python bench/zoo_throughput.py --threads 1                         # CNNs and INRs on digits
    python bench/zoo_throughput.py --threads 1 --skip-inr --checkpoints 0,1,2,4,8 --family pooled
    python bench/zoo_throughput.py --threads 1 --skip-inr --data mnist-idx:DIR --per-shard 64
    python bench/zoo_throughput.py --full --mnist DIR --out /tmp/zoo-mnist  # ~1 h

The CNNs are the zoo's default family (``--family smallcnnzoo``: the Small CNN Zoo's three
stride-2 convolutions of 16 channels, global average pooling) or ``--family pooled`` (stride-1
convolutions each followed by 2x2 average pooling).

Models per second count training and the per-checkpoint evaluations (test split, and up to
``train_eval_size`` training examples), not data loading or writing. The plain loop runs
``--baseline-models`` models and is extrapolated per model; both use the same thread count.
Prints markdown tables.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from weightspace.zoo import CNN_FAMILIES, build_cnn_zoo, format_summary, zoo_summary  # noqa: E402
from weightspace.zoo import prepare_cnn_task, train_cnn_shard, train_cnn_single  # noqa: E402
from weightspace.zoo import fit_inr_shard, prepare_inr_task, train_inr_single  # noqa: E402


def row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_cnn(args) -> list[str]:
    recipe = {"batch_size": args.batch_size, "train_eval_size": args.train_eval_size, **CNN_FAMILIES[args.family]}
    task, desc = prepare_cnn_task(args.data, checkpoints=args.checkpoints, device=args.device,
                                  image_size=args.image_size, recipe=recipe)
    t = task.template
    what = (f"cnn ({args.family}: stride {t.stride}, pool {t.pool_kind}) {desc['input_shape']} on {args.data}: "
            f"{len(t.channels)} convs x {t.channels[0]} channels, {task.steps_per_epoch} steps/epoch x {max(task.checkpoints)} "
            f"epochs, batch {args.batch_size}, checkpoints {','.join(map(str, task.checkpoints))}")
    n0 = args.baseline_models
    train_cnn_single(task, 0)  # warm-up
    plain = timed(lambda: [train_cnn_single(task, i) for i in range(n0)]) / n0
    lines = [row(what, "plain loop, one model at a time", n0, f"{plain * n0:.2f}", f"{1 / plain:.2f}", "1.0x")]
    from weightspace.zoo import _grouped_conv
    modes = {"on": ["ours"], "off": ["torch"], "auto": ["auto"], "both": ["ours", "torch", "auto"]}[args.kernels]
    if not _grouped_conv._LIB:
        modes = ["torch"]
    before = os.environ.get(_grouped_conv.ENV)
    for path in modes:
        os.environ[_grouped_conv.ENV] = path
        _grouped_conv.CHOICES.clear()
        how = {"ours": "our C kernels", "torch": "torch's grouped convolutions",
               "auto": "WEIGHTSPACE_GCONV=auto (the faster; its first-call timing included)"}[path]
        for m in args.per_shard:
            train_cnn_shard(task, 0, range(min(m, 4)))  # warm-up
            t = timed(lambda: train_cnn_shard(task, 0, range(m)))
            lines.append(row("", f"batched, {m} models per shard, {how}", m, f"{t:.2f}", f"{m / t:.2f}",
                             f"{plain * m / t:.1f}x"))
    if before is None:
        os.environ.pop(_grouped_conv.ENV, None)
    else:
        os.environ[_grouped_conv.ENV] = before
    if args.workers > 1:  # the whole zoo build: worker processes, writing included, start-up included
        import tempfile

        m = max(args.per_shard)
        n = args.workers * args.shards_per_worker * m
        with tempfile.TemporaryDirectory() as tmp:
            t = timed(lambda: build_cnn_zoo(tmp, args.data, n=n, models_per_shard=m, checkpoints=args.checkpoints,
                                            image_size=args.image_size, recipe=recipe, progress=False,
                                            workers=args.workers))
        lines.append(row("", f"zoo build --workers {args.workers} ({args.workers} processes, "
                             f"{max(1, (os.cpu_count() or 1) // args.workers)} thread each, {m} models per shard, "
                             f"start-up and writing included)", n, f"{t:.2f}", f"{n / t:.2f}", f"{plain * n / t:.1f}x"))
    return lines


def bench_inr(args) -> list[str]:
    recipe = {"steps": args.inr_steps, "psnr_stop": None}
    task, desc = prepare_inr_task(args.inr_images, n=max(args.per_shard), device=args.device, recipe=recipe)
    what = (f"inr siren 2-32-32-{task.template.out_features} on {args.inr_images} "
            f"{desc['image_shape'][1]}x{desc['image_shape'][2]}: {args.inr_steps} full-batch Adam steps")
    n0 = args.baseline_models
    train_inr_single(task, 0)
    plain = timed(lambda: [train_inr_single(task, i) for i in range(n0)]) / n0
    lines = [row(what, "plain loop, one model at a time", n0, f"{plain * n0:.2f}", f"{1 / plain:.2f}", "1.0x")]
    for m in args.per_shard:
        fit_inr_shard(task, 0, range(min(m, 4)))
        t = timed(lambda: fit_inr_shard(task, 0, range(m)))
        lines.append(row("", f"batched, {m} models per shard", m, f"{t:.2f}", f"{m / t:.2f}", f"{plain * m / t:.1f}x"))
    return lines


def full_build(args) -> None:
    if not args.mnist:
        raise SystemExit("--full needs --mnist DIR (the MNIST IDX files)")
    t = time.perf_counter()
    r = build_cnn_zoo(args.out, f"mnist-idx:{args.mnist}", n=args.full_n, models_per_shard=args.full_per_shard,
                      checkpoints=args.full_checkpoints, image_size=args.full_image_size, device=args.device,
                      recipe={"train_eval_size": args.train_eval_size, **CNN_FAMILIES[args.family]}, progress=True)
    s = zoo_summary(args.out)
    print(f"\n## {args.full_n}-model CNN zoo on MNIST ({args.out})\n")
    print(format_summary(s))
    spread = 100 * (s["quantiles"]["100%"] - s["quantiles"]["0%"])
    inner = 100 * (s["quantiles"]["95%"] - s["quantiles"]["5%"])
    print(f"\nbuilt {len(r.built)} shards ({r.models_built} models) in {time.perf_counter() - t:.0f} s "
          f"({r.models_per_second:.2f} models/s); test accuracy spans {spread:.1f} points (5%-95%: {inner:.1f})")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="digits", help="CNN training data (default: digits)")
    p.add_argument("--image-size", type=int, default=None, help="resize CNN inputs (default: native)")
    p.add_argument("--family", default="smallcnnzoo", choices=sorted(CNN_FAMILIES),
                   help="CNN family (default: smallcnnzoo, the zoo's default)")
    p.add_argument("--checkpoints", default="0,1", help="CNN checkpoints, epochs (default: 0,1)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--train-eval-size", type=int, default=500, help="training examples evaluated per checkpoint")
    p.add_argument("--per-shard", default="16,64,256", help="models trained together, to compare (default: 16,64,256)")
    p.add_argument("--baseline-models", type=int, default=8, help="models the plain loop trains (default: 8)")
    p.add_argument("--inr-images", default="digits", help="INR images (default: digits)")
    p.add_argument("--inr-steps", type=int, default=200)
    p.add_argument("--kernels", default="both", choices=["both", "on", "off", "auto"],
                   help="batched CNN training with our C convolution kernels (on), torch's grouped convolutions "
                        "(off), the faster measured per shape (auto, WEIGHTSPACE_GCONV's default), or all three "
                        "side by side (default: both)")
    p.add_argument("--workers", type=int, default=1,
                   help="also time a whole zoo build with this many worker processes (zoo build --workers; "
                        "default: 1, not timed)")
    p.add_argument("--shards-per-worker", type=int, default=2, help="shards each worker builds in that run (default: 2)")
    p.add_argument("--skip-cnn", action="store_true")
    p.add_argument("--skip-inr", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--full", action="store_true", help="build the 1,000-model MNIST zoo and print its spread")
    p.add_argument("--mnist", default=None, help="MNIST IDX directory for --full")
    p.add_argument("--out", default="zoo-mnist-cnn", help="zoo directory for --full (resumable)")
    p.add_argument("--full-n", type=int, default=1000)
    p.add_argument("--full-per-shard", type=int, default=50)
    p.add_argument("--full-checkpoints", default="0,1,2,4")
    p.add_argument("--full-image-size", type=int, default=None,
                   help="MNIST resized to this for --full (default: native, 28)")
    args = p.parse_args(argv)
    args.per_shard = [int(v) for v in args.per_shard.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}\n")
    if not (args.skip_cnn and args.skip_inr):
        print(row("workload", "method", "models", "seconds", "models/s", "speedup"))
        print(row(*["---"] * 6))
        if not args.skip_cnn:
            print("\n".join(bench_cnn(args)), flush=True)
        if not args.skip_inr:
            print("\n".join(bench_inr(args)), flush=True)
    if args.full:
        full_build(args)


if __name__ == "__main__":
    main()
