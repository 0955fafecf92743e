r"""The one task-vector core behind task arithmetic, TIES, DARE, DELLA and Model Breadcrumbs
(mergekit's generalized task arithmetic): each variant is a configuration of :func:`task_vector_merge`.

.. math::
    \tau_i = \theta_i - \theta_{base},\quad
    \hat\tau_i = \mathrm{sparsify}(\tau_i),\quad
    \theta = \theta_{base} + \lambda\, \frac{\sum_i w_i m_i \hat\tau_i}{\text{normalize} ? \sum_i w_i m_i : 1}

where :math:`m_i` is the sign-consensus mask (TIES: 1 where :math:`\mathrm{sgn}(w_i\hat\tau_i)`
equals the elected sign, else 0; all ones without consensus). The elected sign is
:math:`+1` where :math:`\sum_i w_i \hat\tau_i \ge 0` and :math:`-1` elsewhere (an exact zero
elects :math:`+1`, as in mergekit); a zero entry never agrees. A divisor of zero counts as one.

Random sparsification (DARE, DELLA) draws its mask for each tensor and model from a generator
seeded by ``(seed, tensor name, model index)``: the same seed gives the same merge whether the
state dict is merged at once or tensor by tensor (recipes), in any order.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from . import _sparsify
from ._common import StateDict, check_states, merge_each_tensor, per_model



def tensor_generator(seed: int, key: str, index: int) -> torch.Generator:
    """A generator seeded by ``(seed, key, index)``: independent of the order tensors are merged in."""
    digest = hashlib.sha256(f"{int(seed)}\0{key}\0{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def random_keep(tv: Tensor, density: float, generator: torch.Generator) -> Tensor:
    """DARE with the paper's rescale: keep each entry with probability ``density``, divide survivors by it."""
    return _sparsify.random(tv, density, "density", generator)


def task_vector_merge(
    states: Sequence[StateDict],
    base: StateDict | None,
    *,
    fn: str,
    weights: float | Sequence[float] | None,
    density: float | Sequence[float],
    scale: float,
    normalize: bool,
    sparsify: Literal["none", "magnitude", "random", "magnitude_outliers", "della"],
    consensus: Literal["none", "sign"],
    seed: int = 0,
    rescale: bool | str = False,
    gamma: float | Sequence[float] = 0.01,
    epsilon: float | Sequence[float] = 0.15,
) -> StateDict:
    r"""Merge the task vectors of ``states`` relative to ``base`` (see the module docstring).

    The parameters of every task-vector method (``ties``, ``dare_ties``, ``della``, ...) are
    documented here once; each method's signature gives its own defaults.

    Args:
        states (list[StateDict]): the fine-tuned models.
        base (StateDict): the pre-trained model the task vectors start from.
        fn (str): the method's name, for errors.
        weights (float or list[float], optional): :math:`w_i`, one per model (``None``: all ``1``).
        density (float or list[float]): the fraction of each task vector kept.
        scale (float): :math:`\lambda` (``lambda`` in recipes).
        normalize (bool): divide by the sum of the (agreeing) weights.
        sparsify (str): how each task vector is thinned: ``"none"``, ``"magnitude"`` (TIES: the top
            ``density`` by magnitude), ``"random"`` (DARE), ``"magnitude_outliers"`` (Model
            Breadcrumbs) or ``"della"`` (DELLA's magnitude-ranked random drop).
        consensus (str): ``"sign"`` (TIES's sign election) or ``"none"``.
        seed (int, optional): seeds the random drop, per tensor name and model. (default: ``0``)
        rescale (bool or str, optional): after the drop, ``True``: scale the kept entries back to the
            task vector's L1 norm (mergekit's ``rescale``); ``"density"``: divide them by the keep
            probability (the paper's); ``False``: no rescaling. (default: ``False``)
        gamma (float or list[float], optional): the fraction of largest-magnitude entries dropped as
            outliers (``"magnitude_outliers"``). (default: ``0.01``)
        epsilon (float or list[float], optional): keep probabilities range over ``density -/+
            epsilon`` by magnitude rank within each row (``"della"``). (default: ``0.15``)

    The registered methods also take ``int8_mask``: accepted for mergekit recipes (a memory option
    there); no effect on the result.

    Shapes:
        every tensor keeps its shape.

    Returns:
        StateDict: a new state dict; non-floating tensors (counters) are copied from the base.

    Raises:
        ValueError: no base, mismatched keys or shapes, a density outside ``[0, 1]``.
    """
    check_states(fn, states, base, needs_base=True)
    _sparsify.check_rescale(fn, rescale)
    n = len(states)
    ws = per_model(weights, n, "weights", fn, 1.0)
    ds = per_model(density, n, "density", fn, 1.0)
    gs = per_model(gamma, n, "gamma", fn, 0.01)
    es = per_model(epsilon, n, "epsilon", fn, 0.15)
    for d in ds:
        if not 0.0 <= d <= 1.0:
            raise ValueError(f"{fn}: density must be in [0, 1] (the fraction of each task vector kept), got {d}")

    def merge_tensor(key: str, tensors: list[Tensor], bw: Tensor) -> Tensor:
        if n == 0:
            return bw.clone()
        tvs = []
        for i, (t, d) in enumerate(zip(tensors, ds)):
            tv = t - bw
            try:
                if sparsify == "magnitude":
                    tv = _sparsify.magnitude(tv, d, rescale, name=repr(key))
                elif sparsify == "magnitude_outliers":
                    tv = _sparsify.magnitude_outliers(tv, d, gs[i], rescale)
                elif sparsify == "random":
                    tv = _sparsify.random(tv, d, rescale, tensor_generator(seed, key, i))
                elif sparsify == "della":
                    tv = _sparsify.della_magprune(tv, d, es[i], rescale, tensor_generator(seed, key, i))
            except ValueError as e:
                raise ValueError(f"{fn}: model {i}: {e}") from None
            tvs.append(tv)
        tv = torch.stack(tvs)  # (N, *shape)
        w = torch.tensor(ws, dtype=bw.dtype, device=bw.device).reshape(-1, *([1] * bw.ndim))
        weighted = tv * w
        if consensus == "sign":
            elected = (weighted.sum(0) >= 0).to(bw.dtype) * 2 - 1  # +1 where the summed mass is >= 0
            mask = weighted.sign() == elected
            mixed = (weighted * mask).sum(0)
            div = (w * mask).sum(0)
            div[div == 0] = 1
        else:
            mixed = weighted.sum(0)
            div = w.sum(0)
            div[div.abs() < 1e-8] = 1
        if normalize:
            mixed = mixed / div
        if scale != 1:
            mixed = mixed * scale
        return bw + mixed

    return merge_each_tensor(base, states, merge_tensor)
