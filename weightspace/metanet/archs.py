"""The metanetwork archs: a registry of their names, kinds, widths and training defaults, the
weight-space and probestat models, and :func:`build_metanet` (a model from a checkpoint's config).

An arch is registered with :func:`register_metanet_arch` as ``build(config) -> nn.Module``, where
``config`` is what :func:`weightspace.metanet.train_metanet` records in its checkpoint; its
``kind`` says what it reads: ``"graph"`` (parameter graphs), ``"weights"`` (the weight tensors of
a chain of linear layers) or ``"features"`` (probe outputs and weight statistics).
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from graphs.registry import Entry, Registry

__all__ = ["METANET_ARCHS", "ARCHS", "GRAPH_ARCHS", "TENSOR_ARCHS", "TASKS", "FORMAT", "TRAIN_DEFAULTS",
           "DEFAULT_PROBES", "register_metanet_arch", "list_metanet_archs", "get_metanet_arch", "archs_of_kind",
           "default_hidden", "train_defaults", "build_metanet"]

TASKS = ("accuracy", "class")
FORMAT = "weightspace-metanet"
#: training defaults of every arch (``None`` arguments of :func:`train_metanet`), unless the arch
#: registers its own (:func:`train_defaults`)
TRAIN_DEFAULTS = {"epochs": 50, "lr": 3e-4, "batch_size": 32, "patience": 10, "weight_decay": 0.0}
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


Builder = Callable[[Mapping[str, Any]], nn.Module]
KINDS = ("graph", "weights", "features")

#: the metanetwork archs, in the order the CLI lists them (``--arch``)
METANET_ARCHS: Registry[Builder] = Registry("arch")


def register_metanet_arch(name: str, *, description: str, kind: str, hidden: int,
                          train: Mapping[str, Any] | None = None) -> Callable[[Builder], Builder]:
    """Decorator registering ``build(config) -> nn.Module`` as the metanetwork arch ``name``.

    Args:
        name (str): the ``--arch`` name.
        description (str): one line for listings.
        kind (str): what the arch reads: ``"graph"``, ``"weights"`` or ``"features"``.
        hidden (int): its default width (``--hidden``).
        train (Mapping, optional): training defaults that differ from :data:`TRAIN_DEFAULTS`.

    Raises:
        ValueError: a malformed or already registered name, an unknown kind or training default.
    """
    if kind not in KINDS:
        raise ValueError(f"register_metanet_arch: unknown kind {kind!r}; choose one of: {', '.join(KINDS)}")
    unknown = sorted(set(train or {}) - set(TRAIN_DEFAULTS))
    if unknown:
        raise ValueError(f"register_metanet_arch: unknown training defaults {', '.join(unknown)}; "
                         f"choose from: {', '.join(TRAIN_DEFAULTS)}")
    return METANET_ARCHS.register(name, description=description, caller="register_metanet_arch", kind=kind,
                                  hidden=int(hidden), train=dict(train or {}))


def list_metanet_archs() -> list[str]:
    """The archs' names, in the order the CLI lists them."""
    return METANET_ARCHS.names()


def get_metanet_arch(name: str, caller: str = "get_metanet_arch") -> Entry[Builder]:
    """The registered entry of ``name`` (its builder, description, ``kind``, ``hidden`` and ``train``).

    Raises:
        ValueError: an unknown arch; the message lists every arch.
    """
    return METANET_ARCHS.entry(name, caller=caller)


def archs_of_kind(kind: str) -> tuple[str, ...]:
    """The archs that read ``kind`` (``"graph"``, ``"weights"`` or ``"features"``)."""
    return tuple(e.name for e in METANET_ARCHS.entries() if e.info["kind"] == kind)


def default_hidden(arch: str) -> int:
    """The default width of ``arch``."""
    return get_metanet_arch(arch).info["hidden"]


def train_defaults(arch: str) -> dict[str, Any]:
    """The training defaults of ``arch``: :data:`TRAIN_DEFAULTS` with the arch's own on top."""
    return {**TRAIN_DEFAULTS, **get_metanet_arch(arch).info["train"]}


def build_metanet(config: Mapping[str, Any]) -> nn.Module:
    """The (untrained) model that a metanetwork checkpoint's ``config`` describes."""
    return get_metanet_arch(config["arch"], "build_metanet").value(config)


def _graph(config: Mapping[str, Any]) -> nn.Module:
    from ..nn import GraphMetanet

    return GraphMetanet(hidden=config["hidden"], out_channels=config["out"], num_layers=config.get("num_layers", 3),
                        arch=config["arch"], probe_dim=int(config.get("probes", 0)),
                        global_dim=len(config.get("stats_mean", ())))


def _weights(config: Mapping[str, Any]) -> nn.Module:
    from ..nn import NetworkSpec

    spec = NetworkSpec.from_dict(config["spec"])
    return _WeightSpaceNet(config["arch"], spec, config["out"], config["hidden"],
                           torch.tensor(config["scales"], dtype=torch.float32))


def _probestat(config: Mapping[str, Any]) -> nn.Module:
    return _ProbeStatNet(torch.tensor(config["feature_mean"], dtype=torch.float32),
                         torch.tensor(config["feature_scale"], dtype=torch.float32), config["hidden"], config["out"])


register_metanet_arch("gnn", description="message passing on parameter graphs, any architecture", kind="graph",
                      hidden=64)(_graph)
register_metanet_arch("transformer", description="a graph transformer on parameter graphs, any architecture",
                      kind="graph", hidden=64)(_graph)
register_metanet_arch("np", description="neuron-permutation equivariant weight-space layers (NFN NP)",
                      kind="weights", hidden=16)(_weights)
register_metanet_arch("hnp", description="hidden-neuron-permutation equivariant weight-space layers (NFN HNP)",
                      kind="weights", hidden=16)(_weights)
register_metanet_arch("dws", description="DWSNets' equivariant layers (max reduction)", kind="weights",
                      hidden=16)(_weights)
register_metanet_arch("statnn", description="baseline: an MLP on per-tensor weight statistics", kind="weights",
                      hidden=256)(_weights)
register_metanet_arch("mlp", description="baseline: an MLP on the flattened weights", kind="weights",
                      hidden=256)(_weights)
# probestat's features are cheap and cached, so it takes many short epochs with a long patience
register_metanet_arch("probestat", description="an MLP on each network's outputs at probe inputs plus its "
                                               "per-tensor weight statistics", kind="features", hidden=128,
                      train={"epochs": 300, "lr": 1e-3, "batch_size": 64, "patience": 100,
                             "weight_decay": 1e-2})(_probestat)

#: the built-in archs' names, in the order the CLI lists them
ARCHS: tuple[str, ...] = tuple(list_metanet_archs())
#: the archs that read parameter graphs
GRAPH_ARCHS: tuple[str, ...] = archs_of_kind("graph")
#: the archs that read the weight tensors of a chain of linear layers
TENSOR_ARCHS: tuple[str, ...] = archs_of_kind("weights")
