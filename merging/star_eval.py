"""Evaluating a star model: aligned barriers, prediction over the star domain, calibration."""
from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from graphs import Structure, permute
from merging._eval import (
    batchnorm_layers,
    call,
    check_reiterable,
    eval_mode,
    iter_batches,
    prepare_state,
    resolve_device,
)
from merging.barrier import BarrierResult, barrier
from merging.interpolate import interpolate
from merging.matching.weight import weight_matching
from merging.repair import reset_batchnorm
from merging.starlight import TDist, parse_t_dist

__all__ = [
    "PredictionMetrics",
    "aligned_barriers",
    "ensemble_proba",
    "expected_calibration_error",
    "mean_barrier",
    "pairwise_barriers",
    "predict_proba",
    "prediction_metrics",
    "star_domain_proba",
]

StateDict = dict[str, Tensor]


def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    r"""Expected calibration error with equal-width confidence bins (Guo et al., "On Calibration
    of Modern Neural Networks", https://arxiv.org/abs/1706.04599).

    .. math::
        \mathrm{ECE} = \sum_{b=1}^{B} \frac{|S_b|}{n}\, \big|\mathrm{acc}(S_b) - \mathrm{conf}(S_b)\big|

    where :math:`S_b` holds the examples whose confidence (largest class probability) lies in
    :math:`(\frac{b-1}{B}, \frac{b}{B}]` (the first bin also takes a confidence of 0), and
    a prediction is the class of largest probability.

    Args:
        probs (Tensor): class probabilities.
        labels (Tensor): class indices.
        n_bins (int, optional): the number of bins :math:`B`. (default: ``15``)

    Shapes:
        probs: ``(n, K)``; labels: ``(n,)``.

    Returns:
        float: the ECE, in [0, 1].

    Raises:
        ValueError: shapes that do not fit, no examples, or ``n_bins < 1``.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"expected_calibration_error: n_bins must be a positive integer, got {n_bins!r}")
    if probs.ndim != 2 or labels.shape != (probs.shape[0],) or probs.shape[0] == 0:
        raise ValueError(f"expected_calibration_error: expected probs (n, K) and labels (n,) with n > 0, got "
                         f"{tuple(probs.shape)} and {tuple(labels.shape)}")
    probs = probs.detach().double().cpu()
    conf, pred = probs.max(dim=1)
    hit = (pred == labels.cpu()).double()
    # bin b holds (b/B, (b+1)/B]; ceil(conf * B) - 1, with 0 in the first bin
    idx = (torch.ceil(conf * n_bins).long() - 1).clamp(0, n_bins - 1)
    n = probs.shape[0]
    ece = 0.0
    for b in range(n_bins):
        mask = idx == b
        m = int(mask.sum())
        if m:
            ece += m / n * abs(float(hit[mask].mean()) - float(conf[mask].mean()))
    return ece


@dataclass(frozen=True)
class PredictionMetrics:
    """Quality of a probabilistic classifier on one data set.

    Attributes:
        accuracy (float): fraction classified correctly.
        ece (float): expected calibration error (:func:`expected_calibration_error`).
        nll (float): mean negative log-likelihood of the labels.
        n (int): number of examples.
    """

    accuracy: float
    ece: float
    nll: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "ece": self.ece, "nll": self.nll, "n": self.n}


def prediction_metrics(probs: Tensor, labels: Tensor, *, n_bins: int = 15) -> PredictionMetrics:
    """Accuracy, ECE and NLL of predicted probabilities.

    Shapes:
        probs: ``(n, K)``; labels: ``(n,)``.
    """
    ece = expected_calibration_error(probs, labels, n_bins)
    p = probs.detach().double().cpu()
    y = labels.cpu()
    acc = float((p.argmax(1) == y).double().mean())
    nll = float(-torch.log(p[torch.arange(len(y)), y].clamp_min(1e-12)).mean())
    return PredictionMetrics(accuracy=acc, ece=ece, nll=nll, n=len(y))


def predict_proba(model: nn.Module, state: Mapping[str, Tensor], data: Iterable[Any], *,
                  device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Softmax outputs of ``model`` with the weights ``state`` over ``data`` (eval mode, no grad).

    Shapes:
        returns probs ``(n, K)`` (float64, CPU) and labels ``(n,)``.
    """
    dev = resolve_device(state, device)
    full = prepare_state(model, state, dev, fn="predict_proba")
    ps, ys = [], []
    with eval_mode(model), torch.no_grad():
        for x, y in iter_batches(data, dev, num_batches=None, fn="predict_proba"):
            ps.append(torch.softmax(call(model, full, x).double(), dim=1).cpu())
            ys.append(y.cpu())
    if not ps:
        raise ValueError("predict_proba: data yielded no batches")
    return torch.cat(ps), torch.cat(ys)


def ensemble_proba(model: nn.Module, states: Sequence[Mapping[str, Tensor]], data: Iterable[Any], *,
                   device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    r"""A plain ensemble: the mean of the members' softmax outputs,
    :math:`\frac1M \sum_m \mathrm{softmax}(f(x; \theta_m))`.

    Shapes:
        returns probs ``(n, K)`` and labels ``(n,)``.
    """
    if not states:
        raise ValueError("ensemble_proba: needs at least one state dict")
    check_reiterable(data, "ensemble_proba")
    total, labels = None, None
    for s in states:
        p, labels = predict_proba(model, s, data, device=device)
        total = p if total is None else total + p
    return total / len(states), labels


def star_domain_proba(
    model: nn.Module,
    star: Mapping[str, Tensor],
    sources: Sequence[Mapping[str, Tensor]],
    data: Iterable[Any],
    *,
    samples_per_source: int = 4,
    t_dist: str | TDist = "uniform",
    seed: int = 0,
    reset_bn_data: Iterable[Any] | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    r"""Bayesian-model-averaging-style prediction over the star domain (Sonthalia et al.,
    https://arxiv.org/abs/2403.07968, Section 5): average the softmax outputs of models sampled
    on the segments between the star and each source,

    .. math::
        p(y \mid x) = \frac{1}{N S} \sum_{n=1}^{N} \sum_{s=1}^{S}
        \mathrm{softmax}\big(f(x;\ (1-t_{ns})\,\theta_\star + t_{ns}\,\theta_n)\big),
        \quad t_{ns} \sim p(t).

    The sources must already be in the star's basis (:meth:`merging.Starlight.aligned_sources`).

    Args:
        model (nn.Module): the architecture.
        star (StateDict): the star model.
        sources (list[StateDict]): the sources, aligned to the star.
        data (Iterable): re-iterable ``(x, y)`` batches to predict.
        samples_per_source (int, optional): models drawn on each segment. (default: ``4``)
        t_dist (str or TDist, optional): how ``t`` is drawn, as for :class:`merging.Starlight`.
            (default: ``"uniform"``)
        seed (int, optional): seeds the draws of ``t``. (default: ``0``)
        reset_bn_data (Iterable, optional): for BatchNorm networks, batches to recompute every
            sampled model's statistics from (required for them).
        device, progress: where to compute; a progress bar.

    Shapes:
        returns probs ``(n, K)`` and labels ``(n,)``.

    Raises:
        ValueError: no sources, ``samples_per_source < 1``, or a BatchNorm network without
            ``reset_bn_data``.
    """
    fn = "star_domain_proba"
    if not sources:
        raise ValueError(f"{fn}: needs at least one source")
    if isinstance(samples_per_source, bool) or not isinstance(samples_per_source, int) or samples_per_source < 1:
        raise ValueError(f"{fn}: samples_per_source must be a positive integer, got {samples_per_source!r}")
    tdist = parse_t_dist(t_dist)
    check_reiterable(data, fn)
    if batchnorm_layers(model) and reset_bn_data is None:
        raise ValueError(f"{fn}: the model has BatchNorm layers; pass reset_bn_data to recompute the statistics "
                         "of every sampled model")
    gen = torch.Generator().manual_seed(int(seed))
    total, labels, count = None, None, 0
    jobs = [(s, tdist.sample(gen)) for s in sources for _ in range(samples_per_source)]
    for src, t in tqdm(jobs, desc="star domain", unit="model", file=sys.stderr, disable=not progress, leave=False):
        state = interpolate(star, src, t)
        if reset_bn_data is not None and batchnorm_layers(model):
            state = reset_batchnorm(model, state, reset_bn_data, device=device)
        p, labels = predict_proba(model, state, data, device=device)
        total = p if total is None else total + p
        count += 1
    return total / count, labels


def aligned_barriers(
    model: nn.Module,
    structure: Structure | None,
    reference: Mapping[str, Tensor],
    others: Sequence[Mapping[str, Tensor]],
    data: Iterable[Any],
    *,
    steps: int = 11,
    reset_bn_data: Iterable[Any] | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> list[BarrierResult]:
    """Barriers between ``reference`` (e.g. a star model) and each of ``others`` (e.g. held-out
    models never used to build it), each aligned to ``reference`` by weight matching first.

    Args:
        model (nn.Module): the architecture.
        structure (Structure, optional): for weight matching; ``None`` takes ``others`` as given.
        reference (StateDict): one end of every path.
        others (list[StateDict]): the other ends.
        data (Iterable): batches to evaluate on.
        steps (int, optional): points on each path. (default: ``11``)
        reset_bn_data (Iterable, optional): recompute BatchNorm statistics at interior points.
        seed, device, progress: weight matching's seed; where to compute; progress bars.

    Returns:
        list[BarrierResult]: one per model of ``others``, in order.
    """
    out = []
    for o in others:
        b = dict(o) if structure is None else permute(structure, dict(o),
                                                      weight_matching(structure, reference, o, seed=seed))
        out.append(barrier(model, reference, b, data, steps=steps, reset_bn_data=reset_bn_data, device=device,
                           progress=progress))
    return out


def pairwise_barriers(
    model: nn.Module,
    structure: Structure | None,
    states: Sequence[Mapping[str, Tensor]],
    data: Iterable[Any],
    *,
    steps: int = 11,
    reset_bn_data: Iterable[Any] | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> list[tuple[int, int, BarrierResult]]:
    """Barriers between every pair ``i < j`` of ``states``, ``j`` aligned to ``i`` by weight
    matching: the baseline a star model's barriers are compared with.

    Returns:
        list of ``(i, j, BarrierResult)``.
    """
    if len(states) < 2:
        raise ValueError(f"pairwise_barriers: needs at least two models, got {len(states)}")
    return [(i, j, aligned_barriers(model, structure, states[i], [states[j]], data, steps=steps,
                                    reset_bn_data=reset_bn_data, seed=seed, device=device, progress=progress)[0])
            for i, j in itertools.combinations(range(len(states)), 2)]


def mean_barrier(results: Iterable[BarrierResult | tuple[int, int, BarrierResult]], attr: str = "loss_barrier") -> float:
    """The mean of one barrier number over results (pairs from :func:`pairwise_barriers` accepted)."""
    vals = [getattr(r[2] if isinstance(r, tuple) else r, attr) for r in results]
    return sum(vals) / len(vals) if vals else math.nan
