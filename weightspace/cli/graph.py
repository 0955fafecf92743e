"""``weightspace graph``: a checkpoint's parameter graph, written as PyG ``.pt`` or ``.graphml``."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ._common import add_common_args, add_model_args, add_output_arg, print_json

NAME = "graph"
HELP = "build a checkpoint's parameter graph (neurons = nodes, weights = edges) and write it"
DESCRIPTION = """Turn a network into its parameter graph and write it.

  weightspace graph ckpt.safetensors -o ckpt_graph.pt          # PyG Data (torch.load)
  weightspace graph --model resnet20 -o resnet20.graphml        # random init, for inspection
  weightspace graph ckpt.pt --model vgg --conv entries -o g.pt  # one edge per kernel entry

Nodes are input features, hidden units / channels (one node set per layer output, residual
streams joined by identity edges) and outputs; edges are weights (a convolution edge carries
its kernel, or one edge per kernel entry with --conv entries). Biases and normalisation
parameters are node features. .pt holds the tensors of a torch_geometric.data.Data as a
plain dict (load with Data.from_dict(torch.load(OUT.pt))), in the fixed feature layout of
graphs.ParamGraph.to_pyg (x: 31 columns, edge_attr: weight_dim + 18); .graphml holds scalar
and string attributes only. The output is written atomically and never
replaces the input checkpoint."""

_SUFFIXES = (".pt", ".graphml")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="?",
                   help="checkpoint file (.safetensors, .pt, .bin, sharded index); optional with --model")
    add_model_args(p)
    add_output_arg(p, metavar="OUT",
                   help="output file: OUT.pt (a PyG Data as a dict: Data.from_dict(torch.load(OUT))) or OUT.graphml")
    p.add_argument("--conv", choices=("kernel", "entries"), default="kernel",
                   help="convolution edges: one per channel pair carrying the kernel (default), "
                        "or one per kernel entry with its position")
    p.add_argument("--weight-dim", type=int, default=None, metavar="W",
                   help="width of the weight block of edge features in .pt "
                        "(default: max(16, widest edge)); use one value for graphs you batch")
    add_common_args(p, device=False)


def _check_out(out: str, checkpoint: str | None) -> Path:
    path = Path(out)
    if path.suffix.lower() not in _SUFFIXES:
        raise ValueError(f"-o {out}: unknown format {path.suffix or '(no suffix)'!r}; use .pt or .graphml")
    if path.is_dir():
        raise ValueError(f"-o {out}: is a directory; give a file name ending in .pt or .graphml")
    if checkpoint is not None and path.exists() and Path(checkpoint).exists() and \
            os.path.samefile(path, checkpoint):
        raise ValueError(f"-o {out}: is the input checkpoint; choose another output file")
    if checkpoint is not None:  # a shard or the index of a sharded checkpoint too
        from weightspace.checkpoint import check_output

        check_output(path, [checkpoint], fn=f"-o {out}")
    return path


def _write_atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)  # a missing output directory is created, as by every command
    from merging._atomic import atomic_write

    atomic_write(path, write)


def run(args: argparse.Namespace) -> int:
    import torch

    from graphs import ParamGraph
    from weightspace.api import build_model, load_model, trace_model

    if args.weight_dim is not None and args.weight_dim < 1:
        raise ValueError(f"--weight-dim must be a positive integer, got {args.weight_dim}")
    if args.checkpoint is None and args.model is None:
        raise ValueError("give a checkpoint or --model (see --help)")
    out = _check_out(args.output, args.checkpoint)
    if args.checkpoint is None:
        torch.manual_seed(args.seed)
        module, spec = build_model(args.model, args.model_kwargs)
        state, shape, source = module.state_dict(), args.input_shape, f"model {args.model}"
    else:
        lm = load_model(args.checkpoint, args.model, args.model_kwargs, input_shape=args.input_shape)
        module, spec, state, shape, source = lm.module, lm.spec, lm.state, lm.input_shape, args.checkpoint
    structure = trace_model(module, input_shape=shape)
    graph = ParamGraph.from_structure(structure, state, conv=args.conv)
    if out.suffix.lower() == ".pt":
        data = graph.to_pyg(weight_dim=args.weight_dim)
        data.model = spec
        _write_atomic(out, lambda p: torch.save(data.to_dict(), p))
    else:
        import networkx as nx

        G = graph.to_networkx()
        G.graph["model"] = spec
        _write_atomic(out, lambda p: nx.write_graphml(G, p))
    summary = graph.summary()
    summary.update({"source": source, "model": spec, "out": str(out)})
    if args.json:
        print_json(summary)
        return 0
    if args.quiet:
        return 0
    print(f"{source}: {type(module).__name__} -> {out}")
    print(f"  {summary['nodes']:,} nodes, {summary['edges']:,} edges, weight width "
          f"{summary['weight_dim']} (conv={summary['conv']})")
    print("  edges by kind: " + ", ".join(f"{k} {n:,}" for k, n in summary["edges_by_kind"].items()))
    print("  nodes by role: " + ", ".join(f"{k} {n:,}" for k, n in summary["nodes_by_role"].items()))
    if summary["extra_tensors"]:
        ex = summary["extra_tensors"]
        shown = ", ".join(ex[:6]) + (f", ... ({len(ex)} in all)" if len(ex) > 6 else "")
        print(f"  kept as extra tensors (no layer covers them): {shown}")
    for note in summary["notes"]:
        print(f"  note: {note}")
    return 0
