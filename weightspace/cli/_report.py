"""Plain-text tables shared by ``weightspace barrier`` and ``weightspace demo``."""
from __future__ import annotations

import math
from collections.abc import Mapping

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from merging import BarrierResult


def _num(v: float, fmt: str = ".3f") -> str:
    return format(v, fmt) if math.isfinite(v) else "n/a"


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%" if math.isfinite(v) else "n/a"


def barrier_table(results: Mapping[str, BarrierResult]) -> str:
    """One row per curve: loss barrier and accuracy drop by both definitions, and the midpoint."""
    w = max(len("path"), *(len(k) for k in results))
    lines = [
        f"  {'':<{w}}  {'loss barrier':<17}  {'accuracy drop':<17}  merged (t=0.5)",
        f"  {'path':<{w}}  {'mean':>7}  {'linear':>7}  {'mean':>7}  {'linear':>7}  {'loss':>7}  {'accuracy':>8}",
    ]
    for label, r in results.items():
        lines.append(
            f"  {label:<{w}}  {_num(r.loss_barrier):>7}  {_num(r.loss_barrier_linear):>7}  "
            f"{_pct(r.accuracy_barrier):>7}  {_pct(r.accuracy_barrier_linear):>7}  "
            f"{_num(r.midpoint_loss):>7}  {_pct(r.midpoint_accuracy):>8}"
        )
    return "\n".join(lines)


def endpoints_line(r: BarrierResult) -> str:
    return (f"A {_pct(r.accuracies[0])} accuracy (loss {_num(r.losses[0])}), "
            f"B {_pct(r.accuracies[-1])} (loss {_num(r.losses[-1])})")


def improvement_line(naive: BarrierResult, aligned: BarrierResult, label: str) -> str:
    """``weight matching lowers the loss barrier 13x (0.762 -> 0.061) ...``: the comparison in one line."""
    lb0, lb1 = naive.loss_barrier, aligned.loss_barrier
    if not (math.isfinite(lb0) and math.isfinite(lb1)):
        verb = "changes the loss barrier"
    elif lb1 < lb0:
        verb = f"lowers the loss barrier {lb0 / lb1:.0f}x" if lb1 > 1e-3 else "removes the loss barrier"
    else:
        verb = "does not lower the loss barrier"
    return (f"{label} {verb} ({_num(lb0)} -> {_num(lb1)}) and the accuracy drop "
            f"({_pct(naive.accuracy_barrier)} -> {_pct(aligned.accuracy_barrier)}); at t=0.5 the merged model "
            f"scores {_pct(aligned.midpoint_accuracy)}, naive averaging {_pct(naive.midpoint_accuracy)}")


CORRECTIONS = {"none": "", "repair": ", REPAIR at interior points", "reset_bn": ", BatchNorm reset at interior points"}
