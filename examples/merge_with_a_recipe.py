"""Merge Hugging Face models with a mergekit-style recipe: TIES with a per-layer gradient.

    python examples/merge_with_a_recipe.py                 # tiny Llama models, made here
    python examples/merge_with_a_recipe.py --hidden 64 --layers 4

A base model and two "fine-tunes" of it (the base plus small changes) are saved as Hugging
Face directories; the recipe below merges them with TIES, weighting the first model more on
the attention tensors of the upper layers (a gradient over the layers, through a filter), and
writes a Hugging Face directory that ``from_pretrained`` loads. The same job from the shell:

    weightspace merge --config recipe.yaml -o merged/

See docs/recipes.md for the recipe language and where weightspace differs from mergekit.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

RECIPE = """\
merge_method: ties
base_model: base
models:
  - model: math
    parameters:
      weight:
        - filter: self_attn
          value: [0.5, 1.0]      # layer 0 -> 0.5, last layer -> 1.0
        - value: 0.7
      density: 0.5
  - model: code
    parameters: {weight: 0.5, density: 0.5}
parameters: {normalize: true}
dtype: float32
out_dtype: bfloat16
tokenizer_source: base
"""


def make_models(out: Path, hidden: int, layers: int) -> None:
    """A tiny Llama base and two fine-tunes of it, saved with ``save_pretrained``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=1, vocab_size=64)
    base = LlamaForCausalLM(config)
    base.save_pretrained(out / "base")
    (out / "base" / "tokenizer_config.json").write_text('{"model_max_length": 64}')
    for seed, name in ((1, "math"), (2, "code")):
        torch.manual_seed(seed)
        ft = LlamaForCausalLM(config)
        ft.load_state_dict({k: v + 0.002 * torch.randn_like(v) for k, v in base.state_dict().items()})
        ft.save_pretrained(out / name)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=32, help="hidden size of the tiny Llama (default: 32)")
    p.add_argument("--layers", type=int, default=3, help="number of layers (default: 3)")
    p.add_argument("--out", default="recipe-example", help="directory for what is written")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    from transformers import AutoModelForCausalLM

    from weightspace.recipe import load_recipe, run_recipe

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    make_models(out, args.hidden, args.layers)
    (out / "recipe.yaml").write_text(RECIPE)
    recipe = load_recipe(out / "recipe.yaml")  # every field and every header checked here
    merged_dir = run_recipe(recipe, out / "merged", progress=not args.quiet)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    tokens = torch.arange(16).reshape(1, 16)
    logits = {}
    with torch.no_grad():
        for name in ("base", "math", "code"):
            logits[name] = AutoModelForCausalLM.from_pretrained(out / name)(tokens).logits
        logits["merged"] = merged(tokens).logits.float()
    dist = {name: float((logits["merged"] - logits[name]).norm() / logits[name].norm()) for name in ("base", "math",
                                                                                                      "code")}
    print(f"merged {recipe.merge_method}: wrote {merged_dir} ({next(merged.parameters()).dtype}, "
          f"{merged.config.num_hidden_layers} layers)")
    for name, d in dist.items():
        print(f"  relative distance of the merged logits to {name}: {d:.3f}")
    return {"path": merged_dir, "distance": dist, "dtype": next(merged.parameters()).dtype}


if __name__ == "__main__":
    main()
