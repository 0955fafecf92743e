"""Metrics, predictions over a split, and reading back and evaluating a trained metanetwork."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from graphs import Structure

from ..distributed import DistContext
from ..trust import takes_trust_flag
from .archs import FORMAT, build_metanet, get_metanet_arch
from .data import ZooSplit, LoadedZoo
from .features import probestat_features, _Prober, WeightStats, collate_networks
from .result import MetanetResult


def metanet_metrics(task: str, pred: Tensor, y: Tensor) -> dict[str, float]:
    """``{"loss", "accuracy"}`` (``task="class"``) or ``{"loss", "mse", "r2", "kendall_tau"}`` of the
    predictions ``pred`` against the targets ``y``; empty for no targets."""
    if len(y) == 0:
        return {}
    if task == "class":
        return {"loss": float(F.cross_entropy(pred, y)), "accuracy": float((pred.argmax(1) == y).float().mean())}
    from scipy.stats import kendalltau

    p, t = pred.squeeze(1).double(), y.double()
    mse = float(((p - t) ** 2).mean())
    var = float(((t - t.mean()) ** 2).mean())
    tau = kendalltau(p.numpy(), t.numpy()).statistic if len(t) > 1 else float("nan")
    return {"loss": mse, "mse": mse, "r2": 1.0 - mse / var if var > 0 else float("nan"),
            "kendall_tau": float(tau) if tau is not None else float("nan")}


@torch.no_grad()
def _predict(model: nn.Module, arch: str, structure: Structure, split: ZooSplit, out: int, batch_size: int,
             device: torch.device, prober: _Prober | None = None, ctx: DistContext | None = None,
             stats: WeightStats | None = None) -> Tensor:
    """``(n, out)`` predictions for the networks of ``split``, on the CPU; under ``ctx`` each
    process predicts its shard (rows ``rank::K``) and every process gets them all, in order."""
    model.eval()
    ctx = ctx or DistContext()
    mine = [split.states[i] for i in ctx.shard(len(split.states))]
    outs = [model(collate_networks(arch, structure, mine[i:i + batch_size], device, prober, stats)).float()
            for i in range(0, len(mine), batch_size)]
    local = torch.cat(outs) if outs else torch.zeros(0, out, device=device)
    return ctx.gather_rows(local, len(split.states), device)


def _device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train_metanet: device {str(device)!r} asked for, but CUDA is not available")
    return dev


def load_metanet(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """``(model, config)`` from a checkpoint of :func:`train_metanet` (in eval mode, on the CPU).

    Raises:
        ValueError: the file is missing or is not a metanetwork checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"load_metanet: {path} does not exist; train one with `weightspace metanet train`")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
        raise ValueError(f"load_metanet: {path} is not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise ValueError(f"load_metanet: {path} is not a weightspace metanetwork checkpoint")
    model = build_metanet(ck["config"])
    model.load_state_dict(ck["state_dict"])
    return model.eval(), dict(ck["config"])


@takes_trust_flag
def evaluate_metanet(model: str | os.PathLike | MetanetResult, zoo_dir: str | os.PathLike, *, split: str = "test",
                     batch_size: int = 64, device: str | torch.device = "cpu",
                     checkpoints: str | int | list[int] | None = None) -> dict[str, float]:
    """Metrics of a trained metanetwork on a split of a zoo of the same architecture.

    Args:
        model: a checkpoint path or a :class:`MetanetResult`.
        zoo_dir: the zoo.
        split (str): ``"train"``, ``"val"``, ``"test"`` or ``"all"``. (default: ``"test"``)
        checkpoints (str, int or list of int, optional): which stored checkpoints of each model
            to score (``"all"``, ``"last"`` or epochs). (default: those it was trained on)

    Returns:
        dict: ``kendall_tau``, ``r2``, ``mse`` (accuracy) or ``accuracy``, ``loss`` (class), and ``n``.

    Raises:
        ValueError: unreadable checkpoint, no such zoo, an empty split, or a zoo of another architecture.
    """
    if isinstance(model, MetanetResult):
        net, config = model.model, model.config
    else:
        net, config = load_metanet(model)
    zoo = LoadedZoo(zoo_dir, config["task"], config["target"],
               config.get("checkpoints", "last") if checkpoints is None else checkpoints)
    if zoo.card.model_spec != config["model_spec"] and get_metanet_arch(config["arch"]).info["kind"] != "graph":
        raise ValueError(f"evaluate_metanet: {zoo_dir} holds {zoo.card.model_spec}, but the metanetwork was "
                         f"trained on {config['model_spec']}")
    if split == "all":
        parts = list(zoo.splits.values())
        data = ZooSplit([s for p in parts for s in p.states], torch.cat([p.targets for p in parts]))
    elif split in zoo.splits:
        data = zoo.splits[split]
    else:
        raise ValueError(f"evaluate_metanet: unknown split {split!r}; choose one of: train, val, test, all")
    if not data.states:
        raise ValueError(f"evaluate_metanet: the {split} split of {zoo_dir} is empty; pass another split")
    dev = _device(device)
    if config["arch"] == "probestat":
        data = ZooSplit(list(probestat_features(config, data.states, "evaluate_metanet")), data.targets)
    prober = _Prober(config, zoo.structure) if config.get("probes") and config["arch"] != "probestat" else None
    stat_feats = WeightStats(config) if "stats_mean" in config else None
    pred = _predict(net.to(dev), config["arch"], zoo.structure, data, int(config["out"]), batch_size, dev, prober,
                    stats=stat_feats)
    net.cpu()
    return {**metanet_metrics(config["task"], pred, data.targets), "n": len(data.states)}

