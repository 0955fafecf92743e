"""Readers of public zoo layouts, converting them into weightspace zoos (``weightspace zoo import``)."""
from __future__ import annotations

import csv
import gzip
import io
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from graphs.registry import Registry
from weightspace.checkpoint import load
from weightspace.models import CNN

from ..checkpoint import check_output
from ._build import ZooBuildResult, check_positive_int, run_build
from ._metrics import Row, parse_value
from .zoo_card import BASE_COLUMNS, DEFAULT_SPLITS, ZooCard

__all__ = ["import_smallcnnzoo", "import_dws", "import_nfn", "IMPORTERS", "ZOO_IMPORTERS", "register_zoo_importer",
           "list_zoo_importers"]

Importer = Callable[..., ZooBuildResult]

#: the readers of public zoo layouts (``weightspace zoo import LAYOUT``), each
#: ``importer(src, out, *, <layout options>, models_per_shard, progress) -> ZooBuildResult``
ZOO_IMPORTERS: Registry[Importer] = Registry("layout")


def register_zoo_importer(name: str, *, description: str) -> Callable[[Importer], Importer]:
    """Decorator registering the reader of the public zoo layout ``name``.

    Raises:
        ValueError: a malformed or already registered name.
    """
    return ZOO_IMPORTERS.register(name, description=description, caller="register_zoo_importer")


def list_zoo_importers() -> list[str]:
    """The importable layouts' names, in the order the CLI lists them."""
    return ZOO_IMPORTERS.names()

# A model to import: its checkpoints as (checkpoint, state dict, extra metrics columns).
Loaded = list[tuple[int, dict[str, Tensor], Row]]


def _write(out: str | os.PathLike, card: ZooCard, load_model: Callable[[int], Loaded], progress: bool,
           desc: str) -> ZooBuildResult:
    """Write the models ``0 .. n - 1`` given by ``load_model`` into shards (resumable)."""

    def shard_fn(shard: int, ids: range) -> tuple[dict[str, Tensor], list[Row]]:
        states: list[dict[str, Tensor]] = []
        rows: list[Row] = []
        for mid in ids:
            for ck, state, extra in load_model(mid):
                rows.append({**{c: extra.get(c, "") for c in card.columns}, "model_id": mid, "shard": shard,
                             "index": len(rows), "checkpoint": int(ck)})
                states.append(state)
        keys = list(states[0])
        for r, s in zip(rows, states):
            if list(s) != keys or any(s[k].shape != states[0][k].shape for k in keys):
                raise ValueError(f"zoo import: model {r['model_id']} ({r.get('source', '')}) has tensors "
                                 f"{ {k: tuple(v.shape) for k, v in s.items()} }; the zoo's first model has "
                                 f"{ {k: tuple(v.shape) for k, v in states[0].items()} }")
        return {k: torch.stack([s[k].float() for s in states]) for k in keys}, rows

    return run_build(out, card, "0/1", shard_fn, progress=progress, desc=desc)


# --------------------------------------------------------------------------- Small CNN Zoo


def _shape(text: str, where: str) -> tuple[int, ...]:
    dims = re.findall(r"\d+", str(text))
    if not dims:
        raise ValueError(f"zoo import smallcnnzoo: {where}: cannot read a shape from {text!r}")
    return tuple(int(d) for d in dims)


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        raw = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile) as e:
        raise ValueError(f"zoo import: cannot read {path} ({e})") from None
    reader = csv.DictReader(io.StringIO(raw))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


def _column_name(name: str) -> str:
    name = re.sub(r"[^0-9A-Za-z_]+", "_", name.strip()).strip("_") or "column"
    return f"src_{name}" if name in BASE_COLUMNS else name


_SCZ_METRICS = {"test_accuracy": "test_acc", "train_accuracy": "train_acc", "test_loss": "test_loss",
                "train_loss": "train_loss"}
_SCZ_MODEL_COLUMNS = ("modeldir", "model_dir", "model_id", "model")
_SCZ_ACTIVATION_COLUMNS = ("config.activation", "activation")


@register_zoo_importer("smallcnnzoo", description="the Small CNN Zoo (Unterthiner et al.): weights.npy, layout.csv "
                                                  "and metrics.csv")
def import_smallcnnzoo(src: str | os.PathLike, out: str | os.PathLike, *, image_size: int = 28, stride: int = 2,
                       activation: str | None = None, models_per_shard: int = 256,
                       progress: bool = True) -> ZooBuildResult:
    """Convert a zoo in the Small CNN Zoo layout (Unterthiner et al., arXiv:2002.11448).

    The layout, as released with "Predicting Neural Network Accuracy from Weights":

    - ``weights.npy``: ``(n_rows, n_params)`` float array, one row per model and checkpoint,
      every variable flattened in TensorFlow order;
    - ``layout.csv``: one row per variable, columns ``varname`` (``.../kernel:0``,
      ``.../bias:0``), ``start_idx``, ``end_idx`` (its slice of a row) and ``shape``
      (``"(3, 3, 1, 16)"``), in network order;
    - ``metrics.csv`` or ``metrics.csv.gz``: one row per row of ``weights.npy``, with
      ``test_accuracy`` (and ``train_accuracy``, ``test_loss``, ``train_loss``, ``config.*``
      hyper-parameters), ``step`` (the checkpoint) and, where present, ``modeldir`` naming
      the run (rows of one run become the checkpoints of one model). A ``split`` column, if
      present, is kept as the zoo's split.

    Convolution kernels ``(H, W, in, out)`` become ``(out, in, H, W)``, dense kernels
    ``(in, out)`` become ``(out, in)``; the network maps to the ``cnn`` family with the Small
    CNN Zoo's architecture: convolutions ``convs.{l}`` of stride ``stride`` with TensorFlow's
    ``"SAME"`` padding (``padding="tf_same"``: the odd padded row / column at the bottom /
    right), no pooling, global average pooling and the linear head ``head``; so a converted
    model computes exactly what the TensorFlow original computed.

    The source zoo mixes activations (``config.activation``: ``relu`` or ``tanh``) while a
    zoo has one architecture: with such a column, ``activation`` selects the models to import
    (needed when the column holds several values); without one, ``activation`` is recorded
    as given (default ``relu``).

    Args:
        src (str or PathLike): the directory holding the three files.
        out (str or PathLike): the zoo to write.
        image_size (int, optional): recorded input size (not in the files). (default: ``28``)
        stride (int, optional): the convolutions' stride (not in the files). (default: ``2``)
        activation (str, optional): the activation of the models to import. (default: the
            source's only one, else ``relu``)
        models_per_shard (int, optional): models per shard. (default: ``256``)
        progress (bool, optional): progress bar. (default: ``True``)

    Raises:
        ValueError: a missing file, a layout that does not fit the weights, metrics of the
            wrong length, an architecture other than convolutions + one dense layer, or
            several activations and no ``activation`` to choose.
    """
    src = Path(src)
    check_output(out, [src], fn="zoo import", directory=True)
    check_positive_int(models_per_shard, "models_per_shard")
    check_positive_int(image_size, "image_size")
    check_positive_int(stride, "stride")
    if not src.is_dir():
        raise ValueError(f"zoo import smallcnnzoo: {src} is not a directory")
    wpath, lpath = src / "weights.npy", src / "layout.csv"
    mpath = next((src / n for n in ("metrics.csv", "metrics.csv.gz") if (src / n).is_file()), None)
    for p in (wpath, lpath):
        if not p.is_file():
            raise ValueError(f"zoo import smallcnnzoo: {src} has no {p.name} (expected weights.npy, layout.csv, "
                             f"metrics.csv[.gz])")
    if mpath is None:
        raise ValueError(f"zoo import smallcnnzoo: {src} has no metrics.csv or metrics.csv.gz")
    try:
        weights = np.load(wpath, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"zoo import smallcnnzoo: {wpath} is not a readable .npy array ({e})") from None
    if weights.ndim != 2:
        raise ValueError(f"zoo import smallcnnzoo: {wpath} has shape {weights.shape}; expected (n_models, n_params)")
    lcols, layout = _read_csv(lpath)
    missing = {"varname", "start_idx", "end_idx", "shape"} - set(lcols)
    if missing:
        raise ValueError(f"zoo import smallcnnzoo: {lpath} lacks columns {sorted(missing)} (has {lcols})")
    variables = []
    for i, r in enumerate(layout):
        where = f"{lpath} row {i + 1} ({r['varname']})"
        try:
            a, b = int(r["start_idx"]), int(r["end_idx"])
        except ValueError:
            raise ValueError(f"zoo import smallcnnzoo: {where}: start_idx/end_idx are not integers") from None
        shape = _shape(r["shape"], where)
        if b - a != math.prod(shape) or not 0 <= a < b <= weights.shape[1]:
            raise ValueError(f"zoo import smallcnnzoo: {where}: slice [{a}, {b}) does not hold shape {shape} within "
                             f"the {weights.shape[1]} parameters of {wpath.name}")
        kind = "kernel" if "kernel" in r["varname"] else "bias" if "bias" in r["varname"] else None
        if kind is None:
            raise ValueError(f"zoo import smallcnnzoo: {where}: variable is neither a kernel nor a bias")
        variables.append((kind, a, b, shape, r["varname"]))
    layers: list[dict[str, Any]] = []
    for kind, a, b, shape, name in variables:
        if kind == "kernel":
            if len(shape) not in (2, 4):
                raise ValueError(f"zoo import smallcnnzoo: {name} has shape {shape}; expected a conv kernel "
                                 f"(H, W, in, out) or a dense kernel (in, out)")
            layers.append({"kernel": (a, b, shape), "name": name})
        else:
            if not layers or "bias" in layers[-1] or layers[-1]["kernel"][2][-1] != shape[0]:
                raise ValueError(f"zoo import smallcnnzoo: bias {name} of shape {shape} follows no kernel with "
                                 f"{shape[0]} outputs")
            layers[-1]["bias"] = (a, b, shape)
    convs = [ly for ly in layers if len(ly["kernel"][2]) == 4]
    if not convs or len(layers[-1]["kernel"][2]) != 2 or len(layers) != len(convs) + 1:
        raise ValueError(f"zoo import smallcnnzoo: {lpath} describes {[ly['name'] for ly in layers]}; expected "
                         f"convolutions followed by one dense layer (the Small CNN Zoo's architecture)")
    if any("bias" not in ly for ly in layers):
        raise ValueError(f"zoo import smallcnnzoo: every layer needs a bias in {lpath}")
    ks = {ly["kernel"][2][0] for ly in convs} | {ly["kernel"][2][1] for ly in convs}
    if len(ks) != 1:
        raise ValueError(f"zoo import smallcnnzoo: kernels of different sizes {sorted(ks)}; the cnn family has one")
    channels = [ly["kernel"][2][3] for ly in convs]
    dense_in, num_classes = layers[-1]["kernel"][2]
    if dense_in != channels[-1]:
        raise ValueError(f"zoo import smallcnnzoo: the dense layer takes {dense_in} inputs, the last convolution "
                         f"gives {channels[-1]} channels; expected global pooling in between")
    mcols, metrics = _read_csv(mpath)
    if len(metrics) != weights.shape[0]:
        raise ValueError(f"zoo import smallcnnzoo: {mpath.name} has {len(metrics)} rows, {wpath.name} {weights.shape[0]}; "
                         f"they must correspond row by row")
    model_col = next((c for c in _SCZ_MODEL_COLUMNS if c in mcols), None)
    step_col = next((c for c in ("step", "epoch") if c in mcols), None)
    act_col = next((c for c in _SCZ_ACTIVATION_COLUMNS if c in mcols), None)
    found = sorted({r[act_col] for r in metrics}) if act_col else []
    if activation is None:
        if len(found) > 1:
            raise ValueError(f"zoo import smallcnnzoo: {mpath.name} holds models with activations {found} "
                             f"({act_col}); a zoo has one architecture: choose one (activation=..., --activation)")
        activation = found[0] if found else "relu"
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(metrics):
        if act_col is None or r[act_col] == activation:
            groups.setdefault(r[model_col] if model_col else str(i), []).append(i)
    if not groups:
        raise ValueError(f"zoo import smallcnnzoo: no model in {mpath.name} has activation {activation!r} "
                         f"(found: {', '.join(found)})")
    extra_cols = [c for c in mcols if c not in (model_col, step_col, "split", *_SCZ_METRICS)]
    renamed = {c: _column_name(c) for c in extra_cols}
    has_split = "split" in mcols
    columns = (*BASE_COLUMNS, "source", *(["split"] if has_split else []), "train_loss", "train_acc", "test_loss",
               "test_acc", *dict.fromkeys(renamed.values()))
    keys = list(groups)

    def load_model(mid: int) -> Loaded:
        out_rows: Loaded = []
        for i in groups[keys[mid]]:
            r = metrics[i]
            vec = torch.from_numpy(np.array(weights[i], dtype=np.float32))
            state: dict[str, Tensor] = {}
            for li, ly in enumerate(layers):
                a, b, shape = ly["kernel"]
                k = vec[a:b].view(shape)
                name = f"convs.{li}" if len(shape) == 4 else "head"
                state[f"{name}.weight"] = (k.permute(3, 2, 0, 1) if len(shape) == 4 else k.t()).contiguous()
                a, b, shape = ly["bias"]
                state[f"{name}.bias"] = vec[a:b].clone()
            row: Row = {"source": keys[mid]}
            for c, new in _SCZ_METRICS.items():
                row[new] = parse_value(r[c]) if r.get(c, "") != "" else float("nan")
            for c in extra_cols:
                row[renamed[c]] = parse_value(r[c]) if r[c] != "" else ""
            if has_split:
                row["split"] = r["split"]
            try:
                ck = int(float(r[step_col])) if step_col else 0
            except ValueError:
                raise ValueError(f"zoo import smallcnnzoo: {mpath.name} row {i + 2}: {step_col} {r[step_col]!r} is "
                                 f"not a number") from None
            out_rows.append((ck, state, row))
        out_rows.sort(key=lambda t: t[0])
        if len({ck for ck, _, _ in out_rows}) != len(out_rows):
            raise ValueError(f"zoo import smallcnnzoo: model {keys[mid]!r} has two rows for one {step_col or 'checkpoint'}")
        return out_rows

    kwargs = {"in_channels": convs[0]["kernel"][2][2], "channels": channels, "num_classes": num_classes,
              "image_size": image_size, "kernel_size": ks.pop(), "stride": stride, "padding": "tf_same",
              "pool": None, "flatten": False, "activation": activation}
    try:
        CNN(**kwargs)
    except ValueError as e:
        raise ValueError(f"zoo import smallcnnzoo: the converted architecture is invalid: {e}") from None
    kept = [i for rows in groups.values() for i in rows]
    cks = sorted({int(float(metrics[i][step_col])) for i in kept if metrics[i][step_col] != ""}) if step_col else [0]
    card = ZooCard(
        task="image-classification", model={"name": "cnn", "kwargs": kwargs},
        dataset={"spec": "small-cnn-zoo", "note": "the dataset the source zoo was trained on; see its metrics"},
        recipe={"imported": True}, n_models=len(keys), models_per_shard=models_per_shard, columns=columns,
        target="test_acc", input_shape=(kwargs["in_channels"], image_size, image_size), checkpoints=tuple(cks),
        checkpoint_unit=step_col or "checkpoint", splits={"column": "split"} if has_split else dict(DEFAULT_SPLITS),
        cite=("T. Unterthiner, D. Keysers, S. Gelly, O. Bousquet, I. Tolstikhin, \"Predicting Neural Network "
              "Accuracy from Weights\", arXiv:2002.11448 (2020): the Small CNN Zoo."),
        source={"layout": "smallcnnzoo", "path": str(src.resolve()), "model_column": model_col, "step_column": step_col,
                **({"activation_column": act_col, "activation": activation} if act_col else {})},
        notes=("converted from TensorFlow order: conv kernels (H, W, in, out) -> (out, in, H, W), dense (in, out) -> "
               "(out, in)",
               f"convolutions of stride {stride} with TensorFlow's 'SAME' padding (cnn padding='tf_same': the odd "
               "padded row / column at the bottom / right), no pooling, global average pooling: the converted "
               "models compute what the source models computed",
               f"input image size {image_size} and stride {stride} are recorded, not read from the source",
               *([f"only the models with {act_col} == {activation!r} (a zoo has one architecture)"]
                 if len(found) > 1 else [])))
    return _write(out, card, load_model, progress, "zoo import smallcnnzoo")


# --------------------------------------------------------------------------- INR layouts

_INR_KEY = {"dws": re.compile(r"^seq\.(\d+)\.(?:linear\.)?(weight|bias)$"),
            "nfn": re.compile(r"^net\.(\d+)\.(?:linear\.)?(weight|bias)$")}


def _siren_state(path: Path, layout: str) -> dict[str, Tensor]:
    state = load(path)
    out: dict[str, Tensor] = {}
    pattern = _INR_KEY[layout]
    for k, v in state.items():
        m = pattern.match(k)
        if m is None:
            example = "seq.0.weight" if layout == "dws" else "net.0.linear.weight"
            raise ValueError(f"zoo import {layout}: {path} has tensor {k!r}; expected keys such as {example!r}")
        out[f"layers.{int(m.group(1))}.{m.group(2)}"] = v.detach().float()
    n = len(out) // 2
    expected = {f"layers.{i}.{p}" for i in range(n) for p in ("weight", "bias")}
    if set(out) != expected or n < 2:
        raise ValueError(f"zoo import {layout}: {path} holds {sorted(state)}; expected a weight and a bias for each of "
                         f"at least 2 consecutive layers")
    for i in range(n):
        w, b = out[f"layers.{i}.weight"], out[f"layers.{i}.bias"]
        if w.ndim != 2 or b.shape != (w.shape[0],) or (i and w.shape[1] != out[f"layers.{i - 1}.weight"].shape[0]):
            raise ValueError(f"zoo import {layout}: {path}: layer {i} has weight {tuple(w.shape)} and bias "
                             f"{tuple(b.shape)}, which do not chain into an MLP")
    return {f"layers.{i}.{p}": out[f"layers.{i}.{p}"] for i in range(n) for p in ("weight", "bias")}


def _siren_kwargs(state: dict[str, Tensor], w0: float) -> dict[str, Any]:
    n = len(state) // 2
    return {"in_features": int(state["layers.0.weight"].shape[1]),
            "hidden": [int(state[f"layers.{i}.weight"].shape[0]) for i in range(n - 1)],
            "out_features": int(state[f"layers.{n - 1}.weight"].shape[0]), "w0": float(w0)}


_INR_COLUMNS = (*BASE_COLUMNS, "label", "split", "source")


def _inr_card(layout: str, src: Path, kwargs: dict[str, Any], n: int, models_per_shard: int, splits: dict,
              cite: str, notes: Sequence[str], source: dict[str, Any], columns: Sequence[str] = _INR_COLUMNS) -> ZooCard:
    return ZooCard(task="implicit-neural-representation", model={"name": "siren", "kwargs": kwargs},
                   dataset={"spec": f"{layout}-inrs", "path": str(src.resolve())}, recipe={"imported": True},
                   n_models=n, models_per_shard=models_per_shard, columns=tuple(columns), target="label",
                   input_shape=(kwargs["in_features"],), checkpoints=(0,), checkpoint_unit="checkpoint", splits=splits,
                   cite=cite, notes=tuple(notes), source={"layout": layout, "path": str(src.resolve()), **source})


def _find_splits_json(src: Path) -> Path | None:
    found = sorted(src.glob("*split*.json")) or sorted(src.glob("*/*split*.json"))
    return found[0] if found else None


@register_zoo_importer("dws", description="DWSNets' INR directory (Navon et al.): one SIREN per file and a "
                                          "splits JSON")
def import_dws(src: str | os.PathLike, out: str | os.PathLike, *, splits: str | os.PathLike | None = None,
               w0: float = 30.0, models_per_shard: int = 256, progress: bool = True) -> ZooBuildResult:
    """Convert a DWSNets INR directory (Navon et al., "Equivariant Architectures for Learning in
    Deep Weight Spaces", arXiv:2301.12780).

    The layout: ``<src>/mnist_png_<part>/<label>/<name>.pth``, each a state dict of a SIREN
    with keys ``seq.{0,1,2}.{weight,bias}`` (``seq.{i}.linear.*`` is read too), plus a splits
    JSON ``{"train": {"path": [...], "label": [...]}, "val": {...}, "test": {...}}`` (found in
    ``src`` as ``*split*.json`` when ``splits`` is not given). Paths in the JSON are resolved as
    given, relative to ``src`` or its parent, or by their last three components
    (``mnist_png_*/<label>/<file>``). Without a splits JSON, every ``*.pth`` under a directory
    named by its label is imported and split by a hash of the model id. The splits are kept
    (column ``split``); labels come from the JSON (else the directory).

    Args:
        src (str or PathLike): the dataset directory.
        out (str or PathLike): the zoo to write.
        splits (str or PathLike, optional): the splits JSON. (default: found in ``src``)
        w0 (float, optional): the SIREN frequency recorded in the card. (default: ``30.0``)
        models_per_shard (int, optional): models per shard. (default: ``256``)
        progress (bool, optional): progress bar. (default: ``True``)

    Raises:
        ValueError: no models, a path in the JSON that cannot be found, or state dicts that
            are not SIRENs of one shape.
    """
    src = Path(src)
    check_output(out, [src], fn="zoo import", directory=True)
    check_positive_int(models_per_shard, "models_per_shard")
    if not src.is_dir():
        raise ValueError(f"zoo import dws: {src} is not a directory")
    split_path = Path(splits) if splits is not None else _find_splits_json(src)
    entries: list[tuple[Path, int, str]] = []
    all_files = sorted(p for p in src.rglob("*.pth") if p.parent.name.isdigit())
    if split_path is not None:
        try:
            spec = json.loads(split_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"zoo import dws: cannot read the splits JSON {split_path} ({e})") from None
        by_tail = {p.parts[-3:]: p for p in all_files}
        if not isinstance(spec, dict) or not spec:
            raise ValueError(f"zoo import dws: {split_path} must be a JSON object of splits")
        for name, part in spec.items():
            if not isinstance(part, dict) or not isinstance(part.get("path"), list):
                raise ValueError(f"zoo import dws: {split_path}: split {name!r} must be {{\"path\": [...], \"label\": [...]}}")
            labels = part.get("label", [None] * len(part["path"]))
            if len(labels) != len(part["path"]):
                raise ValueError(f"zoo import dws: {split_path}: split {name!r} has {len(part['path'])} paths and "
                                 f"{len(labels)} labels")
            for p, lab in zip(part["path"], labels):
                q = Path(p)
                cands = [q] if q.is_absolute() else [src / q, src.parent / q]
                hit = next((c for c in cands if c.is_file()), None) or by_tail.get(q.parts[-3:])
                if hit is None:
                    raise ValueError(f"zoo import dws: {split_path} lists {p!r} (split {name}), which is not under {src}")
                label = int(lab) if lab is not None else int(hit.parent.name)
                entries.append((hit, label, str(name)))
    else:
        entries = [(p, int(p.parent.name), "") for p in all_files]
    if not entries:
        raise ValueError(f"zoo import dws: no models found in {src} (expected mnist_png_*/<label>/*.pth)")
    first = _siren_state(entries[0][0], "dws")
    kwargs = _siren_kwargs(first, w0)

    def load_model(mid: int) -> Loaded:
        path, label, split = entries[mid]
        return [(0, _siren_state(path, "dws"), {"label": label, "split": split,
                                                 "source": str(path.relative_to(src)) if path.is_relative_to(src) else str(path)})]

    card = _inr_card("dws", src, kwargs, len(entries), models_per_shard,
                     {"column": "split"} if split_path is not None else
                     {**DEFAULT_SPLITS, "by": "model_id"},
                     "A. Navon, A. Shamsian, I. Achituve, E. Fetaya, G. Chechik, H. Maron, \"Equivariant Architectures "
                     "for Learning in Deep Weight Spaces\", arXiv:2301.12780 (2023).",
                     ("keys seq.{i}.{weight,bias} -> layers.{i}.{weight,bias} of the siren family",
                      f"w0 = {w0} is recorded, not read from the files", "splits kept from the splits JSON"
                      if split_path is not None else "no splits JSON: split by a hash of the model id"),
                     {"splits": str(split_path) if split_path is not None else None})
    return _write(out, card, load_model, progress, "zoo import dws")


_NFN_DIR = re.compile(r"^(?P<prefix>.+)_(?P<label>\d+)s$")
_NFN_FILE = re.compile(r"^net(\d+)\.pth$")


@register_zoo_importer("nfn", description="NFN's SIREN directories (Zhou et al.): one SIREN per image index")
def import_nfn(src: str | os.PathLike, out: str | os.PathLike, *, prefix: str | None = None,
               split_points: Sequence[int] | str | None = None, w0: float = 30.0, models_per_shard: int = 256,
               progress: bool = True) -> ZooBuildResult:
    """Convert an NFN SIREN directory (Zhou et al., "Permutation Equivariant Neural Functionals",
    arXiv:2302.14040; "Neural Functional Transformers", arXiv:2305.13546).

    The layout read (that of NFN's ``SirenDataset``): ``<src>/<prefix>_<label>s/net<idx>.pth``,
    e.g. ``randinit_smaller_3s/net1234.pth``: one directory per class label, one file per
    image index ``idx`` (global over the dataset). Each file is a state dict of NFN's SIREN
    (2-32-32-1 for MNIST, ``w0 = 30``): ``net.0.linear.{weight,bias}``,
    ``net.1.linear.{weight,bias}``, ``net.2.{weight,bias}`` (the linear output layer). NFN
    splits by index: ``idx < val_point`` train, ``< test_point`` val, the rest test; pass
    ``split_points=(val_point, test_point)`` to keep that split (else a hash of the index).
    Augmented copies live under another prefix (``<prefix>_aug0_<label>s``); import them as
    their own zoo with ``prefix=``.

    Args:
        src (str or PathLike): the directory holding the ``<prefix>_<label>s`` directories.
        out (str or PathLike): the zoo to write.
        prefix (str, optional): which prefix to import. (default: the only one present)
        split_points (pair of int or ``"VAL,TEST"``, optional): NFN's split points.
        w0 (float, optional): the SIREN frequency recorded in the card. (default: ``30.0``)
        models_per_shard (int, optional): models per shard. (default: ``256``)
        progress (bool, optional): progress bar. (default: ``True``)

    Raises:
        ValueError: no (or several, without ``prefix``) prefixes, duplicate indices, or state
            dicts that are not SIRENs of one shape.
    """
    src = Path(src)
    check_output(out, [src], fn="zoo import", directory=True)
    check_positive_int(models_per_shard, "models_per_shard")
    if not src.is_dir():
        raise ValueError(f"zoo import nfn: {src} is not a directory")
    dirs = [(d, _NFN_DIR.match(d.name)) for d in sorted(src.iterdir()) if d.is_dir()]
    prefixes = sorted({m.group("prefix") for _, m in dirs if m})
    if prefix is None:
        if len(prefixes) != 1:
            raise ValueError(f"zoo import nfn: {src} holds prefixes {prefixes or 'none'} (directories "
                             f"<prefix>_<label>s); choose one with --prefix")
        prefix = prefixes[0]
    elif prefix not in prefixes:
        raise ValueError(f"zoo import nfn: no directories {prefix}_<label>s in {src}; prefixes found: {prefixes}")
    if isinstance(split_points, str):
        try:
            split_points = [int(v) for v in split_points.split(",")]
        except ValueError:
            raise ValueError(f"zoo import nfn: --split-points must be VAL,TEST such as 45000,50000, got "
                             f"{split_points!r}") from None
    if split_points is not None:
        sp = list(split_points)
        if len(sp) != 2 or not 0 <= sp[0] <= sp[1]:
            raise ValueError(f"zoo import nfn: split points must be VAL,TEST with 0 <= VAL <= TEST, got {sp}")
    found: dict[int, tuple[Path, int]] = {}
    for d, m in dirs:
        if not m or m.group("prefix") != prefix:
            continue
        for f in sorted(d.iterdir()):
            fm = _NFN_FILE.match(f.name)
            if fm:
                idx = int(fm.group(1))
                if idx in found:
                    raise ValueError(f"zoo import nfn: index {idx} appears twice: {found[idx][0]} and {f}")
                found[idx] = (f, int(m.group("label")))
    if not found:
        raise ValueError(f"zoo import nfn: no net<idx>.pth files under {src}/{prefix}_<label>s")
    order = sorted(found)
    kwargs = _siren_kwargs(_siren_state(found[order[0]][0], "nfn"), w0)

    def split_of(idx: int) -> str:
        if split_points is None:
            return ""
        return "train" if idx < split_points[0] else "val" if idx < split_points[1] else "test"

    def load_model(mid: int) -> Loaded:
        idx = order[mid]
        path, label = found[idx]
        return [(0, _siren_state(path, "nfn"), {"label": label, "split": split_of(idx), "nfn_index": idx,
                                                 "source": str(path.relative_to(src))})]

    card = _inr_card("nfn", src, kwargs, len(order), models_per_shard,
                     {"column": "split"} if split_points is not None else {**DEFAULT_SPLITS, "by": "nfn_index"},
                     "A. Zhou, K. Yang, K. Burns, A. Cardace, Y. Jiang, S. Sokota, J. Z. Kolter, C. Finn, \"Permutation "
                     "Equivariant Neural Functionals\", arXiv:2302.14040 (2023).",
                     ("keys net.{i}.linear.{weight,bias} and net.{L}.{weight,bias} -> layers.{i}.{weight,bias}",
                      f"w0 = {w0} is recorded, not read from the files",
                      "model ids follow the NFN image index (nfn_index) in increasing order"),
                     {"prefix": prefix, "split_points": list(split_points) if split_points is not None else None},
                     columns=(*_INR_COLUMNS, "nfn_index"))
    return _write(out, card, load_model, progress, "zoo import nfn")


#: the built-in importers by layout name
IMPORTERS = {name: ZOO_IMPORTERS.get(name) for name in list_zoo_importers()}
