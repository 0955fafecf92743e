"""Datasets behind ``--data``: built-in names, ``mnist-idx:DIR``, or ``package.module:callable``.

Two entry points:

- :func:`load_dataset` gives a :class:`Dataset`, tensors ``x`` and ``y`` in memory;
- :func:`load_data` gives an iterable of ``(x, y)`` batches, which the merging algorithms consume.
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from graphs.registry import Registry
from weightspace.models._registry import accepts_keyword, import_callable

__all__ = [
    "Dataset",
    "DatasetEntry",
    "TensorLoader",
    "list_datasets",
    "load_data",
    "load_dataset",
    "read_idx",
    "register_dataset",
]

Split = Literal["train", "test", "all"]
_SPLITS = ("train", "test", "all")


@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled dataset held as two tensors.

    Args:
        x (Tensor): inputs, the first axis indexing examples.
        y (Tensor): targets (class indices for classification), same first axis.
        name (str): where it came from, e.g. ``"digits"``.
        input_shape (tuple of int, optional): shape of one example (default: ``x.shape[1:]``).
        num_classes (int, optional): number of classes; inferred as ``y.max() + 1`` for integer
            targets, ``None`` otherwise (default: inferred).

    Shapes:
        - x: ``(N, *input_shape)``
        - y: ``(N,)`` or ``(N, *)``

    Raises:
        ValueError: if ``x`` and ``y`` are not tensors of the same length.
    """

    x: Tensor
    y: Tensor
    name: str
    input_shape: tuple[int, ...] | None = None
    num_classes: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.x, Tensor) or not isinstance(self.y, Tensor):
            raise ValueError(
                f"Dataset {self.name!r}: x and y must be tensors, got {type(self.x).__name__} and "
                f"{type(self.y).__name__}"
            )
        if self.x.ndim == 0 or self.y.ndim == 0 or len(self.x) != len(self.y):
            raise ValueError(
                f"Dataset {self.name!r}: x and y need the same first axis, got shapes "
                f"{tuple(self.x.shape)} and {tuple(self.y.shape)}"
            )
        if self.input_shape is None:
            object.__setattr__(self, "input_shape", tuple(self.x.shape[1:]))
        else:
            object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        if self.num_classes is None and not self.y.is_floating_point() and self.y.numel():
            object.__setattr__(self, "num_classes", int(self.y.max()) + 1)

    def __len__(self) -> int:
        return len(self.x)

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, n={len(self)}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes})"
        )

    def loader(
        self, batch_size: int = 128, *, shuffle: bool = False, seed: int = 0, drop_last: bool = False
    ) -> TensorLoader:
        """Batches of ``(x, y)``; see :class:`TensorLoader`."""
        return TensorLoader(self, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)

    def subset(self, index: Tensor | slice) -> Dataset:
        """The examples at ``index`` (a slice, index tensor or boolean mask)."""
        return Dataset(self.x[index], self.y[index], self.name, self.input_shape, self.num_classes)

    def split(self, n_first: int | float, *, shuffle: bool = False, seed: int = 0) -> tuple[Dataset, Dataset]:
        """Two disjoint parts: the first ``n_first`` examples and the rest.

        Args:
            n_first (int or float): size of the first part, or its fraction if a float in ``(0, 1)``.
            shuffle (bool, optional): permute with ``seed`` before splitting (default: ``False``).
            seed (int, optional): seed of the permutation (default: ``0``).

        Raises:
            ValueError: if the first part would be larger than the dataset or negative.
        """
        n = len(self)
        count = round(n_first * n) if isinstance(n_first, float) else n_first
        if isinstance(n_first, float) and not 0.0 < n_first < 1.0 or not 0 <= count <= n:
            raise ValueError(f"Dataset.split: n_first={n_first!r} does not fit a dataset of {n} examples")
        if shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
            return self.subset(order[:count]), self.subset(order[count:])
        return self.subset(slice(0, count)), self.subset(slice(count, n))

    def to(self, device: torch.device | str) -> Dataset:
        """A copy with both tensors on ``device``."""
        return Dataset(self.x.to(device), self.y.to(device), self.name, self.input_shape, self.num_classes)


class TensorLoader:
    """Re-iterable mini-batches ``(x, y)`` over a :class:`Dataset`, without per-example overhead.

    With ``shuffle``, each pass draws a new permutation from a generator seeded once with
    ``seed``, so the sequence of epochs is reproducible (as a ``DataLoader`` with a seeded
    ``generator``).

    Args:
        dataset (Dataset): the data.
        batch_size (int, optional): examples per batch (default: ``128``).
        shuffle (bool, optional): permute each pass (default: ``False``).
        seed (int, optional): seed of the shuffling generator (default: ``0``).
        drop_last (bool, optional): drop a last incomplete batch (default: ``False``).

    Shapes:
        - each batch: ``x`` ``(B, *input_shape)``, ``y`` ``(B, *)``
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int = 128,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"TensorLoader: batch_size must be a positive int, got {batch_size!r}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self._generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        x, y = self.dataset.x, self.dataset.y
        order = torch.randperm(len(x), generator=self._generator).to(x.device) if self.shuffle else None
        for b in range(len(self)):
            if order is None:
                index: Tensor | slice = slice(b * self.batch_size, (b + 1) * self.batch_size)
            else:
                index = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield x[index], y[index]

    def __repr__(self) -> str:
        return f"TensorLoader({self.dataset.name!r}, batch_size={self.batch_size}, shuffle={self.shuffle})"


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class DatasetEntry:
    """A registered built-in dataset.

    Args:
        name (str): the name in ``--data``.
        loader (callable): ``loader(arg, split) -> Dataset``; ``arg`` is the text after ``name:``.
        arg (str, optional): what the argument means (``"DIR"``), or ``None`` if it takes none.
        description (str): one line for listings.
    """

    name: str
    loader: Callable[[str | None, str], Dataset]
    arg: str | None = None
    description: str = ""

    @property
    def usage(self) -> str:
        """``name`` or ``name:ARG``."""
        return self.name if self.arg is None else f"{self.name}:{self.arg}"


#: the built-in datasets (listed sorted: users add their own)
DATASETS: Registry[DatasetEntry] = Registry("dataset", allow_colon=False, sort=True)


def register_dataset(
    name: str, *, arg: str | None = None, description: str = ""
) -> Callable[[Callable[[str | None, str], Dataset]], Callable[[str | None, str], Dataset]]:
    """Decorator registering ``loader(arg, split) -> Dataset`` as the built-in dataset ``name``.

    Raises:
        ValueError: if ``name`` is malformed (empty, ``:``, whitespace) or already registered.
    """
    register = DATASETS.register(name, description=description, caller="register_dataset")

    def decorator(loader: Callable[[str | None, str], Dataset]) -> Callable[[str | None, str], Dataset]:
        register(DatasetEntry(name, loader, arg, description))
        return loader

    return decorator


def list_datasets() -> list[str]:
    """Sorted names of the built-in datasets (``mnist-idx`` is used as ``mnist-idx:DIR``)."""
    return DATASETS.names()


def is_builtin_data_spec(spec: str) -> bool:
    """Whether ``spec`` names a registered dataset (``digits``, ``mnist-idx:DIR``), not code."""
    return isinstance(spec, str) and spec.strip().partition(":")[0] in DATASETS


def _choices() -> str:
    return ", ".join(DATASETS.get(name).usage for name in list_datasets())


# --------------------------------------------------------------------------- public loaders


def load_dataset(spec: str, *, split: Split = "train") -> Dataset:
    """Load ``spec`` into memory as a :class:`Dataset`.

    Args:
        spec (str): a built-in name (``"digits"``), ``"mnist-idx:DIR"``, or
            ``"package.module:callable"``. The callable is called with ``split=split`` if it accepts
            that keyword (otherwise with no arguments, giving the same data for every split) and
            returns a :class:`Dataset`, a tuple ``(x, y)`` of tensors, or a ``DataLoader`` /
            iterable of ``(x, y)`` batches (concatenated here).
        split (str, optional): ``"train"``, ``"test"`` or ``"all"`` (default: ``"train"``).

    Returns:
        The dataset.

    Raises:
        ValueError: unknown dataset (the message lists the choices), bad argument, missing or
            truncated files (the message names the file), or a callable returning something else.

    Example:
        >>> ds = load_dataset("digits", split="test")  # doctest: +SKIP
        >>> ds.x.shape, ds.num_classes  # doctest: +SKIP
        (torch.Size([397, 1, 8, 8]), 10)
    """
    result = _resolve(spec, split)
    if isinstance(result, Dataset):
        return result
    xs, ys = [], []
    for x, y in _checked_batches(result, spec):
        xs.append(x)
        ys.append(y)
    if not xs:
        raise ValueError(f"load_dataset: {spec!r} gave no batches")
    return Dataset(torch.cat(xs), torch.cat(ys), spec)


def load_data(
    spec: str,
    *,
    split: Split = "train",
    batch_size: int = 128,
    shuffle: bool = False,
    seed: int = 0,
) -> Iterable[tuple[Tensor, Tensor]]:
    """Re-iterable ``(x, y)`` batches of ``spec`` (see :func:`load_dataset` for the spec forms).

    Built-in data and callables returning tensors are batched by a :class:`TensorLoader` with
    ``batch_size``, ``shuffle`` and ``seed``. A callable's own ``DataLoader`` or iterable keeps its
    batching (those three are then ignored); a list of batches is checked at once, and a one-shot
    iterator is read into a list so it can be iterated again. Every batch comes out as a tuple of
    two tensors (other iterables are checked batch by batch as they are read).

    Args:
        spec (str): dataset spec.
        split (str, optional): ``"train"``, ``"test"`` or ``"all"`` (default: ``"train"``).
        batch_size (int, optional): examples per batch (default: ``128``).
        shuffle (bool, optional): reshuffle on every pass (default: ``False``).
        seed (int, optional): seed of the shuffling (default: ``0``).

    Shapes:
        - each batch: ``x`` ``(B, *input_shape)``, ``y`` ``(B,)``

    Raises:
        ValueError: as :func:`load_dataset`.
    """
    result = _resolve(spec, split)
    if isinstance(result, Dataset):
        return result.loader(batch_size, shuffle=shuffle, seed=seed)
    if isinstance(result, (list, tuple)) or iter(result) is result:  # a list, or a one-shot iterator
        return list(_checked_batches(result, spec))
    return _CheckedBatches(result, spec)


# --------------------------------------------------------------------------- resolution


def _resolve(spec: str, split: str) -> Dataset | Iterable[Any]:
    if split not in _SPLITS:
        raise ValueError(f"load_data: split must be one of: {', '.join(_SPLITS)}; got {split!r}")
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"load_data: expected a dataset spec such as {_choices()}, got {spec!r}")
    spec = spec.strip()
    name, sep, arg = spec.partition(":")
    entry = DATASETS.get(name) if name in DATASETS else None
    if entry is not None:
        if entry.arg is None and sep:
            raise ValueError(f"load_data: dataset {name!r} takes no argument, got {spec!r}")
        if entry.arg is not None and not arg:
            raise ValueError(f"load_data: dataset {name!r} needs an argument: {entry.usage}")
        return entry.loader(arg if sep else None, split)
    if not sep or not all(part.isidentifier() for part in name.split(".")):
        raise ValueError(
            f"load_data: unknown dataset {spec!r}; choose one of: {_choices()}; or give package.module:callable"
        )
    fn = import_callable(spec, caller="load_data")
    result = fn(split=split) if accepts_keyword(fn, "split") else fn()
    if isinstance(result, Dataset):
        return result
    if isinstance(result, (tuple, list)) and len(result) == 2 and all(isinstance(t, Tensor) for t in result):
        return Dataset(result[0], result[1], spec)
    if isinstance(result, Iterable) and not isinstance(result, (str, bytes, Tensor)):
        return result
    raise ValueError(
        f"load_data: {spec} returned {type(result).__name__}; expected a Dataset, a tuple (x, y) of "
        "tensors, or a DataLoader / iterable of (x, y) batches"
    )


def _as_pair(batch: Any, spec: str) -> tuple[Tensor, Tensor]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and all(isinstance(t, Tensor) for t in batch):
        return batch[0], batch[1]
    described = type(batch).__name__
    if isinstance(batch, (tuple, list)):
        described += f" of {len(batch)} ({', '.join(type(t).__name__ for t in batch)})"
    raise ValueError(f"load_data: {spec} yielded a {described}; each batch must be a pair (x, y) of tensors")


def _checked_batches(batches: Iterable[Any], spec: str) -> Iterator[tuple[Tensor, Tensor]]:
    for batch in batches:
        yield _as_pair(batch, spec)


class _CheckedBatches:
    """Wraps a re-iterable source of batches; checks each one and yields ``(x, y)`` tuples."""

    def __init__(self, batches: Iterable[Any], spec: str) -> None:
        self.batches = batches
        self.spec = spec

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return _checked_batches(self.batches, self.spec)

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- IDX files

_IDX_DTYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped if its name ends in ``.gz``.

    Args:
        path (str or Path): the file.

    Returns:
        The array, with the shape and dtype from the file header.

    Raises:
        ValueError: missing file, bad magic number, or truncated or corrupt data; the message names
            the file.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"read_idx: {path} does not exist") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ValueError(f"read_idx: {path} is truncated or corrupt ({exc})") from None
    except OSError as exc:
        raise ValueError(f"read_idx: cannot read {path} ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"read_idx: {path} is not an IDX file (bad magic number {raw[:4].hex() or 'none'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"read_idx: {path} is truncated: its header needs {header} bytes, the file has {len(raw)}")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count = math.prod(shape)
    expected, found = count * dtype.itemsize, len(raw) - header
    if found < expected:
        raise ValueError(
            f"read_idx: {path} is truncated: shape {shape} needs {expected} bytes of data, found {found}"
        )
    if found > expected:
        raise ValueError(
            f"read_idx: {path} has {found - expected} bytes after the data that shape {shape} describes"
        )
    return np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(shape)


def _find_idx(directory: Path, stem: str, ndim: int) -> Path | None:
    for name in (f"{stem}-idx{ndim}-ubyte", f"{stem}.idx{ndim}-ubyte"):
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _read_idx_pair(directory: Path, prefix: str) -> tuple[Tensor, Tensor] | None:
    images = _find_idx(directory, f"{prefix}-images", 3)
    labels = _find_idx(directory, f"{prefix}-labels", 1)
    if images is None and labels is None:
        return None
    if images is None or labels is None:
        missing = f"{prefix}-images-idx3-ubyte" if images is None else f"{prefix}-labels-idx1-ubyte"
        raise ValueError(f"mnist-idx: {directory} has {(labels or images).name} but no {missing}[.gz]")
    x = read_idx(images)
    y = read_idx(labels)
    if x.ndim != 3:
        raise ValueError(f"mnist-idx: {images} holds shape {x.shape}; expected (N, rows, cols) images")
    if y.ndim != 1:
        raise ValueError(f"mnist-idx: {labels} holds shape {y.shape}; expected (N,) labels")
    if len(x) != len(y):
        raise ValueError(f"mnist-idx: {images.name} has {len(x)} images but {labels.name} has {len(y)} labels")
    x_t = torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1)
    y_t = torch.from_numpy(y.astype(np.int64))
    return x_t, y_t


@register_dataset(
    "mnist-idx", arg="DIR", description="MNIST-format IDX files in DIR (t10k-* and, if present, train-*)"
)
def _load_mnist_idx(arg: str | None, split: str) -> Dataset:
    """MNIST-format IDX files, scaled to ``[0, 1]``, shape ``(N, 1, rows, cols)``.

    With both ``train-*`` and ``t10k-*`` present they are the train and test splits. With only one
    set, its first 80% is train and the last 20% test (8,000 / 2,000 for the 10k test set).
    """
    directory = Path(arg or "").expanduser()
    if not directory.is_dir():
        raise ValueError(f"mnist-idx: directory {str(directory)!r} does not exist")
    spec = f"mnist-idx:{arg}"
    has_train = any(_find_idx(directory, f"train-{kind}", n) for kind, n in (("images", 3), ("labels", 1)))
    has_test = any(_find_idx(directory, f"t10k-{kind}", n) for kind, n in (("images", 3), ("labels", 1)))
    if not has_train and not has_test:
        raise ValueError(
            f"mnist-idx: no t10k-images-idx3-ubyte[.gz] / t10k-labels-idx1-ubyte[.gz] "
            f"(or train-*) in {directory}"
        )
    if has_train and has_test:
        parts = {"train": ("train",), "test": ("t10k",), "all": ("train", "t10k")}[split]
        pairs = [_read_idx_pair(directory, prefix) for prefix in parts]
        x = torch.cat([p[0] for p in pairs if p is not None])
        y = torch.cat([p[1] for p in pairs if p is not None])
        return _mnist_dataset(x, y, spec)
    pair = _read_idx_pair(directory, "train" if has_train else "t10k")
    if pair is None:  # unreachable: one of the two sets exists
        raise ValueError(f"mnist-idx: no IDX files in {directory}")
    full = _mnist_dataset(pair[0], pair[1], spec)
    if split == "all":
        return full
    train, test = full.split(round(0.8 * len(full)))
    return train if split == "train" else test


def _mnist_dataset(x: Tensor, y: Tensor, name: str) -> Dataset:
    num_classes = max(10, int(y.max()) + 1) if len(y) else 10
    return Dataset(x, y, name, tuple(x.shape[1:]), num_classes)


@register_dataset("digits", description="scikit-learn's bundled 8x8 digits (1797 images; 1400 train / 397 test)")
def _load_digits(arg: str | None, split: str) -> Dataset:
    """scikit-learn's 8x8 digits scaled to ``[0, 1]``, shape ``(N, 1, 8, 8)``.

    The split is fixed and needs no randomness: the first 1400 images train, the last 397 test.
    """
    images, target = _read_digits()
    x = torch.from_numpy((images / 16.0).astype(np.float32)).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(target.astype(np.int64))
    full = Dataset(x, y, "digits", (1, 8, 8), 10)
    if split == "all":
        return full
    train, test = full.split(1400)
    return train if split == "train" else test


def _read_digits() -> tuple[np.ndarray, np.ndarray]:
    """The digits table ``(1797, 64)`` and targets, read from scikit-learn's bundled file.

    Reading the CSV directly skips importing scikit-learn (about a second); ``load_digits`` is the
    fallback should the file move.
    """
    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            table = np.loadtxt(path, delimiter=",")
            if table.shape == (1797, 65):
                return table[:, :-1], table[:, -1]
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ValueError("digits: needs scikit-learn (pip install scikit-learn)") from None
    digits = load_digits()
    return digits.data, digits.target


from . import text as _text  # noqa: E402, F401  (registers the text datasets: text:PATH, python-stdlib)
