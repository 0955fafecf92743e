"""examples/train_a_metanetwork.py runs end to end on tiny settings."""
from __future__ import annotations

import math

from repo_scripts import REPO, load_script

EXAMPLE = REPO / "examples" / "train_a_metanetwork.py"


def test_train_a_metanetwork(tmp_path, capsys):
    mod = load_script(EXAMPLE, "_example_train_a_metanetwork")
    out = mod.main(["--out", str(tmp_path), "--models", "10", "--epochs", "2", "--hidden", "8", "--quiet"])
    text = capsys.readouterr().out
    assert "Kendall tau on the" in text
    assert math.isnan(out["kendall_tau"]) or -1 <= out["kendall_tau"] <= 1
    assert (tmp_path / "metanet.pt").is_file()
