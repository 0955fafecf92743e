"""The card of a model zoo (``zoo.json``): what was trained, on what, how, and how to cite it."""
from __future__ import annotations

import json
import math
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from weightspace.models import model_spec_from_json, model_spec_to_json

__all__ = ["ZooCard", "read_card", "CARD_FILE", "METRICS_FILE", "MODELS_DIR", "FORMAT", "FORMAT_VERSION",
           "BASE_COLUMNS", "shard_name", "DEFAULT_SPLITS"]

FORMAT = "weightspace-zoo"
FORMAT_VERSION = 1
CARD_FILE = "zoo.json"
METRICS_FILE = "metrics.csv"
MODELS_DIR = "models"
#: the first columns of every ``metrics.csv``, in this order
BASE_COLUMNS = ("model_id", "shard", "index", "checkpoint")
#: train / val / test fractions, assigned by a hash of each model's split key
DEFAULT_SPLITS: dict[str, Any] = {"by": "model_id", "fractions": {"train": 0.8, "val": 0.1, "test": 0.1},
                                  "salt": "weightspace-zoo"}
_SYMMETRY = ("permutations of hidden units (channels of each convolution, neurons of each hidden "
             "linear layer) leave each model's function unchanged; inputs and outputs are not permuted")


def shard_name(index: int) -> str:
    """File name of shard ``index`` inside ``models/``: ``shard-00007.safetensors``."""
    return f"shard-{int(index):05d}.safetensors"


@dataclass(frozen=True)
class ZooCard:
    """The card of a zoo, stored as ``zoo.json`` at its root.

    Args:
        task (str): ``"image-classification"`` or ``"implicit-neural-representation"``.
        model (dict): the model family and its keyword arguments, ``{"name": ..., "kwargs": ...}``
            (as :func:`weightspace.models.model_spec_to_json` writes it); every checkpoint of
            the zoo loads into ``get_model(name, **kwargs)``.
        dataset (dict): what the models were trained or fitted on (``spec``, splits, sizes).
        recipe (dict): the full training recipe, enough to rebuild the zoo bit for bit
            (hyper-parameter ranges, seeds, optimizer, batch size, checkpoints, ...).
        n_models (int): number of models (ids ``0 .. n_models - 1``).
        models_per_shard (int): models per shard file; shard ``s`` holds models
            ``s * models_per_shard`` to ``(s + 1) * models_per_shard - 1``.
        columns (tuple of str): the columns of ``metrics.csv``, starting with
            ``model_id, shard, index, checkpoint``.
        target (str): the column a metanetwork predicts by default (``"test_acc"``, ``"label"``).
        input_shape (tuple of int, optional): one input of a model without the batch axis.
        checkpoints (tuple of int, optional): the checkpoints kept per model.
        checkpoint_unit (str): what ``checkpoint`` counts: ``"epoch"`` or ``"step"``.
        splits (dict): how models are split into train / val / test: ``{"by": column,
            "fractions": {...}, "salt": str}`` (a hash of that column, so every model's split
            is fixed however the zoo is read) or ``{"column": "split"}`` (a column of
            ``metrics.csv`` names it, as for imported zoos that come with their splits).
        symmetry (str): the symmetry of the weights, in words.
        cite (str): how to cite the zoo or the work its recipe follows.
        source (dict, optional): for imported zoos, where and in what layout they came from.
        notes (tuple of str): anything a user must know (approximations, differences).
        version (str): the weightspace version that wrote the zoo.
    """

    task: str
    model: dict
    dataset: dict
    recipe: dict
    n_models: int
    models_per_shard: int
    columns: tuple[str, ...]
    target: str
    input_shape: tuple[int, ...] | None = None
    checkpoints: tuple[int, ...] | None = None
    checkpoint_unit: str = "epoch"
    splits: dict = field(default_factory=lambda: json.loads(json.dumps(DEFAULT_SPLITS)))
    symmetry: str = _SYMMETRY
    cite: str = ""
    source: dict | None = None
    notes: tuple[str, ...] = ()
    version: str = ""
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if tuple(self.columns[: len(BASE_COLUMNS)]) != BASE_COLUMNS:
            raise ValueError(f"ZooCard: columns must start with {', '.join(BASE_COLUMNS)}; got {list(self.columns)}")
        if len(set(self.columns)) != len(self.columns):
            raise ValueError(f"ZooCard: duplicate columns in {list(self.columns)}")
        if isinstance(self.n_models, bool) or not isinstance(self.n_models, int) or self.n_models < 1:
            raise ValueError(f"ZooCard: n_models must be a positive int, got {self.n_models!r}")
        if (isinstance(self.models_per_shard, bool) or not isinstance(self.models_per_shard, int)
                or self.models_per_shard < 1):
            raise ValueError(f"ZooCard: models_per_shard must be a positive int, got {self.models_per_shard!r}")
        model_spec_from_json(dict(self.model))  # validates {"name": str, "kwargs": {...}}
        if "column" not in self.splits and "fractions" not in self.splits:
            raise ValueError(f"ZooCard: splits must hold 'column' or 'fractions', got {self.splits!r}")
        if not self.version:
            from weightspace import __version__

            object.__setattr__(self, "version", __version__)
        object.__setattr__(self, "columns", tuple(self.columns))
        object.__setattr__(self, "notes", tuple(self.notes))
        if self.input_shape is not None:
            object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        if self.checkpoints is not None:
            object.__setattr__(self, "checkpoints", tuple(int(c) for c in self.checkpoints))

    @property
    def n_shards(self) -> int:
        """Number of shard files of the complete zoo."""
        return math.ceil(self.n_models / self.models_per_shard)

    @property
    def model_spec(self) -> str:
        """The model spec as JSON, the form ``--model`` specs and checkpoint metadata use."""
        name, kwargs = model_spec_from_json(dict(self.model))
        return model_spec_to_json(name, kwargs)

    def shard_models(self, shard: int) -> range:
        """The model ids stored in shard ``shard``."""
        return range(shard * self.models_per_shard, min((shard + 1) * self.models_per_shard, self.n_models))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, path: str | os.PathLike = "zoo.json") -> ZooCard:
        """Parse what :meth:`to_dict` wrote; unknown keys are kept out, missing ones refused.

        Raises:
            ValueError: not a weightspace zoo card, a newer format version, or a missing field.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"read_card: {path} holds a {type(d).__name__}, expected a JSON object")
        if d.get("format") != FORMAT:
            raise ValueError(f"read_card: {path} is not a weightspace zoo card (format {d.get('format')!r}, "
                             f"expected {FORMAT!r})")
        if int(d.get("format_version", 0)) > FORMAT_VERSION:
            raise ValueError(f"read_card: {path} has format version {d.get('format_version')}; this weightspace "
                             f"reads up to {FORMAT_VERSION}: upgrade weightspace")
        names = {f.name for f in fields(cls)}
        for f in fields(cls):
            if f.name not in d and f.default is MISSING and f.default_factory is MISSING:
                raise ValueError(f"read_card: {path} lacks the field {f.name!r}")
        kwargs = {k: v for k, v in d.items() if k in names}
        for k in ("columns", "notes", "input_shape", "checkpoints"):
            if kwargs.get(k) is not None:
                kwargs[k] = tuple(kwargs[k])
        try:
            return cls(**kwargs)
        except TypeError as e:
            raise ValueError(f"read_card: {path} is incomplete: {e}") from None
        except ValueError as e:
            raise ValueError(f"read_card: {path}: {e}") from None

    def differences(self, other: ZooCard) -> list[str]:
        """The fields (``version`` aside) in which two cards differ."""
        a, b = self.to_dict(), other.to_dict()
        return [k for k in a if k != "version" and a[k] != b.get(k)]


def read_card(root: str | os.PathLike) -> ZooCard:
    """Read ``zoo.json`` of the zoo at ``root``.

    Raises:
        ValueError: no such directory or card, invalid JSON, or not a weightspace zoo card.
    """
    root = Path(root)
    path = root / CARD_FILE
    if not root.is_dir():
        raise ValueError(f"read_card: {root} is not a directory (expected a zoo: zoo.json, models/, metrics.csv)")
    if not path.is_file():
        raise ValueError(f"read_card: {root} holds no {CARD_FILE}; is it a zoo? (`weightspace zoo build` or "
                         f"`weightspace zoo import` make one)")
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"read_card: {path} is not valid JSON ({e})") from None
    return ZooCard.from_dict(d, path=path)
