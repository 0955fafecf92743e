"""Weight-manifold hypernetworks (Neural Metamorphosis): learn a family of widths, sample any width.

- :func:`smooth` orders the hidden units of a trained network along a short path (the network's
  function is unchanged), so its weights vary smoothly with the unit index;
- :class:`HyperNet` maps the coordinates of a weight to its value; :func:`fit_hypernet` trains it
  on a task across widths plus reconstruction of the source; :func:`sample_state` generates a state
  dict at any width;
- :func:`magnitude_prune` is the structured-pruning baseline.
"""
from merging.hypernet._coords import CoordTable, resize_structure
from merging.hypernet.hypernet import HyperNet, fit_hypernet, sample_state
from merging.hypernet.pruning import magnitude_prune, select_units, unit_norms
from merging.hypernet.smoothing import SmoothResult, path_length, shortest_path, smooth, unit_features

__all__ = [
    "CoordTable",
    "HyperNet",
    "SmoothResult",
    "fit_hypernet",
    "magnitude_prune",
    "path_length",
    "resize_structure",
    "sample_state",
    "select_units",
    "shortest_path",
    "smooth",
    "unit_features",
    "unit_norms",
]
