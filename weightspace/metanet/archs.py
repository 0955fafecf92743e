"""The metanetwork archs: their names and training defaults, the weight-space and probestat models,
and :func:`_build_model` (a model from a checkpoint's config)."""
from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ARCHS = ("gnn", "transformer", "np", "hnp", "dws", "statnn", "mlp", "probestat")
TASKS = ("accuracy", "class")
FORMAT = "weightspace-metanet"
_TENSOR_ARCHS = ("np", "hnp", "dws", "statnn", "mlp")
_DEFAULT_HIDDEN = {"gnn": 64, "transformer": 64, "np": 16, "hnp": 16, "dws": 16, "statnn": 256, "mlp": 256,
                   "probestat": 128}
#: training defaults of each arch (``None`` arguments of :func:`train_metanet`); probestat's
#: features are cheap and cached, so it takes many short epochs with a long patience
_TRAIN_DEFAULTS = {"epochs": 50, "lr": 3e-4, "batch_size": 32, "patience": 10, "weight_decay": 0.0}
_ARCH_TRAIN_DEFAULTS = {"probestat": {"epochs": 300, "lr": 1e-3, "batch_size": 64, "patience": 100,
                                      "weight_decay": 1e-2}}
_GRAPH_ARCHS = ("gnn", "transformer")
#: probe inputs of ``probes="auto"`` for the graph archs on a zoo whose networks can be run
DEFAULT_PROBES = 32


class _WeightSpaceNet(nn.Module):
    """Per-layer scaling, then equivariant layers and an invariant pool (or a baseline), then a head."""

    def __init__(self, arch: str, spec, out: int, hidden: int, scales: Tensor) -> None:
        super().__init__()
        from ..nn import DWSLayer, FlatMLP, HNPLinear, HNPPool, NPLinear, NPPool, StatNN

        self.arch = arch
        self.register_buffer("scales", scales.clone())     # (2L,): weight and bias of each layer
        self.layers = nn.ModuleList()
        if arch in ("np", "hnp", "dws"):
            def make(a: int, b: int) -> nn.Module:
                if arch == "dws":   # DWSNets' max reduction sets it apart from hnp's means
                    return DWSLayer(spec, a, b, reduction="max")
                return (NPLinear if arch == "np" else HNPLinear)(spec, a, b)

            chans = [1, hidden, hidden]
            self.layers.extend(make(a, b) for a, b in itertools.pairwise(chans))
            self.pool = (NPPool if arch == "np" else HNPPool)(spec, hidden)
            width = self.pool.num_outputs(spec, hidden)
            self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 4 * hidden), nn.ReLU(),
                                      nn.Linear(4 * hidden, out))
        else:
            self.pool = None
            self.head = (StatNN if arch == "statnn" else FlatMLP)(spec, 1, out, hidden=(hidden, hidden))

    def forward(self, x) -> Tensor:
        L = len(x.weights)
        x = type(x)(tuple(w / self.scales[i] for i, w in enumerate(x.weights)),
                    tuple(b / self.scales[L + i] for i, b in enumerate(x.biases)))
        if self.pool is None:
            return self.head(x)
        for layer in self.layers:
            x = layer(x).map(F.relu)
        return self.head(self.pool(x))


class _ProbeStatNet(nn.Module):
    """probestat's model: standardise the cached features with the train split's mean and scale
    (buffers, also kept in the config), then an MLP."""

    def __init__(self, mean: Tensor, scale: Tensor, hidden: int, out: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.register_buffer("mean", mean.clone())
        self.register_buffer("scale", scale.clone())
        d = mean.numel()
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, hidden),
                                 nn.GELU(), nn.Linear(hidden, out))

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp((x - self.mean) / self.scale)


def _build_model(config: Mapping[str, Any]) -> nn.Module:
    from ..nn import GraphMetanet, NetworkSpec

    arch, out, hidden = config["arch"], config["out"], config["hidden"]
    if arch == "probestat":
        return _ProbeStatNet(torch.tensor(config["feature_mean"], dtype=torch.float32),
                             torch.tensor(config["feature_scale"], dtype=torch.float32), hidden, out)
    if arch in _GRAPH_ARCHS:
        return GraphMetanet(hidden=hidden, out_channels=out, num_layers=config.get("num_layers", 3), arch=arch,
                            probe_dim=int(config.get("probes", 0)),
                            global_dim=len(config.get("stats_mean", ())))
    spec = NetworkSpec.from_dict(config["spec"])
    return _WeightSpaceNet(arch, spec, out, hidden, torch.tensor(config["scales"], dtype=torch.float32))
