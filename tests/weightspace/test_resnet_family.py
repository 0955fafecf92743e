"""The ``resnet`` family: torchvision's layout and sizes, and its traced permutation symmetry."""
from __future__ import annotations

from unittest.mock import patch

import pytest
import torch
from nets import randomize

import merging
import weightspace
from weightspace.models import ResNet, example_input_for, get_model, list_models, model_from_json, model_spec_to_json

BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def expected_parameters(depth: int, width: int = 64, num_classes: int = 1000, in_channels: int = 3) -> int:
    """Parameter count of torchvision's ResNet, written out from the paper's table (independent of the module).

    A 3x3 / 1x1 convolution from ``i`` to ``o`` channels has ``9 i o`` / ``i o`` weights (no bias);
    a BatchNorm over ``c`` channels has ``2 c`` parameters.
    """
    bottleneck = depth >= 50
    expansion = 4 if bottleneck else 1
    total = 49 * in_channels * width + 2 * width  # 7x7 stem conv1 + bn1
    channels = width
    for s, n in enumerate(BLOCKS[depth]):
        planes = width * 2**s
        out = planes * expansion
        for b in range(n):
            if bottleneck:  # 1x1 reduce, 3x3, 1x1 expand, three BatchNorms
                total += channels * planes + 2 * planes + 9 * planes * planes + 2 * planes + planes * out + 2 * out
            else:  # two 3x3 convolutions, two BatchNorms
                total += 9 * channels * planes + 2 * planes + 9 * planes * planes + 2 * planes
            if b == 0 and (s > 0 or channels != out):  # projection shortcut: 1x1 conv + BatchNorm
                total += channels * out + 2 * out
            channels = out
    return total + channels * num_classes + num_classes  # fc


def meta_resnet(**kwargs) -> ResNet:
    """A full-size network on the meta device, shapes only: no memory, and no initialisation
    (the first ``normal_`` on meta tensors costs seconds)."""
    with torch.device("meta"), patch.object(ResNet, "reset_parameters", lambda self: None):
        return ResNet(**kwargs)


def test_parameter_counts_are_torchvision_s() -> None:
    # the published torchvision sizes; 18 and 50 also checked by hand:
    # ResNet-50 = 9,536 (stem) + 215,808 + 1,219,584 + 7,098,368 + 14,964,736 (stages) + 2,049,000 (fc)
    assert expected_parameters(50) == 25_557_032
    assert expected_parameters(18) == 11_689_512
    published = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160}
    for depth, count in published.items():
        model = meta_resnet(depth=depth)
        assert sum(p.numel() for p in model.parameters()) == count == expected_parameters(depth)
    assert sum(p.numel() for p in meta_resnet(depth=50, width=8, num_classes=7).parameters()) == \
        expected_parameters(50, 8, 7)


def test_resnet50_state_dict_layout() -> None:
    sd = meta_resnet(depth=50).state_dict()
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = list(sd)
    # stem, in torchvision's order
    assert keys[:6] == ["conv1.weight", *(f"bn1.{t}" for t in bn)]
    # first block of layer1, with its projection shortcut, in torchvision's order
    first = [f"layer1.0.{m}.{t}" for m in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")
             for t in (("weight",) if m.startswith("conv") else bn)]
    first += ["layer1.0.downsample.0.weight", *(f"layer1.0.downsample.1.{t}" for t in bn)]
    assert keys[6:6 + len(first)] == first
    assert keys[-2:] == ["fc.weight", "fc.bias"]
    shapes = {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.running_var": (64,),
        "layer1.0.conv1.weight": (64, 64, 1, 1),
        "layer1.0.conv2.weight": (64, 64, 3, 3),
        "layer1.0.conv3.weight": (256, 64, 1, 1),
        "layer1.0.bn3.weight": (256,),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer1.0.downsample.1.running_mean": (256,),
        "layer1.1.conv1.weight": (64, 256, 1, 1),
        "layer2.0.conv1.weight": (128, 256, 1, 1),
        "layer2.0.conv2.weight": (128, 128, 3, 3),
        "layer2.0.downsample.0.weight": (512, 256, 1, 1),
        "layer3.5.conv3.weight": (1024, 256, 1, 1),
        "layer4.0.downsample.0.weight": (2048, 1024, 1, 1),
        "layer4.2.conv2.weight": (512, 512, 3, 3),
        "layer4.2.bn3.num_batches_tracked": (),
        "fc.weight": (1000, 2048),
        "fc.bias": (1000,),
    }
    for k, shape in shapes.items():
        assert tuple(sd[k].shape) == shape, k
    # downsample only on the first block of each stage; 53 conv+BN pairs, 2 fc tensors
    assert sorted({k.split(".downsample")[0] for k in keys if ".downsample." in k}) == \
        ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]
    assert sum(k.endswith("conv1.weight") or k.endswith("conv2.weight") or k.endswith("conv3.weight")
               or k.endswith("downsample.0.weight") for k in keys) == 53
    assert len(keys) == 1 + 5 + 16 * (3 + 15) + 4 * (1 + 5) + 2 == 320
    assert not any(k.endswith(("conv1.bias", "conv2.bias", "conv3.bias")) for k in keys)


def test_basic_block_layout_and_small_stem() -> None:
    sd = meta_resnet(depth=18).state_dict()
    assert tuple(sd["layer1.0.conv1.weight"].shape) == (64, 64, 3, 3)
    assert "layer1.0.downsample.0.weight" not in sd and "layer1.0.conv3.weight" not in sd
    assert tuple(sd["layer2.0.downsample.0.weight"].shape) == (128, 64, 1, 1)
    assert tuple(sd["fc.weight"].shape) == (1000, 512)
    small = ResNet(depth=18, width=4, num_classes=3, small_input=True)
    assert small.state_dict()["conv1.weight"].shape == (4, 3, 3, 3)
    assert isinstance(small.maxpool, torch.nn.Identity)
    assert small.example_input().shape == (2, 3, 32, 32)
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    assert list(small.state_dict()) == list(ResNet(depth=18, width=4, num_classes=3).state_dict())


def test_registered_with_example_input() -> None:
    assert "resnet" in list_models()
    model = get_model("resnet", depth=18, width=4, num_classes=5, in_channels=1)
    x = example_input_for(model)
    assert x.shape == (2, 1, 64, 64)
    assert model.eval()(x).shape == (2, 5)
    again = model_from_json(model_spec_to_json("resnet", {"depth": 18, "width": 4, "num_classes": 5, "in_channels": 1}))
    assert list(again.state_dict()) == list(model.state_dict())


@pytest.mark.parametrize(("kwargs", "hint"), [
    ({"depth": 42}, "unsupported depth 42; choose one of: 18, 34, 50, 101"),
    ({"width": 0}, "width must be a positive int"),
    ({"width": 0.5}, "width must be a positive int"),
    ({"small_input": "yes"}, "small_input must be true or false"),
])
def test_rejects_bad_arguments(kwargs, hint) -> None:
    with pytest.raises(ValueError, match=hint):
        get_model("resnet", **kwargs)


def _sizes(structure) -> list[int]:
    return sorted(g.size for g in structure.groups.values())


@pytest.mark.parametrize("seed", [0, 1])
def test_resnet18_permutation_preserves_function(seed: int) -> None:
    model = randomize(ResNet(depth=18, width=4, num_classes=5, small_input=True, image_size=8), seed)
    x = example_input_for(model, batch_size=3, seed=seed)
    s = weightspace.trace(model, x)
    # the stem feeds layer1 without a projection, so it shares layer1's stream: 4 streams + 8 inner groups
    assert len(s.groups) == 12
    assert _sizes(s) == sorted([4, 4, 4, 8, 8, 8, 16, 16, 16, 32, 32, 32])
    stream = s.axes["conv1.weight"][0].group
    assert {s.axes[f"layer1.{b}.bn2.weight"][0].group for b in (0, 1)} == {stream}
    assert s.axes["layer2.0.downsample.1.running_var"][0].group == s.axes["layer2.1.bn2.weight"][0].group
    assert s.axes["fc.weight"][1].group == s.axes["layer4.1.bn2.bias"][0].group
    assert [u.tensor for u in s.unpermuted] == ["conv1.weight", "fc.weight", "fc.bias"]
    state = model.state_dict()
    perms = weightspace.random_permutation(s, seed)
    permuted = weightspace.permute(s, state, perms)
    assert not torch.equal(permuted["layer3.0.conv1.weight"], state["layer3.0.conv1.weight"])
    with torch.no_grad():
        a = torch.func.functional_call(model, state, (x,))
        b = torch.func.functional_call(model, permuted, (x,))
    assert (a - b).abs().max().item() <= 1e-5 * max(1.0, a.abs().max().item())


def test_resnet50_groups() -> None:
    model = randomize(ResNet(depth=50, width=8, num_classes=4, image_size=32), 0)
    x = example_input_for(model)
    s = weightspace.trace(model, x, check=False)  # checked below, in float32 (cheaper)
    # stem (its own group: layer1.0 projects 8 -> 32 channels) + one residual stream per stage
    # + two inner groups (after conv1 and conv2) per bottleneck: 1 + 4 + 2 * 16 = 37
    assert len(s.groups) == 1 + 4 + 2 * sum(BLOCKS[50]) == 37
    expected = [8, 32, 64, 128, 256]
    for stage, n in enumerate(BLOCKS[50]):
        expected += [8 * 2**stage] * (2 * n)
    assert _sizes(s) == sorted(expected)
    assert s.axes["conv1.weight"][0].group == s.axes["layer1.0.conv1.weight"][1].group
    assert s.axes["conv1.weight"][0].group != s.axes["layer1.0.bn3.weight"][0].group
    for stage, n in enumerate(BLOCKS[50], start=1):
        stream = {s.axes[f"layer{stage}.{b}.bn3.weight"][0].group for b in range(n)}
        stream.add(s.axes[f"layer{stage}.0.downsample.0.weight"][0].group)
        assert len(stream) == 1
    state = model.state_dict()
    permuted = weightspace.permute(s, state, weightspace.random_permutation(s, 3))
    with torch.no_grad():
        a = torch.func.functional_call(model, state, (x,))
        b = torch.func.functional_call(model, permuted, (x,))
    assert (a - b).abs().max().item() <= 1e-4 * max(1.0, a.abs().max().item())


def test_weight_matching_on_resnet18() -> None:
    a = randomize(ResNet(depth=18, width=4, num_classes=5, small_input=True, image_size=8), 0)
    b = randomize(ResNet(depth=18, width=4, num_classes=5, small_input=True, image_size=8), 1)
    s = weightspace.trace(a, example_input_for(a), check=False)
    sa, sb = a.state_dict(), b.state_dict()
    identity = merging.matching_objective(s, sa, sb, weightspace.identity_permutation(s))
    found = merging.weight_matching_result(s, sa, sb)
    perms, info = found.perms, found.info
    assert set(perms) == set(s.groups)
    assert info["objective"] >= identity - 1e-9 * abs(identity)
    # matching a network against its own permutation finds an alignment as good as the identity on itself
    shuffled = weightspace.permute(s, sa, weightspace.random_permutation(s, 7))
    back = merging.weight_matching(s, sa, shuffled)
    best = merging.matching_objective(s, sa, sa, weightspace.identity_permutation(s))
    assert merging.matching_objective(s, sa, shuffled, back) == pytest.approx(best, rel=1e-9)
