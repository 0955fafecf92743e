"""A zoo as a PyTorch dataset: weights (state dicts, per-layer tensors or parameter graphs) and targets."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn
from torch.utils.data import Dataset

from weightspace.api import MODEL_KEY
from weightspace.models import model_from_json
from weightspace.trust import model_code_trusted

from ._metrics import SPLITS, Row, read_metrics, row_split
from .zoo_card import MODELS_DIR, read_card, shard_name

__all__ = ["ZooDataset", "VIEWS"]

VIEWS = ("state", "tensors", "graph")
_TARGET_ALIASES = {"accuracy": "test_acc", "acc": "test_acc", "label": "label", "psnr": "psnr"}


class ZooDataset(Dataset):
    r"""The models of a zoo as a dataset of ``(weights, target)`` pairs.

    Models are split into train / val / test **by model** (every checkpoint of a model, and for
    INR zoos every fit of an image, falls in one split) as the card says: by a hash of the
    model id (or image index), or by a ``split`` column that an imported zoo kept from its
    source. Shards are opened lazily, on first access, one ``safe_open`` per shard and process
    (so ``DataLoader`` workers each open their own), and one row is read per item.

    Args:
        root (str or PathLike): the zoo directory.
        split (str, optional): ``"train"``, ``"val"``, ``"test"`` or ``"all"``. (default: ``"train"``)
        view (str, optional): what an item's weights are:

            - ``"state"``: the state dict, ``dict[str, Tensor]`` in the model's order;
            - ``"tensors"``: ``(weights, biases)``, two tuples with one tensor per layer
              (``(n_out, n_in)`` for linear, ``(C_out, C_in, k, k)`` for convolution), as
              NFN / DWSNets layers take them;
            - ``"graph"``: a :class:`graphs.ParamGraph` (imported only when asked for).

            (default: ``"state"``)
        target (str, optional): ``"accuracy"`` (the ``test_acc`` column), ``"label"``, or any
            numeric column of ``metrics.csv``. (default: the card's target)
        checkpoints (str, int or list of int, optional): ``"last"`` (each model's final
            checkpoint), ``"all"``, or the checkpoint(s) to keep. (default: ``"last"``)
        device (str, optional): where tensors are read to. (default: ``"cpu"``)
        trust_model_code (bool, optional): allow a ``package.module:callable`` model named by
            the card or a shard to be imported and called (default: ``False``: only registered
            families; see :mod:`weightspace.trust`).

    Shapes:
        - item: ``(weights, target)``; ``target`` a 0-d tensor (``long`` for labels, else float).

    Attributes:
        card (ZooCard): the zoo's card.
        rows (list[dict]): the metrics row of every item, in item order.

    Raises:
        ValueError: unknown split, view or target column, or no such zoo.

    Example:
        >>> ds = ZooDataset("zoo", split="train", view="tensors", target="accuracy")  # doctest: +SKIP
        >>> (weights, biases), acc = ds[0]  # doctest: +SKIP
        >>> loader = torch.utils.data.DataLoader(ds, batch_size=32, shuffle=True)  # doctest: +SKIP
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", *, view: str = "state",
                 target: str | None = None, checkpoints: str | int | Sequence[int] = "last",
                 device: str | torch.device = "cpu", trust_model_code: bool = False) -> None:
        self.root = Path(root)
        self.trust_model_code = trust_model_code or model_code_trusted()
        self.split = split
        self.view = view
        self.checkpoints = checkpoints
        self.device = device
        if split not in (*SPLITS, "all"):
            raise ValueError(f"ZooDataset: unknown split {split!r}; choose one of: train, val, test, all")
        if view not in VIEWS:
            raise ValueError(f"ZooDataset: unknown view {view!r}; choose one of: {', '.join(VIEWS)}")
        self.card = read_card(self.root)
        name = target if target is not None else self.card.target
        self.target = _TARGET_ALIASES.get(name, name)
        if self.target not in self.card.columns:
            raise ValueError(f"ZooDataset: target {name!r} is not a column of {self.root}/metrics.csv; columns: "
                             f"{', '.join(self.card.columns)}")
        rows = [r for r in read_metrics(self.root) if split == "all" or row_split(r, self.card) == split]
        self.rows: list[Row] = _select_checkpoints(rows, checkpoints)
        if self.view == "graph":
            _param_graph_class()  # fail now, not in a DataLoader worker
        self._handles: dict[int, Any] = {}
        self._pid = os.getpid()
        self._templates: dict[str, tuple[nn.Module, list[str]]] = {}
        self._layouts: dict[int, tuple[str, list[str]]] = {}
        self._structures: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return (f"ZooDataset({str(self.root)!r}, split={self.split!r}, view={self.view!r}, target={self.target!r}, "
                f"n={len(self)})")

    @property
    def model_ids(self) -> list[int]:
        """The distinct model ids of this split, sorted."""
        return sorted({r["model_id"] for r in self.rows})

    def _handle(self, shard: int) -> Any:
        if os.getpid() != self._pid:  # forked into a DataLoader worker: open our own handles
            self._handles, self._pid = {}, os.getpid()
        h = self._handles.get(shard)
        if h is None:
            path = self.root / MODELS_DIR / shard_name(shard)
            try:
                h = safe_open(str(path), framework="pt", device=str(self.device))
            except (SafetensorError, OSError) as e:
                raise ValueError(f"ZooDataset: cannot open {path} ({e}); rebuild or re-import the zoo") from None
            self._handles[shard] = h
        return h

    def _template(self, spec: str) -> tuple[nn.Module, list[str]]:
        if spec not in self._templates:
            module = model_from_json(spec, source=f"zoo {self.root}", trusted=self.trust_model_code)
            self._templates[spec] = (module, list(module.state_dict()))
        return self._templates[spec]

    def _layout(self, shard: int) -> tuple[str, list[str]]:
        """The model spec of a shard and its keys in the model's order (read once per shard)."""
        if shard not in self._layouts:
            h = self._handle(shard)
            spec = (h.metadata() or {}).get(MODEL_KEY, self.card.model_spec)
            _, keys = self._template(spec)
            present = set(h.keys())
            self._layouts[shard] = (spec, [k for k in keys if k in present] + sorted(present - set(keys)))
        return self._layouts[shard]

    def state(self, i: int) -> dict[str, Tensor]:
        """The state dict of item ``i``, in the model's key order."""
        row = self.rows[i]
        h = self._handle(row["shard"])
        _, order = self._layout(row["shard"])
        idx = row["index"]
        return {k: h.get_slice(k)[idx] for k in order}

    def weights(self, i: int) -> Any:
        """Item ``i``'s weights in the dataset's view."""
        state = self.state(i)
        if self.view == "state":
            return state
        if self.view == "tensors":
            return state_to_tensors(state)
        spec, _ = self._layout(self.rows[i]["shard"])
        if spec not in self._structures:
            from weightspace.api import trace_model

            module, _ = self._template(spec)
            shape = self.card.input_shape
            self._structures[spec] = trace_model(module, input_shape=shape)
        return _param_graph_class().from_structure(self._structures[spec], state)

    def __getitem__(self, i: int) -> tuple[Any, Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"ZooDataset: index {i} out of range for {len(self)} items")
        i = i % len(self)
        v = self.rows[i][self.target]
        if isinstance(v, str):
            raise ValueError(f"ZooDataset: target column {self.target!r} holds text ({v!r}), not a number")
        t = torch.tensor(v, dtype=torch.long) if isinstance(v, int) and self.target == "label" else torch.tensor(
            float(v), dtype=torch.float32)
        return self.weights(i), t


def state_to_tensors(state: dict[str, Tensor]) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """``(weights, biases)``: for each ``<layer>.weight`` in order, it and ``<layer>.bias``.

    Raises:
        ValueError: a weight without a bias of the same layer (or the reverse).
    """
    weights, biases = [], []
    for k, v in state.items():
        if k.endswith(".weight"):
            b = k[: -len("weight")] + "bias"
            if b not in state:
                raise ValueError(f"state_to_tensors: {k!r} has no bias {b!r}; the tensors view needs both")
            weights.append(v)
            biases.append(state[b])
        elif not k.endswith(".bias"):
            raise ValueError(f"state_to_tensors: {k!r} is neither a weight nor a bias; use view='state'")
    return tuple(weights), tuple(biases)


def _select_checkpoints(rows: list[Row], checkpoints: str | int | Sequence[int]) -> list[Row]:
    if checkpoints == "all":
        out = rows
    elif checkpoints == "last":
        last: dict[int, Row] = {}
        for r in rows:
            if r["model_id"] not in last or r["checkpoint"] > last[r["model_id"]]["checkpoint"]:
                last[r["model_id"]] = r
        out = list(last.values())
    else:
        try:
            wanted = {int(checkpoints)} if isinstance(checkpoints, int) else {int(c) for c in checkpoints}  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise ValueError(f"ZooDataset: checkpoints must be 'last', 'all', an int or a list of ints, got "
                             f"{checkpoints!r}") from None
        out = [r for r in rows if r["checkpoint"] in wanted]
    return sorted(out, key=lambda r: (r["model_id"], r["checkpoint"]))


def _param_graph_class() -> Any:
    try:
        from graphs import ParamGraph  # type: ignore[attr-defined]
    except ImportError:
        try:
            from graphs.param_graph import ParamGraph
        except ImportError as e:
            raise ValueError(f"ZooDataset: view='graph' needs graphs.ParamGraph, which is not available ({e})") from None
    return ParamGraph
