"""Trace a 7B-parameter Llama from its config alone, on the ``meta`` device: no weight is allocated.

This is what ``weightspace merge A B --low-memory`` does before weight matching reads any tensor:
the structure (the permutation groups) comes from the config, so the plan of a low-memory merge
of two 7B checkpoints costs seconds and a few hundred MB.

    python bench/trace_large.py                     # Llama-2-7B's shape (32 layers, 4096 wide)
    python bench/trace_large.py --layers 4 --kv-heads 8

Prints one row: parameters, seconds to build and trace, groups, front end, the permuted
fraction, and the peak RSS of the process. Needs ``transformers`` (``pip install 'weightspace[hf]'``).
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--intermediate", type=int, default=11008)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=32, help="key/value heads (grouped-query attention when fewer)")
    p.add_argument("--vocab", type=int, default=32000)
    args = p.parse_args(argv)
    try:
        import transformers
    except ImportError:
        print("bench/trace_large.py needs transformers: pip install 'weightspace[hf]'", file=sys.stderr)
        return 2
    from weightspace.api import trace_without_weights

    cfg = transformers.LlamaConfig(hidden_size=args.hidden, intermediate_size=args.intermediate,
                                   num_hidden_layers=args.layers, num_attention_heads=args.heads,
                                   num_key_value_heads=args.kv_heads, vocab_size=args.vocab,
                                   architectures=["LlamaForCausalLM"])
    with tempfile.TemporaryDirectory() as d:
        cfg.save_pretrained(d)  # a config and no weights: the model is built on the meta device
        t0 = time.perf_counter()
        structure, module, _ = trace_without_weights(path=d)
        seconds = time.perf_counter() - t0
    n = sum(p.numel() for p in module.parameters())
    assert all(p.is_meta for p in module.parameters())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB -> GB
    print("| model | parameters | build + trace | groups | front end | permuted | peak RSS |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(f"| Llama {args.layers} x {args.hidden} (kv heads {args.kv_heads}) | {n / 1e9:.2f} B | {seconds:.1f} s | "
          f"{len(structure.groups)} | {structure.front_end} | {structure.permuted_fraction:.0%} | {rss:.2f} GB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
