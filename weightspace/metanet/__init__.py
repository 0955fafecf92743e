"""Train and evaluate metanetworks on model zoos: predict a network's accuracy or class from its weights.

Modules: :mod:`~weightspace.metanet.archs` (the archs, their defaults and models),
:mod:`~weightspace.metanet.data` (a zoo in memory), :mod:`~weightspace.metanet.features` (probe
features, weight statistics, batching), :mod:`~weightspace.metanet.train` (:func:`train_metanet`,
losses, schedules), :mod:`~weightspace.metanet.evaluate` (:func:`load_metanet`,
:func:`evaluate_metanet`, metrics), :mod:`~weightspace.metanet.result` (:class:`MetanetResult`).
"""
from .archs import (
    ARCHS,
    DEFAULT_PROBES,
    FORMAT,
    GRAPH_ARCHS,
    METANET_ARCHS,
    TASKS,
    TENSOR_ARCHS,
    TRAIN_DEFAULTS,
    archs_of_kind,
    build_metanet,
    default_hidden,
    get_metanet_arch,
    list_metanet_archs,
    register_metanet_arch,
    train_defaults,
)
from .data import LoadedZoo, ZooSplit, layer_scales, weight_tensors
from .evaluate import evaluate_metanet, load_metanet, metanet_metrics
from .features import PROBE_SOURCES, WeightStats, collate_networks, probestat_features
from .result import MetanetResult
from .train import LOSSES, SCHEDULES, SELECTS, augmentation_seed, metanet_loss, rank_loss, train_metanet

__all__ = ["ARCHS", "DEFAULT_PROBES", "FORMAT", "GRAPH_ARCHS", "LOSSES", "METANET_ARCHS", "PROBE_SOURCES", "SCHEDULES",
           "SELECTS", "TASKS", "TENSOR_ARCHS", "TRAIN_DEFAULTS", "LoadedZoo", "MetanetResult", "WeightStats",
           "ZooSplit", "archs_of_kind", "augmentation_seed", "build_metanet", "collate_networks", "default_hidden",
           "evaluate_metanet", "get_metanet_arch", "layer_scales", "list_metanet_archs", "load_metanet",
           "metanet_loss", "metanet_metrics", "probestat_features", "rank_loss", "register_metanet_arch",
           "train_defaults", "train_metanet", "weight_tensors"]
