"""Merge methods over state dicts, one module per method, registered by name.

``get_method(name)`` returns a :class:`MergeMethod`; ``merge_states(name, states, base=...)``
runs it (optionally after aligning every model to the base by weight matching).
"""
from . import arcee_fusion as _arcee_fusion  # noqa: F401  (registration)
from . import breadcrumbs as _breadcrumbs  # noqa: F401
from . import dare_linear as _dare_linear  # noqa: F401
from . import dare_ties as _dare_ties  # noqa: F401
from . import della as _della  # noqa: F401
from . import karcher as _karcher  # noqa: F401
from . import linear as _linear  # noqa: F401
from . import model_stock as _model_stock  # noqa: F401
from . import multislerp as _multislerp  # noqa: F401
from . import nearswap as _nearswap  # noqa: F401
from . import nuslerp as _nuslerp  # noqa: F401
from . import passthrough as _passthrough  # noqa: F401
from . import ram as _ram  # noqa: F401
from . import sce as _sce  # noqa: F401
from . import slerp as _slerp  # noqa: F401
from . import task_arithmetic as _task_arithmetic  # noqa: F401
from . import ties as _ties  # noqa: F401
from ._common import compute_in_input_dtype
from ._merge import merge_states
from ._registry import MERGE_METHODS, REQUIRED, MergeMethod, MethodParameter, get_method, list_methods, merge_method
from .slerp import slerp_tensor

__all__ = ["MERGE_METHODS", "REQUIRED", "MergeMethod", "MethodParameter", "compute_in_input_dtype", "get_method", "list_methods",
           "merge_method", "merge_states", "slerp_tensor"]
