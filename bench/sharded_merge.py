"""Merging sharded checkpoints larger than memory: peak resident memory of ``weightspace merge``
tensor by tensor (``--max-shard-size``) against the in-memory merge, and the results compared.

    python bench/sharded_merge.py                      # two 2 GB checkpoints; in-memory check at 0.25 GB
    python bench/sharded_merge.py --size-gb 0.5 --compare-gb 0.5
    nice -n 10 python bench/sharded_merge.py --compare-gb 2   # the in-memory merge at full size (~16 GB RAM)

The model is the built-in ``cnn`` family with ``L`` convolutions of 512 channels and 7x7 kernels
(12.8 M parameters, 51 MB per convolution; ``L`` set by the size). A's weights are random;
B is A plus Gaussian noise as large as the weights, with every hidden layer's channels permuted
at random: ``B = P(A + N)``. Weight matching has to find ``P^-1``; when it does, the merge is
``lerp(A, A + N, 0.5)`` exactly, which the bench checks tensor by tensor (regenerating A and N
from their seeds) at full size. At ``--compare-gb`` the same recipe is merged both in memory
(single-file inputs, ``weightspace merge``'s default path) and streaming, and the two outputs
are compared bit for bit.

Each merge runs as ``python -m weightspace.cli merge ...`` in a child of a small launcher
process, which reports ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``: the child's peak
resident set, the imports of torch (about 0.3 GB) included. Files go under ``--tmp`` (default
/tmp) and are deleted at the end. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import weightspace  # noqa: E402
from weightspace.api import MODEL_KEY  # noqa: E402
from weightspace.models import model_spec_to_json  # noqa: E402

CHANNELS, KERNEL = 512, 7
CONV_BYTES = CHANNELS * CHANNELS * KERNEL * KERNEL * 4


def row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def kwargs_for(size_gb: float) -> dict:
    layers = max(2, round(size_gb * 1e9 / CONV_BYTES))
    return {"in_channels": CHANNELS, "channels": [CHANNELS] * layers, "num_classes": 10, "image_size": 8,
            "kernel_size": KERNEL, "pool": None}


def _layer(i: int, seed: int):
    """A's convolution ``i``, its bias and the noise added to them, from a per-layer seed."""
    g = torch.Generator().manual_seed(seed * 100003 + i)
    fan_in = CHANNELS * KERNEL * KERNEL
    w = torch.randn(CHANNELS, CHANNELS, KERNEL, KERNEL, generator=g) / math.sqrt(fan_in)
    b = torch.randn(CHANNELS, generator=g) / math.sqrt(fan_in)
    return w, b, torch.randn(w.shape, generator=g) / math.sqrt(fan_in), torch.randn(b.shape, generator=g) / math.sqrt(fan_in)


def _head(kwargs: dict, seed: int):
    g = torch.Generator().manual_seed(seed * 100003 + 99999)
    return (torch.randn(kwargs["num_classes"], CHANNELS, generator=g) / math.sqrt(CHANNELS),
            torch.randn(kwargs["num_classes"], generator=g) / math.sqrt(CHANNELS))


def _perms(n_layers: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 7)
    return [torch.randperm(CHANNELS, generator=g) for _ in range(n_layers)]


def tensors(kwargs: dict, seed: int, which: str):
    """Yield ``(name, tensor)`` of checkpoint A or B (``B = P(A + N)``), one layer at a time."""
    layers = len(kwargs["channels"])
    perms = _perms(layers, seed)
    last = None
    for i in range(layers):
        w, b, nw, nb = _layer(i, seed)
        if which == "b":
            w, b = (w + nw)[perms[i]], (b + nb)[perms[i]]
            if last is not None:
                w = w[:, last]
            last = perms[i]
        yield f"convs.{i}.weight", w.contiguous()
        yield f"convs.{i}.bias", b
    hw, hb = _head(kwargs, seed)
    yield "head.weight", hw[:, last].contiguous() if which == "b" else hw
    yield "head.bias", hb


def write_sharded(kwargs: dict, seed: int, which: str, out: Path, shard_bytes: int) -> None:
    """A Hugging Face sharded checkpoint, written a shard at a time."""
    from safetensors.torch import save_file

    out.mkdir(parents=True)
    meta = {MODEL_KEY: model_spec_to_json("cnn", kwargs)}
    shards, cur, size = [], {}, 0
    for k, t in tensors(kwargs, seed, which):
        if cur and size + t.numel() * 4 > shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[k] = t
        size += t.numel() * 4
    shards.append(cur)  # all shards of one file are held at once here: the writer is not measured
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards):
        save_file(shard, str(out / name), metadata=meta)
    index = {"metadata": {"total_size": sum(t.numel() * 4 for s in shards for t in s.values())},
             "weight_map": {k: n for n, s in zip(names, shards) for k in s}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def measure(cmd: list[str]) -> tuple[float, float, str]:
    """Run ``cmd`` as the only child of a launcher; ``(seconds, peak RSS in bytes, stdout)``."""
    launcher = ("import resource, subprocess, sys, time, json\n"
                "t = time.perf_counter()\n"
                "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
                "dt = time.perf_counter() - t\n"
                "sys.stderr.write(p.stderr)\n"
                "print(json.dumps({'rc': p.returncode, 'seconds': dt, 'stdout': p.stdout,\n"
                "                  'maxrss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))\n")
    p = subprocess.run([sys.executable, "-c", launcher, *cmd], capture_output=True, text=True, check=True)
    res = json.loads(p.stdout)
    if res["rc"] != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {res['rc']}):\n{p.stderr[-2000:]}")
    return res["seconds"], res["maxrss"], res["stdout"]


def merge_cmd(a, b, out, *extra) -> list[str]:
    return [sys.executable, "-m", "weightspace.cli", "merge", str(a), str(b), "-o", str(out), "--device", "cpu",
            "--json", *extra]


def same(x: Path, y: Path) -> bool:
    with weightspace.open_checkpoint(x, mmap=False) as cx, weightspace.open_checkpoint(y, mmap=False) as cy:
        return list(sorted(cx)) == list(sorted(cy)) and all(
            cx.dtype(k) == cy.dtype(k) and torch.equal(cx[k], cy[k]) for k in cx)


def equals_planted(merged: Path, kwargs: dict, seed: int) -> bool:
    """The merge with the true permutation: ``lerp(A, A + N, 0.5)``, tensor by tensor."""
    ok = True
    with weightspace.open_checkpoint(merged, mmap=False) as c:
        for i in range(len(kwargs["channels"])):
            w, b, nw, nb = _layer(i, seed)
            ok &= torch.equal(c[f"convs.{i}.weight"], torch.lerp(w, w + nw, 0.5))
            ok &= torch.equal(c[f"convs.{i}.bias"], torch.lerp(b, b + nb, 0.5))
        hw, hb = _head(kwargs, seed)
        ok &= torch.equal(c["head.weight"], hw) and torch.equal(c["head.bias"], hb)
    return bool(ok)


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-gb", type=float, default=2.0, help="size of each checkpoint (default: 2)")
    p.add_argument("--compare-gb", type=float, default=0.25,
                   help="size at which the in-memory merge is run and compared (0: skip; default: 0.25)")
    p.add_argument("--shard-size", default="500MB", help="shard size of inputs and output (default: 500MB)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tmp", default="/tmp", help="where the checkpoints are written (deleted afterwards)")
    args = p.parse_args(argv)
    from weightspace.checkpoint import parse_size

    shard_bytes = parse_size(args.shard_size, Path("--shard-size"))
    root = Path(tempfile.mkdtemp(prefix="ws-sharded-merge-", dir=args.tmp))
    lines = [row("checkpoints", "merge", "inputs", "wall s", "peak RSS", "sweeps", "result"),
             row(*["---"] * 7)]
    try:
        if args.compare_gb > 0:
            kw = kwargs_for(args.compare_gb)
            d = root / "small"
            for which in "ab":
                write_sharded(kw, args.seed, which, d / which, shard_bytes)
                weightspace.save(dict(tensors(kw, args.seed, which)), d / f"{which}.safetensors",
                                 metadata={MODEL_KEY: model_spec_to_json("cnn", kw)})
            size = sum(f.stat().st_size for f in (d / "a").glob("*.safetensors"))
            t_mem, rss_mem, out_mem = measure(merge_cmd(d / "a.safetensors", d / "b.safetensors", d / "mem.safetensors"))
            t_st, rss_st, out_st = measure(merge_cmd(d / "a", d / "b", d / "st", "--max-shard-size", args.shard_size))
            identical = same(d / "mem.safetensors", d / "st")
            planted = equals_planted(d / "st", kw, args.seed)
            what = f"2 x {gb(size)} ({len(kw['channels'])} convs)"
            lines.append(row(what, "in memory", "single files", f"{t_mem:.1f}", gb(rss_mem),
                             json.loads(out_mem)["sweeps"], "reference"))
            lines.append(row("", "streaming", "sharded", f"{t_st:.1f}", gb(rss_st), json.loads(out_st)["sweeps"],
                             ("identical to in-memory" if identical else "DIFFERS from in-memory")
                             + (", = planted alignment" if planted else ", planted alignment NOT recovered")))
            shutil.rmtree(d)
        kw = kwargs_for(args.size_gb)
        d = root / "big"
        for which in "ab":
            write_sharded(kw, args.seed, which, d / which, shard_bytes)
        size = sum(f.stat().st_size for f in (d / "a").glob("*.safetensors"))
        t_st, rss_st, out_st = measure(merge_cmd(d / "a", d / "b", d / "st", "--max-shard-size", args.shard_size))
        planted = equals_planted(d / "st", kw, args.seed)
        n_out = len(list((d / "st").glob("model-*.safetensors")))
        lines.append(row(f"2 x {gb(size)} ({len(kw['channels'])} convs)", "streaming",
                         f"sharded ({len(list((d / 'a').glob('model-*')))} shards)", f"{t_st:.1f}", gb(rss_st),
                         json.loads(out_st)["sweeps"],
                         ("= planted alignment, bit for bit" if planted else "planted alignment NOT recovered")
                         + f"; {n_out} shards written"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
          f"cnn: 512 channels, 7x7 kernels; B = P(A + N); shards of {args.shard_size}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
