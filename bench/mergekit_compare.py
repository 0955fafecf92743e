"""The same recipes run by mergekit and by weightspace on the same tiny Llama models, side by side.

    python bench/mergekit_compare.py --setup          # makes /tmp/mk-venv with mergekit 0.1.5 first
    python bench/mergekit_compare.py                  # then compares every method

mergekit runs in its own virtual environment (``--venv``, default /tmp/mk-venv), made with
``python -m venv --system-site-packages`` so that it uses this machine's CPU torch, and
``pip install --no-deps mergekit==0.1.5`` plus the few dependencies it needs that are missing
(accelerate, immutables, peft, sentencepiece, protobuf), all with ``--no-deps``, so that no
CUDA torch is pulled in. mergekit is never imported by weightspace; each tool runs as a command
(``mergekit-yaml CONFIG OUT --random-seed 0`` and ``python -m weightspace.cli merge --config
CONFIG -o OUT``).

Three tiny ``LlamaForCausalLM`` models (hidden 64, 4 layers; the base, and two fine-tunes: the
base plus noise) are saved as Hugging Face directories (fp32, and bf16 copies). For each recipe
the bench prints the largest absolute difference over all tensors between the two outputs, the
number of differing values, and, for the random methods (DARE, DELLA; the masks come from
different generators), the fraction of entries each tool left at the base and the mean absolute
change from the base; for SCE, Multi-SLERP, NearSwap, Arcee Fusion and RAM, the fraction of
weightspace's values equal to the base's (so that a difference of 0 is not a no-op).

For ``tokenizer_source``, three more tiny Llamas hold different word-level tokenizers (the base's
128 tokens; one lacking 8 of them, in another order, plus 3; one with 5 more); the vocabulary
rows (``embed_tokens``, ``lm_head``) of the two outputs are compared token by token, since the
ids of tokens a union adds depend on the order mergekit visits the models in (a set's).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
DEPS = ["accelerate>=1.6,<2", "immutables>=0.21,<1", "peft>=0.18", "sentencepiece", "protobuf"]

W = "      - model: {m}\n        parameters: {p}\n"


def recipes(base: str, m1: str, m2: str) -> dict[str, str]:
    def models(p1: str, p2: str, with_base: bool = False) -> str:
        s = "models:\n"
        if with_base:
            s += f"  - model: {base}\n"
        return s + f"  - model: {m1}\n    parameters: {p1}\n  - model: {m2}\n    parameters: {p2}\n"

    b = f"base_model: {base}\n"
    r = {
        "linear": "merge_method: linear\n" + models("{weight: 0.3}", "{weight: 0.7}"),
        "task_arithmetic": "merge_method: task_arithmetic\n" + b + models("{weight: 0.6}", "{weight: 0.9}")
                           + "parameters: {lambda: 0.8}\n",
        "ties": "merge_method: ties\n" + b + models("{weight: 1.0, density: 0.4}", "{weight: 0.5, density: 0.6}"),
        "ties (tiny density)": "merge_method: ties\n" + b + models("{weight: 1.0, density: 0.001}",
                                                                   "{weight: 1.0, density: 0.3}"),
        "ties (gradient + filter)": "merge_method: ties\n" + b + models(
            "{weight: [{filter: self_attn, value: [0.2, 1.0]}, {value: 0.7}], density: [0.3, 0.9]}",
            "{weight: 0.5, density: 0.5}") + "parameters: {normalize: false}\n",
        "breadcrumbs": "merge_method: breadcrumbs\n" + b + models("{weight: 1.0, density: 0.5, gamma: 0.05}",
                                                                  "{weight: 1.0, density: 0.5}"),
        "breadcrumbs_ties": "merge_method: breadcrumbs_ties\n" + b + models("{weight: 1.0, density: 0.5}",
                                                                            "{weight: 0.7, density: 0.4}"),
        "model_stock": "merge_method: model_stock\n" + b + models("{}", "{}"),
        "nuslerp": "merge_method: nuslerp\n" + b + models("{weight: 0.3}", "{weight: 0.7}"),
        "karcher": "merge_method: karcher\n" + models("{}", "{}"),
        "slerp": f"merge_method: slerp\nbase_model: {m1}\nmodels:\n  - model: {m1}\n  - model: {m2}\n"
                 "parameters:\n  t: [0.0, 0.3, 0.7, 1.0]\n",
        "passthrough (slices)": f"merge_method: passthrough\nslices:\n  - sources: [{{model: {m1}, layer_range: [0, 3]}}]\n"
                                f"  - sources: [{{model: {m2}, layer_range: [1, 4]}}]\n",
        "model_stock (filter_wise)": "merge_method: model_stock\n" + b + models("{}", "{}")
                                     + "parameters: {filter_wise: true}\n",
        "nuslerp (row-wise, unflattened)": "merge_method: nuslerp\n" + models("{weight: 0.6}", "{weight: 0.4}")
                                           + "parameters: {nuslerp_row_wise: true, nuslerp_flatten: false}\n",
        "linear (base_model merged too)": "merge_method: linear\n" + b + models("{weight: 0.5}", "{weight: 0.2}")
                                          + "parameters: {weight: 0.3}\n",
        "ties (rescale, int8_mask, lambda)": "merge_method: ties\n" + b + models(
            "{weight: 1.0, density: 0.3}", "{weight: 0.8, density: 0.5}")
            + "parameters: {rescale: true, int8_mask: true, lambda: 1.3}\n",
        "task_arithmetic (base listed, normalize)": "merge_method: task_arithmetic\n" + b + models(
            "{weight: 0.6}", "{weight: 0.9}", with_base=True) + "parameters: {normalize: true}\n",
        "slices (ties per slice, base in sources)": f"merge_method: ties\nbase_model: {base}\nslices:\n"
            f"  - sources:\n      - {{model: {base}, layer_range: [0, 2]}}\n"
            f"      - {{model: {m1}, layer_range: [0, 2], parameters: {{weight: 1.0, density: 0.5}}}}\n"
            f"      - {{model: {m2}, layer_range: [0, 2], parameters: {{weight: 0.5, density: 0.5}}}}\n"
            f"  - sources:\n      - {{model: {base}, layer_range: [2, 4]}}\n"
            f"      - {{model: {m1}, layer_range: [2, 4], parameters: {{weight: [0.2, 1.0], density: 0.7}}}}\n"
            f"      - {{model: {m2}, layer_range: [2, 4], parameters: {{weight: 0.5, density: 0.7}}}}\n"
            f"    parameters: {{normalize: false}}\n",
        "sce": "merge_method: sce\n" + b + models("{}", "{}") + "parameters: {select_topk: 0.5}\n",
        "sce (select_topk 1, int8_mask)": "merge_method: sce\n" + b + models("{}", "{}")
                                         + "parameters: {int8_mask: true}\n",
        "multislerp": "merge_method: multislerp\n" + models("{weight: 0.3}", "{weight: 0.7}", with_base=True)
                      .replace(f"  - model: {base}\n", f"  - model: {base}\n    parameters: {{weight: 0.5}}\n"),
        "multislerp (base_model, gradient)": "merge_method: multislerp\n" + b + models(
            "{weight: [0.2, 0.8]}", "{weight: 0.5}") + "parameters: {normalize_weights: true}\n",
        "nearswap": f"merge_method: nearswap\nbase_model: {base}\nmodels:\n  - model: {m1}\n"
                    "parameters: {t: [0.002, 0.02]}\n",
        "arcee_fusion": f"merge_method: arcee_fusion\nbase_model: {base}\nmodels:\n  - model: {m1}\n",
        "ram": "merge_method: ram\n" + b + models("{}", "{}") + "parameters: {epsilon: 0.01}\n",
        "ramplus_tl": "merge_method: ramplus_tl\n" + b + models("{}", "{}")
                      + "parameters: {epsilon: 0.01, r: 0.5, alpha: 0.4}\n",
        "della_linear": "merge_method: della_linear\n" + b + models("{weight: 1.0, density: 0.4, epsilon: 0.1}",
                                                                   "{weight: 0.5, density: 0.4, epsilon: 0.1}"),
        "dare_linear": "merge_method: dare_linear\n" + b + models("{weight: 1.0, density: 0.3}",
                                                                 "{weight: 1.0, density: 0.3}"),
        "dare_ties": "merge_method: dare_ties\n" + b + models("{weight: 1.0, density: 0.3}",
                                                             "{weight: 0.5, density: 0.3}"),
        "della": "merge_method: della\n" + b + models("{weight: 1.0, density: 0.4, epsilon: 0.1}",
                                                     "{weight: 1.0, density: 0.4, epsilon: 0.1}"),
    }
    return r


RANDOM = {"dare_linear", "dare_ties", "della", "della_linear"}
# methods whose rows also say how much of the output is still the base (so a 0 diff is not a no-op)
AT_BASE = {"sce", "multislerp", "nearswap", "arcee_fusion", "ram", "ramplus_tl"}


def setup(venv: Path) -> None:
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    pip = [str(venv / "bin" / "pip"), "install", "-q", "--no-deps"]
    subprocess.run(pip + ["mergekit==0.1.5"], check=True)
    subprocess.run(pip + DEPS, check=True)
    out = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch; print(torch.__version__)"],
                         capture_output=True, text=True, check=True).stdout.strip()
    print(f"{venv}: mergekit 0.1.5 with torch {out}")


def make_models(d: Path) -> dict[str, Path]:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128)
    torch.manual_seed(0)
    base = LlamaForCausalLM(cfg)
    paths = {}
    for name, seed in (("base", None), ("m1", 1), ("m2", 2)):
        m = base if seed is None else LlamaForCausalLM(cfg)
        if seed is not None:
            torch.manual_seed(seed)
            m.load_state_dict({k: v + 0.01 * torch.randn_like(v) for k, v in base.state_dict().items()})
        m.save_pretrained(d / name)
        m.to(torch.bfloat16).save_pretrained(d / f"{name}-bf16")
        paths[name] = d / name
    return paths


VOCAB_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")


def make_vocab_models(d: Path) -> dict[str, Path]:
    """Three tiny Llamas whose word-level tokenizers differ: the base (128 tokens); v1 lacks 8 of
    them, lists the rest in another order and adds 3 tokens; v2 adds 5 tokens, 2 of them v1's. Shared
    tokens' rows are the base's plus noise, new tokens' rows random."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<unk>"] + [f"w{i}" for i in range(127)]
    vocabs = {"vbase": words,
              "v1": [w for w in words[::-1] if w not in {f"w{i}" for i in range(20, 28)}] + ["x0", "x1", "y0"],
              "v2": words + ["x0", "x1", "z0", "z1", "z2"]}
    torch.manual_seed(0)
    paths, base_rows = {}, None
    for name, vocab in vocabs.items():
        cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=len(vocab))
        m = LlamaForCausalLM(cfg)
        if base_rows is None:
            base_sd, base_rows = m.state_dict(), {k: dict(zip(words, m.state_dict()[k])) for k in VOCAB_TENSORS}
        else:
            sd = {k: v + 0.01 * torch.randn_like(v) for k, v in base_sd.items() if k not in VOCAB_TENSORS}
            for k in VOCAB_TENSORS:
                sd[k] = torch.stack([base_rows[k][w] + 0.01 * torch.randn(64) if w in base_rows[k]
                                     else torch.randn(64) * 0.02 for w in vocab])
            m.load_state_dict(sd)
        m.save_pretrained(d / name)
        t = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
        t.pre_tokenizer = pre_tokenizers.Whitespace()
        PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>").save_pretrained(str(d / name))
        paths[name] = d / name
    return paths


def by_token(d: Path, w: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The vocabulary tensors' rows reordered by token string (ids may differ between tools)."""
    vocab = json.loads((d / "tokenizer.json").read_text())["model"]["vocab"]
    added = {a["content"]: a["id"] for a in json.loads((d / "tokenizer.json").read_text())["added_tokens"]}
    ids = {**vocab, **added}
    order = torch.tensor([ids[t] for t in sorted(ids)])
    return {k: (v[order] if k in VOCAB_TENSORS else v) for k, v in w.items()}


def weights(d: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--venv", default="/tmp/mk-venv")
    p.add_argument("--setup", action="store_true", help="create the venv with mergekit 0.1.5 first")
    p.add_argument("--only", default=None, help="recipe names separated by semicolons")
    args = p.parse_args(argv)
    venv = Path(args.venv)
    if args.setup or not (venv / "bin" / "mergekit-yaml").exists():
        setup(venv)
    work = Path(tempfile.mkdtemp(prefix="mk-compare-"))
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    try:
        paths = make_models(work)
        base_w = weights(paths["base"])
        cases = recipes(*(str(paths[n]) for n in ("base", "m1", "m2")))
        cases["ties (bf16 in, dtype float32)"] = cases["ties"].replace("/base", "/base-bf16").replace(
            "/m1", "/m1-bf16").replace("/m2", "/m2-bf16") + "dtype: float32\n"
        cases["linear (bf16 in, dtype float32, out bf16)"] = cases["linear"].replace("/m1", "/m1-bf16").replace(
            "/m2", "/m2-bf16") + "dtype: float32\nout_dtype: bfloat16\n"
        cases["ties (bf16, no dtype)"] = cases["ties"].replace("/base", "/base-bf16").replace(
            "/m1", "/m1-bf16").replace("/m2", "/m2-bf16")
        vp = make_vocab_models(work)
        vb, v1, v2 = (str(vp[n]) for n in ("vbase", "v1", "v2"))
        cases["tokenizer_source: union (ties)"] = (
            f"merge_method: ties\nbase_model: {vb}\nmodels:\n  - model: {v1}\n    parameters: {{weight: 1.0, "
            f"density: 0.5}}\n  - model: {v2}\n    parameters: {{weight: 0.7, density: 0.5}}\ntokenizer_source: union\n")
        cases["tokenizer_source: union (linear, no base)"] = (
            f"merge_method: linear\nmodels:\n  - model: {v1}\n    parameters: {{weight: 0.3}}\n"
            f"  - model: {v2}\n    parameters: {{weight: 0.7}}\ntokenizer_source: union\n")
        cases["tokenizer_source: base (task_arithmetic)"] = (
            f"merge_method: task_arithmetic\nbase_model: {vb}\nmodels:\n  - model: {v1}\n    parameters: "
            f"{{weight: 0.6}}\n  - model: {v2}\n    parameters: {{weight: 0.9}}\ntokenizer_source: base\n")
        if args.only:
            cases = {k: v for k, v in cases.items() if k in args.only.split(";")}
        rows = []
        for name, text in cases.items():
            cfg = work / "recipe.yaml"
            cfg.write_text(text)
            mk_out, ws_out = work / "mk-out", work / "ws-out"
            for d in (mk_out, ws_out):
                shutil.rmtree(d, ignore_errors=True)
            r1 = subprocess.run([str(venv / "bin" / "mergekit-yaml"), str(cfg), str(mk_out), "--random-seed", "0",
                                 "--no-copy-tokenizer", "--quiet"], capture_output=True, text=True, env=env)
            r2 = subprocess.run([sys.executable, "-m", "weightspace.cli", "merge", "--config", str(cfg), "-o",
                                 str(ws_out), "--quiet"], capture_output=True, text=True, env=env)
            if r1.returncode or r2.returncode:
                rows.append((name, "mergekit failed: " + r1.stderr.strip().splitlines()[-1] if r1.returncode
                             else "weightspace failed: " + r2.stderr.strip().splitlines()[-1]))
                continue
            a, b = weights(mk_out), weights(ws_out)
            if "tokenizer_source" in text:  # compare the vocabulary rows token by token
                ta = json.loads((mk_out / "tokenizer.json").read_text())
                tb = json.loads((ws_out / "tokenizer.json").read_text())
                va = set(ta["model"]["vocab"]) | {x["content"] for x in ta["added_tokens"]}
                vb_ = set(tb["model"]["vocab"]) | {x["content"] for x in tb["added_tokens"]}
                if va != vb_:
                    rows.append((name, f"different vocabularies: {sorted(va ^ vb_)[:3]}"))
                    continue
                a, b = by_token(mk_out, a), by_token(ws_out, b)
            if set(a) != set(b):
                rows.append((name, f"different tensors: {sorted(set(a) ^ set(b))[:3]}"))
                continue
            ca, cb = (json.loads((d / "config.json").read_text()) for d in (mk_out, ws_out))
            cfg_note = "" if ca.get("num_hidden_layers") == cb.get("num_hidden_layers") else (
                f"num_hidden_layers {ca.get('num_hidden_layers')} vs {cb.get('num_hidden_layers')}")
            diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
            n_diff = sum(int((a[k] != b[k]).sum()) for k in a)
            n = sum(a[k].numel() for k in a)
            dtypes = sorted({str(a[k].dtype).replace("torch.", "") for k in a} |
                            {str(b[k].dtype).replace("torch.", "") for k in b})
            extra = ""
            if name.split(" ")[0] in AT_BASE:
                same = sum(int((b[k] == base_w[k]).sum()) for k in b if k in base_w)
                extra = f"{same / n:.3f} of weightspace's values equal the base's"
            if name in RANDOM:
                stats = []
                for w in (a, b):
                    same = sum(int((w[k] == base_w[k]).sum()) for k in w if k in base_w)
                    change = sum(float((w[k] - base_w[k]).abs().sum()) for k in w if k in base_w)
                    stats.append(f"{same / n:.3f} at base, mean |change| {change / n:.2e}")
                extra = f"mergekit {stats[0]}; weightspace {stats[1]}"
            rows.append((name, f"{diff:.3g}", f"{n_diff} of {n}", "/".join(dtypes), (extra + " " + cfg_note).strip()))
        date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        print(f"mergekit 0.1.5 vs weightspace, tiny Llama (hidden 64, 4 layers, 3 models), CPU, torch "
              f"{torch.__version__}, {date}\n")
        print("| recipe | max abs diff | values that differ | dtype | random-drop statistics |")
        print("|---|---:|---:|---|---|")
        for r in rows:
            print("| " + " | ".join(r) + " |" if len(r) > 2 else f"| {r[0]} | {r[1]} | | | |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
