"""Merge methods over state dicts, one module per method, registered by name.

``get_method(name)`` returns a :class:`MergeMethod`; ``merge_states(name, states, base=...)``
runs it (optionally after aligning every model to the base by weight matching).
"""
from . import dare_linear as _dare_linear  # noqa: F401  (registration)
from . import dare_ties as _dare_ties  # noqa: F401
from . import linear as _linear  # noqa: F401
from . import slerp as _slerp  # noqa: F401
from . import task_arithmetic as _task_arithmetic  # noqa: F401
from . import ties as _ties  # noqa: F401
from ._merge import merge_states
from ._registry import MergeMethod, MethodParameter, get_method, list_methods, merge_method
from .slerp import slerp_tensor

__all__ = ["MergeMethod", "MethodParameter", "get_method", "list_methods", "merge_method", "merge_states",
           "slerp_tensor"]
