"""bench/width_sweep.py --tiny: every method in both tables, and the PNG written."""
from __future__ import annotations

import pytest
from repo_scripts import REPO, load_script

BENCH = REPO / "bench" / "width_sweep.py"


def _load():
    return load_script(BENCH, "width_sweep")


@pytest.mark.slow
def test_width_sweep_tiny(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    bench = _load()
    png = tmp_path / "sweep.png"
    bench.main(["--tiny", "--quiet", "--plot", str(png), "--cache", str(tmp_path / "cache")])
    out = capsys.readouterr().out
    assert "### MLP" in out and "### ResNet-20 (BatchNorm)" in out
    tables = out.split("### ")[1:]
    assert len(tables) == 2
    for table in tables:
        rows = [line for line in table.splitlines() if line.startswith("| x")]
        assert len(rows) == 2 * len(bench.METHODS)  # widths x1, x2
        for width in ("x1", "x2"):
            got = {line.split("|")[2].strip() for line in rows if line.startswith(f"| {width} ")}
            assert got == set(bench.METHODS)
        for line in rows:
            cells = [c.strip() for c in line.strip("|").split("|")]
            assert len(cells) == 7 and all("±" in c for c in cells[2:])
    assert "REPAIR" in tables[0] and "BN reset" in tables[1]
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
