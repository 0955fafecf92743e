"""The weight-manifold hypernetwork: smoothing keeps the function, generation fits every width, training learns."""
from __future__ import annotations

import pytest
import torch

from graphs import trace
from merging import evaluate
from merging.hypernet import (HyperNet, fit_hypernet, magnitude_prune, path_length, resize_structure, sample_state,
                              smooth, unit_features)
from weightspace.models import CNN, MLP


def _mlp(h=12, in_features=6, seed=0):
    torch.manual_seed(seed)
    return MLP(in_features, (h, h), 3)


def _cnn(c=(4, 6), flatten=True, seed=0):
    torch.manual_seed(seed)
    return CNN(in_channels=2, channels=c, num_classes=3, image_size=6, flatten=flatten)


def _state(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("make", [_mlp, _cnn, lambda: _cnn(flatten=False)])
@pytest.mark.parametrize("method", ["2opt", "greedy", "christofides"])
def test_smoothing_preserves_function_and_shortens_paths(make, method):
    model = make()
    x = model.example_input(8, seed=1)
    structure = trace(model, x)
    state = _state(model)
    r = smooth(structure, state, method=method)
    before = torch.func.functional_call(model, state, (x,))
    after = torch.func.functional_call(model, r.state, (x,))
    assert torch.allclose(before, after, atol=1e-5)
    assert r.total_after < r.total_before
    for g, p in r.perms.items():
        assert sorted(p.tolist()) == list(range(structure.groups[g].size))
        # the reported length is the path length of the permuted network in its new order
        assert path_length(unit_features(structure, r.state, g)) == pytest.approx(r.after[g], rel=1e-6)


@pytest.mark.parametrize("make,kw,ratios", [
    (_mlp, "hidden", [0.25, 0.5, 0.75, 1.0]),
    (_cnn, "channels", [0.25, 0.5, 1.0]),
    (lambda: _cnn(flatten=False), "channels", [0.5, 1.0]),
])
def test_generated_states_fit_the_family_at_every_width(make, kw, ratios):
    model = make()
    structure = trace(model, model.example_input(2))
    hn = HyperNet.from_source(structure, _state(model), hidden=16, depth=1)
    full = list(getattr(model, kw))
    for r in ratios:
        widths = tuple(max(1, round(w * r)) for w in full)
        small = MLP(6, widths, 3) if kw == "hidden" else CNN(in_channels=2, channels=widths, num_classes=3,
                                                             image_size=6, flatten=model.flatten)
        state = sample_state(hn, small)
        small.load_state_dict(state)  # strict: every tensor present with the right shape
        assert all(torch.isfinite(v).all() for v in state.values())
        assert hn.sizes_of({k: v.shape for k, v in state.items()}) == {
            g: w for g, w in zip(structure.groups, widths)}
        # K noisy samples average to a state of the same shapes, different from the noiseless one
        avg = sample_state(hn, small, samples=3, noise=0.5)
        assert {k: v.shape for k, v in avg.items()} == {k: v.shape for k, v in state.items()}


def test_config_round_trip_gives_the_same_network():
    model = _cnn()
    structure = trace(model, model.example_input(2))
    hn = HyperNet.from_source(structure, _state(model), hidden=16, depth=1)
    again = HyperNet(hn.config)
    again.load_state_dict(hn.state_dict())
    small = _cnn(c=(2, 3))
    a, b = sample_state(hn, small), sample_state(again, small)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resize_structure_refuses_another_family():
    model = _mlp()
    structure = trace(model, model.example_input(2))
    other = MLP(7, (12, 12), 3)  # another input size: a fixed axis changed
    hn = HyperNet.from_source(structure, _state(model), hidden=8, depth=1)
    with pytest.raises(ValueError, match="fixed axis"):
        sample_state(hn, other)
    with pytest.raises(ValueError, match="no tensor"):
        resize_structure(structure, {"layers.0.weight": (4, 6)})


def test_magnitude_prune_keeps_the_largest_units():
    model = _mlp(h=8)
    structure = trace(model, model.example_input(2))
    state = _state(model)
    pruned = magnitude_prune(structure, state, {"layers.0": 3, "layers.1": 8})
    norms = (state["layers.0.weight"].pow(2).sum(1) + state["layers.0.bias"].pow(2)).sqrt()
    keep = torch.topk(norms, 3).indices.sort().values
    assert torch.equal(pruned["layers.0.weight"], state["layers.0.weight"][keep])
    assert torch.equal(pruned["layers.1.weight"], state["layers.1.weight"][:, keep])
    MLP(6, (3, 8), 3).load_state_dict(pruned)
    full = magnitude_prune(structure, state, {g: grp.size for g, grp in structure.groups.items()})
    assert all(torch.equal(full[k], state[k]) for k in state)
    with pytest.raises(ValueError, match="cannot keep"):
        magnitude_prune(structure, state, {"layers.0": 9})


def _teacher_data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 0.5).long()
    return [(x[i:i + 64], y[i:i + 64]) for i in range(0, n, 64)]


@pytest.mark.parametrize("residual", [False, True])
def test_a_tiny_training_run_lowers_the_loss(residual):
    data = _teacher_data()
    model = _mlp(h=16)
    structure = trace(model, model.example_input(2))
    state = _state(model)
    hn = HyperNet.from_source(structure, state, hidden=32, depth=1, residual=residual)
    build = lambda r: MLP(6, (max(1, round(16 * r)),) * 2, 3)  # noqa: E731
    half = build(0.5)
    before = evaluate(half, sample_state(hn, half), data).loss
    hist = fit_hypernet(hn, build, data, state, ratios=[0.5, 1.0], steps=80, warmup=0.25,
                        recon_weight=1.0, joint_lr_factor=0.3, progress=False)
    after = evaluate(half, sample_state(hn, half), data).loss
    assert after < before
    if residual:  # the full width is the source by construction: nothing to reconstruct, no warm-up
        assert all(h["recon"] == 0 and h["task"] == h["task"] for h in hist)
        assert hn.residual_gain.abs().sum() > 0
    else:
        assert hist[-1]["recon"] < hist[0]["recon"]
    assert all(h["ratio"] in (0.5, 1.0) for h in hist)


def test_fit_refuses_bad_arguments():
    model = _mlp()
    structure = trace(model, model.example_input(2))
    hn = HyperNet.from_source(structure, _state(model), hidden=8, depth=1)
    with pytest.raises(ValueError, match="exactly one"):
        fit_hypernet(hn, lambda r: model, _teacher_data(), _state(model), steps=1)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        fit_hypernet(hn, lambda r: model, _teacher_data(), _state(model), ratios=[1.5], steps=1)
    with pytest.raises(ValueError, match="unknown hyper-parameter"):
        HyperNet.from_source(structure, _state(model), width=3)


def test_low_bias_draws_follow_the_power_law():
    # the same uniform draws u give lo + (hi - lo) u with low_bias 1 and lo + (hi - lo) u^3 with 3
    model = _mlp()
    structure = trace(model, model.example_input(2))
    build = lambda r: model  # noqa: E731  (warm-up only: the build is never called)
    runs = []
    for p in (1.0, 3.0):
        hn = HyperNet.from_source(structure, _state(model), hidden=8, depth=1, residual=False)
        hist = fit_hypernet(hn, build, _teacher_data(), _state(model), ratio_range=(0.2, 1.0), steps=30,
                            warmup=1.0, low_bias=p, progress=False)
        runs.append(torch.tensor([h["ratio"] for h in hist]))
    u = (runs[0] - 0.2) / 0.8
    torch.testing.assert_close(runs[1], 0.2 + 0.8 * u ** 3, rtol=1e-5, atol=1e-6)
    assert runs[1].mean() < runs[0].mean()


def test_distillation_and_sandwich_steps_train():
    data = _teacher_data()
    model = _mlp(h=16)
    structure = trace(model, model.example_input(2))
    state = _state(model)
    hn = HyperNet.from_source(structure, state, hidden=32, depth=1)
    build = lambda r: MLP(6, (max(1, round(16 * r)),) * 2, 3)  # noqa: E731
    half = build(0.5)
    before = evaluate(half, sample_state(hn, half), data).loss
    hist = fit_hypernet(hn, build, data, state, ratio_range=(0.5, 1.0), steps=60, warmup=0.25, recon_weight=1.0,
                        joint_lr_factor=0.3, teacher=model, distill=1.0, sandwich=True, low_bias=2.0, trunk_lr_factor=0.5,
                        progress=False)
    assert evaluate(half, sample_state(hn, half), data).loss < before
    assert all(h["task"] == h["task"] for h in hist[15:])  # the joint phase has a (finite) task loss
    with pytest.raises(ValueError, match="low_bias"):
        fit_hypernet(hn, build, data, state, ratio_range=(0.5, 1.0), steps=1, low_bias=0.0, progress=False)
    with pytest.raises(ValueError, match="distill"):
        fit_hypernet(hn, build, data, state, ratio_range=(0.5, 1.0), steps=1, distill=-1.0, progress=False)


def test_antialias_drops_the_finest_grid_level_below_its_resolution():
    model = _mlp(h=16)
    structure = trace(model, model.example_input(2))
    hn = HyperNet.from_source(structure, _state(model), hidden=16, depth=1, residual=False)
    plain = HyperNet({**hn.config, "antialias": False})
    plain.load_state_dict(hn.state_dict())
    full = {k: v.shape for k, v in model.state_dict().items()}
    half = {k: v.shape for k, v in MLP(6, (8, 8), 3).state_dict().items()}
    with torch.no_grad():
        a, b = hn.generate(full), plain.generate(full)
        for k in a:  # at full width every level resolves: the same function as the plain grid
            torch.testing.assert_close(a[k], b[k])
        before = hn.generate(half)
        for layout in hn.grids.values():  # level 0 has one cell per unit of the full width
            off, res = layout[0]
            hn.grid[off:off + res].add_(torch.randn(res, hn.grid_dim))
        after, moved = hn.generate(half), hn.generate(full)
    for k in before:  # 8 of 16 units cannot resolve level 0, so its cells do not matter
        torch.testing.assert_close(before[k], after[k])
    assert any(not torch.allclose(moved[k], a[k]) for k in a)
    assert not HyperNet({k: v for k, v in hn.config.items() if k != "antialias"}).config["antialias"]


def test_fixed_axis_features_touch_only_layers_with_a_fixed_axis():
    model = _mlp(h=10)
    structure = trace(model, model.example_input(2))
    hn = HyperNet.from_source(structure, _state(model), hidden=16, depth=1, residual=False)
    shapes = {k: v.shape for k, v in MLP(6, (7, 7), 3).state_dict().items()}
    with torch.no_grad():
        before = hn.generate(shapes)
        hn.fixed_features.weight[1:].add_(torch.randn_like(hn.fixed_features.weight[1:]))  # row 0: hidden axes
        after = hn.generate(shapes)
    # layers.1 maps hidden to hidden: no fixed axis, no change; the input and output layers move
    torch.testing.assert_close(before["layers.1.weight"], after["layers.1.weight"])
    assert not torch.allclose(before["layers.0.weight"], after["layers.0.weight"])
    assert not torch.allclose(before["layers.2.weight"], after["layers.2.weight"])
    old = {k: v for k, v in hn.config.items() if k != "fixed_features"}
    assert HyperNet(old).fixed_features is None  # files written before the option keep their layout


# ---------------------------------------------------------------------- residual design


def _trained_residual(model, structure, build, ratios, base, steps=15):
    """A residual hypernetwork after a few steps, so that its correction is not zero."""
    hn = HyperNet.from_source(structure, _state(model), hidden=16, depth=1, base=base)
    fit_hypernet(hn, build, _teacher_data() if isinstance(model, MLP) else _image_data(), _state(model),
                 ratios=ratios, steps=steps, lr=0.05, joint_lr_factor=1.0, progress=False)
    return hn


def _image_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, 6, 6, generator=g)
    return [(x[i:i + 32], (x[i:i + 32].mean((1, 2, 3)) > 0).long()) for i in range(0, n, 32)]


@pytest.mark.parametrize("base", ["cluster", "merge", "area"])
def test_residual_full_width_is_the_source_exactly(base):
    for make, build in ((lambda: _mlp(h=8), lambda r: MLP(6, (max(1, round(8 * r)),) * 2, 3)),
                        (_cnn, lambda r: _cnn(c=(max(1, round(4 * r)), max(1, round(6 * r)))))):
        model = make()
        structure = trace(model, model.example_input(2))
        hn = HyperNet.from_source(structure, _state(model), hidden=16, depth=1, base=base)
        hn = _trained_residual(model, structure, build, [0.5, 0.75], base) if base != "area" else hn
        assert hn.residual_gain.abs().sum() > 0 or base == "area"
        state = sample_state(hn, model)
        assert all(torch.equal(state[k], model.state_dict()[k]) for k in state)
        # noisy samples too: the correction is switched off at full width
        noisy = sample_state(hn, model, samples=3, noise=0.5)
        assert all(torch.equal(noisy[k], model.state_dict()[k]) for k in state)
        # a saved and reloaded hypernetwork holds the same source
        again = HyperNet(hn.config)
        again.load_state_dict(hn.state_dict())
        half = build(0.5)
        a, b = sample_state(hn, half), sample_state(again, half)
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("base", ["cluster", "merge"])
def test_merge_base_merges_duplicate_units_without_changing_the_function(base):
    # every hidden unit of layers.0 has an exact twin next to it: merging the twins is lossless
    model = _mlp(h=8)
    with torch.no_grad():
        w, b = model.layers[0].weight, model.layers[0].bias
        w[1::2], b[1::2] = w[0::2], b[0::2]
    structure = trace(model, model.example_input(2))
    hn = HyperNet.from_source(structure, _state(model), hidden=8, depth=1, base=base)
    x = torch.randn(16, 6)
    small = MLP(6, (4, 8), 3)
    small.load_state_dict(sample_state(hn, small))
    torch.testing.assert_close(small(x), model(x), rtol=1e-4, atol=1e-5)
    # partitions are nested, one per width, the identity at full width
    parts = [[c[0] for c in hn.clusters("layers.0", n)] if n else [] for n in range(9)]
    assert parts[8] == list(range(8)) and parts[4] == [0, 2, 4, 6]
    for n in range(1, 8):
        assert len(parts[n]) == n
        coarse, fine = hn.clusters("layers.0", n), hn.clusters("layers.0", n + 1)
        assert all(any(set(f) <= set(c) for c in coarse) for f in fine)  # each cluster of n + 1 lies in one of n
        if base == "merge":  # runs of adjacent units
            assert all(c == list(range(c[0], c[-1] + 1)) for c in coarse)
    # merged units sit at the centre of their run of source units
    table = hn.table({k: v.shape for k, v in small.state_dict().items()})
    o0, n, _, _ = table.spans[0]
    torch.testing.assert_close(table.coords[o0:o0 + n, 1], torch.tensor([1, 3, 5, 7]) / 8.0)


@pytest.mark.parametrize("base", ["cluster", "merge", "area"])
def test_residual_wider_than_the_source_splits_units(base):
    # twice the width: every unit is split in two copies that compute the same function
    model = _mlp(h=5)
    structure = trace(model, model.example_input(2))
    hn = HyperNet.from_source(structure, _state(model), hidden=8, depth=1, base=base)
    wide = MLP(6, (10, 10), 3)
    wide.load_state_dict(sample_state(hn, wide))
    x = torch.randn(16, 6)
    torch.testing.assert_close(wide(x), model(x), rtol=1e-4, atol=1e-5)


def test_residual_options_are_validated():
    model = _mlp()
    structure = trace(model, model.example_input(2))
    with pytest.raises(ValueError, match="base must be one of"):
        HyperNet.from_source(structure, _state(model), base="nearest")
    plain = HyperNet.from_source(structure, _state(model), hidden=8, depth=1, residual=False)
    with pytest.raises(ValueError, match="not residual"):
        plain.source_state()
    old = {k: v for k, v in plain.config.items() if k not in ("residual", "base")}
    assert not HyperNet(old).residual  # files written before the option are not residual


def test_cluster_base_merges_twins_that_are_not_neighbours():
    from merging.hypernet._merge import cluster_partitions, merge_partitions

    g = torch.Generator().manual_seed(0)
    inc, out = torch.randn(6, 5, generator=g), torch.randn(6, 4, generator=g)
    inc[4], out[4] = inc[1], out[1]  # units 1 and 4 are twins, three apart
    assert [1, 4] in cluster_partitions(inc, out)[5]  # the first merge joins them
    assert len(merge_partitions(inc, out)[5]) == 5  # runs of adjacent units cannot
