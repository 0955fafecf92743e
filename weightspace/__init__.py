"""weightspace: trained neural networks as data.

Checkpoint I/O, model families and the CLI live here; the symmetry (``graphs``) and the
algorithms on state dicts (``merging``) are re-exported where users expect them.
"""
from graphs import (
    Structure,
    compose_permutations,
    identity_permutation,
    inverse_permutation,
    permute,
    random_permutation,
    trace,
)

from .api import LoadedModel, build_model, load_model, trace_model
from .checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointInfo,
    check_finite,
    check_fits,
    load,
    load_into,
    open_checkpoint,
    save,
)
from .demo import DemoResult, run_demo
from .merge import METHODS, MergeResult, align, barrier_between, merge_checkpoints
from .merge_many import MergeManyResult, merge_many_checkpoints
from .models import get_model, list_models
from .recipe import Recipe, load_recipe, run_recipe
from .training import train_classifier
from .trust import UntrustedCodeError, trusting_model_code, trusting_remote_code

__version__ = "0.1.0"

__all__ = [
    "METHODS", "DemoResult", "MergeResult", "align", "barrier_between", "merge_checkpoints",
    "run_demo", "train_classifier",
    "MergeManyResult", "merge_many_checkpoints", "Recipe", "load_recipe", "run_recipe",
    "Checkpoint", "CheckpointError", "CheckpointInfo", "LoadedModel", "Structure", "__version__",
    "build_model", "check_finite", "check_fits", "compose_permutations", "get_model",
    "identity_permutation", "inverse_permutation", "list_models", "load", "load_into",
    "load_model", "open_checkpoint", "permute", "random_permutation", "save", "trace",
    "trace_model", "UntrustedCodeError", "trusting_model_code", "trusting_remote_code",
]
