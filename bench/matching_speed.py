"""Weight matching speed against the straightforward implementation, same pairs, same run.

The baseline is the straightforward implementation: coordinate descent over
the groups (random order per sweep, stop after a sweep without improvement), each step
recomputing the group's similarity matrix in torch and solving it with SciPy's
``linear_sum_assignment``. Ours is ``merging.weight_matching`` with each ``--solvers`` entry.

    python bench/matching_speed.py                                  # random pairs, widths 512 and 2048, CPU
    python bench/matching_speed.py --widths 2048,4096 --device cuda --no-baseline
    python bench/matching_speed.py --pairs trained --mnist DIR --widths 2048
    python bench/matching_speed.py --solvers lap,scipy --no-baseline --isa avx2   # the C solver's AVX2 build

Networks: MLPs 784-W-W-W-W-10. Random pairs: two independent initialisations. Trained pairs:
8 epochs of SGD (lr 0.05, momentum 0.9, batch 128) on the first 8,000 MNIST images, seeds
0 and 1. Prints a markdown table (docs/benchmarks.md quotes it).
"""
from __future__ import annotations

import argparse
import ctypes
import statistics
import time

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

import merging
import weightspace
from merging.matching import _solve
from merging.matching.weight import matching_objective, similarity
from weightspace.models import get_model


#: ws_lap_force's values
LAP_BUILDS = {"auto": 0, "generic": 1, "avx2": 2, "avx512": 3}


def make_pair(width: int, trained: bool, device: str, mnist: str | None, epochs: int):
    model = get_model("mlp", in_features=784, hidden=[width] * 4, out_features=10)
    structure = weightspace.trace(model, model.example_input())
    states = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = get_model("mlp", in_features=784, hidden=[width] * 4, out_features=10).to(device)
        if trained:
            from weightspace.data import load_dataset
            ds = load_dataset(f"mnist-idx:{mnist}")
            x = ds.x[:8000].reshape(8000, -1).float().to(device)
            y = ds.y[:8000].to(device)
            opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
            g = torch.Generator(device=device).manual_seed(seed)
            for _ in range(epochs):
                order = torch.randperm(8000, device=device, generator=g)
                for i in range(0, 8000, 128):
                    b = order[i:i + 128]
                    opt.zero_grad()
                    F.cross_entropy(m(x[b]), y[b]).backward()
                    opt.step()
        states.append({k: v.detach() for k, v in m.state_dict().items()})
    return structure, states[0], states[1]


def baseline(structure, a, b, *, seed: int = 0, max_iter: int = 100):
    """Straightforward weight matching: full similarity per step, SciPy per step."""
    perms = {g: torch.arange(grp.size, device=next(iter(a.values())).device) for g, grp in structure.groups.items()}
    groups = list(structure.groups)
    rng = torch.Generator().manual_seed(seed)
    sweeps = 0
    for sweeps in range(1, max_iter + 1):
        improved = False
        for gi in torch.randperm(len(groups), generator=rng).tolist():
            g = groups[gi]
            c = similarity(structure, a, b, g, perms).double().cpu()
            r, k = linear_sum_assignment(c.numpy(), maximize=True)
            new = torch.as_tensor(k)[torch.as_tensor(r).argsort()]
            old_val = float(c[torch.arange(len(new)), perms[g].cpu()].sum())
            new_val = float(c[torch.arange(len(new)), new].sum())
            if new_val > old_val + 1e-12 * max(1.0, abs(old_val)):
                perms[g] = new.to(perms[g].device)
                improved = True
        if not improved:
            break
    perms = {g: p.cpu() for g, p in perms.items()}
    return perms, sweeps


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", default="512,2048", help="comma-separated hidden widths (default: 512,2048)")
    ap.add_argument("--pairs", default="random", help="random, trained or random,trained (default: random)")
    ap.add_argument("--mnist", default=None, help="MNIST IDX folder, for trained pairs")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--solvers", default="lap",
                    help="our solvers to time, comma-separated: lap, sparse (or sparse:K, K candidate columns "
                         "per row), auction, scipy, auto (default: lap)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="time each solver this many times on the same pair and print the median (default: 1)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the SciPy-per-step baseline")
    ap.add_argument("--isa", default="auto", choices=sorted(LAP_BUILDS),
                    help="the C solver's build: the best this CPU runs (auto), or forced (ws_lap_force; a build "
                         "this CPU lacks runs the next one down) (default: auto)")
    args = ap.parse_args(argv)
    if args.isa != "auto":
        if _solve._LAP is None:
            ap.error("--isa: the C solver is not built")
        ctypes.c_int.in_dll(_solve._LAP, "ws_lap_force").value = LAP_BUILDS[args.isa]
    pairs = args.pairs.split(",")
    default_k = _solve.SPARSE_K
    if args.threads:
        torch.set_num_threads(args.threads)
    if "trained" in pairs and not args.mnist:
        ap.error("--pairs trained needs --mnist DIR")
    print(f"\n### Weight matching, MLP 784-W-W-W-W-10 ({args.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, C solver build {args.isa})\n")
    print("| width | pair | method | seconds | in solver | sweeps | objective | vs baseline objective | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|")
    for width in [int(w) for w in args.widths.split(",")]:
        for kind in pairs:
            s, a, b = make_pair(width, kind == "trained", args.device, args.mnist, args.epochs)
            # warm-up outside the clock: the first GPU products pay for cuBLAS's start
            matching_objective(s, a, b, weightspace.identity_permutation(s))
            sync(args.device)
            ref_obj = ref_t = None
            if not args.no_baseline:
                sync(args.device)
                t = time.perf_counter()
                p, sweeps = baseline(s, a, b)
                sync(args.device)
                ref_t = time.perf_counter() - t
                ref_obj = matching_objective(s, a, b, p)
                print(f"| {width} | {kind} | baseline (SciPy per step) | {ref_t:.2f} | | {sweeps} | {ref_obj:.6f} | | 1.0x |",
                      flush=True)
            for spec in args.solvers.split(","):
                solver, _, k = spec.partition(":")
                if k:  # sparse:K, the candidate columns per row
                    _solve.SPARSE_K = int(k)
                times, solve_times = [], []
                for _ in range(args.repeats):
                    sync(args.device)
                    t = time.perf_counter()
                    found = merging.weight_matching_result(s, a, b, solver=solver, device=args.device)
                    p, info = found.perms, found.info
                    sync(args.device)
                    times.append(time.perf_counter() - t)
                    solve_times.append(info["solve_seconds"])
                _solve.SPARSE_K = default_k
                dt = statistics.median(times)
                info["solve_seconds"] = statistics.median(solve_times)
                if args.repeats > 1:
                    print(f"<!-- {width} {kind} {spec}: " + ", ".join(f"{x:.2f}" for x in times) + " s -->",
                          flush=True)
                rel = "" if ref_obj is None else f"{(info['objective'] - ref_obj) / abs(ref_obj):+.2e}"
                speed = "" if ref_t is None else f"{ref_t / dt:.1f}x"
                print(f"| {width} | {kind} | weightspace ({spec}) | {dt:.2f} | {info['solve_seconds']:.2f} | {info['sweeps']} | "
                      f"{info['objective']:.6f} | {rel} | {speed} |", flush=True)


if __name__ == "__main__":
    main()
