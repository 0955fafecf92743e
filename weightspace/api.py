"""From files and specs to models: what the CLI and user pipelines share.

A checkpoint written by weightspace records its model spec (``weightspace.model``) and
input shape (``weightspace.input_shape``) in its metadata, so both may be left out later.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from graphs import Structure, trace

from .checkpoint import brief_error, check_finite, check_fits, load_checkpoint
from .models import example_input_for, get_model, model_spec_from_json, model_spec_to_json, parse_input_shape
from .trust import check_model_name, takes_trust_flag, trusting_remote_code

__all__ = ["LoadedModel", "build_model", "check_aligned", "recorded_spec", "load_model", "trace_model",
           "trace_without_weights", "MODEL_KEY", "INPUT_SHAPE_KEY",
           "PROVENANCE_KEY"]

MODEL_KEY = "weightspace.model"
INPUT_SHAPE_KEY = "weightspace.input_shape"
PROVENANCE_KEY = "weightspace.provenance"


@dataclass
class LoadedModel:
    """A model with its weights, its spec and where it came from."""

    module: nn.Module
    state: dict[str, Tensor]
    spec: str
    input_shape: tuple[int, ...] | None = None
    path: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def example_input(self, batch_size: int = 2) -> Any:
        if self.input_shape is None and _is_hf(self.module):
            from .hf import example_input

            return example_input(self.module, batch_size)  # a dict of keyword inputs
        return example_input_for(self.module, self.input_shape, batch_size=batch_size)

    def structure(self) -> Structure:
        return trace_model(self.module, input_shape=self.input_shape)


def _parse_kwargs(model_kwargs: str | Mapping[str, Any] | None) -> dict[str, Any]:
    if model_kwargs is None or model_kwargs == "":
        return {}
    if isinstance(model_kwargs, Mapping):
        return dict(model_kwargs)
    try:
        out = json.loads(model_kwargs)
    except json.JSONDecodeError as e:
        raise ValueError(f"--model-kwargs is not valid JSON ({e.msg}): {model_kwargs!r}") from None
    if not isinstance(out, dict):
        raise ValueError(f"--model-kwargs must be a JSON object such as '{{\"width\": 2}}', got {model_kwargs!r}")
    return out


def recorded_spec(metadata: Mapping[str, str] | None, model_kwargs: str | Mapping[str, Any] | None = None
                  ) -> str | None:
    """The model spec a checkpoint's metadata records (with ``model_kwargs`` laid over its
    arguments), as normalised JSON, or ``None``; nothing is imported or built."""
    recorded = (metadata or {}).get(MODEL_KEY)
    if recorded is None:
        return None
    name, kwargs = model_spec_from_json(recorded)
    kwargs.update(_parse_kwargs(model_kwargs))
    return model_spec_to_json(name, kwargs)


def build_model(model: str | None = None, model_kwargs: str | Mapping[str, Any] | None = None, *,
                metadata: Mapping[str, str] | None = None, path: str | None = None,
                trust_model_code: bool = False, trust_remote_code: bool = False, _meta_hf: bool = False
                ) -> tuple[nn.Module, str]:
    """Build the architecture named by ``model`` (or recorded in a checkpoint's metadata).

    A recorded ``package.module:callable`` is code named by a file: it is imported only when
    ``trust_model_code`` (or inside :func:`weightspace.trusting_model_code`); pass it again as
    ``model`` to use it without trusting the file.

    With no ``model``, a Hugging Face directory (``path`` holds ``config.json``) builds the
    transformers class its config names (see :mod:`weightspace.hf`); a config with ``auto_map``
    needs ``trust_remote_code``.

    Returns:
        ``(module, spec_json)``.

    Raises:
        UntrustedCodeError: the checkpoint names code that is not allowed to run.
        ValueError: no model given and none recorded, or an unknown model / bad arguments.
    """
    from .hf import HF_SPEC_KEY, build_hf_model, is_hf_dir, looks_like_hf_weights

    if model is None and is_hf_dir(path):
        with trusting_remote_code(trust_remote_code):
            return build_hf_model(path, meta=_meta_hf)
    if model is None:
        spec = recorded_spec(metadata, model_kwargs)
        if spec is None and path is not None and looks_like_hf_weights(path):
            raise ValueError(f"{Path(path) / 'config.json'} is missing: {path} holds Hugging Face weights but no "
                             f"config to build the model from; add its config.json, or pass --model")
        if spec is None:
            where = f" {path}" if path else ""
            raise ValueError(f"checkpoint{where} does not record its model; pass --model "
                             f"(a built-in family such as mlp, or package.module:callable)")
        name, kwargs = model_spec_from_json(spec)
        check_model_name(name, source=path or "the checkpoint", trusted=trust_model_code)
    else:
        name, kwargs = model, _parse_kwargs(model_kwargs)
    if set(kwargs) == {HF_SPEC_KEY}:  # the model of a Hugging Face directory (A's, for B)
        with trusting_remote_code(trust_remote_code):
            return build_hf_model(kwargs[HF_SPEC_KEY], meta=_meta_hf)
    module = get_model(name, **kwargs)
    return module, model_spec_to_json(name, kwargs)


def load_model(path: str | Path, model: str | None = None, model_kwargs: str | Mapping[str, Any] | None = None,
               *, input_shape: str | tuple[int, ...] | None = None, device: str | torch.device = "cpu",
               check_nan: bool = True, trust_model_code: bool = False, trust_remote_code: bool = False
               ) -> LoadedModel:
    """Load a checkpoint into its architecture, checking that every tensor fits.

    Args:
        path: a checkpoint (see :func:`weightspace.load`).
        model: ``--model`` spec; default: the one recorded in the checkpoint.
        model_kwargs: JSON string or dict of keyword arguments for the family.
        input_shape: shape of one example without the batch axis; default: recorded or
            declared by the family.
        check_nan: refuse NaN / Inf weights.
        trust_model_code: allow a ``package.module:callable`` recorded in the file to be
            imported and called (see :func:`build_model`).
        trust_remote_code: allow a Hugging Face directory whose config has ``auto_map``.

    A Hugging Face directory (``config.json`` and weights) loads into the transformers model its
    config names; a tied ``lm_head.weight`` may be missing from its weights.

    Raises:
        CheckpointError: unreadable file, NaN, or tensors that do not fit the model
            (missing, unexpected, wrong shape), naming the file and the tensor.
    """
    from .hf import check_remote_code, is_hf_dir

    if is_hf_dir(path):  # B of a merge is built from A's config, but its own may not ask for remote code
        with trusting_remote_code(trust_remote_code):
            check_remote_code(path)
    found = load_checkpoint(path, device=device)
    state, info = found.state, found.info
    module, spec = build_model(model, model_kwargs, metadata=info.metadata, path=str(path),
                               trust_model_code=trust_model_code, trust_remote_code=trust_remote_code,
                               _meta_hf=True)  # a transformers model: checked on meta, loaded by transformers
    check_fits(state, module, path=str(path))
    if check_nan:
        check_finite(state, str(path))
    shape = None
    if input_shape is not None:
        shape = parse_input_shape(input_shape)
    elif INPUT_SHAPE_KEY in info.metadata:
        shape = parse_input_shape(info.metadata[INPUT_SHAPE_KEY])
    if _is_hf(module):
        from .hf import load_weights

        module = load_weights(module, state, path)
    else:
        module.load_state_dict(state, strict=False)
    module.to(device).eval()
    return LoadedModel(module, dict(state), spec, shape, str(path), dict(info.metadata))


#: below this fraction of permutable parameters a merge is mostly plain averaging: say so
ALIGNED_WARN_BELOW = 0.5


def check_aligned(structure: Structure, *, source: str, require: float | None = None) -> float:
    """Tell the user, in one line, when alignment can move little of the network.

    When no group was found, or the groups act on fewer than half of the parameters, a warning
    names what was left unpermuted and why, and that those tensors are merged by plain
    averaging. With ``require`` (a fraction in ``[0, 1]``; ``--require-aligned``) a smaller
    permuted fraction is an error instead.

    Returns:
        The permuted fraction of the parameters.

    Raises:
        ValueError: the fraction is below ``require``.
    """
    frac = structure.permuted_fraction
    if require is not None and not 0.0 <= require <= 1.0:
        raise ValueError(f"--require-aligned must be a fraction in [0, 1], got {require!r}")
    limit = ALIGNED_WARN_BELOW if require is None else require
    if frac >= limit and structure.groups:
        return frac
    why = _main_reason(structure)
    msg = (f"{source}: alignment can permute {frac:.0%} of the parameters ({len(structure.groups)} groups"
           + (f"; left unpermuted: {why}" if why else "") + ")")
    if require is not None:
        raise ValueError(f"{msg}, below --require-aligned {require:g}")
    warnings.warn(f"{msg}; the other tensors are merged by plain averaging", stacklevel=2)
    return frac


def _main_reason(structure: Structure) -> str:
    """The reason that leaves the most entries unpermuted, other than being a model input or output."""
    weight: dict[str, int] = {}
    for u in structure.unpermuted:
        if u.reason in ("model input", "model output"):
            continue
        n = 1
        for d in structure.shapes.get(u.tensor, ()):
            n *= d
        weight[u.reason] = weight.get(u.reason, 0) + n
    if not weight:
        return ""
    reason = max(weight, key=weight.get)
    return " ".join(reason.split())[:200]


def trace_model(module: nn.Module, *, input_shape: str | tuple[int, ...] | None = None,
                example_input: Any = None) -> Structure:
    """:func:`graphs.trace` with the example input taken from the model or ``input_shape``.

    A transformers model declares no input shape: it gets a dict of keyword inputs
    (:func:`weightspace.hf.example_input`), and a trace that fails or finds no groups says so in
    one warning (:func:`weightspace.hf.trace_hf`)."""
    if _is_hf(module) and input_shape is None:
        from .hf import trace_hf

        return trace_hf(module, example_input)
    if example_input is None:
        shape = parse_input_shape(input_shape) if input_shape is not None else None
        example_input = example_input_for(module, shape, batch_size=2)
    return trace(module, example_input)


def _is_hf(module: nn.Module) -> bool:
    from .hf import is_hf_module

    return is_hf_module(module)


# --------------------------------------------------------------------------- tracing without weights


def _distinct_meta_storage(module: nn.Module) -> nn.Module:
    """Give every parameter and buffer of a meta-device module its own place in one meta storage.

    Meta tensors all report ``data_ptr() == 0``, which would make the tracer take every two
    tensors of one shape for tied weights. Views at distinct offsets of one meta storage have
    distinct ``data_ptr()`` and still hold no memory; truly tied tensors (one object) stay one.
    """
    new: dict[int, tuple[Tensor, int]] = {}
    sizes: dict[torch.dtype, int] = {}
    for m in module.modules():
        for d in (m._parameters, m._buffers):
            for t in d.values():
                if t is not None and id(t) not in new:
                    new[id(t)] = (t, sizes.get(t.dtype, 0))
                    sizes[t.dtype] = sizes.get(t.dtype, 0) + max(t.numel(), 1)
    stores = {dt: torch.empty(n, dtype=dt, device="meta") for dt, n in sizes.items()}
    views: dict[int, Tensor] = {}
    for i, (t, off) in new.items():
        v = stores[t.dtype][off:off + t.numel()].view(t.shape)
        views[i] = nn.Parameter(v, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else v
    for m in module.modules():
        for d in (m._parameters, m._buffers):
            for k, t in list(d.items()):
                if t is not None:
                    d[k] = views[id(t)]
    return module


@takes_trust_flag
def trace_without_weights(model: str | None = None, model_kwargs: str | Mapping[str, Any] | None = None, *,
                          metadata: Mapping[str, str] | None = None, path: str | None = None,
                          input_shape: str | tuple[int, ...] | None = None
                          ) -> tuple[Structure, nn.Module, str]:
    """Trace a model family's permutation structure without allocating its weights.

    The module is built under ``torch.device("meta")`` and traced on a meta example input, so
    neither its parameters nor its activations take memory. A meta module computes no values,
    so the tracer's numerical check (permuting the network at random and comparing outputs) is
    skipped; the structure is the one the checked trace gives (tested on every built-in family).
    A model whose forward pass cannot run on the meta device (a data-dependent branch, say) is
    built and traced for real instead, which takes memory of the model's size; a warning says so.

    Args:
        model, model_kwargs: the ``--model`` spec, as for :func:`weightspace.build_model`.
        metadata (Mapping[str, str], optional): a checkpoint's metadata recording the model.
        path (str, optional): that checkpoint, for messages.
        input_shape (str or tuple, optional): one example's shape without the batch axis.

    Returns:
        ``(structure, module, spec)``: the module (on the meta device unless traced for real)
        serves shape checks with :func:`weightspace.check_fits`.

    Raises:
        ValueError: unknown model or bad arguments, or no input shape known.
    """
    with torch.device("meta"):
        module, spec = build_model(model, model_kwargs, metadata=metadata, path=path)
    shape = parse_input_shape(input_shape) if input_shape is not None else None
    try:
        _distinct_meta_storage(module)
        from .hf import is_hf_module

        if shape is None and is_hf_module(module):  # a transformers model: keyword inputs, traced by trace_hf
            from .hf import example_input, trace_hf

            return trace_hf(module, _to_meta(example_input(module)), check=False), module, spec
        example = example_input_for(module, shape, batch_size=2)
        example = example.to("meta") if isinstance(example, Tensor) else \
            tuple(x.to("meta") if isinstance(x, Tensor) else x for x in example)
        return trace(module, example, check=False), module, spec
    except Exception as e:  # a forward pass that needs values: trace the real model
        if isinstance(e, ValueError) and "input shape" in str(e):
            raise
        warnings.warn(f"streaming_merge: the model cannot be traced on the meta device ({brief_error(e)}); "
                      f"building it for real, which takes memory of the model's size", stacklevel=2)
        module, spec = build_model(model, model_kwargs, metadata=metadata, path=path)
        return trace_model(module, input_shape=shape), module, spec


def _to_meta(example: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.to("meta") if isinstance(v, Tensor) else v for k, v in example.items()}


