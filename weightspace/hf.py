"""Hugging Face model directories as checkpoints.

A directory holding ``config.json`` and weights (``model.safetensors``, shards
``model-0000k-of-0000N.safetensors`` with ``model.safetensors.index.json``, or
``pytorch_model.bin``, read with ``weights_only=True``) is a checkpoint whose model is built from
its config: the class named by ``architectures`` (``LlamaForCausalLM``), resolved only among
transformers' own model classes, else ``AutoModel``; built with ``from_config`` (on the meta
device when only the structure is needed). Files are data: a config with ``auto_map`` (model
code from the Hub) is refused unless remote code is trusted (``--trust-remote-code``).

The merge of Hugging Face directories is again one (see :func:`write_hf_dir`): ``config.json``,
the tokenizer files and ``generation_config.json`` copied from A, the weights as safetensors
with ``format: pt`` and the provenance in their metadata; ``from_pretrained`` loads it.

transformers is the optional ``[hf]`` extra; it is imported only when a directory needs it.
"""
from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from merging._atomic import UMASK, clean_stale, temp_path

from .checkpoint import CheckpointError, brief_error, same_file, tied_keys
from .trust import REMOTE_CODE_FLAG, UntrustedCodeError, remote_code_trusted

__all__ = ["is_hf_dir", "is_hf_module", "hf_config_path", "check_remote_code", "load_hf_config", "build_hf_model",
           "hf_spec", "checkpoint_layout", "load_weights", "example_input", "trace_hf", "check_output_dir",
           "write_hf_dir", "output_metadata", "for_evaluation", "HF_SPEC_KEY", "COPIED_FILES", "INSTALL_HINT"]

PathLike = str | os.PathLike
logger = logging.getLogger(__name__)

INSTALL_HINT = "this is a Hugging Face directory; pip install 'weightspace[hf]'"
#: The key of a model spec's arguments that names the directory whose config builds the model.
HF_SPEC_KEY = "hf_config"
#: Files of A copied next to the merged weights (besides ``config.json``), then these patterns.
COPIED_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "added_tokens.json", "merges.txt", "preprocessor_config.json",
                "chat_template.json", "chat_template.jinja")
COPIED_PATTERNS = ("vocab.*", "*.model")
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


# --------------------------------------------------------------------------- recognising


def is_hf_dir(path: PathLike | None) -> bool:
    """Whether ``path`` is a directory with a ``config.json`` (a Hugging Face model directory).
    Reads nothing and imports nothing."""
    if path is None:
        return False
    p = Path(path)
    return p.is_dir() and (p / "config.json").is_file()


def hf_config_path(path: PathLike) -> Path:
    return Path(path) / "config.json"


def looks_like_hf_weights(path: PathLike) -> bool:
    """A directory with Hugging Face weight files (whether or not it has a ``config.json``)."""
    p = Path(path)
    return p.is_dir() and any((p / n).is_file() for n in _WEIGHTS)


def is_hf_module(module: Any) -> bool:
    """Whether ``module`` is a transformers model (without importing transformers)."""
    tf = sys.modules.get("transformers")
    if tf is None:
        return False
    try:
        return isinstance(module, tf.PreTrainedModel)
    except Exception:  # a broken lazy import: not ours to report here
        return False


def _transformers(path: PathLike) -> Any:
    try:
        import transformers
    except ImportError:
        raise CheckpointError(f"{path}: {INSTALL_HINT}") from None
    return transformers


# --------------------------------------------------------------------------- config and model


def _read_config_json(path: PathLike) -> dict[str, Any]:
    cfg = hf_config_path(path)
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{cfg} is not a readable Hugging Face config ({brief_error(e)})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{cfg} is not a Hugging Face config: expected a JSON object, got "
                              f"{type(data).__name__}")
    return data


def check_remote_code(path: PathLike, data: Mapping[str, Any] | None = None, trusted: bool | None = None) -> bool:
    """Refuse a config with ``auto_map`` (model code from the Hub) unless remote code is trusted.

    Returns:
        bool: whether the config asks for remote code (and it is allowed).

    Raises:
        UntrustedCodeError: ``auto_map`` present and remote code not trusted.
    """
    data = _read_config_json(path) if data is None else data
    if "auto_map" not in data:
        return False
    trusted = remote_code_trusted() if trusted is None else trusted
    if not trusted:
        names = data["auto_map"]
        shown = ", ".join(f"{k}: {v}" for k, v in names.items())[:160] if isinstance(names, dict) else str(names)[:160]
        raise UntrustedCodeError(
            f"{hf_config_path(path)} asks for model code from outside transformers (auto_map: {shown}), which "
            f"weightspace does not run from a file; pass {REMOTE_CODE_FLAG} (trust_remote_code=True in Python) "
            f"to allow it")
    return True


def load_hf_config(path: PathLike, *, trust_remote_code: bool | None = None) -> Any:
    """The ``transformers`` config of a Hugging Face directory, after the ``auto_map`` check.

    Raises:
        UntrustedCodeError: ``auto_map`` without trusted remote code.
        CheckpointError: no ``config.json``, unreadable, unknown ``model_type``, or transformers missing.
    """
    p = Path(path)
    if not hf_config_path(p).is_file():
        raise CheckpointError(f"{p} is not a Hugging Face model directory: {hf_config_path(p)} is missing")
    data = _read_config_json(p)
    remote = check_remote_code(p, data, trust_remote_code)
    tf = _transformers(p)
    try:
        with _quiet(tf):
            return tf.AutoConfig.from_pretrained(str(p), trust_remote_code=remote, local_files_only=True)
    except Exception as e:
        raise CheckpointError(f"{hf_config_path(p)}: transformers cannot read this config "
                              f"({brief_error(e)})") from None


@contextmanager
def _quiet(tf: Any) -> Iterator[None]:
    """transformers' own notes on a config (token ids outside a tiny vocabulary, ...) and its
    progress bars are not ours to print; its errors still raise."""
    verbosity = tf.logging.get_verbosity()
    bars = getattr(tf.utils.logging, "is_progress_bar_enabled", lambda: False)()
    tf.logging.set_verbosity_error()
    if bars:
        tf.logging.disable_progress_bar()
    try:
        yield
    finally:
        tf.logging.set_verbosity(verbosity)
        if bars:
            tf.logging.enable_progress_bar()


def _architecture(config: Any, path: Path) -> tuple[Callable[[Any], nn.Module], str]:
    """How to build the model of ``config``: ``(factory(config) -> module, class name)``."""
    tf = _transformers(path)
    archs = getattr(config, "architectures", None) or []
    auto_map = getattr(config, "auto_map", None) or {}
    if archs:
        name = str(archs[0])
        try:
            cls = getattr(tf, name, None) if name.isidentifier() else None
        except Exception as e:  # a lazy import that fails (a missing optional dependency)
            raise CheckpointError(f"{hf_config_path(path)} names the architecture {name!r}, which transformers "
                                  f"cannot import here ({brief_error(e)})") from None
        ours = isinstance(cls, type) and issubclass(cls, tf.PreTrainedModel) \
            and (cls.__module__ or "").split(".")[0] == "transformers"
        if ours:
            return cls._from_config, name
        remote = [k for k in auto_map if k.startswith("AutoModel") and hasattr(tf, k)]
        if remote and remote_code_trusted():
            auto = getattr(tf, remote[0])
            return (lambda c: auto.from_config(c, trust_remote_code=True)), name
        raise CheckpointError(f"{hf_config_path(path)} names the architecture {name!r}, which is not a model "
                              f"class of transformers {tf.__version__}; weightspace builds models only from "
                              f"transformers' own classes")
    warnings.warn(f"{hf_config_path(path)} names no architectures; building transformers' AutoModel for "
                  f"model_type {getattr(config, 'model_type', '?')!r} (the base model, without a head)",
                  stacklevel=3)
    return (lambda c: tf.AutoModel.from_config(c, trust_remote_code=bool(auto_map) and remote_code_trusted())), \
        "AutoModel"


def hf_spec(name: str, path: PathLike) -> str:
    """The model spec (JSON) of a Hugging Face directory's model: its class, built from its config."""
    from .models import model_spec_to_json

    return model_spec_to_json(name, {HF_SPEC_KEY: str(path)})


def build_hf_model(path: PathLike, *, meta: bool = False, trust_remote_code: bool | None = None
                   ) -> tuple[nn.Module, str]:
    """Build the model of a Hugging Face directory from its ``config.json``.

    Args:
        path (str or PathLike): the directory.
        meta (bool, optional): build on the meta device (no memory for the weights). Also done
            when called inside ``with torch.device("meta")``. (default: ``False``)
        trust_remote_code (bool, optional): allow ``auto_map``; default: the trust context
            (:func:`weightspace.trust.trusting_remote_code`).

    Returns:
        ``(module, spec_json)``; the module is in eval mode, its weights random (load them).

    Raises:
        UntrustedCodeError: ``auto_map`` without trusted remote code.
        CheckpointError: no or bad ``config.json``, an architecture transformers does not have,
            transformers missing, or a model transformers fails to build.
    """
    p = Path(path)
    config = load_hf_config(p, trust_remote_code=trust_remote_code)
    factory, name = _architecture(config, p)
    tf = _transformers(p)
    try:
        with _quiet(tf):
            if meta:
                with torch.device("meta"):
                    module = factory(config)
            else:
                module = factory(config)
    except Exception as e:
        raise CheckpointError(f"{hf_config_path(p)}: transformers cannot build {name} from this config "
                              f"({brief_error(e)})") from None
    module.eval()
    return module, hf_spec(name, p)


def checkpoint_layout(module: nn.Module) -> dict[str, Tensor] | None:
    """The names and shapes (as meta tensors) under which transformers saves ``module``'s weights,
    when they differ from its ``state_dict()``; ``None`` when they are the same or ``module`` is no
    transformers model.

    transformers 5 renames (and may fuse) some models' weights between their files and their
    modules (its weight conversions, e.g. ViT's ``attention.attention.query`` is the module's
    ``attention.q_proj``); the files keep the original layout. A merge works on the files' layout.
    """
    if not is_hf_module(module):
        return None
    if "_weightspace_layout" in module.__dict__:
        return module.__dict__["_weightspace_layout"]
    layout = None
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers 4: files and modules agree
        revert_weight_conversion = None
    if revert_weight_conversion is not None:
        sd = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in module.state_dict().items()}
        try:
            out = revert_weight_conversion(module, dict(sd))
        except Exception as e:
            raise CheckpointError(f"{type(module).__name__}: transformers cannot say how its weights are stored "
                                  f"({brief_error(e)})") from None
        if set(out) != set(sd) or any(tuple(out[k].shape) != tuple(sd[k].shape) for k in out):
            layout = dict(out)
    module.__dict__["_weightspace_layout"] = layout
    return layout


def load_weights(module: nn.Module, state: Mapping[str, Tensor], path: PathLike) -> nn.Module:
    """The model ``module`` describes (possibly on the meta device), with the weights of the
    Hugging Face directory ``path``, whose tensors ``state`` holds (checked to fit beforehand).

    transformers loads them itself, ``from_pretrained`` of the directory with ``module``'s
    class and config (local files only): no random initialisation first, tied weights tied,
    and the weights it renames or converts between files and modules (see
    :func:`checkpoint_layout`) converted as for any user of the model.
    """
    tf = _transformers(path)
    try:
        with _quiet(tf):
            loaded = type(module).from_pretrained(str(path), config=module.config, local_files_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: transformers cannot load these weights into {type(module).__name__} "
                              f"({brief_error(e)})") from None
    return loaded.eval()


# --------------------------------------------------------------------------- tracing


def example_input(module: nn.Module, batch_size: int = 2, *, seq_len: int = 8, seed: int = 0) -> dict[str, Any]:
    """An example batch of keyword inputs for a transformers model.

    Text models: ``{"input_ids": (batch_size, seq_len) within the vocabulary, "attention_mask":
    ones}``, plus ``decoder_input_ids`` for encoder-decoder models (T5, BART); vision models
    (``main_input_name == "pixel_values"``: ViT, CLIP's vision tower): ``{"pixel_values":
    (batch_size, channels, image_size, image_size)}``; models with both a text and a vision
    config (CLIP): both. ``use_cache=False`` where the forward takes it.
    """
    config = module.config
    param = next(iter(module.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    g = torch.Generator().manual_seed(seed)
    main = getattr(module, "main_input_name", "input_ids")
    vision = getattr(config, "vision_config", None)
    text = getattr(config, "text_config", None)
    out: dict[str, Any] = {}
    if main == "pixel_values" or (vision is not None and text is not None):
        vc = vision or config
        size = getattr(vc, "image_size", 224)
        h, w = (size, size) if isinstance(size, int) else tuple(size)[:2]
        channels = getattr(vc, "num_channels", 3)
        out["pixel_values"] = torch.randn(batch_size, channels, h, w, generator=g).to(device=device, dtype=dtype)
    if main != "pixel_values":
        vocab = getattr(config, "vocab_size", None)
        if vocab is None and text is not None:
            vocab = getattr(text, "vocab_size", None)
        ids = torch.randint(0, int(vocab or 2), (batch_size, seq_len), generator=g).to(device)
        out["input_ids"] = ids
        out["attention_mask"] = torch.ones_like(ids)
        if getattr(config, "is_encoder_decoder", False):
            out["decoder_input_ids"] = ids.clone()
    if "use_cache" in inspect.signature(module.forward).parameters:
        out["use_cache"] = False  # a returned cache object cannot be exported, and merging needs none
    return out


def _drop_tied(structure: Any, module: nn.Module) -> Any:
    """``structure`` without the second names of tied tensors (``lm_head.weight`` when it is the
    embedding): checkpoints omit them, and transformers ties them again on loading."""
    tied = tied_keys(module)
    order = list(module.state_dict(keep_vars=True))
    drop = {k for k, others in tied.items() if any(order.index(o) < order.index(k) for o in others)}
    drop &= set(structure.axes)
    if not drop:
        return structure
    groups = {g: replace(grp, members=tuple(m for m in grp.members if m[0] not in drop))
              for g, grp in structure.groups.items()}
    return replace(structure, groups={g: grp for g, grp in groups.items() if grp.members},
                   axes={k: v for k, v in structure.axes.items() if k not in drop},
                   shapes={k: v for k, v in structure.shapes.items() if k not in drop},
                   unpermuted=[u for u in structure.unpermuted if u.tensor not in drop],
                   buffers=frozenset(b for b in structure.buffers if b not in drop))


def trace_hf(module: nn.Module, example: Any = None, *, check: bool = True) -> Any:
    """:func:`graphs.trace` of a transformers model on its keyword example input.

    A model the tracer cannot take apart is not an error: its structure has no groups and says
    why in ``unpermuted``, which :func:`weightspace.api.check_aligned` reports in one line (the
    merge is then plain averaging of those tensors). Tied tensors appear once (see
    :func:`_drop_tied`).
    """
    from graphs import Structure, trace
    from graphs.structure import Unpermuted

    def unaligned(shapes: Mapping[str, tuple[int, ...]], reason: str) -> Structure:
        s = Structure.from_axes({}, dict(shapes))
        s.unpermuted.extend(Unpermuted(k, 0, v[0], reason) for k, v in shapes.items() if v)
        return s

    if example is None:
        example = example_input(module)
    name = type(module).__name__
    layout = checkpoint_layout(module)
    if layout is not None:
        return unaligned({k: tuple(v.shape) for k, v in layout.items()},
                         f"{name}'s files name and shape weights differently from its modules (transformers "
                         f"weight conversion), so a traced structure would not fit them")
    try:
        structure = trace(module, example, check=check)
    except Exception as e:  # the tracer does not take a dict of keyword inputs (yet)
        inputs = sorted(example) if isinstance(example, Mapping) else type(example).__name__
        structure = unaligned({k: tuple(v.shape) for k, v in module.state_dict().items()},
                              f"the tracer rejected {name}'s inputs {inputs} ({brief_error(e)})")
    return _drop_tied(structure, module)


# --------------------------------------------------------------------------- writing


def output_metadata(provenance_key: str, provenance: Mapping[str, Any]) -> dict[str, str]:
    """The safetensors metadata of merged Hugging Face weights: ``format: pt`` (which
    transformers checks) and the provenance record."""
    return {"format": "pt", provenance_key: json.dumps(dict(provenance), sort_keys=True)}


def _files(path: Path) -> list[Path]:
    try:
        return [f for f in path.iterdir()]
    except OSError:
        return []


def check_output_dir(out: PathLike, inputs: Iterable[PathLike], fn: str = "merge_checkpoints") -> Path:
    """Check that the Hugging Face output directory ``out`` may be written.

    ``out`` may not exist yet, be empty, or be an earlier model directory (it holds
    ``config.json``), which is replaced whole. It may not be a file, an input, or hold an input.

    Raises:
        CheckpointError: one line naming the directory and the problem.
    """
    out = Path(out)
    if out.name.endswith(".index.json") or out.suffix in (".safetensors", ".pt", ".pth", ".bin", ".ckpt"):
        raise CheckpointError(f"{fn}: the inputs are Hugging Face directories, so the output {out} is one too; "
                              f"give a directory path (e.g. -o merged/)")
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{fn}: the output {out} exists and is not a directory; give a directory path")
    if out.exists():
        for p in inputs:
            p = Path(p)
            if same_file(out, p) or any(same_file(out, q) for q in p.resolve().parents):
                raise CheckpointError(f"{fn}: refusing to write the output {out} over the input {p}; choose "
                                      f"another output directory")
    if out.is_dir():
        held = _files(out)
        if held and not (out / "config.json").is_file():
            names = sorted(f.name for f in held)[:5]
            raise CheckpointError(f"{fn}: the output directory {out} exists and is not a model directory "
                                  f"(it holds {names}{' ...' if len(held) > 5 else ''}, no config.json); "
                                  f"give a new or empty directory")
    return out


def _copy_side_files(source: Path, dest: Path) -> list[str]:
    names = [n for n in COPIED_FILES if (source / n).is_file()]
    for pat in COPIED_PATTERNS:
        names += sorted(f.name for f in source.glob(pat) if f.is_file() and f.name not in names)
    for n in names:
        shutil.copyfile(source / n, dest / n)
    return names


def write_hf_dir(out: PathLike, source: PathLike, write_weights: Callable[[Path], Any],
                 inputs: Iterable[PathLike], fn: str = "merge_checkpoints") -> Path:
    """Write a Hugging Face model directory atomically.

    A temporary directory ``.OUT.weightspace-tmp-<pid>-<random>@<host>`` next to ``out`` (removed by
    a later write when its process is dead) receives the weights
    (``write_weights(tmp)`` writes ``model.safetensors``, or shards and
    ``model.safetensors.index.json``), then ``config.json``, ``generation_config.json`` and the
    tokenizer files of ``source``; only when all are written is it renamed to ``out`` (an
    earlier model directory there is moved aside first, then deleted). On any error the
    temporary directory is removed and ``out`` is left as it was.

    Returns:
        Path: ``out``.
    """
    out = check_output_dir(out, inputs, fn)
    source = Path(source)
    parent = out.parent if str(out.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    aside = out.with_name(out.name + ".old")
    clean_stale(out)
    clean_stale(aside)
    tmp = temp_path(out)
    tmp.mkdir()
    try:
        write_weights(tmp)
        copied = _copy_side_files(source, tmp)
        os.chmod(tmp, 0o777 & ~UMASK)
        logger.info("%s: copied %s from %s", fn, ", ".join(copied), source)
        old = None
        if out.exists():
            old = temp_path(aside)
            old.mkdir()
            os.rename(out, old / out.name)
        try:
            os.rename(tmp, out)
        except BaseException:
            if old is not None:
                os.rename(old / out.name, out)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(parent)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, (ValueError, KeyboardInterrupt)) or not isinstance(e, Exception):
            raise
        raise CheckpointError(f"{fn}: writing {out} failed, nothing was replaced: {brief_error(e)}") from e
    return out


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    except OSError:
        pass


# --------------------------------------------------------------------------- evaluation


def _module_names(module: nn.Module) -> dict[str, str] | None:
    """File name -> module name of each weight, when transformers only renames them between the
    two (``None`` when it also reshapes, splits or fuses them)."""
    from transformers.core_model_loading import revert_weight_conversion

    sd = module.state_dict()
    by_id = {id(v): k for k, v in sd.items()}
    out = revert_weight_conversion(module, dict(sd))
    if len(out) != len(sd) or not all(id(v) in by_id for v in out.values()):
        return None
    return {k: by_id[id(v)] for k, v in out.items()}


def _logits(module: nn.Module, inputs: Any, output: Any) -> Any:
    """The forward hook of :func:`for_evaluation`: the output's logits, the class axis second
    (:func:`weightspace.training.logits_of`); an output without logits passes through."""
    from .training import logits_of

    try:
        return logits_of(output)
    except TypeError:
        return output


def for_evaluation(module: nn.Module, state: Mapping[str, Tensor], path: PathLike | None = None,
                   fn: str = "barrier_between") -> dict[str, Tensor]:
    """Prepare a transformers model and one of its state dicts to be run on ``(x, y)`` batches.

    The module's forward then returns its logits (a tensor, as the evaluation and data checks
    expect, not a ``ModelOutput``); the state dict is returned under the module's own names, with
    its tied tensors under each of their names (``functional_call`` binds every key). From then
    on the module's weights are named as in the returned state (``check_fits``, the tracer).

    Raises:
        CheckpointError: transformers converts (not only renames) this model's weights on loading.
    """
    layout = checkpoint_layout(module)
    out = dict(state)
    if layout is not None:
        names = _module_names(module)
        if names is None:
            raise CheckpointError(f"{fn}: transformers converts the weights of {type(module).__name__} from "
                                  f"{path or 'its files'} on loading (not only renames them); running it on "
                                  f"data is not supported yet")
        out = {names.get(k, k): v for k, v in out.items()}
    for k, others in tied_keys(module).items():
        if k not in out:
            src = next((o for o in others if o in out), None)
            if src is not None:
                out[k] = out[src]
    module.__dict__["_weightspace_layout"] = None
    if not module.__dict__.get("_weightspace_logits_hook"):
        module.register_forward_hook(_logits)
        module.__dict__["_weightspace_logits_hook"] = True
    return out
