"""What the metanetworks read besides weights: probe features (a network's activations or outputs on
probe inputs), per-tensor weight statistics, and batching networks into a model's input."""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from graphs import ParamGraph, Structure

from ..trust import UntrustedCodeError, check_data_spec
from .archs import DEFAULT_PROBES, GRAPH_ARCHS
from .data import weight_tensors, LoadedZoo


def _probe_inputs(config: Mapping[str, Any]) -> Tensor:
    """The probe inputs a config names: kept images of the zoo's data, or seeded uniform noise."""
    shape = tuple(config["input_shape"])
    if config.get("probe_inputs") is not None:   # drawn from the zoo's training data
        return torch.as_tensor(config["probe_inputs"], dtype=torch.float32).reshape(-1, *shape)
    gen = torch.Generator().manual_seed(int(config.get("probe_seed", 0)))
    # uniform in [-1, 1]: the coordinate range of an INR, the range of normalised inputs
    return torch.rand(int(config["probes"]), *shape, generator=gen) * 2 - 1


class _Prober:
    """Probe features for the graph archs: a zoo network's activations on fixed probe inputs,
    divided by one scale per node set (fitted on the train split, so equivariance holds)."""

    def __init__(self, config: Mapping[str, Any], structure: Structure) -> None:
        from ..models import model_from_json

        self.module = model_from_json(config["model_spec"], source="the metanetwork's config")
        self.inputs = _probe_inputs(config)
        self.scale = torch.tensor(config["probe_scale"], dtype=torch.float32) if "probe_scale" in config else None
        self.structure = structure

    def raw(self, graph: ParamGraph, stacked: Mapping[str, Tensor], device: torch.device) -> Tensor:
        from ..nn import probe_features

        return probe_features(self.module, graph, self.inputs.to(device), dict(stacked)).float()

    def fit_scale(self, states: list[dict[str, Tensor]]) -> list[float]:
        stacked = {k: torch.stack([s[k] for s in states]) for k in states[0]}
        graph = ParamGraph.batch_from_stacked(self.structure, stacked)
        f = self.raw(graph, stacked, torch.device("cpu"))
        scale = torch.ones(f.shape[1])
        for site in graph.sites.values():
            sd = float(f[:, site.offset:site.offset + site.size].std()) if f.shape[0] * site.size > 1 else 0.0
            scale[site.offset:site.offset + site.size] = sd if math.isfinite(sd) and sd > 1e-8 else 1.0
        self.scale = scale
        return scale.tolist()

    def __call__(self, graph: ParamGraph, stacked: Mapping[str, Tensor], device: torch.device) -> Tensor:
        f = self.raw(graph, stacked, device)
        return (f / self.scale.to(f.device)[:, None]).reshape(-1, f.shape[-1])


_STAT_QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


class WeightStats:
    """Invariant per-network statistics for the graph archs' readout: for each floating-point
    tensor of the state dict, the mean, log standard deviation and 0, 25, 50, 75, 100%
    quantiles of its entries (permuting hidden units only reorders a tensor's entries),
    standardised by means and scales fitted on the train split."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.mean = torch.tensor(config["stats_mean"], dtype=torch.float32) if "stats_mean" in config else None
        self.scale = torch.tensor(config["stats_scale"], dtype=torch.float32) if "stats_scale" in config else None

    @staticmethod
    def raw(stacked: Mapping[str, Tensor]) -> Tensor:
        cols = []
        for t in stacked.values():
            if not t.is_floating_point():
                continue
            t = t.reshape(t.shape[0], -1).float()
            q = torch.quantile(t, torch.tensor(_STAT_QUANTILES, dtype=t.dtype, device=t.device), dim=1).T
            sd = t.std(1, unbiased=False) if t.shape[1] > 1 else torch.zeros_like(t[:, 0])
            cols += [t.mean(1, keepdim=True), (sd + 1e-8).log()[:, None], q]
        return torch.cat(cols, 1)

    def fit(self, states: list[dict[str, Tensor]]) -> tuple[list[float], list[float]]:
        f = self.raw({k: torch.stack([s[k] for s in states]) for k in states[0]})
        self.mean = f.mean(0)
        sd = f.std(0, unbiased=False) if f.shape[0] > 1 else torch.ones(f.shape[1])
        self.scale = torch.where(torch.isfinite(sd) & (sd > 1e-6), sd, torch.ones_like(sd))
        return self.mean.tolist(), self.scale.tolist()

    def __call__(self, stacked: Mapping[str, Tensor], device: torch.device) -> Tensor:
        f = self.raw(stacked)
        return ((f - self.mean) / self.scale).to(device)


class _ProbeStatFeatures:
    """probestat's per-network features, invariant by construction: the network's outputs on the
    probe inputs (as a function, unchanged by any permutation of hidden units) and, with
    ``config["stats"]``, the per-tensor weight statistics of :class:`WeightStats` (unstandardised:
    the model standardises the whole vector).

    Outputs of width ``C > 1`` are read as logits: centred per probe (softmax-invariant), plus
    the histogram of predicted classes and the mean and standard deviation over probes of the
    top softmax probability and of the entropy. Outputs of width 1 are kept as they are.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        from ..models import model_from_json

        self.module = model_from_json(config["model_spec"], source="the metanetwork's config").eval()
        self.inputs = _probe_inputs(config)
        self.stats = bool(config.get("stats"))

    @torch.no_grad()
    def _outputs(self, state: Mapping[str, Tensor]) -> Tensor:
        from torch.func import functional_call

        y = functional_call(self.module, dict(state), (self.inputs,))
        y = y.reshape(y.shape[0], -1).float()
        if y.shape[1] == 1:
            return y.flatten()
        p = y.softmax(-1)
        hist = F.one_hot(y.argmax(-1), y.shape[1]).float().mean(0)
        conf = p.max(-1).values
        ent = -(p * p.clamp_min(1e-12).log()).sum(-1)
        sd = (lambda t: t.std(unbiased=False))
        return torch.cat([(y - y.mean(-1, keepdim=True)).flatten(), hist,
                          torch.stack([conf.mean(), sd(conf), ent.mean(), sd(ent)])])

    @torch.no_grad()
    def __call__(self, states: list[dict[str, Tensor]], chunk: int = 512) -> Tensor:
        """``(n, D)`` features of ``n`` networks."""
        rows = []
        for i in range(0, len(states), chunk):
            part = states[i:i + chunk]
            f = torch.stack([self._outputs(s) for s in part])
            if self.stats:
                f = torch.cat([f, WeightStats.raw({k: torch.stack([s[k] for s in part]) for k in part[0]})], 1)
            rows.append(f)
        return torch.cat(rows) if rows else torch.zeros(0, 0)


def probestat_features(config: Mapping[str, Any], states: list[dict[str, Tensor]], who: str) -> Tensor:
    """Features of ``states`` for probestat, with a clear error when the networks cannot be run."""
    try:
        f = _ProbeStatFeatures(config)(states)
    except Exception as e:  # noqa: BLE001 - any failure to run the zoo's networks is bad input
        raise ValueError(f"{who}: arch 'probestat' runs each network on probe inputs, but the zoo's networks "
                         f"({config.get('model_spec')!r} on inputs of shape {config.get('input_shape')}) cannot be "
                         f"run ({type(e).__name__}: {e}); use --arch gnn or statnn for this zoo") from None
    if not bool(torch.isfinite(f).all()):
        raise ValueError(f"{who}: arch 'probestat': some networks give non-finite outputs on the probe inputs")
    return f


PROBE_SOURCES = ("auto", "data", "uniform")


def _data_probes(card, n: int, seed: int) -> Tensor | None:
    """``n`` inputs drawn from the training split of the data the zoo's models were trained on
    (resized as the zoo resized them), or None when the card names no loadable data whose
    inputs have the models' input shape (INRs: images are not coordinates)."""
    from ..data import load_dataset
    from ..zoo import resize_images

    spec, shape = (card.dataset or {}).get("spec"), card.input_shape
    if not spec or not shape or len(shape) != 3:
        return None
    try:
        check_data_spec(spec, source="the zoo card")
    except UntrustedCodeError as e:
        warnings.warn(f"{e}; probing with uniform inputs instead", stacklevel=2)
        return None
    try:
        x = resize_images(load_dataset(spec, split="train"), shape[-1])
    except Exception:  # noqa: BLE001 - missing or unreadable data: uniform probes instead
        return None
    if tuple(x.shape[1:]) != tuple(shape) or len(x) < n:
        return None
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx].float().contiguous()


def _resolve_probes(probes: int | str, arch: str, config: Mapping[str, Any], zoo: LoadedZoo) -> int:
    """The number of probe inputs: ``"auto"`` is :data:`DEFAULT_PROBES` for the graph archs when
    the zoo's networks can be run on inputs of the card's shape (tried on one train network),
    else 0; a number is checked and kept."""
    if arch == "probestat":
        if probes == "auto":
            probes = DEFAULT_PROBES
        if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
            raise ValueError(f"train_metanet: arch 'probestat' reads each network's outputs on probe inputs; "
                             f"probes must be a positive integer or 'auto', got {probes!r}")
        if zoo is not None and not zoo.card.input_shape:
            raise ValueError("train_metanet: arch 'probestat' runs the zoo's networks on probe inputs, but the zoo "
                             "card names no input shape; use --arch gnn or statnn for this zoo")
        return probes
    if probes == "auto":
        if arch not in GRAPH_ARCHS or not zoo.card.input_shape:
            return 0
        try:
            trial = _Prober({**config, "probes": 2, "input_shape": list(zoo.card.input_shape)}, zoo.structure)
            states = zoo.splits["train"].states[:1]
            stacked = {k: torch.stack([s[k] for s in states]) for k in states[0]}
            f = trial.raw(ParamGraph.batch_from_stacked(zoo.structure, stacked), stacked, torch.device("cpu"))
        except Exception:  # noqa: BLE001 - a network that cannot be run on probes trains without them
            return 0
        return DEFAULT_PROBES if bool(torch.isfinite(f).all()) and bool(f.abs().sum() > 0) else 0
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 0:
        raise ValueError(f"train_metanet: probes must be a non-negative integer or 'auto', got {probes!r}")
    if probes and arch not in GRAPH_ARCHS:
        raise ValueError(f"train_metanet: probe features are node features of the graph archs; use --arch gnn or "
                         f"transformer with --probes (got {arch!r})")
    return probes


def _resolve_stats(stats: bool | str, arch: str, task: str) -> bool:
    """Whether the graph archs' readout also gets per-tensor weight statistics (:class:`WeightStats`):
    ``"auto"`` means for accuracy prediction."""
    if stats == "auto":
        return arch == "probestat" or (arch in GRAPH_ARCHS and task == "accuracy")
    if not isinstance(stats, bool):
        raise ValueError(f"train_metanet: stats must be True, False or 'auto', got {stats!r}")  # noqa: TRY004
    if stats and arch not in (*GRAPH_ARCHS, "probestat"):
        raise ValueError(f"train_metanet: weight statistics are a readout input of the graph archs; use --arch gnn "
                         f"or transformer with --stats (got {arch!r}; statnn is the statistics-only baseline)")
    return stats


def collate_networks(arch: str, structure: Structure, states: list[dict[str, Tensor]], device: torch.device,
                     prober: _Prober | None = None, stats: WeightStats | None = None):
    """One batch of networks as ``arch`` reads it: a batched parameter graph (graph archs, with
    probe features and weight statistics when given), the weight-space features, or the cached
    feature rows (probestat)."""
    if arch == "probestat":   # states are the cached feature rows
        return torch.stack(states).to(device)
    if arch in GRAPH_ARCHS:
        stacked = {k: torch.stack([s[k] for s in states]) for k in states[0]}
        graph = ParamGraph.batch_from_stacked(structure, stacked)
        data = graph.to_pyg().to(device)
        if prober is not None:
            data.probe = prober(graph, stacked, device)
        if stats is not None:
            data.stats = stats(stacked, device)
        return data
    from ..nn import WeightSpaceFeatures

    ts = [weight_tensors(s) for s in states]
    L = len(ts[0][0])
    return WeightSpaceFeatures.from_tensors([torch.stack([t[0][l] for t in ts]).to(device) for l in range(L)],
                                            [torch.stack([t[1][l] for t in ts]).to(device) for l in range(L)])
