"""Train and evaluate metanetworks on model zoos: predict a network's accuracy or class from its weights."""
from __future__ import annotations

import itertools
import warnings
import math
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from graphs import ParamGraph, Structure, permute, random_permutation
from merging._atomic import atomic_write

from .distributed import DistContext, distributed_context
from .trust import UntrustedCodeError, check_data_spec, takes_trust_flag

__all__ = ["ARCHS", "DEFAULT_PROBES", "TASKS", "MetanetResult", "evaluate_metanet", "load_metanet", "train_metanet"]

ARCHS = ("gnn", "transformer", "np", "hnp", "dws", "statnn", "mlp", "probestat")
TASKS = ("accuracy", "class")
FORMAT = "weightspace-metanet"
_TENSOR_ARCHS = ("np", "hnp", "dws", "statnn", "mlp")
_DEFAULT_HIDDEN = {"gnn": 64, "transformer": 64, "np": 16, "hnp": 16, "dws": 16, "statnn": 256, "mlp": 256,
                   "probestat": 128}
#: training defaults of each arch (``None`` arguments of :func:`train_metanet`); probestat's
#: features are cheap and cached, so it takes many short epochs with a long patience
_TRAIN_DEFAULTS = {"epochs": 50, "lr": 3e-4, "batch_size": 32, "patience": 10, "weight_decay": 0.0}
_ARCH_TRAIN_DEFAULTS = {"probestat": {"epochs": 300, "lr": 1e-3, "batch_size": 64, "patience": 100,
                                      "weight_decay": 1e-2}}
_GRAPH_ARCHS = ("gnn", "transformer")
#: probe inputs of ``probes="auto"`` for the graph archs on a zoo whose networks can be run
DEFAULT_PROBES = 32


# ============================================================================ models
class _WeightSpaceNet(nn.Module):
    """Per-layer scaling, then equivariant layers and an invariant pool (or a baseline), then a head."""

    def __init__(self, arch: str, spec, out: int, hidden: int, scales: Tensor) -> None:
        super().__init__()
        from .nn import DWSLayer, FlatMLP, HNPLinear, HNPPool, NPLinear, NPPool, StatNN

        self.arch = arch
        self.register_buffer("scales", scales.clone())     # (2L,): weight and bias of each layer
        self.layers = nn.ModuleList()
        if arch in ("np", "hnp", "dws"):
            def make(a: int, b: int) -> nn.Module:
                if arch == "dws":   # DWSNets' max reduction sets it apart from hnp's means
                    return DWSLayer(spec, a, b, reduction="max")
                return (NPLinear if arch == "np" else HNPLinear)(spec, a, b)

            chans = [1, hidden, hidden]
            self.layers.extend(make(a, b) for a, b in itertools.pairwise(chans))
            self.pool = (NPPool if arch == "np" else HNPPool)(spec, hidden)
            width = self.pool.num_outputs(spec, hidden)
            self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 4 * hidden), nn.ReLU(),
                                      nn.Linear(4 * hidden, out))
        else:
            self.pool = None
            self.head = (StatNN if arch == "statnn" else FlatMLP)(spec, 1, out, hidden=(hidden, hidden))

    def forward(self, x) -> Tensor:
        L = len(x.weights)
        x = type(x)(tuple(w / self.scales[i] for i, w in enumerate(x.weights)),
                    tuple(b / self.scales[L + i] for i, b in enumerate(x.biases)))
        if self.pool is None:
            return self.head(x)
        for layer in self.layers:
            x = layer(x).map(F.relu)
        return self.head(self.pool(x))


class _ProbeStatNet(nn.Module):
    """probestat's model: standardise the cached features with the train split's mean and scale
    (buffers, also kept in the config), then an MLP."""

    def __init__(self, mean: Tensor, scale: Tensor, hidden: int, out: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.register_buffer("mean", mean.clone())
        self.register_buffer("scale", scale.clone())
        d = mean.numel()
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, hidden),
                                 nn.GELU(), nn.Linear(hidden, out))

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp((x - self.mean) / self.scale)


def _build_model(config: Mapping[str, Any]) -> nn.Module:
    from .nn import GraphMetanet, NetworkSpec

    arch, out, hidden = config["arch"], config["out"], config["hidden"]
    if arch == "probestat":
        return _ProbeStatNet(torch.tensor(config["feature_mean"], dtype=torch.float32),
                             torch.tensor(config["feature_scale"], dtype=torch.float32), hidden, out)
    if arch in _GRAPH_ARCHS:
        return GraphMetanet(hidden=hidden, out_channels=out, num_layers=config.get("num_layers", 3), arch=arch,
                            probe_dim=int(config.get("probes", 0)),
                            global_dim=len(config.get("stats_mean", ())))
    spec = NetworkSpec.from_dict(config["spec"])
    return _WeightSpaceNet(arch, spec, out, hidden, torch.tensor(config["scales"], dtype=torch.float32))


# ============================================================================ data
@dataclass
class _Split:
    states: list[dict[str, Tensor]]
    targets: Tensor


class _Zoo:
    """A zoo held in memory: the model's structure and each split's state dicts and targets."""

    def __init__(self, root: str | os.PathLike, task: str, target: str | None, checkpoints: Any = "all") -> None:
        from .api import trace_model
        from .models import model_from_json
        from .zoo import ZooDataset

        if task not in TASKS:
            raise ValueError(f"train_metanet: unknown task {task!r}; choose one of: {', '.join(TASKS)}")
        self.root = Path(root)
        target = target or ("accuracy" if task == "accuracy" else "label")
        probe = ZooDataset(self.root, "all", view="state", target=target, checkpoints=checkpoints)
        self.card, self.target = probe.card, probe.target
        self.splits: dict[str, _Split] = {}
        for split in ("train", "val", "test"):
            ds = ZooDataset(self.root, split, view="state", target=target, checkpoints=checkpoints)
            states, ys = [], []
            for i in range(len(ds)):
                states.append(ds.state(i))
                ys.append(float(ds.rows[i][self.target]))
            dtype = torch.long if task == "class" else torch.float32
            self.splits[split] = _Split(states, torch.tensor(ys, dtype=dtype))
        if not self.splits["train"].states:
            raise ValueError(f"train_metanet: {self.root} has no models in its train split; build a larger zoo")
        module = model_from_json(self.card.model_spec, source=f"zoo card {self.root / 'zoo.json'}")
        self.structure: Structure = trace_model(module, input_shape=self.card.input_shape)
        if task == "class":
            labels = torch.cat([s.targets for s in self.splits.values()])
            self.num_classes = int(labels.max()) + 1 if labels.numel() else 1
        else:
            self.num_classes = 1


def _tensors(state: Mapping[str, Tensor]) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    from .zoo import state_to_tensors

    try:
        return state_to_tensors(dict(state))
    except ValueError as e:
        raise ValueError(f"train_metanet: the weight-space archs ({', '.join(_TENSOR_ARCHS)}) need a chain of "
                         f"weight/bias layers ({e}); use --arch gnn or transformer for this zoo") from None


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
        from .models import model_from_json

        self.module = model_from_json(config["model_spec"], source="the metanetwork's config")
        self.inputs = _probe_inputs(config)
        self.scale = torch.tensor(config["probe_scale"], dtype=torch.float32) if "probe_scale" in config else None
        self.structure = structure

    def raw(self, graph: ParamGraph, stacked: Mapping[str, Tensor], device: torch.device) -> Tensor:
        from .nn import probe_features

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


class _Stats:
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
    ``config["stats"]``, the per-tensor weight statistics of :class:`_Stats` (unstandardised:
    the model standardises the whole vector).

    Outputs of width ``C > 1`` are read as logits: centred per probe (softmax-invariant), plus
    the histogram of predicted classes and the mean and standard deviation over probes of the
    top softmax probability and of the entropy. Outputs of width 1 are kept as they are.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        from .models import model_from_json

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
                f = torch.cat([f, _Stats.raw({k: torch.stack([s[k] for s in part]) for k in part[0]})], 1)
            rows.append(f)
        return torch.cat(rows) if rows else torch.zeros(0, 0)


def _probestat_features(config: Mapping[str, Any], states: list[dict[str, Tensor]], who: str) -> Tensor:
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
    from .data import load_dataset
    from .zoo._cnn import _resize

    spec, shape = (card.dataset or {}).get("spec"), card.input_shape
    if not spec or not shape or len(shape) != 3:
        return None
    try:
        check_data_spec(spec, source="the zoo card")
    except UntrustedCodeError as e:
        warnings.warn(f"{e}; probing with uniform inputs instead", stacklevel=2)
        return None
    try:
        x = _resize(load_dataset(spec, split="train"), shape[-1])
    except Exception:  # noqa: BLE001 - missing or unreadable data: uniform probes instead
        return None
    if tuple(x.shape[1:]) != tuple(shape) or len(x) < n:
        return None
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx].float().contiguous()


def _resolve_probes(probes: int | str, arch: str, config: Mapping[str, Any], zoo: _Zoo) -> int:
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
        if arch not in _GRAPH_ARCHS or not zoo.card.input_shape:
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
    if probes and arch not in _GRAPH_ARCHS:
        raise ValueError(f"train_metanet: probe features are node features of the graph archs; use --arch gnn or "
                         f"transformer with --probes (got {arch!r})")
    return probes


def _resolve_stats(stats: bool | str, arch: str, task: str) -> bool:
    """Whether the graph archs' readout also gets per-tensor weight statistics (:class:`_Stats`):
    ``"auto"`` means for accuracy prediction."""
    if stats == "auto":
        return arch == "probestat" or (arch in _GRAPH_ARCHS and task == "accuracy")
    if not isinstance(stats, bool):
        raise ValueError(f"train_metanet: stats must be True, False or 'auto', got {stats!r}")  # noqa: TRY004
    if stats and arch not in (*_GRAPH_ARCHS, "probestat"):
        raise ValueError(f"train_metanet: weight statistics are a readout input of the graph archs; use --arch gnn "
                         f"or transformer with --stats (got {arch!r}; statnn is the statistics-only baseline)")
    return stats


def _collate(arch: str, structure: Structure, states: list[dict[str, Tensor]], device: torch.device,
             prober: _Prober | None = None, stats: _Stats | None = None):
    if arch == "probestat":   # states are the cached feature rows
        return torch.stack(states).to(device)
    if arch in _GRAPH_ARCHS:
        stacked = {k: torch.stack([s[k] for s in states]) for k in states[0]}
        graph = ParamGraph.batch_from_stacked(structure, stacked)
        data = graph.to_pyg().to(device)
        if prober is not None:
            data.probe = prober(graph, stacked, device)
        if stats is not None:
            data.stats = stats(stacked, device)
        return data
    from .nn import WeightSpaceFeatures

    ts = [_tensors(s) for s in states]
    L = len(ts[0][0])
    return WeightSpaceFeatures.from_tensors([torch.stack([t[0][l] for t in ts]).to(device) for l in range(L)],
                                            [torch.stack([t[1][l] for t in ts]).to(device) for l in range(L)])


def _scales(states: list[dict[str, Tensor]]) -> list[float]:
    ws, bs = zip(*(_tensors(s) for s in states))
    out = []
    for group in (list(zip(*ws)), list(zip(*bs))):
        for layer in group:
            sd = float(torch.stack(layer).float().std())
            out.append(sd if math.isfinite(sd) and sd > 1e-8 else 1.0)
    return out


# ============================================================================ metrics
def _metrics(task: str, pred: Tensor, y: Tensor) -> dict[str, float]:
    if len(y) == 0:
        return {}
    if task == "class":
        return {"loss": float(F.cross_entropy(pred, y)), "accuracy": float((pred.argmax(1) == y).float().mean())}
    from scipy.stats import kendalltau

    p, t = pred.squeeze(1).double(), y.double()
    mse = float(((p - t) ** 2).mean())
    var = float(((t - t.mean()) ** 2).mean())
    tau = kendalltau(p.numpy(), t.numpy()).statistic if len(t) > 1 else float("nan")
    return {"loss": mse, "mse": mse, "r2": 1.0 - mse / var if var > 0 else float("nan"),
            "kendall_tau": float(tau) if tau is not None else float("nan")}


@torch.no_grad()
def _predict(model: nn.Module, arch: str, structure: Structure, split: _Split, out: int, batch_size: int,
             device: torch.device, prober: _Prober | None = None, ctx: DistContext | None = None,
             stats: _Stats | None = None) -> Tensor:
    """``(n, out)`` predictions for the networks of ``split``, on the CPU; under ``ctx`` each
    process predicts its shard (rows ``rank::K``) and every process gets them all, in order."""
    model.eval()
    ctx = ctx or DistContext()
    mine = [split.states[i] for i in ctx.shard(len(split.states))]
    outs = [model(_collate(arch, structure, mine[i:i + batch_size], device, prober, stats)).float()
            for i in range(0, len(mine), batch_size)]
    local = torch.cat(outs) if outs else torch.zeros(0, out, device=device)
    return ctx.gather_rows(local, len(split.states), device)


LOSSES = ("mse", "rank")
SCHEDULES = ("constant", "cosine")
SELECTS = ("loss", "kendall_tau")
_RANK_TEMPERATURE = 0.02   # accuracy units: pairs predicted this far apart in the right order cost little


def _rank_loss(pred: Tensor, y: Tensor) -> Tensor:
    """Pairwise logistic ranking loss over the batch, in accuracy units.

    For every pair with different targets, ``T * softplus(-sign(y_i - y_j) * (p_i - p_j) / T)``,
    averaged over those pairs (zero when there are none): a correctly ordered pair costs little
    once predicted ``T`` apart, a wrongly ordered one grows linearly with the gap.
    """
    d = pred[:, None] - pred[None, :]
    s = torch.sign(y[:, None] - y[None, :])
    mask = s > 0   # each unordered pair once, ties skipped
    if not bool(mask.any()):
        return pred.sum() * 0.0
    t = _RANK_TEMPERATURE
    return (t * F.softplus(-d[mask] / t)).mean()


def _loss(task: str, pred: Tensor, y: Tensor, kind: str = "mse") -> Tensor:
    if task == "class":
        return F.cross_entropy(pred, y)
    p = pred.squeeze(1)
    mse = F.mse_loss(p, y)
    return mse + _rank_loss(p, y) if kind == "rank" else mse


def _device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train_metanet: device {str(device)!r} asked for, but CUDA is not available")
    return dev


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: torch.save(obj, f))


# ============================================================================ public API
@dataclass
class MetanetResult:
    """What :func:`train_metanet` did.

    Attributes:
        model (nn.Module): the best metanetwork (by validation loss), on the CPU, in eval mode.
        config (dict): everything needed to rebuild it (arch, task, sizes, target, scales).
        history (list[dict]): per epoch: ``epoch``, ``train_loss``, ``val_loss`` and the
            validation metrics.
        best_epoch (int): the epoch whose weights were kept.
        metrics (dict[str, dict[str, float]]): ``train``, ``val`` and ``test`` metrics of the best
            model (Kendall tau, R^2 and MSE for accuracy, accuracy and loss for classes); an
            empty split gives ``{}``.
        num_params (int): trainable parameters of the metanetwork.
        seconds (float): training wall time.
        path (Path, optional): the checkpoint, when ``out`` was given.
    """

    model: nn.Module
    config: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    num_params: int = 0
    seconds: float = 0.0
    path: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.config["arch"], "task": self.config["task"], "target": self.config["target"],
                "probes": int(self.config.get("probes", 0)),
                "probe_source": self.config.get("probe_source"),
                "stats": "stats_mean" in self.config or bool(self.config.get("stats")),
                "best_epoch": self.best_epoch,
                "epochs_run": len(self.history), "metrics": self.metrics,
                "num_params": self.num_params, "seconds": round(self.seconds, 3),
                "path": str(self.path) if self.path else None, "history": self.history}


def _aug_seed(seed: int, epoch: int, index: int) -> int:
    """The permutation seed of training network ``index`` in ``epoch``: a function of the three
    alone, so every process of a distributed run draws the permutation the single process would."""
    return (((seed * 1_000_003) ^ (epoch * 7_919)) * 2_654_435_761 + index * 40_503) % (2**31 - 1)


@takes_trust_flag
def train_metanet(zoo_dir: str | os.PathLike, *, task: str = "accuracy", arch: str = "gnn",
                  epochs: int | None = None, lr: float | None = None, batch_size: int | None = None,
                  hidden: int | None = None, augment: bool = True, patience: int | None = None,
                  weight_decay: float | None = None, target: str | None = None, seed: int = 0,
                  probes: int | str = "auto", probe_source: str = "auto", stats: bool | str = "auto",
                  checkpoints: str | int | list[int] = "all", device: str | torch.device = "cpu",
                  out: str | os.PathLike | None = None, progress: bool = True, loss: str = "mse",
                  schedule: str = "constant", select: str = "loss") -> MetanetResult:
    """Train a metanetwork on a zoo's train split, select it on the val split.

    Runs data-parallel when launched by ``torchrun --nproc_per_node K`` (the ``RANK`` /
    ``WORLD_SIZE`` / ``LOCAL_RANK`` environment; see :mod:`weightspace.distributed`): the model
    is wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`, a
    :class:`~torch.utils.data.DistributedSampler` gives each process its share of the train
    split, validation predictions are gathered and losses all-reduced, and only rank 0 writes
    the checkpoint and draws the progress bar. ``batch_size`` stays the global batch: each
    process takes ``batch_size / K`` networks per step.

    .. note::
        **Equivalence with one process.** Every epoch, the one process and the ``K`` processes
        draw the same permutation of the train split (the sampler's, seeded by ``seed + epoch``);
        step ``s`` of every process covers positions ``s * batch_size`` to ``(s + 1) *
        batch_size - 1`` of it between them, every process holds equally many, and DDP averages
        their mean-loss gradients, so each step's gradient is the gradient of the same global
        batch's mean loss, up to float summation order. Augmentation permutations are a
        function of ``(seed, epoch, network)`` and the initialisation of ``seed``, so the runs
        agree up to float error when ``K`` divides both the train split's size (else the
        sampler repeats a few networks to even out the shards) and ``batch_size``. BatchNorm
        (``statnn``) uses each process's own batch statistics, so it is the exception.

    Args:
        zoo_dir (str or PathLike): the zoo (``weightspace zoo build``).
        task (str): ``"accuracy"`` (regress the target, default ``test_acc``) or ``"class"``
            (classify the target, default ``label``). (default: ``"accuracy"``)
        arch (str): ``"gnn"``, ``"transformer"`` (:class:`~weightspace.nn.GraphMetanet` on
            parameter graphs, any architecture), ``"np"``, ``"hnp"``, ``"dws"`` (equivariant
            weight-space layers), ``"statnn"``, ``"mlp"`` (baselines); those five need a
            chain of weight/bias layers (MLPs, the zoo CNNs). ``"probestat"``: an MLP on
            invariant features computed once per network and cached: its outputs on the probe
            inputs (logits centred per probe, predicted-class histogram, mean and standard
            deviation of the top probability and of the entropy) and, with ``stats``, its
            per-tensor weight statistics, standardised by the train split's mean and scale (kept
            in the checkpoint); it needs networks the zoo card lets us run, and ignores
            ``augment``. On a 768-model MNIST CNN zoo it reached a test Kendall tau of about
            0.91, above the graph archs. (default: ``"gnn"``)
        epochs (int, optional): most epochs. (default: ``50``; ``300`` for probestat)
        lr (float, optional): AdamW learning rate. (default: ``3e-4``; ``1e-3`` for probestat)
        batch_size (int, optional): networks per step, over all processes. (default: ``32``;
            ``64`` for probestat)
        hidden (int, optional): width of the metanetwork. (default: per arch, 16 to 256)
        augment (bool): feed each training network under a fresh random permutation of its
            hidden units every epoch (:func:`graphs.random_permutation` + :func:`graphs.permute`).
            (default: ``True``)
        patience (int, optional): stop after this many epochs without a better validation
            ``select`` metric. (default: ``10``; ``100`` for probestat)
        weight_decay (float, optional): AdamW weight decay. (default: ``0.0``; ``1e-2`` for
            probestat)
        target (str, optional): the ``metrics.csv`` column to predict.
        seed (int): seeds initialisation, batch order and augmentation. (default: ``0``)
        probes (int or "auto"): probestat: the number of probe inputs (``"auto"``:
            :data:`DEFAULT_PROBES`; at least 1). Graph archs: add each network's activations on this many
            fixed probe inputs (see ``probe_source``) as node features
            (:func:`weightspace.nn.probe_features`); 0 for none. ``"auto"`` is
            :data:`DEFAULT_PROBES` (32) for ``gnn`` / ``transformer`` when the zoo's networks can
            be run (its card names the model and input shape), else 0: without probes, message
            passing stays at chance on INRs fitted from independent initialisations. The number
            used is ``config["probes"]``. (default: ``"auto"``)
        probe_source (str): where probe inputs come from: ``"uniform"`` (uniform in ``[-1, 1]``),
            ``"data"`` (images of the training split of the data the zoo's models were trained
            on, as the zoo card names it; no labels are used; the inputs are kept in the
            checkpoint), or ``"auto"`` (``"data"`` when that data loads and has the models'
            input shape, else ``"uniform"``). On a 768-model MNIST CNN zoo, data probes raised
            the GNN's test Kendall tau from 0.852 to 0.880. (default: ``"auto"``)
        stats (bool or "auto"): probestat: add the statistics below to its features (``"auto"``:
            yes, for both tasks). Graph archs: also feed the readout invariant statistics of
            each network's weights (per state-dict tensor: mean, log standard deviation, 0 to
            100% quantiles), standardised on the train split. ``"auto"``: for ``task="accuracy"``.
            (default: ``"auto"``)
        checkpoints (str, int or list of int): which stored checkpoints of each zoo model are
            networks to learn from: ``"all"`` (every epoch kept, each its own network, all in
            its model's split), ``"last"``, or the checkpoint(s). (default: ``"all"``)
        device (str): ``cpu``, ``cuda`` or ``auto``; under ``torchrun``, ``cuda`` means
            ``cuda:LOCAL_RANK``. (default: ``"cpu"``)
        out (str or PathLike, optional): where to save the best metanetwork (``.pt``, written
            atomically whenever validation improves).
        progress (bool): progress bar on stderr. (default: ``True``)
        loss (str): ``task="accuracy"`` only: ``"mse"`` (squared error on the target), or
            ``"rank"`` (squared error plus a pairwise logistic ranking term over each batch's
            pairs, which targets Kendall tau; within each process's share of the batch under
            ``torchrun``). On a 768-model MNIST CNN zoo, ``loss="rank"`` with
            ``schedule="cosine"`` gave the GNN a test Kendall tau of 0.887 to 0.890 over three
            runs, against 0.880 for ``"mse"`` at a constant rate. (default: ``"mse"``)
        schedule (str): learning rate over epochs: ``"constant"`` or ``"cosine"`` (decayed to 0
            at ``epochs``, stepped once per epoch). (default: ``"constant"``)
        select (str): the validation metric that picks the kept epoch and drives early
            stopping: ``"loss"`` (squared error or cross-entropy, lower is better) or
            ``"kendall_tau"`` (``task="accuracy"`` only, higher is better). (default: ``"loss"``)

    Returns:
        MetanetResult: the best model, its metrics on every split, the history (the same on
        every process of a distributed run).

    Raises:
        ValueError: unknown task or arch, bad numbers, no such zoo, an empty train split, a
            zoo the chosen arch cannot read, or a ``batch_size`` that the number of processes
            does not divide.

    Example:
        >>> r = train_metanet("zoo", task="accuracy", arch="np", epochs=20)  # doctest: +SKIP
        >>> r.metrics["test"]["kendall_tau"]  # doctest: +SKIP
    """
    from torch.utils.data import DistributedSampler

    if arch not in ARCHS:
        raise ValueError(f"train_metanet: unknown arch {arch!r}; choose one of: {', '.join(ARCHS)}")
    if out is not None:
        from .checkpoint import check_output

        check_output(out, [zoo_dir], fn="train_metanet")  # never over the zoo's card, metrics or shards
    dflt = {**_TRAIN_DEFAULTS, **_ARCH_TRAIN_DEFAULTS.get(arch, {})}
    epochs = dflt["epochs"] if epochs is None else epochs
    lr = dflt["lr"] if lr is None else lr
    batch_size = dflt["batch_size"] if batch_size is None else batch_size
    patience = dflt["patience"] if patience is None else patience
    weight_decay = dflt["weight_decay"] if weight_decay is None else weight_decay
    for name, v in (("epochs", epochs), ("batch_size", batch_size), ("patience", patience)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"train_metanet: {name} must be a positive integer, got {v!r}")
    if probes != "auto":
        _resolve_probes(probes, arch, {}, None)   # bad values fail before the zoo is read
    _resolve_stats(stats, arch, task)
    if probe_source not in PROBE_SOURCES:
        raise ValueError(f"train_metanet: unknown probe_source {probe_source!r}; choose one of: "
                         f"{', '.join(PROBE_SOURCES)}")
    if not lr > 0:
        raise ValueError(f"train_metanet: lr must be positive, got {lr!r}")
    if loss not in LOSSES:
        raise ValueError(f"train_metanet: unknown loss {loss!r}; choose one of: {', '.join(LOSSES)}")
    if loss != "mse" and task != "accuracy":
        raise ValueError(f"train_metanet: loss {loss!r} is for task='accuracy'; task {task!r} uses cross-entropy")
    if schedule not in SCHEDULES:
        raise ValueError(f"train_metanet: unknown schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}")
    if select not in SELECTS:
        raise ValueError(f"train_metanet: unknown select {select!r}; choose one of: {', '.join(SELECTS)}")
    if select == "kendall_tau" and task != "accuracy":
        raise ValueError("train_metanet: select='kendall_tau' is for task='accuracy'")
    dev = _device(device)
    t0 = time.perf_counter()
    zoo = _Zoo(zoo_dir, task, target, checkpoints)
    ctx, dev = distributed_context(dev)
    try:
        K = ctx.world_size
        if batch_size % K:
            raise ValueError(f"train_metanet: batch_size {batch_size} is the global batch and must be a multiple "
                             f"of the {K} processes")
        train, val = zoo.splits["train"], zoo.splits["val"]
        select_on = val if val.states else train
        out_dim = zoo.num_classes if task == "class" else 1
        config: dict[str, Any] = {"format": FORMAT, "arch": arch, "task": task, "target": zoo.target,
                                  "out": out_dim, "hidden": int(hidden or _DEFAULT_HIDDEN[arch]), "num_layers": 3,
                                  "model_spec": zoo.card.model_spec, "zoo": str(zoo.root),
                                  "checkpoints": checkpoints}
        if arch in _TENSOR_ARCHS:
            from .nn import NetworkSpec

            w, b = _tensors(train.states[0])
            try:
                config["spec"] = NetworkSpec.from_tensors(w, b).to_dict()
            except ValueError as e:
                raise ValueError(f"train_metanet: arch {arch!r} cannot read this zoo ({e}); use --arch gnn") from None
            config["scales"] = _scales(train.states)
        prober = None
        config["probes"] = probes = _resolve_probes(probes, arch, config, zoo)
        if probes:
            config.update(probe_seed=0, input_shape=list(zoo.card.input_shape))
            inputs = None if probe_source == "uniform" else _data_probes(zoo.card, probes, 0)
            if inputs is None and probe_source == "data":
                raise ValueError(f"train_metanet: probe_source='data' needs the zoo's training data "
                                 f"({(zoo.card.dataset or {}).get('spec')!r}) loadable, with inputs of the models' "
                                 f"shape {tuple(zoo.card.input_shape)}; use probe_source='uniform'")
            config["probe_source"] = "uniform" if inputs is None else "data"
            config["probe_inputs"] = inputs
            if arch != "probestat":
                prober = _Prober(config, zoo.structure)
                config["probe_scale"] = prober.fit_scale(train.states[:256])
        stat_feats = None
        if arch == "probestat":   # features once per network, cached for every epoch
            config["stats"] = _resolve_stats(stats, arch, task)
            augment = False   # invariant features: permuting the input networks changes nothing
            feats = {k: _probestat_features(config, s.states, "train_metanet") for k, s in zoo.splits.items()}
            ft = feats["train"]
            sd = ft.std(0, unbiased=False) if ft.shape[0] > 1 else torch.ones(ft.shape[1])
            config["feature_mean"] = ft.mean(0).tolist()
            config["feature_scale"] = torch.where(sd > 1e-6, sd, torch.ones_like(sd)).tolist()
            zoo.splits = {k: _Split(list(feats[k]), s.targets) for k, s in zoo.splits.items()}
            train, val = zoo.splits["train"], zoo.splits["val"]
            select_on = val if val.states else train
        elif _resolve_stats(stats, arch, task):
            stat_feats = _Stats({})
            config["stats_mean"], config["stats_scale"] = stat_feats.fit(train.states[:1024])
        torch.manual_seed(seed)
        model = _build_model(config).to(dev)
        ddp = ctx.wrap(model, dev)
        sampler = DistributedSampler(range(len(train.states)), num_replicas=K, rank=ctx.rank, shuffle=True,
                                     seed=seed, drop_last=False)
        local_bs = batch_size // K
        if arch == "statnn" and sampler.num_samples % local_bs == 1:
            local_bs += 1   # no batch of one: BatchNorm needs two
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs) if schedule == "cosine" else None
        best, best_state, best_epoch, bad = math.inf, None, 0, 0
        history: list[dict[str, float]] = []
        path = Path(out) if out is not None else None
        steps_per_epoch = math.ceil(sampler.num_samples / local_bs)
        # the bar counts optimiser steps (an epoch of a graph arch can take minutes), with the epoch beside it
        bar = tqdm(total=epochs * steps_per_epoch, desc=f"metanet {arch}", unit="step", file=sys.stderr,
                   disable=not progress or not ctx.is_main, dynamic_ncols=True)
        for epoch in range(1, epochs + 1):
            ddp.train()
            sampler.set_epoch(epoch)
            order = list(sampler)
            bar.set_description(f"metanet {arch} epoch {epoch}/{epochs}")
            total, count = 0.0, 0
            for i in range(0, len(order), local_bs):
                idx = order[i:i + local_bs]
                states = [train.states[j] for j in idx]
                if augment:
                    states = [permute(zoo.structure, s, random_permutation(zoo.structure, seed=_aug_seed(seed, epoch, j)))
                              for s, j in zip(states, idx)]
                pred = ddp(_collate(arch, zoo.structure, states, dev, prober, stat_feats))
                step_loss = _loss(task, pred.float(), train.targets[idx].to(dev), loss)
                opt.zero_grad()
                step_loss.backward()   # DDP averages the processes' gradients here
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                total += float(step_loss.detach()) * len(idx)
                count += len(idx)
                bar.update(1)
            if sched is not None:
                sched.step()
            total, count = ctx.all_reduce_sum([total, float(count)], dev)
            pv = _predict(model, arch, zoo.structure, select_on, out_dim, 64, dev, prober, ctx, stat_feats)
            vm = _metrics(task, pv, select_on.targets)
            history.append({"epoch": epoch, "train_loss": total / count, **{f"val_{k}": v for k, v in vm.items()}})
            bar.set_postfix(train=f"{total / count:.4g}", val=f"{vm['loss']:.4g}")
            score = -vm["kendall_tau"] if select == "kendall_tau" else vm["loss"]
            if not math.isfinite(score):   # tau of constant predictions: no ranking, the worst
                score = math.inf
            if score < best - 1e-12 or best_state is None:
                best, best_epoch, bad = score, epoch, 0
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                if path is not None and ctx.is_main:
                    _atomic_save({"format": FORMAT, "config": config, "state_dict": best_state,
                                  "epoch": epoch, "val": vm}, path)
            else:
                bad += 1
                if bad >= patience:
                    bar.total = bar.n  # stopped early: the bar ends full
                    break
        bar.close()
        model.load_state_dict(best_state)
        metrics = {name: _metrics(task, _predict(model, arch, zoo.structure, s, out_dim, 64, dev, prober, ctx,
                                                  stat_feats), s.targets)
                   for name, s in zoo.splits.items()}
        ctx.barrier()   # the checkpoint is on disk before any process returns
    finally:
        ctx.close()
    model = model.cpu().eval()
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return MetanetResult(model, config, history, best_epoch, metrics, n_params, time.perf_counter() - t0, path)


def load_metanet(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """``(model, config)`` from a checkpoint of :func:`train_metanet` (in eval mode, on the CPU).

    Raises:
        ValueError: the file is missing or is not a metanetwork checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"load_metanet: {path} does not exist; train one with `weightspace metanet train`")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
        raise ValueError(f"load_metanet: {path} is not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise ValueError(f"load_metanet: {path} is not a weightspace metanetwork checkpoint")
    model = _build_model(ck["config"])
    model.load_state_dict(ck["state_dict"])
    return model.eval(), dict(ck["config"])


@takes_trust_flag
def evaluate_metanet(model: str | os.PathLike | MetanetResult, zoo_dir: str | os.PathLike, *, split: str = "test",
                     batch_size: int = 64, device: str | torch.device = "cpu",
                     checkpoints: str | int | list[int] | None = None) -> dict[str, float]:
    """Metrics of a trained metanetwork on a split of a zoo of the same architecture.

    Args:
        model: a checkpoint path or a :class:`MetanetResult`.
        zoo_dir: the zoo.
        split (str): ``"train"``, ``"val"``, ``"test"`` or ``"all"``. (default: ``"test"``)
        checkpoints (str, int or list of int, optional): which stored checkpoints of each model
            to score (``"all"``, ``"last"`` or epochs). (default: those it was trained on)

    Returns:
        dict: ``kendall_tau``, ``r2``, ``mse`` (accuracy) or ``accuracy``, ``loss`` (class), and ``n``.

    Raises:
        ValueError: unreadable checkpoint, no such zoo, an empty split, or a zoo of another architecture.
    """
    if isinstance(model, MetanetResult):
        net, config = model.model, model.config
    else:
        net, config = load_metanet(model)
    zoo = _Zoo(zoo_dir, config["task"], config["target"],
               config.get("checkpoints", "last") if checkpoints is None else checkpoints)
    if zoo.card.model_spec != config["model_spec"] and config["arch"] in (*_TENSOR_ARCHS, "probestat"):
        raise ValueError(f"evaluate_metanet: {zoo_dir} holds {zoo.card.model_spec}, but the metanetwork was "
                         f"trained on {config['model_spec']}")
    if split == "all":
        parts = list(zoo.splits.values())
        data = _Split([s for p in parts for s in p.states], torch.cat([p.targets for p in parts]))
    elif split in zoo.splits:
        data = zoo.splits[split]
    else:
        raise ValueError(f"evaluate_metanet: unknown split {split!r}; choose one of: train, val, test, all")
    if not data.states:
        raise ValueError(f"evaluate_metanet: the {split} split of {zoo_dir} is empty; pass another split")
    dev = _device(device)
    if config["arch"] == "probestat":
        data = _Split(list(_probestat_features(config, data.states, "evaluate_metanet")), data.targets)
    prober = _Prober(config, zoo.structure) if config.get("probes") and config["arch"] != "probestat" else None
    stat_feats = _Stats(config) if "stats_mean" in config else None
    pred = _predict(net.to(dev), config["arch"], zoo.structure, data, int(config["out"]), batch_size, dev, prober,
                    stats=stat_feats)
    net.cpu()
    return {**_metrics(config["task"], pred, data.targets), "n": len(data.states)}


