"""Files and model families for the weight-manifold hypernetwork (``weightspace hypernet``, ``resample``).

A hypernetwork file is ``.safetensors``: the :class:`merging.hypernet.HyperNet` parameters, with
metadata ``weightspace.kind = "hypernet"``, ``weightspace.hypernet`` (JSON: the HyperNet config,
the width kwarg, the trained ratios, the data spec) and the full-width model spec and input shape.

Widths: a family's hidden widths are one keyword argument holding a list of ints (``hidden`` for
``mlp``, ``channels`` for ``cnn``; ``--width-kwarg`` for others). A *ratio* r scales every entry
(rounded, at least 1); a *width* W means the ratio that gives the widest entry W units.

BatchNorm: generated networks get fresh running statistics recomputed from data
(:func:`merging.reset_batchnorm`); training runs the generated network in train mode, so
BatchNorm uses batch statistics there.
"""
from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import merging
from merging.hypernet import HyperNet, fit_hypernet, sample_state, smooth

from .api import INPUT_SHAPE_KEY, MODEL_KEY, PROVENANCE_KEY, build_model, load_model, trace_model
from .checkpoint import check_output, load_checkpoint, save
from .models import model_spec_from_json
from .pipeline import provenance
from .trust import check_data_spec, check_model_name, takes_trust_flag

__all__ = ["WIDTH_KWARGS", "HypernetFile", "parse_widths", "model_at_ratio", "train_hypernet_file",
           "load_hypernet", "resample", "KIND_KEY", "HYPERNET_KEY"]

KIND_KEY = "weightspace.kind"
HYPERNET_KEY = "weightspace.hypernet"
WIDTH_KWARGS = {"mlp": "hidden", "cnn": "channels"}
_DEFAULT_KWARGS = {"mlp": {"hidden": [64, 64]}, "cnn": {"channels": [16, 32]}}


def _width_kwarg(name: str, kwargs: dict[str, Any], width_kwarg: str | None) -> str:
    key = width_kwarg or WIDTH_KWARGS.get(name)
    if key is None:
        raise ValueError(f"hypernet: model {name!r} has no known width argument; pass --width-kwarg NAME "
                         f"(built-in: {', '.join(f'{k}={v}' for k, v in WIDTH_KWARGS.items())})")
    if key not in kwargs:
        raise ValueError(f"hypernet: the model spec of {name!r} does not set {key!r}; give it in --model-kwargs, "
                         f"e.g. '{{\"{key}\": [64, 64]}}'")
    v = kwargs[key]
    if isinstance(v, int) and not isinstance(v, bool):
        return key
    if not isinstance(v, (list, tuple)) or not v or not all(isinstance(x, int) and x > 0 for x in v):
        raise ValueError(f"hypernet: {key!r} must be a positive int or a list of them, got {v!r}")
    return key


def _full_widths(kwargs: dict[str, Any], key: str) -> list[int]:
    v = kwargs[key]
    return [v] if isinstance(v, int) else list(v)


def model_at_ratio(spec: str, width_kwarg: str, ratio: float | Sequence[float]) -> tuple[nn.Module, str]:
    """The family of ``spec`` (full width) at ``ratio`` of its widths (one ratio, or one per entry)."""
    name, kwargs = model_spec_from_json(spec)
    full = _full_widths(kwargs, width_kwarg)
    ratios = [float(ratio)] * len(full) if isinstance(ratio, (int, float)) else [float(r) for r in ratio]
    if len(ratios) != len(full):
        raise ValueError(f"resample: {len(ratios)} ratios given for {len(full)} widths {full} of {width_kwarg!r}")
    widths = [max(1, int(round(w * r))) for w, r in zip(full, ratios)]
    kw = dict(kwargs)
    kw[width_kwarg] = widths[0] if isinstance(kwargs[width_kwarg], int) else widths
    return build_model(name, kw)


def parse_widths(text: str, full_max: int) -> tuple[list[float] | None, tuple[float, float] | None]:
    """``--widths``: ``LO:HI`` (widths drawn continuously) or ``A,B,C`` (a discrete set).

    Integers are widths of the widest hidden layer; numbers with a point are ratios of full width.

    Returns:
        ``(ratios, None)`` for a set, ``(None, (lo, hi))`` for a range.
    """
    def one(s: str) -> float:
        s = s.strip()
        try:
            v = float(s) if ("." in s or "e" in s.lower()) else int(s) / full_max
        except ValueError:
            raise ValueError(f"--widths: {s!r} is not a number; use LO:HI or A,B,C (widths, or ratios such as 0.5)")
        if not 0 < v <= 1:
            raise ValueError(f"--widths: {s!r} is outside (0, full width {full_max}]")
        return v

    if ":" in text:
        lo, _, hi = text.partition(":")
        a, b = one(lo), one(hi)
        if a > b:
            raise ValueError(f"--widths {text}: LO must not exceed HI")
        return None, (a, b)
    vals = sorted({one(s) for s in text.split(",") if s.strip()})
    if not vals:
        raise ValueError(f"--widths {text!r}: give LO:HI or A,B,C")
    return vals, None


def _check_widths(spec: str, width_kwarg: str | None, widths: str):
    name, kwargs = model_spec_from_json(spec)
    key = _width_kwarg(name, kwargs, width_kwarg)
    full = _full_widths(kwargs, key)
    ratios, ratio_range = parse_widths(widths, max(full))
    return key, full, ratios, ratio_range


@dataclass
class HypernetFile:
    """A trained hypernetwork with what the CLI needs to sample from it."""

    hypernet: HyperNet
    spec: str                       # the full-width model spec
    width_kwarg: str
    ratios: list[float] | None
    ratio_range: tuple[float, float] | None
    data: str | None
    input_shape: tuple[int, ...] | None
    path: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def full_widths(self) -> list[int]:
        return _full_widths(model_spec_from_json(self.spec)[1], self.width_kwarg)

    @property
    def bounds(self) -> tuple[float, float]:
        if self.ratio_range is not None:
            return self.ratio_range
        assert self.ratios is not None
        return min(self.ratios), max(self.ratios)


def _metadata(hf: HypernetFile, provenance: dict[str, Any]) -> dict[str, str]:
    meta = {KIND_KEY: "hypernet", MODEL_KEY: hf.spec, PROVENANCE_KEY: json.dumps(provenance, sort_keys=True),
            HYPERNET_KEY: json.dumps({"config": hf.hypernet.config, "width_kwarg": hf.width_kwarg,
                                      "ratios": hf.ratios, "ratio_range": hf.ratio_range, "data": hf.data,
                                      "info": hf.info})}
    if hf.input_shape is not None:
        meta[INPUT_SHAPE_KEY] = ",".join(str(s) for s in hf.input_shape)
    return meta


@takes_trust_flag
def load_hypernet(path: str | Path, *, device: str | torch.device = "cpu") -> HypernetFile:
    """Read a hypernetwork file written by :func:`train_hypernet_file`.

    Raises:
        ValueError: the file is not a hypernetwork (e.g. an ordinary checkpoint) or is damaged.
    """
    found = load_checkpoint(path, device="cpu")
    state, info = found.state, found.info
    meta = info.metadata
    if meta.get(KIND_KEY) != "hypernet" or HYPERNET_KEY not in meta:
        raise ValueError(f"{path}: not a hypernetwork file (no {KIND_KEY}=hypernet metadata); "
                         "make one with `weightspace hypernet train`")
    try:
        rec = json.loads(meta[HYPERNET_KEY])
        hn = HyperNet(rec["config"])
        hn.load_state_dict(state)
    except (KeyError, json.JSONDecodeError, RuntimeError) as e:
        raise ValueError(f"{path}: damaged hypernetwork file ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
    check_model_name(model_spec_from_json(meta[MODEL_KEY])[0], source=str(path))
    hn.to(device).eval()
    shape = tuple(int(s) for s in meta[INPUT_SHAPE_KEY].split(",")) if INPUT_SHAPE_KEY in meta else None
    rr = rec.get("ratio_range")
    return HypernetFile(hn, meta[MODEL_KEY], rec["width_kwarg"], rec.get("ratios"),
                        tuple(rr) if rr is not None else None, rec.get("data"), shape, str(path), rec.get("info", {}))


@takes_trust_flag
def train_hypernet_file(
    out: str | Path, *, model: str | None = None, model_kwargs: str | dict | None = None, data: str = "digits",
    widths: str = "0.25:1.0", source: str | Path | None = None, width_kwarg: str | None = None,
    epochs: int = 10, lr: float = 0.05, steps: int = 600, hyper_lr: float = 1e-2, recon_weight: float = 10.0,
    coord_noise: float = 0.5, distill: float = 1.0, low_bias: float = 1.5, joint_lr_factor: float = 0.3,
    hparams: dict[str, Any] | None = None, smoothing: str = "2opt",
    device: str | torch.device = "cpu", seed: int = 0, progress: bool = True,
) -> tuple[HypernetFile, dict[str, Any]]:
    """Train a hypernetwork on a family and write it to ``out``.

    Without ``source``, a full-width network is first trained on ``data`` (``epochs``, ``lr``, SGD);
    with it, that checkpoint is the source. The source is smoothed (:func:`merging.hypernet.smooth`),
    then :func:`merging.hypernet.fit_hypernet` runs ``steps`` steps on ``data`` at the ``widths``
    (task loss plus ``distill`` times distillation from the source network). ``hparams`` go to
    :meth:`merging.hypernet.HyperNet.from_source` (by default a residual hypernetwork: the source
    merged to the asked width plus a learned correction).

    Returns:
        ``(hypernet file, summary)``: the summary has the source's accuracy, smoothing distances,
        timings and the final losses.
    """
    t0 = time.perf_counter()
    check_output(out, [source], fn="train_hypernet")  # before any training
    dev = torch.device(device)
    from .data import load_data

    if source is not None:
        loaded = load_model(source, model, model_kwargs)
        spec, shape = loaded.spec, loaded.input_shape
        module, state = loaded.module, {k: v.detach().cpu() for k, v in loaded.state.items()}
    else:
        if model is None:
            raise ValueError("hypernet train: give --model (or --from CKPT)")
        kw = dict(_DEFAULT_KWARGS.get(model, {}))
        if model_kwargs:
            kw.update(json.loads(model_kwargs) if isinstance(model_kwargs, str) else dict(model_kwargs))
        ds = load_data(data, split="train", batch_size=64)
        x0 = next(iter(ds))[0]
        if model in ("mlp",) and "in_features" not in kw:
            kw["in_features"] = int(x0[0].numel())
        if model in ("cnn",):
            kw.setdefault("in_channels", int(x0.shape[1]))
            kw.setdefault("image_size", int(x0.shape[-1]))
        shape = tuple(x0.shape[1:])
        torch.manual_seed(seed)
        module, spec = build_model(model, kw)
        key, full, ratios, ratio_range = _check_widths(spec, width_kwarg, widths)  # before any training
        from .training import train_classifier

        train_classifier(module, data, epochs=epochs, lr=lr, seed=seed, device=dev, progress=progress)
        state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    key, full, ratios, ratio_range = _check_widths(spec, width_kwarg, widths)
    module = module.cpu()
    structure = trace_model(module, input_shape=shape)
    sm = smooth(structure, state, method=smoothing, seed=seed)
    train = load_data(data, split="train", batch_size=64, shuffle=True, seed=seed)
    test = load_data(data, split="test", batch_size=512)
    source_acc = merging.evaluate(module, sm.state, test, device=dev).accuracy
    hn = HyperNet.from_source(structure, sm.state, **(hparams or {}))
    t1 = time.perf_counter()
    teacher = None
    if distill > 0:
        teacher = copy.deepcopy(module)
        teacher.load_state_dict(sm.state)
    hist = fit_hypernet(hn, lambda r: model_at_ratio(spec, key, r)[0], train, sm.state, ratios=ratios,
                        ratio_range=ratio_range, steps=steps, lr=hyper_lr, recon_weight=recon_weight,
                        coord_noise=coord_noise, joint_lr_factor=joint_lr_factor, teacher=teacher, distill=distill,
                        low_bias=low_bias, device=dev, seed=seed, progress=progress)
    tail = hist[-max(1, len(hist) // 10):]
    task = [h["task"] for h in tail if h["task"] == h["task"]]
    summary = {"source_accuracy": source_acc, "smoothing_before": sm.total_before, "smoothing_after": sm.total_after,
               "train_seconds": time.perf_counter() - t1, "seconds": time.perf_counter() - t0,
               "final_task_loss": sum(task) / len(task) if task else None,
               "final_recon_loss": sum(h["recon"] for h in tail) / len(tail), "steps": steps}
    hf = HypernetFile(hn.cpu(), spec, key, ratios, ratio_range, data, shape, str(out),
                      {"source_accuracy": source_acc, "full_widths": full})

    record = provenance("weightspace hypernet train", source=str(source) if source else None, data=data,
                        widths=widths, steps=steps, lr=hyper_lr, recon_weight=recon_weight, coord_noise=coord_noise,
                        distill=distill, low_bias=low_bias, joint_lr_factor=joint_lr_factor, hparams=hparams or {},
                        smoothing=smoothing, seed=seed)
    state_out = {k: v.detach().cpu().contiguous() for k, v in hn.state_dict().items()}
    save(state_out, out, metadata=_metadata(hf, record), inputs=[source] if source else ())
    return hf, summary


def _has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


@takes_trust_flag
def resample(
    path: str | Path, out: str | Path | None = None, *, width: int | Sequence[int] | None = None,
    ratio: float | Sequence[float] | None = None, samples: int = 1, noise: float | None = None,
    data: str | Iterable[tuple[Tensor, Tensor]] | None = None, allow_extrapolation: bool = False,
    device: str | torch.device = "cpu", seed: int = 0,
) -> tuple[nn.Module, dict[str, Tensor], str]:
    """Sample the network of ``width`` (units of the widest layer, or one per layer) or ``ratio``.

    BatchNorm statistics are recomputed from ``data`` (default: the data the hypernetwork was
    trained on). With ``out``, the checkpoint is written (``.safetensors`` with the model spec at
    that width, so :func:`weightspace.load_model` reads it).

    Returns:
        ``(module, state, spec)``.

    Raises:
        ValueError: not a hypernetwork file, both or neither of width/ratio, or a width outside the
            trained range (unless ``allow_extrapolation``).
    """
    if out is not None:
        check_output(out, [path], fn="resample")  # before any work
    hf = load_hypernet(path, device=device)
    full = hf.full_widths
    if (width is None) == (ratio is None):
        raise ValueError("resample: give exactly one of --width or --ratio")
    if width is not None:
        ws = [width] if isinstance(width, int) else list(width)
        if any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in ws):
            raise ValueError(f"resample: --width must be positive integers, got {width!r}")
        ratios = [w / max(full) for w in ws] if len(ws) == 1 else [w / f for w, f in zip(ws, full)]
        if len(ws) not in (1, len(full)):
            raise ValueError(f"resample: give one width or {len(full)} (the family has widths {full})")
    else:
        ratios = [ratio] if isinstance(ratio, (int, float)) else list(ratio)  # type: ignore[arg-type]
    lo, hi = hf.bounds
    for r in ratios:
        if not isinstance(r, (int, float)) or r <= 0:
            raise ValueError(f"resample: ratios must be positive, got {r!r}")
        if not allow_extrapolation and not (lo - 1e-9 <= r <= hi + 1e-9):
            raise ValueError(f"resample: width ratio {r:g} is outside the trained range [{lo:g}, {hi:g}] "
                             f"(widths {max(1, round(lo * max(full)))}..{round(hi * max(full))} of {path})")
    module, spec = model_at_ratio(hf.spec, hf.width_kwarg, ratios[0] if len(ratios) == 1 else ratios)
    state = sample_state(hf.hypernet, module, samples=samples, noise=noise, seed=seed)
    if _has_batchnorm(module):
        source = data if data is not None else hf.data
        if source is None:
            raise ValueError("resample: the model has BatchNorm; pass --data to recompute its statistics")
        if data is None:
            check_data_spec(source, source=str(path))
        if isinstance(source, str):
            from .data import load_data

            source = load_data(source, split="train", batch_size=128)
        state = merging.reset_batchnorm(module, state, source, device=device)
        state = {k: v.cpu() for k, v in state.items()}
    module.load_state_dict(state)
    module.eval()
    if out is not None:

        record = provenance("weightspace resample", hypernet=str(path), ratios=ratios, samples=samples, noise=noise,
                            seed=seed)
        meta = {MODEL_KEY: spec, PROVENANCE_KEY: json.dumps(record, sort_keys=True)}
        if hf.input_shape is not None:
            meta[INPUT_SHAPE_KEY] = ",".join(str(s) for s in hf.input_shape)
        save(state, out, metadata=meta, inputs=[path])
    return module, state, spec

