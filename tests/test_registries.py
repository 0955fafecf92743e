"""Every family of choices is a :class:`graphs.registry.Registry`: one decorator pattern, errors that
list the names, and CLI choices that are the registry's own list."""
from __future__ import annotations

import argparse

import pytest

import merging
import weightspace
from graphs.registry import Registry
from merging.many_methods import MANY_MODEL_METHODS
from merging.matching import ASSIGNMENT_SOLVERS
from merging.methods import MERGE_METHODS
from weightspace.alignment import ALIGNMENT_METHODS
from weightspace.cli import build_parser
from weightspace.data import DATASETS
from weightspace.metanet import METANET_ARCHS
from weightspace.models import MODELS
from weightspace.zoo import ZOO_FAMILIES, ZOO_IMPORTERS

REGISTRIES = {"alignment": ALIGNMENT_METHODS, "many": MANY_MODEL_METHODS, "solver": ASSIGNMENT_SOLVERS,
              "merge": MERGE_METHODS, "model": MODELS, "dataset": DATASETS, "metanet": METANET_ARCHS,
              "family": ZOO_FAMILIES, "importer": ZOO_IMPORTERS}


def test_registering_twice_raises_and_names_the_first():
    reg: Registry[int] = Registry("thing")
    reg.register("one", description="the first")(1)
    with pytest.raises(ValueError, match="'one' is already registered"):
        reg.register("one", description="again")(2)
    assert reg.get("one") == 1 and reg.names() == ["one"]


@pytest.mark.parametrize("name", ["", "two words", None])
def test_bad_names_are_refused(name):
    with pytest.raises(ValueError, match="bad name"):
        Registry("thing").register(name, description="x")


def test_colons_refused_where_names_could_be_code():
    with pytest.raises(ValueError, match="bad name"):
        Registry("model", allow_colon=False).register("pkg.mod:fn", description="x")


def test_lookup_error_lists_every_name_in_order():
    reg: Registry[int] = Registry("solver")
    for i, n in enumerate(["b", "a", "c"]):
        reg.register(n, description=n)(i)
    with pytest.raises(ValueError) as e:
        reg.get("z", caller="solve")
    assert str(e.value) == "solve: unknown solver 'z'; choose one of: b, a, c"
    assert Registry("x", sort=True).names() == []


def test_help_and_metavar_come_from_the_entries():
    reg: Registry[None] = Registry("method")
    reg.register("fast", description="quick " * 30)(None)
    reg.register("slow", description="careful")(None)
    text = reg.help()
    assert text.splitlines()[0].startswith("  fast ") and "  slow         careful" in text
    assert all(len(line) <= 92 for line in text.splitlines())
    assert reg.metavar("all") == "{fast,slow,all}"


def test_copy_does_not_leak_registrations():
    reg: Registry[int] = Registry("thing")
    reg.register("one", description="x")(1)
    other = reg.copy()
    other.register("two", description="y")(2)
    assert reg.names() == ["one"] and other.names() == ["one", "two"]


@pytest.mark.parametrize("kind", sorted(REGISTRIES))
def test_every_family_is_a_registry_with_descriptions(kind):
    reg = REGISTRIES[kind]
    assert isinstance(reg, Registry) and len(reg) >= 2
    assert all(e.description for e in reg.entries())
    with pytest.raises(ValueError, match="choose one of: " + ", ".join(reg.names())):
        reg.get("no-such-choice")


def test_public_tuples_are_the_registries_lists():
    assert weightspace.METHODS == tuple(weightspace.list_alignment_methods()) == tuple(ALIGNMENT_METHODS.names())
    assert weightspace.METHODS == ("auto", "weight", "activation", "ste", "none")
    from weightspace.merge_many import MANY_METHODS

    assert MANY_METHODS == tuple(merging.list_many_methods()) == ("mergemany", "c2m3", "average")
    assert merging.list_solvers() == ["auto", "lap", "sparse", "scipy", "auction"]
    assert merging.list_methods() == MERGE_METHODS.names()


def _option(parser: argparse.ArgumentParser, path: list[str], flag: str) -> argparse.Action:
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return next(a for a in parser._actions if flag in a.option_strings or a.dest == flag)


@pytest.mark.parametrize(("path", "flag", "registry"), [
    (["merge"], "--solver", ASSIGNMENT_SOLVERS),
    (["barrier"], "--solver", ASSIGNMENT_SOLVERS),
    (["merge-many"], "--solver", ASSIGNMENT_SOLVERS),
    (["starlight"], "--solver", ASSIGNMENT_SOLVERS),
    (["metanet", "train"], "--arch", METANET_ARCHS),
    (["zoo", "build"], "--family", ZOO_FAMILIES),
    (["zoo", "import"], "layout", ZOO_IMPORTERS),
])
def test_cli_choices_are_the_registry_list(path, flag, registry):
    action = _option(build_parser(), path, flag)
    assert list(action.choices) == registry.names()
    for entry in registry.entries():
        assert " ".join(entry.description.split()[:3]) in " ".join(action.help.split())


@pytest.mark.parametrize(("path", "registry"), [(["merge"], ALIGNMENT_METHODS), (["merge-many"], MANY_MODEL_METHODS)])
def test_cli_methods_and_their_help_come_from_the_registry(path, registry):
    parser = build_parser()
    action = _option(parser, path, "--method")
    assert action.metavar == registry.metavar()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[path[0]]
    assert registry.help(width=action.metavar and (12 if registry is ALIGNMENT_METHODS else 11)) in sub.description


def test_solver_reaches_every_entry_point():
    import inspect

    for fn in (weightspace.align, weightspace.merge_checkpoints, weightspace.barrier_between,
               weightspace.merge_many_checkpoints, merging.merge_many, merging.c2m3_merge, merging.Starlight,
               merging.weight_matching, merging.activation_matching, merging.ste_matching):
        assert "solver" in inspect.signature(fn).parameters, fn.__qualname__
    from weightspace.starlight import starlight_checkpoints

    assert "solver" in inspect.signature(starlight_checkpoints).parameters
