"""Canonical operation names: the keys of the op rule table.

A ``Tensor`` method is known by its own name (``"view"``, ``"softmax"``); a function by
the name in :data:`FUNC_NAMES` (``torch.bmm`` and ``operator.matmul`` are both
``"matmul"``, every ``F.conv*d`` is ``"conv"``), and the elementwise functions all by
``"elementwise"``. The ATen operators of a ``torch.export`` graph map to the same names
(:data:`ATEN_NAMES`), with their arguments reordered where ATen's order differs from the
functional form's (:data:`ATEN_ARG_ORDER`), so both front ends share the rules.
"""
from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch._ops import OpOverload

__all__ = ["ATEN_ARG_ORDER", "ATEN_NAMES", "ELEMENTWISE_FUNCS", "ELEMENTWISE_METHODS", "FUNC_NAMES",
           "arg_order", "function_name", "target_name"]

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
    F.pad: "pad", F.conv_transpose1d: "conv_transpose", F.conv_transpose2d: "conv_transpose",
    F.conv_transpose3d: "conv_transpose", F.rms_norm: "layer_norm", F.prelu: "prelu",
    torch.einsum: "einsum", torch.repeat_interleave: "repeat_interleave",
    torch.baddbmm: "baddbmm",
}


_ATEN_ELEMENTWISE = (
    "add", "sub", "rsub", "mul", "div", "neg", "pow", "exp", "log", "log1p", "expm1", "sqrt",
    "rsqrt", "sin", "cos", "tanh", "sigmoid", "relu", "relu6", "gelu", "silu", "elu", "selu",
    "celu", "leaky_relu", "hardtanh", "hardswish", "hardsigmoid", "mish", "softplus", "erf",
    "sign", "abs", "reciprocal", "square", "clamp", "clip", "clamp_min", "clamp_max", "where",
    "masked_fill", "maximum", "minimum", "lerp", "addcmul", "addcdiv", "eq", "ne", "lt", "le",
    "gt", "ge", "logical_and", "logical_or", "logical_not", "logical_xor", "bitwise_and",
    "bitwise_or", "bitwise_not", "__and__", "__or__", "__xor__", "__invert__", "isnan",
    "isfinite", "nan_to_num", "contiguous", "clone", "alias", "detach", "dropout",
    "lift_fresh_copy", "floor_divide",
)

#: ATen operator (its overload packet's name) -> canonical name
ATEN_NAMES: dict[str, str] = {
    **{k: "elementwise" for k in _ATEN_ELEMENTWISE},
    # in-place forms (``aten.add_``, in Falcon's exported graph): the result is the first operand
    **{f"{k}_": "elementwise" for k in _ATEN_ELEMENTWISE if not k.startswith("_")},
    "linear": "linear", "conv1d": "conv", "conv2d": "conv", "conv3d": "conv",
    "layer_norm": "layer_norm", "group_norm": "group_norm", "batch_norm": "batch_norm",
    "_native_batch_norm_legit_no_training": "batch_norm_no_training", "embedding": "embedding",
    "scaled_dot_product_attention": "sdpa", "view": "view", "_unsafe_view": "view",
    "reshape": "reshape", "flatten": "flatten", "unflatten": "unflatten",
    "transpose": "transpose", "permute": "permute", "t": "t", "numpy_T": "t", "unsqueeze": "unsqueeze",
    "squeeze": "squeeze", "expand": "expand", "softmax": "softmax", "_softmax": "softmax",
    "log_softmax": "log_softmax", "_log_softmax": "log_softmax", "mean": "mean", "sum": "sum",
    "amax": "amax", "amin": "amin", "var": "var", "std": "std", "logsumexp": "logsumexp",
    "max": "max", "min": "min", "matmul": "matmul", "bmm": "matmul", "mm": "matmul",
    "addmm": "addmm", "baddbmm": "baddbmm", "cat": "cat", "stack": "stack", "split": "split",
    "split_with_sizes": "split", "chunk": "chunk", "unbind": "unbind", "slice": "slice",
    "select": "select", "index": "index", "index_select": "index_select",
    "zeros_like": "like", "ones_like": "like", "full_like": "like", "empty_like": "like",
    "rand_like": "fresh", "randn_like": "fresh", "new_ones": "fresh", "new_zeros": "fresh",
    "new_full": "fresh", "new_empty": "fresh", "sym_size": "size", "to": "to",
    "_to_copy": "to", "type_as": "type_as", "_assert_tensor_metadata": "assert",
    "_assert_scalar": "assert", "adaptive_avg_pool1d": "pool", "adaptive_avg_pool2d": "pool",
    "adaptive_avg_pool3d": "pool", "avg_pool1d": "pool", "avg_pool2d": "pool", "avg_pool3d": "pool",
    "max_pool1d": "pool", "max_pool2d": "pool", "max_pool3d": "pool",
    "max_pool2d_with_indices": "pool", "max_pool3d_with_indices": "pool",
    "adaptive_max_pool1d": "pool", "adaptive_max_pool2d": "pool", "adaptive_max_pool3d": "pool",
    "conv_transpose1d": "conv_transpose", "conv_transpose2d": "conv_transpose",
    "conv_transpose3d": "conv_transpose", "instance_norm": "batch_norm", "pad": "pad",
    "constant_pad_nd": "pad", "rms_norm": "layer_norm", "prelu": "prelu", "einsum": "einsum",
    "repeat_interleave": "repeat_interleave",
}

#: ATen operator -> the positions of its arguments in the functional form's order
ATEN_ARG_ORDER: dict[str, tuple[int, ...]] = {
    "embedding": (1, 0),                           # (weight, indices) -> (indices, weight)
    "batch_norm": (0, 3, 4, 1, 2, 5, 6, 7),        # (x, w, b, mean, var, ...) -> (x, mean, var, w, b, ...)
    "instance_norm": (0, 3, 4, 1, 2, 5, 6, 7),     # as batch_norm
}


def target_name(target: Any) -> str:
    """A readable name of a call's target (``"gelu"`` for ``aten.gelu.default``)."""
    if isinstance(target, OpOverload):
        return target._overloadpacket.__name__
    return getattr(target, "__name__", str(target))


def function_name(target: Any) -> str | None:
    """The canonical name of a called function or ATen operator, or ``None`` when it has no rule."""
    if isinstance(target, OpOverload):
        return ATEN_NAMES.get(target._overloadpacket.__name__) if target.namespace == "aten" else None
    name = FUNC_NAMES.get(target)
    if name is None and target in ELEMENTWISE_FUNCS:
        name = "elementwise"
    return name


def arg_order(target: Any) -> tuple[int, ...] | None:
    """How to reorder an ATen operator's arguments for its rule (``None``: as they are)."""
    if isinstance(target, OpOverload) and target.namespace == "aten":
        return ATEN_ARG_ORDER.get(target._overloadpacket.__name__)
    return None
