"""Training a metanetwork: the losses, the learning-rate schedules, augmentation seeds, and
:func:`train_metanet`."""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from graphs import permute, random_permutation
from merging._atomic import atomic_write

from ..distributed import distributed_context
from ..trust import takes_trust_flag
from .archs import FORMAT, TENSOR_ARCHS, build_metanet, default_hidden, get_metanet_arch, train_defaults
from .data import layer_scales, ZooSplit, weight_tensors, LoadedZoo
from .evaluate import _device, metanet_metrics, _predict
from .features import (PROBE_SOURCES, collate_networks, _data_probes, _Prober, probestat_features, _resolve_probes,
                       _resolve_stats, WeightStats)
from .result import MetanetResult

LOSSES = ("mse", "rank")
SCHEDULES = ("constant", "cosine")
SELECTS = ("loss", "kendall_tau")
_RANK_TEMPERATURE = 0.02   # accuracy units: pairs predicted this far apart in the right order cost little


def rank_loss(pred: Tensor, y: Tensor) -> Tensor:
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


def metanet_loss(task: str, pred: Tensor, y: Tensor, kind: str = "mse") -> Tensor:
    """The training loss: cross-entropy (``task="class"``), else squared error, plus
    :func:`rank_loss` with ``kind="rank"``."""
    if task == "class":
        return F.cross_entropy(pred, y)
    p = pred.squeeze(1)
    mse = F.mse_loss(p, y)
    return mse + rank_loss(p, y) if kind == "rank" else mse


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: torch.save(obj, f))


def augmentation_seed(seed: int, epoch: int, index: int) -> int:
    """The permutation seed of training network ``index`` in ``epoch``: a function of the three
    alone, so every process of a distributed run draws the permutation the single process would."""
    return (((seed * 1_000_003) ^ (epoch * 7_919)) * 2_654_435_761 + index * 40_503) % (2**31 - 1)


def _check_args(zoo_dir: str | os.PathLike, out: str | os.PathLike | None, *, task: str, arch: str,
                epochs: int | None, lr: float | None, batch_size: int | None, patience: int | None,
                weight_decay: float | None, probes: int | str, probe_source: str, stats: bool | str,
                loss: str, schedule: str, select: str) -> tuple[int, float, int, int, float]:
    """Check the arguments of :func:`train_metanet` before the zoo is read, and fill in the arch's
    training defaults: ``(epochs, lr, batch_size, patience, weight_decay)``."""
    get_metanet_arch(arch, "train_metanet")
    if out is not None:
        from ..checkpoint import check_output

        check_output(out, [zoo_dir], fn="train_metanet")  # never over the zoo's card, metrics or shards
    dflt = train_defaults(arch)
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
    return epochs, lr, batch_size, patience, weight_decay


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

    epochs, lr, batch_size, patience, weight_decay = _check_args(
        zoo_dir, out, task=task, arch=arch, epochs=epochs, lr=lr, batch_size=batch_size, patience=patience,
        weight_decay=weight_decay, probes=probes, probe_source=probe_source, stats=stats, loss=loss,
        schedule=schedule, select=select)
    dev = _device(device)
    t0 = time.perf_counter()
    zoo = LoadedZoo(zoo_dir, task, target, checkpoints)
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
                                  "out": out_dim, "hidden": int(hidden or default_hidden(arch)), "num_layers": 3,
                                  "model_spec": zoo.card.model_spec, "zoo": str(zoo.root),
                                  "checkpoints": checkpoints}
        if arch in TENSOR_ARCHS:
            from ..nn import NetworkSpec

            w, b = weight_tensors(train.states[0])
            try:
                config["spec"] = NetworkSpec.from_tensors(w, b).to_dict()
            except ValueError as e:
                raise ValueError(f"train_metanet: arch {arch!r} cannot read this zoo ({e}); use --arch gnn") from None
            config["scales"] = layer_scales(train.states)
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
            feats = {k: probestat_features(config, s.states, "train_metanet") for k, s in zoo.splits.items()}
            ft = feats["train"]
            sd = ft.std(0, unbiased=False) if ft.shape[0] > 1 else torch.ones(ft.shape[1])
            config["feature_mean"] = ft.mean(0).tolist()
            config["feature_scale"] = torch.where(sd > 1e-6, sd, torch.ones_like(sd)).tolist()
            zoo.splits = {k: ZooSplit(list(feats[k]), s.targets) for k, s in zoo.splits.items()}
            train, val = zoo.splits["train"], zoo.splits["val"]
            select_on = val if val.states else train
        elif _resolve_stats(stats, arch, task):
            stat_feats = WeightStats({})
            config["stats_mean"], config["stats_scale"] = stat_feats.fit(train.states[:1024])
        torch.manual_seed(seed)
        model = build_metanet(config).to(dev)
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
                    states = [permute(zoo.structure, s, random_permutation(zoo.structure, seed=augmentation_seed(seed, epoch, j)))
                              for s, j in zip(states, idx)]
                pred = ddp(collate_networks(arch, zoo.structure, states, dev, prober, stat_feats))
                step_loss = metanet_loss(task, pred.float(), train.targets[idx].to(dev), loss)
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
            vm = metanet_metrics(task, pv, select_on.targets)
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
        metrics = {name: metanet_metrics(task, _predict(model, arch, zoo.structure, s, out_dim, 64, dev, prober, ctx,
                                                  stat_feats), s.targets)
                   for name, s in zoo.splits.items()}
        ctx.barrier()   # the checkpoint is on disk before any process returns
    finally:
        ctx.close()
    model = model.cpu().eval()
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return MetanetResult(model, config, history, best_epoch, metrics, n_params, time.perf_counter() - t0, path)
