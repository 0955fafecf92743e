"""Model zoos: build many small models at once, store them in shards, read them as datasets.

A zoo is a directory (``DESIGN.md`` section 4): ``zoo.json`` (the :class:`ZooCard`),
``models/shard-XXXXX.safetensors`` (every tensor with a leading axis of models x checkpoints)
and ``metrics.csv`` (one row per model and checkpoint). Build one with :func:`build_cnn_zoo` or
:func:`build_inr_zoo` (resumable, ``shard="i/N"`` for N workers), convert a public one with
:func:`import_smallcnnzoo`, :func:`import_dws` or :func:`import_nfn`, describe it with
:func:`zoo_summary`, and train on it through :class:`ZooDataset`.
"""
from ._build import ZooBuildResult
from ._cnn import (CNN_FAMILIES, CNN_RECIPE, ZOO_FAMILIES, build_cnn_zoo, evaluate_cnns, list_zoo_families,
                   prepare_cnn_task, register_zoo_family, resize_images, sample_cnn_hparams, train_cnn_shard,
                   train_cnn_single)
from ._importers import (IMPORTERS, ZOO_IMPORTERS, import_dws, import_nfn, import_smallcnnzoo, list_zoo_importers,
                         register_zoo_importer)
from ._inr import INR_RECIPE, build_inr_zoo, fit_inr_shard, image_grid, prepare_inr_task, train_inr_single
from ._info import format_summary, plot_histogram, zoo_summary
from ._metrics import parse_shard_spec, read_metrics, split_of, worker_shards
from .zoo_card import ZooCard, read_card
from .zoo_dataset import ZooDataset, state_to_tensors
from .zoo_writer import ZooWriter

__all__ = [
    "CNN_FAMILIES",
    "CNN_RECIPE",
    "IMPORTERS",
    "ZOO_FAMILIES",
    "ZOO_IMPORTERS",
    "INR_RECIPE",
    "ZooBuildResult",
    "ZooCard",
    "ZooDataset",
    "ZooWriter",
    "build_cnn_zoo",
    "build_inr_zoo",
    "evaluate_cnns",
    "fit_inr_shard",
    "format_summary",
    "image_grid",
    "import_dws",
    "import_nfn",
    "import_smallcnnzoo",
    "list_zoo_families",
    "list_zoo_importers",
    "parse_shard_spec",
    "prepare_cnn_task",
    "prepare_inr_task",
    "plot_histogram",
    "read_card",
    "read_metrics",
    "register_zoo_family",
    "register_zoo_importer",
    "resize_images",
    "sample_cnn_hparams",
    "split_of",
    "state_to_tensors",
    "train_cnn_shard",
    "train_cnn_single",
    "train_inr_single",
    "worker_shards",
    "zoo_summary",
]
