from __future__ import annotations

import gzip
import struct
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from weightspace.data import (
    Dataset,
    TensorLoader,
    list_datasets,
    load_data,
    load_dataset,
    read_idx,
    register_dataset,
)
from weightspace.models import MLP

# the MNIST test set (t10k IDX files) where CI keeps it: ../shared/data/mnist beside the repository
MNIST_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist"


def write_idx(path: Path, array: np.ndarray, *, cut: int = 0) -> Path:
    """Write ``array`` (uint8) as an IDX file, gzipped if the name ends in .gz; drop ``cut`` final bytes."""
    data = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data += np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if cut:
        data = data[:-cut]
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def tiny_mnist(directory: Path, n: int = 10, prefix: str = "t10k", gz: bool = False, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 4, 5), dtype=np.uint8)
    images[0, 0, 0] = 255
    labels = (np.arange(n) % 10).astype(np.uint8)
    suffix = ".gz" if gz else ""
    directory.mkdir(parents=True, exist_ok=True)
    write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images)
    write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return images


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    import weightspace.data as data

    monkeypatch.setattr(data, "DATASETS", data.DATASETS.copy())


@pytest.fixture
def user_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A user's module with data callables, as ``--data pkg.mod:callable`` would name."""
    (tmp_path / "ws_user_data.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch.utils.data import DataLoader, TensorDataset

            def tensors(split="train"):
                n = 30 if split == "train" else 10
                g = torch.Generator().manual_seed(0 if split == "train" else 1)
                return torch.randn(n, 4, generator=g), torch.arange(n) % 3

            def loader():
                x, y = tensors()
                return DataLoader(TensorDataset(x, y), batch_size=8)

            def generator(**kwargs):
                x, y = tensors(kwargs.get("split", "train"))
                return ((x[i:i + 7], y[i:i + 7]) for i in range(0, len(x), 7))

            def bad_return():
                return 3

            def bad_batches():
                return [(torch.zeros(2, 3),)]
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "ws_user_data"


# --------------------------------------------------------------------------- digits


def test_digits_splits() -> None:
    train = load_dataset("digits")
    test = load_dataset("digits", split="test")
    full = load_dataset("digits", split="all")
    assert (len(train), len(test), len(full)) == (1400, 397, 1797)
    for ds in (train, test, full):
        assert ds.x.shape[1:] == (1, 8, 8) and ds.input_shape == (1, 8, 8)
        assert ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64
        assert ds.num_classes == 10 and ds.name == "digits"
        assert 0.0 <= ds.x.min() and ds.x.max() == 1.0
    torch.testing.assert_close(torch.cat([train.x, test.x]), full.x)
    torch.testing.assert_close(torch.cat([train.y, test.y]), full.y)
    again = load_dataset("digits")
    assert torch.equal(again.x, train.x) and torch.equal(again.y, train.y)
    assert set(test.y.tolist()) == set(range(10))


def test_digits_feed_an_mlp_that_flattens() -> None:
    x, y = next(iter(load_data("digits", batch_size=16)))
    assert x.shape == (16, 1, 8, 8) and y.shape == (16,)
    assert MLP(in_features=64, hidden=(32,), out_features=10)(x).shape == (16, 10)


def test_loader_batches_and_seeded_shuffle() -> None:
    loader = load_data("digits", split="test", batch_size=100, shuffle=True, seed=3)
    assert isinstance(loader, TensorLoader) and len(loader) == 4
    first = [y for _, y in loader]
    assert [len(y) for y in first] == [100, 100, 100, 97]
    second = [y for _, y in loader]
    assert sorted(torch.cat(first).tolist()) == sorted(torch.cat(second).tolist())
    assert not torch.equal(torch.cat(first), torch.cat(second))  # a new order on every pass
    replay = load_data("digits", split="test", batch_size=100, shuffle=True, seed=3)
    assert all(torch.equal(a, b) for a, (_, b) in zip(first, replay))
    other = load_data("digits", split="test", batch_size=100, shuffle=True, seed=4)
    assert not torch.equal(torch.cat(first), torch.cat([y for _, y in other]))
    plain = load_data("digits", split="test", batch_size=100)
    assert torch.equal(torch.cat([y for _, y in plain]), load_dataset("digits", split="test").y)
    assert len(load_dataset("digits", split="test").loader(100, drop_last=True)) == 3


def test_dataset_container() -> None:
    ds = Dataset(torch.rand(10, 3), torch.arange(10) % 4, "toy")
    assert ds.input_shape == (3,) and ds.num_classes == 4 and len(ds) == 10
    assert repr(ds) == "Dataset('toy', n=10, input_shape=(3,), num_classes=4)"
    a, b = ds.split(0.7)
    assert (len(a), len(b)) == (7, 3)
    c, d = ds.split(4, shuffle=True, seed=0)
    assert sorted(torch.cat([c.y, d.y]).tolist()) == sorted(ds.y.tolist())
    assert Dataset(torch.rand(4, 2), torch.rand(4), "reg").num_classes is None
    with pytest.raises(ValueError, match="same first axis"):
        Dataset(torch.rand(4, 2), torch.arange(3), "bad")
    with pytest.raises(ValueError, match="does not fit"):
        ds.split(11)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        ds.loader(0)


# --------------------------------------------------------------------------- IDX


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"the MNIST IDX files are not in {MNIST_DIR}")
def test_mnist_idx_shared_t10k() -> None:
    spec = f"mnist-idx:{MNIST_DIR}"
    train = load_dataset(spec)
    test = load_dataset(spec, split="test")
    assert train.x.shape == (8000, 1, 28, 28) and test.x.shape == (2000, 1, 28, 28)
    assert train.input_shape == (1, 28, 28) and train.num_classes == 10
    assert train.x.dtype == torch.float32 and 0.0 <= train.x.min() and train.x.max() == 1.0
    assert train.y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the well-known first t10k labels
    full = load_dataset(spec, split="all")
    assert torch.equal(full.y, torch.cat([train.y, test.y]))


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_tiny_t10k_only(tmp_path: Path, gz: bool) -> None:
    images = tiny_mnist(tmp_path, n=10, gz=gz)
    train = load_dataset(f"mnist-idx:{tmp_path}")
    test = load_dataset(f"mnist-idx:{tmp_path}", split="test")
    assert train.x.shape == (8, 1, 4, 5) and test.x.shape == (2, 1, 4, 5)
    assert train.input_shape == (1, 4, 5)
    torch.testing.assert_close(train.x[:, 0], torch.from_numpy(images[:8] / 255.0).float())
    assert train.x[0, 0, 0, 0] == 1.0
    assert test.y.tolist() == [8, 9]
    batches = list(load_data(f"mnist-idx:{tmp_path}", split="all", batch_size=4))
    assert [len(x) for x, _ in batches] == [4, 4, 2]


def test_mnist_idx_with_train_files(tmp_path: Path) -> None:
    tiny_mnist(tmp_path, n=6, prefix="train", seed=1)
    tiny_mnist(tmp_path, n=3, prefix="t10k", seed=2)
    assert len(load_dataset(f"mnist-idx:{tmp_path}")) == 6
    assert len(load_dataset(f"mnist-idx:{tmp_path}", split="test")) == 3
    assert len(load_dataset(f"mnist-idx:{tmp_path}", split="all")) == 9


def test_read_idx_dtypes(tmp_path: Path) -> None:
    values = np.arange(6, dtype=">f4").reshape(2, 3)
    path = tmp_path / "floats.idx"
    path.write_bytes(struct.pack(">BBBB", 0, 0, 0x0D, 2) + struct.pack(">2I", 2, 3) + values.tobytes())
    np.testing.assert_array_equal(read_idx(path), values)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_idx_names_the_file(tmp_path: Path, gz: bool) -> None:
    tiny_mnist(tmp_path, gz=gz)
    name = "t10k-images-idx3-ubyte" + (".gz" if gz else "")
    images = np.zeros((10, 4, 5), dtype=np.uint8)
    if gz:  # cut the compressed stream itself
        raw = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(raw[: len(raw) // 2])
    else:
        write_idx(tmp_path / name, images, cut=7)
    with pytest.raises(ValueError, match=rf"{name} is truncated"):
        load_dataset(f"mnist-idx:{tmp_path}")


def test_idx_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad-idx3-ubyte"
    bad.write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="bad-idx3-ubyte is not an IDX file"):
        read_idx(bad)
    header_only = tmp_path / "short"
    header_only.write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(ValueError, match="short is truncated: its header"):
        read_idx(header_only)
    with pytest.raises(ValueError, match="does not exist"):
        read_idx(tmp_path / "missing")
    long = write_idx(tmp_path / "long", np.zeros((2, 2), dtype=np.uint8))
    long.write_bytes(long.read_bytes() + b"xx")
    with pytest.raises(ValueError, match="long has 2 bytes after the data"):
        read_idx(long)


def test_mnist_idx_directory_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mnist-idx: directory .*nope' does not exist"):
        load_dataset(f"mnist-idx:{tmp_path / 'nope'}")
    with pytest.raises(ValueError, match="mnist-idx: no t10k-images-idx3-ubyte"):
        load_dataset(f"mnist-idx:{tmp_path}")
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 2, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="has t10k-images-idx3-ubyte but no t10k-labels-idx1-ubyte"):
        load_dataset(f"mnist-idx:{tmp_path}")
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(4, dtype=np.uint8))
    with pytest.raises(ValueError, match="has 3 images but t10k-labels-idx1-ubyte has 4 labels"):
        load_dataset(f"mnist-idx:{tmp_path}")


# --------------------------------------------------------------------------- specs


@pytest.mark.parametrize(
    ("spec", "hint"),
    [
        ("digts", "unknown dataset 'digts'; choose one of: digits, mnist-idx:DIR, python-stdlib, text:PATH; "
                  "or give package.module:callable"),
        ("mnist-idx", "needs an argument: mnist-idx:DIR"),
        ("digits:extra", "takes no argument"),
        ("cifar-10:dir", "unknown dataset 'cifar-10:dir'"),
        ("ws_no_such_module:make", "cannot import module 'ws_no_such_module'"),
        ("", "expected a dataset spec"),
    ],
)
def test_bad_specs(spec: str, hint: str) -> None:
    with pytest.raises(ValueError, match=hint):
        load_data(spec)


def test_bad_split() -> None:
    with pytest.raises(ValueError, match="split must be one of: train, test, all"):
        load_dataset("digits", split="valid")  # type: ignore[arg-type]


def test_list_and_register_datasets(fresh_registry: None) -> None:
    assert list_datasets() == ["digits", "mnist-idx", "python-stdlib", "text"]

    @register_dataset("toy", description="a toy")
    def toy(arg: str | None, split: str) -> Dataset:
        return Dataset(torch.zeros(5, 2), torch.zeros(5, dtype=torch.long), "toy")

    assert len(load_dataset("toy")) == 5
    with pytest.raises(ValueError, match="'toy' is already registered"):
        register_dataset("toy")(toy)
    with pytest.raises(ValueError, match="bad name"):
        register_dataset("a:b")


def test_callable_specs(user_data: str) -> None:
    train = load_dataset(f"{user_data}:tensors")
    test = load_dataset(f"{user_data}:tensors", split="test")
    assert (len(train), len(test)) == (30, 10)
    assert train.input_shape == (4,) and train.num_classes == 3 and train.name == f"{user_data}:tensors"
    assert [len(x) for x, _ in load_data(f"{user_data}:tensors", batch_size=16)] == [16, 14]

    loader = load_data(f"{user_data}:loader", batch_size=1000)  # the callable's own batching is kept
    assert len(loader) == 4
    batches = list(loader)
    assert [len(x) for x, _ in batches] == [8, 8, 8, 6]
    assert all(isinstance(b, tuple) for b in batches)
    assert len(load_dataset(f"{user_data}:loader")) == 30

    once = load_data(f"{user_data}:generator", split="test")
    assert [len(x) for x, _ in once] == [7, 3]
    assert [len(x) for x, _ in once] == [7, 3]  # a generator is kept, so it can be iterated again
    assert len(load_dataset(f"{user_data}:generator")) == 30

    with pytest.raises(ValueError, match="returned int; expected a Dataset"):
        load_data(f"{user_data}:bad_return")
    with pytest.raises(ValueError, match=r"yielded a tuple of 1 \(Tensor\); each batch must be a pair"):
        load_data(f"{user_data}:bad_batches")

