"""What a training run returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn


@dataclass
class MetanetResult:
    """What :func:`train_metanet` did.

    Attributes:
        model (nn.Module): the best metanetwork (by validation loss), on the CPU, in eval mode.
        config (dict): everything needed to rebuild it (arch, task, sizes, target, scales).
        history (list[dict]): per epoch: ``epoch``, ``train_loss``, ``val_loss`` and the
            validation metrics.
        best_epoch (int): the epoch whose weights were kept.
        metrics (dict[str, dict[str, float]]): ``train``, ``val`` and ``test`` metrics of the best
            model (Kendall tau, R^2 and MSE for accuracy, accuracy and loss for classes); an
            empty split gives ``{}``.
        num_params (int): trainable parameters of the metanetwork.
        seconds (float): training wall time.
        path (Path, optional): the checkpoint, when ``out`` was given.
    """

    model: nn.Module
    config: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    num_params: int = 0
    seconds: float = 0.0
    path: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.config["arch"], "task": self.config["task"], "target": self.config["target"],
                "probes": int(self.config.get("probes", 0)),
                "probe_source": self.config.get("probe_source"),
                "stats": "stats_mean" in self.config or bool(self.config.get("stats")),
                "best_epoch": self.best_epoch,
                "epochs_run": len(self.history), "metrics": self.metrics,
                "num_params": self.num_params, "seconds": round(self.seconds, 3),
                "path": str(self.path) if self.path else None, "history": self.history}
