"""Git Re-Basin: barriers (naive vs weight / activation / STE matching), ResNet-20 with
BatchNorm, and speed side by side with the PyPI package ``rebasin`` (0.0.47).

    python bench/rebasin_mnist.py                                        # the bundled 8x8 digits
    python bench/rebasin_mnist.py --data mnist-idx:DIR                   # everything, on MNIST
    python bench/rebasin_mnist.py --data mnist-idx:DIR --skip-resnet --widths 512  # quick
    python bench/rebasin_mnist.py --data mnist-idx:DIR --skip-mlp --skip-resnet --cache /tmp/rb  # speed, reuse nets

MNIST (``mnist-idx:DIR``): the 10,000 test images of the IDX files, 8,000 to train and 2,000 to test.
Prints markdown tables (docs/benchmarks.md quotes them).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import random
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import merging
import weightspace
from weightspace.data import load_dataset
from weightspace.models import get_model
from weightspace.training import train_one_cycle


CACHE: Path | None = None  # --cache: trained state dicts kept between runs


def train(model: nn.Module, ds, *, epochs: int, lr: float, seed: int, batch_size: int = 128) -> dict:
    if CACHE is not None:
        shapes = "-".join("x".join(map(str, p.shape)) for p in model.parameters())
        key = hashlib.sha1(f"{type(model).__name__}|{shapes}|{len(ds)}|{epochs}|{lr}|{seed}|{batch_size}".encode())
        path = CACHE / f"{key.hexdigest()[:16]}.safetensors"
        if path.exists():
            return weightspace.load(path)
        state = train_one_cycle(model, ds, epochs=epochs, lr=lr, seed=seed, batch_size=batch_size)
        CACHE.mkdir(parents=True, exist_ok=True)
        weightspace.save(state, path)
        return state
    return train_one_cycle(model, ds, epochs=epochs, lr=lr, seed=seed, batch_size=batch_size)


def features(ds) -> int:
    """Inputs of an MLP on ``ds``: one example, flattened (784 for MNIST, 64 for digits)."""
    return int(np.prod(ds.input_shape))


def row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def fmt(x: float, d: int = 3) -> str:
    return f"{x:.{d}f}"


def mlp_barriers(train_ds, test, args) -> None:
    model = get_model("mlp", in_features=features(train_ds), hidden=[512, 512, 512], out_features=10)
    t = time.time()
    a = train(model, train_ds, epochs=args.epochs, lr=0.05, seed=0)
    b = train(model, train_ds, epochs=args.epochs, lr=0.05, seed=1)
    t_train = time.time() - t
    s = weightspace.trace(model, model.example_input())
    data_small = train_ds.loader(500)
    print(f"\n### MLP {features(train_ds)}-512-512-512-10, {train_ds.name}, {len(train_ds)} training images, two seeds "
          f"({args.epochs} epochs each, {t_train:.0f} s)\n")
    print(row("method", "endpoint test loss A / B", "midpoint test loss", "loss barrier (mean)",
              "loss barrier (linear)", "acc. barrier (mean)", "align time (s)"))
    print(row(*["---"] * 7))
    for method in ("naive", "weight", "activation", "ste"):
        t = time.time()
        if method == "naive":
            p = weightspace.identity_permutation(s)
        elif method == "weight":
            p = merging.weight_matching(s, a, b)
        elif method == "activation":
            p = merging.activation_matching(s, model, a, b, data_small, max_examples=1000)
        else:
            p = merging.ste_matching(s, model, a, b, train_ds.loader(128, shuffle=True),
                                     epochs=args.ste_epochs, max_steps=None, lr=1e-2)
        dt = time.time() - t
        r = merging.barrier(model, a, weightspace.permute(s, b, p), test, steps=args.steps, progress=False)
        print(row(method, f"{fmt(r.losses[0])} / {fmt(r.losses[-1])}", fmt(r.midpoint_loss),
                  fmt(r.loss_barrier), fmt(r.loss_barrier_linear), fmt(r.accuracy_barrier, 4), fmt(dt, 2)))


def resnet_barriers(train_ds, test, args) -> None:
    model = get_model("resnet20", width=args.resnet_width, in_channels=train_ds.input_shape[0],
                      image_size=train_ds.input_shape[-1], num_classes=10)
    s = weightspace.trace(model, model.example_input())
    reset = train_ds.loader(500)
    x = next(iter(test))[0][:64]
    print(f"\n### ResNet-20 (width x{args.resnet_width}, BatchNorm), {train_ds.name}, "
          f"{args.resnet_pairs} pairs of seeds ({args.resnet_epochs} epochs each)\n")
    print(row("pair", "method", "endpoint test acc. A / B", "midpoint test acc.", "acc. barrier (mean)",
              "acc. barrier (linear)", "loss barrier (mean)"))
    print(row(*["---"] * 7))
    methods = ("naive", "weight", "activation")
    res: dict[str, list] = {m: [] for m in methods}
    diffs = []
    for pair in range(args.resnet_pairs):
        a = train(model, train_ds, epochs=args.resnet_epochs, lr=0.1, seed=2 * pair)
        b = train(model, train_ds, epochs=args.resnet_epochs, lr=0.1, seed=2 * pair + 1)
        if pair == 0:
            first = (a, b)
        # exact function preservation
        pr = weightspace.random_permutation(s, pair)
        with torch.no_grad():
            ya = torch.func.functional_call(model, a, (x,))
            yp = torch.func.functional_call(model, weightspace.permute(s, a, pr), (x,))
        diffs.append(float((ya - yp).abs().max()))
        for method in methods:
            if method == "naive":
                p = weightspace.identity_permutation(s)
            elif method == "weight":
                p = merging.weight_matching(s, a, b)
            else:
                p = merging.activation_matching(s, model, a, b, reset, max_examples=1000)
            r = merging.barrier(model, a, weightspace.permute(s, b, p), test, steps=args.resnet_steps,
                                reset_bn_data=reset, progress=False)
            res[method].append(r)
            print(row(f"{2 * pair},{2 * pair + 1}", f"{method} + BatchNorm reset",
                      f"{fmt(r.accuracies[0], 4)} / {fmt(r.accuracies[-1], 4)}", fmt(r.midpoint_accuracy, 4),
                      fmt(r.accuracy_barrier, 4), fmt(r.accuracy_barrier_linear, 4), fmt(r.loss_barrier)), flush=True)
    print(f"\nrandom permutation of A: max |output difference| = {max(diffs):.2e} (float32, all pairs)\n")
    rebasin_on_resnet(model, *first, test)
    print(row("method (+ BatchNorm reset)", "mean midpoint test acc.", "mean acc. barrier", "ratio to naive"))
    print(row(*["---"] * 4))
    naive = sum(r.accuracy_barrier for r in res["naive"]) / len(res["naive"])
    for method in methods:
        mid = sum(r.midpoint_accuracy for r in res[method]) / len(res[method])
        bar = sum(r.accuracy_barrier for r in res[method]) / len(res[method])
        print(row(method, fmt(mid, 4), fmt(bar, 4), f"{bar / max(naive, 1e-12):.2f}"))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rebasin_on_resnet(model: nn.Module, a: dict, b: dict, test) -> None:
    """What ``rebasin`` 0.0.47 does to pair (0,1) of the ResNet-20: does its permuted B still
    compute B's function (it leaves BatchNorm's running statistics unpermuted)?"""
    try:
        from rebasin import PermutationCoordinateDescent
    except ImportError:
        print("rebasin not installed: its ResNet-20 check skipped\n")
        return
    ma, mb = copy.deepcopy(model).eval(), copy.deepcopy(model).eval()
    ma.load_state_dict(a)
    mb.load_state_dict(b)
    x, y = next(iter(test))
    with torch.no_grad():
        y0 = mb(x)
    try:
        PermutationCoordinateDescent(ma, mb, x[:1]).rebasin()
    except Exception as e:  # report whatever breaks
        print(f"rebasin 0.0.47 on ResNet-20: fails ({type(e).__name__}: {str(e)[:120]})\n")
        return
    with torch.no_grad():
        y1 = mb(x)
    after = mb.state_dict()
    stats = [k for k in b if "running" in k]
    moved = sum(not torch.equal(b[k], after[k]) for k in stats)
    acc0 = float((y0.argmax(1) == y).float().mean())
    acc1 = float((y1.argmax(1) == y).float().mean())
    print(f"rebasin 0.0.47 on ResNet-20 pair (0,1): B's outputs change by up to {float((y0 - y1).abs().max()):.3g} "
          f"(logits up to {float(y0.abs().max()):.3g}); test accuracy of B {acc0:.4f} -> {acc1:.4f} on "
          f"{len(x)} images; running statistics permuted: {moved} of {len(stats)}\n")


def speed(train_ds, test, args) -> None:
    try:
        from rebasin import PermutationCoordinateDescent
    except ImportError:
        PermutationCoordinateDescent = None
    r = args.speed_repeats
    print(f"\n### Weight matching speed on trained MLPs {features(train_ds)}-W-W-W-10 (this machine, CPU), "
          "same pairs\n")
    print(f"(median of {r} runs with seeds 0..{r - 1} for each side: both visit the groups in a random order "
          "and stop at a different sweep per seed; weightspace's time includes tracing; its two solvers reach "
          "the same objective)\n")
    print(row("width", "weightspace (s)", "sweeps", "weightspace, SciPy solver (s)", "rebasin 0.0.47 (s)",
              "speed-up vs rebasin", "loss barrier weightspace", "loss barrier rebasin"))
    print(row(*["---"] * 8))
    for w in args.widths:
        model = get_model("mlp", in_features=features(train_ds), hidden=[w, w, w], out_features=10)
        a = train(model, train_ds, epochs=args.epochs, lr=0.05, seed=0)
        b = train(model, train_ds, epochs=args.epochs, lr=0.05, seed=1)
        t_ws, sweeps, bar_ws, t_rb, bar_rb = [], [], [], [], []
        for seed in range(r):
            t = time.time()
            s = weightspace.trace(model, model.example_input())
            found = merging.weight_matching_result(s, a, b, seed=seed)
            p, info = found.perms, found.info
            t_ws.append(time.time() - t)
            sweeps.append(info["sweeps"])
            bar_ws.append(merging.barrier(model, a, weightspace.permute(s, b, p), test, steps=args.steps,
                                          progress=False).loss_barrier)
            if seed == 0:
                t = time.time()
                info_ref = merging.weight_matching_result(s, a, b, seed=seed, solver="scipy").info
                t_ref = time.time() - t
                assert abs(info_ref["objective"] - info["objective"]) <= 1e-9 * abs(info["objective"])
            if PermutationCoordinateDescent is not None:
                ma, mb = copy.deepcopy(model), copy.deepcopy(model)
                ma.load_state_dict(a)
                mb.load_state_dict(b)
                _seed_everything(seed)
                t = time.time()
                pcd = PermutationCoordinateDescent(ma, mb, model.example_input(1))
                pcd.rebasin()
                t_rb.append(time.time() - t)
                bar_rb.append(merging.barrier(model, a, {k: v.detach() for k, v in mb.state_dict().items()}, test,
                                              steps=args.steps, progress=False).loss_barrier)
        ours = statistics.median(t_ws)
        sw = f"{min(sweeps)}-{max(sweeps)}" if min(sweeps) != max(sweeps) else str(sweeps[0])
        if t_rb:
            theirs = statistics.median(t_rb)
            print(row(w, fmt(ours, 2), sw, fmt(t_ref, 2), f"{fmt(theirs, 2)} ({fmt(min(t_rb), 1)}-{fmt(max(t_rb), 1)})",
                      f"{theirs / ours:.1f}x", fmt(statistics.mean(bar_ws)), fmt(statistics.mean(bar_rb))))
        else:
            print(row(w, fmt(ours, 2), sw, fmt(t_ref, 2), "not installed", "-", fmt(statistics.mean(bar_ws)), "-"))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="digits", help="digits (default) or mnist-idx:DIR (the MNIST IDX files)")
    ap.add_argument("--mnist", metavar="DIR", default=None, help="the same as --data mnist-idx:DIR")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--steps", type=int, default=25, help="points on the interpolation path")
    ap.add_argument("--ste-epochs", type=int, default=3)
    ap.add_argument("--widths", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--resnet-width", type=int, default=1)
    ap.add_argument("--resnet-epochs", type=int, default=3)
    ap.add_argument("--resnet-pairs", type=int, default=5, help="pairs of seeds (0,1), (2,3), ... (default: 5)")
    ap.add_argument("--resnet-steps", type=int, default=9)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--skip-mlp", action="store_true")
    ap.add_argument("--skip-resnet", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--speed-repeats", type=int, default=3, help="runs per side in the speed table (default: 3)")
    ap.add_argument("--cache", default=None, help="directory keeping trained networks between runs (default: none)")
    args = ap.parse_args(argv)
    global CACHE
    CACHE = Path(args.cache) if args.cache else None
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = f"mnist-idx:{args.mnist}" if args.mnist else args.data
    train_ds = load_dataset(spec, split="train")
    test = load_dataset(spec, split="test").loader(1000)
    print(f"{spec}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"train {len(train_ds)} / test {sum(len(y) for _, y in test)} images")
    if not args.skip_mlp:
        mlp_barriers(train_ds, test, args)
    if not args.skip_resnet:
        resnet_barriers(train_ds, test, args)
    if not args.skip_speed:
        speed(train_ds, test, args)


if __name__ == "__main__":
    main()
