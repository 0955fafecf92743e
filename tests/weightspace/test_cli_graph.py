"""``weightspace graph``: parameter graphs written as PyG ``.pt`` and ``.graphml``; bad input exits 2."""
from __future__ import annotations

import hashlib
import json

import networkx as nx
import pytest
import torch
from torch_geometric.data import Data

import weightspace
from weightspace.api import INPUT_SHAPE_KEY, MODEL_KEY
from weightspace.cli import main
from weightspace.models import model_spec_to_json

KWARGS = {"in_features": 16, "hidden": [12, 12], "out_features": 4}


@pytest.fixture()
def ckpt(tmp_path):
    torch.manual_seed(0)
    model = weightspace.get_model("mlp", **KWARGS)
    meta = {MODEL_KEY: model_spec_to_json("mlp", KWARGS), INPUT_SHAPE_KEY: "16"}
    return weightspace.save(model.state_dict(), tmp_path / "a.safetensors", metadata=meta), model.state_dict()


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_graph_pt_from_checkpoint(ckpt, tmp_path, capsys):
    path, state = ckpt
    out = tmp_path / "g.pt"
    assert main(["graph", str(path), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "nodes" in text and "edges by kind: linear" in text
    data = Data.from_dict(torch.load(out))
    n = 16 + 12 + 12 + 4
    assert data.num_nodes == n and data.x.shape == (n, 31)
    assert data.edge_index.shape[1] == 16 * 12 + 12 * 12 + 12 * 4
    assert json.loads(data.model)["name"] == "mlp"
    # the scalar weights are in the first edge feature column
    assert sorted(data.edge_attr[:, 0].tolist()) == sorted(
        torch.cat([state[k].reshape(-1) for k in state if k.endswith("weight")]).tolist())
    assert not list(tmp_path.glob(".*tmp*"))


def test_graph_graphml_from_model_json(tmp_path, capsys):
    out = tmp_path / "r.graphml"
    code = main(["graph", "--model", "resnet20", "--model-kwargs", '{"width": 0.25}', "-o", str(out),
                 "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["edges_by_kind"]["residual"] > 0 and summary["edges_by_kind"]["conv"] > 0
    assert summary["nodes"] > 0 and summary["out"] == str(out)
    G = nx.read_graphml(out)
    assert G.number_of_nodes() == summary["nodes"]


def test_graph_entries_and_weight_dim(tmp_path, capsys):
    out = tmp_path / "c.pt"
    assert main(["graph", "--model", "cnn", "--model-kwargs", '{"channels": [4], "image_size": 8}',
                 "--conv", "entries", "--weight-dim", "1", "-o", str(out)]) == 0
    data = Data.from_dict(torch.load(out))
    assert data.edge_attr.shape[1] == 1 + 18
    assert "conv" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--model", "mlp", "-o", "{tmp}/g.txt"], "unknown format"),
    (["{tmp}/missing.safetensors", "-o", "{tmp}/g.pt"], "missing.safetensors"),
    (["-o", "{tmp}/g.pt"], "give a checkpoint or --model"),
    (["--model", "nosuchfamily", "-o", "{tmp}/g.pt"], "unknown model"),
    (["--model", "mlp", "--model-kwargs", "{bad", "-o", "{tmp}/g.pt"], "--model-kwargs"),
    (["--model", "cnn", "--weight-dim", "2", "-o", "{tmp}/g.pt"], "weight_dim"),
])
def test_bad_input_exits_2(tmp_path, capsys, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(["graph", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "g.pt").exists() and not (tmp_path / "g.txt").exists()


def test_a_missing_output_directory_is_created(tmp_path):
    out = tmp_path / "new" / "dir" / "g.pt"
    assert main(["graph", "--model", "mlp", "--model-kwargs", '{"hidden": [4]}', "-o", str(out), "--quiet"]) == 0
    assert Data.from_dict(torch.load(out)).num_nodes > 0


def test_never_overwrites_the_input(ckpt, tmp_path, capsys):
    path, _ = ckpt
    same = path.with_suffix(".pt")
    path.rename(same)
    before = _sha(same)
    assert main(["graph", str(same), "--model", "mlp", "--model-kwargs", json.dumps(KWARGS), "-o", str(same)]) == 2
    assert "input checkpoint" in capsys.readouterr().err
    assert _sha(same) == before
