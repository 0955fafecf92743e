"""Alignment methods: how B's hidden units are matched to A's before two checkpoints merge.

Each method is registered with :func:`register_alignment_method` under the name that
``--method`` (``weightspace merge``, ``weightspace barrier``) and ``method=`` (:func:`weightspace.align`,
:func:`weightspace.merge_checkpoints`) take, with a one-line description the CLI's help
prints. A method is ``fn(structure, model_a, state_a, state_b, batches, *, seed, device,
progress, solver) -> (perms, sweeps)``; ``auto`` is a policy, not a method of its own: it
resolves to another one (:func:`resolve_method`).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

import merging
from graphs import Structure, identity_permutation
from graphs.registry import Entry, Registry
from merging.matching.starts import from_two_starts

from .api import LoadedModel
from .pipeline import as_dtype, run_dtype

__all__ = ["ALIGNMENT_METHODS", "METHODS", "Alignment", "register_alignment_method", "list_alignment_methods",
           "get_alignment_method", "check_method", "resolve_method", "needs_data", "method_label", "run_alignment"]

#: ``fn(structure, model_a, state_a, state_b, batches, *, seed, device, progress, solver)
#: -> (perms, sweeps)``: ``sweeps`` is weight matching's count, ``None`` for other methods
Aligner = Callable[..., tuple[dict[str, Tensor], "int | None"]]

#: the alignment methods, in the order the CLI lists them
ALIGNMENT_METHODS: Registry[Aligner | None] = Registry("method")


def register_alignment_method(name: str, *, description: str, label: str | None = None,
                              needs_data: bool = False) -> Callable[[Aligner | None], Aligner | None]:
    """Decorator registering an alignment method under ``name``.

    Args:
        name (str): the ``--method`` name.
        description (str): one line for ``weightspace merge --help``.
        label (str, optional): the curve's name in :func:`weightspace.barrier_between`'s result
            (``"weight matching"``); ``None`` for methods that do not align. (default: ``None``)
        needs_data (bool, optional): the method runs the model on ``--data``. (default: ``False``)

    Raises:
        ValueError: a malformed or already registered name.
    """
    return ALIGNMENT_METHODS.register(name, description=description, caller="register_alignment_method",
                                      label=label, needs_data=bool(needs_data))


def list_alignment_methods() -> list[str]:
    """The alignment methods' names, in the order the CLI lists them."""
    return ALIGNMENT_METHODS.names()


def get_alignment_method(name: str, caller: str = "get_alignment_method") -> Entry[Aligner | None]:
    """The registered entry of ``name`` (its function, description, ``label`` and ``needs_data``).

    Raises:
        ValueError: an unknown name; the message lists every method.
    """
    return ALIGNMENT_METHODS.entry(name, caller=caller)


def check_method(method: str, fn: str) -> str:
    """``method`` if it is registered, else ``ValueError`` from ``fn`` listing the methods."""
    return get_alignment_method(method, fn).name


def needs_data(method: str) -> bool:
    """Whether ``method`` runs the model on data (activation and STE matching)."""
    return bool(get_alignment_method(method).info["needs_data"])


def method_label(method: str) -> str | None:
    """The name of ``method``'s curve in a barrier result (``"weight matching"``)."""
    return get_alignment_method(method).info["label"]


# --------------------------------------------------------------------------- the methods


register_alignment_method(  # a policy, not an aligner: resolve_method says which method it runs
    "auto", description="the default: activation matching when --data is given (plus the BatchNorm statistics "
                        "reset for BatchNorm networks), weight matching without; the summary says which ran "
                        "and why")(None)


@register_alignment_method("weight", description="weight matching: needs no data", label="weight matching")
def _weight(structure: Structure, a: LoadedModel, sa: dict[str, Tensor], sb: dict[str, Tensor],
            batches: Iterable[Any] | None, *, seed: int, device: torch.device, progress: bool,
            solver: str) -> tuple[dict[str, Tensor], int | None]:
    # from the identity and from unit signatures: the better objective
    wm = from_two_starts(
        lambda init: merging.weight_matching_result(structure, sa, sb, seed=seed, device=device, progress=progress,
                                                    solver=solver, init=init),
        structure, sa, sb, solver=solver)
    return wm.perms, wm.sweeps


@register_alignment_method("activation", description="activation matching: correlates hidden units on the "
                                                     "inputs of --data",
                           label="activation matching", needs_data=True)
def _activation(structure: Structure, a: LoadedModel, sa: dict[str, Tensor], sb: dict[str, Tensor],
                batches: Iterable[Any] | None, *, seed: int, device: torch.device, progress: bool,
                solver: str) -> tuple[dict[str, Tensor], int | None]:
    perms = merging.activation_matching(structure, a.module, sa, sb, batches, device=device, progress=progress,
                                        solver=solver)
    return perms, None


@register_alignment_method("ste", description="straight-through estimator: learns the permutation that "
                                              "minimises the midpoint loss on --data (slowest, often best)",
                           label="STE matching", needs_data=True)
def _ste(structure: Structure, a: LoadedModel, sa: dict[str, Tensor], sb: dict[str, Tensor],
         batches: Iterable[Any] | None, *, seed: int, device: torch.device, progress: bool,
         solver: str) -> tuple[dict[str, Tensor], int | None]:
    perms = merging.ste_matching(structure, a.module, sa, sb, batches, seed=seed, device=device,
                                 progress=progress, solver=solver)
    return perms, None


@register_alignment_method("none", description="no alignment: naive weight averaging")
def _none(structure: Structure, a: LoadedModel, sa: dict[str, Tensor], sb: dict[str, Tensor],
          batches: Iterable[Any] | None, *, seed: int, device: torch.device, progress: bool,
          solver: str) -> tuple[dict[str, Tensor], int | None]:
    return identity_permutation(structure), None


#: the built-in alignment methods' names, in the order the CLI lists them
METHODS: tuple[str, ...] = tuple(list_alignment_methods())


# --------------------------------------------------------------------------- running one


def resolve_method(method: str, *, has_data: bool, has_norm: bool = False, repair: bool = False
                   ) -> tuple[str, bool, str]:
    """What ``method`` means here: ``(method, repair, reason)``.

    ``"auto"`` is activation matching when data is given (it measures what the network
    computes; on narrow and normalised networks weight matching leaves most of the barrier,
    see the REPAIR paper, https://arxiv.org/abs/2211.08403), with REPAIR (for a BatchNorm
    network: resetting the BatchNorm statistics) when it has BatchNorm layers or ``repair`` is asked;
    without data it is weight matching. Explicit methods keep their meaning.

    Returns:
        The method that runs, whether to repair, and a one-line reason for the summary.
    """
    if method != "auto":
        return method, repair, f"--method {method}"
    if not has_data:
        return "weight", repair, "auto: no --data given, so weight matching (pass --data for activation matching)"
    why = "auto: --data given, so activation matching"
    if repair:
        return "activation", True, why + ", then REPAIR as asked"
    if has_norm:
        return "activation", True, why + ", then a BatchNorm statistics reset (the network has BatchNorm layers)"
    return "activation", False, why


@dataclass(frozen=True)
class Alignment:
    """The permutation that aligns B to A, and how it was found.

    Attributes:
        perms (dict[str, Tensor]): group -> LongTensor (on the CPU); apply it with
            ``weightspace.permute(structure, state_b, perms)``.
        method (str): the method that ran (``auto`` resolved).
        sweeps (int, optional): weight-matching sweeps over the groups (``None`` for other methods).
        seconds (float): time spent aligning.
        groups (dict[str, int]): the size of each group.
        reason (str): why this method ran, in one line.
    """

    perms: dict[str, Tensor]
    method: str
    sweeps: int | None
    seconds: float
    groups: dict[str, int]
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """``{"method", "sweeps", "seconds", "groups", "reason"}`` (the permutation left out)."""
        return {"method": self.method, "sweeps": self.sweeps, "seconds": self.seconds, "groups": self.groups,
                "reason": self.reason}


def run_alignment(structure: Structure, a: LoadedModel, b: LoadedModel, method: str,
                  batches: Iterable[Any] | None, *, seed: int, device: torch.device, progress: bool,
                  solver: str = "auto") -> Alignment:
    """Run the registered ``method`` (not ``auto``: resolve it first) on A's and B's states, moved to
    ``device``; methods that run the model do so in its own dtype."""
    t0 = time.perf_counter()
    fn = get_alignment_method(method, "run_alignment").value
    if fn is None:
        raise ValueError(f"run_alignment: {method!r} is a policy, not a method; resolve it first (resolve_method)")
    sa = {k: v.to(device) for k, v in a.state.items()}
    sb = {k: v.to(device) for k, v in b.state.items()}
    a.module.to(device)
    if needs_data(method):  # these run the model: in its own dtype
        run = run_dtype(a)
        sa, sb = as_dtype(sa, run), as_dtype(sb, run)
    perms, sweeps = fn(structure, a, sa, sb, batches, seed=seed, device=device, progress=progress, solver=solver)
    return Alignment({g: p.cpu() for g, p in perms.items()}, method, sweeps, time.perf_counter() - t0,
                     {g: grp.size for g, grp in structure.groups.items()})
