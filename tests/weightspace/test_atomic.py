"""One atomic writer: recognisable temporaries, none left by a failed write, and the ones a killed
process left are removed by the next write of the same target."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import weightspace
from merging._atomic import TAG, atomic_write, temp_path
from weightspace.api import MODEL_KEY
from weightspace.merge import merge_checkpoints
from weightspace.models import model_spec_to_json

MLP = {"in_features": 64, "hidden": [24, 24], "out_features": 10}
ROOT = Path(__file__).resolve().parents[2]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()  # reaped: no process has this pid now (pids are not reused this fast)
    return p.pid


def _temps(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if TAG in p.name or p.name.endswith(".tmp"))


def _fake_temp(target: Path, pid: int) -> Path:
    name = temp_path(target).name
    head, _, rest = name.partition(TAG)
    p = target.parent / f"{head}{TAG}{pid}-{rest.split('-', 1)[1]}"
    p.write_bytes(b"partial")
    return p


def _pair(d: Path):
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        state = weightspace.get_model("mlp", **MLP).state_dict()
        paths.append(weightspace.save(state, d / f"{'ab'[seed]}.safetensors",
                                      metadata={MODEL_KEY: model_spec_to_json("mlp", MLP)}))
    return paths


def test_temporaries_are_named_after_their_target(tmp_path):
    t = temp_path(tmp_path / "m.safetensors")
    assert t.parent == tmp_path and t.name.startswith(f".m.safetensors{TAG}{os.getpid()}-")
    assert temp_path(tmp_path / "m.safetensors") != t  # a random part: two writers never collide


def test_a_write_removes_stale_temporaries_of_dead_processes_only(tmp_path):
    target = tmp_path / "m.safetensors"
    dead = _fake_temp(target, _dead_pid())
    live = _fake_temp(target, os.getppid())  # a live process (pytest's parent): maybe still writing
    other = _fake_temp(tmp_path / "other.safetensors", _dead_pid())  # another target: not ours to judge
    weightspace.save({"w": torch.ones(2)}, target)
    assert not dead.exists() and live.exists() and other.exists()
    assert torch.equal(weightspace.load(target)["w"], torch.ones(2))


def test_a_failed_write_leaves_no_temporary_and_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "m.safetensors"
    weightspace.save({"w": torch.zeros(2)}, target)
    before = target.read_bytes()

    def half_then_fail(tensors, f, metadata=None):
        Path(f).write_bytes(b"x" * 1000)
        raise OSError("No space left on device")

    monkeypatch.setattr("weightspace.checkpoint.write.save_file", half_then_fail)
    with pytest.raises(weightspace.CheckpointError, match="nothing was replaced"):
        weightspace.save({"w": torch.ones(2)}, target)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "x.txt", lambda f: (Path(f).write_text("part"), (_ for _ in ()).throw(KeyboardInterrupt)))
    assert target.read_bytes() == before and _temps(tmp_path) == [] and not (tmp_path / "x.txt").exists()


def test_a_failed_low_memory_merge_leaves_no_temporary(tmp_path, monkeypatch):
    a, b = _pair(tmp_path)
    import merging

    calls = []
    original = merging.interpolate

    def fail_on_third(sa, sb, alpha):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return original(sa, sb, alpha)

    monkeypatch.setattr(merging, "interpolate", fail_on_third)
    out = tmp_path / "out"
    with pytest.raises(weightspace.CheckpointError, match="nothing was replaced"):
        merge_checkpoints(a, b, out, max_shard_size="4KB", progress=False)
    assert len(calls) == 3 and not out.exists() and _temps(tmp_path) == []


_KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
import torch
import weightspace, weightspace.checkpoint.write as ck

real = ck.save_file
def save_then_die(tensors, f, metadata=None):
    if Path(f).name.startswith(".model-00002"):
        Path(f).write_bytes(b"x" * 4096)  # a partial second shard, then SIGKILL: no cleanup runs
        os.kill(os.getpid(), signal.SIGKILL)
    real(tensors, f, metadata=metadata)
ck.save_file = save_then_die
weightspace.save({f"w{i}": torch.ones(1024) for i in range(4)}, sys.argv[1], max_shard_size="5KB")
"""


def test_a_killed_sharded_write_is_cleaned_by_the_next(tmp_path):
    out = tmp_path / "sharded"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(_KILLED_WRITER), str(out)], env=env,
                       capture_output=True, timeout=120)
    assert r.returncode == -signal.SIGKILL
    left = _temps(out)
    assert len(left) == 2 and all(TAG in n for n in left)  # shard 1 complete, shard 2 partial: litter
    # the next write, split differently (one shard), removes both: their writer is dead
    weightspace.save({f"w{i}": torch.ones(1024) for i in range(4)}, out)
    assert _temps(out) == []
    assert sorted(p.name for p in out.iterdir()) == ["model-00001-of-00001.safetensors", "model.safetensors.index.json"]


def test_a_low_memory_merge_cleans_stale_temporaries_in_its_output_directory(tmp_path):
    a, b = _pair(tmp_path)
    out = tmp_path / "merged"
    out.mkdir()
    dead = _dead_pid()
    stale = [_fake_temp(out / n, dead) for n in ("model-00003-of-00007.safetensors", "model.safetensors.index.json")]
    foreign = _fake_temp(out / "notes.txt", dead)
    merge_checkpoints(a, b, out, low_memory=True, progress=False)
    assert not any(p.exists() for p in stale) and foreign.exists()
