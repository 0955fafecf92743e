"""Many-model merge methods: how N models are put into one basis before they are averaged.

Each method is registered with :func:`register_many_method` under the name that
``weightspace merge-many --method`` and :func:`weightspace.merge_many_checkpoints` take, with
the one-line description ``--help`` prints. A method is ``fn(structure, states, *, max_iter,
seed, solver, progress) -> ManyMerge``.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from torch import Tensor

from graphs import Structure, identity_permutation
from graphs.registry import Entry, Registry

from .c2m3 import c2m3_merge_result
from .many import ManyMerge, mean_state, merge_many_result

__all__ = ["MANY_MODEL_METHODS", "register_many_method", "list_many_methods", "get_many_method"]


ManyMethod = Callable[..., ManyMerge]

#: the many-model methods, in the order the CLI lists them
MANY_MODEL_METHODS: Registry[ManyMethod] = Registry("method")


def register_many_method(name: str, *, description: str) -> Callable[[ManyMethod], ManyMethod]:
    """Decorator registering ``fn(structure, states, *, max_iter, seed, solver, progress) -> ManyMerge``.

    Raises:
        ValueError: a malformed or already registered name.
    """
    return MANY_MODEL_METHODS.register(name, description=description, caller="register_many_method")


def list_many_methods() -> list[str]:
    """The many-model methods' names, in the order the CLI lists them."""
    return MANY_MODEL_METHODS.names()


def get_many_method(name: str, caller: str = "get_many_method") -> Entry[ManyMethod]:
    """The registered entry of ``name``.

    Raises:
        ValueError: an unknown name; the message lists every method.
    """
    return MANY_MODEL_METHODS.entry(name, caller=caller)


@register_many_method("mergemany", description="Git Re-Basin's MergeMany (Ainsworth et al., arXiv 2209.04836): "
                                               "align each model by weight matching to the mean of the others "
                                               "until nothing changes (default)")
def _mergemany(structure: Structure, states: Sequence[Mapping[str, Tensor]], *, max_iter: int, seed: int,
               solver: str, progress: bool) -> ManyMerge:
    return merge_many_result(structure, states, seed=seed, max_iter=max_iter, solver=solver, progress=progress)


@register_many_method("c2m3", description="C2M3 (Crisostomi et al., arXiv 2405.17897): every model mapped to one "
                                          "universe (model 0's basis) by Frank-Wolfe over all pairs at once, then "
                                          "projected to permutations; the pairwise maps are cycle consistent")
def _c2m3(structure: Structure, states: Sequence[Mapping[str, Tensor]], *, max_iter: int, seed: int,
          solver: str, progress: bool) -> ManyMerge:
    return c2m3_merge_result(structure, states, max_iter=max_iter, solver=solver, progress=progress)


@register_many_method("average", description="no alignment: the plain mean of the weights")
def _average(structure: Structure, states: Sequence[Mapping[str, Tensor]], *, max_iter: int, seed: int,
             solver: str, progress: bool) -> ManyMerge:
    return ManyMerge(mean_state(states), [identity_permutation(structure) for _ in states], None)
