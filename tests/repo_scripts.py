"""The repository's runnable scripts (``examples/``, ``bench/``) loaded as modules, for the tests
that run them as a user would."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

#: the repository's root folder
REPO = Path(__file__).resolve().parents[1]


def load_script(path: Path, module_name: str) -> ModuleType:
    """Execute the script at ``path`` as a module named ``module_name`` and return it."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
