"""``weightspace zoo build|info|import``: build a model zoo, describe one, convert a public one."""
from __future__ import annotations

import argparse
import json

from ._common import add_common_args, add_output_arg, print_json

NAME = "zoo"
HELP = "build a model zoo (CNNs or SIREN INRs, many at once), describe one, or convert a public zoo"
DESCRIPTION = """Model zoos: many small trained models stored together, to train metanetworks on.

  weightspace zoo build cnn --data digits -o zoo-cnn --n 256
  weightspace zoo build cnn --data mnist-idx:DIR -o zoo --n 1000 --workers 2     # one process per core
  weightspace zoo build cnn --data mnist-idx:DIR -o zoo --n 1000 --shard 0/4      # worker 0 of 4
  weightspace zoo build inr --images mnist-idx:DIR -o zoo-inr --fits-per-image 2
  weightspace zoo info zoo-cnn --hist acc.png
  weightspace zoo import smallcnnzoo SRC -o zoo-scz     # weights.npy, layout.csv, metrics.csv
  weightspace zoo import dws SRC -o zoo-dws             # mnist_png_*/<label>/*.pth + splits JSON
  weightspace zoo import nfn SRC -o zoo-nfn --split-points 45000,50000

A zoo is a directory: zoo.json (the card: task, model, dataset, recipe, symmetry, how to
cite), models/shard-XXXXX.safetensors (tensors with a leading models x checkpoints axis)
and metrics.csv (one row per model and checkpoint). Shards are written atomically and
their metrics appended after, so a killed build resumes where it stopped: run the same
command again. --shard i/N builds the shards s with s % N == i, so N workers of any
launcher (a SLURM array, Ray, a shell loop) build disjoint parts of one zoo; --workers N
runs N such workers on this machine. Read a zoo in Python with weightspace.zoo.ZooDataset."""


BUILD_DESCRIPTION = """Train a zoo, many models at once; resumes an interrupted build in -o DIR.

How long, on a CPU: a default cnn build (8 epochs, checkpoints 0,1,2,4,8, 64 models per
shard, one process) on a 2-core AVX-512 Xeon shared with other jobs (docs/isa.md), per 100
models: digits (1,400 8x8 images) 11 s with one torch thread (--threads 1, the default),
2 to 5 min with a thread per core (--threads 2); MNIST-sized data (8,000 28x28 training
images) about 8 min with one thread, 27 min with two (the build's own estimates; MNIST's
60,000 images take 7.5 times as many steps, about 1 h with one thread). Tiny models leave
a second thread idle and a busy core stalls it: to use more cores, prefer --workers N (one
process per core, one thread each). An AVX2 CPU
is slower; WEIGHTSPACE_GCONV=auto (default) runs our convolutions or torch's, whichever
it measures faster. A build prints its own estimate after its first steps."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from weightspace.zoo import ZOO_FAMILIES, ZOO_IMPORTERS

    sub = p.add_subparsers(dest="zoo_command", metavar="{build,info,import}")
    fmt = argparse.RawDescriptionHelpFormatter

    b = sub.add_parser("build", help="train a zoo: cnn (small CNNs) or inr (SIREN image fits)", formatter_class=fmt,
                       description=BUILD_DESCRIPTION)
    b.add_argument("kind", choices=("cnn", "inr"), help="cnn: small CNNs on --data; inr: SIRENs fitted to --images")
    add_output_arg(b, metavar="DIR", help="the zoo directory (created; resumed if it holds this zoo)")
    b.add_argument("--n", type=int, default=None,
                   help="number of models (cnn: needed; inr: the first N images, default all)")
    b.add_argument("--shard", default="0/1", metavar="i/N", help="build only shards s with s %% N == i (default: 0/1)")
    b.add_argument("--workers", type=int, default=1, metavar="N",
                   help="processes building disjoint shards at once on this machine (the shards i/N), each "
                        "with cores/N threads; one per core is fastest on a CPU (default: 1)")
    b.add_argument("--models-per-shard", type=int, default=None, metavar="K",
                   help="models per shard file, trained together (default: cnn 64, inr 256)")
    b.add_argument("--recipe", metavar="JSON", default=None,
                   help="recipe overrides as JSON, e.g. '{\"lr_range\": [1e-3, 1e-2]}' (see zoo.json of a zoo)")
    g = b.add_argument_group("cnn")
    g.add_argument("--data", metavar="D", help="training data: digits, mnist-idx:DIR or package.module:callable")
    g.add_argument("--checkpoints", default="0,1,2,4,8", metavar="E,E,...",
                   help="epochs at which to keep weights and metrics (default: 0,1,2,4,8)")
    g.add_argument("--image-size", type=int, default=None, metavar="S", help="resize images to S x S first")
    g.add_argument("--family", default=None, choices=ZOO_FAMILIES.names(),
                   help="; ".join(f"{e.name}: {e.description}" for e in ZOO_FAMILIES.entries()))
    g.add_argument("--channels", default=None, metavar="C,C,C", help="channels of the convolutions (default: 16,16,16)")
    g.add_argument("--batch-size", type=int, default=None, help="examples per step (default: 32)")
    g = b.add_argument_group("inr")
    g.add_argument("--images", metavar="D", help="images to fit: digits, mnist-idx:DIR or package.module:callable")
    g.add_argument("--split", default="all", metavar="{train,test,all}", help="split of --images (default: all)")
    g.add_argument("--fits-per-image", type=int, default=None, help="INRs per image from different seeds (default: 1)")
    g.add_argument("--steps", type=int, default=None, help="most Adam steps per INR (default: 500)")
    g.add_argument("--lr", type=float, default=None, help="learning rate (default: 3e-3)")
    g.add_argument("--psnr-stop", type=float, default=None, help="stop an INR at this PSNR in dB (default: 40)")
    g.add_argument("--w0", type=float, default=None, help="SIREN frequency w0 (default: 30)")
    g.add_argument("--hidden", default=None, metavar="H,H", help="hidden widths (default: 32,32)")
    g = b.add_argument_group("both")
    g.add_argument("--optimizer", default=None, metavar="{adam,sgd}", help="optimizer (default: adam)")
    add_common_args(b)

    i = sub.add_parser("info", help="print a zoo's card, counts and accuracy (or PSNR) distribution",
                       description="Print the card, the counts and the distribution of the target metric.")
    i.add_argument("dir", metavar="DIR", help="the zoo directory")
    i.add_argument("--hist", metavar="FILE.png", default=None, help="also write a histogram of the metric")
    i.add_argument("--metric", default=None, help="column to summarise (default: test_acc, or psnr for INRs)")
    add_common_args(i, device=False, seed=False, quiet=False)

    m = sub.add_parser("import", help=f"convert a public zoo layout ({', '.join(ZOO_IMPORTERS.names())}) into a zoo",
                       formatter_class=fmt, description="Convert a public zoo into this format, keeping its splits.")
    m.add_argument("layout", choices=ZOO_IMPORTERS.names(),
                   help="the source layout: " + "; ".join(f"{e.name}: {e.description}" for e in ZOO_IMPORTERS.entries()))
    m.add_argument("src", metavar="SRC", help="the source directory")
    add_output_arg(m, metavar="DIR", help="the zoo directory to write")
    m.add_argument("--splits", metavar="FILE.json", default=None, help="dws: the splits JSON (default: *split*.json in SRC)")
    m.add_argument("--prefix", default=None, help="nfn: the directory prefix to import (default: the only one)")
    m.add_argument("--split-points", default=None, metavar="VAL,TEST", help="nfn: index split points to keep")
    m.add_argument("--image-size", type=int, default=28, help="smallcnnzoo: input image size to record (default: 28)")
    m.add_argument("--stride", type=int, default=2, help="smallcnnzoo: the convolutions' stride (default: 2)")
    m.add_argument("--activation", default=None,
                   help="smallcnnzoo: import the models with this config.activation (needed when it varies)")
    m.add_argument("--w0", type=float, default=30.0, help="dws, nfn: SIREN w0 to record (default: 30)")
    m.add_argument("--models-per-shard", type=int, default=256, metavar="K", help="models per shard (default: 256)")
    add_common_args(m, device=False, seed=False)


def _ints(text: str | None, flag: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag}: expected comma-separated integers, got {text!r}") from None


def _recipe(args: argparse.Namespace, pairs: dict[str, object]) -> dict[str, object]:
    recipe: dict[str, object] = {}
    if args.recipe:
        try:
            recipe = json.loads(args.recipe)
        except json.JSONDecodeError as e:
            raise ValueError(f"--recipe is not valid JSON ({e.msg}): {args.recipe!r}") from None
        if not isinstance(recipe, dict):
            raise ValueError(f"--recipe must be a JSON object, got {args.recipe!r}")
    recipe.update({k: v for k, v in pairs.items() if v is not None})
    return recipe


def _build(args: argparse.Namespace) -> int:
    from weightspace.zoo import build_cnn_zoo, build_inr_zoo

    progress = not (args.quiet or args.json)
    if args.kind == "cnn":
        if not args.data:
            raise ValueError("zoo build cnn: --data is needed (digits, mnist-idx:DIR or package.module:callable)")
        if args.n is None:
            raise ValueError("zoo build cnn: --n (the number of models) is needed")
        if args.images:
            raise ValueError("zoo build cnn: --images belongs to zoo build inr; give --data")
        from weightspace.zoo import CNN_FAMILIES

        recipe = {**(CNN_FAMILIES[args.family] if args.family else {}),  # --recipe and the flags override it
                  **_recipe(args, {"channels": _ints(args.channels, "--channels"), "batch_size": args.batch_size,
                                   "optimizer": args.optimizer})}
        r = build_cnn_zoo(args.output, args.data, n=args.n, models_per_shard=args.models_per_shard or 64,
                          checkpoints=args.checkpoints, seed=args.seed, shard=args.shard, device=args.device,
                          image_size=args.image_size, recipe=recipe, progress=progress, workers=args.workers)
    else:
        if not args.images:
            raise ValueError("zoo build inr: --images is needed (digits, mnist-idx:DIR or package.module:callable)")
        if args.data:
            raise ValueError("zoo build inr: --data belongs to zoo build cnn; give --images")
        recipe = _recipe(args, {"hidden": _ints(args.hidden, "--hidden"), "steps": args.steps, "lr": args.lr,
                                "psnr_stop": args.psnr_stop, "w0": args.w0, "fits_per_image": args.fits_per_image,
                                "optimizer": args.optimizer})
        r = build_inr_zoo(args.output, args.images, split=args.split, n=args.n,
                          models_per_shard=args.models_per_shard or 256, seed=args.seed, shard=args.shard,
                          device=args.device, recipe=recipe, progress=progress, workers=args.workers)
    if args.json:
        print_json({**r.to_dict(), "models_per_second": r.models_per_second})
        return 0
    if args.quiet:
        return 0
    i, n = r.worker
    done = len(r.built) + len(r.skipped)
    part = f" (shard {i}/{n})" if n > 1 else ""
    pace = f", {r.models_per_second:.2f} models/s" if r.models_built else ""
    kept = f"; kept {len(r.skipped)} already complete" if r.skipped else ""
    whose = "of this worker's" if n > 1 else "of"
    print(f"zoo {r.root}{part}: built {len(r.built)} shards ({r.models_built} models{pace}){kept}; "
          f"{done} {whose} {len(r.shards)} shards done [{r.seconds:.1f} s]")
    print(f"next: weightspace zoo info {r.root}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from weightspace.zoo import format_summary, plot_histogram, zoo_summary

    s = zoo_summary(args.dir, metric=args.metric)
    if args.hist:
        from weightspace.checkpoint import check_output

        check_output(args.hist, [args.dir], fn="zoo info --hist")
        plot_histogram(s, args.hist)
    if args.json:
        print_json({k: v for k, v in s.items() if k != "values"} | {"hist": args.hist})
        return 0
    print(format_summary(s))
    if args.hist:
        print(f"\nwrote {args.hist}")
    return 0


def _import(args: argparse.Namespace) -> int:
    import inspect

    from weightspace.zoo import ZOO_IMPORTERS

    importer = ZOO_IMPORTERS.get(args.layout, caller="zoo import")
    options = {"image_size": args.image_size, "stride": args.stride, "activation": args.activation,
               "splits": args.splits, "prefix": args.prefix, "split_points": args.split_points, "w0": args.w0,
               "models_per_shard": args.models_per_shard, "progress": not (args.quiet or args.json)}
    # each layout takes its own options (the CLI's help says which); the others do not apply to it
    takes = inspect.signature(importer).parameters
    r = importer(args.src, args.output, **{k: v for k, v in options.items() if k in takes})
    if args.json:
        print_json(r.to_dict())
        return 0
    print(f"zoo {r.root}: imported {r.card.n_models} models from {args.layout} layout {args.src} "
          f"({len(r.built)} shards written, {len(r.skipped)} kept) [{r.seconds:.1f} s]")
    if not args.quiet:
        print(f"next: weightspace zoo info {r.root}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.zoo_command == "build":
        return _build(args)
    if args.zoo_command == "info":
        return _info(args)
    if args.zoo_command == "import":
        return _import(args)
    raise ValueError("give a zoo command: build, info or import (see weightspace zoo --help)")
