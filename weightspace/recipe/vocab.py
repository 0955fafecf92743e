"""Vocabularies of a recipe's output (``tokenizer_source``): the output tokenizer (the base's, a
model's, or the union of every input's), and, for each input, which of its embedding rows each
output token takes, as mergekit 0.1.5 builds them (``mergekit/tokenizer``).

When the inputs hold different tokenizers, every vocabulary tensor (``embed_tokens``,
``lm_head``: a tensor outside the layers whose first axis has the model's ``vocab_size`` rows) of
every input is re-indexed to the output vocabulary before the merge, token by token; a token an
input lacks takes, in that input,

- the row of the one input that has it, when only one has it;
- the base model's row, when several have it and the base is one of them;
- the mean of the rows of the inputs that have it, otherwise;
- zeros, when no input has it.

So a token only one model knows keeps that model's embedding in the merge, whatever the method.
Tokenizers are read with ``transformers`` (the ``[hf]`` extra), imported only here and only when
the inputs' tokenizer files differ.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .spec import RecipeError

#: tokenizer files whose bytes decide whether the inputs share one tokenizer
_TOKENIZER_DATA = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt", "added_tokens.json",
                   "tokenizer_config.json", "special_tokens_map.json")
_VOCAB_NAME = re.compile(r"(embed|lm_head|wte|word_embeddings|(^|\.)output\.weight$)")


@dataclass
class _Vocabulary:
    """The output vocabulary and how each input's rows map into it.

    Attributes:
        tokenizer: the output tokenizer (a ``transformers`` tokenizer, saved with the output).
        size (int): the number of output tokens (rows of each vocabulary tensor).
        rows (dict[int, Tensor]): per input index, ``(size,)`` row of that input for each output
            token, ``-1`` where the input lacks the token.
        base (int, optional): the input index of the recipe's ``base_model``.
        names (set[str]): the vocabulary tensors (their names in the inputs).
        added (int): output tokens that the base's tokenizer lacks.
    """

    tokenizer: Any
    size: int
    rows: dict[int, Tensor]
    base: int | None
    names: set[str] = field(default_factory=set)
    added: int = 0

    def align(self, tensors: dict[int, Tensor]) -> dict[int, Tensor]:
        """Re-index each input's vocabulary tensor (``(rows_i, *rest)``) to the output vocabulary
        (``(size, *rest)``), in the inputs' promoted dtype, filling the tokens an input lacks as
        the module docstring says."""
        order = list(tensors)
        dt = tensors[order[0]].dtype
        for t in tensors.values():
            dt = torch.promote_types(dt, t.dtype)
        rest = tensors[order[0]].shape[1:]
        idx = torch.stack([self.rows[i] for i in order])  # (M, V)
        present = idx >= 0
        count = present.sum(0)
        fill = torch.zeros((self.size, *rest), dtype=dt)
        total = torch.zeros((self.size, *rest), dtype=dt)
        for m, i in enumerate(order):
            has = present[m]
            total[has] = total[has] + tensors[i][idx[m][has]].to(dt)
        several = count > 1
        fill[several] = total[several] / count[several].to(dt).reshape(-1, *([1] * len(rest)))
        if self.base is not None and self.base in tensors:
            m = order.index(self.base)
            take = several & present[m]
            fill[take] = tensors[self.base][idx[m][take]].to(dt)
        one = count == 1
        fill[one] = total[one]  # the one input that has the token: its row (0 + row)
        out = {}
        for m, i in enumerate(order):
            new = fill.clone()
            has = present[m]
            new[has] = tensors[i][idx[m][has]].to(dt)
            out[i] = new
        return out


def _tokenizer_bytes(d: Path) -> bytes:
    return b"\0".join(f.encode() + b"=" + (d / f).read_bytes() for f in _TOKENIZER_DATA if (d / f).is_file())


def _vocab_size(config: dict[str, Any] | None) -> int | None:
    if not config:
        return None
    v = config.get("vocab_size")
    if v is None and isinstance(config.get("text_config"), dict):
        v = config["text_config"].get("vocab_size")
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def plan_vocabulary(err: Callable[[str, str], RecipeError], source: str | Path, paths: Sequence[Path],
                    configs: Sequence[dict[str, Any] | None], base: int | None) -> _Vocabulary | None:
    """The output vocabulary for ``tokenizer_source`` over the inputs ``paths`` (input index =
    position), or ``None`` when the inputs share one vocabulary: the same tokenizer files, or
    tokenizers that give every token the same id, with as many embedding rows (the embeddings are
    then merged row by row as they are, and the source's tokenizer files are copied).

    Raises:
        RecipeError: (naming ``tokenizer_source`` and the file) an input that is not a model
            directory with a tokenizer (``union``), a tokenizer that cannot be read, no
            ``transformers``, or a model whose tokenizer has tokens beyond its ``vocab_size``.
    """
    where = "tokenizer_source"
    if not all(p.is_dir() for p in paths):
        if source == "union":
            f = next(p for p in paths if not p.is_dir())
            raise err(where, f"'union' needs model directories holding tokenizers; {f} is a file")
        return None
    blobs = [_tokenizer_bytes(p) for p in paths]
    for p, b in zip(paths, blobs):
        if not b and source == "union":
            raise err(where, f"'union': {p} holds no tokenizer")
    if len(set(blobs)) == 1:
        return None
    if not all(blobs):  # some inputs hold no tokenizer: nothing to align them by; rows stay by index
        return None
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise err(where, "the inputs hold different tokenizers; aligning their vocabularies needs transformers "
                         "(pip install 'weightspace[hf]')") from None

    def load(p: Path):
        try:
            return AutoTokenizer.from_pretrained(str(p), use_fast=True, local_files_only=True)
        except Exception as e:  # transformers raises many kinds; name the file, keep one line
            raise err(where, f"cannot read the tokenizer of {p}: {' '.join(str(e).split())[:160]}") from None

    toks = [load(p) for p in paths]
    sizes = []
    for p, t, cfg in zip(paths, toks, configs):
        n = _vocab_size(cfg)
        if n is None:
            raise err(where, f"{p / 'config.json'} has no vocab_size; cannot align its embeddings")
        sizes.append(n)
    tok_base = base if base is not None else 0
    beyond = [tok for tok, i in toks[tok_base].get_vocab().items() if i >= sizes[tok_base]]
    if beyond:
        raise err(where, f"the tokenizer of {paths[tok_base]} has {len(beyond)} token(s) beyond its vocab_size "
                         f"{sizes[tok_base]} ({beyond[0]!r}); not supported")
    if source == "base":
        out = toks[tok_base]
    elif source == "union":
        out = _union(toks, sizes, tok_base)
    else:
        out = load(Path(source))
    vocab = out.get_vocab()
    size = len(vocab)
    if sorted(vocab.values()) != list(range(size)):
        raise err(where, f"the output tokenizer's ids are not 0 .. {size - 1}; cannot lay out its embeddings")
    rows = {}
    for i, (t, n) in enumerate(zip(toks, sizes)):
        own = t.get_vocab()
        r = torch.full((size,), -1, dtype=torch.long)
        for tok, new in vocab.items():
            old = own.get(tok)
            if old is not None and old < n:
                r[new] = old
        rows[i] = r
    ident = torch.arange(size)
    if len(set(sizes)) == 1 and size <= sizes[0] and all(torch.equal(r, ident) for r in rows.values()):
        return None  # one vocabulary, token for token: the rows stay as they are (padding rows included)
    base_vocab = toks[tok_base].get_vocab()
    return _Vocabulary(out, size, rows, base, added=sum(1 for tok in vocab if tok not in base_vocab))


def _union(toks: list, sizes: list[int], tok_base: int):
    """The base's tokenizer plus every other input's tokens it lacks, added in input order (each
    input's regular tokens in id order, then its added tokens with their settings), as mergekit's
    union (which takes each vocabulary in ``get_vocab()``'s order, a hash map's)."""
    import tempfile

    from transformers import AutoTokenizer

    order = [tok_base] + [i for i in range(len(toks)) if i != tok_base]
    regular: dict[str, None] = {}
    added: dict[str, Any] = {}
    for i in order:
        t, n = toks[i], sizes[i]
        special = t.added_tokens_decoder
        special_text = {info.content for info in special.values()}
        for tok, idx in sorted(t.get_vocab().items(), key=lambda kv: kv[1]):  # id order: get_vocab's is a hash's
            if idx < n and tok not in special_text:
                regular.setdefault(tok, None)
        for idx, info in special.items():
            if idx < n:
                added.setdefault(info.content, info)
    with tempfile.TemporaryDirectory() as d:  # a fresh copy: never mutate the base's tokenizer
        toks[tok_base].save_pretrained(d)
        res = AutoTokenizer.from_pretrained(d, use_fast=True, local_files_only=True)
    known = toks[tok_base].get_vocab()
    for tok in regular:
        if tok not in added and tok not in known:
            res.add_tokens(tok)
    for info in added.values():
        res.add_tokens(info)
    return res


def vocabulary_tensors(names: Sequence[str], shape_of: Callable[[str], tuple[int, ...]], vocab_size: int,
                       is_layer: Callable[[str], bool]) -> set[str]:
    """The names of an input's vocabulary tensors: outside the layers, named like an embedding or
    an output head, with ``vocab_size`` rows."""
    return {k for k in names if not is_layer(k) and _VOCAB_NAME.search(k) and len(shape_of(k)) >= 1
            and shape_of(k)[0] == vocab_size}
