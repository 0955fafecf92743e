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


def barrier_table(results: Mapping[str, BarrierResult], *, perplexity: bool = False) -> str:
    """One row per curve: loss barrier and accuracy drop by both definitions, and the midpoint; with
    ``perplexity`` (language models) the perplexity barrier and the midpoint's perplexity too."""
    w = max(len("path"), *(len(k) for k in results))
    ppl_head, ppl_cols = (f"  {'ppl barrier':>11}", f"  {'ppl':>7}") if perplexity else ("", "")
    lines = [
        f"  {'':<{w}}  {'loss barrier':<17}  {'accuracy drop':<17}{' ' * len(ppl_head)}  merged (t=0.5)",
        f"  {'path':<{w}}  {'mean':>7}  {'linear':>7}  {'mean':>7}  {'linear':>7}{ppl_head}  {'loss':>7}  "
        f"{'accuracy':>8}{ppl_cols}",
    ]
    for label, r in results.items():
        ppl_b = f"  {_num(r.perplexity_barrier, '.2f'):>11}" if perplexity else ""
        ppl_m = f"  {_num(r.midpoint_perplexity, '.2f'):>7}" if perplexity else ""
        lines.append(
            f"  {label:<{w}}  {_num(r.loss_barrier):>7}  {_num(r.loss_barrier_linear):>7}  "
            f"{_pct(r.accuracy_barrier):>7}  {_pct(r.accuracy_barrier_linear):>7}{ppl_b}  "
            f"{_num(r.midpoint_loss):>7}  {_pct(r.midpoint_accuracy):>8}{ppl_m}"
        )
    return "\n".join(lines)


def endpoints_line(r: BarrierResult, *, perplexity: bool = False) -> str:
    if perplexity:
        ppl = r.perplexities
        return (f"A perplexity {_num(ppl[0], '.2f')} (loss {_num(r.losses[0])}, next-token accuracy "
                f"{_pct(r.accuracies[0])}), B {_num(ppl[-1], '.2f')} (loss {_num(r.losses[-1])}, "
                f"{_pct(r.accuracies[-1])})")
    return (f"A {_pct(r.accuracies[0])} accuracy (loss {_num(r.losses[0])}), "
            f"B {_pct(r.accuracies[-1])} (loss {_num(r.losses[-1])})")


def improvement_line(naive: BarrierResult, aligned: BarrierResult, label: str, *, perplexity: bool = False) -> str:
    """``weight matching lowers the loss barrier 13x (0.762 -> 0.061) ...``: the comparison in one line."""
    lb0, lb1 = naive.loss_barrier, aligned.loss_barrier
    if not (math.isfinite(lb0) and math.isfinite(lb1)):
        verb = "changes the loss barrier"
    elif lb1 < lb0:
        verb = f"lowers the loss barrier {lb0 / lb1:.0f}x" if lb1 > 1e-3 else "removes the loss barrier"
    else:
        verb = "does not lower the loss barrier"
    if perplexity:
        return (f"{label} {verb} ({_num(lb0)} -> {_num(lb1)}); at t=0.5 the merged model has perplexity "
                f"{_num(aligned.midpoint_perplexity, '.2f')}, naive averaging {_num(naive.midpoint_perplexity, '.2f')}")
    return (f"{label} {verb} ({_num(lb0)} -> {_num(lb1)}) and the accuracy drop "
            f"({_pct(naive.accuracy_barrier)} -> {_pct(aligned.accuracy_barrier)}); at t=0.5 the merged model "
            f"scores {_pct(aligned.midpoint_accuracy)}, naive averaging {_pct(naive.midpoint_accuracy)}")


CORRECTIONS = {"none": "", "repair": ", REPAIR at interior points", "reset_bn": ", BatchNorm reset at interior points"}
