"""A zoo held in memory (structure, each split's state dicts and targets), and the chain-of-layers
tensors the weight-space archs read."""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from graphs import Structure

from .archs import TASKS, TENSOR_ARCHS


@dataclass
class ZooSplit:
    """One split of a :class:`LoadedZoo`: the networks' state dicts and their targets (accuracy or class)."""

    states: list[dict[str, Tensor]]
    targets: Tensor


class LoadedZoo:
    """A zoo held in memory: the model's structure and each split's state dicts and targets."""

    def __init__(self, root: str | os.PathLike, task: str, target: str | None, checkpoints: Any = "all") -> None:
        from ..api import trace_model
        from ..models import model_from_json
        from ..zoo import ZooDataset

        if task not in TASKS:
            raise ValueError(f"train_metanet: unknown task {task!r}; choose one of: {', '.join(TASKS)}")
        self.root = Path(root)
        target = target or ("accuracy" if task == "accuracy" else "label")
        probe = ZooDataset(self.root, "all", view="state", target=target, checkpoints=checkpoints)
        self.card, self.target = probe.card, probe.target
        self.splits: dict[str, ZooSplit] = {}
        for split in ("train", "val", "test"):
            ds = ZooDataset(self.root, split, view="state", target=target, checkpoints=checkpoints)
            states, ys = [], []
            for i in range(len(ds)):
                states.append(ds.state(i))
                ys.append(float(ds.rows[i][self.target]))
            dtype = torch.long if task == "class" else torch.float32
            self.splits[split] = ZooSplit(states, torch.tensor(ys, dtype=dtype))
        if not self.splits["train"].states:
            raise ValueError(f"train_metanet: {self.root} has no models in its train split; build a larger zoo")
        module = model_from_json(self.card.model_spec, source=f"zoo card {self.root / 'zoo.json'}")
        self.structure: Structure = trace_model(module, input_shape=self.card.input_shape)
        if task == "class":
            labels = torch.cat([s.targets for s in self.splits.values()])
            self.num_classes = int(labels.max()) + 1 if labels.numel() else 1
        else:
            self.num_classes = 1


def weight_tensors(state: Mapping[str, Tensor]) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """``(weights, biases)`` of a chain of linear layers, as the weight-space archs read them.

    Raises:
        ValueError: the network is not such a chain (the message suggests a graph arch).
    """
    from ..zoo import state_to_tensors

    try:
        return state_to_tensors(dict(state))
    except ValueError as e:
        raise ValueError(f"train_metanet: the weight-space archs ({', '.join(TENSOR_ARCHS)}) need a chain of "
                         f"weight/bias layers ({e}); use --arch gnn or transformer for this zoo") from None


def layer_scales(states: list[dict[str, Tensor]]) -> list[float]:
    """The standard deviation of every layer's weights, then of every layer's biases, over ``states``
    (1 where it is not positive and finite): the weight-space archs divide by them."""
    ws, bs = zip(*(weight_tensors(s) for s in states))
    out = []
    for group in (list(zip(*ws)), list(zip(*bs))):
        for layer in group:
            sd = float(torch.stack(layer).float().std())
            out.append(sd if math.isfinite(sd) and sd > 1e-8 else 1.0)
    return out
