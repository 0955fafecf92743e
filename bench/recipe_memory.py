"""Peak memory of a recipe merge of N models: tensor by tensor, not N models in memory.

    python bench/recipe_memory.py                    # N = 3 models of ~200 MB, TIES and DARE-TIES
    python bench/recipe_memory.py --models 5 --size-mb 400 --methods ties
    python bench/recipe_memory.py --align --in-memory # align: true on MLPs, against aligning in memory

Each model is a Llama-like state dict (``model.layers.{i}.self_attn.q_proj.weight``, ...,
``model.embed_tokens.weight``, ``lm_head.weight``) of fp32 tensors of 1024 x 1024, saved as one
``.safetensors`` file. The recipe (``merge_method``, ``base_model``, N fine-tuned models with a
weight and a density) runs as ``python -m weightspace.cli merge --config R.yaml -o OUT`` in a
child process; the launcher reports the child's peak resident set
(``getrusage(RUSAGE_CHILDREN).ru_maxrss``, the imports of torch included) and the same for a
child that only imports weightspace and exits (the floor), then the peak above that floor divided
by the size of one checkpoint. For contrast, ``--in-memory`` also times ``merging.merge_states``
on the N + 1 models loaded whole. Prints a markdown table; files go under ``--tmp`` and are
deleted at the end.

``--align`` measures ``align: true`` instead: the models are MLPs of the ``mlp`` family (hidden
layers of 2048 units, as many as make ``--size-mb``) whose fine-tunes are randomly permuted, the
recipe permutes each onto the base by weight matching first, and ``--in-memory`` contrasts it with
loading every model and calling ``merging.merge_states(..., align=True)``.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent


def make_model(path: Path, seed: int, layers: int, base: dict | None = None) -> dict:
    g = torch.Generator().manual_seed(seed)
    names = ["model.embed_tokens.weight"] + [f"model.layers.{i}.{t}.weight" for i in range(layers)
                                              for t in ("self_attn.q_proj", "self_attn.o_proj", "mlp.up_proj")]
    names += ["lm_head.weight"]
    state = {}
    for n in names:
        t = torch.randn(1024, 1024, generator=g)
        state[n] = t if base is None else base[n] + 0.01 * t
    save_file(state, str(path))
    return state


def make_mlp(work: Path, n: int, size_mb: float) -> tuple[int, dict[str, str]]:
    """A base MLP and ``n`` randomly permuted fine-tunes (base + noise) saved with their model spec."""
    sys.path.insert(0, str(ROOT))
    from graphs import permute, random_permutation

    import weightspace
    from weightspace.api import INPUT_SHAPE_KEY, MODEL_KEY
    from weightspace.models import model_spec_to_json

    width = 2048
    layers = max(1, round(size_mb * 2 ** 20 / (4 * width * width)))
    spec = {"in_features": 256, "hidden": [width] * layers, "out_features": 10}
    meta = {MODEL_KEY: model_spec_to_json("mlp", spec), INPUT_SHAPE_KEY: "256"}
    torch.manual_seed(0)
    model = weightspace.get_model("mlp", **spec)
    structure = weightspace.trace_model(model, input_shape="256")
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    del model
    weightspace.save(base, work / "base.safetensors", metadata=meta)
    for i in range(n):
        g = torch.Generator().manual_seed(i + 1)
        ft = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base.items()}
        weightspace.save(permute(structure, ft, random_permutation(structure, seed=i)), work / f"ft{i}.safetensors",
                         metadata=meta)
        del ft
    return layers, meta


def peak_of(cmd: list[str], env: dict) -> tuple[float, float]:
    """Run ``cmd`` in a child of a fresh launcher; return (its peak RSS in MB, seconds)."""
    launcher = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
                "r = subprocess.run(sys.argv[1:]); s = time.perf_counter() - t; "
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, s); sys.exit(r.returncode)")
    out = subprocess.run([sys.executable, "-c", launcher, *cmd], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{out.stderr[-2000:]}")
    mb, s = out.stdout.strip().splitlines()[-1].split()
    return float(mb), float(s)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=int, default=3, help="fine-tuned models N (default: 3)")
    p.add_argument("--size-mb", type=float, default=200, help="size of one checkpoint in MB (default: 200)")
    p.add_argument("--methods", default="ties,dare_ties,task_arithmetic")
    p.add_argument("--in-memory", action="store_true", help="also measure merge_states on whole models")
    p.add_argument("--tmp", default=tempfile.gettempdir())
    p.add_argument("--align", action="store_true", help="measure align: true on MLP checkpoints instead")
    args = p.parse_args(argv)
    layers = max(1, round((args.size_mb * 2 ** 20 / (4 * 2 ** 20) - 2) / 3))
    work = Path(tempfile.mkdtemp(dir=args.tmp, prefix="recipe-mem-"))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        if args.align:
            layers, _ = make_mlp(work, args.models, args.size_mb)
        else:
            base = make_model(work / "base.safetensors", 0, layers)
            for i in range(args.models):
                make_model(work / f"ft{i}.safetensors", i + 1, layers, base)
            del base
        size = (work / "base.safetensors").stat().st_size / 2 ** 20
        floor, _ = peak_of([sys.executable, "-c", "import weightspace.recipe, weightspace.cli"], env)
        rows = []
        for method in args.methods.split(","):
            recipe = work / f"{method}.yaml"
            params = "weight: 1.0" + ("" if method == "task_arithmetic" else ", density: 0.5")
            recipe.write_text(f"merge_method: {method}\nbase_model: base.safetensors\n"
                              + ("align: true\n" if args.align else "") + "models:\n" + "".join(
                f"  - model: ft{i}.safetensors\n    parameters: {{{params}}}\n" for i in range(args.models)))
            out = work / f"{method}.safetensors"
            peak, secs = peak_of([sys.executable, "-m", "weightspace.cli", "merge", "--config", str(recipe),
                                  "-o", str(out), "--quiet"], env)
            rows.append((f"recipe {method}" + (" (align: true)" if args.align else ""), peak, secs))
            out.unlink()
        if args.in_memory:
            code = ("import sys, merging, weightspace; d = sys.argv[1]; n = int(sys.argv[2]); "
                    "base = weightspace.load(d + '/base.safetensors'); "
                    "fts = [weightspace.load(f'{d}/ft{i}.safetensors') for i in range(n)]; "
                    + ("lm = weightspace.load_model(d + '/base.safetensors'); "
                       "s = weightspace.trace_model(lm.module, input_shape=lm.input_shape); "
                       "m = merging.merge_states('ties', fts, base=base, density=0.5, structure=s, align=True); "
                       if args.align else "m = merging.merge_states('ties', fts, base=base, density=0.5); ") +
                    "weightspace.save(m, d + '/mem.safetensors')")
            peak, secs = peak_of([sys.executable, "-c", code, str(work), str(args.models)], env)
            rows.append(("in memory: load + merge_states ties" + (", align=True" if args.align else ""), peak, secs))
        date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        what = f"MLPs, {layers} hidden layers of 2048" if args.align else f"{layers} layers of 3 x 1024^2"
        print(f"{args.models} models + base, {size:.0f} MB each (fp32, {what}); "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
              f"{date}; floor (python + torch + weightspace imported): {floor:.0f} MB\n")
        print("| run | peak RSS (MB) | above floor (MB) | above floor / one checkpoint | seconds |")
        print("|---|---:|---:|---:|---:|")
        for name, peak, secs in rows:
            print(f"| {name} | {peak:.0f} | {peak - floor:.0f} | {(peak - floor) / size:.2f}x | {secs:.1f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
