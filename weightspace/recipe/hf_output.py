"""A recipe's Hugging Face output: the directory ``from_pretrained`` loads (weights, the donor's
``config.json`` with the layer count and dtype updated, a tokenizer, a chat template, the recipe),
written next to the output and moved into place; and the tokenizer sources a recipe may name.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .spec import Recipe, _name, _notice

if TYPE_CHECKING:
    from .plan import _Plan

_TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer.model",
                    "added_tokens.json", "merges.txt", "vocab.json", "vocab.txt", "chat_template.jinja",
                    "chat_template.json", "generation_config.json")
_CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
           "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
           "{% endif %}")
_CHAT_TEMPLATES = {"chatml": _CHATML}


def _write_hf_dir(recipe: Recipe, plan: _Plan, out: Path, entries, produce, metadata: dict[str, str],
                  max_shard_size: int | str | None, progress: bool, write: torch.dtype | None) -> Path:
    """Write a Hugging Face model directory next to ``out``, then move it into place."""
    from ..checkpoint import parse_size, save_streamed

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        if max_shard_size is not None:
            limit = parse_size(max_shard_size, out)
            save_streamed(entries, produce, tmp / "model.safetensors.index.json", kind="sharded", max_bytes=limit,
                          metadata=metadata, progress=progress)
        else:
            save_streamed(entries, produce, tmp / "model.safetensors", kind="safetensors", metadata=metadata,
                          progress=progress)
        donor = plan.paths[plan.donor]
        cfg = plan.inputs[plan.donor].config
        if cfg is not None:
            cfg = dict(cfg)
            if plan.num_layers is not None:
                cfg["num_hidden_layers"] = plan.num_layers
                for key in ("layer_types",):
                    if isinstance(cfg.get(key), list) and len(cfg[key]) != plan.num_layers:
                        cfg.pop(key)
            if write is not None:
                cfg["dtype" if "torch_dtype" not in cfg else "torch_dtype"] = _name(write)
            if plan.vocab is not None:
                if isinstance(cfg.get("text_config"), dict) and "vocab_size" not in cfg:
                    cfg["text_config"] = {**cfg["text_config"], "vocab_size": plan.vocab.size}
                else:
                    cfg["vocab_size"] = plan.vocab.size
            (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        else:
            _notice(f"{recipe.source}: {donor} has no config.json; the output directory holds weights only")
        tok_dir = None
        if recipe.tokenizer_source == "base":
            tok_dir = recipe.base_model
        elif recipe.tokenizer_source == "union":  # every input's tokenizer is the same, or plan.vocab
            tok_dir = donor
        elif recipe.tokenizer_source is not None:
            tok_dir = Path(recipe.tokenizer_source)
        elif donor.is_dir():
            tok_dir = donor
        if plan.vocab is not None:  # the inputs' tokenizers differ: the output vocabulary's tokenizer
            plan.vocab.tokenizer.save_pretrained(str(tmp))
            if tok_dir is not None and (tok_dir / "generation_config.json").is_file():
                shutil.copy2(tok_dir / "generation_config.json", tmp / "generation_config.json")
        elif tok_dir is not None:
            copied = [f for f in _TOKENIZER_FILES if (tok_dir / f).is_file()]
            for f in copied:
                shutil.copy2(tok_dir / f, tmp / f)
        if recipe.chat_template is not None:
            template = _chat_template(recipe, plan)
            if template is not None:
                (tmp / "chat_template.jinja").write_text(template)
                tc = tmp / "tokenizer_config.json"
                if tc.is_file():
                    conf = json.loads(tc.read_text())
                    if "chat_template" in conf:
                        conf.pop("chat_template")
                        tc.write_text(json.dumps(conf, indent=2))
        (tmp / "weightspace_recipe.yaml").write_text(recipe.text)
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
            os.replace(out, old / "x")
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def _chat_template(recipe: Recipe, plan: _Plan) -> str | None:
    name = recipe.chat_template
    if name in _CHAT_TEMPLATES:
        return _CHAT_TEMPLATES[name]
    if name != "auto":
        return name
    found: dict[str, int] = {}
    for p in plan.paths:
        for f in ("chat_template.jinja",):
            if (p / f).is_file() if p.is_dir() else False:
                t = (p / f).read_text().strip()
                found[t] = found.get(t, 0) + 1
        tc = p / "tokenizer_config.json" if p.is_dir() else None
        if tc is not None and tc.is_file():
            t = json.loads(tc.read_text()).get("chat_template")
            if isinstance(t, str) and t.strip():
                found[t.strip()] = found.get(t.strip(), 0) + 1
    if not found:
        _notice(f"{recipe.source}: chat_template: auto found no chat template among the inputs; none written")
        return None
    return max(found.items(), key=lambda kv: kv[1])[0]
