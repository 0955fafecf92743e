"""Rules of parameter-free tensor operations: elementwise functions and activations,
casts, shape queries, reshapes and dimension moves, reductions, concatenation and
splitting, indexing."""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn
from torch import Tensor

from .._factors import Factor, atoms, find, fix, new_cat, new_prod, refine, split, union
from .labels import dims, fresh, tree_labels
from .names import ELEMENTWISE_METHODS, target_name
from .registry import Call, Elementwise, module_rule, op_rule

ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.SELU,
    nn.CELU, nn.Softplus, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Mish, nn.Tanhshrink,
    nn.Softsign, nn.LogSigmoid, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
    nn.Dropout3d, nn.AlphaDropout,
)


# ---------------------------------------------------------------------------- elementwise
@op_rule("elementwise", *ELEMENTWISE_METHODS)
def elementwise(run, c: Call):
    if not isinstance(c.out, Tensor):
        return None
    if len(c.args) == 1:
        run.note_activation(c.node, target_name(c.node.target))
    return run.broadcast(c.out, list(tree_labels((c.args, c.kwargs), (c.largs, c.lkwargs))), c.where)


@module_rule(Elementwise, nn.Softmax, nn.LogSoftmax, *ACTIVATIONS)
def elementwise_module(run, c: Call):
    mod = c.module
    if not isinstance(mod, (nn.Identity, nn.Dropout)):
        run.note_activation(c.node, type(mod).__name__.lower())
    if isinstance(mod, (nn.Softmax, nn.LogSoftmax)) or len(c.args) == 1:
        return list(c.lx)
    return run.broadcast(c.out, list(tree_labels(c.args, c.largs)), c.where)


@op_rule("softmax", "log_softmax", "normalize", "like")
def same_labels(run, c: Call):
    """Equivariant along any dimension (softmax), or a new tensor shaped like the input."""
    return list(c.lx)


@op_rule("fresh")
def fresh_tensor(run, c: Call):
    return fresh(c.out, c.where)


@op_rule("to", "type_as", "type", "cpu", "cuda")
def cast(run, c: Call):
    if isinstance(c.out, Tensor) and isinstance(c.x, Tensor):
        return list(c.lx) if c.x.shape == c.out.shape else fresh(c.out, c.where)
    if c.name == "type":  # x.type(): the type's name
        return None
    return run.unsupported(c, f"unsupported operation {c.where}")


@op_rule("size", "dim", "numel", "ndimension", "nelement", "shape", "dtype", "device", "is_cuda")
def shape_query(run, c: Call):
    return None


@op_rule("getattr")
def attribute(run, c: Call):
    obj, attr = c.args[0], c.args[1]
    if isinstance(obj, Tensor) and attr in ("T", "mT") and isinstance(c.out, Tensor):
        l = list(c.lx)
        if attr == "T":
            return l[::-1]
        return l[:-2] + [l[-1], l[-2]]
    if isinstance(c.out, Tensor):
        raise ValueError(f"attribute {attr!r}")
    return None


# ---------------------------------------------------------------------------- shapes
@op_rule("view", "reshape", "flatten", "unflatten", "view_as", "reshape_as")
def reshape(run, c: Call):
    if c.name in ("view", "reshape") and len(c.args) == 2 and isinstance(c.args[1], torch.dtype):
        raise ValueError("dtype view")
    return split(list(c.lx), list(c.out.shape), f"reshape at {c.where}")


@module_rule(nn.Flatten, nn.Unflatten)
def reshape_module(run, c: Call):
    return split(list(c.lx), list(c.out.shape), f"reshape at {c.where}")


@op_rule("transpose", "swapaxes", "swapdims")
def transpose(run, c: Call):
    l = list(c.lx)
    d0, d1 = c.arg(1, "dim0") % len(l), c.arg(2, "dim1") % len(l)
    l[d0], l[d1] = l[d1], l[d0]
    return l


@op_rule("t")
def t(run, c: Call):
    return list(c.lx)[::-1]


@op_rule("permute")
def permute(run, c: Call):
    lx = c.lx
    is_method = c.node.op == "call_method"
    order = c.args[1:] if is_method else c.args[1]
    if is_method and len(order) == 1 and isinstance(order[0], (list, tuple)):
        order = order[0]
    if not order:
        order = c.kwargs["dims"]
    return [lx[d % len(lx)] for d in order]


@op_rule("unsqueeze")
def unsqueeze(run, c: Call):
    l = list(c.lx)
    d = c.args[1] if len(c.args) > 1 else c.kwargs["dim"]
    d = d % (len(l) + 1)
    return l[:d] + [Factor(1)] + l[d:]


@op_rule("squeeze")
def squeeze(run, c: Call):
    x, lx, out = c.x, c.lx, c.out
    if out.dim() == x.dim():
        return list(lx)
    return [f for f, s in zip(lx, x.shape) if not (s == 1 and find(f).size == 1)]


@op_rule("expand", "expand_as", "broadcast_to")
def expand(run, c: Call):
    """A broadcast copy: the dimensions it creates (new leading ones, and size-1 ones
    stretched) hold equal slices, so the result is unchanged by any permutation of them:
    each gets a new free factor, which whatever it is tied to later may permute (a
    grouped-query attention's key and value heads repeated for their query heads: the
    query heads of one key/value head then permute among themselves)."""
    x, lx, out = c.x, c.lx, c.out
    off = out.dim() - x.dim()
    res = [Factor(s) for s in out.shape[:off]]
    for d in range(x.dim()):
        res.append(lx[d] if x.shape[d] == out.shape[off + d] else Factor(out.shape[off + d]))
    return res


@op_rule("repeat_interleave")
def repeat_interleave(run, c: Call):
    """``x.repeat_interleave(r, dim)`` with one int ``r``: entry ``i * r + j`` of ``dim`` is
    ``x``'s entry ``i``, so the dimension is the product (``x``'s factor, a new free factor
    of size ``r``); permuting the copies of one entry among themselves changes nothing."""
    x, lx = c.x, c.lx
    r, d = c.arg(1, "repeats"), c.arg(2, "dim")
    if not isinstance(x, Tensor) or isinstance(r, Tensor) or not isinstance(r, int) or d is None:
        raise ValueError("repeat_interleave with repeats other than one int, or without dim")
    d = d % x.dim()
    res = list(lx)
    res[d] = new_prod([lx[d], Factor(r)]) if r > 1 else lx[d]
    return res


# ---------------------------------------------------------------------------- reductions
@op_rule("mean", "sum", "amax", "amin", "std", "var", "norm", "logsumexp", "prod")
def reduction(run, c: Call):
    args, kwargs, x, lx = c.args, c.kwargs, c.x, c.lx
    dim = args[1] if len(args) > 1 and not isinstance(args[1], torch.dtype) else kwargs.get("dim")
    if c.name == "norm":
        dim = kwargs.get("dim", args[2] if len(args) > 2 else None)
    keep = kwargs.get("keepdim", False) or (len(args) > 2 and args[2] is True and c.name != "norm")
    if not isinstance(c.out, Tensor):
        return None
    ds = dims(dim, x.dim())
    if keep:
        return [Factor(1) if d in ds else lx[d] for d in range(x.dim())]
    return [lx[d] for d in range(x.dim()) if d not in ds]


@op_rule("max", "min")
def max_min(run, c: Call):
    """``max(a, b)`` is elementwise; ``max(x, dim)`` returns values and indices."""
    args, kwargs, x, lx, out = c.args, c.kwargs, c.x, c.lx, c.out
    if isinstance(out, Tensor) and len(args) <= 1 and "dim" not in kwargs:
        if out.dim() == 0:
            return []
        return run.broadcast(out, list(tree_labels((args, kwargs), (c.largs, c.lkwargs))), c.where)
    if isinstance(out, Tensor) and len(args) == 2 and isinstance(args[1], Tensor):
        return run.broadcast(out, list(tree_labels(args, c.largs)), c.where)
    dim = args[1] if len(args) > 1 else kwargs["dim"]
    keep = kwargs.get("keepdim", False) or (len(args) > 2 and bool(args[2]))
    d = dim % x.dim()
    fix(lx[d], f"indices along a dimension at {c.where}")
    rest = [Factor(1) if i == d else lx[i] for i in range(x.dim())] if keep else \
        [lx[i] for i in range(x.dim()) if i != d]
    return (rest, [Factor(f.size if isinstance(f, Factor) else 1, fixed=True, reason=c.where) for f in rest])


# ---------------------------------------------------------------------------- cat, stack, split
@op_rule("cat")
def cat(run, c: Call):
    ts, out = c.args[0], c.out
    keep = [i for i, t in enumerate(ts) if t.numel() > 0 or t.dim() > 1]
    ls = [c.largs[0][i] for i in keep]
    d = c.arg(1, "dim", 0) % out.dim()
    res = []
    for i in range(out.dim()):
        if i == d:   # pieces empty along the dimension (a rotary split at the head size) add nothing
            kept = [l[i] for l, j in zip(ls, keep) if ts[j].shape[d] > 0] or [l[i] for l in ls]
            res.append(new_cat(kept))
        else:
            for l in ls[1:]:
                union(ls[0][i], l[i], f"concatenation at {c.where}")
            res.append(ls[0][i])
    return res


@op_rule("stack")
def stack(run, c: Call):
    out = c.out
    d = c.arg(1, "dim", 0) % out.dim()
    ls = list(c.largs[0])
    for l in ls[1:]:
        for a, b in zip(ls[0], l):
            union(a, b, f"stack at {c.where}")
    res = list(ls[0])
    res.insert(d, Factor(out.shape[d], fixed=True, reason=c.where))
    return res


@op_rule("unbind")
def unbind(run, c: Call):
    x, lx = c.x, c.lx
    d = c.arg(1, "dim", 0) % x.dim()
    fix(lx[d], f"unbind at {c.where}")
    rest = [lx[i] for i in range(x.dim()) if i != d]
    return tuple(list(rest) for _ in c.out)


@op_rule("chunk", "split", "tensor_split")
def chunk(run, c: Call):
    x, lx, where = c.x, c.lx, c.where
    d = c.arg(2, "dim", 0) % x.dim()
    sizes = [t.shape[d] for t in c.out]
    r = find(lx[d])
    if r.kind == "cat" and [find(k).size for k in r.children] == sizes:
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


# ---------------------------------------------------------------------------- indexing
@op_rule("getitem")
def getitem(run, c: Call):
    x, lx = c.x, c.lx
    if not isinstance(x, Tensor):  # an item of a tuple of values
        if isinstance(lx, (list, tuple)) and not (lx and isinstance(lx[0], Factor)):
            idx = c.args[1]
            return lx[idx] if isinstance(idx, (int, slice)) else None
        return None
    idx = c.args[1]
    if not isinstance(idx, tuple):
        idx = (idx,)
    if any(isinstance(i, (Tensor, list)) for i in idx):
        return _gather(run, c, idx)
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
                refine(f, "cat", [s for s in (j, 1, size - j - 1) if s > 0])
            else:
                fix(f, f"indexing at {c.where}")
            d += 1
        elif isinstance(i, slice):
            size = x.shape[d]
            start, stop, step = i.indices(size)
            res.append(lx[d] if (start, stop, step) == (0, size, 1) else
                       _slice(lx[d], size, start, stop, step, c.where))
            d += 1
        else:
            raise ValueError(f"index {i!r}")
    res.extend(lx[d:])
    return res


INDEX_BUFFER = "integer index buffer (used as index data, not permuted)"


def _gather(run, c: Call, idx: tuple, nodes: tuple | None = None, labs: tuple | None = None):
    """``x[:, ..., :, index]`` with one integer index tensor (a relative-position bias
    table indexed by a buffer): the indexed dimension and the index are fixed, the
    other dimensions pass through. ``nodes`` and ``labs``: the index entries' nodes and
    labels (default: from ``x[idx]``'s own arguments)."""
    pos = [p for p, i in enumerate(idx) if isinstance(i, (Tensor, list))]
    p = pos[0]
    t = idx[p]
    if len(pos) != 1 or not isinstance(t, Tensor) or t.dtype == torch.bool or t.is_floating_point() \
            or t.is_complex() or any(i != slice(None) for i in idx[:p] + idx[p + 1:]):
        raise ValueError("advanced indexing")
    if nodes is None:
        tup = isinstance(c.node.args[1], tuple)
        nodes = c.node.args[1] if tup else (c.node.args[1],)
        labs = c.largs[1] if tup else (c.largs[1],)
    x, lx, where = c.x, c.lx, c.where
    from_state = _state_source(run, nodes[p]) is not None
    for f in labs[p] or []:
        fix(f, INDEX_BUFFER if from_state else f"index data at {where}")
    fix(lx[p], f"gathered by an index at {where}")
    return list(lx[:p]) + [Factor(s, fixed=True, reason=where) for s in t.shape] + list(lx[p + 1:x.dim()])


def _state_source(run, node, depth: int = 8) -> str | None:
    """The module tensor a value is computed from alone (through single-input
    operations: ``index_buffer.view(-1)``), or ``None``."""
    for _ in range(depth):
        if not isinstance(node, fx.Node):
            return None
        name = run.state_name(node)
        if name is not None:
            return name
        inputs = node.all_input_nodes
        if len(inputs) != 1:
            return None
        node = inputs[0]
    return None


@op_rule("index")
def aten_index(run, c: Call):
    """``aten.index(x, [None, ..., index])``: ``x[:, ..., index]``."""
    idx = tuple(slice(None) if i is None else i for i in c.args[1])
    return _gather(run, c, idx, tuple(c.nargs[1]), tuple(c.largs[1]))


@op_rule("index_select")
def index_select(run, c: Call):
    d = c.arg(1, "dim") % c.x.dim()
    idx = (slice(None),) * d + (c.arg(2, "index"),)
    return _gather(run, c, idx, (None,) * d + (c.nargs[2],), (None,) * d + (c.larg(2, "index"),))


@op_rule("slice")
def aten_slice(run, c: Call):
    """``aten.slice(x, dim, start, end, step)``: ``x[:, ..., start:end:step]``."""
    x, lx = c.x, c.lx
    d = c.arg(1, "dim", 0) % x.dim()
    size = x.shape[d]
    start, stop, step = slice(c.arg(2, "start"), c.arg(3, "end"), c.arg(4, "step", 1)).indices(size)
    lab = lx[d] if (start, stop, step) == (0, size, 1) else _slice(lx[d], size, start, stop, step, c.where)
    return list(lx[:d]) + [lab] + list(lx[d + 1:])


@op_rule("select")
def aten_select(run, c: Call):
    """``aten.select(x, dim, i)``: ``x[:, ..., i]``."""
    d = c.arg(1, "dim") % c.x.dim()
    idx = (slice(None),) * d + (c.arg(2, "index"),)
    return getitem(run, Call(c.node, "getitem", (c.x, idx), {}, (c.lx, None), {}, c.out, c.where, nargs=c.nargs))


@op_rule("assert")
def no_output(run, c: Call):
    """Checks that export inserts (``aten._assert_tensor_metadata``): nothing to label."""
    return None


def _pieces(f: Factor, off: int = 0):
    """``(offset, size, factor)`` of the leaves of a concatenation tree, in order."""
    r = find(f)
    if r.kind == "cat":
        for k in r.children:
            yield from _pieces(k, off)
            off += find(k).size
    else:
        yield off, r.size, f


def _cut(f: Factor, pos: int) -> bool:
    """Make ``pos`` a boundary between pieces of ``f`` (refining the free leaf it falls
    inside into a concatenation); ``False`` when it falls inside a fixed or product piece."""
    for off, n, k in list(_pieces(f)):
        if off < pos < off + n:
            r = find(k)
            if r.kind is None and not r.fixed:
                refine(r, "cat", [pos - off, off + n - pos])
                return True
            return False
    return True


def _slice(lab: Factor, size: int, start: int, stop: int, step: int, where: str) -> Factor:
    """A contiguous slice of a free factor refines it into a concatenation (a factor that
    is one already, ``[q; k; v]`` sliced three times, is refined where a slice ends inside
    one of its free pieces); an empty slice leaves the factor as it is."""
    f = find(lab)
    stop = max(stop, start)
    if stop == start:
        return Factor(0, fixed=True, reason=f"empty slice at {where}")
    if step == 1 and not f.fixed and f.kind in (None, "cat"):
        if _cut(f, start) and _cut(f, stop):
            kids = [k for off, n, k in _pieces(f) if start <= off and off + n <= stop]
            if kids and sum(find(k).size for k in kids) == stop - start:
                return new_cat(kids)
    fix(f, f"slicing at {where}")
    return Factor(len(range(start, stop, step)), fixed=True, reason=where)


# ---------------------------------------------------------------------------- einsum
def _einsum_terms(eq: str, ndims: list[int]) -> tuple[list[list], list]:
    """The index symbols of each operand's dimensions and of the output's (``...`` as
    symbols ``("...", j)`` aligned from the right); implicit mode (no ``->``) outputs the
    symbols used once, in alphabetical order, after the ellipsis."""
    eq = eq.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ndims):
        raise ValueError(f"einsum {eq!r}: {len(terms)} terms for {len(ndims)} operands")
    n_ell = max((nd - len(t.replace("...", "")) for t, nd in zip(terms, ndims) if "..." in t), default=0)

    def expand(t: str, nd: int | None) -> list:
        if "..." not in t:
            return list(t)
        a, _, b = t.partition("...")
        k = n_ell if nd is None else nd - len(a) - len(b)
        return list(a) + [("...", n_ell - k + j) for j in range(k)] + list(b)

    ins = [expand(t, nd) for t, nd in zip(terms, ndims)]
    for t, nd in zip(ins, ndims):
        if len(t) != nd:
            raise ValueError(f"einsum {eq!r}: a term does not fit its operand's {nd} dimensions")
    if arrow:
        out = expand(rhs, None)
    else:
        flat = [s for t in ins for s in t if isinstance(s, str)]
        out = [("...", j) for j in range(n_ell)] + sorted(s for s in set(flat) if flat.count(s) == 1)
    return ins, out


@op_rule("einsum")
def einsum(run, c: Call):
    """``torch.einsum(equation, *operands)`` (``aten.einsum(equation, [operands])``): every
    index symbol is one dimension, so the occurrences of a symbol (in every operand, and
    twice in one operand for a diagonal) are tied, whether the output keeps it or sums it
    (a sum over a dimension that all its operands permute alike is unchanged); a size-1
    occurrence that broadcasts ties nothing."""
    eq = c.args[0]
    if len(c.args) == 2 and isinstance(c.args[1], (list, tuple)):
        ops, lops = list(c.args[1]), list(c.largs[1])
    else:
        ops, lops = list(c.args[1:]), list(c.largs[1:])
    if not isinstance(eq, str) or not all(isinstance(t, Tensor) for t in ops) or any(l is None for l in lops):
        raise ValueError("einsum without an equation string and tensor operands")
    ins, out_syms = _einsum_terms(eq, [t.dim() for t in ops])
    full: dict = {}
    for t, syms in zip(ops, ins):
        for s, n in zip(syms, t.shape):
            full[s] = max(full.get(s, 1), n)
    lab: dict = {}
    for t, l, syms in zip(ops, lops, ins):
        for s, n, f in zip(syms, t.shape, l):
            if n != full[s] or n == 1:
                continue          # broadcast (or a single position): nothing to tie
            if s in lab:
                union(lab[s], f, f"index {s if isinstance(s, str) else '...'} of einsum at {c.where}")
            else:
                lab[s] = f
    if list(c.out.shape) != [full.get(s, 1) for s in out_syms]:
        raise ValueError(f"einsum {eq!r}: unexpected output shape")
    return [lab.get(s, Factor(full.get(s, 1))) for s in out_syms]
