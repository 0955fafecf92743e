"""Finding the package's optional C libraries (built by setup.py, loaded with ctypes)."""
from __future__ import annotations

import ctypes
import glob
import os


def load_library(directory: str, stem: str) -> ctypes.CDLL | None:
    """The first loadable ``stem*.so`` / ``stem*.pyd`` in ``directory``, or ``None`` when the
    extension was not built (no C compiler at install time): callers then fall back to
    pure-Python or torch paths."""
    paths = glob.glob(os.path.join(directory, f"{stem}*.so")) + glob.glob(os.path.join(directory, f"{stem}*.pyd"))
    for path in sorted(paths):
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None
