"""Merge two language models trained from different initialisations: align their hidden units
first, and the merged model keeps (most of) their perplexity; averaging them as they are does not.

    pip install 'weightspace[hf]'
    python examples/merge_language_models.py                    # GPT-2 layout, width 64, ~3 minutes
    python examples/merge_language_models.py --family llama --width 128 --epochs 2

Nothing is downloaded. Two byte-level causal language models (``byte_language_model``: the
GPT-2 or the Llama layout, 256 byte values as the vocabulary) are trained on the Python standard
library's sources (``--data python-stdlib``) from seeds 0 and 1, and saved with
``save_pretrained``. Then, as from the shell:

    weightspace barrier a/ b/ --data python-stdlib --method all --plot barrier.png
    weightspace merge a/ b/ -o merged/ --data python-stdlib      # auto: activation matching

the script measures the perplexity along the straight path from A to B, naive and after weight
and activation matching (a PNG of the curves), merges with activation matching into a Hugging Face
directory, reloads it with ``AutoModelForCausalLM.from_pretrained`` and lets it complete a line of
Python.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

import weightspace
from weightspace.models import LANGUAGE_FAMILIES, byte_language_model
from weightspace.training import train_classifier


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="lm-example", help="directory for what is written (default: ./lm-example)")
    p.add_argument("--family", choices=LANGUAGE_FAMILIES, default="gpt2", help="model layout (default: gpt2)")
    p.add_argument("--width", type=int, default=64, help="residual width (default: 64)")
    p.add_argument("--depth", type=int, default=2, help="transformer blocks (default: 2)")
    p.add_argument("--epochs", type=int, default=2, help="passes over the training text (default: 2)")
    p.add_argument("--warmup", type=int, default=50, help="steps of learning-rate warmup (default: 50)")
    p.add_argument("--data", default="python-stdlib", help="next-byte text: python-stdlib or text:PATH")
    p.add_argument("--points", type=int, default=9, help="points on the path (default: 9)")
    p.add_argument("--prompt", default="def main(", help="text the merged model completes")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    import transformers

    if args.quiet:
        transformers.utils.logging.disable_progress_bar()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # small models: one thread is about as fast and leaves the others free
    dirs = []
    for seed in (0, 1):  # two independent runs: different initialisation and data order
        torch.manual_seed(seed)
        model = byte_language_model(args.family, width=args.width, depth=args.depth)
        losses = train_classifier(model, args.data, epochs=args.epochs, lr=2e-3, optimizer="adam", seed=seed,
                                  batch_size=32, warmup=args.warmup, progress=not args.quiet)
        model.save_pretrained(out / f"seed{seed}")
        dirs.append(out / f"seed{seed}")
        print(f"trained {dirs[-1]}: final training loss {losses[-1]:.3f} nats per byte")
    a, b = dirs

    # the straight path from A to B: naive, and after weight / activation matching
    curves = {}
    for method in ("weight", "activation"):
        res = weightspace.barrier_between(a, b, data=args.data, align=method, steps=args.points,
                                          plot=out / "barrier.png" if method == "activation" else None,
                                          progress=not args.quiet)
        curves.setdefault("naive", res["naive"])
        curves[f"{method} matching"] = res[f"{method} matching"]
    ppl = curves["naive"].perplexities
    print(f"perplexity on {args.data} (test): A {ppl[0]:.2f}, B {ppl[-1]:.2f}; at the midpoint: " + ", ".join(
        f"{label} {r.midpoint_perplexity:.2f}" for label, r in curves.items()))

    # merge with activation matching (what --method auto picks when --data is given)
    result = weightspace.merge_checkpoints(a, b, out / "merged", data=args.data, progress=not args.quiet)
    print(f"wrote {result.path} ({result.method} matching: {result.reason})")

    merged = transformers.AutoModelForCausalLM.from_pretrained(result.path).eval()
    ids = torch.tensor([list(args.prompt.encode())])
    with torch.no_grad():
        for _ in range(40):  # greedy, one byte at a time
            ids = torch.cat([ids, merged(ids).logits[:, -1:].argmax(-1)], dim=1)
    text = bytes(ids[0].tolist()).decode("utf-8", errors="replace")
    print(f"{type(merged).__name__} loaded by from_pretrained completes {args.prompt!r}: {text!r}")
    return {"curves": curves, "merged": result, "completion": text}


if __name__ == "__main__":
    main()
