"""Every module of the three packages imports, and imports point down only."""
from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import graphs
import merging
import weightspace

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"graphs": 0, "merging": 1, "weightspace": 2}


@pytest.mark.parametrize("package", [graphs, merging, weightspace], ids=lambda p: p.__name__)
def test_every_module_imports(package):
    names = [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
    assert names
    for name in names:  # the C libraries too: they are empty modules to Python, loaded with ctypes
        importlib.import_module(name)


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_imports_point_down(package):
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
            for name in names:
                top = name.split(".")[0]
                assert LAYERS.get(top, -1) <= LAYERS[package], f"{path.relative_to(ROOT)} imports {name}"
