"""Networks as graphs: two architectures in one GNN batch, and an edit written back to weights.

    python examples/parameter_graphs.py --width 8 --out /tmp/edited.safetensors

1. Build the parameter graphs of an MLP and of a ResNet-20 (BatchNorm, residual stream):
   neurons are nodes, weights are edges, biases and normalisation parameters node features.
2. Batch both with PyG's ``DataLoader`` (the feature layout is the same for every architecture)
   and run a small GNN over them: one embedding per network.
3. Edit the graph (scale every incoming edge of one hidden unit of the MLP) and write the
   weights back: exactly that row of the weight matrix changes, bit for bit nothing else.
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

import graphs
import weightspace


class GraphEncoder(nn.Module):
    """Two GINE message-passing layers and a mean pool: a metanetwork over parameter graphs."""

    def __init__(self, node_dim: int, edge_dim: int, hidden: int = 32, out: int = 8) -> None:
        super().__init__()
        from torch_geometric.nn import GINEConv

        self.conv1 = GINEConv(nn.Sequential(nn.Linear(node_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden)),
                              edge_dim=edge_dim)
        self.conv2 = GINEConv(nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden)),
                              edge_dim=edge_dim)
        self.head = nn.Linear(hidden, out)

    def forward(self, batch) -> torch.Tensor:
        from torch_geometric.nn import global_mean_pool

        h = self.conv1(batch.x, batch.edge_index, batch.edge_attr).relu()
        h = self.conv2(h, batch.edge_index, batch.edge_attr).relu()
        return self.head(global_mean_pool(h, batch.batch))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=16, help="hidden width of the MLP (default: 16)")
    p.add_argument("--resnet-width", type=float, default=0.25, help="ResNet-20 channel multiplier (default: 0.25)")
    p.add_argument("--out", default=None, help="write the edited MLP checkpoint here (.safetensors)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    from torch_geometric.loader import DataLoader

    # 1. two architectures, two graphs
    mlp = weightspace.get_model("mlp", in_features=64, hidden=[args.width, args.width], out_features=10)
    resnet = weightspace.get_model("resnet20", width=args.resnet_width, image_size=16)
    built = {}
    for name, model in (("mlp", mlp), ("resnet20", resnet)):
        graph = graphs.ParamGraph.from_module(model, model.example_input())
        built[name] = graph
        s = graph.summary()
        kinds = ", ".join(f"{k} {n}" for k, n in s["edges_by_kind"].items())
        print(f"{name:9s} {s['nodes']:5d} nodes {s['edges']:6d} edges ({kinds})")

    # 2. one batch, one GNN
    data = [g.to_pyg() for g in built.values()]
    batch = next(iter(DataLoader(data, batch_size=len(data))))
    gnn = GraphEncoder(batch.x.shape[1], batch.edge_attr.shape[1])
    with torch.no_grad():
        emb = gnn(batch)
    print(f"GNN embeddings of the batch: {tuple(emb.shape)}")

    # 3. edit: double every weight into hidden unit 3 of the first layer, write back
    g = built["mlp"]
    site = g.sites["layers.0"]
    unit = 3 % site.size
    into = (g.edge_index[1] == site.offset + unit) & (g.edge_kind == g.EDGE_KINDS.index("linear"))
    g.edge_weight[into] *= 2
    edited = g.to_state_dict()
    before = mlp.state_dict()
    changed = (edited["layers.0.weight"] != before["layers.0.weight"]).any(dim=1).nonzero().flatten().tolist()
    same_elsewhere = all(torch.equal(edited[k], before[k]) for k in before if k != "layers.0.weight")
    print(f"edited {int(into.sum())} edges; rows changed in layers.0.weight: {changed}; "
          f"other tensors bit-identical: {same_elsewhere}")
    x = mlp.example_input(4)
    with torch.no_grad():
        y0 = mlp(x)
        y1 = torch.func.functional_call(mlp, edited, (x,))
    print(f"output change after the edit: {float((y1 - y0).abs().max()):.4f}")
    if args.out:
        weightspace.save(edited, args.out)
        print(f"wrote {args.out}")
    return {"graphs": built, "embeddings": emb, "changed_rows": changed, "same_elsewhere": same_elsewhere,
            "edited": edited, "output_change": float((y1 - y0).abs().max())}


if __name__ == "__main__":
    main()
