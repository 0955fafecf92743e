"""Union-find over "factors": the symbolic axes that permutations act on.

Every dimension of every traced tensor carries a factor. Unifying two factors says
"these dimensions must be permuted by the same permutation". A factor can be *refined*
into a product (``reshape(E) -> (H, d)``) or a concatenation (``chunk``, slicing) of
sub-factors. A *fixed* factor must not be permuted (model inputs and outputs, anything
an operation we cannot prove safe touches). Fixing is the only safe fallback and is used
whenever an operation does not fit the algebra.
"""
from __future__ import annotations

import math
from itertools import count

_ids = count()


class Factor:
    __slots__ = ("size", "parent", "fixed", "kind", "children", "name", "reason", "id")

    def __init__(self, size: int, name: str | None = None, fixed: bool = False,
                 reason: str | None = None) -> None:
        self.size = int(size)
        self.parent: Factor | None = None
        self.fixed = fixed or self.size == 1
        self.reason = reason if fixed else None
        self.kind: str | None = None          # None (leaf), "prod" or "cat"
        self.children: list[Factor] = []
        self.name = name
        self.id = next(_ids)

    def __repr__(self) -> str:
        r = find(self)
        return f"Factor({r.name or r.id}, {r.size}{', fixed' if r.fixed else ''}{', ' + r.kind if r.kind else ''})"


def find(f: Factor) -> Factor:
    root = f
    while root.parent is not None:
        root = root.parent
    while f.parent is not None:
        f.parent, f = root, f.parent
    return root


def fix(f: Factor, reason: str) -> None:
    r = find(f)
    if not r.fixed:
        r.fixed = True
        r.reason = reason
    for c in r.children:
        fix(c, reason)


def _rank(f: Factor) -> tuple:
    # a module's own output name beats an auxiliary one ("fc.in", "w:1"); then the oldest
    return (f.name is None, ":" in (f.name or ""), f.id)


def _merge_names(keep: Factor, gone: Factor) -> None:
    if _rank(gone) < _rank(keep):
        keep.name, keep.id = gone.name, gone.id
    if gone.fixed and not keep.fixed:
        fix(keep, gone.reason or "fixed")


def union(a: Factor, b: Factor, reason: str) -> None:
    """Tie two factors; on any inconsistency fix both (never guess)."""
    ra, rb = find(a), find(b)
    if ra is rb:
        return
    if ra.size != rb.size:
        fix(ra, reason)
        fix(rb, reason)
        return
    if rb.kind is not None and ra.kind is None:
        ra, rb = rb, ra
    if rb.kind is None:  # leaf absorbed into ra (leaf or refined)
        fixed = rb.fixed
        rreason = rb.reason
        rb.parent = ra
        if ra.kind is None:
            _merge_names(ra, rb)
        if fixed:
            fix(ra, rreason or reason)
        return
    # both refined
    if ra.kind == rb.kind and [find(c).size for c in ra.children] == [find(c).size for c in rb.children]:
        rb.parent = ra
        kids = list(zip(ra.children, rb.children))
        if rb.fixed:
            fix(ra, rb.reason or reason)
        for x, y in kids:
            union(x, y, reason)
        return
    if ra.kind == "prod" and rb.kind == "prod":
        sa, sb = atoms(ra), atoms(rb)
        if [find(x).size for x in sa] == [find(y).size for y in sb]:
            rb.parent = ra
            for x, y in zip(sa, sb):
                union(x, y, reason)
            return
    fix(ra, reason)
    fix(rb, reason)


def refine(f: Factor, kind: str, sizes: list[int], names: list[str | None] | None = None) -> list[Factor]:
    """Split a leaf factor into a product or concatenation of new factors."""
    r = find(f)
    assert r.kind is None, "refine() needs a leaf"
    if names is None:
        base = r.name or f"f{r.id}"
        names = [f"{base}/{i}" if kind == "prod" else f"{base}[{i}]" for i in range(len(sizes))]
    kids = [Factor(s, n, fixed=r.fixed, reason=r.reason) for s, n in zip(sizes, names)]
    r.kind = kind
    r.children = kids
    return kids


def new_prod(parts: list[Factor]) -> Factor:
    if len(parts) == 1:
        return parts[0]
    f = Factor(math.prod(find(p).size for p in parts))
    f.kind = "prod"
    f.children = list(parts)
    f.fixed = all(find(p).fixed for p in parts)
    f.reason = next((find(p).reason for p in parts if find(p).reason), None) if f.fixed else None
    return f


def new_cat(parts: list[Factor]) -> Factor:
    if len(parts) == 1:
        return parts[0]
    f = Factor(sum(find(p).size for p in parts))
    f.kind = "cat"
    f.children = list(parts)
    f.fixed = all(find(p).fixed for p in parts)
    f.reason = next((find(p).reason for p in parts if find(p).reason), None) if f.fixed else None
    return f


def atoms(f: Factor) -> list[Factor]:
    """The factor as a row-major product of non-product factors (size-1 ones dropped)."""
    r = find(f)
    if r.kind == "prod":
        return [a for c in r.children for a in atoms(c)]
    return [] if r.size == 1 else [r]


def split(labels: list[Factor], out_sizes: list[int], reason: str) -> list[Factor]:
    """Reshape: factors of the input dims -> factors of the output dims.

    Dimensions that merge become products, a dimension that splits is refined into a
    product. Anything that mixes units across the reshape fixes what it touches.
    """
    seq = [a for lab in labels for a in atoms(lab)]
    out: list[Factor] = []
    i = 0
    ok = True
    for s in out_sizes:
        if s == 1:
            out.append(Factor(1))
            continue
        parts: list[Factor] = []
        rem = s
        while rem > 1:
            if i >= len(seq):
                ok = False
                break
            a = find(seq[i])
            if a.size <= rem and rem % a.size == 0:
                parts.append(a)
                rem //= a.size
                i += 1
            elif a.size > rem and a.size % rem == 0 and a.kind is None:
                c1, c2 = refine(a, "prod", [rem, a.size // rem])
                parts.append(c1)
                seq[i] = c2
                rem = 1
            else:
                ok = False
                break
        if not ok:
            break
        out.append(new_prod(parts))
    if not ok or i != len(seq):
        for a in seq:
            fix(a, reason)
        return [Factor(s, fixed=True, reason=reason) for s in out_sizes]
    return out
