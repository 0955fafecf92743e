"""Starlight: train a star model, linearly connected to every source model."""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from tqdm import tqdm

from graphs import Structure, identity_permutation, permute
from merging._atomic import atomic_write
from merging._eval import (
    LossFn,
    batchnorm_layers,
    check_reiterable,
    iter_batches,
    prepare_state,
    resolve_device,
)
from merging.many import merge_many
from merging.matching._solve import resolve_solver
from merging.matching.weight import weight_matching
from merging.repair import reset_batchnorm

__all__ = ["STATE_FORMAT", "Starlight", "TDist", "parse_t_dist"]

StateDict = dict[str, Tensor]
#: the ``format`` field of the files :class:`Starlight` writes to resume from
STATE_FORMAT = "weightspace.starlight/1"
#: the star's starts (``init=``) and learning-rate schedules of :class:`Starlight`
STAR_INITS = ("first", "mergemany")
SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TDist:
    r"""The distribution of the interpolation weight :math:`t \in [0, 1]`.

    Attributes:
        kind (str): ``"uniform"``, ``"beta"`` (with shape parameters ``a``, ``b``) or ``"const"``
            (always ``a``).
        a, b (float): the parameters (unused ones are ``0``).
    """

    kind: str
    a: float = 0.0
    b: float = 0.0

    def sample(self, generator: torch.Generator) -> float:
        """One draw, from ``generator`` only (a Beta draw is the inverse CDF of a uniform one)."""
        if self.kind == "const":
            return self.a
        u = float(torch.rand((), generator=generator, dtype=torch.float64))
        if self.kind == "uniform":
            return u
        from scipy.special import betaincinv

        return float(betaincinv(self.a, self.b, u))

    def __str__(self) -> str:
        if self.kind == "uniform":
            return "uniform"
        if self.kind == "const":
            return f"const:{self.a:g}"
        return f"beta:{self.a:g},{self.b:g}"


def parse_t_dist(spec: str | TDist) -> TDist:
    """``"uniform"``, ``"beta:A,B"`` (A, B > 0) or ``"const:T"`` (T in [0, 1]) as a :class:`TDist`.

    Raises:
        ValueError: anything else, with the accepted forms.
    """
    if isinstance(spec, TDist):
        return spec
    forms = "uniform, beta:A,B (A, B > 0) or const:T (0 <= T <= 1)"
    if not isinstance(spec, str):
        raise ValueError(f"t_dist: expected {forms}, got {spec!r}")
    kind, _, arg = spec.strip().partition(":")
    try:
        if kind == "uniform" and not arg:
            return TDist("uniform")
        if kind == "const":
            t = float(arg)
            if math.isfinite(t) and 0.0 <= t <= 1.0:
                return TDist("const", t)
        if kind == "beta":
            a, b = (float(v) for v in arg.split(","))
            if math.isfinite(a) and math.isfinite(b) and a > 0 and b > 0:
                return TDist("beta", a, b)
    except ValueError:
        pass
    raise ValueError(f"t_dist: expected {forms}, got {spec!r}")


@contextlib.contextmanager
def _train_mode(model: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.train()
        yield
    finally:
        for m, training in modes:
            m.training = training


def _fingerprint(states: Sequence[Mapping[str, Tensor]]) -> str:
    """A cheap digest of the sources (names, shapes and two sums per tensor), to refuse resuming
    with other models."""
    h = hashlib.sha256()
    for s in states:
        for k in sorted(s):
            v = s[k].detach()
            h.update(f"{k}{tuple(v.shape)}".encode())
            if v.is_floating_point():
                d = v.double()
                h.update(f"{float(d.sum()):.10e},{float(d.abs().sum()):.10e}".encode())
        h.update(b"|")
    return h.hexdigest()


def _save_atomic(obj: Any, path: Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


class Starlight:
    r"""Train a star model: one network linearly connected, with low loss, to every source model.

    Starlight (Sonthalia et al., "Do Deep Neural Network Solutions Form a Star Domain?",
    https://arxiv.org/abs/2403.07968) minimises the expected loss on the segments between the
    star :math:`\theta` and the sources :math:`\theta_1, \dots, \theta_N` (aligned to the star):

    .. math::
        \min_\theta \ \mathbb{E}_{n \sim U\{1..N\},\, t \sim p(t)}
        \ L\big((1-t)\,\theta + t\,\pi_n(\theta_n)\big)

    Each step samples a source :math:`n` and :math:`t`, evaluates the task loss on one batch at
    :math:`\theta_t = (1-t)\theta + t\,\pi_n(\theta_n)` (through
    :func:`torch.func.functional_call`, so the gradient flows to the star) and takes an
    optimiser step with the star's gradient :math:`(1-t)\,\nabla L(\theta_t)`. At the start of
    every epoch the sources are re-aligned to the current star by weight matching
    (:func:`merging.weight_matching`; ``realign=False`` aligns them once, at the start).

    The state needed to continue (star, optimiser, epoch, permutations, random number
    generators) is written atomically to ``checkpoint`` after every epoch;
    ``fit(..., resume=True)`` continues from it and gives the same star as an uninterrupted
    run, provided the data is read in the same order: pass data with a ``set_epoch(epoch)``
    method (called before every epoch, as for ``DistributedSampler``) or an unshuffled
    iterable.

    BatchNorm: interpolated networks run in train mode, so they normalise with the statistics of
    the batch; after every epoch the star's running statistics are recomputed from the data
    (:func:`merging.reset_batchnorm`). Evaluate points between the star and a source with their
    statistics reset too (``reset_bn_data`` of :func:`merging.barrier`).

    Args:
        model (nn.Module): the architecture (its own weights are ignored and left unchanged).
        structure (Structure, optional): from :func:`graphs.trace`, to align the sources; ``None``
            uses them as given (already in one basis).
        epochs (int, optional): passes over the data. (default: ``10``)
        lr (float, optional): learning rate of SGD. (default: ``0.05``)
        momentum (float, optional): SGD momentum in [0, 1). (default: ``0.9``)
        weight_decay (float, optional): L2 penalty on the star. (default: ``0.0``)
        schedule (str, optional): ``"constant"`` learning rate, or ``"cosine"`` decay from ``lr``
            to zero over all steps (needs data with a length). (default: ``"cosine"``)
        t_dist (str or TDist, optional): ``"uniform"``, ``"beta:A,B"`` or ``"const:T"``.
            (default: ``"uniform"``)
        realign (bool, optional): re-align the sources to the star every epoch. (default: ``True``)
        init (str or StateDict, optional): the star's start: ``"first"`` (a copy of the first
            source), ``"mergemany"`` (the MergeMany merge of the sources) or a state dict.
            (default: ``"first"``)
        seed (int, optional): seeds the choice of sources and ``t``. (default: ``0``)
        solver (str, optional): weight matching's assignment solver, one of
            :func:`merging.list_solvers`. (default: ``"auto"``)
        device (optional): where to train (default: the first source's device).
        checkpoint (str or PathLike, optional): the file to save the training state to after
            every epoch (``torch.save`` format). (default: ``None``, no file)
        progress (bool, optional): progress bars on stderr. (default: ``False``)
        loss_fn (callable, optional): ``loss_fn(output, y)``, the mean loss of a batch.
            (default: :func:`torch.nn.functional.cross_entropy`)

    Attributes:
        star_ (StateDict): the star model (on ``device``).
        perms_ (list[dict[str, Tensor]]): the permutation aligning each source to the star.
        history_ (list[float]): the mean training loss of every epoch.
        samples_ (list[tuple[int, float]]): the ``(source, t)`` drawn at every step.
        n_epochs_ (int): epochs done.

    Shapes:
        every tensor of the star has the shape it has in the sources.

    Example:
        >>> sl = Starlight(model, structure, epochs=5, lr=0.01).fit([s0, s1, s2], loader)  # doctest: +SKIP
        >>> star = sl.star_  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        structure: Structure | None = None,
        *,
        epochs: int = 10,
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        schedule: str = "cosine",
        t_dist: str | TDist = "uniform",
        realign: bool = True,
        init: str | Mapping[str, Tensor] = "first",
        seed: int = 0,
        solver: str = "auto",
        device: str | torch.device | None = None,
        checkpoint: str | os.PathLike | None = None,
        progress: bool = False,
        loss_fn: LossFn = F.cross_entropy,
    ) -> None:
        self.model = model
        self.structure = structure
        self.epochs = epochs
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.schedule = schedule
        self.t_dist = t_dist
        self.realign = realign
        self.init = init
        self.seed = seed
        self.solver = solver
        self.device = device
        self.checkpoint = checkpoint
        self.progress = progress
        self.loss_fn = loss_fn

    def __repr__(self) -> str:
        return (f"Starlight(epochs={self.epochs}, lr={self.lr}, momentum={self.momentum}, "
                f"t_dist={str(parse_t_dist(self.t_dist)) if isinstance(self.t_dist, (str, TDist)) else self.t_dist!r}, "
                f"realign={self.realign})")

    # ------------------------------------------------------------------ validation
    def _validate(self, sources: Sequence[Mapping[str, Tensor]]) -> TDist:
        fn = "Starlight"
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"{fn}: epochs must be a positive integer, got {self.epochs!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"{fn}: lr must be a positive number, got {self.lr!r}")
        if not (isinstance(self.momentum, (int, float)) and 0.0 <= self.momentum < 1.0):
            raise ValueError(f"{fn}: momentum must be in [0, 1), got {self.momentum!r}")
        if not (isinstance(self.weight_decay, (int, float)) and math.isfinite(self.weight_decay)
                and self.weight_decay >= 0):
            raise ValueError(f"{fn}: weight_decay must be a non-negative number, got {self.weight_decay!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"{fn}: unknown schedule {self.schedule!r}; choose one of: {', '.join(SCHEDULES)}")
        if isinstance(self.init, str) and self.init not in STAR_INITS:
            raise ValueError(f"{fn}: unknown init {self.init!r}; choose one of: {', '.join(STAR_INITS)}, "
                             "or a state dict")
        resolve_solver(self.solver, caller=fn)
        if isinstance(sources, Mapping) or not sources:
            raise ValueError(f"{fn}: needs a list of at least one source state dict")
        if self.init == "mergemany" and (self.structure is None or len(sources) < 2):
            raise ValueError(f"{fn}: init='mergemany' needs a structure and at least two sources")
        return parse_t_dist(self.t_dist)

    def _config(self, tdist: TDist, sources: Sequence[Mapping[str, Tensor]]) -> dict[str, Any]:
        return {"lr": float(self.lr), "momentum": float(self.momentum), "weight_decay": float(self.weight_decay),
                "schedule": self.schedule, **({"epochs": int(self.epochs)} if self.schedule == "cosine" else {}),
                "t_dist": str(tdist), "realign": bool(self.realign), "aligned": self.structure is not None,
                "init": self.init if isinstance(self.init, str) else "state dict", "seed": int(self.seed),
                "sources": len(sources), "fingerprint": _fingerprint(sources)}

    # ------------------------------------------------------------------ training
    def fit(self, sources: Sequence[Mapping[str, Tensor]], data: Iterable[Any], *, resume: bool = False) -> Starlight:
        """Train the star on ``data`` (re-iterable ``(x, y)`` batches); return ``self``.

        Args:
            sources (list[StateDict]): the source models (not modified).
            data (Iterable): re-iterable batches, read once per epoch; with a ``set_epoch``
                method it is called with the epoch number first.
            resume (bool, optional): continue from ``checkpoint`` (which must exist and come
                from the same sources and settings; ``epochs`` may be larger). (default: ``False``)

        Raises:
            ValueError: bad settings, sources that do not fit the model or each other, empty data,
                a missing or mismatching checkpoint to resume from, or a loss that stops being finite.
            TypeError: ``data`` is a one-shot iterator.
        """
        fn = "Starlight.fit"
        tdist = self._validate(sources)
        check_reiterable(data, fn)
        dev = resolve_device(sources[0], self.device)
        srcs = []
        for i, s in enumerate(sources):
            try:
                full = prepare_state(self.model, s, dev, fn=fn)
            except ValueError as e:
                raise ValueError(f"{e} (source {i})") from None
            srcs.append({k: full[k] for k in s})
        names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        config = self._config(tdist, sources)
        ckpt = Path(self.checkpoint) if self.checkpoint is not None else None
        if resume and ckpt is None:
            raise ValueError(f"{fn}: resume=True needs a checkpoint path")
        if ckpt is not None and not ckpt.parent.is_dir():
            raise ValueError(f"{fn}: the directory of the checkpoint {ckpt} does not exist")

        gen = torch.Generator().manual_seed(int(self.seed))
        start_epoch, history, samples = 0, [], []
        if resume:
            saved = self._load(ckpt, config, fn)
            star = {k: v.to(dev) for k, v in saved["star"].items()}
            perms = [{g: p for g, p in ps.items()} for ps in saved["perms"]]
            start_epoch, history = int(saved["epoch"]), list(saved["history"])
            samples = list(zip(saved["sample_sources"].tolist(), saved["sample_ts"].tolist()))
            gen.set_state(saved["generator"])
            torch.set_rng_state(saved["torch_rng"])
            if dev.type == "cuda" and saved.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(saved["cuda_rng"], dev)
        else:
            star = self._initial_star(srcs, dev, fn)
            perms = [identity_permutation(self.structure) if self.structure is not None else {} for _ in srcs]
        params = {k: star[k].detach().clone().requires_grad_(True) for k in names}
        opt = torch.optim.SGD(list(params.values()), lr=self.lr, momentum=self.momentum,
                              weight_decay=self.weight_decay)
        if resume:
            opt.load_state_dict(saved["optimizer"])
        extra = {k: v for k, v in prepare_state(self.model, star, dev, fn=fn).items() if k not in params}
        has_bn = bool(batchnorm_layers(self.model))
        try:
            steps_per_epoch = len(data)  # type: ignore[arg-type]
        except TypeError:
            steps_per_epoch = None
        if self.schedule == "cosine" and steps_per_epoch is None:
            raise ValueError(f"{fn}: schedule='cosine' needs data with a length (len(data))")
        total_steps = steps_per_epoch * self.epochs if steps_per_epoch else None
        bar = tqdm(total=steps_per_epoch * (self.epochs - start_epoch) if steps_per_epoch else None,
                   desc="Starlight", unit="step", file=sys.stderr, disable=not self.progress, leave=False)
        aligned = None
        try:
            for epoch in range(start_epoch, self.epochs):
                current = {**extra, **{k: p.detach() for k, p in params.items()}}
                if self.structure is not None and (self.realign or epoch == 0):
                    perms = [weight_matching(self.structure, current, s, init=p, seed=int(self.seed) + epoch,
                                             solver=self.solver)
                             for s, p in zip(srcs, perms)]
                    aligned = None
                if aligned is None:
                    aligned = [permute(self.structure, s, p) if self.structure is not None else s
                               for s, p in zip(srcs, perms)]
                if hasattr(data, "set_epoch"):
                    data.set_epoch(epoch)
                loss_sum, n = 0.0, 0
                for x, y in iter_batches(data, dev, num_batches=None, fn=fn):
                    k = int(torch.randint(len(aligned), (), generator=gen))
                    t = tdist.sample(gen)
                    samples.append((k, t))
                    src = aligned[k]
                    theta = {name: (1.0 - t) * p + t * src[name] for name, p in params.items()}
                    for name, v in extra.items():  # buffers: fresh tensors (BatchNorm updates them in place)
                        theta[name] = ((1.0 - t) * v + t * src[name]) if name in src and v.is_floating_point() \
                            else v.clone()
                    with _train_mode(self.model):
                        out = functional_call(self.model, theta, (x,), tie_weights=False)
                    loss = self.loss_fn(out, y)
                    if not torch.isfinite(loss):
                        raise ValueError(f"{fn}: the loss became {float(loss)} in epoch {epoch + 1}; lower lr "
                                         f"(now {self.lr})")
                    if self.schedule == "cosine":  # from the global step, so a resumed run continues it
                        step = min((len(samples) - 1) / total_steps, 1.0)
                        for group in opt.param_groups:
                            group["lr"] = self.lr * 0.5 * (1.0 + math.cos(math.pi * step))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    b = int(y.shape[0]) if y.ndim else 1
                    loss_sum += float(loss.detach()) * b
                    n += b
                    bar.update(1)
                if n == 0:
                    raise ValueError(f"{fn}: data yielded no batches")
                history.append(loss_sum / n)
                bar.set_postfix(epoch=epoch + 1, loss=f"{history[-1]:.3f}")
                if has_bn:
                    star_now = {**extra, **{k: p.detach() for k, p in params.items()}}
                    extra.update({k: v for k, v in reset_batchnorm(self.model, star_now, data, device=dev).items()
                                  if k in extra})
                if ckpt is not None:
                    star_now = {**extra, **{k: p.detach() for k, p in params.items()}}
                    self._save(ckpt, config, epoch + 1, star_now, opt, perms, gen, history, samples, dev)
        finally:
            bar.close()
        star = {**extra, **{k: p.detach().clone() for k, p in params.items()}}
        self.star_ = {k: star[k] for k in sources[0]}
        self.perms_ = [{g: p.cpu() for g, p in ps.items()} for ps in perms]
        self.history_ = history
        self.samples_ = samples
        self.n_epochs_ = len(history)
        return self

    def _initial_star(self, srcs: list[StateDict], dev: torch.device, fn: str) -> StateDict:
        if isinstance(self.init, Mapping):
            full = prepare_state(self.model, self.init, dev, fn=fn)
            return {k: full[k].detach().clone() for k in srcs[0]}
        if self.init == "mergemany":
            merged, _ = merge_many(self.structure, srcs, seed=int(self.seed), solver=self.solver)
            return merged  # BatchNorm statistics: recomputed after the first epoch
        return {k: v.detach().clone() for k, v in srcs[0].items()}

    def aligned_sources(self, sources: Sequence[Mapping[str, Tensor]]) -> list[StateDict]:
        """The sources in the star's basis (``perms_`` applied); call after :meth:`fit`."""
        if not hasattr(self, "perms_"):
            raise ValueError("Starlight.aligned_sources: call fit first")
        if self.structure is None:
            return [dict(s) for s in sources]
        return [permute(self.structure, dict(s), p) for s, p in zip(sources, self.perms_)]

    # ------------------------------------------------------------------ state file
    def _save(self, path: Path, config: dict[str, Any], epoch: int, star: StateDict, opt: torch.optim.Optimizer,
              perms: list[dict[str, Tensor]], gen: torch.Generator, history: list[float],
              samples: list[tuple[int, float]], dev: torch.device) -> None:
        obj = {
            "format": STATE_FORMAT, "config": config, "epoch": epoch,
            "star": {k: v.detach().cpu() for k, v in star.items()},
            "optimizer": opt.state_dict(),
            "perms": [{g: p.cpu() for g, p in ps.items()} for ps in perms],
            "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None,
            "history": list(history),
            "sample_sources": torch.tensor([k for k, _ in samples], dtype=torch.long),
            "sample_ts": torch.tensor([t for _, t in samples], dtype=torch.float64),
        }
        _save_atomic(obj, path)

    @staticmethod
    def _load(path: Path, config: dict[str, Any], fn: str) -> dict[str, Any]:
        if not path.is_file():
            raise ValueError(f"{fn}: nothing to resume from: {path} does not exist")
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
            raise ValueError(f"{fn}: cannot read the Starlight state {path}: {' '.join(str(e).split())[:160]}") from None
        if not isinstance(saved, dict) or saved.get("format") != STATE_FORMAT:
            raise ValueError(f"{fn}: {path} is not a Starlight state file (format {STATE_FORMAT})")
        for key, value in config.items():
            if saved["config"].get(key) != value:
                what = "the source models differ" if key == "fingerprint" else \
                    f"{key} was {saved['config'].get(key)!r}, now {value!r}"
                if key == "epochs":
                    what += " (a cosine schedule is fixed by the number of epochs; schedule='constant' runs can be extended)"
                raise ValueError(f"{fn}: cannot resume from {path}: {what}")
        return saved
