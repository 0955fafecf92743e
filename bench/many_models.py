"""Many models: MergeMany vs C2M3 vs naive averaging, and a Starlight star model
(barriers to held-out models, prediction over the star domain vs an ensemble).

    python bench/many_models.py                                  # the bundled 8x8 digits, no download
    python bench/many_models.py --data mnist-idx:DIR             # MLPs and a small CNN on MNIST
    python bench/many_models.py --data mnist-idx:DIR --skip-cnn --sources 6 --device cuda

MNIST (``mnist-idx:DIR``): the 10,000 test images of the IDX files, 8,000 to train and 2,000
to test. Networks are narrow on purpose (784-32-32-10 MLPs on MNIST, a CNN with 4 and 8
channels) so that barriers survive weight matching. For each family: ``--sources`` models
build the star and the merges, ``--held-out`` other models (never used to build anything)
measure the star's barriers. Prints markdown tables (docs/benchmarks.md quotes them).
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import merging
import weightspace
from weightspace.data import load_dataset
from weightspace.models import get_model


class EpochShuffle:
    """Batches of a dataset, reshuffled per epoch from ``seed + epoch`` (resumable order)."""

    def __init__(self, ds, batch_size: int, seed: int, device: torch.device) -> None:
        self.x, self.y = ds.x.to(device), ds.y.to(device)
        self.batch_size, self.seed, self.epoch = batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return (len(self.x) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(self.seed + self.epoch))
        order = order.to(self.x.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.x[idx], self.y[idx]


def train(model: nn.Module, ds, *, epochs: int, lr: float, seed: int, device, batch_size: int = 128) -> dict:
    torch.manual_seed(seed)
    for m in model.modules():
        if hasattr(m, "reset_parameters") and m is not model:
            m.reset_parameters()
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    loader = EpochShuffle(ds, batch_size, seed * 1000, device)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * len(loader), pct_start=0.25)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
    model.eval()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def fmt(x: float, d: int = 3) -> str:
    return f"{x:.{d}f}"


def family(name: str, model: nn.Module, train_ds, test, args, device, *, epochs: int, lr: float,
           star_lr: float, star_epochs: int) -> dict:
    print(f"\n### {name}: {args.sources} source models + {args.held_out} held-out, {train_ds.name} "
          f"({epochs} epochs each)\n", flush=True)
    t = time.time()
    n_all = args.sources + args.held_out
    states = [train(model, train_ds, epochs=epochs, lr=lr, seed=s, device=device) for s in range(n_all)]
    t_train = time.time() - t
    sources, held = states[:args.sources], states[args.sources:]
    s = weightspace.trace(model, model.example_input().to(device))
    timings = {"train (all models)": t_train}

    singles = [merging.evaluate(model, st, test) for st in states]
    mean_loss = statistics.mean(e.loss for e in singles)
    mean_acc = statistics.mean(e.accuracy for e in singles)

    # ---- barriers between ordinary models (aligned by weight matching)
    t = time.time()
    pairs = merging.pairwise_barriers(model, s, held + sources[:args.pair_sources], test, steps=args.steps)
    timings["pairwise barriers"] = time.time() - t
    naive_pairs = [merging.barrier(model, a, b, test, steps=args.steps, progress=False)
                   for a, b in itertools.combinations(held, 2)]

    # ---- merges of the sources
    merged = {}
    merged["naive average"] = merging.many.mean_state(sources)
    t = time.time()
    merged["MergeMany"], _ = merging.merge_many(s, sources)
    timings["MergeMany"] = time.time() - t
    t = time.time()
    c2m3 = merging.c2m3_merge_result(s, sources)
    merged["C2M3"] = c2m3.merged
    timings[f"C2M3 ({c2m3.iterations} Frank-Wolfe it.)"] = time.time() - t
    merge_rows = []
    for label, st in merged.items():
        e = merging.evaluate(model, st, test)
        merge_rows.append((label, e))

    # ---- Starlight
    t = time.time()
    sl = merging.Starlight(model, s, epochs=star_epochs, lr=star_lr, momentum=0.9, schedule="cosine",
                           init=args.init, seed=0, device=device, progress=not args.quiet)
    sl.fit(sources, EpochShuffle(train_ds, 128, 7, device))
    timings[f"Starlight ({star_epochs} epochs)"] = time.time() - t
    star = sl.star_
    star_eval = merging.evaluate(model, star, test)
    t = time.time()
    star_held = merging.aligned_barriers(model, s, star, held, test, steps=args.steps)
    star_src = merging.aligned_barriers(model, s, star, sources, test, steps=args.steps)
    timings["star barriers"] = time.time() - t

    # ---- prediction: star domain (BMA-style) vs ensemble
    aligned = sl.aligned_sources(sources)
    t = time.time()
    p_bma, y = merging.star_domain_proba(model, star, aligned, test, samples_per_source=args.bma_samples, seed=0)
    timings[f"star-domain prediction ({args.bma_samples * args.sources} models)"] = time.time() - t
    p_ens, _ = merging.ensemble_proba(model, sources, test)
    p_star, _ = merging.predict_proba(model, star, test)
    p_one = [merging.predict_proba(model, st, test)[0] for st in sources]
    m_bma, m_ens, m_star = (merging.prediction_metrics(p, y) for p in (p_bma, p_ens, p_star))
    m_one = [merging.prediction_metrics(p, y) for p in p_one]

    # ---- tables
    pair_mean = merging.mean_barrier(pairs)
    held_mean = merging.mean_barrier(star_held)
    print(row("paths (test set)", "pairs", "mean loss barrier", "max loss barrier", "mean acc. barrier"))
    print(row(*["---"] * 5))
    print(row("ordinary <-> ordinary, naive", len(naive_pairs), fmt(merging.mean_barrier(naive_pairs)),
              fmt(max(r.loss_barrier for r in naive_pairs)),
              fmt(merging.mean_barrier(naive_pairs, "accuracy_barrier"), 4)))
    print(row("ordinary <-> ordinary, weight matching", len(pairs), fmt(pair_mean),
              fmt(max(r[2].loss_barrier for r in pairs)), fmt(merging.mean_barrier(pairs, "accuracy_barrier"), 4)))
    print(row("**star <-> held-out**, weight matching", len(star_held), f"**{fmt(held_mean)}**",
              fmt(max(r.loss_barrier for r in star_held)), fmt(merging.mean_barrier(star_held, "accuracy_barrier"), 4)))
    print(row("star <-> its sources, weight matching", len(star_src), fmt(merging.mean_barrier(star_src)),
              fmt(max(r.loss_barrier for r in star_src)), fmt(merging.mean_barrier(star_src, "accuracy_barrier"), 4)))
    ratio = held_mean / pair_mean if pair_mean > 0 else float("nan")
    print(f"\nstar <-> held-out / ordinary pairs: {ratio:.2f} (target <= 0.5)\n")

    print(row("model (test set)", "loss", "accuracy"))
    print(row(*["---"] * 3))
    print(row(f"each model (mean of {n_all})", fmt(mean_loss), f"{100 * mean_acc:.2f}%"))
    print(row("star model", fmt(star_eval.loss), f"{100 * star_eval.accuracy:.2f}%"))
    for label, e in merge_rows:
        print(row(f"merge of {args.sources}: {label}", fmt(e.loss), f"{100 * e.accuracy:.2f}%"))

    print()
    print(row("prediction (test set)", "accuracy", "ECE (15 bins)", "NLL"))
    print(row(*["---"] * 4))
    print(row("single source (mean)", f"{100 * statistics.mean(m.accuracy for m in m_one):.2f}%",
              fmt(statistics.mean(m.ece for m in m_one), 4), fmt(statistics.mean(m.nll for m in m_one))))
    print(row("star model alone", f"{100 * m_star.accuracy:.2f}%", fmt(m_star.ece, 4), fmt(m_star.nll)))
    print(row(f"ensemble of the {args.sources} sources", f"{100 * m_ens.accuracy:.2f}%", fmt(m_ens.ece, 4),
              fmt(m_ens.nll)))
    print(row(f"star domain, {args.bma_samples * args.sources} sampled models", f"{100 * m_bma.accuracy:.2f}%",
              fmt(m_bma.ece, 4), fmt(m_bma.nll)))

    print()
    print(row("step", "seconds"))
    print(row("---", "---"))
    for k, v in timings.items():
        print(row(k, fmt(v, 2)))
    return {"pair": pair_mean, "star_held": held_mean, "merges": {k: (e.loss, e.accuracy) for k, e in merge_rows}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="digits", help="digits (default) or mnist-idx:DIR (the MNIST IDX files)")
    ap.add_argument("--mnist", metavar="DIR", default=None, help="the same as --data mnist-idx:DIR")
    ap.add_argument("--sources", type=int, default=8, help="models that build the star and the merges")
    ap.add_argument("--held-out", type=int, default=4, help="models used only to measure the star's barriers")
    ap.add_argument("--pair-sources", type=int, default=4,
                    help="sources added to the held-out models for the ordinary pairwise barriers")
    ap.add_argument("--epochs", type=int, default=10, help="training epochs of every MLP")
    ap.add_argument("--star-epochs", type=int, default=20, help="Starlight epochs (MLP)")
    ap.add_argument("--star-lr", type=float, default=0.05, help="Starlight learning rate (cosine decay)")
    ap.add_argument("--init", default="mergemany", choices=["first", "mergemany"], help="the star's start")
    ap.add_argument("--width", type=int, default=32, help="MLP hidden width")
    ap.add_argument("--cnn-epochs", type=int, default=3)
    ap.add_argument("--cnn-star-epochs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=11, help="points on each interpolation path")
    ap.add_argument("--bma-samples", type=int, default=4, help="models sampled on each star-source segment")
    ap.add_argument("--skip-mlp", action="store_true")
    ap.add_argument("--skip-cnn", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (tiny models: 1 is fastest)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    t0 = time.time()
    spec = f"mnist-idx:{args.mnist}" if args.mnist else args.data
    train_ds = load_dataset(spec, split="train")
    test_ds = load_dataset(spec, split="test")
    channels, size = train_ds.input_shape[0], train_ds.input_shape[-1]
    features = channels * size * train_ds.input_shape[-2]
    test = EpochShuffle(test_ds, 1000, 0, device)
    test = [(x, y) for x, y in test]  # a fixed list: evaluated many times
    print(f"data: {spec}, device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    if not args.skip_mlp:
        w = args.width
        mlp = get_model("mlp", in_features=features, hidden=[w, w], out_features=10).to(device)
        family(f"MLP {features}-{w}-{w}-10", mlp,
               train_ds, test, args, device, epochs=args.epochs, lr=0.05, star_lr=args.star_lr,
               star_epochs=args.star_epochs)
    if not args.skip_cnn:
        cnn = get_model("cnn", in_channels=channels, channels=[4, 8], num_classes=10, image_size=size,
                        flatten=True).to(device)
        family(f"CNN conv4-conv8 (3x3, max pool) - linear {8 * (size // 4) ** 2}-10", cnn, train_ds, test, args, device,
               epochs=args.cnn_epochs, lr=0.05, star_lr=args.star_lr, star_epochs=args.cnn_star_epochs)
    print(f"\ntotal {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
