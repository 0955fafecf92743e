"""Write a zoo shard by shard, so that a killed build resumes with nothing lost or duplicated."""
from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from merging._atomic import TAG
from weightspace.api import MODEL_KEY
from weightspace.checkpoint import save

from ._metrics import Row, append_text, atomic_write_text, locked, parse_metrics_text, rows_to_csv
from .zoo_card import CARD_FILE, METRICS_FILE, MODELS_DIR, ZooCard, read_card, shard_name

__all__ = ["ZooWriter", "ROWS_KEY", "SHARD_KEY"]

logger = logging.getLogger(__name__)

#: shard metadata: the metrics rows of the shard as JSON (the shard describes itself)
ROWS_KEY = "weightspace.zoo.rows"
#: shard metadata: the shard's index
SHARD_KEY = "weightspace.zoo.shard"
_TMP = re.compile(r"^\.(shard-(\d{5})\.safetensors)\.(?:.*\.tmp|weightspace-tmp-.*)$")  # old and current temporaries


class ZooWriter:
    """Writes the shards of one zoo and keeps ``metrics.csv`` consistent with them.

    The unit of work is a shard file, ``models/shard-XXXXX.safetensors``: every tensor has a
    leading axis of rows (the models of the shard, each with all its checkpoints, model-major),
    and the shard's metadata holds its own metrics rows (``weightspace.zoo.rows``). A shard is
    written to a temporary file, fsynced and renamed into place (:func:`weightspace.save`);
    only then are its rows appended to ``metrics.csv`` (in one write, under a file lock, so
    workers of one zoo share it). A kill at any point therefore leaves either no shard (it is
    rebuilt) or a complete one (it is kept), and :meth:`open` repairs ``metrics.csv``: rows
    whose shard is missing are dropped, duplicated rows removed, and rows of a complete shard
    that never reached the file restored from the shard's metadata.

    Args:
        root (str or PathLike): the zoo directory (created if missing).
        card (ZooCard): the card; a zoo already at ``root`` must have the same one.

    Example:
        >>> writer = ZooWriter(out, card)  # doctest: +SKIP
        >>> done = writer.open(range(card.n_shards))  # doctest: +SKIP
        >>> writer.write_shard(0, tensors, rows)  # doctest: +SKIP
    """

    def __init__(self, root: str | os.PathLike, card: ZooCard) -> None:
        self.root = Path(root)
        self.card = card

    @property
    def models_dir(self) -> Path:
        return self.root / MODELS_DIR

    def shard_path(self, shard: int) -> Path:
        return self.models_dir / shard_name(shard)

    # ------------------------------------------------------------------ open / recover

    def open(self, shards: Iterable[int]) -> set[int]:
        """Prepare the directory and recover from an earlier, interrupted build.

        Writes ``zoo.json`` (or checks that the one there is the same zoo), removes the
        temporary files of ``shards``, deletes any of ``shards`` that is not a complete shard,
        and repairs ``metrics.csv``.

        Args:
            shards (iterable of int): the shards this worker builds.

        Returns:
            set of int: those of ``shards`` already complete on disk (to skip).

        Raises:
            ValueError: ``root`` holds a different zoo (the message names the differing
                fields), or is a file.
        """
        shards = sorted(set(int(s) for s in shards))
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"zoo: --out {self.root} exists and is not a directory")
        self._check_not_foreign()  # before anything is written there
        self.models_dir.mkdir(parents=True, exist_ok=True)
        with locked(self.root):
            self._check_not_foreign()  # again under the lock: another worker may be writing the card
            self._check_or_write_card()
            for f in self.models_dir.iterdir():
                m = _TMP.match(f.name)
                if m and int(m.group(2)) in shards:
                    f.unlink(missing_ok=True)
            done: dict[int, list[Row]] = {}
            for s in shards:
                path = self.shard_path(s)
                if not path.exists():
                    continue
                rows = self._complete_rows(s)
                if rows is None:
                    logger.warning("zoo: %s is incomplete or corrupt; rebuilding it", path)
                    path.unlink()
                else:
                    done[s] = rows
            self._repair_metrics(done)
        return set(done)

    def _check_not_foreign(self) -> None:
        """Refuse a non-empty directory that is not a zoo (no card): a zoo is built only into a new
        or empty directory, or one holding this zoo (which it resumes)."""
        if not self.root.is_dir() or (self.root / CARD_FILE).is_file():
            return
        ours = {".lock"}  # what a build leaves before its card: the lock, an empty models/, temporaries
        foreign = sorted(e.name for e in self.root.iterdir()
                         if e.name not in ours and TAG not in e.name
                         and not (e.name == MODELS_DIR and e.is_dir() and not any(e.iterdir())))
        if foreign:
            listing = ", ".join(foreign[:5]) + (f" (+{len(foreign) - 5} more)" if len(foreign) > 5 else "")
            raise ValueError(f"zoo: --out {self.root} is a non-empty directory that is not a zoo (no {CARD_FILE}; "
                             f"it holds {listing}); choose a new or empty directory")

    def _check_or_write_card(self) -> None:
        path = self.root / CARD_FILE
        if path.is_file():
            old = read_card(self.root)
            diff = old.differences(self.card)
            if diff:
                raise ValueError(f"zoo: {self.root} holds a different zoo ({', '.join(diff)} differ from this "
                                 f"build's); choose another --out, or delete it to start over")
        else:
            atomic_write_text(path, self.card.to_json())

    def _complete_rows(self, shard: int) -> list[Row] | None:
        """The rows of a complete shard file, or ``None`` if it is truncated or inconsistent."""
        path = self.shard_path(shard)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                rows = json.loads(meta.get(ROWS_KEY, "null"))
                if not isinstance(rows, list) or not rows:
                    return None
                expected = {m for m in self.card.shard_models(shard)}
                if {r.get("model_id") for r in rows} != expected:
                    return None
                for k in f.keys():
                    if f.get_slice(k).get_shape()[0] != len(rows):
                        return None
                if not list(f.keys()):
                    return None
        except (SafetensorError, OSError, ValueError, TypeError, AttributeError):
            return None
        return rows

    def _repair_metrics(self, done: Mapping[int, list[Row]]) -> None:
        path = self.root / METRICS_FILE
        columns = list(self.card.columns)
        try:
            text = path.read_text()
        except FileNotFoundError:
            text = ""
        header, rows, dropped = parse_metrics_text(text, path)
        changed = dropped > 0 or header != columns
        if header and header != columns:
            raise ValueError(f"zoo: {path} has columns {header}, the card says {columns}; the zoo is damaged")
        kept: list[Row] = []
        seen: set[tuple[int, int]] = set()
        by_shard: dict[int, set[tuple[int, int]]] = {}
        exists: dict[int, bool] = {}
        for r in rows:
            s, key = r["shard"], (r["model_id"], r["checkpoint"])
            if s not in exists:
                exists[s] = s in done or self.shard_path(s).is_file()
            if not exists[s] or key in seen:
                changed = True
                continue
            seen.add(key)
            kept.append(r)
            by_shard.setdefault(s, set()).add(key)
        for s, shard_rows in done.items():
            want = {(r["model_id"], r["checkpoint"]) for r in shard_rows}
            if by_shard.get(s, set()) != want:  # the build stopped between shard and metrics
                kept = [r for r in kept if r["shard"] != s] + list(shard_rows)
                changed = True
        if changed or not path.exists():
            if dropped:
                logger.warning("zoo: dropped %d partial rows from %s", dropped, path)
            atomic_write_text(path, rows_to_csv(kept, columns, header=True))

    # ------------------------------------------------------------------ write

    def write_shard(self, shard: int, tensors: Mapping[str, Tensor], rows: Sequence[Row], *,
                    model_spec: str | None = None, metadata: Mapping[str, str] | None = None) -> Path:
        """Write one shard atomically, then append its rows to ``metrics.csv``.

        Args:
            shard (int): the shard index.
            tensors (dict[str, Tensor]): state-dict key -> ``(R, *shape)``, ``R = len(rows)``.
            rows (sequence of dict): one metrics row per leading index, in that order
                (``index`` must be ``0 .. R - 1``).
            model_spec (str, optional): the model spec of the shard (default: the card's).
            metadata (dict[str, str], optional): more metadata (``weightspace.*`` reserved).

        Returns:
            Path: the shard file.

        Raises:
            ValueError: rows and tensors disagree, a row lacks a column, or the write failed.
        """
        n = len(rows)
        if n == 0 or not tensors:
            raise ValueError(f"write_shard: shard {shard} has no rows or no tensors")
        for k, t in tensors.items():
            if t.ndim == 0 or t.shape[0] != n:
                raise ValueError(f"write_shard: {k!r} of shard {shard} has shape {tuple(t.shape)}; expected a "
                                 f"leading axis of {n} rows")
        for i, r in enumerate(rows):
            missing = [c for c in self.card.columns if c not in r]
            if missing:
                raise ValueError(f"write_shard: row {i} of shard {shard} lacks columns {missing}")
            if r["index"] != i or r["shard"] != shard:
                raise ValueError(f"write_shard: row {i} of shard {shard} says shard {r['shard']}, index {r['index']}")
        clean = [{c: _plain(r[c]) for c in self.card.columns} for r in rows]
        meta = {k: v for k, v in (metadata or {}).items() if not k.startswith("weightspace.")}
        meta.update({MODEL_KEY: model_spec or self.card.model_spec, SHARD_KEY: str(shard),
                     ROWS_KEY: json.dumps(clean)})
        if self.card.input_shape is not None:
            meta["weightspace.input_shape"] = ",".join(str(s) for s in self.card.input_shape)
        path = self.shard_path(shard)
        save({k: t.detach().to("cpu").contiguous() for k, t in tensors.items()}, path, metadata=meta)
        with locked(self.root):
            append_text(self.root / METRICS_FILE, rows_to_csv(clean, self.card.columns))
        return path


def _plain(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.item()
    if hasattr(v, "item") and not isinstance(v, (int, float, str)):
        v = v.item()
    return v
