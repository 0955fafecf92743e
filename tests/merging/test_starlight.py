"""Starlight: the update it takes, exact resumption, and the star-model evaluation (barriers,
star-domain prediction, calibration)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from nets import teacher_data, train_teacher_mlp
from torch import nn
from torch.func import functional_call

import merging
from graphs import permute, random_permutation, trace
from merging import (
    Starlight,
    TDist,
    aligned_barriers,
    ensemble_proba,
    expected_calibration_error,
    pairwise_barriers,
    parse_t_dist,
    predict_proba,
    prediction_metrics,
    star_domain_proba,
)


def _mlp(seed, width=8, dropout=0.0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 3))


class Shuffled:
    """Batches reshuffled per epoch from seed + epoch; ``stop_after`` batches in all raise (a kill)."""

    def __init__(self, x, y, batch_size=16, stop_after=None):
        self.x, self.y, self.batch_size, self.epoch, self.stop_after, self.served = x, y, batch_size, 0, stop_after, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return math.ceil(len(self.x) / self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(100 + self.epoch))
        for i in range(len(self)):
            if self.stop_after is not None and self.served >= self.stop_after:
                raise KeyboardInterrupt("killed")
            self.served += 1
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.x[idx], self.y[idx]


def _toy(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    return x, (x[:, :3] * torch.tensor([1.0, -1.0, 0.5])).argmax(1)


def _setup(n_sources=2, dropout=0.0):
    model = _mlp(0, dropout=dropout)
    s = trace(model, torch.randn(2, 5))
    sources = [_mlp(i, dropout=dropout).state_dict() for i in range(1, n_sources + 1)]
    return model, s, sources


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_each_step_is_the_stated_update(schedule):
    """star <- star - lr_k (1 - t) grad L((1-t) star + t source), replayed from the draws."""
    model, s, sources = _setup(3)
    x, y = _toy(48)
    data = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 48, 16)]
    init = {k: v.clone() for k, v in model.state_dict().items()}
    lr = 0.2
    sl = Starlight(model, s, epochs=1, lr=lr, momentum=0.0, schedule=schedule, init=init, seed=5).fit(sources, data)
    assert len(sl.samples_) == 3 and len({k for k, _ in sl.samples_}) >= 1
    aligned = sl.aligned_sources(sources)
    star = {k: v.clone() for k, v in init.items()}
    for step, ((k, t), (xb, yb)) in enumerate(zip(sl.samples_, data)):
        assert 0.0 <= t <= 1.0
        theta = {n: ((1 - t) * star[n] + t * aligned[k][n]).requires_grad_(True) for n in star}
        loss = F.cross_entropy(functional_call(model, theta, (xb,)), yb)
        grads = torch.autograd.grad(loss, list(theta.values()))
        lr_k = lr if schedule == "constant" else lr * 0.5 * (1 + math.cos(math.pi * step / 3))
        star = {n: star[n] - lr_k * (1 - t) * g for n, g in zip(theta, grads)}
    for n in star:
        torch.testing.assert_close(sl.star_[n], star[n], rtol=1e-5, atol=1e-6)
    # the sources were aligned to the star by weight matching (the star began as `init`)
    for src, p in zip(sources, sl.perms_):
        assert p == {} or set(p) == set(s.groups)
    assert sl.n_epochs_ == 1 and len(sl.history_) == 1


def test_t_distributions():
    g = torch.Generator().manual_seed(0)
    assert parse_t_dist("const:0.3").sample(g) == 0.3
    u = [parse_t_dist("uniform").sample(g) for _ in range(4000)]
    assert min(u) >= 0 and max(u) <= 1 and abs(sum(u) / len(u) - 0.5) < 0.02
    b = [parse_t_dist("beta:2,6").sample(g) for _ in range(4000)]
    assert abs(sum(b) / len(b) - 0.25) < 0.01  # mean a / (a + b)
    var = sum((v - 0.25) ** 2 for v in b) / len(b)
    assert abs(var - 2 * 6 / (8 ** 2 * 9)) < 0.003  # ab / ((a+b)^2 (a+b+1))
    assert str(parse_t_dist("beta:2,6")) == "beta:2,6" and parse_t_dist(TDist("uniform")) == TDist("uniform")
    for bad in ("normal", "beta:2", "beta:0,1", "const:1.5", "const:x", "uniform:1", 0.5):
        with pytest.raises(ValueError, match="uniform, beta:A,B"):
            parse_t_dist(bad)


def _run(tmp_path, name, *, epochs, data, resume=False, schedule="cosine", **kw):
    model, s, sources = _setup(3, dropout=0.2)
    sl = Starlight(model, s, epochs=epochs, lr=0.1, schedule=schedule, seed=1,
                   checkpoint=tmp_path / name, **kw)
    return sl.fit(sources, data, resume=resume)


def test_resume_after_a_kill_gives_the_uninterrupted_result(tmp_path):
    x, y = _toy(64)
    full = _run(tmp_path, "full.pt", epochs=3, data=Shuffled(x, y))
    # killed during epoch 3 (after 2 epochs of 4 batches and one more batch)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "cut.pt", epochs=3, data=Shuffled(x, y, stop_after=9))
    saved = torch.load(tmp_path / "cut.pt", weights_only=True)
    assert saved["epoch"] == 2 and saved["format"] == merging.starlight.STATE_FORMAT
    resumed = _run(tmp_path, "cut.pt", epochs=3, data=Shuffled(x, y), resume=True)
    for k in full.star_:
        assert torch.equal(full.star_[k], resumed.star_[k]), k
    assert full.history_ == resumed.history_ and full.samples_ == resumed.samples_
    assert all(torch.equal(a[g], b[g]) for a, b in zip(full.perms_, resumed.perms_) for g in a)


def test_resume_can_extend_a_constant_schedule(tmp_path):
    x, y = _toy(64)
    full = _run(tmp_path, "full.pt", epochs=3, data=Shuffled(x, y), schedule="constant", realign=False)
    _run(tmp_path, "part.pt", epochs=1, data=Shuffled(x, y), schedule="constant", realign=False)
    more = _run(tmp_path, "part.pt", epochs=3, data=Shuffled(x, y), schedule="constant", realign=False, resume=True)
    assert all(torch.equal(full.star_[k], more.star_[k]) for k in full.star_)


def test_resume_refuses_other_settings_or_sources(tmp_path):
    x, y = _toy(32)
    model, s, sources = _setup(2)
    Starlight(model, s, epochs=1, checkpoint=tmp_path / "st.pt").fit(sources, Shuffled(x, y))
    with pytest.raises(ValueError, match="lr was 0.05, now 0.1"):
        Starlight(model, s, epochs=1, lr=0.1, checkpoint=tmp_path / "st.pt").fit(sources, Shuffled(x, y), resume=True)
    with pytest.raises(ValueError, match="source models differ"):
        Starlight(model, s, epochs=1, checkpoint=tmp_path / "st.pt").fit(sources[::-1], Shuffled(x, y), resume=True)
    with pytest.raises(ValueError, match="epochs was 1, now 2.*cosine"):
        Starlight(model, s, epochs=2, checkpoint=tmp_path / "st.pt").fit(sources, Shuffled(x, y), resume=True)
    done = Starlight(model, s, epochs=1, checkpoint=tmp_path / "st.pt").fit(sources, Shuffled(x, y), resume=True)
    assert done.n_epochs_ == 1
    with pytest.raises(ValueError, match="nothing to resume"):
        Starlight(model, s, epochs=2, checkpoint=tmp_path / "none.pt").fit(sources, Shuffled(x, y), resume=True)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        Starlight(model, s, epochs=2, checkpoint=tmp_path / "junk.pt").fit(sources, Shuffled(x, y), resume=True)


def test_star_lowers_the_loss_on_its_segments():
    x, y = teacher_data()
    data = Shuffled(x, y, batch_size=128)
    models = [train_teacher_mlp(seed, x, y, steps=80) for seed in range(3)]
    states = [m.state_dict() for m in models]
    s = trace(models[0], x[:2])
    sl = Starlight(models[0], s, epochs=6, lr=0.1, seed=0).fit(states, data)
    fixed = [(x[i:i + 512], y[i:i + 512]) for i in range(0, len(x), 512)]

    def segment_loss(star, sources):
        return sum(merging.evaluate(models[0], merging.interpolate(star, src, t), fixed).loss
                   for src in sources for t in (0.25, 0.5, 0.75))

    before = segment_loss(states[0], sl.aligned_sources(states))
    after = segment_loss(sl.star_, sl.aligned_sources(states))
    assert after < 0.97 * before
    assert len(sl.history_) == 6 and all(math.isfinite(h) for h in sl.history_)


def test_batchnorm_networks_train_and_get_fresh_statistics():
    def cnn(seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                             nn.Linear(4 * 4 * 4, 3))

    model = cnn(0)
    s = trace(model, torch.randn(2, 1, 4, 4))
    sources = []
    for i in range(2):
        m = cnn(i + 1).train()
        with torch.no_grad():
            m(torch.randn(32, 1, 4, 4) * 3 + 1)  # give them non-default statistics
        sources.append(m.state_dict())
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 4, 4, generator=g)
    y = torch.randint(0, 3, (64,), generator=g)
    data = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    sl = Starlight(model, s, epochs=1, seed=0).fit(sources, data)
    # the star's running statistics are those of its own activations on the data
    expected = merging.reset_batchnorm(model, sl.star_, data)
    for k in ("1.running_mean", "1.running_var"):
        torch.testing.assert_close(sl.star_[k], expected[k])
    assert not torch.allclose(sl.star_["1.running_mean"], sources[0]["1.running_mean"])


def test_bad_input():
    model, s, sources = _setup(2)
    data = [_toy(16)]
    for kw, msg in (({"epochs": 0}, "epochs"), ({"lr": -1.0}, "lr"), ({"momentum": 1.0}, "momentum"),
                    ({"init": "random"}, "init"), ({"schedule": "step"}, "schedule"),
                    ({"t_dist": "gauss"}, "t_dist"), ({"weight_decay": -1.0}, "weight_decay")):
        with pytest.raises(ValueError, match=msg):
            Starlight(model, s, **kw).fit(sources, data)
    with pytest.raises(ValueError, match="at least one source"):
        Starlight(model, s).fit([], data)
    with pytest.raises(ValueError, match=r"shape .*source 1"):
        Starlight(model, s).fit([sources[0], {**sources[1], "0.bias": torch.zeros(2)}], data)
    with pytest.raises(TypeError, match="one-shot"):
        Starlight(model, s).fit(sources, iter(data))
    with pytest.raises(ValueError, match="len"):
        Starlight(model, s, schedule="cosine").fit(sources, _NoLen(data))
    with pytest.raises(ValueError, match="resume"):
        Starlight(model, s).fit(sources, data, resume=True)


class _NoLen:
    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


# ----------------------------------------------------------------------------- evaluation
def test_ece_against_a_hand_computed_value():
    probs = torch.tensor([[0.95, 0.05, 0.0, 0.0],   # confident, right
                          [0.95, 0.05, 0.0, 0.0],   # confident, wrong
                          [0.10, 0.62, 0.28, 0.0],  # right
                          [0.25, 0.25, 0.20, 0.30]], dtype=torch.float64)  # unsure, wrong
    labels = torch.tensor([0, 1, 1, 0])
    # 15 bins: {0.95, 0.95} in (14/15, 1], 0.62 in (9/15, 10/15], 0.30 in (4/15, 5/15]
    expected = 2 / 4 * abs(0.5 - 0.95) + 1 / 4 * abs(1 - 0.62) + 1 / 4 * abs(0 - 0.30)
    assert expected == pytest.approx(0.395)
    assert expected_calibration_error(probs, labels) == pytest.approx(expected, abs=1e-12)
    # one bin: |accuracy - mean confidence|
    assert expected_calibration_error(probs, labels, n_bins=1) == pytest.approx(abs(0.5 - 2.82 / 4), abs=1e-12)
    m = prediction_metrics(probs, labels)
    assert m.accuracy == 0.5 and m.n == 4
    assert m.nll == pytest.approx(-(math.log(0.95) + math.log(0.05) + math.log(0.62) + math.log(0.25)) / 4)
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(probs, labels, n_bins=0)
    with pytest.raises(ValueError, match="labels"):
        expected_calibration_error(probs, labels[:3])


def test_ece_matches_the_definition_on_random_predictions():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(500, 6, generator=g), 1)
    labels = torch.randint(0, 6, (500,), generator=g)
    conf, pred = probs.max(1)
    ece = 0.0
    for b in range(15):
        lo, hi = b / 15, (b + 1) / 15
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            ece += mask.double().mean() * abs((pred[mask] == labels[mask]).double().mean() - conf[mask].double().mean())
    assert expected_calibration_error(probs, labels) == pytest.approx(float(ece), abs=1e-9)


def test_star_domain_prediction_and_ensembles():
    model, _, sources = _setup(3)
    x, y = _toy(40)
    data = [(x[:20], y[:20]), (x[20:], y[20:])]
    star = model.state_dict()
    p_star, labels = predict_proba(model, star, data)
    assert p_star.shape == (40, 3) and torch.equal(labels, y)
    torch.testing.assert_close(p_star.sum(1), torch.ones(40, dtype=p_star.dtype))
    # t = 1 everywhere: the models sampled are the sources, so it is their ensemble
    p_one, _ = star_domain_proba(model, star, sources, data, t_dist="const:1", samples_per_source=2)
    p_ens, _ = ensemble_proba(model, sources, data)
    torch.testing.assert_close(p_one, p_ens)
    manual = sum(predict_proba(model, src, data)[0] for src in sources) / 3
    torch.testing.assert_close(p_ens, manual)
    # t = 0: the star alone
    p_zero, _ = star_domain_proba(model, star, sources, data, t_dist="const:0")
    torch.testing.assert_close(p_zero, p_star)
    with pytest.raises(ValueError, match="samples_per_source"):
        star_domain_proba(model, star, sources, data, samples_per_source=0)


def test_aligned_barriers_see_through_permutations():
    model, s, sources = _setup(3)
    x, y = _toy(40)
    data = [(x, y)]
    ref = sources[0]
    copy = permute(s, ref, random_permutation(s, seed=3))
    r = aligned_barriers(model, s, ref, [copy], data, steps=5)[0]
    assert abs(r.loss_barrier) < 1e-5
    naive = aligned_barriers(model, None, ref, [copy], data, steps=5)[0]
    assert naive.loss_barrier > 1e-3
    pairs = pairwise_barriers(model, s, sources, data, steps=3)
    assert [(i, j) for i, j, _ in pairs] == [(0, 1), (0, 2), (1, 2)]
    assert merging.mean_barrier(pairs) == pytest.approx(sum(p[2].loss_barrier for p in pairs) / 3)
    with pytest.raises(ValueError, match="at least two"):
        pairwise_barriers(model, s, sources[:1], data)
