"""Train a star model (Starlight) from a few small networks, then check the star-domain claim.

    python examples/star_model.py                       # 6 sources + 2 held-out MLPs on digits
    python examples/star_model.py --sources 8 --width 16 --star-epochs 20

A star model is joined by low-loss straight lines to every solution, even ones it never saw
(Sonthalia et al., arXiv 2403.07968). This script trains source and held-out models from
different initialisations, builds the star from the sources only, and compares the loss
barrier between the star and each held-out model with the barrier between ordinary pairs
(both after weight matching). It also compares averaging the predictions of models sampled on
the star's segments with a plain ensemble of the sources. The same job from the shell:

    weightspace starlight m0.safetensors m1.safetensors m2.safetensors --data digits -o star.safetensors
    weightspace starlight m*.safetensors --data digits -o star.safetensors --resume   # after a kill
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

import merging
import weightspace
from weightspace.api import INPUT_SHAPE_KEY, MODEL_KEY
from weightspace.data import load_data
from weightspace.models import model_spec_to_json
from weightspace.starlight import starlight_checkpoints
from weightspace.training import train_classifier


def train_checkpoint(path: Path, *, seed: int, width: int, epochs: int, quiet: bool) -> Path:
    """Train a narrow MLP on digits and save it with its model spec."""
    kwargs = {"in_features": 64, "hidden": [width, width], "out_features": 10}
    torch.manual_seed(seed)
    model = weightspace.get_model("mlp", **kwargs)
    train_classifier(model, "digits", epochs=epochs, lr=0.1, seed=seed, progress=not quiet)
    metadata = {MODEL_KEY: model_spec_to_json("mlp", kwargs), INPUT_SHAPE_KEY: "1,8,8"}
    return weightspace.save(model.state_dict(), path, metadata=metadata)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sources", type=int, default=6, help="models the star is built from (default: 6)")
    p.add_argument("--held-out", type=int, default=2, help="models used only to test the star (default: 2)")
    p.add_argument("--width", type=int, default=16, help="hidden width; narrow keeps barriers (default: 16)")
    p.add_argument("--epochs", type=int, default=15, help="training epochs per model (default: 15)")
    p.add_argument("--star-epochs", type=int, default=30, help="Starlight epochs (default: 30)")
    p.add_argument("--steps", type=int, default=11, help="points on each path (default: 11)")
    p.add_argument("--out", default="star-model-example", help="directory for what is written")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # tiny models: one thread is fastest
    n = args.sources + args.held_out
    paths = [train_checkpoint(out / f"m{i}.safetensors", seed=i, width=args.width, epochs=args.epochs,
                              quiet=args.quiet) for i in range(n)]
    sources = paths[:args.sources]

    r = starlight_checkpoints(sources, out / "star.safetensors", data="digits", epochs=args.star_epochs,
                              progress=not args.quiet)
    loaded = weightspace.load_model(r.path)
    model, star = loaded.module, loaded.state
    structure = loaded.structure()
    test = load_data("digits", split="test", batch_size=512)
    states = [weightspace.load(pth) for pth in paths]
    src_states, held_states = states[:args.sources], states[args.sources:]

    star_held = merging.aligned_barriers(model, structure, star, held_states, test, steps=args.steps)
    pairs = merging.pairwise_barriers(model, structure, held_states + src_states[:2], test, steps=args.steps)
    naive = merging.pairwise_barriers(model, None, held_states + src_states[:2], test, steps=args.steps)
    star_src = merging.aligned_barriers(model, structure, star, src_states, test, steps=args.steps)

    aligned = [weightspace.permute(structure, s, merging.weight_matching(structure, star, s)) for s in src_states]
    p_bma, y = merging.star_domain_proba(model, star, aligned, test, samples_per_source=4)
    p_ens, _ = merging.ensemble_proba(model, src_states, test)
    bma, ens = merging.prediction_metrics(p_bma, y), merging.prediction_metrics(p_ens, y)

    result = {
        "star": r, "star_test": merging.evaluate(model, star, test),
        "pairs_naive": merging.mean_barrier(naive), "pairs_aligned": merging.mean_barrier(pairs),
        "star_held_out": merging.mean_barrier(star_held), "star_sources": merging.mean_barrier(star_src),
        "star_domain": bma, "ensemble": ens,
    }
    print(f"star model: test loss {result['star_test'].loss:.3f}, accuracy {100 * result['star_test'].accuracy:.1f}%")
    print(f"{'mean loss barrier (digits test set)':<44} {'':>8}")
    print(f"{'ordinary pairs, no alignment':<44} {result['pairs_naive']:8.3f}")
    print(f"{'ordinary pairs, weight matching':<44} {result['pairs_aligned']:8.3f}")
    print(f"{'star <-> held-out models, weight matching':<44} {result['star_held_out']:8.3f}")
    print(f"{'star <-> its sources, weight matching':<44} {result['star_sources']:8.3f}")
    print(f"{'prediction':<44} {'accuracy':>8} {'ECE':>7}")
    print(f"{f'ensemble of {args.sources} sources':<44} {100 * ens.accuracy:7.1f}% {ens.ece:7.4f}")
    print(f"{f'star domain ({4 * args.sources} sampled models)':<44} {100 * bma.accuracy:7.1f}% {bma.ece:7.4f}")
    return result


if __name__ == "__main__":
    main()
