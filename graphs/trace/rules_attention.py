"""Rules of attention: matrix products, ``scaled_dot_product_attention`` and
``nn.MultiheadAttention`` (heads permute as blocks; the dimensions inside a head permute
consistently for Q with K and for V with the output projection; token order is fixed)."""
from __future__ import annotations

import inspect

import torch.fx as fx
import torch.nn as nn
from torch import Tensor

from .._factors import Factor, fix, new_cat, new_prod, union
from .registry import Call, module_rule, op_rule


@op_rule("matmul")
def matmul(run, c: Call):
    a, b, out, where = c.args[0], c.args[1], c.out, c.where
    la, lb = c.largs[0], c.largs[1]
    if a.dim() == 1 and b.dim() == 1:
        union(la[0], lb[0], where)
        return []
    if a.dim() == 1:
        union(la[0], lb[-2], where)
        if b.dim() > 2:
            return run.broadcast(out[..., 0], [(b[..., 0, 0], lb[:-2])], where) + [lb[-1]]
        return [lb[-1]]
    if b.dim() == 1:
        union(la[-1], lb[0], where)
        return list(la[:-1])
    union(la[-1], lb[-2], where)
    batch = run.broadcast(out[..., 0, 0], [(a[..., 0, 0], la[:-2]), (b[..., 0, 0], lb[:-2])], where) \
        if out.dim() > 2 else []
    return batch + [la[-2], lb[-1]]


@op_rule("addmm")
def addmm(run, c: Call):
    """``bias + a @ b`` (``aten.addmm``; transformers' GPT-2 ``Conv1D``)."""
    bias, a, b = c.args[:3]
    lbias, la, lb = c.largs[:3]
    if a.dim() != 2 or b.dim() != 2:
        raise ValueError("addmm of non-matrices")
    owner = (run.state_name(c.nargs[2]) or "").rpartition(".")[0]
    run.rename_lifted(c.nargs[2], lb, [f"{owner}:in", owner])    # the weight is (in, out)
    union(la[-1], lb[0], c.where)
    pairs = [(c.out, [la[0], lb[1]])]
    if isinstance(bias, Tensor) and lbias is not None:
        pairs.append((bias, lbias))
    res = run.broadcast(c.out, pairs, c.where)
    weight, b = run.state_name(c.nargs[2]), run.state_name(c.nargs[0])
    if weight is not None:  # a layer whose weight is stored (in, out): activation matching hooks it
        run.layer(c.node, owner or weight, "linear_t", {"weight": weight, **({"bias": b} if b else {})},
                  la[-1], res[-1], functional=True)
    return res


@op_rule("baddbmm")
def baddbmm(run, c: Call):
    """``beta * input + alpha * (batch1 @ batch2)`` (``torch.baddbmm``; BLOOM's attention
    scores with the ALiBi bias as ``input``): a batched product whose result broadcasts
    with ``input``."""
    inp, a, b = c.args[:3]
    linp, la, lb = c.largs[:3]
    if a.dim() != 3 or b.dim() != 3:
        raise ValueError("baddbmm of non-batches of matrices")
    union(la[-1], lb[-2], c.where)
    batch = run.broadcast(c.out[:, 0, 0], [(a[:, 0, 0], la[:1]), (b[:, 0, 0], lb[:1])], c.where)
    pairs = [(c.out, batch + [la[1], lb[2]])]
    if isinstance(inp, Tensor) and linp is not None:
        pairs.append((inp, linp))
    return run.broadcast(c.out, pairs, c.where)


@op_rule("sdpa")
def sdpa(run, c: Call):
    """``softmax(q k^T + mask) v`` over the last two dimensions (tokens, features); the
    leading (batch, head) dimensions of q, k, v and the mask broadcast together."""
    q, k, v = c.args[:3]
    lq, lk, lv = c.largs[:3]
    out, where = c.out, c.where
    union(lq[-1], lk[-1], where)
    for l in (lq, lk, lv):
        fix(l[-2], f"token order in attention ({where})")
    pairs = [(t[..., 0, 0], l[:-2]) for t, l in ((q, lq), (k, lk), (v, lv))]
    mask, lmask = c.arg(3, "attn_mask"), c.larg(3, "attn_mask")
    if isinstance(mask, Tensor) and lmask is not None:
        for f in lmask[-2:]:
            fix(f, f"attention mask of {where}")
        if mask.dim() > 2:
            pairs.append((mask[..., 0, 0], lmask[:-2]))
    batch = run.broadcast(out[..., 0, 0] if out.dim() >= 2 else out, pairs, where)
    return batch + [lq[-2], lv[-1]]


@module_rule(nn.MultiheadAttention)
def multihead_attention(run, c: Call):
    mod, t, pn, n, where = c.module, c.target, c.pname, c.node, c.where
    sig = inspect.signature(mod.forward)
    ba = sig.bind(*c.args, **c.kwargs)
    bl = sig.bind(*c.largs, **c.lkwargs)
    ba.apply_defaults()
    lab = dict(bl.arguments)
    lq, lk, lv = lab["query"], lab["key"], lab["value"]
    for name in ("key_padding_mask", "attn_mask"):
        if lab.get(name) is not None:
            run.fix_all(ba.arguments[name], lab[name], f"attention mask of {where}")
    for l in (lq, lk, lv):
        for f in l[:-1]:
            fix(f, f"token order in {where}")
    E, H = mod.embed_dim, mod.num_heads
    d = E // H
    heads = Factor(H, f"{t}.heads")
    qk = Factor(d, f"{t}.qk")
    vv = Factor(d, f"{t}.v")
    pqk, pv = new_prod([heads, qk]), new_prod([heads, vv])
    tensors = {}
    if mod._qkv_same_embed_dim:
        w = run.param(pn("in_proj_weight"))
        union(w[0], new_cat([pqk, pqk, pv]), where)
        for l in (lq, lk, lv):
            union(w[1], l[-1], f"input of {where}")
        tensors["in_proj_weight"] = pn("in_proj_weight")
    else:
        for s, l, p in (("q", lq, pqk), ("k", lk, pqk), ("v", lv, pv)):
            w = run.param(pn(f"{s}_proj_weight"))
            union(w[0], p, where)
            union(w[1], l[-1], f"input of {where}")
            tensors[f"{s}_proj_weight"] = pn(f"{s}_proj_weight")
    b = run.param(pn("in_proj_bias"))
    if b is not None:
        union(b[0], new_cat([pqk, pqk, pv]), where)
        tensors["in_proj_bias"] = pn("in_proj_bias")
    for s, p in (("bias_k", pqk), ("bias_v", pv)):
        bk = run.param(pn(s))
        if bk is not None:
            union(bk[-1], p, where)
            tensors[s] = pn(s)
    wo = run.param(pn("out_proj.weight"), [f"{t}.out_proj", None])
    union(wo[1], pv, where)
    bo = run.param(pn("out_proj.bias"))
    if bo is not None:
        union(bo[0], wo[0], where)
    tensors.update({"out_proj.weight": pn("out_proj.weight"), "out_proj.bias": pn("out_proj.bias")})
    src = {}
    for i, role in enumerate(("query", "key", "value")):
        arg = n.args[i] if i < len(n.args) else n.kwargs.get(role)
        src[f"{role[0]}_sources"] = list(run.ordered(run.frontier.get(arg, frozenset()))) \
            if isinstance(arg, fx.Node) else []
    run.layer(n, t, "attention", tensors, lq[-1], wo[0], num_heads=H, batch_first=mod.batch_first,
              kdim=mod.kdim, vdim=mod.vdim, **src)
    res0 = list(lq[:-1]) + [wo[0]]
    w_out = c.out[1]
    if w_out is None:
        return (res0, None)
    lw = [Factor(s, fixed=True, reason=where) for s in w_out.shape]
    if not ba.arguments.get("average_attn_weights", True) and w_out.dim() >= 3 and w_out.shape[-3] == H:
        lw[-3] = heads
    return (res0, lw)
