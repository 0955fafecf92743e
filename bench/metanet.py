"""Metanetworks on model zoos: INR classification, accuracy prediction, training throughput,
against the ``nfn`` package's NP model and our invariant baselines in the same run.

    # the table in docs/benchmarks.md: one H100, 10,000 MNIST INRs, about 6 min with zoo building
    python bench/metanet.py --mnist DIR --n-images 10000 --epochs 12 --batch-size 128 \\
        --probes 32 --cnn-data mnist-idx:DIR --cnn-models 256 --cnn-epochs 100 \\
        --cnn-batch-size 32 --models-per-shard 1024 --device cuda --quiet --out /tmp/bench-metanet
    # sized down for a 2-core CPU (INR part and throughput only)
    python bench/metanet.py --mnist DIR --n-images 1000 --epochs 5 --hidden gnn=32 \\
        --methods gnn,np,nfn-np,statnn,mlp --probes 16 --skip-cnn --throughput-steps 5
    # accuracy prediction on this 2-core CPU: a 768-CNN MNIST zoo at 8x8 (25 min on 2 x 1 thread,
    # built once with `weightspace zoo build cnn --n 768 --image-size 8 --data mnist-idx:...`),
    # gnn (library defaults: 32 data probes + weight statistics) about 15 min, statnn + np 10 min
    python bench/metanet.py --skip-inr --skip-throughput --cnn-zoo out/cnn-mnist8-768 \
        --cnn-methods gnn,statnn,np --hidden gnn=32 --cnn-epochs 12 --cnn-patience 5 --cnn-lr 1e-3 \
        --threads 1 --quiet

(a) **INR classification**: a zoo of SIRENs (2-32-32-1, ``w0`` 30), one per MNIST image and
each from its own random initialisation (as DWSNets and NFN build theirs), split by image
80/10/10; every method trains on the same split with the same epochs, batch, learning rate,
permutation augmentation and early stopping, and is scored on the test images. The `nfn`
NP model is three ``nfn.layers.NPLinear`` (``io_embed=True``), ``NPPool`` and an MLP head,
sized to the parameter count of our GNN, trained by the same loop. (b) **accuracy
prediction** on a zoo of small CNNs (hyper-parameters drawn per model, several epochs kept
per model; split by model): Kendall tau and R^2 on the test models. (c) **throughput**:
training graphs (networks) per second on the INR zoo, augmentation and batching included,
ours against the `nfn` NP model of the same parameter count.

Zoos are built under ``--out`` (resumed and reused when there; ``--zoo`` / ``--cnn-zoo``
point at zoos built elsewhere). Prints markdown tables; ``--json FILE`` keeps the numbers.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from graphs import permute, random_permutation
from weightspace.metanet import (
    ARCHS,
    augmentation_seed,
    collate_networks,
    metanet_loss,
    metanet_metrics,
    layer_scales,
    LoadedZoo,
    default_hidden,
    train_metanet,
)
from weightspace.zoo import build_cnn_zoo, build_inr_zoo

OURS_INR = ("gnn", "transformer", "dws", "np")
BASELINES = ("statnn", "mlp")


def row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


# ============================================================================ the nfn NP model
class NFNClassifier(nn.Module):
    """The ``nfn`` package's NP metanetwork: NPLinear x3 (io_embed) + ReLU, NPPool, MLP head;
    inputs divided by the same per-layer scales our weight-space models use."""

    def __init__(self, spec_example, scales: list[float], channels: int, head: int, out: int) -> None:
        super().__init__()
        from nfn.common import WeightSpaceFeatures, network_spec_from_wsfeat
        from nfn.layers import NPLinear, NPPool, TupleOp

        self.WSF = WeightSpaceFeatures
        spec = network_spec_from_wsfeat(WeightSpaceFeatures(*spec_example))
        self.register_buffer("scales", torch.tensor(scales, dtype=torch.float32))
        self.body = nn.Sequential(NPLinear(spec, 1, channels, io_embed=True), TupleOp(nn.ReLU()),
                                  NPLinear(spec, channels, channels, io_embed=True), TupleOp(nn.ReLU()),
                                  NPLinear(spec, channels, channels, io_embed=True), TupleOp(nn.ReLU()),
                                  NPPool(spec))
        width = NPPool.get_num_outs(spec) * channels
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(width, head), nn.ReLU(), nn.Linear(head, out))

    def forward(self, x) -> torch.Tensor:
        L = len(x.weights)
        wsf = self.WSF(tuple(w / self.scales[i] for i, w in enumerate(x.weights)),
                       tuple(b / self.scales[L + i] for i, b in enumerate(x.biases)))
        return self.head(self.body(wsf))


def _nparams(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def nfn_model(zoo: LoadedZoo, out: int, target_params: int) -> NFNClassifier:
    """The nfn NP model whose parameter count is closest to ``target_params``."""
    from weightspace.metanet import weight_tensors

    w, b = weight_tensors(zoo.splits["train"].states[0])
    example = ([t[None, None] for t in w], [t[None, None] for t in b])
    scales = layer_scales(zoo.splits["train"].states[:512])
    best = None
    for c in (4, 8, 12, 16, 24, 32, 48, 64):
        for head in (64, 128, 256, 512, 1000):
            n = _nparams(NFNClassifier(example, scales, c, head, out))
            if best is None or abs(n - target_params) < abs(best[0] - target_params):
                best = (n, c, head)
    torch.manual_seed(0)
    return NFNClassifier(example, scales, best[1], best[2], out)


def train_external(model: nn.Module, zoo: LoadedZoo, *, task: str, epochs: int, lr: float, batch_size: int,
                   patience: int, seed: int, device: torch.device, augment: bool = True) -> dict:
    """The recipe of :func:`weightspace.metanet.train_metanet` (AdamW, clip 1, same batch order and
    augmentation, best on val) for a model that reads the ``np`` batches."""
    from torch.utils.data import DistributedSampler

    t0 = time.perf_counter()
    train, val, test = zoo.splits["train"], zoo.splits["val"], zoo.splits["test"]
    model = model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sampler = DistributedSampler(range(len(train.states)), num_replicas=1, rank=0, shuffle=True, seed=seed)
    best, best_state, best_epoch, bad = math.inf, None, 0, 0

    @torch.no_grad()
    def predict(split):
        model.eval()
        return torch.cat([model(collate_networks("np", zoo.structure, split.states[i:i + 256], device)).float().cpu()
                          for i in range(0, len(split.states), 256)])

    for epoch in range(1, epochs + 1):
        model.train()
        sampler.set_epoch(epoch)
        order = list(sampler)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            states = [train.states[j] for j in idx]
            if augment:
                states = [permute(zoo.structure, s, random_permutation(zoo.structure, seed=augmentation_seed(seed, epoch, j)))
                          for s, j in zip(states, idx)]
            loss = metanet_loss(task, model(collate_networks("np", zoo.structure, states, device)).float(),
                         train.targets[idx].to(device))
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        vm = metanet_metrics(task, predict(val), val.targets)
        if vm["loss"] < best - 1e-12:
            best, best_epoch, bad = vm["loss"], epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= patience:
                break
    model.load_state_dict(best_state)
    return {"metrics": metanet_metrics(task, predict(test), test.targets), "num_params": _nparams(model),
            "seconds": time.perf_counter() - t0, "best_epoch": best_epoch}


# ============================================================================ sections
def build_zoos(args) -> tuple[Path | None, Path | None]:
    out = Path(args.out)
    inr = cnn = None
    if not args.skip_inr or not args.skip_throughput:
        inr = Path(args.zoo) if args.zoo else out / f"inr-{args.n_images}x{args.fits_per_image}"
        if not args.zoo:
            t = time.perf_counter()
            recipe = {"steps": args.inr_steps, "psnr_stop": args.psnr_stop, "fits_per_image": args.fits_per_image}
            build_inr_zoo(inr, args.images, n=args.n_images, device=args.device, recipe=recipe,
                          models_per_shard=args.models_per_shard, progress=not args.quiet)
            print(f"INR zoo: {inr} ({time.perf_counter() - t:.0f} s incl. any reuse)", file=sys.stderr)
    if not args.skip_cnn:
        size = f"-{args.cnn_image_size}px" if args.cnn_image_size else ""
        cnn = Path(args.cnn_zoo) if args.cnn_zoo else out / f"cnn-{args.cnn_models}{size}"
        if not args.cnn_zoo:
            t = time.perf_counter()
            build_cnn_zoo(cnn, args.cnn_data, n=args.cnn_models, checkpoints=args.cnn_checkpoints,
                          device=args.device, progress=not args.quiet, models_per_shard=args.models_per_shard,
                          image_size=args.cnn_image_size)
            print(f"CNN zoo: {cnn} ({time.perf_counter() - t:.0f} s incl. any reuse)", file=sys.stderr)
    return inr, cnn


def _inr_recipe(zoo_dir: Path) -> str:
    card = json.loads((zoo_dir / "zoo.json").read_text())
    r, d = card.get("recipe", {}), card.get("dataset", {})
    import csv

    with open(zoo_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    psnr = sorted(float(x["psnr"]) for x in rows)
    steps = sorted(int(x["steps"]) for x in rows)
    med = lambda v: v[len(v) // 2]
    return (f"{card.get('n_models')} SIRENs {card['model']['kwargs']['hidden']} w0 {r.get('w0')} on "
            f"{d.get('n_images')} images of {d.get('spec')}, {r.get('fits_per_image')} fit(s) per image, each from "
            f"its own initialisation; full-batch Adam lr {r.get('lr')}, at most {r.get('steps')} steps, stop at "
            f"PSNR {r.get('psnr_stop')} dB; median PSNR {med(psnr):.1f} dB (min {psnr[0]:.1f}), median steps "
            f"{med(steps)}")


def bench_inr(args, zoo_dir: Path, results: dict) -> list[str]:
    dev = torch.device(args.device)
    kw = {"task": "class", "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
          "patience": args.patience, "seed": args.seed, "device": args.device, "progress": not args.quiet}
    lines = [(f"**INR classification** ({_inr_recipe(zoo_dir)}; {args.epochs} epochs max, batch "
              f"{args.batch_size}, lr {args.lr}, device {args.device})"), "",
             row("method", "test accuracy", "parameters", "training time (s)", "best epoch"),
             row("---", "---", "---", "---", "---")]
    runs = [(a, 0) for a in args.methods if a in OURS_INR]
    if args.probes:
        runs.insert(1, ("gnn", args.probes))
    gnn_params = None
    for arch, probes in runs + [(a, 0) for a in BASELINES if a in args.methods]:
        r = train_metanet(args.zoo_obj_path, arch=arch, probes=probes, hidden=args.hidden.get(arch), **kw)
        name = f"ours: {arch}" + (f" + {probes} probes" if probes else "") if arch not in BASELINES else \
            f"baseline: {arch}"
        if arch == "gnn" and not probes:
            gnn_params = r.num_params
        acc = r.metrics["test"]["accuracy"]
        results.setdefault("inr", []).append({"method": name, "test_accuracy": acc, "num_params": r.num_params,
                                              "seconds": r.seconds, "best_epoch": r.best_epoch,
                                              "val": r.metrics["val"], "history": r.history,
                                              "loss": args.cnn_loss, "schedule": args.cnn_schedule,
                                              "select": args.cnn_select})
        lines.append(row(name, f"{100 * acc:.1f}%", f"{r.num_params:,}", f"{r.seconds:.0f}", r.best_epoch))
        print(lines[-1], file=sys.stderr)
    if "nfn-np" in args.methods and not _have_nfn():
        lines.append(row("`nfn` NP", "skipped: the `nfn` package is not installed (pip install nfn)", "", "", ""))
    elif "nfn-np" in args.methods:
        zoo = LoadedZoo(zoo_dir, "class", None)
        target = gnn_params or _nparams(_build_gnn(zoo.num_classes, args))
        m = nfn_model(zoo, zoo.num_classes, target)
        torch.manual_seed(args.seed)
        r = train_external(m, zoo, task="class", epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                           patience=args.patience, seed=args.seed, device=dev)
        acc = r["metrics"]["accuracy"]
        results.setdefault("inr", []).append({"method": "nfn NP", "test_accuracy": acc, **{
            k: r[k] for k in ("num_params", "seconds", "best_epoch")}})
        lines.append(row("`nfn` NP (NPLinear x3, io_embed)", f"{100 * acc:.1f}%", f"{r['num_params']:,}",
                         f"{r['seconds']:.0f}", r["best_epoch"]))
    return lines


def _have_nfn() -> bool:
    try:
        import nfn  # noqa: F401
    except ImportError:
        return False
    return True


def _build_gnn(out: int, args):
    from weightspace.nn import GraphMetanet

    return GraphMetanet(hidden=args.hidden.get("gnn") or default_hidden("gnn"), out_channels=out)


def _cnn_runs(args) -> list[tuple[str, str, object, object]]:
    """``(name, arch, probes, stats)`` of each accuracy-prediction run: the library defaults
    (``auto``) for every method, plus the ``--cnn-ablate`` variants of the graph archs."""
    runs = []
    for arch in args.cnn_methods:
        runs.append((arch, arch, "auto", "auto"))
        if arch in ("gnn", "transformer"):
            for v in args.cnn_ablate:
                probes, stats = {"no-probes": (0, "auto"), "no-stats": ("auto", False),
                                 "weights-only": (0, False)}[v]
                runs.append((f"{arch}, {v.replace('-', ' ')}", arch, probes, stats))
    return runs


_CNN_HP = {"epochs": ("cnn_epochs", 30), "batch_size": ("cnn_batch_size", 32), "patience": ("cnn_patience", 15),
           "lr": ("cnn_lr", None)}


def _cnn_hparams(args, arch: str) -> dict:
    """Epochs, batch, patience and learning rate of one accuracy-prediction run: the flags given,
    else the bench's defaults (30, 32, 15, ``--lr``), except for probestat, whose defaults are the
    library's (:func:`train_metanet` with ``None``)."""
    out = {}
    for key, (flag, default) in _CNN_HP.items():
        v = getattr(args, flag)
        if v is None and arch != "probestat":
            v = args.lr if key == "lr" else default
        out[key] = v
    return out


def _hp_text(args) -> str:
    hp = _cnn_hparams(args, "gnn")
    text = f"{hp['epochs']} epochs max, batch {hp['batch_size']}, lr {hp['lr']}, patience {hp['patience']}"
    if "probestat" in args.cnn_methods:
        from weightspace.metanet import train_defaults

        ps = {k: v if v is not None else train_defaults("probestat")[k]
              for k, v in _cnn_hparams(args, "probestat").items()}
        text += (f" (probestat: {ps['epochs']} epochs max, batch {ps['batch_size']}, lr {ps['lr']}, "
                 f"patience {ps['patience']})")
    return text


def bench_cnn(args, zoo_dir: Path, results: dict) -> list[str]:
    from weightspace.metanet import evaluate_metanet

    card = json.loads((zoo_dir / "zoo.json").read_text())
    n_models, ckpts = card.get("n_models"), card.get("checkpoints")
    lines = [(f"**Accuracy prediction** (CNN zoo {zoo_dir.name}: {n_models} models x checkpoints {ckpts} on "
              f"{card.get('dataset', {}).get('spec')} at {card.get('input_shape')}, every checkpoint a network; split "
              f"by model; {_hp_text(args)}; tau and R^2 "
              f"over all test checkpoints, and over the last checkpoint of each test model)"), "",
             row("method", "probes", "stats", "Kendall tau (all ckpts)", "R^2 (all ckpts)", "test networks",
                 "Kendall tau (last ckpt)", "test models", "parameters", "training time (s)"),
             row(*["---"] * 10)]
    for name, arch, probes, stats in _cnn_runs(args):
        hp = _cnn_hparams(args, arch)
        r = train_metanet(zoo_dir, task="accuracy", arch=arch, **hp, seed=args.seed,
                          device=args.device, hidden=args.hidden.get(arch), progress=not args.quiet,
                          probes=probes, stats=stats, probe_source=args.cnn_probe_source,
                          loss=args.cnn_loss, schedule=args.cnn_schedule, select=args.cnn_select)
        split = "test" if r.metrics["test"] else "val"   # a tiny zoo may have no test models
        m = r.metrics[split]
        last = evaluate_metanet(r, zoo_dir, split=split, checkpoints="last", device=args.device)
        n_all = evaluate_metanet(r, zoo_dir, split=split, device=args.device)["n"]
        cfg = r.config
        results.setdefault("cnn", []).append({"method": name, "split": split, **m, "n": n_all,
                                              "last": last, "probes": cfg.get("probes", 0),
                                              "probe_source": cfg.get("probe_source"),
                                              "stats": "stats_mean" in cfg or bool(cfg.get("stats")),
                                              "num_params": r.num_params,
                                              "seconds": r.seconds, "best_epoch": r.best_epoch,
                                              "val": r.metrics["val"], "history": r.history,
                                              "loss": args.cnn_loss, "schedule": args.cnn_schedule,
                                              "select": args.cnn_select, **hp})
        probe_cell = (f"{cfg['probes']} ({cfg['probe_source']})" if cfg.get("probes") else "0")
        has_probes = arch in ("gnn", "transformer", "probestat")
        lines.append(row(name, probe_cell if has_probes else "-",
                         ("yes" if "stats_mean" in cfg or cfg.get("stats") else "no") if has_probes else "-",
                         f"{m['kendall_tau']:.3f}", f"{m['r2']:.3f}", n_all, f"{last['kendall_tau']:.3f}",
                         last["n"], f"{r.num_params:,}", f"{r.seconds:.0f}"))
        print(lines[-1], file=sys.stderr)
    return lines


def bench_throughput(args, zoo_dir: Path, results: dict) -> list[str]:
    """Training graphs per second: augmentation, batching and the optimizer step included."""
    from weightspace.metanet import weight_tensors, build_metanet
    from weightspace.nn import NetworkSpec

    dev = torch.device(args.device)
    zoo = LoadedZoo(zoo_dir, "class", None)
    train = zoo.splits["train"]
    B, steps = args.batch_size, args.throughput_steps
    out = zoo.num_classes
    w, b = weight_tensors(train.states[0])
    base = {"task": "class", "out": out, "num_layers": 3, "spec": NetworkSpec.from_tensors(w, b).to_dict(),
            "scales": layer_scales(train.states[:512])}
    models = {}
    for arch in ("gnn", "np"):
        torch.manual_seed(0)
        models[f"ours: {arch}"] = (arch, build_metanet({**base, "arch": arch,
                                                       "hidden": args.hidden.get(arch) or default_hidden(arch)}))
    if _have_nfn():
        models["`nfn` NP, same parameters as ours: gnn"] = ("np", nfn_model(zoo, out,
                                                                            _nparams(models["ours: gnn"][1])))
    lines = [(f"**Training throughput** (INR zoo, batch {B}, {steps} steps after 3 warm-up steps, device "
              f"{args.device}, {torch.get_num_threads()} threads)"), "",
             row("method", "parameters", "graphs/s"), row("---", "---", "---")]
    for name, (arch, model) in models.items():
        model = model.to(dev).train()
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr)

        def step(k: int, model=model, arch=arch, opt=opt) -> None:
            idx = [(k * B + j) % len(train.states) for j in range(B)]
            states = [permute(zoo.structure, train.states[j], random_permutation(zoo.structure, seed=k * B + j))
                      for j in idx]
            loss = metanet_loss("class", model(collate_networks(arch, zoo.structure, states, dev)).float(),
                         train.targets[idx].to(dev))
            opt.zero_grad()
            loss.backward()
            opt.step()

        for k in range(3):
            step(k)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for k in range(steps):
            step(3 + k)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        gps = steps * B / (time.perf_counter() - t)
        results.setdefault("throughput", []).append({"method": name, "num_params": _nparams(model),
                                                     "graphs_per_s": gps})
        lines.append(row(name, f"{_nparams(model):,}", f"{gps:,.0f}"))
        print(lines[-1], file=sys.stderr)
    return lines


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mnist", default=None, metavar="DIR", help="MNIST IDX directory (default: digits)")
    p.add_argument("--out", default="/tmp/bench-metanet", help="where zoos are built and reused")
    p.add_argument("--zoo", default=None, metavar="DIR", help="an INR zoo built already (skips building)")
    p.add_argument("--cnn-zoo", default=None, metavar="DIR", help="a CNN zoo built already (skips building)")
    p.add_argument("--n-images", type=int, default=2000, help="images of the INR zoo (default: 2000)")
    p.add_argument("--fits-per-image", type=int, default=1, help="independent SIREN fits per image (default: 1)")
    p.add_argument("--inr-steps", type=int, default=500, help="most fitting steps per SIREN (default: 500)")
    p.add_argument("--psnr-stop", type=float, default=40.0, help="stop fitting at this PSNR (default: 40)")
    p.add_argument("--cnn-models", type=int, default=256, help="CNNs in the CNN zoo (default: 256)")
    p.add_argument("--cnn-data", default=None, help="data of the CNN zoo (default: the MNIST images, else digits)")
    p.add_argument("--cnn-checkpoints", default="0,1,2,4,8", help="epochs kept per CNN (default: 0,1,2,4,8)")
    p.add_argument("--models-per-shard", type=int, default=256, help="zoo models trained together (default: 256)")
    p.add_argument("--methods", default="gnn,transformer,dws,np,nfn-np,statnn,mlp",
                   help="INR methods (default: gnn,transformer,dws,np,nfn-np,statnn,mlp)")
    p.add_argument("--cnn-methods", default="gnn,np,statnn",
                   help=f"accuracy-prediction methods, of: {', '.join(ARCHS)} (default: gnn,np,statnn)")
    p.add_argument("--cnn-ablate", default="", metavar="V[,V...]",
                   help="also run gnn/transformer as: no-probes, no-stats, weights-only (default: none)")
    p.add_argument("--cnn-probe-source", choices=("uniform", "data", "auto"), default="auto",
                   help="probe inputs of the graph archs on the CNN zoo (default: auto, the library's)")
    p.add_argument("--cnn-image-size", type=int, default=None, help="resize the CNN zoo's images (default: native)")
    p.add_argument("--cnn-loss", choices=("mse", "rank"), default="mse",
                   help="accuracy-prediction loss: mse, or mse plus a pairwise ranking term (default: mse)")
    p.add_argument("--cnn-schedule", choices=("constant", "cosine"), default="constant",
                   help="accuracy-prediction learning-rate schedule (default: constant)")
    p.add_argument("--cnn-select", choices=("loss", "kendall_tau"), default="loss",
                   help="validation metric that keeps the epoch and stops early (default: loss)")
    p.add_argument("--cnn-lr", type=float, default=None,
                   help="accuracy-prediction learning rate (default: --lr; probestat: the library's, 1e-3)")
    p.add_argument("--probes", type=int, default=0, help="also run gnn with this many probe inputs (default: 0)")
    p.add_argument("--hidden", default="", help="widths per arch, e.g. gnn=64,np=16 (default: the library's)")
    p.add_argument("--epochs", type=int, default=20, help="most INR epochs (default: 20)")
    p.add_argument("--cnn-epochs", type=int, default=None,
                   help="most CNN-zoo epochs (default: 30; probestat: the library's, 300)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--cnn-batch-size", type=int, default=None, help="(default: 32; probestat: the library's, 64)")
    p.add_argument("--cnn-patience", type=int, default=None, help="(default: 15; probestat: the library's, 100)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--throughput-steps", type=int, default=20)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--skip-inr", action="store_true")
    p.add_argument("--skip-cnn", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--json", default=None, metavar="FILE", help="write the numbers here too")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.images = f"mnist-idx:{args.mnist}" if args.mnist else "digits"
    args.cnn_data = args.cnn_data or args.images
    args.methods = [m for m in args.methods.split(",") if m]
    args.cnn_methods = [m for m in args.cnn_methods.split(",") if m]
    args.cnn_ablate = [v for v in args.cnn_ablate.split(",") if v]
    bad = set(args.cnn_ablate) - {"no-probes", "no-stats", "weights-only"}
    if bad:
        p.error(f"--cnn-ablate: unknown {', '.join(sorted(bad))}; choose from no-probes, no-stats, weights-only")
    bad = set(args.cnn_methods) - set(ARCHS)
    if bad:
        p.error(f"--cnn-methods: unknown {', '.join(sorted(bad))}; choose from {', '.join(ARCHS)}")
    args.hidden = {k: int(v) for k, v in (kv.split("=") for kv in args.hidden.split(",") if kv)}
    t0 = time.perf_counter()
    inr, cnn = build_zoos(args)
    args.zoo_obj_path = inr
    results: dict = {"args": {k: v for k, v in vars(args).items() if k != "zoo_obj_path"}}
    out = []
    if inr is not None and not args.skip_inr:
        out += bench_inr(args, inr, results) + [""]
    if cnn is not None:
        out += bench_cnn(args, cnn, results) + [""]
    if inr is not None and not args.skip_throughput:
        out += bench_throughput(args, inr, results) + [""]
    out.append(f"total {time.perf_counter() - t0:.0f} s")
    print("\n".join(out))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return results


if __name__ == "__main__":
    main()
