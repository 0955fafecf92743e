"""Data-parallel metanetwork training: 2 processes (torchrun, gloo, CPU) reproduce one process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from weightspace.distributed import DistContext, distributed_context
from weightspace.metanet import build_metanet, train_metanet
from weightspace.zoo import ZooDataset, build_inr_zoo

ROOT = Path(__file__).resolve().parents[2]
_SETTINGS = {"task": "class", "epochs": 3, "hidden": 8, "batch_size": 4, "seed": 3, "lr": 3e-3}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp") / "inr"
    build_inr_zoo(root, "digits", n=20, progress=False, recipe={"steps": 10, "hidden": [8, 8]})
    # the equivalence is exact when the processes divide the train split (no padding by the sampler)
    assert len(ZooDataset(root, "train", view="state")) % 2 == 0
    return root


def _torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "weightspace.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=ROOT,
                          check=False)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gnn"])
def test_two_gloo_processes_match_one_process(zoo, tmp_path, monkeypatch, arch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    one = train_metanet(zoo, arch=arch, progress=False, out=tmp_path / "one.pt", **_SETTINGS)
    s = _SETTINGS
    p = _torchrun(["metanet", "train", str(zoo), "--task", s["task"], "--arch", arch, "--epochs", str(s["epochs"]),
                   "--hidden", str(s["hidden"]), "--batch-size", str(s["batch_size"]), "--seed", str(s["seed"]),
                   "--lr", str(s["lr"]), "--device", "cpu", "--json", "-o", str(tmp_path / "two.pt")])
    assert p.returncode == 0, p.stderr[-3000:]
    two = json.loads(p.stdout)   # rank 0 alone prints
    assert two["epochs_run"] == len(one.history) == 3 and two["best_epoch"] == one.best_epoch
    for h1, h2 in zip(one.history, two["history"]):
        # all-reduced train loss over the whole split, validation metrics from gathered predictions
        assert h2["train_loss"] == pytest.approx(h1["train_loss"], rel=1e-4, abs=1e-6)
        assert h2["val_loss"] == pytest.approx(h1["val_loss"], rel=1e-4, abs=1e-6)
        assert h2["val_accuracy"] == h1["val_accuracy"]
    a = torch.load(tmp_path / "one.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "two.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    # the updates agree up to float error: summation order differs, and Adam amplifies it a
    # little in coordinates whose gradient is nearly zero, so compare whole-model distances
    torch.manual_seed(s["seed"])
    init = build_metanet(one.config).state_dict()
    diff = torch.cat([(a[k].float() - b[k].float()).flatten() for k in a]).norm()
    moved = torch.cat([(a[k].float() - init[k].float()).flatten() for k in a]).norm()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    print(f"2 processes vs 1: largest parameter difference {worst:.2e}, relative distance {diff / moved:.2e}")
    assert worst < 1e-3 and float(diff / moved) < 1e-3
    assert two["metrics"]["train"]["accuracy"] == pytest.approx(one.metrics["train"]["accuracy"])


def test_single_process_context_without_torchrun(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    ctx, dev = distributed_context(torch.device("cpu"))
    assert ctx == DistContext() and not ctx.enabled and ctx.is_main and dev == torch.device("cpu")
    assert list(ctx.shard(5)) == [0, 1, 2, 3, 4]
    x = torch.arange(10.0).reshape(5, 2)
    assert torch.equal(ctx.gather_rows(x, 5, dev), x)


def test_bad_environment_is_a_value_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        distributed_context(torch.device("cpu"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ValueError, match="RANK=5"):
        distributed_context(torch.device("cpu"))
