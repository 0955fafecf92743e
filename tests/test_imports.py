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


def _package_dir(module: str) -> str:
    path = module.replace(".", "/")
    return path if (ROOT / path / "__init__.py").exists() else path.rpartition("/")[0]


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_no_private_name_crosses_a_package(package):
    # a name shared beyond its own package directory is public (with a docstring), not `_name`
    for path in (ROOT / package).rglob("*.py"):
        here = str(path.parent.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = here.split("/")[: len(here.split("/")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                name = alias.name
                if not name.startswith("_") or name.startswith("__"):
                    continue
                if (ROOT / source.replace(".", "/") / f"{name}.py").exists():
                    continue  # a private submodule of the package, not a name
                assert _package_dir(source) == here, f"{path.relative_to(ROOT)} imports {name} from {source}"
