"""The interpreter: runs the traced graph and propagates labels alongside the values.

Every node's output gets labels (one factor per dimension of each tensor). Placeholders,
outputs and attributes are handled here; every call is dispatched to the rule its
canonical name or module type has in the rule tables (:mod:`graphs.trace.registry`).
Without a rule, or when a rule raises, the node fixes everything it touches.
"""
from __future__ import annotations

from typing import Any

import torch.fx as fx
import torch.nn as nn
from torch import Tensor

from .._factors import Factor, find, fix, union
from ..structure import Layer
from .labels import fresh, tree_labels, tree_tensors
from .names import arg_order, function_name, target_name
from .registry import Call, get_module_rule, get_op_rule

__all__ = ["Run"]


class Run(fx.Interpreter):
    """Runs the traced graph and propagates factors alongside the values.

    Attributes:
        root: the traced module (its state dict names the parameters).
        opaque: qualified name -> reason, for submodules the front end could not trace.
        labels: node -> labels of its output.
        params: state-dict name -> the factors of that tensor's axes (those used).
        layers: the parametric layers met, in forward order.
        frontier: node -> the layers whose outputs reach it through parameter-free
            operations (``"input"`` for the model input).
        outputs: the frontier of the output node, ordered.
    """

    def __init__(self, gm: fx.GraphModule, root: nn.Module, opaque: dict[str, str] | None = None,
                 placeholder_state: dict[str, str] | None = None) -> None:
        super().__init__(gm, garbage_collect_values=False)
        self.root = root
        self.opaque = opaque or {}
        # a torch.export graph takes parameters, buffers and constants as inputs:
        # placeholder name -> state-dict (or constant) name
        self.placeholder_state = placeholder_state or {}
        self.labels: dict[fx.Node, Any] = {}
        self.params: dict[str, list[Factor]] = {}
        self.layers: list[Layer] = []
        self.layer_of: dict[fx.Node, Layer] = {}
        self.state_tensors = dict(root.state_dict(keep_vars=True))
        self.frontier: dict[fx.Node, frozenset] = {}
        self.outputs: tuple[str, ...] = ()
        # state tensors used only through a constant the front end computed from them
        # (fx evaluates ``self.index_buffer.view(-1)`` at trace time): name -> constant
        self.derived: dict[str, str] = {}
        self._storages = {t.untyped_storage().data_ptr(): k for k, t in self.state_tensors.items()
                          if t is not None and t.numel() and t.untyped_storage().data_ptr()}

    # ---------------------------------------------------------------- helpers for rules
    def ordered(self, names) -> tuple[str, ...]:
        """Layer names in forward order, the model input first."""
        order = {lay.name: i for i, lay in enumerate(self.layers)}
        return tuple(sorted(names, key=lambda x: (x != "input", order.get(x, len(order)), x)))

    def arg_frontier(self, n: fx.Node) -> frozenset:
        out: set = set()
        for a in n.all_input_nodes:
            out |= self.frontier.get(a, frozenset())
        return frozenset(out)

    def param(self, name: str, name_axes: list[str | None] | None = None) -> list[Factor] | None:
        """The factors of state-dict tensor ``name`` (created on first use, the axes
        named ``name_axes``), or ``None`` when the module has no such tensor."""
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
        """Fix every factor of every tensor in ``vals``."""
        for v, l in tree_labels(vals, labs):
            for f in l:
                fix(f, reason)

    def broadcast(self, out: Tensor, pairs: list[tuple[Tensor, list[Factor]]], where: str) -> list[Factor]:
        """Labels of a broadcasting elementwise result: operands' matching dims are tied."""
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

    def unsupported(self, c: Call, reason: str) -> Any:
        """Not understood: fix every input and give the output fixed labels."""
        self.fix_all((c.args, c.kwargs), (c.largs, c.lkwargs), reason)
        return fresh(c.out, reason)

    def layer(self, n: fx.Node, name: str, kind: str, tensors: dict[str, str], inputs, output, **attrs) -> Layer:
        """Record a parametric layer (its tensors that the module really has)."""
        lay = Layer(name, kind, {k: v for k, v in tensors.items() if v in self.state_tensors
                                 and self.state_tensors[v] is not None},
                    inputs=inputs, output=output, sources=self.ordered(self.arg_frontier(n)),
                    attrs=attrs)
        self.layers.append(lay)
        self.layer_of[n] = lay
        return lay

    def state_name(self, a: Any) -> str | None:
        """The state-dict name of a node that reads a module tensor (an attribute with fx,
        a lifted input with torch.export), else ``None``."""
        if not isinstance(a, fx.Node):
            return None
        if a.op == "get_attr":
            return a.target if a.target in self.state_tensors else None
        if a.op == "placeholder":
            return self.placeholder_state.get(a.name)
        return None

    def functional_layer(self, c: Call, kind: str, roles: tuple[str, ...], inputs, output, **attrs) -> None:
        """Record ``F.linear`` / ``F.conv*`` on module tensors as a layer (named after the
        weight's owner)."""
        sig_args = list(c.nargs[1:1 + len(roles)])
        tensors = {}
        for role, a in zip(roles, sig_args + [c.node.kwargs.get(r) for r in roles[len(sig_args):]]):
            name = self.state_name(a)
            if name is not None:
                tensors[role] = name
        if "weight" in tensors:
            self.layer(c.node, tensors["weight"].rsplit(".", 1)[0] if "." in tensors["weight"] else tensors["weight"],
                       kind, tensors, inputs, output, functional=True, **attrs)

    def note_activation(self, n: fx.Node, name: str) -> None:
        """Name the activation of the layer whose output ``n`` applies an elementwise
        function to (only the first such function counts)."""
        src = n.args[0] if n.args else None
        if isinstance(src, fx.Node) and src in self.layer_of:
            lay = self.layer_of[src]
            if lay.activation is None:
                lay.activation = name

    # ---------------------------------------------------------------- the interpreter
    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        try:
            self.labels[n] = self.propagate(n, out)
            if n in self.layer_of:
                self.frontier[n] = frozenset([self.layer_of[n].name])
            elif n.op == "placeholder":
                self.frontier[n] = frozenset() if n.name in self.placeholder_state else frozenset(["input"])
            elif n.op == "call_module" and n.target in self.opaque:
                self.frontier[n] = frozenset([f"opaque:{n.target}"])
            elif n.op != "output" and not any(True for _ in tree_tensors(out)):
                self.frontier[n] = frozenset()   # shapes and other Python values
            else:
                self.frontier[n] = self.arg_frontier(n)
            if n.op == "output":
                self.outputs = self.ordered(self.frontier[n])
        except Exception as e:  # a rule that does not fit: fix everything it touched
            reason = f"{self.describe(n)} could not be analysed ({type(e).__name__}: {e})"
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            self.fix_all((args, kwargs), (self.lab(n.args), self.lab(n.kwargs)), reason)
            self.labels[n] = fresh(out, reason)
        return out

    def describe(self, n: fx.Node) -> str:
        if n.op == "call_module":
            return f"{type(self.root.get_submodule(n.target)).__name__} '{n.target}'"
        if n.op == "call_method":
            return f"Tensor.{n.target} ({n.name})"
        return f"{target_name(n.target)} ({n.name})"

    def propagate(self, n: fx.Node, out: Any) -> Any:
        if n.op == "placeholder":
            name = self.placeholder_state.get(n.name)
            if name is not None:
                return self._state(name, out, self._axis_names(name, out))
            return fresh(out, "model input")
        if n.op == "output":
            args, _ = self.fetch_args_kwargs_from_env(n)
            self.fix_all(args, self.lab(n.args), "model output")
            return None
        if n.op == "get_attr":
            return self._state(n.target, out) if isinstance(out, Tensor) else None
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        c = Call(n, None, args, kwargs, self.lab(n.args), self.lab(n.kwargs), out, self.describe(n))
        if n.op == "call_module":
            c.module = self.root.get_submodule(n.target)
            if n.target in self.opaque:
                return self._opaque(c)
            rule = get_module_rule(c.module)
            return rule(self, c) if rule is not None else self.unsupported(c, f"unsupported layer {c.where}")
        c.nargs = tuple(n.args)
        if n.op == "call_method":
            c.name = n.target
        else:
            c.name = function_name(n.target)
            if c.name is None and not any(True for _ in tree_tensors((args, kwargs))):
                return fresh(out, f"tensor created by {c.where}")
            order = arg_order(n.target)
            if order is not None and len(args) >= len(order):
                pick = lambda xs: tuple(xs[i] for i in order) + tuple(xs[len(order):])  # noqa: E731
                c.args, c.largs, c.nargs = pick(args), pick(c.largs), pick(c.nargs)
        rule = get_op_rule(c.name)
        return rule(self, c) if rule is not None else self.unsupported(c, f"unsupported operation {c.where}")

    @staticmethod
    def _axis_names(name: str, t: Tensor) -> list[str | None] | None:
        """Names for a lifted tensor's axes: the owner's name for a weight's first axis and
        a bias (as modules name theirs), so groups are named after their layers."""
        owner, _, leaf = name.rpartition(".")
        if not owner or not isinstance(t, Tensor):
            return None
        if leaf == "weight" and t.dim() >= 2:
            return [owner, f"{owner}:in"] + [None] * (t.dim() - 2)
        if leaf == "bias" and t.dim() == 1:
            return [owner]
        return None

    def rename_lifted(self, node: Any, labels: list[Factor], names: list[str | None]) -> None:
        """Rename the axes of a lifted weight that is not ``(out, in)`` (an embedding's
        ``(rows, dim)``, a ``Conv1D``'s ``(in, out)``), so its groups are named as the
        module rule names them; only names :meth:`_axis_names` gave are replaced."""
        name = self.state_name(node) if isinstance(node, fx.Node) and node.op == "placeholder" else None
        default = self._axis_names(name, self.state_tensors.get(name)) if name else None
        if not default:
            return
        for f, old, new in zip(labels, default, names):
            r = find(f)
            if r.kind is None and old is not None and r.name == old:
                r.name = new

    def _state(self, name: str, out: Tensor, axis_names: list[str | None] | None = None) -> list[Factor]:
        """Labels of a module tensor read by the graph; a constant (one the front end
        computed from a state tensor when tracing, e.g. a view of an index buffer, or a
        non-persistent buffer) gets fixed labels, and the state tensor it shares storage
        with is noted as used."""
        p = self.param(name, axis_names)
        if p is not None:
            return p
        src = self._storages.get(out.untyped_storage().data_ptr()) if out.numel() else None
        if src is not None:
            self.derived.setdefault(src, name)
        return fresh(out, f"constant '{name}'")

    def _opaque(self, c: Call) -> Any:
        """A submodule the front end could not trace: its inputs, outputs and tensors are fixed."""
        t = c.target
        reason = self.opaque[t]
        self.fix_all((c.args, c.kwargs), (c.largs, c.lkwargs), reason)
        for k in self.state_tensors:
            if k.startswith(t + "."):
                for f in self.param(k) or []:
                    fix(f, reason)
        return fresh(c.out, reason)
