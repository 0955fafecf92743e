"""Metanetworks: layers that take trained networks as input.

Equivariant weight-space layers for chain networks (MLPs, plain CNNs) in the ``nfn`` layout
(:class:`WeightSpaceFeatures`), invariant baselines, and a message-passing metanetwork over
parameter graphs of any architecture (:class:`GraphMetanet`), with optional probe features
(:func:`probe_features`: a network's activations on probe inputs, as node features).
"""
from .dws_layer import DWSLayer
from .flat_mlp import FlatMLP
from .graph_metanet import GraphMetanet, probe_features
from .hnp_linear import HNPLinear
from .hnp_pool import HNPPool
from .network_spec import NetworkSpec
from .np_linear import NPLinear
from .np_pool import NPPool
from .stat_nn import StatNN
from .weight_space_features import WeightSpaceFeatures

__all__ = [
    "DWSLayer",
    "FlatMLP",
    "GraphMetanet",
    "HNPLinear",
    "HNPPool",
    "NPLinear",
    "NPPool",
    "NetworkSpec",
    "StatNN",
    "WeightSpaceFeatures",
    "probe_features",
]
