"""Our C kernels against torch's and SciPy's, per instruction set: which path is faster where.

    python bench/isa_table.py                    # every build this CPU runs, about 2 minutes
    python bench/isa_table.py --builds avx2 --repeats 9 --threads 0    # torch's own thread count

For each build this CPU can run (AVX-512, AVX2, generic), in a fresh process:

* the zoo CNN's grouped convolutions (the Small CNN Zoo's three 3x3 stride-2 convolutions of
  16 channels, TensorFlow "SAME" padding; 64 models, batch 32) on 28x28 (MNIST) and 8x8
  (digits) inputs, per layer and for the whole network (``cnn_forward``), forward alone and
  forward + backward: ours (``_gconv.c``'s build, forced with ``ws_gconv_force``) against
  torch's grouped ``conv2d`` in the layout torch's path keeps (grouped channels, channels
  last); and which path ``WEIGHTSPACE_GCONV=auto`` picks for the network in that process;
* the assignment solver: our C ``lap`` (``_lap.c``'s build, forced with ``ws_lap_force``)
  against SciPy's ``linear_sum_assignment`` on n x n Gaussian matrices, cold, and warm
  (a perturbed matrix with the previous solution and duals, as weight matching's later
  solves are; SciPy always starts cold); and which ``solver="auto"`` uses.

torch's own kernels follow the build: ``ATEN_CPU_CAPABILITY`` (avx2 / default) and oneDNN's
``ONEDNN_MAX_CPU_ISA`` (AVX2 / SSE41) are set in the child process, so an AVX2 row is this
CPU restricted to AVX2 for every library, not a measurement on an AVX2 chip (whose cache and
clock differ). ARM (aarch64) runs the generic build of both C libraries (the vector builds
are x86-only); it is not measured here (no ARM machine), and the generic row, measured on
x86 with torch limited to SSE4.1, does not stand for torch's ARM kernels.

Times are milliseconds, the minimum of ``--repeats`` runs (a busy machine inflates single
runs, not minima), one torch thread unless ``--threads``. Prints markdown.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: build -> (force value of ws_gconv_force / ws_lap_force, environment for torch's kernels)
BUILDS = {
    "avx512": (3, {}),
    "avx2": (2, {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}),
    "generic": (1, {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"}),
}
#: (label, image size): the zoo's inputs
IMAGES = (("MNIST 28x28", 28), ("digits 8x8", 8))


def runnable_builds() -> list[str]:
    """The builds this CPU runs: x86 with AVX-512F, AVX2 (+FMA), or neither."""
    flags = ""
    if platform.machine().lower() in ("x86_64", "amd64"):
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            import torch
            flags = {"AVX512": "avx512f avx2 fma", "AVX2": "avx2 fma"}.get(torch.backends.cpu.get_cpu_capability(), "")
    words = set(flags.split())
    out = []
    if "avx512f" in words:
        out.append("avx512")
    if {"avx2", "fma"} <= words:
        out.append("avx2")
    return out + ["generic"]


def best_ms(fn, repeats: int) -> float:
    fn()  # first-call set-up (oneDNN primitives, allocations) not counted
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return 1e3 * best


# ----------------------------------------------------------------------------- child: one build


def child(build: str, repeats: int, sizes: list[int], threads: int | None) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from scipy.optimize import linear_sum_assignment

    from merging.matching import _solve
    from weightspace.models import CNN
    from weightspace.zoo import _grouped_conv as gc
    from weightspace.zoo._batched import _cnn_forward_kernels, _cnn_forward_torch, _cnn_path

    if threads:
        torch.set_num_threads(threads)
    force = BUILDS[build][0]
    result: dict = {"build": build, "threads": torch.get_num_threads(), "torch_capability":
                    torch.backends.cpu.get_cpu_capability(), "conv": [], "solver": []}
    os.environ[gc.ENV] = "auto"
    if gc._LIB is not None:
        ctypes.c_int.in_dll(gc._LIB, "ws_gconv_force").value = force
    if _solve._LAP is not None:
        ctypes.c_int.in_dll(_solve._LAP, "ws_lap_force").value = force
    M, B = 64, 32
    gen = torch.Generator().manual_seed(0)
    for label, size in IMAGES:
        template = CNN(1, [16, 16, 16], 10, size, stride=2, padding="tf_same")
        params = {k: (0.3 * torch.randn(M, *v.shape, generator=gen)).requires_grad_()
                  for k, v in template.state_dict().items()}
        x = torch.rand(M, B, 1, size, size, generator=gen)
        h, ci = size, 1
        for i, (before, after) in enumerate(template.pads):
            w, b = params[f"convs.{i}.weight"], params[f"convs.{i}.bias"]
            pads = (before, after, before, after)
            xm = torch.randn(M, B, h, h, ci, generator=gen).requires_grad_(ci % 16 == 0)
            xg = xm.detach().permute(1, 0, 4, 2, 3).reshape(B, M * ci, h, h).contiguous(
                memory_format=torch.channels_last).requires_grad_(ci % 16 == 0)
            wg = w.detach().reshape(M * 16, ci, 3, 3).contiguous(memory_format=torch.channels_last).requires_grad_()
            bg = b.detach().reshape(-1).requires_grad_()

            def ours():
                return gc.grouped_conv2d(xm, w, b, stride=2, pads=pads, path="ours")

            def torchs():
                xp = xg if before == after else F.pad(xg, pads)
                return F.conv2d(xp, wg, bg, stride=2, padding=before if before == after else 0, groups=M)

            row = {"image": label, "what": f"conv {i + 1}: {ci}->16, {h}x{h}, stride 2"}
            for name, fn, wrt in (("ours", ours, [t for t in (xm, w, b) if t.requires_grad]),
                                  ("torch", torchs, [t for t in (xg, wg, bg) if t.requires_grad])):
                with torch.no_grad():
                    row[f"{name}_fwd"] = best_ms(fn, repeats)

                def fb(fn=fn, wrt=wrt):
                    out = fn()
                    torch.autograd.grad(out, wrt, torch.ones_like(out))
                row[f"{name}_fb"] = best_ms(fb, repeats)
            result["conv"].append(row)
            h, ci = (h + before + after - 3) // 2 + 1, 16
        keys = list(params)
        row = {"image": label, "what": "whole network (cnn_forward)"}
        for name, fwd in (("ours", _cnn_forward_kernels), ("torch", _cnn_forward_torch)):
            with torch.no_grad():
                row[f"{name}_fwd"] = best_ms(lambda fwd=fwd: fwd(template, params, x, None), repeats)

            def fb(fwd=fwd):
                out = fwd(template, params, x, None)
                torch.autograd.grad(out, [params[k] for k in keys], torch.ones_like(out))
            row[f"{name}_fb"] = best_ms(fb, repeats)
        gc.CHOICES.clear()
        row["auto"] = _cnn_path(template, params, x) if gc._LIB is not None else "torch"
        result["conv"].append(row)

    rng = np.random.default_rng(0)
    for n in sizes:
        c = rng.standard_normal((n, n))
        c2 = c + 0.01 * rng.standard_normal((n, n))
        ct, c2t = torch.from_numpy(c), torch.from_numpy(c2)
        row = {"n": n, "scipy_cold": best_ms(lambda: linear_sum_assignment(c, maximize=True), repeats),
               "scipy_warm": best_ms(lambda: linear_sum_assignment(c2, maximize=True), repeats)}
        if _solve._LAP is not None:
            found = _solve.solve_assignment_result(ct, solver="lap")
            perm, duals = found.perm, found.duals
            row["ours_cold"] = best_ms(lambda: _solve.solve_assignment(ct, solver="lap"), repeats)
            row["ours_warm"] = best_ms(lambda: _solve.solve_assignment(c2t, solver="lap", init=perm, duals=duals),
                                       repeats)
        row["auto"] = _solve.resolve_solver("auto")
        result["solver"].append(row)
    return result


# ----------------------------------------------------------------------------- parent: the table


def run_child(build: str, args) -> dict:
    env = {**os.environ, **BUILDS[build][1], "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    cmd = [sys.executable, __file__, "--child", build, "--repeats", str(args.repeats), "--sizes", args.sizes]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"isa_table: the {build} run failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--builds", default=None,
                    help="comma-separated builds to run: avx512, avx2, generic (default: every one this CPU runs)")
    ap.add_argument("--repeats", type=int, default=5, help="runs per timing, the minimum is kept (default: 5)")
    ap.add_argument("--sizes", default="512,2048", help="assignment sizes n (default: 512,2048)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default: 1, as each process of zoo build --workers N on N cores; 0: torch's "
                         "own; more threads make minima on a busy machine less stable)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sizes = [int(v) for v in args.sizes.split(",")]
    if args.child:
        print(json.dumps(child(args.child, args.repeats, sizes, args.threads)))
        return
    can = runnable_builds()
    builds = args.builds.split(",") if args.builds else can
    for b in builds:
        if b not in BUILDS:
            ap.error(f"--builds: unknown build {b!r}; choose from {', '.join(BUILDS)}")
        if b not in can:
            ap.error(f"--builds: this CPU does not run the {b} build (it runs {', '.join(can)})")
    import torch
    print(f"CPU: {cpu_name()} ({platform.machine()}, {os.cpu_count()} logical CPUs); builds it runs: "
          f"{', '.join(can)}; torch {torch.__version__}; minimum of {args.repeats} runs, milliseconds")
    print("ARM (aarch64) runs the generic build of our C code; not measured here (no ARM machine).")
    results = [run_child(b, args) for b in builds]
    print("\n### Grouped convolutions: 64 models, batch 32 (ours = _gconv.c, torch = grouped conv2d)\n")
    print("| build | torch kernels | threads | input | layer | ours fwd | torch fwd | ours fwd+bwd | torch fwd+bwd "
          "| faster (fwd+bwd) | auto picks |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        for c in r["conv"]:
            faster = "ours" if c["ours_fb"] <= c["torch_fb"] else "torch"
            ratio = max(c["ours_fb"], c["torch_fb"]) / max(1e-9, min(c["ours_fb"], c["torch_fb"]))
            print(f"| {r['build']} | {r['torch_capability']} | {r['threads']} | {c['image']} | {c['what']} | "
                  f"{c['ours_fwd']:.2f} | {c['torch_fwd']:.2f} | {c['ours_fb']:.2f} | {c['torch_fb']:.2f} | "
                  f"{faster} ({ratio:.1f}x) | {c.get('auto', '')} |")
    print("\n### Assignment: n x n Gaussian, maximise (ours = _lap.c's lap, SciPy = linear_sum_assignment)\n")
    print("| build | n | ours cold | SciPy cold | ours warm | SciPy (cold) on the warm problem | solver='auto' |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        for s in r["solver"]:
            ours_c, ours_w = s.get("ours_cold"), s.get("ours_warm")
            fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
            print(f"| {r['build']} | {s['n']} | {fmt(ours_c)} | {s['scipy_cold']:.2f} | {fmt(ours_w)} | "
                  f"{s['scipy_warm']:.2f} | {s['auto']} |")


if __name__ == "__main__":
    main()
