"""Wall time and peak memory of the same TIES recipe run by mergekit and by weightspace, side by side,
on three Hugging Face directories of a Llama of about 110M parameters (base and two fine-tunes).

    python bench/mergekit_compare.py --setup     # once: /tmp/mk-venv with mergekit 0.1.5
    python bench/mergekit_speed.py               # --repeats 2 --hidden 768 --layers 12

Each tool runs as a command under ``/usr/bin/time`` (``mergekit-yaml CONFIG OUT`` from the venv;
``python -m weightspace.cli merge --config CONFIG -o OUT``), alternating, so both see the same
machine; the table gives the median wall time and the largest peak RSS over the repeats, and the
largest absolute difference between the two outputs. mergekit is never imported by weightspace.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RECIPE = """merge_method: ties
base_model: {base}
models:
  - model: {a}
    parameters: {{weight: 0.5, density: 0.5}}
  - model: {b}
    parameters: {{weight: 0.5, density: 0.5}}
parameters: {{normalize: true}}
dtype: float32
"""


def _models(root: Path, hidden: int, layers: int) -> tuple[Path, Path, Path]:
    import transformers

    cfg = transformers.LlamaConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                                   num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 64),
                                   vocab_size=32000, tie_word_embeddings=False)
    paths = tuple(root / n for n in ("base", "ft1", "ft2"))
    if all((p / "config.json").exists() for p in paths):
        return paths
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(cfg)
    base.save_pretrained(paths[0])
    for i, p in enumerate(paths[1:]):
        g = torch.Generator().manual_seed(i + 1)
        with torch.no_grad():
            for t in base.parameters():
                t.add_(torch.randn(t.shape, generator=g) * 0.01)
        base.save_pretrained(p)
    return paths


def _run(cmd: list[str]) -> tuple[float, float]:
    out = subprocess.run(["/usr/bin/time", "-f", "%e %M", *cmd], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed: {out.stderr.strip().splitlines()[-3:]}")
    seconds, kb = out.stderr.strip().splitlines()[-1].split()
    return float(seconds), int(kb) / 2**20


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--venv", default="/tmp/mk-venv", help="the venv with mergekit (bench/mergekit_compare.py --setup)")
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--tmp", default=tempfile.gettempdir())
    args = p.parse_args(argv)
    mk = Path(args.venv) / "bin" / "mergekit-yaml"
    if not mk.exists():
        print(f"no {mk}: run python bench/mergekit_compare.py --setup first", file=sys.stderr)
        return 2
    root = Path(args.tmp) / f"ws-mk-speed-{args.hidden}x{args.layers}"
    base, a, b = _models(root, args.hidden, args.layers)
    n = sum(t.numel() for t in __import__("safetensors.torch", fromlist=["load_file"]).load_file(
        str(base / "model.safetensors")).values())
    recipe = root / "ties.yaml"
    recipe.write_text(RECIPE.format(base=base, a=a, b=b))
    runs: dict[str, list[tuple[float, float]]] = {"mergekit 0.1.5": [], "weightspace": []}
    for _ in range(args.repeats):
        for tool, out in (("mergekit 0.1.5", root / "out-mk"), ("weightspace", root / "out-ws")):
            shutil.rmtree(out, ignore_errors=True)
            cmd = ([str(mk), str(recipe), str(out), "--random-seed", "0"] if tool.startswith("mergekit") else
                   [sys.executable, "-m", "weightspace.cli", "merge", "--config", str(recipe), "-o", str(out), "--quiet"])
            runs[tool].append(_run(cmd))
    from safetensors.torch import load_file

    def weights(d: Path) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for f in sorted(d.glob("*.safetensors")):
            out.update(load_file(str(f)))
        return out

    wm, ww = weights(root / "out-mk"), weights(root / "out-ws")
    diff = max(float((wm[k].float() - ww[k].float()).abs().max()) for k in wm)
    size = (base / "model.safetensors").stat().st_size / 2**20
    print(f"TIES of 2 fine-tunes onto a base, Llama {args.layers} x {args.hidden}, {n / 1e6:.0f}M parameters "
          f"({size:.0f} MB per checkpoint); max |mergekit - weightspace| = {diff:.3g}")
    print("| tool | wall time (median) | peak RSS (max) | peak RSS / one checkpoint |")
    print("| --- | --- | --- | --- |")
    for tool, rs in runs.items():
        t = statistics.median(r[0] for r in rs)
        m = max(r[1] for r in rs)
        print(f"| {tool} | {t:.1f} s | {m:.2f} GB | {m * 1024 / size:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
