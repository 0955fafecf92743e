"""MergeMany: permuted copies are recovered exactly; trained models merge better than averaging."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from graphs import permute, random_permutation, trace
from merging import evaluate
from merging.many import mean_state, merge_many, merge_many_result, repair_many


def _mlp(seed, width=16):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 4))


@pytest.mark.parametrize("n", [2, 4])
def test_permuted_copies_are_recovered_exactly(n):
    model = _mlp(0)
    structure = trace(model, torch.randn(2, 8))
    original = {k: v.clone() for k, v in model.state_dict().items()}
    copies = [original] + [permute(structure, original, random_permutation(structure, seed=s)) for s in range(1, n)]
    found = merge_many_result(structure, copies, seed=0)
    merged, perms = found.merged, found.perms
    assert found.converged and len(perms) == n
    assert all(torch.equal(p, torch.arange(len(p))) for p in perms[0].values())
    for k in original:
        torch.testing.assert_close(merged[k], original[k], rtol=0, atol=1e-6)
    for s, p in zip(copies, perms):
        aligned = permute(structure, s, p)
        assert all(torch.equal(aligned[k], original[k]) for k in original)


def test_rejects_bad_input():
    model = _mlp(0)
    structure = trace(model, torch.randn(2, 8))
    s = model.state_dict()
    with pytest.raises(ValueError, match="at least two"):
        merge_many(structure, [s])
    with pytest.raises(ValueError, match="shape"):
        merge_many(structure, [s, {**s, "0.bias": torch.zeros(3)}])
    with pytest.raises(ValueError, match="max_iter"):
        merge_many(structure, [s, s], max_iter=0)


def _task(seed=0, n=1024):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    w = torch.randn(8, 4, generator=torch.Generator().manual_seed(123))
    y = (torch.tanh(x @ w) + 0.1 * x[:, :4]).argmax(1)
    return [(x[i:i + 128], y[i:i + 128]) for i in range(0, n, 128)]


def _train(seed, data, width=16, epochs=40):
    model = _mlp(seed, width)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(epochs):
        for x, y in data:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model


def test_trained_models_merge_better_than_naive_averaging():
    torch.set_num_threads(1)
    data = _task()
    models = [_train(s, data) for s in range(4)]
    states = [m.state_dict() for m in models]
    structure = trace(models[0], torch.randn(2, 8))
    merged, perms = merge_many(structure, states, seed=0)
    naive = mean_state(states)
    loss_merged = evaluate(models[0], merged, data).loss
    loss_naive = evaluate(models[0], naive, data).loss
    assert loss_merged < loss_naive
    aligned = [permute(structure, s, p) for s, p in zip(states, perms)]
    repaired = repair_many(models[0], aligned, merged, data)
    assert evaluate(models[0], repaired, data).loss < loss_naive
