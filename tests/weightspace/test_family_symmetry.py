"""Every built-in family: a random permutation from the traced structure keeps the function."""
from __future__ import annotations


import pytest
import torch
from nets import randomize
from hypothesis import given, settings
from hypothesis import strategies as st

import weightspace
from weightspace.models import example_input_for, get_model

FAMILIES = {
    "mlp": [{"in_features": 12, "hidden": [9, 7], "out_features": 3}, {"in_features": 5, "hidden": [16], "out_features": 2, "activation": "tanh"}],
    "cnn": [{"in_channels": 2, "channels": [4, 6], "num_classes": 3, "image_size": 12},
            {"in_channels": 1, "channels": [5, 3], "num_classes": 4, "image_size": 10, "flatten": True},
            {"in_channels": 1, "channels": [4, 5, 3], "num_classes": 4, "image_size": 12, "stride": 2,
             "padding": "tf_same", "pool": None}],
    "vgg": [{"in_channels": 3, "num_classes": 5, "image_size": 16, "width": 0.25}],
    "resnet20": [{"width": 0.25, "num_classes": 4, "image_size": 8}],
    "siren": [{"in_features": 2, "hidden": [16, 16], "out_features": 3}],
    "vit": [{"image_size": 8, "patch": 4, "dim": 16, "depth": 2, "heads": 2, "num_classes": 3},
            {"image_size": 8, "patch": 4, "dim": 16, "depth": 1, "heads": 4, "num_classes": 3, "attention": "manual"}],
}


CASES = [(name, i) for name, kws in FAMILIES.items() for i in range(len(kws))]


@pytest.mark.parametrize("family,i", CASES)
@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_family_permutation_preserves_function(family, i, seed):
    model = randomize(get_model(family, **FAMILIES[family][i]), seed)
    x = example_input_for(model, batch_size=3, seed=seed)
    s = weightspace.trace(model, x)
    assert s.groups
    state = model.state_dict()
    perms = weightspace.random_permutation(s, seed)
    permuted = weightspace.permute(s, state, perms)
    with torch.no_grad():
        a = torch.func.functional_call(model, state, (x,))
        b = torch.func.functional_call(model, permuted, (x,))
    assert (a - b).abs().max().item() <= 1e-5
    back = weightspace.permute(s, permuted, weightspace.inverse_permutation(perms))
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_mlp_has_one_group_per_hidden_layer():
    model = get_model("mlp", in_features=10, hidden=[8, 8, 8], out_features=2)
    s = weightspace.trace(model, example_input_for(model))
    assert sorted(g.size for g in s.groups.values()) == [8, 8, 8]


def test_resnet20_residual_stream_per_stage():
    model = get_model("resnet20", width=0.5)
    s = weightspace.trace(model, example_input_for(model))
    for stage in (1, 2, 3):
        streams = {s.axes[f"layer{stage}.{b}.bn2.weight"][0].group for b in range(3)}
        assert len(streams) == 1
    # 3 streams + 9 inner groups
    assert len(s.groups) == 12
    # BatchNorm running statistics are permuted with their channels
    assert s.axes["layer1.0.bn1.running_var"][0].group == s.axes["layer1.0.conv1.weight"][0].group


def test_vit_heads_are_blocks():
    model = get_model("vit", image_size=8, patch=4, dim=16, depth=1, heads=4, num_classes=3)
    s = weightspace.trace(model, example_input_for(model))
    heads = [g for g in s.groups if g.endswith(".heads")]
    assert heads and s.groups[heads[0]].size == 4


def test_permute_composition_and_identity():
    model = get_model("mlp", in_features=6, hidden=[5, 4], out_features=2)
    s = weightspace.trace(model, example_input_for(model))
    state = model.state_dict()
    p, q = weightspace.random_permutation(s, 1), weightspace.random_permutation(s, 2)
    two_steps = weightspace.permute(s, weightspace.permute(s, state, p), q)
    one_step = weightspace.permute(s, state, weightspace.compose_permutations(p, q))
    assert all(torch.equal(two_steps[k], one_step[k]) for k in state)
    ident = weightspace.permute(s, state, weightspace.identity_permutation(s))
    assert all(torch.equal(ident[k], state[k]) for k in state)
    with pytest.raises(KeyError, match="unknown group"):
        weightspace.permute(s, state, {"nope": torch.arange(3)})
    with pytest.raises(ValueError, match="expected"):
        weightspace.permute(s, state, {next(iter(s.groups)): torch.arange(99)})
