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
from .data import _scales, _Split, _tensors, _Zoo  # noqa: F401
from .evaluate import _device, _metrics, _predict, evaluate_metanet, load_metanet  # noqa: F401
from .features import (  # noqa: F401
    PROBE_SOURCES,
    _collate,
    _data_probes,
    _probe_inputs,
    _Prober,
    _ProbeStatFeatures,
    _probestat_features,
    _resolve_probes,
    _resolve_stats,
    _Stats,
)
from .result import MetanetResult
from .train import LOSSES, SCHEDULES, SELECTS, _aug_seed, _loss, _rank_loss, train_metanet  # noqa: F401

__all__ = ["ARCHS", "DEFAULT_PROBES", "FORMAT", "GRAPH_ARCHS", "METANET_ARCHS", "TASKS", "TENSOR_ARCHS",
           "TRAIN_DEFAULTS", "MetanetResult", "archs_of_kind", "build_metanet", "default_hidden", "evaluate_metanet",
           "get_metanet_arch", "list_metanet_archs", "load_metanet", "register_metanet_arch", "train_defaults",
           "train_metanet"]
