"""Linear interpolation of state dicts."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor

from merging._eval import short_keys

__all__ = ["interpolate", "lerp_path"]


def interpolate(
    state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor], alpha: float = 0.5
) -> dict[str, Tensor]:
    r"""Interpolate two state dicts entry by entry.

    .. math::
        \theta(\alpha) = (1 - \alpha)\, \theta_A + \alpha\, \theta_B

    Floating (and complex) tensors are interpolated; integer and boolean tensors (e.g.
    BatchNorm ``num_batches_tracked``) are copied from ``state_a``. Each result has the dtype
    and device of its entry in ``state_a``; low-precision tensors are mixed in float32.
    ``alpha=0`` returns copies of A's tensors and ``alpha=1`` copies of B's, bit for bit, and
    entries equal in A and B stay exactly equal (computed with :func:`torch.lerp`).
    ``alpha`` outside ``[0, 1]`` extrapolates. The inputs are never mutated.

    Args:
        state_a (Mapping[str, Tensor]): the state at ``alpha=0``.
        state_b (Mapping[str, Tensor]): the state at ``alpha=1``; same keys and shapes.
        alpha (float, optional): position along the line. (default: ``0.5``)

    Shapes:
        every ``state_a[k]`` and ``state_b[k]`` share one shape, which the result keeps.

    Returns:
        dict[str, Tensor]: a new state dict, keys in the order of ``state_a``.

    Raises:
        ValueError: the key sets differ, a shape differs, or ``alpha`` is not finite.

    Example:
        >>> a = {"w": torch.zeros(2)}
        >>> b = {"w": torch.ones(2)}
        >>> interpolate(a, b, 0.25)["w"]
        tensor([0.2500, 0.2500])
    """
    alpha = float(alpha)
    if not math.isfinite(alpha):
        raise ValueError(f"interpolate: alpha must be a finite number, got {alpha!r}")
    _check_compatible(state_a, state_b)
    out: dict[str, Tensor] = {}
    for key in state_a:
        a = state_a[key]
        if not (a.is_floating_point() or a.is_complex()):
            out[key] = a.clone()
            continue
        b = state_b[key]
        if alpha == 0.0:
            out[key] = a.clone()
        elif alpha == 1.0:
            out[key] = b.to(device=a.device, dtype=a.dtype, copy=True)
        else:
            out[key] = _lerp(a, b.to(a.device), alpha)
    return out


def lerp_path(
    state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor], steps: int
) -> Iterator[tuple[float, dict[str, Tensor]]]:
    """Yield ``(t, interpolate(state_a, state_b, t))`` at ``steps`` evenly spaced t in [0, 1].

    The first and last t are exactly ``0.0`` and ``1.0``. States are built lazily, one per
    step, so only one interpolated copy is alive at a time if the caller drops it.

    Args:
        state_a (Mapping[str, Tensor]): the state at ``t=0``.
        state_b (Mapping[str, Tensor]): the state at ``t=1``.
        steps (int): number of points, at least 2.

    Raises:
        ValueError: ``steps < 2`` or the states do not match (raised before the first yield).
    """
    ts = path_ts(steps, fn="lerp_path")
    _check_compatible(state_a, state_b)

    def gen() -> Iterator[tuple[float, dict[str, Tensor]]]:
        for t in ts:
            yield t, interpolate(state_a, state_b, t)

    return gen()


def path_ts(steps: int, *, fn: str) -> list[float]:
    """``steps`` evenly spaced points in [0, 1] with exact endpoints."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"{fn}: steps must be an integer >= 2, got {steps!r}")
    return [i / (steps - 1) for i in range(steps)]


def _lerp(a: Tensor, b: Tensor, alpha: float) -> Tensor:
    # torch.lerp evaluates a + w (b - a) for w < 0.5 and b - (b - a)(1 - w) otherwise: the same
    # line as (1 - w) a + w b, but exact at both ends and exact where a == b.
    if a.dtype in (torch.float16, torch.bfloat16) or b.dtype != a.dtype:
        work = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
        return torch.lerp(a.to(work), b.to(work), alpha).to(a.dtype)
    return torch.lerp(a, b, alpha)


def _check_compatible(state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor]) -> None:
    keys_a, keys_b = set(state_a), set(state_b)
    if keys_a != keys_b:
        only_a = sorted(keys_a - keys_b)
        only_b = sorted(keys_b - keys_a)
        parts = []
        if only_a:
            parts.append(f"only in A: {short_keys(only_a)}")
        if only_b:
            parts.append(f"only in B: {short_keys(only_b)}")
        raise ValueError(
            f"interpolate: the state dicts have different keys ({'; '.join(parts)}); "
            "both must come from the same architecture"
        )
    for key in state_a:
        a, b = state_a[key], state_b[key]
        for name, t in (("A", a), ("B", b)):
            if not isinstance(t, Tensor):
                raise TypeError(f"interpolate: {key!r} in {name} is a {type(t).__name__}, expected a torch.Tensor")
        if a.shape != b.shape:
            raise ValueError(
                f"interpolate: {key!r} has shape {tuple(a.shape)} in A and {tuple(b.shape)} in B"
            )
        if (a.is_floating_point() or a.is_complex()) != (b.is_floating_point() or b.is_complex()):
            raise ValueError(
                f"interpolate: {key!r} has dtype {a.dtype} in A and {b.dtype} in B; "
                "one is floating and the other is not"
            )

