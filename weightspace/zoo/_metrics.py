"""``metrics.csv``: one row per model and checkpoint; reading, writing, splits, shard specs."""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from merging._atomic import atomic_write

from .zoo_card import BASE_COLUMNS, METRICS_FILE, MODELS_DIR, ZooCard, shard_name

try:  # POSIX advisory locks: workers of one zoo append to one metrics.csv
    import fcntl
except ImportError:  # pragma: no cover - Windows: single-writer use only
    fcntl = None  # type: ignore[assignment]

Row = dict[str, Any]
SPLITS = ("train", "val", "test")


def parse_shard_spec(spec: str | tuple[int, int] | None) -> tuple[int, int]:
    """Parse ``--shard i/N`` into ``(i, N)`` with ``0 <= i < N``.

    Raises:
        ValueError: not of the form ``i/N`` with integers ``0 <= i < N``.
    """
    if spec is None:
        return 0, 1
    if isinstance(spec, tuple):
        i, n = spec
    else:
        text = str(spec).strip()
        head, sep, tail = text.partition("/")
        try:
            if not sep:
                raise ValueError
            i, n = int(head), int(tail)
        except ValueError:
            raise ValueError(f"--shard: expected i/N such as 0/4 (worker i of N, counted from 0), got {spec!r}") from None
    if isinstance(i, bool) or isinstance(n, bool) or n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard: expected i/N with 0 <= i < N (worker i of N, counted from 0), got {spec!r}")
    return int(i), int(n)


def worker_shards(n_shards: int, worker: int, n_workers: int) -> list[int]:
    """The shards worker ``worker`` of ``n_workers`` builds: ``s`` with ``s % n_workers == worker``.

    Disjoint across workers, and their union is every shard, whatever the launcher.
    """
    return [s for s in range(n_shards) if s % n_workers == worker]


def format_value(v: Any) -> str:
    """One CSV cell: ints as ints, floats exactly (``repr``), ``None`` as empty."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, float):
        return repr(v)
    if hasattr(v, "item") and callable(v.item):  # a 0-d tensor or numpy scalar
        return format_value(v.item())
    return str(v)


def parse_value(s: str) -> Any:
    """Inverse of :func:`format_value`: int, then float, else the string."""
    try:
        return int(s)
    except ValueError:
        pass
    try:
        return float(s)
    except ValueError:
        return s


def rows_to_csv(rows: Iterable[Mapping[str, Any]], columns: Sequence[str], *, header: bool = False) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(columns)
    for r in rows:
        w.writerow([format_value(r.get(c)) for c in columns])
    return buf.getvalue()


def parse_metrics_text(text: str, path: Path | str) -> tuple[list[str], list[Row], int]:
    """``(header, rows, n_dropped)`` of a metrics file's text.

    A last line without its newline (a write cut short) and rows of the wrong length are
    dropped and counted, never guessed at.
    """
    if not text:
        return [], [], 0
    dropped = 0
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        dropped += 1
    lines = list(csv.reader(io.StringIO(text)))
    if not lines:
        return [], [], dropped
    header = lines[0]
    if tuple(header[: len(BASE_COLUMNS)]) != BASE_COLUMNS:
        raise ValueError(f"read_metrics: {path} does not start with the header {','.join(BASE_COLUMNS)},...; "
                         f"found {','.join(header[:4])}")
    rows = []
    for cells in lines[1:]:
        if len(cells) != len(header):
            dropped += 1
            continue
        row = {h: parse_value(c) for h, c in zip(header, cells)}
        if not all(isinstance(row[c], int) for c in BASE_COLUMNS):
            dropped += 1
            continue
        rows.append(row)
    return header, rows, dropped


def read_metrics(root: str | os.PathLike, *, complete: bool = True) -> list[Row]:
    """The rows of ``metrics.csv`` of the zoo at ``root``, values parsed (int, float or str).

    Args:
        root (str or PathLike): the zoo directory.
        complete (bool, optional): keep only rows whose shard file exists, once each
            (``(model_id, checkpoint)`` first seen wins): what a finished or resumed build
            holds. (default: ``True``)

    Returns:
        list of dict: one per model and checkpoint, keys the columns of the card.

    Raises:
        ValueError: no metrics file, or one without the expected header.
    """
    path = Path(root) / METRICS_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ValueError(f"read_metrics: {path} does not exist; the zoo has no finished shard yet") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"read_metrics: cannot read {path} ({e})") from None
    _, rows, _ = parse_metrics_text(text, path)
    if not complete:
        return rows
    present: dict[int, bool] = {}
    seen: set[tuple[int, int]] = set()
    out = []
    for r in rows:
        s = r["shard"]
        if s not in present:
            present[s] = (Path(root) / MODELS_DIR / shard_name(s)).is_file()
        key = (r["model_id"], r["checkpoint"])
        if present[s] and key not in seen:
            seen.add(key)
            out.append(r)
    return out


def split_of(key: Any, splits: Mapping[str, Any]) -> str:
    """The split (``train``, ``val`` or ``test``) of a split key under a card's hash splits.

    A SHA-256 of ``salt:key`` mapped to ``[0, 1)`` is cut at the cumulative fractions, so a
    model's split depends on nothing but its key: not on the order, the shards or the number
    of models read.
    """
    fractions = splits.get("fractions", {})
    h = hashlib.sha256(f"{splits.get('salt', '')}:{key}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2.0**64
    acc = 0.0
    for name in SPLITS:
        acc += float(fractions.get(name, 0.0))
        if u < acc:
            return name
    return next((n for n in reversed(SPLITS) if float(fractions.get(n, 0.0)) > 0), "train")  # rounding


def row_split(row: Mapping[str, Any], card: ZooCard) -> str:
    """The split of one metrics row under ``card.splits``."""
    if "column" in card.splits:
        v = row.get(card.splits["column"], "")
        return str(v) if v not in (None, "") else "train"
    return split_of(row.get(card.splits.get("by", "model_id")), card.splits)


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``root/.lock`` (a no-op where ``fcntl`` is missing)."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`merging._atomic.atomic_write`)."""
    atomic_write(path, lambda f: Path(f).write_text(text, encoding="utf-8", newline=""))


def append_text(path: Path, text: str) -> None:
    """Append ``text`` in one write and fsync (call under :func:`locked`)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        data = text.encode("utf-8")
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)
