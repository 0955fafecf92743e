"""examples/train_a_metanetwork.py runs end to end on tiny settings."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_a_metanetwork.py"


def test_train_a_metanetwork(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("_example_train_a_metanetwork", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main(["--out", str(tmp_path), "--models", "10", "--epochs", "2", "--hidden", "8", "--quiet"])
    text = capsys.readouterr().out
    assert "Kendall tau on the" in text
    assert math.isnan(out["kendall_tau"]) or -1 <= out["kendall_tau"] <= 1
    assert (tmp_path / "metanet.pt").is_file()
