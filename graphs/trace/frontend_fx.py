"""The torch.fx front end: module types with a rule are leaves, the rest is traced through."""
from __future__ import annotations

import torch.fx as fx
import torch.nn as nn

from .registry import get_module_rule

__all__ = ["FxTracer"]


class FxTracer(fx.Tracer):
    """fx tracer: module types with a rule are leaves; a submodule that cannot be traced
    becomes an opaque leaf (its parameters are then left unpermuted, with the reason)."""

    def __init__(self) -> None:
        super().__init__()
        self.opaque: dict[str, str] = {}

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return get_module_rule(m) is not None or qualname in self.opaque

    def call_module(self, m, forward, args, kwargs):
        qualname = self.path_of_module(m)
        if self.is_leaf_module(m, qualname) or qualname == "":
            return super().call_module(m, forward, args, kwargs)
        # fx pushes each module on its module stack and pops it only on success: keep the
        # state to restore, so a failure costs this module alone, not its ancestors too
        stack, calls = self.module_stack.copy(), dict(self.num_calls)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as e:  # data-dependent control flow, unsupported Python, ...
            self.module_stack.clear()
            self.module_stack.update(stack)
            self.num_calls.clear()
            self.num_calls.update(calls)
            first_line = str(e).splitlines()[0][:120] if str(e) else ""
            self.opaque[qualname] = f"{type(m).__name__} could not be traced ({type(e).__name__}: {first_line})"
            return super().call_module(m, forward, args, kwargs)  # now an opaque leaf
