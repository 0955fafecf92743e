from __future__ import annotations

import json
import os
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import weightspace.checkpoint as ckpt_mod
from weightspace.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointInfo,
    check_finite,
    check_fits,
    check_not_input,
    load,
    load_checkpoint,
    load_into,
    open_checkpoint,
    save,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int64]


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def assert_same(a: dict, b: dict) -> None:
    assert list(sorted(a)) == list(sorted(b))
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape, k
        assert torch.equal(bits(a[k]), bits(b[k])), k


def make_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for i, dtype in enumerate(DTYPES):
        if dtype.is_floating_point:
            t = torch.randn(3, 5, generator=g).to(dtype)
            t[0, 0] = float("nan")
            t[0, 1] = float("-inf")
        else:
            t = torch.randint(-(2**40), 2**40, (4,), generator=g, dtype=dtype)
        state[f"layer{i}.weight"] = t
    state["scalar"] = torch.tensor(3.5)
    state["empty"] = torch.zeros(0, 2)
    return state


def no_temp_files(d) -> bool:
    return not [p for p in os.listdir(d) if p.endswith(".tmp") or ".weightspace-tmp-" in p]


def one_line_naming(err: pytest.ExceptionInfo, *names: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg
    for n in names:
        assert n in msg, (n, msg)


class TinyNet(nn.Module):
    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.bn(self.fc1(x)))


# ---------------------------------------------------------------- round trips

@pytest.mark.parametrize("ext", [".safetensors", ".pt", ".pth", ".bin"])
def test_round_trip_every_format(tmp_path, ext):
    state = make_state()
    path = save(state, tmp_path / f"m{ext}")
    found = load_checkpoint(path)
    loaded, info = found.state, found.info
    assert_same(state, loaded)
    assert isinstance(info, CheckpointInfo)
    assert info.format == ("safetensors" if ext == ".safetensors" else "torch")
    assert info.files == (tmp_path / f"m{ext}",)
    assert info.key_used is None and info.stripped_prefix is None
    assert no_temp_files(tmp_path)


@pytest.mark.parametrize("ext", [".safetensors", ".pt"])
def test_metadata_round_trip(tmp_path, ext):
    meta = {"weightspace.model": "mlp(784, 128, 10)", "note": "hello"}
    path = save(make_state(), tmp_path / f"m{ext}", metadata=meta)
    found = load_checkpoint(path)
    state, info = found.state, found.info
    assert_same(make_state(), state)
    assert info.metadata == meta
    assert open_checkpoint(path).metadata == meta


def test_pt_with_metadata_layout_is_documented_dict(tmp_path):
    save({"w": torch.ones(2)}, tmp_path / "m.pt", metadata={"a": "b"})
    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    assert set(raw) == {"state_dict", "weightspace_metadata"}
    assert load_checkpoint(tmp_path / "m.pt").info.key_used == "state_dict"


@pytest.mark.parametrize("key", ["state_dict", "model", "model_state_dict", "module", "net", "ema"])
def test_training_checkpoint_key_detected(tmp_path, key):
    state = make_state()
    path = tmp_path / "train.ckpt"
    torch.save({"epoch": 7, "optimizer": {"state": {}, "lr": 0.1}, key: state}, path)
    found = load_checkpoint(path)
    loaded, info = found.state, found.info
    assert_same(state, loaded)
    assert info.key_used == key
    assert open_checkpoint(path).info.key_used == key


def test_training_checkpoint_explicit_and_nested_key(tmp_path):
    state = make_state()
    path = tmp_path / "train.pt"
    torch.save({"step": 1, "ema": {"w": torch.ones(1)}, "model": {"state_dict": state}}, path)
    assert load_checkpoint(path).info.key_used == "model.state_dict"
    assert_same({"w": torch.ones(1)}, load(path, key="ema"))
    assert_same(state, load(path, key="model.state_dict"))
    with pytest.raises(CheckpointError) as err:
        load(path, key="nope")
    one_line_naming(err, "train.pt", "'nope'", "'model'")


def test_module_prefix_stripped_only_when_all_keys_have_it(tmp_path):
    state = make_state()
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "dp.pt")
    found = load_checkpoint(tmp_path / "dp.pt")
    loaded, info = found.state, found.info
    assert_same(state, loaded)
    assert info.stripped_prefix == "module."
    with open_checkpoint(tmp_path / "dp.pt") as ck:
        assert "scalar" in ck and ck.shape("layer0.weight") == (3, 5)

    mixed = {"module.a": torch.ones(1), "b": torch.ones(1)}
    save(mixed, tmp_path / "mixed.safetensors")
    found = load_checkpoint(tmp_path / "mixed.safetensors")
    loaded, info = found.state, found.info
    assert set(loaded) == {"module.a", "b"} and info.stripped_prefix is None


def test_non_tensor_entries_ignored_with_warning(tmp_path):
    torch.save({"w": torch.ones(2), "num_epochs": 3}, tmp_path / "m.pt")
    with pytest.warns(UserWarning, match="num_epochs"):
        found = load_checkpoint(tmp_path / "m.pt")
        state, info = found.state, found.info
    assert set(state) == {"w"} and info.ignored == ("num_epochs",)


def test_sharded_safetensors_written_and_read(tmp_path):
    state = {f"l{i}.weight": torch.randn(16, 16).to(DTYPES[i % 4]) for i in range(6)}
    out = tmp_path / "sharded"
    index = save(state, out, max_shard_size="2KB", metadata={"k": "v"})
    assert index == out / "model.safetensors.index.json"
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    weight_map = json.loads(index.read_text())["weight_map"]
    assert set(weight_map) == set(state) and set(weight_map.values()) == set(shards)
    for src in (out, index):
        found = load_checkpoint(src)
        loaded, info = found.state, found.info
        assert_same(state, loaded)
        assert info.index == index and len(info.files) == len(shards)
        assert info.metadata == {"k": "v"}
    with open_checkpoint(out) as ck:
        assert list(ck) == list(state)
        assert ck.shape("l5.weight") == (16, 16) and ck.dtype("l5.weight") == DTYPES[1]
        assert torch.equal(bits(ck["l5.weight"]), bits(state["l5.weight"]))
    assert no_temp_files(out)


def test_sharded_to_index_path_and_stale_shards_removed(tmp_path):
    state = {f"w{i}": torch.randn(64) for i in range(4)}  # 256 bytes each
    index = save(state, tmp_path / "net.safetensors.index.json", max_shard_size=256)
    assert len(list(tmp_path.glob("net-*-of-00004.safetensors"))) == 4
    save(state, index, max_shard_size="1KiB")
    assert [p.name for p in tmp_path.glob("net-*.safetensors")] == ["net-00001-of-00001.safetensors"]
    assert_same(state, load(index))


def test_sharded_bin_index(tmp_path):
    state = make_state()
    keys = list(state)
    names = ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
    parts = [keys[:3], keys[3:]]
    for name, part in zip(names, parts):
        torch.save({k: state[k] for k in part}, tmp_path / name)
    weight_map = {k: n for n, part in zip(names, parts) for k in part}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    for src in (tmp_path, tmp_path / "pytorch_model.bin.index.json"):
        found = load_checkpoint(src)
        loaded, info = found.state, found.info
        assert_same(state, loaded)
        assert info.format == "torch" and len(info.files) == 2
    with open_checkpoint(tmp_path) as ck:
        assert ck.shape(keys[-1]) == tuple(state[keys[-1]].shape)


def test_directory_with_single_file(tmp_path):
    save(make_state(), tmp_path / "model.safetensors")
    assert_same(make_state(), load(tmp_path))


def test_device_argument(tmp_path):
    path = save({"w": torch.ones(2)}, tmp_path / "m.safetensors")
    assert load(path, device=torch.device("cpu"))["w"].device.type == "cpu"
    with pytest.raises(CheckpointError) as err:
        load(path, device="nodevice")
    one_line_naming(err, "m.safetensors", "nodevice")


# ---------------------------------------------------------------- lazy access

def test_lazy_mapping_reads_one_tensor_and_shapes_without_data(tmp_path, monkeypatch):
    state = make_state()
    for ext in (".safetensors", ".pt"):
        path = save(state, tmp_path / f"m{ext}")
        with open_checkpoint(path) as ck:
            assert isinstance(ck, Checkpoint) and len(ck) == len(state) and set(ck) == set(state)
            assert torch.equal(bits(ck["layer2.weight"]), bits(state["layer2.weight"]))
            with pytest.raises(KeyError, match="nope"):
                ck["nope"]
            assert ck.get("nope") is None
            with pytest.raises(TypeError):
                ck["x"] = torch.ones(1)  # type: ignore[index]
            with monkeypatch.context() as m:  # shape, dtype, check_fits read no tensor data
                m.setattr(Checkpoint, "__getitem__", lambda *a: pytest.fail("tensor data was read"))
                assert ck.shape("layer0.weight") == (3, 5) and ck.shape("scalar") == ()
                assert ck.dtype("layer2.weight") == torch.bfloat16
                assert check_fits(ck, state) == ([], [])
            assert "tensors" in repr(ck)


def test_legacy_pt_and_conversion_from_lazy_checkpoint(tmp_path):
    state = make_state()
    torch.save(state, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    with open_checkpoint(tmp_path / "old.pt") as ck:  # not memory-mappable: read whole, still a Mapping
        assert ck.shape("layer1.weight") == (3, 5)
        out = save(ck, tmp_path / "new.safetensors", inputs=[tmp_path / "old.pt"])
    assert_same(state, load(out))


def test_compile_prefix_and_load_into_lazy(tmp_path):
    net = TinyNet()
    torch.save({"model": {f"_orig_mod.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "c.pt")
    with open_checkpoint(tmp_path / "c.pt") as ck:
        assert ck.info.stripped_prefix == "_orig_mod." and ck.info.key_used == "model"
        assert load_into(TinyNet(), ck) == ([], [])
        with pytest.raises(CheckpointError) as err:
            load_into(TinyNet(hidden=5), ck)
    one_line_naming(err, "c.pt", "'fc1.weight'", "(8, 4)", "(5, 4)")


# ---------------------------------------------------------------- atomic writes

def test_atomic_write_invalid_input_leaves_existing_file(tmp_path):
    path = save({"w": torch.ones(3)}, tmp_path / "m.safetensors")
    before = path.read_bytes()
    bad_inputs = [{"w": torch.ones(3), "epoch": 3}, {1: torch.ones(1)}, [torch.ones(1)]]
    for bad in bad_inputs:
        with pytest.raises(CheckpointError) as err:
            save(bad, path)  # type: ignore[arg-type]
        one_line_naming(err, "m.safetensors")
    with pytest.raises(CheckpointError) as err:
        save({"w": torch.ones(3)}, path, metadata={"epoch": 3})  # type: ignore[dict-item]
    one_line_naming(err, "m.safetensors", "'epoch'")
    assert path.read_bytes() == before and no_temp_files(tmp_path)


def test_atomic_write_failure_midway_leaves_existing_file(tmp_path, monkeypatch):
    path = save({"w": torch.ones(3)}, tmp_path / "m.safetensors")
    before = path.read_bytes()

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.write, "save_file", broken)
    with pytest.raises(CheckpointError) as err:
        save({"w": torch.zeros(3)}, path)
    one_line_naming(err, "m.safetensors", "disk full")
    with pytest.raises(CheckpointError):
        save({"a": torch.zeros(3), "b": torch.zeros(3)}, tmp_path / "sh", max_shard_size=12)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.safetensors"]


def test_refuses_to_overwrite_input(tmp_path):
    path = save({"w": torch.ones(3)}, tmp_path / "a.safetensors")
    with pytest.raises(CheckpointError) as err:
        save({"w": torch.zeros(3)}, path, inputs=[path])
    one_line_naming(err, "a.safetensors", "refusing")
    link = tmp_path / "link.safetensors"
    link.symlink_to(path)
    with pytest.raises(CheckpointError):
        check_not_input(link, [str(path)])
    check_not_input(tmp_path / "b.safetensors", [path])

    index = save({"w": torch.ones(3)}, tmp_path / "sh")
    with pytest.raises(CheckpointError):  # a shard of the sharded input
        save({"w": torch.zeros(3)}, tmp_path / "sh" / "model-00001-of-00001.safetensors", inputs=[index])
    with pytest.raises(CheckpointError):
        check_not_input(tmp_path / "sh", [tmp_path / "sh"])
    assert torch.equal(load(path)["w"], torch.ones(3))


def test_shared_and_non_contiguous_tensors_saved(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    state = {"a": base, "tied": base, "t": base.t(), "row": base[1]}
    for ext in (".safetensors", ".pt"):
        loaded = load(save(state, tmp_path / f"m{ext}"))
        assert_same({k: v.contiguous() for k, v in state.items()}, loaded)
    assert state["t"].is_contiguous() is False  # inputs are not mutated


def test_bad_shard_size_and_extension(tmp_path):
    for bad in ("lots", 0, -5, "1XB"):
        with pytest.raises(CheckpointError) as err:
            save({"w": torch.ones(1)}, tmp_path / "d", max_shard_size=bad)
        one_line_naming(err, "max_shard_size")
    with pytest.raises(CheckpointError) as err:
        save({"w": torch.ones(1)}, tmp_path / "m.safetensors", max_shard_size="1GB")
    one_line_naming(err, "m.safetensors")
    with pytest.raises(CheckpointError) as err:
        save({"w": torch.ones(1)}, tmp_path / "m.npz")
    one_line_naming(err, "m.npz", ".npz")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- bad inputs

def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(CheckpointError) as err:
        load(tmp_path / "absent.safetensors")
    one_line_naming(err, "absent.safetensors")
    (tmp_path / "weights.npz").write_bytes(b"x")
    with pytest.raises(CheckpointError) as err:
        load(tmp_path / "weights.npz")
    one_line_naming(err, "weights.npz", ".npz")
    with pytest.raises(CheckpointError) as err:
        load(tmp_path)
    one_line_naming(err, str(tmp_path))


@pytest.mark.parametrize("cut", [-5, 20, 3])
def test_truncated_safetensors(tmp_path, cut):
    data = save(make_state(), tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:cut])
    for fn in (load, open_checkpoint):
        with pytest.raises(CheckpointError) as err:
            fn(tmp_path / "cut.safetensors")
        one_line_naming(err, "cut.safetensors")


def test_garbled_safetensors_header(tmp_path):
    data = bytearray(save(make_state(), tmp_path / "m.safetensors").read_bytes())
    data[12:20] = b"#}{\x00\xff!!x"
    (tmp_path / "bad.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as err:
        load(tmp_path / "bad.safetensors")
    one_line_naming(err, "bad.safetensors", "header")
    assert isinstance(err.value.__cause__, Exception)


def test_truncated_and_junk_pt(tmp_path):
    data = save(make_state(), tmp_path / "m.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.bin").write_bytes(b"not a checkpoint at all")
    for name in ("cut.pt", "junk.bin"):
        with pytest.raises(CheckpointError) as err:
            load(tmp_path / name)
        one_line_naming(err, name)


class _Evil:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.makedirs, (self.target,))


def test_pickle_with_code_is_refused_not_run(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"w": torch.ones(1), "x": _Evil(str(marker))}, tmp_path / "evil.pt")
    for fn in (load, open_checkpoint):
        with pytest.raises(CheckpointError) as err:
            fn(tmp_path / "evil.pt")
        one_line_naming(err, "evil.pt", "weights_only", "makedirs")
    assert not marker.exists()


def test_training_checkpoint_without_state_dict(tmp_path):
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}, "config": "x"}, tmp_path / "run.pt")
    with pytest.raises(CheckpointError) as err:
        load(tmp_path / "run.pt")
    one_line_naming(err, "run.pt", "'epoch'", "'optimizer'", "'config'")
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError) as err:
        load(tmp_path / "list.pt")
    one_line_naming(err, "list.pt", "list")


def test_missing_shard_and_bad_index(tmp_path):
    save({"a": torch.ones(4), "b": torch.ones(4)}, tmp_path / "sh", max_shard_size=16)
    (tmp_path / "sh" / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError) as err:
        load(tmp_path / "sh")
    one_line_naming(err, "model-00002-of-00002.safetensors", "model.safetensors.index.json", "'b'")

    (tmp_path / "bad.safetensors.index.json").write_text("{not json")
    with pytest.raises(CheckpointError) as err:
        load(tmp_path / "bad.safetensors.index.json")
    one_line_naming(err, "bad.safetensors.index.json")

    save({"a": torch.ones(4)}, tmp_path / "ok")
    idx = tmp_path / "ok" / "model.safetensors.index.json"
    idx.write_text(json.dumps({"weight_map": {"a": "model-00001-of-00001.safetensors",
                                              "ghost": "model-00001-of-00001.safetensors"}}))
    with open_checkpoint(idx) as ck:
        assert torch.equal(ck["a"], torch.ones(4))
        with pytest.raises(CheckpointError) as err:
            ck["ghost"]
    one_line_naming(err, "'ghost'", "model-00001-of-00001.safetensors")


def test_index_shard_outside_directory(tmp_path):
    (tmp_path / "sub").mkdir()
    save({"a": torch.ones(1)}, tmp_path / "x.safetensors")
    idx = tmp_path / "sub" / "model.safetensors.index.json"
    idx.write_text(json.dumps({"weight_map": {"a": "../x.safetensors"}}))
    with pytest.raises(CheckpointError) as err:
        load(idx)
    one_line_naming(err, "../x.safetensors", "outside")


def test_key_on_safetensors_is_an_error(tmp_path):
    path = save({"w": torch.ones(1)}, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError) as err:
        load(path, key="model")
    one_line_naming(err, "m.safetensors")


# ---------------------------------------------------------------- fitting models

def test_load_into_round_trip_and_num_batches_tracked(tmp_path):
    src, dst = TinyNet(), TinyNet()
    state = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = save(state, tmp_path / "net.safetensors")
    assert load_into(dst, path) == ([], [])
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in state.items())
    assert load_into(TinyNet(), src.state_dict()) == ([], [])


def test_load_into_reports_shape_mismatch_missing_unexpected(tmp_path):
    path = save(TinyNet(hidden=6).state_dict(), tmp_path / "run3.safetensors")
    model = TinyNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_into(model, path)
    one_line_naming(err, "load_into:", "'fc1.weight' in", "run3.safetensors",
                    "has shape (6, 4); the model expects (8, 4)")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())

    state = dict(TinyNet().state_dict())
    state.pop("fc2.bias")
    state["extra.weight"] = torch.ones(1)
    path = save(state, tmp_path / "run4.safetensors")
    with pytest.raises(CheckpointError) as err:
        load_into(TinyNet(), path)
    one_line_naming(err, "run4.safetensors", "missing", "'fc2.bias'", "unexpected", "'extra.weight'")
    assert load_into(TinyNet(), path, strict=False) == (["fc2.bias"], ["extra.weight"])


def test_check_fits_against_expected_state():
    expected = {"a": torch.zeros(2, 3), "b": torch.zeros(1)}
    assert check_fits({"a": torch.ones(2, 3), "b": torch.ones(1)}, expected) == ([], [])
    with pytest.raises(CheckpointError) as err:
        check_fits({"a": torch.ones(3, 2), "b": torch.ones(2)}, expected, path="x.pt")
    one_line_naming(err, "check_fits:", "'a' in x.pt has shape (3, 2); the model expects (2, 3)",
                    "1 more", "'b' (2,) vs (1,)")


def test_check_finite():
    check_finite({"a": torch.ones(2), "i": torch.arange(3)})
    with pytest.raises(CheckpointError) as err:
        check_finite({"a": torch.ones(2), "b": torch.tensor([1.0, float("nan"), float("inf")])}, "m.pt")
    one_line_naming(err, "'b'", "m.pt", "1 NaN", "1 Inf")


# ---------------------------------------------------------------- property

_DTYPES_ALL = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64,
               torch.int32, torch.int8, torch.uint8, torch.bool]


@settings(max_examples=25, deadline=None)
@given(
    specs=st.lists(st.tuples(st.lists(st.integers(0, 4), max_size=3), st.sampled_from(_DTYPES_ALL)),
                   min_size=1, max_size=5),
    ext=st.sampled_from([".safetensors", ".pt", "sharded"]),
    seed=st.integers(0, 2**16),
)
def test_round_trip_property(tmp_path_factory, specs, ext, seed):
    g = torch.Generator().manual_seed(seed)
    state = {}
    for i, (shape, dtype) in enumerate(specs):
        raw = torch.randint(0, 256, (max(1, torch.Size(shape).numel()) * 8,), generator=g, dtype=torch.uint8)
        n = torch.Size(shape).numel() * torch.empty(0, dtype=dtype).element_size()
        t = raw[:n].view(dtype).reshape(shape) if dtype != torch.bool else (raw[: torch.Size(shape).numel()] % 2).bool().reshape(shape)
        state[f"p{i}"] = t
    d = tmp_path_factory.mktemp("prop")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        if ext == "sharded":
            path = save(state, d / "out", max_shard_size=16, metadata={"s": str(seed)})
        else:
            path = save(state, d / f"m{ext}", metadata={"s": str(seed)})
        found = load_checkpoint(path)
        loaded, info = found.state, found.info
    assert_same(state, loaded)
    assert info.metadata == {"s": str(seed)}
    with open_checkpoint(path) as ck:
        assert all(ck.shape(k) == tuple(v.shape) and ck.dtype(k) == v.dtype for k, v in state.items())


def test_return_info_still_works_and_is_deprecated(tmp_path):
    path = save({"w": torch.ones(2)}, tmp_path / "m.safetensors", metadata={"note": "x"})
    with pytest.warns(DeprecationWarning, match="load_checkpoint"):
        state, info = load(path, return_info=True)
    found = load_checkpoint(path)
    assert state.keys() == found.state.keys() and info.metadata == found.info.metadata
