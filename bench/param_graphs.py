"""Parameter-graph construction: time and memory for ResNet-20 and a ViT-tiny, and a zoo of
10,000 small CNNs built at once from a stacked shard (against a per-model loop, in the same run).

    python bench/param_graphs.py                       # everything (about a minute on 2 CPU cores)
    python bench/param_graphs.py --zoo-size 2000 --repeats 3 --threads 1

Times are medians over ``--repeats`` runs after one warm-up. "peak RSS +" is how far the
process's peak resident memory rose above its resident memory while building (a fresh subprocess
per row; the peak is reset through /proc/self/clear_refs); "graph" is the memory held by the
graph's own tensors (values and topology). Prints markdown tables (docs/benchmarks.md quotes them).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import resource
import statistics
import subprocess
import sys
import time

import torch

from graphs import ParamGraph, trace
from weightspace.models import get_model

MODELS = {
    "ResNet-20": ("resnet20", {}),
    "ViT-tiny (dim 64, depth 2, 4 heads)": ("vit", {}),
    "MLP 784-512-512-512-10": ("mlp", {}),
}
ZOO_CNN = {"in_channels": 1, "channels": [8, 16, 24], "image_size": 8, "num_classes": 10}


def row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def timed(fn, repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), out


def graph_bytes(g: ParamGraph) -> int:
    t = g._topo
    tensors = [g.node_value, g.edge_weight, t.edge_index, t.edge_ref, t.edge_mask, t.edge_kind,
               t.edge_layer, t.edge_pos, t.node_ref, t.edge_gather, t.node_gather]
    return sum(x.numel() * x.element_size() for x in tensors)


def mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def zoo_state(structure_model, size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights for ``size`` models, stacked along a leading model axis."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in structure_model.state_dict().items():
        fan_in = v[0].numel() if v.dim() > 1 else v.numel()
        out[k] = torch.randn(size, *v.shape, generator=g) / math.sqrt(max(fan_in, 1))
    return out


# --------------------------------------------------------------------------- memory (subprocess)
def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> int:
    """Reset the peak RSS (Linux: /proc/self/clear_refs) and return the baseline in KiB."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmRSS")
    except OSError:  # not Linux: the process's peak so far (a lower bound of the increase)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak_kib() -> int:
    peak = _status_kib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def measure(case: str, zoo_size: int) -> dict:
    """Run in a fresh process: peak RSS increase while building one graph (or the zoo)."""
    if case == "zoo":
        model = get_model("cnn", **ZOO_CNN)
        s = trace(model, model.example_input())
        state = zoo_state(model, zoo_size)
        before = _reset_peak()
        g = ParamGraph.batch_from_stacked(s, state)
    else:
        family, kwargs = MODELS[case]
        model = get_model(family, **kwargs)
        s = trace(model, model.example_input())
        state = model.state_dict()
        before = _reset_peak()
        g = ParamGraph.from_structure(s, state)
    after = _peak_kib()
    return {"peak_rss_increase": (after - before) * 1024, "graph": graph_bytes(g)}


def measure_in_subprocess(case: str, zoo_size: int) -> dict:
    res = subprocess.run([sys.executable, __file__, "--measure", case, "--zoo-size", str(zoo_size),
                          "--threads", str(torch.get_num_threads())],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- the tables
def single_models(args) -> None:
    print("\n### One network: build, views, inverse\n")
    print(row("model", "parameters", "nodes", "edges", "build (ms)", "to_pyg (ms)", "to_state_dict (ms)",
              "exact", "peak RSS + (MiB)", "graph (MiB)"))
    print(row(*["---"] * 10))
    for label, (family, kwargs) in MODELS.items():
        model = get_model(family, **kwargs)
        s = trace(model, model.example_input())
        state = model.state_dict()
        t_build, g = timed(lambda: ParamGraph.from_structure(s, state), args.repeats)
        t_pyg, _ = timed(lambda: g.to_pyg(), args.repeats)
        t_back, back = timed(lambda: g.to_state_dict(), args.repeats)
        exact = all(torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in state.items())
        mem = measure_in_subprocess(label, args.zoo_size)
        print(row(label, f"{s.num_parameters:,}", f"{g.num_nodes:,}", f"{g.num_edges:,}",
                  f"{t_build * 1e3:.1f}", f"{t_pyg * 1e3:.1f}", f"{t_back * 1e3:.1f}", exact,
                  mib(mem["peak_rss_increase"]), mib(mem["graph"])))


def zoo(args) -> None:
    model = get_model("cnn", **ZOO_CNN)
    s = trace(model, model.example_input())
    M = args.zoo_size
    state = zoo_state(model, M)
    n_params = sum(v[0].numel() for v in state.values())
    loop_n = min(args.loop_models, M)
    print(f"\n### A zoo shard: {M:,} CNNs ({n_params:,} parameters each, conv 1-8-16-24 + head), "
          f"stacked along a leading model axis\n")
    print(row("method", "models", "time (s)", f"time for {M:,} (s)", "models / s", "peak RSS + (MiB)"))
    print(row(*["---"] * 6))
    t_b, bg = timed(lambda: ParamGraph.batch_from_stacked(s, state), args.repeats)
    mem = measure_in_subprocess("zoo", M)
    print(row("`ParamGraph.batch_from_stacked` (topology once, values by one gather)", f"{M:,}", f"{t_b:.3f}",
              f"{t_b:.3f}", f"{M / t_b:,.0f}", mib(mem["peak_rss_increase"])))
    singles = [{k: v[i] for k, v in state.items()} for i in range(loop_n)]
    t = time.perf_counter()
    graphs_ = [ParamGraph.from_structure(s, st) for st in singles]
    t_loop = time.perf_counter() - t
    print(row("per-model loop of `ParamGraph.from_structure`", f"{loop_n:,}", f"{t_loop:.3f}",
              f"{t_loop * M / loop_n:.1f} (extrapolated)", f"{loop_n / t_loop:,.0f}", ""))
    t_pyg, batch = timed(lambda: bg.to_pyg(weight_dim=9), 1)
    print(row("`to_pyg()` of the batch: one PyG `Batch` (vectorised)", f"{M:,}", f"{t_pyg:.3f}", f"{t_pyg:.3f}",
              f"{M / t_pyg:,.0f}", ""))
    from torch_geometric.data import Batch

    t = time.perf_counter()
    Batch.from_data_list([g.to_pyg(weight_dim=9) for g in graphs_])
    t_fdl = time.perf_counter() - t
    print(row("per-model `to_pyg()` + PyG `Batch.from_data_list`", f"{loop_n:,}", f"{t_fdl:.3f}",
              f"{t_fdl * M / loop_n:.1f} (extrapolated)", f"{loop_n / t_fdl:,.0f}", ""))
    t_back, back = timed(lambda: bg.to_state_dict(), 1)
    exact = all(torch.equal(back[k], v) for k, v in state.items())
    print(row("`to_state_dict()` of the batch (inverse, stacked)", f"{M:,}", f"{t_back:.3f}", f"{t_back:.3f}",
              f"{M / t_back:,.0f}", f"exact: {exact}"))
    print(f"\nbatch graph: {bg!r}; PyG batch: x {tuple(batch.x.shape)}, edge_attr {tuple(batch.edge_attr.shape)}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--zoo-size", type=int, default=10_000, help="models in the zoo shard (default: 10000)")
    p.add_argument("--loop-models", type=int, default=500,
                   help="models built one by one for the per-model comparison (default: 500)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats after a warm-up (default: 5)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.measure:
        print(json.dumps(measure(args.measure, args.zoo_size)))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"command: python bench/param_graphs.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    single_models(args)
    zoo(args)


if __name__ == "__main__":
    main()
