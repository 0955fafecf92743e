"""Linear assignment solvers (maximise ``sum_i C[i, perm[i]]``)."""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

SOLVERS = ("scipy",)


def solve_assignment(cost: Tensor, *, solver: str = "scipy") -> Tensor:
    """Exact maximum-weight perfect matching of a square similarity matrix.

    Shapes:
        cost: ``(n, n)``; output: ``(n,)`` LongTensor on ``cost``'s device.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solve_assignment: unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    c = cost.detach().to("cpu", torch.float64).numpy()
    if not np.isfinite(c).all():
        raise ValueError("solve_assignment: the similarity matrix has NaN or Inf (are the weights finite?)")
    rows, cols = linear_sum_assignment(c, maximize=True)
    out = np.empty(len(rows), dtype=np.int64)
    out[rows] = cols
    return torch.from_numpy(out).to(cost.device)
