"""Trace any ``nn.Module`` into its permutation :class:`~graphs.structure.Structure`.

The module is traced with ``torch.fx`` (module types with a rule are leaves; everything
else, the user's own modules and containers included, is traced through), or exported
with ``torch.export`` where fx fails, and the graph is run on an example input. Each dimension of each value carries a factor (see
``graphs._factors``); small rules, one per operation family or module type, say how each
operation ties, splits or fixes factors. Whatever is not understood fixes its inputs, so
the result is safe by construction, and the result is verified: a random permutation of
the network must leave its output unchanged.

Modules: ``frontend_fx`` (the fx tracer), ``frontend_export`` (``torch.export``),
``run`` (the interpreter and dispatch),
``registry`` (the rule decorators), ``names`` (canonical operation names),
``rules_tensor`` / ``rules_layers`` / ``rules_attention`` (the rules), ``resolve``
(factors to axes and groups), ``verify`` (the random-permutation check), ``api``
(``trace``).
"""
from .api import trace
from .registry import Call, module_rule, op_rule
from .verify import check_structure

__all__ = ["trace", "check_structure", "Call", "module_rule", "op_rule"]
