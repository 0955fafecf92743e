"""C2M3: planted permutations recovered exactly, cycle consistency, the objective's definition."""
from __future__ import annotations

import itertools

import pytest
import torch
from nets import MHAEncoder, randomize, teacher_data, train_teacher_mlp
from torch import nn

import merging
from graphs import (
    compose_permutations,
    identity_permutation,
    inverse_permutation,
    permute,
    random_permutation,
    trace,
)
from merging import (
    c2m3_matching,
    c2m3_matching_result,
    c2m3_merge,
    evaluate,
    pairwise_permutation,
    soft_permute,
)
from merging.many import mean_state


NETS = {
    "mlp": (lambda: nn.Sequential(nn.Linear(8, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 4)),
            (4, 8)),
    "cnn_bn_flatten": (lambda: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                             nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                                             nn.Linear(8 * 5 * 5, 3)), (2, 3, 5, 5)),
    "attention": (lambda: MHAEncoder(d=8, h=2), (2, 5, 6)),
}


def _net(name, seed=0):
    make, shape = NETS[name]
    torch.manual_seed(seed)
    model = randomize(make(), seed)
    return model, trace(model, torch.randn(*shape))


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("n", [2, 5])
def test_planted_permutations_are_recovered_exactly(net, n):
    model, s = _net(net)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    planted = [random_permutation(s, seed=10 * n + i) for i in range(n)]
    copies = [permute(s, original, p) for p in planted]
    found = c2m3_matching_result(s, copies)
    perms = found.perms
    assert found.converged
    aligned = [permute(s, c, p) for c, p in zip(copies, perms)]
    assert all(_same(aligned[0], a) for a in aligned[1:])
    # model 0's basis: perms[i] undoes planted[i] and applies planted[0]
    for p, q in zip(perms, planted):
        expected = compose_permutations(inverse_permutation(q), planted[0])
        assert all(torch.equal(p[g], expected[g]) for g in s.groups)
    # and every pairwise map is the planted one
    for i, j in itertools.permutations(range(n), 2):
        assert _same(permute(s, copies[i], pairwise_permutation(perms, i, j)), copies[j])
    merged, _ = c2m3_merge(s, copies)  # in model 0's basis: copy 0 itself
    assert all(torch.allclose(merged[k], copies[0][k], rtol=0, atol=1e-6) for k in original
               if original[k].is_floating_point())


def _independent(n=4, width=12):
    """Independently initialised MLPs: nothing to recover, so only consistency can be asked for."""
    models = [randomize(nn.Sequential(nn.Linear(6, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                      nn.Linear(width, 3)), seed) for seed in range(n)]
    s = trace(models[0], torch.randn(2, 6))
    return s, [m.state_dict() for m in models]


def test_pairwise_maps_are_cycle_consistent():
    s, states = _independent()
    perms = c2m3_matching(s, states)
    n = len(states)
    ident = identity_permutation(s)
    assert all(torch.equal(perms[0][g], ident[g]) for g in s.groups)
    for i, j, k in itertools.product(range(n), repeat=3):
        via_j = compose_permutations(pairwise_permutation(perms, i, j), pairwise_permutation(perms, j, k))
        direct = pairwise_permutation(perms, i, k)
        assert all(torch.equal(via_j[g], direct[g]) for g in s.groups)
    for i in range(n):
        assert all(torch.equal(pairwise_permutation(perms, i, i)[g], ident[g]) for g in s.groups)


def test_pairwise_weight_matching_is_not_cycle_consistent_on_the_same_models():
    """The property C2M3 guarantees is not free: independent pairwise matchings break it here."""
    s, states = _independent()
    p01 = merging.weight_matching(s, states[1], states[0])  # model 0 -> model 1's basis
    p12 = merging.weight_matching(s, states[2], states[1])
    p02 = merging.weight_matching(s, states[2], states[0])
    via_1 = compose_permutations(p01, p12)
    assert any(not torch.equal(via_1[g], p02[g]) for g in s.groups)


def test_soft_permute_of_permutation_matrices_is_permute():
    for net in NETS:
        model, s = _net(net, seed=3)
        state = model.state_dict()
        p = random_permutation(s, seed=4)
        mats = {g: torch.eye(len(q))[q] for g, q in p.items()}
        soft, hard = soft_permute(s, state, mats), permute(s, state, p)
        assert all(torch.equal(soft[k], hard[k]) for k in hard), net
    # a doubly stochastic matrix mixes units: the barycentre averages every unit of the group
    model, s = _net("mlp")
    state = model.state_dict()
    g = next(g for g, grp in s.groups.items() if grp.size == 24 and ("0.weight", 0) in grp.members)
    out = soft_permute(s, {"0.bias": state["0.bias"]}, {g: torch.full((24, 24), 1 / 24)})
    torch.testing.assert_close(out["0.bias"], state["0.bias"].mean().expand(24))


def test_objective_is_the_sum_of_pairwise_similarities():
    s, states = _independent(n=3)
    found = c2m3_matching_result(s, states)
    perms, info = found.perms, found.info
    aligned = [permute(s, st, p) for st, p in zip(states, perms)]
    ident = identity_permutation(s)
    expected = sum(merging.matching_objective(s, aligned[i], aligned[j], ident)
                   for i, j in itertools.combinations(range(3), 2))
    assert info["objective"] == pytest.approx(expected, rel=1e-9)
    naive = sum(merging.matching_objective(s, states[i], states[j], ident)
                for i, j in itertools.combinations(range(3), 2))
    assert info["objective"] > naive
    # Frank-Wolfe with an exact line search only climbs
    h = info["history"]
    assert len(h) == info["iterations"] or len(h) == info["iterations"] + 1
    assert all(b > a for a, b in zip(h, h[1:])) and h[-1] == info["relaxed_objective"]


def test_trained_models_merge_better_than_naive_averaging():
    x, y = teacher_data()
    data = [(x[i:i + 256], y[i:i + 256]) for i in range(0, len(x), 256)]
    models = [train_teacher_mlp(seed, x, y, steps=80) for seed in range(4)]
    states = [m.state_dict() for m in models]
    s = trace(models[0], x[:2])
    merged, _ = c2m3_merge(s, states)
    assert evaluate(models[0], merged, data).loss < evaluate(models[0], mean_state(states), data).loss


def test_rejects_bad_input():
    model, s = _net("mlp")
    st = model.state_dict()
    with pytest.raises(ValueError, match="at least two"):
        c2m3_matching(s, [st])
    with pytest.raises(ValueError, match="shape"):
        c2m3_matching(s, [st, {**st, "0.bias": torch.zeros(3)}])
    with pytest.raises(ValueError, match="max_iter"):
        c2m3_matching(s, [st, st], max_iter=-1)
    with pytest.raises(ValueError, match="init"):
        c2m3_matching(s, [st, st], init="random")
    with pytest.raises(ValueError, match="tol"):
        c2m3_matching(s, [st, st], tol=float("nan"))
