"""Task vectors on digit subsets: does task arithmetic / TIES beat the single fine-tuned models?

    python bench/task_vectors.py                                  # sklearn's 8x8 digits, subsets 0-4,5-9
    python bench/task_vectors.py --subsets 0-3,4-6,7-9 --seed 1
    python bench/task_vectors.py --mnist DIR                   # MNIST IDX files instead

Protocol (Ilharco et al., "Editing Models with Task Arithmetic"; Yadav et al., TIES-Merging):
a small MLP base is pre-trained briefly on a small part of the training data (all classes),
then fine-tuned separately on each digit subset (a shared 10-way head, so each fine-tuned model
forgets the classes it does not see). The fine-tuned models are merged with every method of the
``merging.methods`` registry; the scaling coefficient of the task-vector methods is chosen on a
validation split carved from the training data (never the test data), as in the papers.
Every model is scored with 10-way accuracy on each subset's test examples and on all test
examples. The script prints a markdown table and checks the expected ordering:

- each fine-tuned model is the best fine-tuned model on its own subset;
- task arithmetic and TIES beat every single fine-tuned model and the base, both on the mean
  over subsets and on all classes.

With MNIST (``--mnist DIR``) the loader's train and test splits are used (8,000 and 2,000 of the
10,000 test images when only the t10k files are present).
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

import merging
from weightspace.data import Dataset, load_dataset
from weightspace.models import get_model

TASK_VECTOR_METHODS = ("task_arithmetic", "ties", "dare_linear", "dare_ties")


def parse_subsets(text: str) -> list[list[int]]:
    """``"0-4,5-9"`` -> ``[[0..4], [5..9]]``; ``"013,2-5"`` style single digits also allowed."""
    subsets = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            lo, _, hi = part.partition("-")
            if not (lo.isdigit() and hi.isdigit()) or int(lo) > int(hi):
                raise ValueError(f"--subsets: bad range {part!r}; write e.g. 0-4,5-9")
            digits = list(range(int(lo), int(hi) + 1))
        elif part.isdigit():
            digits = [int(c) for c in part]
        else:
            raise ValueError(f"--subsets: bad subset {part!r}; write e.g. 0-4,5-9 or 0123,456,789")
        if any(d > 9 for d in digits):
            raise ValueError(f"--subsets: digits must be 0-9, got {part!r}")
        subsets.append(digits)
    flat = [d for s in subsets for d in s]
    if len(subsets) < 2 or len(flat) != len(set(flat)):
        raise ValueError(f"--subsets: need two or more disjoint subsets, got {text!r}")
    return subsets


def parse_floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag}: expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise ValueError(f"{flag}: expected at least one number")
    return values


def load(args) -> tuple[Dataset, Dataset]:
    spec = f"mnist-idx:{args.mnist}" if args.mnist else "digits"
    return load_dataset(spec, split="train"), load_dataset(spec, split="test")


def mask(ds: Dataset, digits: list[int]) -> Dataset:
    return ds.subset(torch.isin(ds.y, torch.tensor(digits)))


def train(model: torch.nn.Module, ds: Dataset, *, epochs: int, lr: float, seed: int,
          batch_size: int = 32, classes: list[int] | None = None) -> dict[str, torch.Tensor]:
    """SGD with momentum and a cosine schedule; returns a copy of the trained state dict.

    With ``classes``, the softmax runs over those logits only (the others are masked out), so
    the task trains its own rows of the shared head, as a task-specific head would.
    """
    keep = None
    if classes is not None:
        keep = torch.full((10,), float("-inf"))
        keep[classes] = 0.0
    gen = torch.Generator().manual_seed(seed)
    x, y = ds.x.flatten(1), ds.y
    steps_per_epoch = (len(x) + batch_size - 1) // batch_size
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * steps_per_epoch))
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(steps_per_epoch):
            idx = order[i * batch_size:(i + 1) * batch_size]
            opt.zero_grad()
            logits = model(x[idx])
            if keep is not None:
                logits = logits + keep
            F.cross_entropy(logits, y[idx]).backward()
            opt.step()
            sched.step()
    model.eval()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def accuracy(model: torch.nn.Module, state: dict, ds: Dataset) -> float:
    model.load_state_dict(state)
    model.eval()
    if len(ds) == 0:
        return float("nan")
    return float((model(ds.x.flatten(1)).argmax(1) == ds.y).float().mean())


def scores(model, state, subsets_test: list[Dataset], test: Dataset) -> dict:
    per = [accuracy(model, state, d) for d in subsets_test]
    return {"per": per, "all": accuracy(model, state, test), "mean": sum(per) / len(per)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mnist", metavar="DIR", help="MNIST IDX directory (default: sklearn's 8x8 digits)")
    p.add_argument("--subsets", default="0-4,5-9", help="disjoint digit subsets, one task each (default: 0-4,5-9)")
    p.add_argument("--hidden", default="64,64", help="hidden widths of the MLP (default: 64,64)")
    p.add_argument("--pretrain-fraction", type=float, default=0.1,
                   help="fraction of the training data (all classes) that pre-trains the base (default: 0.1)")
    p.add_argument("--pretrain-epochs", type=int, default=20)
    p.add_argument("--finetune-epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--val-fraction", type=float, default=0.15,
                   help="fraction of the training data held out to choose the scaling coefficient (default: 0.15)")
    p.add_argument("--scales", default="0.2,0.3,0.5,0.7,1.0,1.3",
                   help="candidate scaling coefficients (lambda) of the task-vector methods (default: 0.2,0.3,0.5,0.7,1.0,1.3)")
    p.add_argument("--density", type=float, default=0.5, help="density of TIES and DARE (default: 0.5)")
    p.add_argument("--head", choices=("task", "shared"), default="task",
                   help="fine-tune with a softmax over the subset's classes only (task, as a task-specific head) "
                        "or over all 10 (shared: the other classes' logits are pushed down) (default: task)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    args = p.parse_args(argv)
    try:
        subsets = parse_subsets(args.subsets)
        scales = parse_floats(args.scales, "--scales")
        hidden = [int(h) for h in parse_floats(args.hidden, "--hidden")]
        if not 0.0 < args.pretrain_fraction < 1.0 or not 0.0 < args.val_fraction < 1.0:
            raise ValueError("--pretrain-fraction and --val-fraction must lie in (0, 1)")
        train_all, test = load(args)
    except (ValueError, OSError) as e:
        print(f"task_vectors: {e}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()

    val, rest = train_all.split(args.val_fraction, shuffle=True, seed=args.seed)
    pre, fine = rest.split(args.pretrain_fraction, shuffle=True, seed=args.seed + 1)
    names = ["{" + ",".join(map(str, s)) + "}" for s in subsets]
    sub_test = [mask(test, s) for s in subsets]
    sub_val = [mask(val, s) for s in subsets]
    covered = [d for s in subsets for d in s]
    test_cov, val_cov = mask(test, covered), mask(val, covered)

    in_features = int(torch.tensor(train_all.input_shape).prod())
    torch.manual_seed(args.seed)
    model = get_model("mlp", in_features=in_features, hidden=hidden, out_features=10)
    base = train(model, pre, epochs=args.pretrain_epochs, lr=args.lr, seed=args.seed)
    finetuned = []
    for i, s in enumerate(subsets):
        model.load_state_dict(base)
        finetuned.append(train(model, mask(fine, s), epochs=args.finetune_epochs, lr=args.lr,
                               seed=args.seed + 100 + i, classes=s if args.head == "task" else None))

    def val_score(state) -> float:  # selection criterion: mean over subsets on validation data
        accs = [accuracy(model, state, d) for d in sub_val]
        return sum(accs) / len(accs)

    rows: list[tuple[str, str, dict]] = [("base", "", scores(model, base, sub_test, test_cov))]
    for name, st in zip(names, finetuned):
        rows.append((f"fine-tuned on {name}", "", scores(model, st, sub_test, test_cov)))
    merges: dict[str, dict] = {}
    merges["linear"] = ("", merging.merge_states("linear", finetuned))
    for method in TASK_VECTOR_METHODS:
        extra = {"density": args.density} if method != "task_arithmetic" else {}
        if method.startswith("dare"):
            extra["seed"] = args.seed
        best = None
        for lam in scales:
            st = merging.merge_states(method, finetuned, base=base, scale=lam, **extra)
            v = val_score(st)
            if best is None or v > best[0]:
                best = (v, lam, st)
        params = ", ".join([f"scale={best[1]:g}"] + [f"{k}={v:g}" for k, v in extra.items()])
        merges[method] = (params, best[2])
    if len(finetuned) == 2:
        merges["slerp"] = ("t=0.5", merging.merge_states("slerp", finetuned, t=0.5))
    for method, (params, st) in merges.items():
        rows.append((method, params, scores(model, st, sub_test, test_cov)))
    seconds = time.perf_counter() - t0

    data_name = "MNIST" if args.mnist else "digits 8x8"
    print(f"Task vectors on {data_name}: MLP {in_features}-{'-'.join(map(str, hidden))}-10, base pre-trained on "
          f"{len(pre)} examples for {args.pretrain_epochs} epochs, fine-tuned {args.finetune_epochs} epochs per subset "
          f"({', '.join(f'{n}: {len(mask(fine, s))}' for n, s in zip(names, subsets))}); "
          f"{args.head} head; scales chosen from {args.scales} on {len(val_cov)} validation examples; "
          f"test accuracy (10-way argmax), seed {args.seed}\n")
    print("| model / method | params | " + " | ".join(f"acc {n}" for n in names) + " | all classes | mean over subsets |")
    print("|---|---|" + "---:|" * (len(names) + 2))
    for label, params, sc in rows:
        print(f"| {label} | {params} | " + " | ".join(f"{a:.3f}" for a in sc["per"])
              + f" | {sc['all']:.3f} | {sc['mean']:.3f} |")

    # the expected ordering
    by = {label: sc for label, _, sc in rows}
    ft = [by[f"fine-tuned on {n}"] for n in names]
    checks: list[tuple[str, bool]] = []
    for i, n in enumerate(names):
        others = [j for j in range(len(names)) if j != i]
        ok = all(ft[i]["per"][i] > ft[j]["per"][i] for j in others)
        text = (f"fine-tuned on {n} is the best fine-tuned model on {n} "
                f"({ft[i]['per'][i]:.3f} > {max(ft[j]['per'][i] for j in others):.3f})")
        checks.append((text, ok))
    for method in ("task_arithmetic", "ties"):
        m = by[method]
        for key, what in (("mean", "mean over subsets"), ("all", "all classes")):
            best_ft = max(f[key] for f in ft)
            checks.append((f"{method} > every fine-tuned model on {what} ({m[key]:.3f} > {best_ft:.3f})",
                           m[key] > best_ft))
            checks.append((f"{method} > base on {what} ({m[key]:.3f} > {by['base'][key]:.3f})",
                           m[key] > by["base"][key]))
    print()
    for text, ok in checks:
        print(f"- [{'x' if ok else ' '}] {text}")
    print(f"\nordering holds: {'yes' if all(ok for _, ok in checks) else 'no'}  ({seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
