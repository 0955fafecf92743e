"""Tracer coverage: one row per architecture, random weights built from configs (nothing is
downloaded).

    python bench/coverage.py                          # every row (about a minute on 2 CPU cores)
    python bench/coverage.py --models bert,llama,resnet50

Columns: the tracer's front end (``fx`` or ``export``), the number of permutation groups, the
share of parameter elements a group acts on (``Structure.permuted_fraction``), the largest
change of the outputs, relative to their scale, when the weights are permuted at random
(``graphs.random_permutation`` + ``graphs.permute``, loaded into a float64 copy, on the model's
example input: ~1e-15 means the structure is right), whether weight matching of the model
against its own randomly permuted copy (``merging.weight_matching(structure, A, P(A))``) brings
every tensor back exactly, and the trace time (capture, rules and the tracer's own check;
the median of ``--repeats`` traces).

Rows: transformers models with a task head (``...ForMaskedLM``, ``...ForCausalLM``, ...; a bare
encoder returns its residual stream, which as a model output is never permuted), our own
families (``weightspace.get_model``), and small local blocks in the style of torchvision's
MobileNetV2, ConvNeXt, ShuffleNet and SqueezeNet. torchvision's own models are not measured
here: they need a machine where torchvision installs (its wheels need CUDA libraries on this
one).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import statistics
import sys
import time
import warnings
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from graphs import check_structure, permute, random_permutation, trace
from merging import weight_matching


# ---------------------------------------------------------------------------- torchvision-like blocks
class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expansion, 3x3 depthwise convolution, 1x1 projection, residual."""

    def __init__(self, c: int, expand: int = 4):
        super().__init__()
        h = c * expand
        self.expand = nn.Sequential(nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.project(self.dw(self.expand(x)))


class MobileNetLike(nn.Module):
    def __init__(self, c: int = 16, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU6())
        self.blocks = nn.Sequential(InvertedResidual(c), InvertedResidual(c))
        self.head = nn.Linear(c, classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class LayerNorm2d(nn.Module):
    """ConvNeXt's channels-first LayerNorm: normalise over dimension 1 of ``(N, C, H, W)``."""

    def __init__(self, c: int, eps: float = 1e-6):
        super().__init__()
        self.weight, self.bias, self.eps = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c)), eps

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class ConvNeXtBlock(nn.Module):
    """7x7 depthwise convolution, channels-last LayerNorm and MLP, layer scale, residual."""

    def __init__(self, c: int):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.fc1, self.fc2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.gamma * self.fc2(F.gelu(self.fc1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtLike(nn.Module):
    def __init__(self, c: int = 16, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 4, stride=4), LayerNorm2d(c))
        self.blocks = nn.Sequential(ConvNeXtBlock(c), ConvNeXtBlock(c))
        self.norm = LayerNorm2d(c)
        self.head = nn.Linear(c, classes)

    def forward(self, x):
        return self.head(self.norm(self.blocks(self.stem(x))).mean((2, 3)))


def channel_shuffle(x, groups: int):
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNet's unit: grouped 1x1 convolution, channel shuffle, depthwise 3x3, grouped 1x1, residual."""

    def __init__(self, c: int, groups: int = 4):
        super().__init__()
        self.groups = groups
        self.g1 = nn.Sequential(nn.Conv2d(c, c, 1, groups=groups, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False), nn.BatchNorm2d(c))
        self.g2 = nn.Sequential(nn.Conv2d(c, c, 1, groups=groups, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        y = self.g2(self.dw(channel_shuffle(self.g1(x), self.groups)))
        return F.relu(x + y)


class ShuffleNetLike(nn.Module):
    def __init__(self, c: int = 16, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.units = nn.Sequential(ShuffleUnit(c), ShuffleUnit(c))
        self.head = nn.Linear(c, classes)

    def forward(self, x):
        return self.head(self.units(self.stem(x)).mean((2, 3)))


class Fire(nn.Module):
    """SqueezeNet's fire module: 1x1 squeeze, then 1x1 and 3x3 expansions concatenated."""

    def __init__(self, cin: int, squeeze: int, e1: int, e3: int):
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.e1, self.e3 = nn.Conv2d(squeeze, e1, 1), nn.Conv2d(squeeze, e3, 3, padding=1)

    def forward(self, x):
        s = F.relu(self.squeeze(x))
        return torch.cat([F.relu(self.e1(s)), F.relu(self.e3(s))], 1)


class SqueezeNetLike(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.fire1, self.fire2 = Fire(16, 8, 16, 16), Fire(32, 8, 16, 16)
        self.classifier = nn.Conv2d(32, classes, 1)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.stem(x)), 2)
        x = self.fire2(self.fire1(x))
        return self.classifier(x).mean((2, 3))


# ---------------------------------------------------------------------------- the rows
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100)


class LogitsOnly(nn.Module):
    """A transformers model with only its logits as output (T5's ``encoder_last_hidden_state``
    is the encoder's residual stream: as an output it keeps that stream unpermuted)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, **inputs):
        return self.model(**inputs).logits


def _tf(build: Callable[[Any], nn.Module]) -> Callable[[], tuple[nn.Module, Any]]:
    def make():
        from weightspace.hf import example_input
        model = build(__import__("transformers")).eval()
        inner = model.model if isinstance(model, LogitsOnly) else model
        return model, example_input(inner)
    return make


def _ours(name: str, **kw) -> Callable[[], tuple[nn.Module, Any]]:
    def make():
        from weightspace.models import get_model
        model = get_model(name, **kw).eval()
        return model, model.example_input(2)
    return make


def _local(cls: type, size: int = 16) -> Callable[[], tuple[nn.Module, Any]]:
    def make():
        return cls().eval(), torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    return make


def _clip(tf):
    text = dict(TINY)
    vision = {k: v for k, v in TINY.items() if k != "vocab_size"} | dict(image_size=16, patch_size=4)
    return tf.CLIPForImageClassification(tf.CLIPConfig(text_config=text, vision_config=vision,
                                                       projection_dim=16, num_labels=10))


def _t5(tf):
    return tf.T5ForConditionalGeneration(tf.T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                                     vocab_size=100))


ROWS: dict[str, tuple[str, Callable[[], tuple[nn.Module, Any]]]] = {
    "bert": ("BertForMaskedLM", _tf(lambda tf: tf.BertForMaskedLM(tf.BertConfig(**TINY, max_position_embeddings=32)))),
    "distilbert": ("DistilBertForMaskedLM", _tf(lambda tf: tf.DistilBertForMaskedLM(tf.DistilBertConfig(
        dim=32, n_layers=2, n_heads=4, hidden_dim=64, vocab_size=100, max_position_embeddings=32)))),
    "roberta": ("RobertaForMaskedLM", _tf(lambda tf: tf.RobertaForMaskedLM(
        tf.RobertaConfig(**TINY, max_position_embeddings=40)))),
    "gpt2": ("GPT2LMHeadModel", _tf(lambda tf: tf.GPT2LMHeadModel(tf.GPT2Config(
        n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=32, bos_token_id=0, eos_token_id=0)))),
    "llama": ("LlamaForCausalLM (GQA 4/2)", _tf(lambda tf: tf.LlamaForCausalLM(
        tf.LlamaConfig(**TINY, num_key_value_heads=2, max_position_embeddings=32)))),
    "mistral": ("MistralForCausalLM (GQA 4/2)", _tf(lambda tf: tf.MistralForCausalLM(
        tf.MistralConfig(**TINY, num_key_value_heads=2, max_position_embeddings=32)))),
    "qwen2": ("Qwen2ForCausalLM (GQA 4/2)", _tf(lambda tf: tf.Qwen2ForCausalLM(
        tf.Qwen2Config(**TINY, num_key_value_heads=2, max_position_embeddings=32)))),
    "gemma": ("GemmaForCausalLM (GQA 4/2, RMSNorm 1 + weight)", _tf(lambda tf: tf.GemmaForCausalLM(
        tf.GemmaConfig(**TINY, num_key_value_heads=2, head_dim=8, max_position_embeddings=32)))),
    "phi3": ("Phi3ForCausalLM (fused qkv and gate_up, GQA 4/2)", _tf(lambda tf: tf.Phi3ForCausalLM(
        tf.Phi3Config(**TINY, num_key_value_heads=2, max_position_embeddings=32, pad_token_id=0)))),
    "falcon": ("FalconForCausalLM (multi-query)", _tf(lambda tf: tf.FalconForCausalLM(tf.FalconConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=100)))),
    "gpt-neox": ("GPTNeoXForCausalLM (partial rotary)", _tf(lambda tf: tf.GPTNeoXForCausalLM(
        tf.GPTNeoXConfig(**TINY, max_position_embeddings=32, rotary_pct=0.5)))),
    "gpt-bigcode": ("GPTBigCodeForCausalLM (multi-query)", _tf(lambda tf: tf.GPTBigCodeForCausalLM(
        tf.GPTBigCodeConfig(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=32)))),
    "bloom": ("BloomForCausalLM (ALiBi, baddbmm)", _tf(lambda tf: tf.BloomForCausalLM(tf.BloomConfig(
        hidden_size=32, n_layer=2, n_head=4, vocab_size=100)))),
    "t5": ("T5ForConditionalGeneration", _tf(_t5)),
    "t5-logits": ("T5ForConditionalGeneration, logits only", _tf(lambda tf: LogitsOnly(_t5(tf)))),
    "vit": ("ViTForImageClassification", _tf(lambda tf: tf.ViTForImageClassification(
        tf.ViTConfig(**{k: v for k, v in TINY.items() if k != "vocab_size"}, image_size=16, patch_size=4,
                     num_labels=10)))),
    "clip": ("CLIPForImageClassification (vision tower)", _tf(_clip)),
    "mlp": ("weightspace mlp", _ours("mlp")),
    "cnn": ("weightspace cnn", _ours("cnn")),
    "vgg": ("weightspace vgg", _ours("vgg")),
    "resnet20": ("weightspace resnet20", _ours("resnet20")),
    "resnet18": ("weightspace resnet depth 18, width 8", _ours("resnet", depth=18, width=8, num_classes=10,
                                                                   small_input=True, image_size=32)),
    "resnet50": ("weightspace resnet depth 50, width 8", _ours("resnet", depth=50, width=8, num_classes=10,
                                                                   small_input=True, image_size=32)),
    "vit-ours": ("weightspace vit", _ours("vit")),
    "mobilenetv2-block": ("MobileNetV2-style inverted residuals (local)", _local(MobileNetLike)),
    "convnext-block": ("ConvNeXt-style blocks, LayerNorm2d (local)", _local(ConvNeXtLike)),
    "shufflenet-block": ("ShuffleNet-style units, channel shuffle (local)", _local(ShuffleNetLike)),
    "squeezenet-fire": ("SqueezeNet-style fire modules (local)", _local(SqueezeNetLike)),
}
TRANSFORMERS_ROWS = ("bert", "distilbert", "roberta", "gpt2", "llama", "mistral", "qwen2", "gemma", "phi3", "falcon", "gpt-neox",
                     "gpt-bigcode", "bloom",
                     "t5", "t5-logits", "vit", "clip")


@contextlib.contextmanager
def _quiet():
    """transformers' config and loading chatter off the table."""
    logging.disable(logging.WARNING)
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def measure(key: str, seed: int = 0, repeats: int = 3) -> dict[str, Any]:
    """One row: trace, random-permutation check in float64, self-match."""
    torch.manual_seed(seed)
    with _quiet():
        model, x = ROWS[key][1]()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            s = trace(model, x)
            times.append(time.perf_counter() - t)
        elapsed = statistics.median(times)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    perms = random_permutation(s, seed + 1)
    change = check_structure(model, s, x, perms)
    moved = permute(s, state, perms)
    back = permute(s, moved, weight_matching(s, state, moved, seed=seed))
    exact = all(torch.equal(back[k], state[k]) for k in state)
    return {"row": key, "model": ROWS[key][0], "front_end": s.front_end, "groups": len(s.groups),
            "params": sum(p.numel() for p in model.parameters()),
            "permuted": s.permuted_fraction, "change": change, "self_match": exact, "trace_s": elapsed}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(ROWS), help=f"comma-separated rows (default: all): {', '.join(ROWS)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="traces per row; the time is their median (default: 3)")
    a = p.parse_args(argv)
    keys = [k.strip() for k in a.models.split(",") if k.strip()]
    bad = [k for k in keys if k not in ROWS]
    if bad:
        p.error(f"unknown rows {bad}; choose from {', '.join(ROWS)}")
    try:
        import transformers
        tf_version = transformers.__version__
    except ImportError:
        tf_version = None
    print(f"torch {torch.__version__}, transformers {tf_version or 'not installed'}, "
          f"{torch.get_num_threads()} threads")
    print("| model | front end | groups | parameters | % permuted | max rel. output change (float64) "
          "| self-match exact | trace s |")
    print("|---|---|---:|---:|---:|---:|---|---:|")
    failed = 0
    for k in keys:
        if k in TRANSFORMERS_ROWS and tf_version is None:
            print(f"| {ROWS[k][0]} | transformers not installed | | | | | | |")
            continue
        try:
            r = measure(k, a.seed, a.repeats)
        except Exception as e:  # one row's failure is a row, not the end of the table
            failed += 1
            print(f"| {ROWS[k][0]} | failed: {type(e).__name__}: {str(e).splitlines()[0][:100]} | | | | | | |")
            continue
        failed += not r["self_match"] or r["change"] > 1e-6
        print(f"| {r['model']} | {r['front_end']} | {r['groups']} | {r['params']:,} | {100 * r['permuted']:.1f} "
              f"| {r['change']:.1e} | {'yes' if r['self_match'] else 'NO'} | {r['trace_s']:.2f} |", flush=True)
    print("\ntorchvision rows (resnet18, mobilenet_v2, convnext_tiny, shufflenet_v2, squeezenet1_0, vit_b_16): "
          "not measured here; they need a machine where torchvision installs.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
