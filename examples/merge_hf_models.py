"""Merge two Hugging Face models (directories written by ``save_pretrained``) into a third that
``from_pretrained`` loads.

    pip install 'weightspace[hf]'
    python examples/merge_hf_models.py                       # a tiny Llama, two seeds
    python examples/merge_hf_models.py --arch gpt2 --low-memory

Nothing is downloaded: both models are built from a tiny config with different seeds and saved
with ``save_pretrained``. A directory with ``config.json`` is a checkpoint whose model is built
from its config (no ``--model``); the merge writes a directory with A's ``config.json``,
tokenizer and generation files and the merged weights as safetensors. The script reloads it with
``AutoModelForCausalLM.from_pretrained`` and prints the largest difference to the plain average
of A and B. From the shell:

    weightspace merge a/ b/ -o merged/ --method none          # add --low-memory, --max-shard-size 2GB
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import weightspace


def build(arch: str, seed: int, size: int):
    import transformers

    torch.manual_seed(seed)
    if arch == "llama":
        config = transformers.LlamaConfig(hidden_size=size, intermediate_size=2 * size, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, vocab_size=128)
        return transformers.LlamaForCausalLM(config)
    config = transformers.GPT2Config(n_embd=size, n_layer=2, n_head=4, vocab_size=128, n_positions=64,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config)  # ties lm_head to the embedding: saved once


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="hf-example", help="directory for what is written (default: ./hf-example)")
    p.add_argument("--arch", choices=["llama", "gpt2"], default="llama", help="the tiny model (default: llama)")
    p.add_argument("--size", type=int, default=32, help="hidden size (default: 32)")
    p.add_argument("--alpha", type=float, default=0.5, help="weight of B (default: 0.5)")
    p.add_argument("--low-memory", action="store_true", help="merge tensor by tensor")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    import transformers

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # tiny models: one thread is fastest
    a, b = out / "a", out / "b"
    for seed, path in ((0, a), (1, b)):
        build(args.arch, seed, args.size).save_pretrained(path)
    (a / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}))  # copied to the output

    # merge (--method none: the plain average, which the check below recomputes with transformers)
    result = weightspace.merge_checkpoints(a, b, out / "merged", method="none", alpha=args.alpha,
                                           low_memory=args.low_memory, progress=not args.quiet)
    files = sorted(f.name for f in result.path.iterdir())
    print(f"wrote {result.path}: {', '.join(files)}")

    # reload with transformers and compare to the plain average of A and B
    model = transformers.AutoModelForCausalLM.from_pretrained(result.path)
    merged = model.state_dict()
    sa = transformers.AutoModelForCausalLM.from_pretrained(a).state_dict()
    sb = transformers.AutoModelForCausalLM.from_pretrained(b).state_dict()
    diff = max(float((merged[k] - ((1 - args.alpha) * sa[k] + args.alpha * sb[k])).abs().max()) for k in merged)
    print(f"{type(model).__name__} loaded by from_pretrained; "
          f"largest difference to (1 - alpha) * A + alpha * B: {diff:.3g}")
    return {"merged": result, "max_diff": diff, "files": files}


if __name__ == "__main__":
    main()
