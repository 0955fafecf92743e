"""weightspace: trained neural networks as data.

Checkpoint I/O, model families and the CLI live here; the symmetry (``graphs``) and the
algorithms on state dicts (``merging``) are re-exported where users expect them.

Names are imported on first use (PEP 562), so ``weightspace --version`` and ``--help`` start
without loading torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["Structure", "compose_permutations", "identity_permutation", "inverse_permutation", "permute",
                     "random_permutation", "trace"], "graphs"),
    **dict.fromkeys(["LoadedModel", "build_model", "load_model", "trace_model"], "weightspace.api"),
    **dict.fromkeys(["Checkpoint", "CheckpointError", "CheckpointInfo", "LoadedCheckpoint", "check_finite", "check_fits",
                     "load", "load_checkpoint", "load_into", "open_checkpoint", "save"], "weightspace.checkpoint"),
    **dict.fromkeys(["DemoResult", "run_demo"], "weightspace.demo"),
    **dict.fromkeys(["METHODS", "Alignment", "list_alignment_methods", "register_alignment_method"],
                    "weightspace.alignment"),
    **dict.fromkeys(["MergeResult", "align", "align_result", "barrier_between", "merge_checkpoints"],
                    "weightspace.merge"),
    **dict.fromkeys(["MergeManyResult", "merge_many_checkpoints"], "weightspace.merge_many"),
    **dict.fromkeys(["get_model", "list_models"], "weightspace.models"),
    **dict.fromkeys(["Recipe", "load_recipe", "run_recipe"], "weightspace.recipe"),
    **dict.fromkeys(["train_classifier"], "weightspace.training"),
    **dict.fromkeys(["UntrustedCodeError", "trusting_model_code", "trusting_remote_code"], "weightspace.trust"),
}

__all__ = [
    "METHODS", "DemoResult", "MergeResult", "align", "barrier_between", "merge_checkpoints",
    "Alignment", "align_result", "list_alignment_methods", "register_alignment_method",
    "run_demo", "train_classifier",
    "MergeManyResult", "merge_many_checkpoints", "Recipe", "load_recipe", "run_recipe",
    "Checkpoint", "CheckpointError", "CheckpointInfo", "LoadedModel", "Structure", "__version__",
    "build_model", "check_finite", "check_fits", "compose_permutations", "get_model",
    "identity_permutation", "inverse_permutation", "list_models", "load", "load_checkpoint", "load_into",
    "LoadedCheckpoint",
    "load_model", "open_checkpoint", "permute", "random_permutation", "save", "trace",
    "trace_model", "UntrustedCodeError", "trusting_model_code", "trusting_remote_code",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'weightspace' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static analysers and IDEs see the names as plain imports
    from graphs import (Structure, compose_permutations, identity_permutation, inverse_permutation, permute,
                        random_permutation, trace)

    from .api import LoadedModel, build_model, load_model, trace_model
    from .checkpoint import (Checkpoint, CheckpointError, CheckpointInfo, LoadedCheckpoint, check_finite, check_fits,
                             load, load_checkpoint, load_into, open_checkpoint, save)
    from .demo import DemoResult, run_demo
    from .alignment import METHODS, Alignment, list_alignment_methods, register_alignment_method
    from .merge import MergeResult, align, align_result, barrier_between, merge_checkpoints
    from .merge_many import MergeManyResult, merge_many_checkpoints
    from .models import get_model, list_models
    from .recipe import Recipe, load_recipe, run_recipe
    from .training import train_classifier
    from .trust import UntrustedCodeError, trusting_model_code, trusting_remote_code
