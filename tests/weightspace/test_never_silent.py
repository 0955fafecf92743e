"""A merge that can permute little of the network says so in one line; --require-aligned refuses it."""
from __future__ import annotations

import json

import pytest
import torch

import weightspace
from weightspace.api import MODEL_KEY, check_aligned
from weightspace.cli import main


def _branchy_pair(tmp_path):
    import nets

    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        state = nets.BranchyMLP().state_dict()
        paths.append(weightspace.save(state, tmp_path / f"m{seed}.safetensors",
                                      metadata={MODEL_KEY: json.dumps({"name": "nets:BranchyMLP", "kwargs": {}})}))
    return paths


def test_structure_reports_the_permuted_fraction():
    mlp = weightspace.get_model("mlp", in_features=8, hidden=[16], out_features=4)
    s = weightspace.trace_model(mlp)
    moved = 16 * 8 + 16 + 4 * 16  # every tensor with a hidden axis; the output bias has none
    assert s.permuted_fraction == pytest.approx(moved / (moved + 4)) and "permuted=98%" in repr(s)
    import nets

    s = weightspace.trace(nets.BranchyMLP(), torch.randn(2, 16))
    assert s.permuted_fraction == 0.0 and not s.groups


def test_merge_of_an_untraceable_model_warns_in_one_line(tmp_path, capsys):
    a, b = _branchy_pair(tmp_path)
    out = tmp_path / "m.safetensors"
    argv = ["merge", str(a), str(b), "-o", str(out), "--trust-model-code", "--quiet"]
    assert main(argv) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("weightspace: warning: ") and "permute 0% of the parameters" in err[0]
    assert "plain averaging" in err[0] and "could not" in err[0]  # the tracer's reason is named
    # and the result is the plain average
    sa, sb, sm = (weightspace.load(p) for p in (a, b, out))
    assert all(torch.allclose(sm[k], (sa[k] + sb[k]) / 2) for k in sm)


@pytest.mark.parametrize("extra", [["--require-aligned"], ["--require-aligned", "0.9"], ["--low-memory",
                                                                                          "--require-aligned"]])
def test_require_aligned_turns_it_into_exit_2(tmp_path, capsys, extra):
    a, b = _branchy_pair(tmp_path)
    out = tmp_path / "m.safetensors"
    assert main(["merge", str(a), str(b), "-o", str(out), "--trust-model-code", *extra]) == 2
    err = capsys.readouterr().err
    assert "--require-aligned" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_well_aligned_merge_is_quiet(tmp_path, recwarn):
    mlp = weightspace.get_model("mlp", in_features=8, hidden=[16], out_features=4)
    check_aligned(weightspace.trace_model(mlp), source="mlp", require=0.95)
    assert not recwarn.list
    with pytest.raises(ValueError, match="fraction"):
        check_aligned(weightspace.trace_model(mlp), source="mlp", require=2.0)
