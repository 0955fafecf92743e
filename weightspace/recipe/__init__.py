"""Merge recipes in YAML: mergekit's recipe language, run tensor by tensor.

.. code-block:: yaml

    merge_method: ties
    base_model: base/                 # a Hugging Face directory, a .safetensors file or a sharded index
    models:
      - model: math/
        parameters:
          weight: [0.2, 0.5, 1.0]     # a gradient over the layers
          density: 0.5
      - model: code/
        parameters:
          weight:
            - filter: self_attn       # tensors whose name contains "self_attn"
              value: 0.8
            - value: 0.3              # every other tensor
          density: 0.5
    parameters: {lambda: 1.0, normalize: true}
    dtype: float32                    # compute dtype (inputs are cast to it)
    out_dtype: bfloat16               # written dtype (default: dtype)
    tokenizer_source: base
    out: merged/                      # a directory: a Hugging Face model; or merged.safetensors

``slices`` (with ``sources`` and ``layer_range``) replace ``models`` to stack or mix layer ranges,
as in mergekit. Our own keys: ``align: true`` (permute every model onto the base by weight
matching first, for our MLP/CNN families), ``seed`` (random drops), ``model``/``model_kwargs``/
``input_shape`` (the architecture for ``align``). Relative paths are resolved against the recipe's
directory. See ``docs/recipes.md`` for the semantics and where they differ from mergekit.

Every field of the recipe is checked, and every input's header read, before a tensor is loaded;
errors name the file and the field: ``recipe.yaml: models[1].parameters.weight: expected ...``.
"""
from __future__ import annotations

from .spec import Recipe, RecipeError, RecipeModel, RecipeSlice, RecipeSource
from .parse import load_recipe
from .plan import plan_recipe
from .run import run_recipe

# importable from here as before (the tests use them)
from .parameters import evaluate_setting  # noqa: F401
from .plan import _Input  # noqa: F401

__all__ = ["Recipe", "RecipeError", "RecipeModel", "RecipeSlice", "RecipeSource", "load_recipe", "plan_recipe",
           "run_recipe"]
