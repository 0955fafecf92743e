"""The code books of a parameter graph, its small helpers, and the topology a builder produces
(everything about a graph except its values)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..structure import Axis, Cat, Prod, Unit, axis_groups

#: node roles (one-hot in the PyG features, in this order)
ROLES = ("input", "hidden", "output", "norm", "attn_q", "attn_k", "attn_v", "token")
#: edge kinds (one-hot in the PyG features, in this order)
EDGE_KINDS = ("linear", "flatten", "conv", "conv_transpose", "embedding", "residual", "norm",
              "attn_q", "attn_k", "attn_v", "attn_o", "attn_qk", "attn_score")
#: activation kinds of a node's layer (one-hot in the PyG features, in this order)
ACTIVATIONS = ("none", "relu", "gelu", "silu", "tanh", "sigmoid", "sine", "leaky_relu", "elu",
               "softplus", "other")
#: columns of :attr:`ParamGraph.node_value`
NODE_VALUES = ("bias", "norm_weight", "norm_bias", "running_mean", "running_var")
#: default width of the weight block of PyG edge features
PYG_WEIGHT_DIM = 16

_ROLE = {r: i for i, r in enumerate(ROLES)}
_KIND = {k: i for i, k in enumerate(EDGE_KINDS)}
_COL = {c: i for i, c in enumerate(NODE_VALUES)}
_ACT_ALIASES = {"leakyrelu": "leaky_relu", "relu6": "relu", "sin": "sine", "swish": "silu",
                "logsigmoid": "sigmoid", "hardtanh": "tanh", "hardsigmoid": "sigmoid",
                "hardswish": "silu", "identity": "none"}
_NORM_KINDS = ("batchnorm", "instancenorm", "layernorm", "groupnorm")
_NORM_COLS = {"weight": "norm_weight", "bias": "norm_bias", "running_mean": "running_mean",
              "running_var": "running_var"}
_POS_DIMS = 3


def _activation_code(name: str | None) -> int:
    if name is None:
        return 0
    a = name.lower().rstrip("_")
    a = _ACT_ALIASES.get(a, a)
    return ACTIVATIONS.index(a) if a in ACTIVATIONS else ACTIVATIONS.index("other")


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _has_groups(axis: Axis | None) -> bool:
    return bool(axis_groups(axis))


def _prod_of(parts) -> Axis:
    parts = tuple(parts)
    return parts[0] if len(parts) == 1 else Prod(parts)


def _segments(axis: Axis, off: int = 0):
    """(offset, sub-axis) pairs: the axis itself, its Cat parts, the blocks of a Prod that leads
    with an unpermuted factor (``(·3 x heads x d)`` -> three ``(heads x d)`` blocks)."""
    yield off, axis
    if isinstance(axis, Cat):
        for p in axis.parts:
            yield from _segments(p, off)
            off += p.size
    elif isinstance(axis, Prod) and isinstance(axis.parts[0], Unit) and axis.parts[0].group is None:
        sub = _prod_of(axis.parts[1:])
        for b in range(axis.parts[0].size):
            yield from _segments(sub, off + b * sub.size)


# ============================================================================ topology
@dataclass
class Site:
    """One node set: ``size`` consecutive nodes starting at ``offset``."""

    name: str
    offset: int
    size: int
    role: str
    layer: int                  # index into ``Structure.layers``; -1 for the model input
    axis: Axis | None = None    # how a permutation acts on the units (None: not permuted)
    activation: str | None = None
    norm: str | None = None     # the normalisation layer whose parameters the nodes carry
    heads: int = 0              # attention heads (q/k/v sites only)


@dataclass
class _Seg:
    """Input features ``[off, off + C*S)`` of a layer read ``C`` nodes, ``S`` features each
    (``slow``: channel-major, as ``flatten`` of ``(C, H, W)``; else channel-minor)."""

    off: int
    C: int
    S: int
    slow: bool
    nodes: Tensor


@dataclass
class _Chunk:
    src: Tensor
    dst: Tensor
    ref: Tensor | None          # (E, K) flat indices into theta; None: parameter-free edges
    kind: str
    layer: int
    pos: Tensor | None = None
    write: bool = True


@dataclass
class _Topology:
    """Everything about a parameter graph except its values (shared by a batch of models)."""

    conv: str
    layer_names: list[str]
    layer_kinds: list[str]
    sites: dict[str, Site]
    num_nodes: int
    node_role: Tensor
    node_layer: Tensor
    node_activation: Tensor
    node_head: Tensor
    node_ref: Tensor            # (N, F_v) long, -1: absent
    node_write: Tensor          # (N, F_v) bool
    edge_index: Tensor          # (2, E)
    edge_kind: Tensor
    edge_layer: Tensor
    edge_pos: Tensor            # (E, 3) long, -1: n/a
    edge_ref: Tensor            # (E, K) long, -1: padding or parameter-free
    edge_mask: Tensor           # (E, K) bool: valid entries
    edge_gather: Tensor         # (E * K,) index into [theta, 0, 1] giving edge_weight
    node_gather: Tensor         # (N * F_v,) index into [theta, 0, 1] giving node_value
    edge_write: Tensor          # (E,) bool
    layout: dict[str, tuple[int, int]]          # covered tensor -> (offset, numel)
    shapes: dict[str, tuple[int, ...]]
    num_params: int
    fill_idx: Tensor            # theta entries no node/edge writes back
    kernel_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # precomputed write-back positions
    ew_pos: Tensor | None = None
    ew_ref: Tensor | None = None
    nw_pos: Tensor | None = None
    nw_ref: Tensor | None = None



def _to_device(topo: _Topology, device: torch.device) -> _Topology:
    if topo.edge_index.device == device:
        return topo
    moved = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in topo.__dict__.items()}
    return _Topology(**moved)
