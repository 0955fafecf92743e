"""Trace any ``nn.Module`` into its permutation :class:`~graphs.structure.Structure`.

The module is traced with ``torch.fx`` (known layers are leaves; everything else, the
user's own modules and containers included, is traced through) and the graph is run on
an example input. Each dimension of each value carries a factor (see ``_factors``); the
rules below say how every supported operation ties, splits or fixes factors. Whatever is
not understood fixes its inputs, so the result is safe by construction, and the result is
verified: a random permutation of the network must leave its output unchanged.
"""
from __future__ import annotations

import copy
import inspect
import operator
import warnings
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ._factors import Factor, atoms, find, fix, new_cat, new_prod, refine, split, union
from .structure import Axis, Cat, Layer, Prod, Structure, Unit, Unpermuted, permute, random_permutation

__all__ = ["trace", "check_structure"]

_ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.SELU,
    nn.CELU, nn.Softplus, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Mish, nn.Tanhshrink,
    nn.Softsign, nn.LogSigmoid, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
    nn.Dropout3d, nn.AlphaDropout,
)
_POOLS = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONVT = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
_LEAVES = (nn.Linear, nn.LayerNorm, nn.GroupNorm, nn.Embedding, nn.MultiheadAttention,
           nn.Flatten, nn.Unflatten, nn.Softmax, nn.LogSoftmax, nn.PReLU) + \
    _ACTIVATIONS + _POOLS + _CONVS + _CONVT + _NORMS


def _is_elementwise_module(m: nn.Module) -> bool:
    return isinstance(m, _ACTIVATIONS) or bool(getattr(m, "elementwise", False))


def _is_leaf(m: nn.Module) -> bool:
    return isinstance(m, _LEAVES) or bool(getattr(m, "elementwise", False))


class _Tracer(fx.Tracer):
    """fx tracer: known layers are leaves; a submodule that cannot be traced becomes an
    opaque leaf (its parameters are then left unpermuted, with the reason)."""

    def __init__(self) -> None:
        super().__init__()
        self.opaque: dict[str, str] = {}

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return _is_leaf(m) or qualname in self.opaque

    def call_module(self, m, forward, args, kwargs):
        qualname = self.path_of_module(m)
        if self.is_leaf_module(m, qualname) or qualname == "":
            return super().call_module(m, forward, args, kwargs)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as e:  # data-dependent control flow, unsupported Python, ...
            self.opaque[qualname] = f"{type(m).__name__} could not be traced ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
            return self.create_proxy("call_module", qualname, args, kwargs)


# --------------------------------------------------------------------------- op tables
_ELEMENTWISE_FUNCS: set = {
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
}
_ELEMENTWISE_METHODS = {
    "add", "sub", "mul", "div", "pow", "neg", "abs", "exp", "log", "log1p", "sqrt", "rsqrt",
    "sin", "cos", "tanh", "sigmoid", "relu", "clamp", "clip", "square", "reciprocal", "erf",
    "sign", "masked_fill", "where", "maximum", "minimum", "float", "double", "half",
    "bfloat16", "contiguous", "clone", "detach", "add_", "mul_", "sub_", "div_", "relu_",
    "clamp_", "eq", "ne", "lt", "gt", "le", "ge", "logical_not", "nan_to_num", "lerp",
    "requires_grad_", "sigmoid_", "tanh_", "exp_", "sqrt_", "abs_", "neg_",
}
_EQUIVARIANT_ALONG_DIM = {"softmax", "log_softmax", "normalize"}  # any dim: pass-through
_REDUCTIONS = {"mean", "sum", "amax", "amin", "std", "var", "norm", "logsumexp", "prod"}
_SHAPE_QUERIES = {"size", "dim", "numel", "ndimension", "nelement", "shape", "dtype",
                  "device", "is_cuda", "type"}

_FUNC_NAMES: dict[Any, str] = {
    torch.flatten: "flatten", torch.reshape: "reshape", torch.cat: "cat", torch.concat: "cat",
    torch.concatenate: "cat", torch.stack: "stack", torch.matmul: "matmul",
    operator.matmul: "matmul", torch.bmm: "matmul", torch.mm: "matmul",
    torch.transpose: "transpose", torch.swapaxes: "transpose", torch.permute: "permute",
    torch.softmax: "softmax", F.softmax: "softmax", torch.log_softmax: "log_softmax",
    F.log_softmax: "log_softmax", F.normalize: "normalize", torch.mean: "mean",
    torch.sum: "sum", torch.amax: "amax", torch.amin: "amin", torch.std: "std",
    torch.var: "var", torch.logsumexp: "logsumexp", torch.chunk: "chunk",
    torch.split: "split", torch.unbind: "unbind", torch.unsqueeze: "unsqueeze",
    torch.squeeze: "squeeze", operator.getitem: "getitem", F.linear: "linear",
    F.conv1d: "conv", F.conv2d: "conv", F.conv3d: "conv", F.layer_norm: "layer_norm",
    F.batch_norm: "batch_norm", F.group_norm: "group_norm", F.embedding: "embedding",
    F.scaled_dot_product_attention: "sdpa", F.adaptive_avg_pool1d: "pool",
    F.adaptive_avg_pool2d: "pool", F.adaptive_avg_pool3d: "pool", F.avg_pool1d: "pool",
    F.avg_pool2d: "pool", F.avg_pool3d: "pool", F.max_pool1d: "pool", F.max_pool2d: "pool",
    F.max_pool3d: "pool", F.adaptive_max_pool1d: "pool", F.adaptive_max_pool2d: "pool",
    getattr: "getattr", torch.zeros_like: "like", torch.ones_like: "like",
    torch.full_like: "like", torch.empty_like: "like", torch.randn_like: "fresh",
    torch.rand_like: "fresh",
}
for _f in (F.interpolate, F.pad):
    _FUNC_NAMES[_f] = "spatial"


def _tree_tensors(x):
    if isinstance(x, Tensor):
        yield x
    elif isinstance(x, (list, tuple)):
        for y in x:
            yield from _tree_tensors(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from _tree_tensors(y)


def _tree_labels(vals, labs):
    """Pairs (tensor, labels) in matching nested structures."""
    if isinstance(vals, Tensor):
        if labs is not None:
            yield vals, labs
    elif isinstance(vals, (list, tuple)) and isinstance(labs, (list, tuple)):
        for v, l in zip(vals, labs):
            yield from _tree_labels(v, l)
    elif isinstance(vals, dict) and isinstance(labs, dict):
        for k in vals:
            yield from _tree_labels(vals[k], labs.get(k))


def _fresh(val, reason: str, fixed: bool = True):
    if isinstance(val, Tensor):
        return [Factor(s, fixed=fixed, reason=reason) for s in val.shape]
    if isinstance(val, (list, tuple)):
        return type(val)(_fresh(v, reason, fixed) for v in val) if not hasattr(val, "_fields") \
            else tuple(_fresh(v, reason, fixed) for v in val)
    return None


def _dims(d, nd: int) -> list[int]:
    if d is None:
        return list(range(nd))
    if isinstance(d, int):
        d = [d]
    return [x % nd if nd else 0 for x in d]


class _Run(fx.Interpreter):
    """Runs the traced graph and propagates factors alongside the values."""

    def __init__(self, gm: fx.GraphModule, root: nn.Module, opaque: dict[str, str]) -> None:
        super().__init__(gm, garbage_collect_values=False)
        self.root = root
        self.opaque = opaque
        self.labels: dict[fx.Node, Any] = {}
        self.params: dict[str, list[Factor]] = {}
        self.layers: list[Layer] = []
        self.layer_of: dict[fx.Node, Layer] = {}
        self.reasons: list[str] = []
        self.state_tensors = dict(root.state_dict(keep_vars=True))
        # which parametric layers reach each value through parameter-free operations
        self.frontier: dict[fx.Node, frozenset] = {}
        self.outputs: tuple[str, ...] = ()

    def _ordered(self, names) -> tuple[str, ...]:
        order = {lay.name: i for i, lay in enumerate(self.layers)}
        return tuple(sorted(names, key=lambda x: (x != "input", order.get(x, len(order)), x)))

    def _arg_frontier(self, n: fx.Node) -> frozenset:
        out: set = set()
        for a in n.all_input_nodes:
            out |= self.frontier.get(a, frozenset())
        return frozenset(out)

    # ---------------------------------------------------------------- helpers
    def param(self, name: str, name_axes: list[str | None] | None = None) -> list[Factor] | None:
        if name not in self.state_tensors or self.state_tensors[name] is None:
            return None
        t = self.state_tensors[name]
        if name not in self.params:
            names = name_axes or [f"{name}:{i}" for i in range(t.dim())]
            self.params[name] = [Factor(s, n) for s, n in zip(t.shape, names)]
        return self.params[name]

    def lab(self, a):
        return fx.node.map_arg(a, lambda n: self.labels.get(n))

    def fix_all(self, vals, labs, reason: str) -> None:
        for v, l in _tree_labels(vals, labs):
            for f in l:
                fix(f, reason)

    def broadcast(self, out: Tensor, pairs: list[tuple[Tensor, list[Factor]]], where: str):
        nd = out.dim()
        res: list[Factor] = []
        for d in range(nd):
            cands = []
            for v, l in pairs:
                off = nd - v.dim()
                if d >= off and v.shape[d - off] == out.shape[d] and out.shape[d] != 1:
                    cands.append(l[d - off])
            if not cands:
                res.append(Factor(out.shape[d], fixed=True, reason=where))
                continue
            for c in cands[1:]:
                union(cands[0], c, f"incompatible operands at {where}")
            res.append(cands[0])
        return res

    # ---------------------------------------------------------------- the interpreter
    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        try:
            self.labels[n] = self.propagate(n, out)
            if n in self.layer_of:
                self.frontier[n] = frozenset([self.layer_of[n].name])
            elif n.op == "placeholder":
                self.frontier[n] = frozenset(["input"])
            elif n.op == "call_module" and n.target in self.opaque:
                self.frontier[n] = frozenset([f"opaque:{n.target}"])
            elif n.op != "output" and not any(True for _ in _tree_tensors(out)):
                self.frontier[n] = frozenset()   # shapes and other Python values
            else:
                self.frontier[n] = self._arg_frontier(n)
            if n.op == "output":
                self.outputs = self._ordered(self.frontier[n])
        except Exception as e:  # a rule that does not fit: fix everything it touched
            reason = f"{self._desc(n)} could not be analysed ({type(e).__name__}: {e})"
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            self.fix_all((args, kwargs), (self.lab(n.args), self.lab(n.kwargs)), reason)
            self.labels[n] = _fresh(out, reason)
        return out

    def _desc(self, n: fx.Node) -> str:
        if n.op == "call_module":
            return f"{type(self.root.get_submodule(n.target)).__name__} '{n.target}'"
        if n.op == "call_method":
            return f"Tensor.{n.target} ({n.name})"
        t = getattr(n.target, "__name__", str(n.target))
        return f"{t} ({n.name})"

    def propagate(self, n: fx.Node, out: Any):
        if n.op == "placeholder":
            return _fresh(out, "model input")
        if n.op == "output":
            args, _ = self.fetch_args_kwargs_from_env(n)
            self.fix_all(args, self.lab(n.args), "model output")
            return None
        if n.op == "get_attr":
            if isinstance(out, Tensor):
                p = self.param(n.target)
                return p if p is not None else _fresh(out, f"constant '{n.target}'")
            return None
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        largs, lkwargs = self.lab(n.args), self.lab(n.kwargs)
        if n.op == "call_module":
            mod = self.root.get_submodule(n.target)
            return self.module_rule(n, mod, args, kwargs, largs, lkwargs, out)
        if n.op == "call_method":
            name = n.target
        else:
            name = _FUNC_NAMES.get(n.target)
            if name is None and n.target in _ELEMENTWISE_FUNCS:
                name = "elementwise"
            if name is None and not any(True for _ in _tree_tensors((args, kwargs))):
                return _fresh(out, f"tensor created by {self._desc(n)}")
        return self.op_rule(n, name, args, kwargs, largs, lkwargs, out)

    # ---------------------------------------------------------------- functions/methods
    def op_rule(self, n, name, args, kwargs, largs, lkwargs, out):
        where = self._desc(n)
        if name in _ELEMENTWISE_METHODS or name == "elementwise":
            if name in ("masked_fill", "where") or name == "elementwise":
                pairs = list(_tree_labels((args, kwargs), (largs, lkwargs)))
            else:  # method: self plus tensor operands
                pairs = list(_tree_labels((args, kwargs), (largs, lkwargs)))
            if not isinstance(out, Tensor):
                return None
            self._note_activation(n, args, where)
            return self.broadcast(out, pairs, where)
        if name in ("to", "type_as", "type", "cpu", "cuda") and isinstance(out, Tensor) and isinstance(args[0], Tensor):
            return list(largs[0]) if args[0].shape == out.shape else _fresh(out, where)
        if name in _SHAPE_QUERIES:
            return None
        if name == "getattr":
            obj, attr = args[0], args[1]
            if isinstance(obj, Tensor) and attr in ("T", "mT") and isinstance(out, Tensor):
                l = list(largs[0])
                if attr == "T":
                    return l[::-1]
                return l[:-2] + [l[-1], l[-2]]
            if isinstance(out, Tensor):
                raise ValueError(f"attribute {attr!r}")
            return None
        if name in _EQUIVARIANT_ALONG_DIM:
            return list(largs[0])
        if name in ("like",):
            return list(largs[0])
        if name == "fresh":
            return _fresh(out, where)
        x = args[0] if args else None
        lx = largs[0] if largs else None
        if name in ("view", "reshape", "flatten", "unflatten", "view_as", "reshape_as"):
            if name in ("view", "reshape") and len(args) == 2 and isinstance(args[1], torch.dtype):
                raise ValueError("dtype view")
            return split(list(lx), list(out.shape), f"reshape at {where}")
        if name in ("transpose", "swapaxes", "swapdims"):
            d0, d1 = args[1] if len(args) > 1 else kwargs.get("dim0"), args[2] if len(args) > 2 else kwargs.get("dim1")
            l = list(lx)
            d0, d1 = d0 % len(l), d1 % len(l)
            l[d0], l[d1] = l[d1], l[d0]
            return l
        if name == "t":
            return list(lx)[::-1]
        if name == "permute":
            dims = args[1:] if n.op == "call_method" else args[1]
            if n.op == "call_method" and len(dims) == 1 and isinstance(dims[0], (list, tuple)):
                dims = dims[0]
            if not dims:
                dims = kwargs["dims"]
            return [lx[d % len(lx)] for d in dims]
        if name == "unsqueeze":
            d = args[1] if len(args) > 1 else kwargs["dim"]
            l = list(lx)
            d = d % (len(l) + 1)
            return l[:d] + [Factor(1)] + l[d:]
        if name == "squeeze":
            return [f for f, s in zip(lx, x.shape) if not (s == 1 and len(out.shape) < x.dim() and find(f).size == 1)] \
                if out.dim() != x.dim() else list(lx)
        if name in ("expand", "expand_as", "broadcast_to"):
            off = out.dim() - x.dim()
            res = [Factor(s, fixed=True, reason=where) for s in out.shape[:off]]
            for d in range(x.dim()):
                res.append(lx[d] if x.shape[d] == out.shape[off + d] else Factor(out.shape[off + d], fixed=True, reason=where))
            return res
        if name in _REDUCTIONS:
            dim = args[1] if len(args) > 1 and not isinstance(args[1], (torch.dtype,)) else kwargs.get("dim")
            if name == "norm":
                dim = kwargs.get("dim", args[2] if len(args) > 2 else None)
            keep = kwargs.get("keepdim", False) or (len(args) > 2 and args[2] is True and name != "norm")
            if not isinstance(out, Tensor):
                return None
            dims = _dims(dim, x.dim())
            if keep:
                return [Factor(1) if d in dims else lx[d] for d in range(x.dim())]
            return [lx[d] for d in range(x.dim()) if d not in dims]
        if name in ("max", "min") and n.op == "call_method" or n.target in (torch.max, torch.min):
            if isinstance(out, Tensor) and len(args) <= 1 and "dim" not in kwargs:
                if out.dim() == 0:
                    return []
                pairs = list(_tree_labels((args, kwargs), (largs, lkwargs)))  # elementwise max(a, b)
                return self.broadcast(out, pairs, where)
            if isinstance(out, Tensor) and len(args) == 2 and isinstance(args[1], Tensor):
                return self.broadcast(out, list(_tree_labels(args, largs)), where)
            dim = args[1] if len(args) > 1 else kwargs["dim"]
            keep = kwargs.get("keepdim", False) or (len(args) > 2 and bool(args[2]))
            d = dim % x.dim()
            fix(lx[d], f"indices along a dimension at {where}")
            rest = [Factor(1) if i == d else lx[i] for i in range(x.dim())] if keep else \
                [lx[i] for i in range(x.dim()) if i != d]
            return (rest, [Factor(f.size if isinstance(f, Factor) else 1, fixed=True, reason=where) for f in rest])
        if name in ("softmax", "log_softmax"):
            return list(lx)
        if name == "matmul":
            return self.matmul(args[0], args[1], largs[0], largs[1], out, where)
        if name == "cat":
            ts = args[0]
            d = (args[1] if len(args) > 1 else kwargs.get("dim", 0))
            ls = [l for t, l in zip(ts, largs[0]) if t.numel() > 0 or t.dim() > 1]
            ts = [t for t in ts if t.numel() > 0 or t.dim() > 1]
            d = d % out.dim()
            res = []
            for i in range(out.dim()):
                if i == d:
                    res.append(new_cat([l[i] for l in ls]))
                else:
                    for l in ls[1:]:
                        union(ls[0][i], l[i], f"concatenation at {where}")
                    res.append(ls[0][i])
            return res
        if name == "stack":
            ts = args[0]
            d = (args[1] if len(args) > 1 else kwargs.get("dim", 0)) % out.dim()
            ls = list(largs[0])
            for l in ls[1:]:
                for a, b in zip(ls[0], l):
                    union(a, b, f"stack at {where}")
            res = list(ls[0])
            res.insert(d, Factor(out.shape[d], fixed=True, reason=where))
            return res
        if name in ("chunk", "split", "tensor_split", "unbind"):
            return self.chunk(name, n, x, lx, args, kwargs, out, where)
        if name == "getitem":
            if not isinstance(x, Tensor):
                if isinstance(lx, (list, tuple)) and not (lx and isinstance(lx[0], Factor)):
                    idx = args[1]
                    return lx[idx] if isinstance(idx, int) else (lx[idx] if isinstance(idx, slice) else None)
                return None
            return self.getitem(x, lx, args[1], out, where)
        if name == "linear":
            w = largs[1] if len(args) > 1 else lkwargs["weight"]
            b = largs[2] if len(args) > 2 else lkwargs.get("bias")
            res = self.linear(lx, w, b, where, n)
            self._functional_layer(n, "linear", ("weight", "bias"), w[1], w[0])
            return res
        if name == "conv":
            w = largs[1] if len(args) > 1 else lkwargs["weight"]
            b = largs[2] if len(args) > 2 else lkwargs.get("bias")
            groups = args[6] if len(args) > 6 else kwargs.get("groups", 1)
            res = self.conv(x, lx, w, b, groups, out, where, n, transposed=False)
            self._functional_layer(n, "conv", ("weight", "bias"), lx[1], res[1], groups=groups)
            return res
        if name == "layer_norm":
            shp = args[1] if len(args) > 1 else kwargs["normalized_shape"]
            k = len(shp) if isinstance(shp, (list, tuple, torch.Size)) else 1
            w = largs[2] if len(args) > 2 else lkwargs.get("weight")
            b = largs[3] if len(args) > 3 else lkwargs.get("bias")
            for p in (w, b):
                if p is not None:
                    for a, c in zip(lx[-k:], p):
                        union(a, c, where)
            return list(lx)
        if name == "group_norm":
            g = args[1] if len(args) > 1 else kwargs["num_groups"]
            w = largs[2] if len(args) > 2 else lkwargs.get("weight")
            b = largs[3] if len(args) > 3 else lkwargs.get("bias")
            return self.group_norm(x, lx, g, w, b, where)
        if name == "batch_norm":
            rm, rv = largs[1], largs[2]
            w = largs[3] if len(args) > 3 else lkwargs.get("weight")
            b = largs[4] if len(args) > 4 else lkwargs.get("bias")
            for p in (rm, rv, w, b):
                if p is not None:
                    union(lx[1], p[0], where)
            return list(lx)
        if name == "embedding":
            w = largs[1] if len(args) > 1 else lkwargs["weight"]
            fix(w[0], f"embedding rows are indexed by the input ({where})")
            return [Factor(s, fixed=True, reason="model input") for s in x.shape] + [w[1]]
        if name == "sdpa":
            q, k, v = args[:3]
            lq, lk, lv = largs[:3]
            union(lq[-1], lk[-1], where)
            for l in (lq, lk, lv):
                fix(l[-2], f"token order in attention ({where})")
            batch = self.broadcast(out[..., 0, 0] if out.dim() >= 2 else out,
                                   [(t[..., 0, 0], l[:-2]) for t, l in ((q, lq), (k, lk), (v, lv))], where)
            return batch + [lq[-2], lv[-1]]
        if name in ("pool", "spatial"):
            nsp = self._spatial_dims(n, x, out)
            for f in lx[x.dim() - nsp:]:
                fix(f, f"spatial dimension at {where}")
            return list(lx[:x.dim() - nsp]) + [Factor(s, fixed=True, reason=where) for s in out.shape[out.dim() - nsp:]]
        # unknown: fix everything it touches
        reason = f"unsupported operation {where}"
        self.fix_all((args, kwargs), (largs, lkwargs), reason)
        self.reasons.append(reason)
        return _fresh(out, reason)

    def _spatial_dims(self, n, x, out) -> int:
        t = n.target
        for k in (1, 2, 3):
            if getattr(t, "__name__", "").endswith(f"{k}d"):
                return k
        if t is F.pad:
            pad = n.args[1] if len(n.args) > 1 else n.kwargs["pad"]
            return len(pad) // 2
        return max(x.dim() - 2, 0)

    def _functional_layer(self, n, kind, roles, inputs, output, **attrs):
        """Record ``F.linear`` / ``F.conv*`` on parameters (get_attr nodes) as a layer."""
        sig_args = list(n.args[1:1 + len(roles)])
        tensors = {}
        for role, a in zip(roles, sig_args + [n.kwargs.get(r) for r in roles[len(sig_args):]]):
            if isinstance(a, fx.Node) and a.op == "get_attr":
                tensors[role] = a.target
        if "weight" in tensors:
            self._layer(n, tensors["weight"].rsplit(".", 1)[0] if "." in tensors["weight"] else tensors["weight"],
                        kind, tensors, inputs, output, functional=True, **attrs)

    def _note_activation(self, n, args, where):
        if not args or not isinstance(n.args[0], fx.Node):
            return
        src = n.args[0]
        if src in self.layer_of and len(args) == 1 or (src in self.layer_of and n.op == "call_method" and len(args) == 1):
            lay = self.layer_of[src]
            if lay.activation is None:
                lay.activation = getattr(n.target, "__name__", str(n.target))

    def matmul(self, a, b, la, lb, out, where):
        if a.dim() == 1 and b.dim() == 1:
            union(la[0], lb[0], where)
            return []
        if a.dim() == 1:
            union(la[0], lb[-2], where)
            return self.broadcast(out[..., 0], [(b[..., 0, 0], lb[:-2])], where) + [lb[-1]] if b.dim() > 2 else [lb[-1]]
        if b.dim() == 1:
            union(la[-1], lb[0], where)
            return list(la[:-1])
        union(la[-1], lb[-2], where)
        batch = self.broadcast(out[..., 0, 0], [(a[..., 0, 0], la[:-2]), (b[..., 0, 0], lb[:-2])], where) \
            if out.dim() > 2 else []
        return batch + [la[-2], lb[-1]]

    def chunk(self, name, n, x, lx, args, kwargs, out, where):
        if name == "unbind":
            d = (args[1] if len(args) > 1 else kwargs.get("dim", 0)) % x.dim()
            fix(lx[d], f"unbind at {where}")
            rest = [lx[i] for i in range(x.dim()) if i != d]
            return tuple(list(rest) for _ in out)
        d = args[2] if len(args) > 2 else kwargs.get("dim", 0)
        d = d % x.dim()
        sizes = [t.shape[d] for t in out]
        r = find(lx[d])
        if r.kind == "cat" and [find(c).size for c in r.children] == sizes:
            parts = list(r.children)
        elif r.kind is None and not r.fixed and sum(sizes) == r.size:
            parts = refine(r, "cat", sizes)
        elif r.kind == "prod" and len(set(sizes)) == 1 and atoms(r) and find(atoms(r)[0]).size == len(sizes):
            lead = atoms(r)
            fix(lead[0], f"chunk at {where}")
            parts = [new_prod(lead[1:])] * len(sizes)
        else:
            fix(lx[d], f"chunk at {where}")
            parts = [Factor(s, fixed=True, reason=where) for s in sizes]
        return tuple([p if i == d else lx[i] for i in range(x.dim())] for p in parts)

    def getitem(self, x, lx, idx, out, where):
        if not isinstance(idx, tuple):
            idx = (idx,)
        if any(isinstance(i, (Tensor, list)) for i in idx):
            raise ValueError("advanced indexing")
        n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
        res = []
        d = 0
        for i in idx:
            if i is Ellipsis:
                k = x.dim() - n_real
                res.extend(lx[d:d + k])
                d += k
            elif i is None:
                res.append(Factor(1))
            elif isinstance(i, int):
                f = find(lx[d])
                size = x.shape[d]
                j = i % size
                if f.kind is None and not f.fixed:
                    sizes = [s for s in (j, 1, size - j - 1) if s > 0]
                    refine(f, "cat", sizes)
                else:
                    fix(f, f"indexing at {where}")
                d += 1
            elif isinstance(i, slice):
                size = x.shape[d]
                start, stop, step = i.indices(size)
                if (start, stop, step) == (0, size, 1):
                    res.append(lx[d])
                else:
                    res.append(self._slice(lx[d], size, start, stop, step, where))
                d += 1
            else:
                raise ValueError(f"index {i!r}")
        res.extend(lx[d:])
        return res

    def _slice(self, lab, size, start, stop, step, where):
        f = find(lab)
        stop = max(stop, start)
        if step == 1 and not f.fixed:
            if f.kind == "cat":
                off, kids = 0, []
                for c in f.children:
                    cs = find(c).size
                    if off >= start and off + cs <= stop:
                        kids.append(c)
                    elif off < stop and off + cs > start:
                        break
                    off += cs
                else:
                    if sum(find(c).size for c in kids) == stop - start and kids:
                        return new_cat(kids)
            elif f.kind is None:
                sizes = [(start, "a"), (stop - start, "m"), (size - stop, "b")]
                kids = refine(f, "cat", [s for s, _ in sizes if s > 0])
                return kids[1 if start > 0 else 0]
        fix(f, f"slicing at {where}")
        return Factor(len(range(start, stop, step)), fixed=True, reason=where)

    # ---------------------------------------------------------------- layers
    def _layer(self, n, name, kind, tensors, inputs, output, **attrs):
        lay = Layer(name, kind, {k: v for k, v in tensors.items() if v in self.state_tensors
                                 and self.state_tensors[v] is not None},
                    inputs=inputs, output=output, sources=self._ordered(self._arg_frontier(n)),
                    attrs=attrs)
        self.layers.append(lay)
        self.layer_of[n] = lay
        return lay

    def linear(self, lx, w, b, where, n=None):
        union(w[1], lx[-1], f"input of {where}")
        if b is not None:
            union(b[0], w[0], where)
        return list(lx[:-1]) + [w[0]]

    def conv(self, x, lx, w, b, groups, out, where, n, transposed: bool):
        cin = x.shape[1]
        for f in lx[2:]:
            fix(f, f"spatial dimension at {where}")
        if transposed:   # weight (in, out/groups, k...)
            w_in, w_out = w[0], w[1]
        else:            # weight (out, in/groups, k...)
            w_out, w_in = w[0], w[1]
        for f in w[2:]:
            fix(f, f"kernel position in {where}")
        g = int(groups)
        if g == 1:
            union(w_in, lx[1], f"input of {where}")
            out_lab = w_out
        else:
            lg, li = split([lx[1]], [g, cin // g], f"grouped input of {where}") if cin // g > 1 \
                else (lx[1], Factor(1))
            if cin // g == 1:
                lg = lx[1]
            # a transposed conv's weight indexes every input channel on axis 0
            union(w_in, lx[1] if transposed else li, f"input of {where}")
            cout = out.shape[1]
            if transposed:
                out_lab = new_prod([lg, w_out]) if cout // g > 1 else lg
            else:
                per = cout // g
                if per > 1:
                    r = find(w_out)
                    if r.kind is None and not r.fixed:
                        go, fo = refine(r, "prod", [g, per])
                    else:
                        go, fo = split([w_out], [g, per], where)
                    union(go, lg, f"groups of {where}")
                    out_lab = w_out
                else:
                    union(w_out, lg, f"groups of {where}")
                    out_lab = w_out
        if b is not None:
            union(b[0], out_lab, where)
        return [lx[0], out_lab] + [Factor(s, fixed=True, reason=where) for s in out.shape[2:]]

    def group_norm(self, x, lx, g, w, b, where):
        c = x.shape[1]
        if 1 < g < c:
            split([lx[1]], [g, c // g], f"GroupNorm groups at {where}")
        for p in (w, b):
            if p is not None:
                union(p[0], lx[1], where)
        return list(lx)

    def module_rule(self, n, mod, args, kwargs, largs, lkwargs, out):
        t = n.target
        where = f"{type(mod).__name__} '{t}'"
        pn = lambda s: f"{t}.{s}" if t else s  # noqa: E731
        x = args[0] if args else None
        lx = largs[0] if largs else None
        if t in self.opaque:
            reason = self.opaque[t]
            self.reasons.append(f"'{t}': {reason}")
            self.fix_all((args, kwargs), (largs, lkwargs), reason)
            for k in self.state_tensors:
                if k.startswith(t + "."):
                    for f in self.param(k) or []:
                        fix(f, reason)
            return _fresh(out, reason)
        if _is_elementwise_module(mod) or isinstance(mod, (nn.Softmax, nn.LogSoftmax)):
            if isinstance(n.args[0], fx.Node) and n.args[0] in self.layer_of and not isinstance(mod, (nn.Identity, nn.Dropout)):
                lay = self.layer_of[n.args[0]]
                if lay.activation is None:
                    lay.activation = type(mod).__name__.lower()
            if isinstance(mod, (nn.Softmax, nn.LogSoftmax)) or len(args) == 1:
                return list(lx)
            return self.broadcast(out, list(_tree_labels(args, largs)), where)
        if isinstance(mod, nn.PReLU):
            w = self.param(pn("weight"))
            if mod.num_parameters > 1:
                union(w[0], lx[1], where)
            return list(lx)
        if isinstance(mod, nn.Linear):
            w = self.param(pn("weight"), [t, f"{t}:in"])
            b = self.param(pn("bias"), [t])
            res = self.linear(lx, w, b, where)
            self._layer(n, t, "linear", {"weight": pn("weight"), "bias": pn("bias")}, w[1], w[0])
            return res
        if isinstance(mod, _CONVS + _CONVT):
            w = self.param(pn("weight"), [t, f"{t}:in"] + [None] * (mod.weight.dim() - 2))
            transposed = isinstance(mod, _CONVT)
            if transposed:
                w = self.param(pn("weight"), [f"{t}:in", t] + [None] * (mod.weight.dim() - 2))
            b = self.param(pn("bias"), [t])
            if isinstance(mod.padding, str) and mod.padding != "valid" or getattr(mod, "padding_mode", "zeros") != "zeros":
                pass  # padding acts on spatial dims only
            res = self.conv(x, lx, w, b, mod.groups, out, where, n, transposed)
            self._layer(n, t, "conv_transpose" if transposed else "conv",
                        {"weight": pn("weight"), "bias": pn("bias")}, lx[1], res[1], groups=mod.groups)
            return res
        if isinstance(mod, _NORMS):
            names = ["weight", "bias", "running_mean", "running_var"]
            for s in names:
                p = self.param(pn(s), [f"{t}.{s}"])
                if p is not None:
                    union(p[0], lx[1], where)
            kind = "batchnorm" if isinstance(mod, nn.modules.batchnorm._BatchNorm) else "instancenorm"
            self._layer(n, t, kind, {s: pn(s) for s in names}, lx[1], lx[1])
            return list(lx)
        if isinstance(mod, nn.LayerNorm):
            k = len(mod.normalized_shape)
            for s in ("weight", "bias"):
                p = self.param(pn(s))
                if p is not None:
                    for a, c in zip(lx[-k:], p):
                        union(a, c, where)
            self._layer(n, t, "layernorm", {"weight": pn("weight"), "bias": pn("bias")},
                        lx[-1], lx[-1], normalized_shape=list(mod.normalized_shape))
            return list(lx)
        if isinstance(mod, nn.GroupNorm):
            res = self.group_norm(x, lx, mod.num_groups, self.param(pn("weight")),
                                  self.param(pn("bias")), where)
            self._layer(n, t, "groupnorm", {"weight": pn("weight"), "bias": pn("bias")}, lx[1], lx[1])
            return res
        if isinstance(mod, nn.Embedding):
            w = self.param(pn("weight"), [f"{t}:rows", t])
            fix(w[0], f"embedding rows are indexed by the input ({where})")
            self._layer(n, t, "embedding", {"weight": pn("weight")}, None, w[1])
            return [Factor(s, fixed=True, reason="model input") for s in x.shape] + [w[1]]
        if isinstance(mod, (nn.Flatten, nn.Unflatten)):
            return split(list(lx), list(out.shape), f"reshape at {where}")
        if isinstance(mod, _POOLS):
            nsp = int(type(mod).__name__[-2])
            for f in lx[x.dim() - nsp:]:
                fix(f, f"spatial dimension at {where}")
            res = list(lx[:x.dim() - nsp]) + [Factor(s, fixed=True, reason=where) for s in out.shape[out.dim() - nsp:]] \
                if isinstance(out, Tensor) else None
            if isinstance(out, tuple):  # return_indices
                r0 = list(lx[:x.dim() - nsp]) + [Factor(s, fixed=True, reason=where) for s in out[0].shape[out[0].dim() - nsp:]]
                return (r0, list(r0))
            return res
        if isinstance(mod, nn.MultiheadAttention):
            return self.mha(n, mod, t, args, kwargs, largs, lkwargs, out, where)
        reason = f"unsupported layer {where}"
        self.reasons.append(reason)
        self.fix_all((args, kwargs), (largs, lkwargs), reason)
        return _fresh(out, reason)

    def mha(self, n, mod, t, args, kwargs, largs, lkwargs, out, where):
        sig = inspect.signature(mod.forward)
        ba = sig.bind(*args, **kwargs)
        bl = sig.bind(*largs, **lkwargs)
        ba.apply_defaults()
        lab = dict(bl.arguments)
        lq, lk, lv = lab["query"], lab["key"], lab["value"]
        for name in ("key_padding_mask", "attn_mask"):
            if lab.get(name) is not None:
                self.fix_all(ba.arguments[name], lab[name], f"attention mask of {where}")
        for l in (lq, lk, lv):
            for f in l[:-1]:
                fix(f, f"token order in {where}")
        E, H = mod.embed_dim, mod.num_heads
        d = E // H
        heads = Factor(H, f"{t}.heads")
        qk = Factor(d, f"{t}.qk")
        vv = Factor(d, f"{t}.v")
        pqk, pv = new_prod([heads, qk]), new_prod([heads, vv])
        pn = lambda s: f"{t}.{s}" if t else s  # noqa: E731
        tensors = {}
        if mod._qkv_same_embed_dim:
            w = self.param(pn("in_proj_weight"))
            union(w[0], new_cat([pqk, pqk, pv]), where)
            for l in (lq, lk, lv):
                union(w[1], l[-1], f"input of {where}")
            tensors["in_proj_weight"] = pn("in_proj_weight")
        else:
            for s, l, p in (("q", lq, pqk), ("k", lk, pqk), ("v", lv, pv)):
                w = self.param(pn(f"{s}_proj_weight"))
                union(w[0], p, where)
                union(w[1], l[-1], f"input of {where}")
                tensors[f"{s}_proj_weight"] = pn(f"{s}_proj_weight")
        b = self.param(pn("in_proj_bias"))
        if b is not None:
            union(b[0], new_cat([pqk, pqk, pv]), where)
            tensors["in_proj_bias"] = pn("in_proj_bias")
        for s, p in (("bias_k", pqk), ("bias_v", pv)):
            bk = self.param(pn(s))
            if bk is not None:
                union(bk[-1], p, where)
                tensors[s] = pn(s)
        wo = self.param(pn("out_proj.weight"), [f"{t}.out_proj", None])
        union(wo[1], pv, where)
        bo = self.param(pn("out_proj.bias"))
        if bo is not None:
            union(bo[0], wo[0], where)
        tensors.update({"out_proj.weight": pn("out_proj.weight"), "out_proj.bias": pn("out_proj.bias")})
        src = {}
        for i, role in enumerate(("query", "key", "value")):
            arg = n.args[i] if i < len(n.args) else n.kwargs.get(role)
            src[f"{role[0]}_sources"] = list(self._ordered(self.frontier.get(arg, frozenset()))) \
                if isinstance(arg, fx.Node) else []
        self._layer(n, t, "attention", tensors, lq[-1], wo[0], num_heads=H, batch_first=mod.batch_first,
                    kdim=mod.kdim, vdim=mod.vdim, **src)
        res0 = list(lq[:-1]) + [wo[0]]
        w_out = out[1]
        if w_out is None:
            return (res0, None)
        if not ba.arguments.get("average_attn_weights", True) and w_out.dim() >= 3 and w_out.shape[-3] == H:
            lw = [Factor(s, fixed=True, reason=where) for s in w_out.shape]
            lw[-3] = heads
            return (res0, lw)
        return (res0, [Factor(s, fixed=True, reason=where) for s in w_out.shape])


# --------------------------------------------------------------------------- resolution
class _Namer:
    def __init__(self) -> None:
        self.names: dict[int, str] = {}
        self.used: set[str] = set()

    def __call__(self, r: Factor) -> str:
        key = id(r)
        if key not in self.names:
            base = r.name or f"group{len(self.names)}"
            base = base.replace(":", ".")
            name, k = base, 1
            while name in self.used:
                k += 1
                name = f"{base}#{k}"
            self.used.add(name)
            self.names[key] = name
        return self.names[key]


def _resolve(f: Factor, namer: _Namer, fixed_out: list[Factor]) -> Axis:
    r = find(f)
    if r.fixed or r.size == 1:
        if r.size > 1:
            fixed_out.append(r)
        return Unit(None, r.size)
    if r.kind is None:
        return Unit(namer(r), r.size)
    parts = [_resolve(c, namer, fixed_out) for c in r.children]
    if r.kind == "prod":
        flat: list[Axis] = []
        for p in parts:
            if isinstance(p, Prod):
                flat.extend(p.parts)
            elif p.size > 1:
                flat.append(p)
        # merge neighbouring unpermuted factors
        merged: list[Axis] = []
        for p in flat:
            if merged and isinstance(p, Unit) and p.group is None and isinstance(merged[-1], Unit) \
                    and merged[-1].group is None:
                merged[-1] = Unit(None, merged[-1].size * p.size)
            else:
                merged.append(p)
        if not merged:
            return Unit(None, r.size)
        if len(merged) == 1:
            return merged[0]
        if all(isinstance(p, Unit) and p.group is None for p in merged):
            return Unit(None, r.size)
        return Prod(tuple(merged))
    if all(isinstance(p, Unit) and p.group is None for p in parts):
        return Unit(None, r.size)
    return Cat(tuple(parts))


# axes that are positions, not neurons: no symmetry to report there
_NOT_NEURON_AXES = ("kernel position",)


def _first_fixed_reason(f: Factor) -> str:
    r = find(f)
    if r.fixed:
        return r.reason or "fixed"
    for c in r.children:
        s = _first_fixed_reason(c)
        if s:
            return s
    return ""


def trace(module: nn.Module, example_input: Any, *, check: bool = True,
          atol: float = 1e-6) -> Structure:
    """Find the permutation symmetry of ``module``: its groups of interchangeable units.

    Works on any ``nn.Module`` that ``torch.fx`` can trace (submodules it cannot trace
    are treated as opaque and their parameters left unpermuted, with the reason).
    Residual adds tie groups together, flatten ties channels to blocks of the next layer's
    inputs, concatenation composes groups, grouped/depthwise convolutions tie input and
    output channels, attention heads permute as blocks. Inputs and outputs are never
    permuted.

    Args:
        module: the network (its parameters' values are not used except by ``check``).
        example_input: one input batch (a tensor, or a tuple of positional inputs).
        check (bool, optional): verify that a random permutation leaves the output
            unchanged; groups that fail are fixed with a reason and a warning is issued,
            which would indicate a tracer bug. (default: ``True``)
        atol (float, optional): tolerance of the check, relative to the output's scale,
            computed in float64. (default: ``1e-6``)

    Returns:
        The :class:`Structure`, with every state-dict tensor's axes.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> s = trace(net, torch.randn(2, 4))
        >>> sorted(s.groups)
        ['0']
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"trace: expected an nn.Module, got {type(module).__name__}")
    inputs = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    tracer = _Tracer()
    was_training = module.training
    module.eval()
    try:
        try:
            graph = tracer.trace(module)
            gm = fx.GraphModule(tracer.root, graph)
            gm.graph.eliminate_dead_code()
        except Exception as e:
            return _untraceable(module, f"torch.fx could not trace {type(module).__name__} "
                                        f"({type(e).__name__}: {str(e).splitlines()[0][:160]})")
        run = _Run(gm, module, tracer.opaque)
        with torch.no_grad():
            try:
                run.run(*inputs)
            except Exception as e:
                raise ValueError(f"trace: running {type(module).__name__} on the example input "
                                 f"failed: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    finally:
        module.train(was_training)
    structure = _build(module, run)
    if check:
        structure = _verify(module, structure, inputs, atol)
    return structure


def _untraceable(module: nn.Module, reason: str) -> Structure:
    state = module.state_dict()
    axes = {k: (None,) * v.dim() for k, v in state.items()}
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    unp = [Unpermuted(k, i, s, reason) for k, v in state.items() for i, s in enumerate(v.shape) if s > 1]
    return Structure._finish(axes, shapes, unp, [])


def _build(module: nn.Module, run: _Run) -> Structure:
    namer = _Namer()
    state = module.state_dict(keep_vars=True)
    # aliases: tied tensors share labels
    by_id: dict[int, str] = {}
    alias: dict[str, str] = {}
    for k, v in state.items():
        if v is None:
            continue
        key = (v.data_ptr(), tuple(v.shape), v.dtype) if v.numel() else id(v)
        key = hash(key)
        if key in by_id and v.numel():
            alias[k] = by_id[key]
        else:
            by_id[key] = k
    # param labels recorded under the name fx used; copy to aliases
    for k, a in alias.items():
        if k in run.params and a in run.params:
            for x, y in zip(run.params[k], run.params[a]):
                union(x, y, "tied tensors")
        elif k in run.params:
            run.params[a] = run.params[k]
    axes: dict[str, tuple] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    unp: list[Unpermuted] = []
    for k, v in state.items():
        if v is None:
            continue
        shapes[k] = tuple(v.shape)
        labels = run.params.get(k) or run.params.get(alias.get(k, ""))
        if labels is None:
            axes[k] = (None,) * v.dim()
            if v.dim() and v.numel() > 1:
                for i, s in enumerate(v.shape):
                    if s > 1:
                        unp.append(Unpermuted(k, i, s, "not used in the traced forward pass"))
            continue
        ax = []
        for i, f in enumerate(labels):
            fixed: list[Factor] = []
            a = _resolve(f, namer, fixed)
            ax.append(None if isinstance(a, Unit) and a.group is None else a)
            if v.shape[i] > 1 and (a is None or isinstance(a, Unit) and a.group is None):
                reason = _first_fixed_reason(f) or "fixed"
                if not reason.startswith(_NOT_NEURON_AXES):
                    unp.append(Unpermuted(k, i, v.shape[i], reason))
            elif fixed and v.shape[i] > 1:
                pass  # partially permuted (e.g. flatten's spatial positions): by design
        axes[k] = tuple(ax)
    layers = []
    for lay in run.layers:
        fixed: list[Factor] = []
        ins = _resolve(lay.inputs, namer, fixed) if isinstance(lay.inputs, Factor) else None
        outs = _resolve(lay.output, namer, fixed) if isinstance(lay.output, Factor) else None
        layers.append(Layer(lay.name, lay.kind, lay.tensors, ins, outs, lay.activation, lay.sources, lay.attrs))
    out = Structure._finish(axes, shapes, unp, layers)
    out.outputs = run.outputs
    out.buffers = frozenset(name for name, _ in module.named_buffers())
    return out


# --------------------------------------------------------------------------- verification
def _flat_outputs(x) -> list[Tensor]:
    return [t for t in _tree_tensors(x) if t.is_floating_point() or t.is_complex()]


def check_structure(module: nn.Module, structure: Structure, example_input: Any,
                    perms: dict[str, Tensor] | None = None, *, seed: int = 0) -> float:
    """Largest output change (relative to the output's scale, in float64) caused by
    permuting ``module``'s weights with ``perms`` (default: a random permutation).

    Shipped as a test helper: a correct structure gives ~1e-15.
    """
    return _Checker(module, example_input)(structure, random_permutation(structure, seed) if perms is None else perms)


class _Checker:
    """The float64 copy of a module and its inputs, made once for several checks."""

    def __init__(self, module: nn.Module, example_input: Any) -> None:
        inputs = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
        self.module = copy.deepcopy(module).double().eval()
        self.inputs = tuple(t.double() if isinstance(t, Tensor) and t.is_floating_point() else t for t in inputs)
        self.state = dict(self.module.state_dict())
        self._reference = None

    def __call__(self, structure: Structure, perms: dict[str, Tensor]) -> float:
        permuted = permute(structure, self.state, perms)
        with torch.no_grad():
            if self._reference is None:
                self._reference = _flat_outputs(torch.func.functional_call(self.module, self.state, self.inputs,
                                                                           tie_weights=False))
            b = _flat_outputs(torch.func.functional_call(self.module, permuted, self.inputs, tie_weights=False))
        err = 0.0
        for x, y in zip(self._reference, b):
            scale = 1.0 + float(x.abs().max()) if x.numel() else 1.0
            err = max(err, float((x - y).abs().max()) / scale if x.numel() else 0.0)
        return err


def _verify(module: nn.Module, structure: Structure, inputs, atol: float) -> Structure:
    if not structure.groups:
        return structure
    check = _Checker(module, inputs)  # one float64 copy and one reference pass for every check
    errs = {seed: check(structure, random_permutation(structure, seed)) for seed in (0, 1)}
    if max(errs.values()) <= atol:
        return structure
    bad = []
    for g in structure.groups:
        if any(check(structure, {g: random_permutation(structure, seed)[g]}) > atol for seed in (0, 1, 2)):
            bad.append(g)
    warnings.warn(f"trace: permuting {bad} changed the output of {type(module).__name__}; "
                  f"they are left unpermuted (please report this as a bug)")
    return _drop_groups(structure, set(bad), "permuting it changed the output (not provably safe)")


def _drop_groups(structure: Structure, bad: set[str], reason: str) -> Structure:
    def strip(a):
        if a is None:
            return None
        if isinstance(a, Unit):
            return Unit(None, a.size) if a.group in bad else a
        parts = tuple(strip(p) for p in a.parts)
        if all(isinstance(p, Unit) and p.group is None for p in parts):
            return Unit(None, a.size)
        return type(a)(parts)

    axes, unp = {}, list(structure.unpermuted)
    for k, ax in structure.axes.items():
        new = []
        for i, a in enumerate(ax):
            s = strip(a)
            if isinstance(s, Unit) and s.group is None:
                if a is not None and structure.shapes[k][i] > 1:
                    unp.append(Unpermuted(k, i, structure.shapes[k][i], reason))
                s = None
            new.append(s)
        axes[k] = tuple(new)
    out = Structure._finish(axes, structure.shapes, unp, structure.layers)
    out.outputs = structure.outputs
    out.buffers = structure.buffers
    return out
