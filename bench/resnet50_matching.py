"""Weight matching of two random ResNet-50s (torchvision layout, ``--model resnet``), end to end.

    python bench/resnet50_matching.py                  # CPU
    python bench/resnet50_matching.py --device cuda    # similarity matrices on the GPU

Prints the time to trace (with and without the tracer's permutation check) and to match,
the sweeps, and the objective before and after; then matches a network against a random
permutation of itself, which must recover the self objective exactly.
"""
from __future__ import annotations

import argparse
import time

import torch

import merging
import weightspace
from weightspace.models import ResNet


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights and BatchNorm statistics (a fresh init leaves the statistics at 0 / 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if k.endswith("running_var")
                        else torch.randn(t.shape, generator=g) * (0.05 if t.ndim > 1 else 0.1))
    return model


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--image-size", type=int, default=64, help="input size used to trace (default: 64)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    a, b = _randomize(ResNet(depth=50), 0), _randomize(ResNet(depth=50), 1)
    x = torch.randn(2, 3, args.image_size, args.image_size)
    for check in (False, True):
        t = time.perf_counter()
        s = weightspace.trace(a, x, check=check)
        print(f"trace (check={check}): {time.perf_counter() - t:.2f} s, {len(s.groups)} groups", flush=True)
    sa = {k: v.to(args.device) for k, v in a.state_dict().items()}
    sb = {k: v.to(args.device) for k, v in b.state_dict().items()}
    ident = merging.matching_objective(s, sa, sb, weightspace.identity_permutation(s))
    t = time.perf_counter()
    info = merging.weight_matching_result(s, sa, sb, device=args.device).info
    print(f"weight matching, two random ResNet-50s ({args.device}): {time.perf_counter() - t:.2f} s, "
          f"{info['sweeps']} sweeps ({info['solve_seconds']:.2f} s in the solver), objective {ident:.1f} (identity) -> {info['objective']:.1f}", flush=True)
    shuffled = weightspace.permute(s, sa, weightspace.random_permutation(s, 5))
    t = time.perf_counter()
    info2 = merging.weight_matching_result(s, sa, shuffled, device=args.device).info
    self_obj = merging.matching_objective(s, sa, sa, weightspace.identity_permutation(s))
    print(f"weight matching against its own permutation: {time.perf_counter() - t:.2f} s, {info2['sweeps']} sweeps, "
          f"recovered {info2['objective'] / self_obj:.6f} of the self objective", flush=True)


if __name__ == "__main__":
    main()
