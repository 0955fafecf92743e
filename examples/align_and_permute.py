"""The permutation symmetry of your own network, and weight matching undoing a permutation.

    python examples/align_and_permute.py --width 32 --seed 1

1. Trace a user-defined ``nn.Module`` (not one of weightspace's families: a small residual CNN
   with BatchNorm) into its permutation groups.
2. Permute its hidden channels at random: every weight changes, the function does not.
3. Weight matching (Git Re-Basin) finds the permutation back from the weights alone.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import merging
import weightspace


class ResidualCNN(nn.Module):
    """conv-BN-ReLU stem, one residual block, global average pooling, linear head."""

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(width)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn0(self.stem(x)))
        x = F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return self.head(x.mean(dim=(2, 3)))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=16, help="channels (default: 16)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    model = ResidualCNN(args.width).eval()
    for m in model.modules():  # give BatchNorm non-trivial statistics, as a trained network has
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_()
    x = torch.randn(8, 1, 8, 8)

    # 1. the symmetry: which channels can be permuted together
    structure = weightspace.trace(model, x)
    print(f"{type(model).__name__}: {structure.num_parameters:,} parameters")
    for g in structure.groups.values():
        print(f"  group {g.name!r}: {g.size} channels, acting on {len(g.members)} tensor axes")
    for u in structure.unpermuted[:3]:
        print(f"  left alone: {u.tensor}[{u.axis}] ({u.reason})")

    # 2. a random permutation changes the weights but not the function
    state = {k: v.clone() for k, v in model.state_dict().items()}
    perm = weightspace.random_permutation(structure, seed=args.seed)
    permuted = weightspace.permute(structure, state, perm)
    changed = sum(not torch.equal(state[k], permuted[k]) for k in state)
    with torch.no_grad():
        y = model(x)
        y_perm = torch.func.functional_call(model, permuted, (x,))
    out_diff = float((y - y_perm).abs().max())
    print(f"random permutation: {changed} of {len(state)} tensors changed; max output difference {out_diff:.2e}")

    # 3. weight matching recovers it: permuting the permuted weights with the result gives the originals
    found = merging.weight_matching(structure, state, permuted, seed=args.seed)
    restored = weightspace.permute(structure, permuted, found)
    weight_diff = max(float((state[k].double() - restored[k].double()).abs().max()) for k in state)
    inverse = weightspace.inverse_permutation(perm)
    recovered = all(torch.equal(found[g], inverse[g]) for g in structure.groups)
    print(f"weight matching: recovered the inverse permutation: {recovered}; "
          f"max weight difference after undoing it {weight_diff:.2e}")
    return {"output_diff": out_diff, "weight_diff": weight_diff, "recovered": recovered,
            "groups": {g: grp.size for g, grp in structure.groups.items()}}


if __name__ == "__main__":
    main()
