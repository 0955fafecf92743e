"""Canonical operation names: the keys of the op rule table.

A ``Tensor`` method is known by its own name (``"view"``, ``"softmax"``); a function by
the name in :data:`FUNC_NAMES` (``torch.bmm`` and ``operator.matmul`` are both
``"matmul"``, every ``F.conv*d`` is ``"conv"``), and the elementwise functions all by
``"elementwise"``.
"""
from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["ELEMENTWISE_FUNCS", "ELEMENTWISE_METHODS", "FUNC_NAMES", "function_name"]

ELEMENTWISE_FUNCS: frozenset = frozenset({
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv,
    operator.pow, operator.neg, operator.pos, operator.abs, operator.iadd, operator.isub,
    operator.imul, operator.itruediv, operator.eq, operator.ne, operator.lt, operator.le,
    operator.gt, operator.ge, operator.invert, operator.and_, operator.or_,
    torch.add, torch.sub, torch.subtract, torch.mul, torch.multiply, torch.div, torch.divide,
    torch.true_divide, torch.pow, torch.neg, torch.abs, torch.exp, torch.log, torch.log1p,
    torch.expm1, torch.sqrt, torch.rsqrt, torch.sin, torch.cos, torch.tanh, torch.sigmoid,
    torch.relu, torch.clamp, torch.clip, torch.where, torch.maximum, torch.minimum,
    torch.square, torch.reciprocal, torch.erf, torch.sign, torch.nan_to_num, torch.lerp,
    torch.addcmul, torch.addcdiv, torch.eq, torch.ne, torch.lt, torch.gt, torch.le, torch.ge,
    torch.logical_and, torch.logical_or, torch.logical_not, torch.isnan, torch.isfinite,
    F.relu, F.relu6, F.gelu, F.silu, F.elu, F.selu, F.celu, F.leaky_relu, F.softplus,
    F.hardswish, F.hardsigmoid, F.hardtanh, F.mish, F.tanh, F.sigmoid, F.logsigmoid,
    F.softsign, F.tanhshrink, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
    F.alpha_dropout, torch.dropout,
})

ELEMENTWISE_METHODS: tuple[str, ...] = (
    "add", "sub", "mul", "div", "pow", "neg", "abs", "exp", "log", "log1p", "sqrt", "rsqrt",
    "sin", "cos", "tanh", "sigmoid", "relu", "clamp", "clip", "square", "reciprocal", "erf",
    "sign", "masked_fill", "where", "maximum", "minimum", "float", "double", "half",
    "bfloat16", "contiguous", "clone", "detach", "add_", "mul_", "sub_", "div_", "relu_",
    "clamp_", "eq", "ne", "lt", "gt", "le", "ge", "logical_not", "nan_to_num", "lerp",
    "requires_grad_", "sigmoid_", "tanh_", "exp_", "sqrt_", "abs_", "neg_",
)

FUNC_NAMES: dict[Any, str] = {
    torch.flatten: "flatten", torch.reshape: "reshape", torch.cat: "cat", torch.concat: "cat",
    torch.concatenate: "cat", torch.stack: "stack", torch.matmul: "matmul",
    operator.matmul: "matmul", torch.bmm: "matmul", torch.mm: "matmul",
    torch.transpose: "transpose", torch.swapaxes: "transpose", torch.permute: "permute",
    torch.softmax: "softmax", F.softmax: "softmax", torch.log_softmax: "log_softmax",
    F.log_softmax: "log_softmax", F.normalize: "normalize", torch.mean: "mean",
    torch.sum: "sum", torch.amax: "amax", torch.amin: "amin", torch.std: "std",
    torch.var: "var", torch.logsumexp: "logsumexp", torch.max: "max", torch.min: "min",
    torch.chunk: "chunk", torch.split: "split", torch.unbind: "unbind",
    torch.unsqueeze: "unsqueeze", torch.squeeze: "squeeze", operator.getitem: "getitem",
    F.linear: "linear", F.conv1d: "conv", F.conv2d: "conv", F.conv3d: "conv",
    F.layer_norm: "layer_norm", F.batch_norm: "batch_norm", F.group_norm: "group_norm",
    F.embedding: "embedding", F.scaled_dot_product_attention: "sdpa",
    F.adaptive_avg_pool1d: "pool", F.adaptive_avg_pool2d: "pool", F.adaptive_avg_pool3d: "pool",
    F.avg_pool1d: "pool", F.avg_pool2d: "pool", F.avg_pool3d: "pool", F.max_pool1d: "pool",
    F.max_pool2d: "pool", F.max_pool3d: "pool", F.adaptive_max_pool1d: "pool",
    F.adaptive_max_pool2d: "pool", getattr: "getattr", torch.zeros_like: "like",
    torch.ones_like: "like", torch.full_like: "like", torch.empty_like: "like",
    torch.randn_like: "fresh", torch.rand_like: "fresh", F.interpolate: "spatial",
    F.pad: "spatial",
}


def function_name(target: Any) -> str | None:
    """The canonical name of a called function, or ``None`` when it has no rule."""
    name = FUNC_NAMES.get(target)
    if name is None and target in ELEMENTWISE_FUNCS:
        name = "elementwise"
    return name
