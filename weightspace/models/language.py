"""Small byte-level causal language models, built with transformers (the ``[hf]`` extra).

Two families, the two layouts most checkpoints on the Hub follow:

- ``"gpt2"``: GPT-2 (learned positions, LayerNorm, fused ``c_attn`` stored ``(in, out)``, GELU
  MLP, the output layer tied to the token embedding);
- ``"llama"``: Llama (rotary positions, RMSNorm, separate q/k/v with grouped-query attention, a
  SwiGLU MLP, an untied output layer).

The vocabulary is the 256 byte values, so they train on ``--data python-stdlib`` or
``text:PATH`` (see :mod:`weightspace.text`) with no tokenizer, and ``save_pretrained`` gives a
Hugging Face directory that every ``weightspace`` command takes.
"""
from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["LANGUAGE_FAMILIES", "byte_language_model"]

#: The families :func:`byte_language_model` builds.
LANGUAGE_FAMILIES = ("gpt2", "llama")


def byte_language_model(family: str = "gpt2", *, width: int = 128, depth: int = 2, heads: int = 4,
                        kv_heads: int | None = None, context: int = 128) -> nn.Module:
    """A randomly initialised causal language model over bytes (seed it with :func:`torch.manual_seed`).

    Args:
        family (str, optional): ``"gpt2"`` or ``"llama"``. (default: ``"gpt2"``)
        width (int, optional): the residual width; the MLP is 4x as wide (GPT-2) or has
            ``round(8/3 * width)`` units rounded up to a multiple of 8 (Llama). (default: ``128``)
        depth (int, optional): transformer blocks. (default: ``2``)
        heads (int, optional): attention heads; ``width`` must be a multiple. (default: ``4``)
        kv_heads (int, optional): key/value heads of Llama (grouped-query attention when fewer
            than ``heads``). (default: ``heads // 2``, at least 1)
        context (int, optional): the longest sequence. (default: ``128``)

    Returns:
        nn.Module: a ``GPT2LMHeadModel`` or ``LlamaForCausalLM``; its forward takes token ids
        ``(B, T)`` and returns logits ``(B, T, 256)`` in ``.logits``.

    Raises:
        ValueError: unknown family, or sizes that do not fit (``width % heads``).
        ImportError: transformers is not installed (``pip install 'weightspace[hf]'``).
    """
    if family not in LANGUAGE_FAMILIES:
        raise ValueError(f"byte_language_model: unknown family {family!r}; choose one of: {', '.join(LANGUAGE_FAMILIES)}")
    for name, v in (("width", width), ("depth", depth), ("heads", heads), ("context", context)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"byte_language_model: {name} must be a positive integer, got {v!r}")
    if width % heads:
        raise ValueError(f"byte_language_model: width {width} is not a multiple of heads {heads}")
    kv = max(1, heads // 2) if kv_heads is None else kv_heads
    if family == "llama" and (kv < 1 or heads % kv):
        raise ValueError(f"byte_language_model: heads {heads} is not a multiple of kv_heads {kv}")
    try:
        import transformers as tf
    except ImportError:
        raise ImportError("byte_language_model needs transformers: pip install 'weightspace[hf]'") from None
    ids: dict[str, Any] = {"vocab_size": 256, "bos_token_id": 0, "eos_token_id": 0}
    if family == "gpt2":
        cfg = tf.GPT2Config(n_embd=width, n_layer=depth, n_head=heads, n_positions=context, **ids)
        return tf.GPT2LMHeadModel(cfg)
    mlp = -(-round(8 * width / 3) // 8) * 8
    cfg = tf.LlamaConfig(hidden_size=width, intermediate_size=mlp, num_hidden_layers=depth,
                         num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=context, **ids)
    return tf.LlamaForCausalLM(cfg)
