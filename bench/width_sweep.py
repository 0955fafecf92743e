"""Alignment quality against width: the midpoint barrier of naive, weight, activation and STE
alignment, without and with REPAIR (a BatchNorm reset for BatchNorm networks), for pairs of
networks trained from different seeds at widths x1, x2, x4, x8 of a base width.

    python bench/width_sweep.py                                   # digits, MLP and ResNet-20, 3 pairs
    python bench/width_sweep.py --cache /tmp/ws --plot sweep.png  # networks kept in /tmp/ws
    python bench/width_sweep.py --data mnist-idx:DIR --widths 1 2 4 --epochs 30 1  # MNIST IDX (8,000 / 2,000)
    python bench/width_sweep.py --archs resnet20 --widths 1 2 --no-sweep --wm-study
                                                                  # every weight/activation matching
                                                                  #   idea on narrow BatchNorm ResNets
    python bench/width_sweep.py --tiny                            # seconds: for tests

Base widths: the MLP is ``in-W-W-W-10`` with ``W = 32 * multiplier``; the ResNet-20 (BatchNorm)
has ``width = 0.25 * multiplier`` (4/8/16 channels at x1, 32/64/128 at x8). Each pair is seeds
``(2i, 2i+1)``. The barrier is the midpoint one, ``L(1/2) - (L(0) + L(1)) / 2`` (accuracy: the
drop ``(a(0) + a(1)) / 2 - a(1/2)``), on the test split; REPAIR / the BatchNorm reset uses 500
training images. Prints a markdown table per architecture (mean +- std over the pairs) and
writes a PNG (barrier vs width; solid: without, dashed: with REPAIR / BatchNorm reset).

Time: the default run (digits, 3 pairs, both architectures) took 7.1 minutes cold on a shared
2-core Intel Xeon at load average about 5 (torch 2.13, CPU, one thread): MLP 41 s, ResNet-20
6.2 min. One thread (``--threads``, the default) matters there: two threads ran the ``--tiny``
ResNet part 14 times slower (100 s against 7 s), and the same sweep took 17.5 minutes with two.
Trained networks are cached (``--cache``; default ``weightspace-width-sweep`` in the system's
temporary directory), so a second run only aligns and evaluates. ``--wm-study`` takes 1.5-2
minutes per digits width and about 30 minutes for the three MNIST pairs at that load; ``--tiny``
takes seconds.
"""
from __future__ import annotations

import argparse
import hashlib
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import merging
import weightspace
from merging.matching.starts import from_two_starts
from weightspace.data import load_dataset
from weightspace.models import get_model
from weightspace.training import train_one_cycle

METHODS = ("naive", "weight", "activation", "ste")
ARCHS = ("mlp", "resnet20")
CACHE: Path | None = None


def log(args, *msg) -> None:
    if not args.quiet:
        print(*msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- training
def train(model: nn.Module, ds, *, epochs: int, lr: float, seed: int, batch_size: int = 128) -> dict:
    """``model`` trained from a fresh initialisation seeded by ``seed`` (cached under ``--cache``)."""
    if CACHE is not None:
        shapes = "-".join("x".join(map(str, p.shape)) for p in model.parameters())
        key = hashlib.sha1(f"ws|{type(model).__name__}|{shapes}|{ds.name}|{len(ds)}|{epochs}|{lr}|{seed}|"
                           f"{batch_size}".encode())
        path = CACHE / f"{key.hexdigest()[:16]}.safetensors"
        if path.exists():
            return weightspace.load(path)
    state = train_one_cycle(model, ds, epochs=epochs, lr=lr, seed=seed, batch_size=batch_size)
    if CACHE is not None:
        CACHE.mkdir(parents=True, exist_ok=True)
        weightspace.save(state, path)
    return state


def build(arch: str, mult: int, ds, args) -> nn.Module:
    if arch == "mlp":
        w = int(round(args.mlp_base * mult))
        return get_model("mlp", in_features=int(np.prod(ds.input_shape)), hidden=[w, w, w], out_features=10)
    return get_model("resnet20", width=args.resnet_base * mult, in_channels=ds.input_shape[0],
                     image_size=ds.input_shape[-1], num_classes=10)


def describe(arch: str, mult: int, ds, args) -> str:
    if arch == "mlp":
        w = int(round(args.mlp_base * mult))
        return f"{int(np.prod(ds.input_shape))}-{w}-{w}-{w}-10"
    c = [max(1, int(round(ch * args.resnet_base * mult))) for ch in (16, 32, 64)]
    return "/".join(map(str, c)) + " channels"


# ---------------------------------------------------------------- alignment and barriers
def weight_default(s, a, b, **kw) -> dict:
    """What ``weightspace merge --method weight`` runs: weight matching from two starts."""
    perms = from_two_starts(lambda init: merging.weight_matching_result(s, a, b, init=init, **kw), s, a, b).perms
    return perms


def align(method: str, s, model, a, b, ds, args) -> dict:
    if method == "naive":
        return weightspace.identity_permutation(s)
    if method == "weight":
        return weight_default(s, a, b)
    if method == "activation":
        return merging.activation_matching(s, model, a, b, ds.loader(250), max_examples=args.act_examples)
    return merging.ste_matching(s, model, a, b, ds.loader(128, shuffle=True), epochs=args.ste_epochs,
                                max_steps=args.ste_steps, lr=1e-2)


def endpoints(model, a, b, test) -> tuple[merging.EvalResult, merging.EvalResult]:
    """A's and B's test loss and accuracy, evaluated once per pair (a permutation of B does not
    change its function, so every alignment shares them)."""
    return merging.evaluate(model, a, test), merging.evaluate(model, b, test)


def midpoint(model, a, b_aligned, test, fix, corrected: bool, ends=None) -> tuple[float, float, float]:
    """(loss barrier, accuracy barrier, mean endpoint accuracy) at t = 1/2; ``corrected``: with
    REPAIR / the BatchNorm reset (``merging.repair`` resets the statistics of a BatchNorm
    network); ``ends``: the endpoints' results, if already evaluated."""
    ea, eb = ends if ends is not None else endpoints(model, a, b_aligned, test)
    mid = merging.interpolate(a, b_aligned)
    if corrected:
        mid = merging.repair(model, a, b_aligned, mid, fix)
    m = merging.evaluate(model, mid, test)
    return (m.loss - 0.5 * (ea.loss + eb.loss), 0.5 * (ea.accuracy + eb.accuracy) - m.accuracy,
            0.5 * (ea.accuracy + eb.accuracy))


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and std of the finite values (NaN when there are none)."""
    xs = [x for x in xs if math.isfinite(x)]
    if not xs:
        return math.nan, math.nan
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def pm(xs: list[float], d: int = 3, scale: float = 1.0) -> str:
    m, s = mean_std([scale * x for x in xs])
    return f"{m:.{d}f} ± {s:.{d}f}"


def row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def sweep(arch: str, train_ds, test, fix, args) -> dict:
    """results[(mult, method, corrected)] = {"loss": [...], "acc": [...], "end_acc": [...]}"""
    res: dict = {}
    for mult in args.widths:
        model = build(arch, mult, train_ds, args)
        s = weightspace.trace(model, model.example_input())
        lr = 0.05 if arch == "mlp" else 0.1
        for pair in range(args.pairs):
            t0 = time.time()
            a = train(model, train_ds, epochs=args.epochs[arch], lr=lr, seed=2 * pair)
            b = train(model, train_ds, epochs=args.epochs[arch], lr=lr, seed=2 * pair + 1)
            t_train = time.time() - t0
            ends = endpoints(model, a, b, test)
            for method in METHODS:
                t0 = time.time()
                p = align(method, s, model, a, b, train_ds, args)
                bp = weightspace.permute(s, b, p)
                for corrected in (False, True):
                    lb, ab, end = midpoint(model, a, bp, test, fix, corrected, ends)
                    cell = res.setdefault((mult, method, corrected), {"loss": [], "acc": [], "end": []})
                    cell["loss"].append(lb)
                    cell["acc"].append(ab)
                    cell["end"].append(end)
                log(args, f"{arch} x{mult} pair {pair} {method}: {time.time() - t0:.1f} s "
                    f"(training {t_train:.1f} s)")
    return res


def print_table(arch: str, res: dict, train_ds, args, seconds: float) -> None:
    fixname = "BN reset" if arch == "resnet20" else "REPAIR"
    title = "MLP" if arch == "mlp" else "ResNet-20 (BatchNorm)"
    print(f"\n### {title}, {train_ds.name}, {args.pairs} pairs of seeds, {args.epochs[arch]} epochs "
          f"({seconds:.0f} s)\n")
    print("Midpoint barrier, mean ± std over the pairs: loss (nats) and accuracy drop (points).\n")
    print(row("width", "method", "loss barrier", f"loss barrier + {fixname}", "acc. barrier (pts)",
              f"acc. barrier + {fixname} (pts)", "endpoint acc. (%)"))
    print(row(*["---"] * 7))
    for mult in args.widths:
        for method in METHODS:
            no, yes = res[(mult, method, False)], res[(mult, method, True)]
            print(row(f"x{mult} ({describe(arch, mult, train_ds, args)})", method, pm(no["loss"]), pm(yes["loss"]),
                      pm(no["acc"], 1, 100.0), pm(yes["acc"], 1, 100.0), pm(no["end"], 1, 100.0)))


def plot(results: dict, args, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = list(results)
    fig, axes = plt.subplots(2, len(archs), figsize=(5.5 * len(archs), 7.5), squeeze=False)
    colors = {"naive": "tab:gray", "weight": "tab:blue", "activation": "tab:orange", "ste": "tab:green"}
    for j, arch in enumerate(archs):
        res = results[arch]
        fixname = "BN reset" if arch == "resnet20" else "REPAIR"
        for i, (key, label, scale) in enumerate((("loss", "midpoint loss barrier", 1.0),
                                                 ("acc", "midpoint accuracy drop (pts)", 100.0))):
            ax = axes[i][j]
            for method in METHODS:
                for corrected in (False, True):
                    stats = [mean_std([scale * v for v in res[(m, method, corrected)][key]]) for m in args.widths]
                    ax.errorbar(args.widths, [m for m, _ in stats], yerr=[s for _, s in stats], color=colors[method],
                                linestyle="--" if corrected else "-", marker="o", markersize=3, capsize=3,
                                label=f"{method}{' + ' + fixname if corrected else ''}")
            ax.set_xscale("log", base=2)
            ax.set_xticks(args.widths, [f"x{m}" for m in args.widths])
            ax.axhline(0.0, color="black", linewidth=0.5)
            ax.set_xlabel("width multiplier")
            ax.set_ylabel(label)
            if i == 0:
                ax.set_title("MLP" if arch == "mlp" else "ResNet-20 (BatchNorm)")
            if arch == "resnet20" and key == "loss":
                ax.set_yscale("symlog", linthresh=0.1)
        axes[0][j].legend(fontsize=7, ncol=2)
    data = args.data.split(":")[0]  # "mnist-idx", not the directory it was read from
    fig.suptitle(f"Midpoint barrier vs width ({data}, {args.pairs} seed pairs, mean ± std)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- weight matching on narrow BN nets
def _conv_before_each_batchnorm(state: dict, keys: list[str]):
    """``(prefix, running_var key, conv weight key)`` of each BatchNorm that follows a convolution
    in ``keys`` (the model's state-dict order)."""
    for k in keys:
        if k.endswith(".running_var"):
            p = k[: -len("running_var")]
            conv = next((c for c in reversed(keys[:keys.index(p + "weight")])
                         if c.endswith("weight") and state[c].dim() == 4), None)
            if conv is not None:
                yield p, k, conv


def fold_batchnorm(state: dict, keys: list[str]) -> dict:
    """A copy where each BatchNorm's scale ``gamma / sqrt(var + eps)`` is multiplied into the
    conv weight just before it (by state-dict order) and the BatchNorm becomes the identity
    scale with the folded shift; the network computes the same function (in eval mode).
    ``keys``: the model's own state-dict order (a loaded file may be sorted)."""
    out = dict(state)
    for p, k, conv in _conv_before_each_batchnorm(state, keys):
        scale = state[p + "weight"] / torch.sqrt(state[k] + 1e-5)
        out[conv] = state[conv] * scale.view(-1, 1, 1, 1)
        out[p + "bias"] = state[p + "bias"] - scale * state[p + "running_mean"]
        out[p + "weight"] = torch.ones_like(scale)
        out[p + "running_mean"] = torch.zeros_like(scale)
        out[p + "running_var"] = torch.full_like(scale, 1 - 1e-5)
    return out


def normalise_layers(state: dict) -> dict:
    """A copy where every floating tensor has unit Frobenius norm (each layer counts the same)."""
    return {k: (v / v.norm().clamp_min(1e-12) if v.is_floating_point() and v.dim() > 0 else v)
            for k, v in state.items()}


def whiten_by_batchnorm(state: dict, keys: list[str], shift: bool = False, rows: bool = False) -> dict:
    """A copy where the conv weight just before each BatchNorm (by state-dict order) is divided
    by the BatchNorm's running std ``sqrt(var + eps)``: the map BatchNorm normalises, without
    its scale ``gamma``. ``shift``: BatchNorm's bias also takes the folded mean,
    ``beta - gamma * mean / std``. ``rows``: instead, each output channel's conv weight gets
    unit norm (BatchNorm makes a channel blind to its weight's scale)."""
    out = dict(state)
    for p, k, conv in _conv_before_each_batchnorm(state, keys):
        std = torch.sqrt(state[k] + 1e-5)
        w = state[conv]
        if rows:
            out[conv] = w / w.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            continue
        out[conv] = w / std.view(-1, 1, 1, 1)
        if shift:
            out[p + "bias"] = state[p + "bias"] - state[p + "weight"] * state[p + "running_mean"] / std
    return out


def _wm(s, a, b, init=None, seed=0, **kw):
    return merging.weight_matching_result(s, a, b, init=init, seed=seed, **kw)


def random_starts(s, a, b, n: int) -> dict:
    """The default's two starts and ``n`` random permutations; the best objective."""
    runs = [from_two_starts(lambda init: _wm(s, a, b, init=init), s, a, b)]
    runs += [_wm(s, a, b, init=weightspace.random_permutation(s, seed=1000 + r), seed=r) for r in range(n)]
    return max(runs, key=lambda r: r.objective).perms


def local_search(s, a, b, iters: int, k: int = 2) -> dict:
    """Iterated local search: from the default, shuffle ``k`` random groups, descend again, keep
    it if the objective rose; ``iters`` times."""
    cur = from_two_starts(lambda init: _wm(s, a, b, init=init), s, a, b)
    gen = torch.Generator().manual_seed(0)
    names = list(s.groups)
    for it in range(iters):
        init = dict(cur.perms)
        for gi in torch.randperm(len(names), generator=gen)[:k].tolist():
            init[names[gi]] = torch.randperm(s.groups[names[gi]].size, generator=gen)
        cand = _wm(s, a, b, init=init, seed=it)
        if cand.objective > cur.objective:
            cur = cand
    return cur.perms


def scored(s, model, a, b, train_ds, fix, args, activations: bool) -> dict:
    """(e1) :func:`merging.scored_weight_matching`, 20 candidates, reset on the 500 repair images,
    scored on 500 others; (e2) the same with activation matching at the three kinds of sites
    among the candidates."""
    score = [next(iter(train_ds.loader(500, shuffle=True, seed=1)))]
    p, info = merging.scored_weight_matching(s, model, a, b, fix, candidates=20, score_data=score, return_info=True)
    if not activations:
        return p
    cands = [p] + [merging.activation_matching(s, model, a, b, train_ds.loader(250), max_examples=args.act_examples,
                                               sites=sites) for sites in ("outputs", "inputs", "both")]
    losses = [info["losses"][info["picked"]]]
    for q in cands[1:]:
        mid = merging.reset_batchnorm(model, merging.interpolate(a, weightspace.permute(s, b, q)), fix)
        losses.append(merging.evaluate(model, mid, score).loss)
    return cands[min(range(len(cands)), key=losses.__getitem__)]


STUDY = ("naive", "(a) weight, two starts (default)", "(b1) restarts=5 (group order), best objective",
         "(b2) 50 random starts, best objective", "(b3) local search, 100 moves of 2 groups",
         "(a1) Sinkhorn start", "(a2) Frank-Wolfe start (C2M3, two models)", "(c1) BN scale folded into conv",
         "(c2) unit-norm layers", "(c3) conv whitened by BN running std", "(c4) whitened + BN shift folded", "(c5) conv rows unit norm",
         "(c6) BN statistics in the similarity", "(e1) 20 weight matchings, scored on data",
         "(e2) (e1) + activation matchings, scored on data", "activation, layer outputs (old default)",
         "activation, layer inputs (new default)", "activation, both")


def study_align(v: str, s, model, order, a, b, train_ds, fix, args) -> dict:
    tag = v.split(" ")[0]
    act = lambda sites: merging.activation_matching(s, model, a, b, train_ds.loader(250),  # noqa: E731
                                                    max_examples=args.act_examples, sites=sites)
    if v == "naive":
        return weightspace.identity_permutation(s)
    if v.startswith("activation"):
        return act("outputs" if "outputs" in v else "inputs" if "inputs" in v else "both")
    if tag == "(a)":
        return weight_default(s, a, b)
    if tag == "(b1)":
        return merging.weight_matching(s, a, b, restarts=5)
    if tag == "(b2)":
        return random_starts(s, a, b, 50)
    if tag == "(b3)":
        return local_search(s, a, b, 100)
    if tag == "(a1)":
        return merging.weight_matching(s, a, b, init=merging.sinkhorn_start(s, a, b))
    if tag == "(a2)":
        return merging.weight_matching(s, a, b, init=merging.pairwise_permutation(merging.c2m3_matching(s, [a, b]),
                                                                                   1, 0))
    if tag in ("(c1)", "(c3)", "(c4)", "(c5)"):
        f = {"(c1)": lambda t: fold_batchnorm(t, order), "(c3)": lambda t: whiten_by_batchnorm(t, order),
             "(c4)": lambda t: whiten_by_batchnorm(t, order, shift=True),
             "(c5)": lambda t: whiten_by_batchnorm(t, order, rows=True)}[tag]
        return weight_default(s, f(a), f(b))
    if tag == "(c2)":
        return weight_default(s, normalise_layers(a), normalise_layers(b))
    if tag == "(c6)":
        return weight_default(s, a, b, include_buffers=True)
    if tag in ("(e1)", "(e2)"):
        return scored(s, model, a, b, train_ds, fix, args, tag == "(e2)")
    raise ValueError(v)


def wm_study(train_ds, test, fix, args) -> None:
    """Every idea for weight matching on narrow BatchNorm ResNets, at each of ``--widths``, all
    with the BatchNorm reset; ``--study`` picks some (by their tags, e.g. ``(a1) (e1)``)."""
    variants = [v for v in STUDY if v == "naive" or not args.study or v.split(" ")[0] in args.study
                or v in args.study]
    for mult in args.widths:
        model = build("resnet20", mult, train_ds, args)
        s = weightspace.trace(model, model.example_input())
        order = list(model.state_dict())
        res: dict = {v: [] for v in variants}
        t0 = time.time()
        for pair in range(args.pairs):
            a = train(model, train_ds, epochs=args.epochs["resnet20"], lr=0.1, seed=2 * pair)
            b = train(model, train_ds, epochs=args.epochs["resnet20"], lr=0.1, seed=2 * pair + 1)
            ends = endpoints(model, a, b, test)
            for v in variants:
                t1 = time.time()
                p = study_align(v, s, model, order, a, b, train_ds, fix, args)
                sec = time.time() - t1
                lb, ab, _ = midpoint(model, a, weightspace.permute(s, b, p), test, fix, True, ends)
                res[v].append((lb, ab, merging.matching_objective(s, a, b, p), sec))
                log(args, f"wm-study x{mult} pair {pair} {v}: loss {lb:.3f}, {sec:.1f} s")
        print(f"\n### Weight matching on the ResNet-20 x{mult} ({describe('resnet20', mult, train_ds, args)}), "
              f"{train_ds.name}, {args.epochs['resnet20']} epochs, {args.pairs} pairs, all with the BatchNorm reset "
              f"({time.time() - t0:.0f} s)\n")
        print(row("alignment (+ BN reset)", "loss barrier", "acc. barrier (pts)", "share of naive loss barrier removed",
                  "per pair (loss)", "objective", "time (s)"))
        print(row(*["---"] * 7))
        naive = [r[0] for r in res["naive"]]
        for v in variants:
            lbs = [r[0] for r in res[v]]
            removed = [1 - x / n if n > 0 else math.nan for x, n in zip(lbs, naive)]
            print(row(v, pm(lbs), pm([r[1] for r in res[v]], 1, 100.0), pm(removed, 2),
                      ", ".join(f"{x:.3f}" for x in lbs), f"{statistics.mean(r[2] for r in res[v]):.1f}",
                      f"{statistics.mean(r[3] for r in res[v]):.2f}"))


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="digits", help="digits (default) or mnist-idx:DIR (the MNIST IDX files)")
    ap.add_argument("--archs", nargs="+", choices=ARCHS, default=list(ARCHS))
    ap.add_argument("--widths", type=int, nargs="+", default=[1, 2, 4, 8], help="multipliers of the base width")
    ap.add_argument("--mlp-base", type=int, default=32, help="MLP hidden width at x1 (default: 32)")
    ap.add_argument("--resnet-base", type=float, default=0.25, help="ResNet-20 width at x1 (default: 0.25)")
    ap.add_argument("--epochs", type=int, nargs="+", default=None,
                    help="training epochs: one number for both, or MLP then ResNet (default: 30 6)")
    ap.add_argument("--pairs", type=int, default=3, help="pairs of seeds (0,1), (2,3), ... (default: 3)")
    ap.add_argument("--ste-epochs", type=int, default=1)
    ap.add_argument("--ste-steps", type=int, default=None, help="cap on STE steps (default: none)")
    ap.add_argument("--act-examples", type=int, default=1000, help="examples for activation matching")
    ap.add_argument("--plot", default="width_sweep.png", help="PNG to write (default: width_sweep.png)")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "weightspace-width-sweep"),
                    help="directory keeping trained networks between runs (default: weightspace-width-sweep in "
                         "the system's temporary directory; '' for none)")
    ap.add_argument("--wm-study", action="store_true",
                    help="also: weight matching variants on the ResNet-20 pairs at each width")
    ap.add_argument("--study", nargs="+", default=None, metavar="TAG",
                    help="with --wm-study: only these variants, by tag ((a1) ...); default all")
    ap.add_argument("--no-sweep", action="store_true", help="skip the sweep (with --wm-study: the study only)")
    ap.add_argument("--tiny", action="store_true", help="a few seconds: tiny nets, 1 epoch, 2 pairs, x1 and x2")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default: 1; on a shared 2-core machine two threads ran the tiny "
                         "ResNet sweep 14x slower than one)")
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = ap.parse_args(argv)
    if args.pairs < 1 or any(w < 1 for w in args.widths):
        ap.error("--pairs and --widths must be positive")
    torch.set_num_threads(max(1, args.threads))
    global CACHE
    CACHE = Path(args.cache) if args.cache else None
    epochs = args.epochs or ([1] if args.tiny else [30, 6])
    args.epochs = {"mlp": epochs[0], "resnet20": epochs[-1]}
    train_ds = load_dataset(args.data, split="train")
    test_ds = load_dataset(args.data, split="test")
    if args.tiny:
        given = sys.argv[1:] if argv is None else argv
        args.widths = args.widths if "--widths" in given else [1, 2]
        args.pairs = args.pairs if "--pairs" in given else 2
        args.mlp_base, args.resnet_base = 8, 0.125
        args.ste_steps, args.act_examples = 2, 128
        train_ds = train_ds.subset(slice(0, 256))
        test_ds = test_ds.subset(slice(0, 128))
    test = test_ds.loader(1000)
    fix = train_ds.loader(500, shuffle=True, seed=0)
    fix = [next(iter(fix))]  # 500 training images, the same for every point
    print(f"{args.data}, torch {torch.__version__}, {torch.get_num_threads()} threads, train {len(train_ds)} / "
          f"test {len(test_ds)} images, widths {' '.join(f'x{w}' for w in args.widths)}, seeds 0..{2 * args.pairs - 1}, "
          f"cache {CACHE or 'none'}")
    results = {}
    t_all = time.time()
    for arch in ([] if args.no_sweep else args.archs):
        t0 = time.time()
        results[arch] = sweep(arch, train_ds, test, fix, args)
        print_table(arch, results[arch], train_ds, args, time.time() - t0)
    if args.plot and results:
        plot(results, args, args.plot)
        print(f"\nplot: {args.plot}")
    if args.wm_study:
        wm_study(train_ds, test, fix, args)
    print(f"\ntotal {time.time() - t_all:.0f} s")


if __name__ == "__main__":
    main()
