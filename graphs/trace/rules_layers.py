"""Rules of parametric layers, as modules and as ``torch.nn.functional`` calls: linear,
convolution (grouped, depthwise, transposed), normalisation, embedding, PReLU, and the
spatial operations (pooling, interpolation, padding) that fix spatial dimensions."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from .._factors import Factor, find, fix, new_prod, refine, split, union
from .labels import fresh
from .names import target_name
from .registry import Call, module_rule, op_rule

POOLS = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONV_TRANSPOSES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


# ---------------------------------------------------------------------------- shared kernels
def linear(lx: list[Factor], w: list[Factor], b: list[Factor] | None, where: str) -> list[Factor]:
    """``x @ w.T + b``: the input features are the weight's columns."""
    union(w[1], lx[-1], f"input of {where}")
    if b is not None:
        union(b[0], w[0], where)
    return list(lx[:-1]) + [w[0]]


def conv(x: Tensor, lx, w, b, groups: int, out: Tensor, where: str, transposed: bool) -> list[Factor]:
    """A convolution: channels tied as in ``linear``; with ``groups > 1`` the channels are
    a product (group x channel in group) and the groups permute together."""
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
        if cin // g > 1:
            lg, li = split([lx[1]], [g, cin // g], f"grouped input of {where}")
        else:
            lg, li = lx[1], Factor(1)
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
                    go, _ = refine(r, "prod", [g, per])
                else:
                    go, _ = split([w_out], [g, per], where)
                union(go, lg, f"groups of {where}")
            else:
                union(w_out, lg, f"groups of {where}")
            out_lab = w_out
    if b is not None:
        union(b[0], out_lab, where)
    return [lx[0], out_lab] + [Factor(s, fixed=True, reason=where) for s in out.shape[2:]]


def group_norm(x: Tensor, lx, g: int, w, b, where: str) -> list[Factor]:
    """GroupNorm normalises within groups of channels: the groups permute as blocks."""
    c = x.shape[1]
    if 1 < g < c:
        split([lx[1]], [g, c // g], f"GroupNorm groups at {where}")
    for p in (w, b):
        if p is not None:
            union(p[0], lx[1], where)
    return list(lx)


def _spatial_dims(c: Call) -> int:
    t = c.node.target
    for k in (1, 2, 3):
        if target_name(t).endswith(f"{k}d"):
            return k
    return max(c.x.dim() - 2, 0)


# ---------------------------------------------------------------------------- linear
@module_rule(nn.Linear)
def linear_module(run, c: Call):
    t, pn = c.target, c.pname
    w = run.param(pn("weight"), [t, f"{t}:in"])
    b = run.param(pn("bias"), [t])
    res = linear(c.lx, w, b, c.where)
    run.layer(c.node, t, "linear", {"weight": pn("weight"), "bias": pn("bias")}, w[1], w[0])
    return res


@op_rule("linear")
def linear_function(run, c: Call):
    w = c.larg(1, "weight")
    b = c.larg(2, "bias")
    res = linear(c.lx, w, b, c.where)
    run.functional_layer(c, "linear", ("weight", "bias"), w[1], w[0])
    return res


# ---------------------------------------------------------------------------- convolution
@module_rule(*CONVS, *CONV_TRANSPOSES)
def conv_module(run, c: Call):
    t, pn, mod = c.target, c.pname, c.module
    transposed = isinstance(mod, CONV_TRANSPOSES)
    kernel = [None] * (mod.weight.dim() - 2)   # a transposed conv's weight is (in, out/groups, k...)
    w = run.param(pn("weight"), ([f"{t}:in", t] if transposed else [t, f"{t}:in"]) + kernel)
    b = run.param(pn("bias"), [t])
    res = conv(c.x, c.lx, w, b, mod.groups, c.out, c.where, transposed)
    run.layer(c.node, t, "conv_transpose" if transposed else "conv",
              {"weight": pn("weight"), "bias": pn("bias")}, c.lx[1], res[1], groups=mod.groups)
    return res


@op_rule("conv")
def conv_function(run, c: Call):
    w = c.larg(1, "weight")
    b = c.larg(2, "bias")
    groups = c.arg(6, "groups", 1)
    res = conv(c.x, c.lx, w, b, groups, c.out, c.where, transposed=False)
    run.functional_layer(c, "conv", ("weight", "bias"), c.lx[1], res[1], groups=groups)
    return res


@op_rule("conv_transpose")
def conv_transpose_function(run, c: Call):
    """``F.conv_transpose*d(x, weight, bias, stride, padding, output_padding, groups, ...)``."""
    w = c.larg(1, "weight")
    b = c.larg(2, "bias")
    groups = c.arg(6, "groups", 1)
    res = conv(c.x, c.lx, w, b, groups, c.out, c.where, transposed=True)
    run.functional_layer(c, "conv_transpose", ("weight", "bias"), c.lx[1], res[1], groups=groups)
    return res


# ---------------------------------------------------------------------------- normalisation
@module_rule(nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
def channel_norm_module(run, c: Call):
    t, pn = c.target, c.pname
    names = ["weight", "bias", "running_mean", "running_var"]
    for s in names:
        p = run.param(pn(s), [f"{t}.{s}"])
        if p is not None:
            union(p[0], c.lx[1], c.where)
    kind = "batchnorm" if isinstance(c.module, nn.modules.batchnorm._BatchNorm) else "instancenorm"
    run.layer(c.node, t, kind, {s: pn(s) for s in names}, c.lx[1], c.lx[1])
    return list(c.lx)


@op_rule("batch_norm")
def batch_norm_function(run, c: Call):
    lx = c.lx
    rm, rv = c.largs[1], c.largs[2]
    w = c.larg(3, "weight")
    b = c.larg(4, "bias")
    for p in (rm, rv, w, b):
        if p is not None:
            union(lx[1], p[0], c.where)
    kind = "instancenorm" if target_name(c.node.target) == "instance_norm" else "batchnorm"
    run.functional_layer(c, kind, ("running_mean", "running_var", "weight", "bias"), lx[1], lx[1])
    return list(lx)


@op_rule("batch_norm_no_training")
def aten_batch_norm_no_training(run, c: Call):
    """``aten._native_batch_norm_legit_no_training(x, w, b, mean, var, ...)``: the
    output, then statistics the graph does not use."""
    lx = c.lx
    for p in c.largs[1:5]:
        if p is not None:
            union(lx[1], p[0], c.where)
    run.functional_layer(c, "batchnorm", ("weight", "bias", "running_mean", "running_var"), lx[1], lx[1])
    return (list(lx),) + tuple(fresh(o, c.where) for o in c.out[1:])


def _layer_norm(lx, k: int, w, b, where: str) -> list[Factor]:
    for p in (w, b):
        if p is not None:
            for a, f in zip(lx[-k:], p):
                union(a, f, where)
    return list(lx)


@module_rule(nn.LayerNorm)
def layer_norm_module(run, c: Call):
    t, pn = c.target, c.pname
    shape = list(c.module.normalized_shape)
    res = _layer_norm(c.lx, len(shape), run.param(pn("weight")), run.param(pn("bias")), c.where)
    run.layer(c.node, t, "layernorm", {"weight": pn("weight"), "bias": pn("bias")},
              c.lx[-1], c.lx[-1], normalized_shape=shape)
    return res


@op_rule("layer_norm")
def layer_norm_function(run, c: Call):
    """``F.layer_norm(x, shape, weight, bias, eps)``, and ``F.rms_norm(x, shape, weight, eps)``
    (its ``eps`` in the bias's place carries no labels)."""
    shape = c.arg(1, "normalized_shape")
    k = len(shape) if isinstance(shape, (list, tuple, torch.Size)) else 1
    res = _layer_norm(c.lx, k, c.larg(2, "weight"), c.larg(3, "bias"), c.where)
    if target_name(c.node.target) == "layer_norm":   # (no layer kind for RMSNorm)
        run.functional_layer(c, "layernorm", ("normalized_shape", "weight", "bias"), c.lx[-1], c.lx[-1],
                             normalized_shape=list(shape) if isinstance(shape, (list, tuple, torch.Size)) else [shape])
    return res


@module_rule(nn.GroupNorm)
def group_norm_module(run, c: Call):
    t, pn = c.target, c.pname
    res = group_norm(c.x, c.lx, c.module.num_groups, run.param(pn("weight")), run.param(pn("bias")), c.where)
    run.layer(c.node, t, "groupnorm", {"weight": pn("weight"), "bias": pn("bias")}, c.lx[1], c.lx[1])
    return res


@op_rule("group_norm")
def group_norm_function(run, c: Call):
    res = group_norm(c.x, c.lx, c.arg(1, "num_groups"), c.larg(2, "weight"), c.larg(3, "bias"), c.where)
    run.functional_layer(c, "groupnorm", ("num_groups", "weight", "bias"), c.lx[1], c.lx[1])
    return res


# ---------------------------------------------------------------------------- embedding, PReLU
@module_rule(nn.Embedding)
def embedding_module(run, c: Call):
    t = c.target
    w = run.param(c.pname("weight"), [f"{t}:rows", t])
    fix(w[0], f"embedding rows are indexed by the input ({c.where})")
    run.layer(c.node, t, "embedding", {"weight": c.pname("weight")}, None, w[1])
    return [Factor(s, fixed=True, reason="model input") for s in c.x.shape] + [w[1]]


@op_rule("embedding")
def embedding_function(run, c: Call):
    w = c.larg(1, "weight")
    owner = (run.state_name(c.nargs[1]) or "").rpartition(".")[0]
    run.rename_lifted(c.nargs[1], w, [f"{owner}:rows", owner])
    fix(w[0], f"embedding rows are indexed by the input ({c.where})")
    run.functional_layer(c, "embedding", ("weight",), None, w[1])
    return [Factor(s, fixed=True, reason="model input") for s in c.x.shape] + [w[1]]


@module_rule(nn.PReLU)
def prelu_module(run, c: Call):
    w = run.param(c.pname("weight"))
    if c.module.num_parameters > 1:
        union(w[0], c.lx[1], c.where)
    return list(c.lx)


@op_rule("prelu")
def prelu_function(run, c: Call):
    """``F.prelu(x, weight)``: one slope per channel (dimension 1), or one for all."""
    w = c.larg(1, "weight")
    if c.arg(1, "weight").numel() > 1:
        union(w[0], c.lx[1], c.where)
    return list(c.lx)


# ---------------------------------------------------------------------------- spatial operations
def _spatial(lx, x: Tensor, out: Tensor, nsp: int, where: str) -> list[Factor]:
    for f in lx[x.dim() - nsp:]:
        fix(f, f"spatial dimension at {where}")
    return list(lx[:x.dim() - nsp]) + [Factor(s, fixed=True, reason=where) for s in out.shape[out.dim() - nsp:]]


@op_rule("pad")
def pad(run, c: Call):
    """``F.pad(x, pad, ...)`` (``aten.pad``, ``aten.constant_pad_nd``): the padded
    dimensions (the last ``len(pad) // 2``, those with a non-zero amount) are fixed; the
    others, channels among them, pass through."""
    x, lx, amounts = c.x, c.lx, list(c.arg(1, "pad"))
    res = list(lx)
    for i in range(len(amounts) // 2):
        d = x.dim() - 1 - i
        if amounts[2 * i] or amounts[2 * i + 1]:
            fix(lx[d], f"padded dimension at {c.where}")
            res[d] = Factor(c.out.shape[d], fixed=True, reason=c.where)
    return res


@op_rule("pool", "spatial")
def spatial_function(run, c: Call):
    if isinstance(c.out, tuple):  # ATen's max pools: (values, indices)
        r0 = _spatial(c.lx, c.x, c.out[0], _spatial_dims(c), c.where)
        return (r0, list(r0))
    return _spatial(c.lx, c.x, c.out, _spatial_dims(c), c.where)


@module_rule(*POOLS)
def pool_module(run, c: Call):
    nsp = int(type(c.module).__name__[-2])
    if isinstance(c.out, tuple):  # return_indices
        r0 = _spatial(c.lx, c.x, c.out[0], nsp, c.where)
        return (r0, list(r0))
    if isinstance(c.out, Tensor):
        return _spatial(c.lx, c.x, c.out, nsp, c.where)
    for f in c.lx[c.x.dim() - nsp:]:
        fix(f, f"spatial dimension at {c.where}")
    return None
