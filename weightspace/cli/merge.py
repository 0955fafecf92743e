"""``weightspace merge``: align B to A and write the interpolated checkpoint."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._common import (add_common_args, add_dtype_arg, add_model_args, add_output_arg, add_repair_args,
                      add_require_aligned_arg, add_solver_arg, copied_line, print_json, repair_samples,
                      report_result)

from weightspace.alignment import ALIGNMENT_METHODS

NAME = "merge"
HELP = "align checkpoint B to A (Git Re-Basin) and write (1 - alpha) * A + alpha * aligned B"
DESCRIPTION = """Align the hidden units of checkpoint B to those of A, then interpolate.

  weightspace merge a.safetensors b.safetensors -o merged.safetensors
  weightspace merge a.pt b.pt -o merged.safetensors --model mlp --model-kwargs '{"in_features": 64}'
  weightspace merge a.safetensors b.safetensors -o m.safetensors --method activation --data digits --repair
  weightspace merge a.safetensors b.safetensors -o m.safetensors --method none --alpha 0.3   # plain averaging
  weightspace merge --config recipe.yaml -o merged.safetensors     # task-vector merge of N models
  weightspace merge a/ b/ -o merged/ --max-shard-size 2GB          # sharded, tensor by tensor
  weightspace merge llama-a/ llama-b/ -o merged/ --method none     # Hugging Face directories

Methods (Ainsworth et al., Git Re-Basin, arXiv 2209.04836):
""" + ALIGNMENT_METHODS.help() + """

--repair fixes the merged network's activation statistics from --data (REPAIR, Jordan et
al., arXiv 2211.08403; for BatchNorm networks it recomputes the BatchNorm statistics).

The output is .safetensors, written atomically; it records the model, input shape and a
provenance record (SHA-256 of both inputs, method, alpha, seed, data, version, date), so
`weightspace inspect` and `weightspace barrier` work on it without --model. Nothing is
written when anything is wrong, and the output may not be one of the inputs.

Checkpoints larger than memory: with --low-memory (automatic when A and B are both sharded
Hugging Face checkpoints, or with a sharded output) tensors are read one at a time, weight
matching accumulates its similarity matrices tensor by tensor, and the merged checkpoint is
written shard by shard (model-0000k-of-0000N.safetensors + model.safetensors.index.json):
peak memory is a few tensors plus one similarity matrix. The result is the in-memory merge's.
Activation/STE matching and --repair need the model in memory and are not available there.

Hugging Face directories (config.json + model.safetensors, shards or pytorch_model.bin) build
their model from the config (pip install 'weightspace[hf]'; no --model). The output is again
such a directory, which from_pretrained loads: A's config.json, generation and tokenizer
files, the merged weights as safetensors (sharded with --max-shard-size). A config with
auto_map (remote code) needs --trust-remote-code. See docs/huggingface.md."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("a", metavar="A", nargs="?", help="checkpoint A: the reference whose hidden-unit order is kept")
    p.add_argument("b", metavar="B", nargs="?", help="checkpoint B: aligned to A, then interpolated")
    add_output_arg(p, required=False, metavar="OUT",
                   help="the merged checkpoint to write: .safetensors, or a directory / *.safetensors.index.json "
                        "for sharded output")
    p.add_argument("--config", metavar="RECIPE", default=None,
                   help="a mergekit-style YAML merge recipe (merge_method, base_model, models or slices, "
                        "parameters, dtype, out_dtype, out) of N models, run tensor by tensor; OUT is a "
                        ".safetensors file or a Hugging Face directory; replaces A, B (docs/recipes.md)")
    add_model_args(p)
    g = p.add_argument_group("merge")
    g.add_argument("--method", default="auto", metavar=ALIGNMENT_METHODS.metavar(),
                   help="how to align B to A (default: auto = activation with --data, weight without)")
    g.add_argument("--alpha", type=float, default=0.5, metavar="T",
                   help="weight of B in [0, 1]: (1 - T) * A + T * aligned B (default: 0.5)")
    g.add_argument("--data", metavar="D", default=None,
                   help="data for activation/ste matching and --repair (train split): digits, mnist-idx:DIR, "
                        "python-stdlib, text:PATH or package.module:callable")
    add_solver_arg(g)
    add_require_aligned_arg(g)
    add_repair_args(g, "fix the merged network's activation statistics from --data (REPAIR / BatchNorm reset)")
    g.add_argument("--low-memory", action="store_true",
                   help="merge tensor by tensor (weight matching or none): peak memory a few tensors, not "
                        "the model; automatic when A and B are both sharded or the output is sharded")
    g.add_argument("--max-shard-size", metavar="SIZE", default=None,
                   help="write OUT as sharded safetensors (Hugging Face layout: a directory or "
                        "*.safetensors.index.json), at most SIZE per shard, e.g. 2GB or 500MiB")
    add_dtype_arg(g, "the first checkpoint")
    add_common_args(p)


def run(args: argparse.Namespace) -> int:
    from weightspace.merge import merge_checkpoints

    if args.config is not None:
        return _run_config(args)
    if args.a is None or args.b is None or args.output is None:
        raise ValueError("give A, B and -o OUT (or --config RECIPE)")
    quiet = args.quiet or args.json
    r = merge_checkpoints(
        args.a, args.b, args.output, model=args.model, model_kwargs=args.model_kwargs,
        input_shape=args.input_shape, method=args.method, alpha=args.alpha, data=args.data,
        repair=args.repair, repair_samples=repair_samples(args), device=args.device, seed=args.seed, solver=args.solver, progress=not quiet,
        low_memory=args.low_memory, max_shard_size=args.max_shard_size, require_aligned=args.require_aligned,
        dtype=args.dtype,
    )
    if report_result(args, r):
        return 0
    if r.copied:
        print(copied_line(r.copied))
    units = sum(len(p) for p in r.perms.values())
    if r.reason.startswith("auto"):
        print(f"method: {r.reason}")
    if r.method == "none":
        print("no alignment (--method none): naive interpolation")
    else:
        sweeps = f"{r.sweeps} sweeps, " if r.sweeps is not None else ""
        print(f"{r.method} matching: {sweeps}{len(r.perms)} groups, {r.units_moved} of {units} hidden units "
              f"of B moved ({r.align_seconds:.2f} s)")
    print(f"merged {1 - r.alpha:g} * {Path(args.a).name} + {r.alpha:g} * aligned {Path(args.b).name}"
          + {"none": "", "repair": ", then REPAIR", "reset_bn": ", then BatchNorm statistics reset"}[r.repair])
    shape = ",".join(map(str, r.input_shape)) if r.input_shape else "not recorded"
    name = json.loads(r.model)["name"]
    print(f"wrote {r.path} (model {name}, input shape {shape}) in {r.seconds:.2f} s")
    return 0


def _run_config(args: argparse.Namespace) -> int:
    from weightspace.recipe import load_recipe, run_recipe

    if args.a is not None or args.b is not None:
        raise ValueError(f"--config {args.config}: the recipe names the models; do not also give A and B")
    if args.dtype is not None:
        raise ValueError(f"--config {args.config}: give the output dtype in the recipe (dtype: {args.dtype}), "
                         f"not with --dtype")
    recipe = load_recipe(args.config)
    path = run_recipe(recipe, args.output, max_shard_size=args.max_shard_size,
                      progress=not (args.quiet or args.json))
    what = (f"{len(recipe.slices)} slices" if recipe.slices is not None else f"{len(recipe.models)} models")
    if args.json:
        print_json({"output": str(path), "method": recipe.merge_method, "models": len(recipe.models),
                    "slices": None if recipe.slices is None else len(recipe.slices),
                    "base_model": str(recipe.base_model) if recipe.base_model else None})
    elif not args.quiet:
        print(f"{recipe.merge_method}: merged {what}"
              + (f" onto {Path(recipe.base_model).name}" if recipe.base_model else "") + f"; wrote {path}")
    return 0
