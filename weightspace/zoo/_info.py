"""``weightspace zoo info``: the card, the counts, and the distribution of the target metric."""
from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

from merging._atomic import atomic_write

from ._metrics import SPLITS, read_metrics, row_split
from .zoo_card import MODELS_DIR, read_card, shard_name

__all__ = ["zoo_summary", "format_summary", "plot_histogram"]

_QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


def _default_metric(columns: tuple[str, ...]) -> str | None:
    for c in ("test_acc", "psnr", "test_accuracy"):
        if c in columns:
            return c
    return None


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    pos = q * (len(sorted_values) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def zoo_summary(root: str | os.PathLike, *, metric: str | None = None, bins: int = 10) -> dict[str, Any]:
    """Describe the zoo at ``root``: card, counts, and the distribution of ``metric``.

    Args:
        root (str or PathLike): the zoo directory.
        metric (str, optional): the column to summarise, over each model's last checkpoint.
            (default: ``test_acc`` for classifiers, ``psnr`` for INRs)
        bins (int, optional): histogram bins. (default: ``10``)

    Returns:
        dict: ``card``, ``n_models`` (models with a complete shard) of ``n_models_planned``,
        ``shards_done`` of ``n_shards``, ``n_rows``, ``checkpoints``, ``splits`` (models per
        split), ``metric``, ``n_values`` (finite values), ``n_nonfinite``, ``mean``, ``std``,
        ``quantiles`` (``{"0%": ..., "5%": ..., ...}``), ``histogram`` (``edges``, ``counts``)
        and ``values``.

    Raises:
        ValueError: not a zoo, or ``metric`` is not a numeric column.
    """
    root = Path(root)
    card = read_card(root)
    try:
        rows = read_metrics(root)
    except ValueError:
        rows = []
    metric = metric or _default_metric(card.columns)
    if metric is not None and metric not in card.columns:
        raise ValueError(f"zoo info: {metric!r} is not a column of {root}/metrics.csv; columns: "
                         f"{', '.join(card.columns)}")
    last: dict[int, dict[str, Any]] = {}
    for r in rows:
        if r["model_id"] not in last or r["checkpoint"] > last[r["model_id"]]["checkpoint"]:
            last[r["model_id"]] = r
    shards_done = sum((root / MODELS_DIR / shard_name(s)).is_file() for s in range(card.n_shards))
    splits = Counter(row_split(r, card) for r in last.values())
    values: list[float] = []
    nonfinite = 0
    if metric is not None:
        for r in last.values():
            v = r.get(metric)
            if isinstance(v, (int, float)) and math.isfinite(v):
                values.append(float(v))
            else:
                nonfinite += 1
    values.sort()
    n = len(values)
    mean = sum(values) / n if n else float("nan")
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / n) if n else float("nan")
    edges: list[float] = []
    counts: list[int] = []
    if n:
        lo, hi = values[0], values[-1]
        if hi == lo:
            hi = lo + 1e-9
        edges = [lo + (hi - lo) * i / bins for i in range(bins + 1)]
        counts = [0] * bins
        for v in values:
            counts[min(bins - 1, int((v - lo) / (hi - lo) * bins))] += 1
    return {
        "root": str(root), "card": card.to_dict(), "n_models": len(last), "n_models_planned": card.n_models,
        "shards_done": shards_done, "n_shards": card.n_shards, "n_rows": len(rows),
        "checkpoints": sorted({r["checkpoint"] for r in rows}),
        "splits": {s: splits.get(s, 0) for s in (*SPLITS, *sorted(set(splits) - set(SPLITS)))},
        "metric": metric, "n_values": n, "n_nonfinite": nonfinite, "mean": mean, "std": std,
        "quantiles": {f"{q:.0%}": _quantile(values, q) for q in _QUANTILES},
        "histogram": {"edges": edges, "counts": counts}, "values": values,
    }


def format_summary(s: dict[str, Any], *, width: int = 40) -> str:
    """The summary as text: the card's main fields, counts, quantiles and a text histogram."""
    card = s["card"]
    model = card["model"]
    kw = ", ".join(f"{k}={v}" for k, v in model.get("kwargs", {}).items())
    lines = [f"zoo {s['root']}: {card['task']}, format {card['format']} v{card['format_version']} "
             f"(weightspace {card['version']})",
             f"  model      {model['name']}({kw})",
             f"  dataset    {card['dataset'].get('spec', card['dataset'])}",
             f"  models     {s['n_models']} of {s['n_models_planned']} ({s['shards_done']} of {s['n_shards']} shards, "
             f"{card['models_per_shard']} models per shard), {s['n_rows']} rows in metrics.csv",
             f"  checkpoints {', '.join(str(c) for c in s['checkpoints']) or '-'} ({card['checkpoint_unit']})",
             "  splits     " + ", ".join(f"{k} {v}" for k, v in s["splits"].items())
             + f"  (by {card['splits'].get('column') or card['splits'].get('by')})",
             f"  target     {card['target']}"]
    if card.get("source"):
        lines.append(f"  source     {card['source'].get('layout')}: {card['source'].get('path')}")
    if card.get("cite"):
        lines.append(f"  cite       {card['cite']}")
    for note in card.get("notes", []):
        lines.append(f"  note       {note}")
    if s["metric"] is None or not s["n_values"]:
        lines.append("\nno metric values yet" if s["metric"] else "\nno metric column to summarise")
        return "\n".join(lines)
    pct = s["metric"].endswith("acc") or s["metric"].endswith("accuracy")

    def fmt(v: float) -> str:
        return f"{100 * v:6.1f}%" if pct else f"{v:8.3f}"

    lines.append(f"\n{s['metric']} at each model's last checkpoint ({s['n_values']} models"
                 + (f", {s['n_nonfinite']} not finite" if s["n_nonfinite"] else "") + "):")
    lines.append(f"  mean {fmt(s['mean']).strip()}  std {fmt(s['std']).strip()}  spread "
                 f"{fmt(s['quantiles']['100%'] - s['quantiles']['0%']).strip()}")
    lines.append("  " + "  ".join(f"{k:>7}" for k in s["quantiles"]))
    lines.append("  " + "  ".join(f"{fmt(v):>7}" for v in s["quantiles"].values()))
    edges, counts = s["histogram"]["edges"], s["histogram"]["counts"]
    top = max(counts) or 1
    lines.append("")
    for i, c in enumerate(counts):
        bar = "#" * max(1 if c else 0, round(width * c / top))
        lines.append(f"  {fmt(edges[i])} - {fmt(edges[i + 1])}  {c:>6}  {bar}")
    return "\n".join(lines)


def plot_histogram(s: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a histogram of the summary's values to ``path`` (PNG, atomically).

    Raises:
        ValueError: the path does not end in ``.png``, or there are no values.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"zoo info: --hist {path} must end in .png")
    if not s["values"]:
        raise ValueError(f"zoo info: {s['root']} has no {s['metric']} values to plot")
    if not path.parent.is_dir():
        raise ValueError(f"zoo info: directory {path.parent} of --hist does not exist")
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot()
    pct = s["metric"].endswith("acc")
    vals = [100 * v for v in s["values"]] if pct else s["values"]
    ax.hist(vals, bins=max(10, min(50, len(vals) // 10)), color="#4477aa", edgecolor="white")
    ax.set_xlabel(f"{s['metric']} (%)" if pct else s["metric"])
    ax.set_ylabel("models")
    card = s["card"]
    ax.set_title(f"{card['model']['name']} zoo on {card['dataset'].get('spec', '')}: {len(vals)} models", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, dpi=120, format="png"))
    return path
