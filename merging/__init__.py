"""Algorithms on state dicts: alignment (weight, activation and STE matching, assignment solvers),
interpolation, barriers, REPAIR, many-model merges, task-vector methods, weight-manifold hypernetworks.

State dicts are plain ``dict[str, torch.Tensor]``; data is any re-iterable of ``(x, y)``
batches. This layer imports ``graphs`` at most, never ``weightspace``.
"""

from merging._eval import EvalResult, evaluate
from merging.barrier import BarrierResult, barrier, plot_barrier
from merging.c2m3 import (C2M3Matching, c2m3_matching, c2m3_matching_result, c2m3_merge, c2m3_merge_result,
                          pairwise_permutation, soft_permute)
from merging.interpolate import interpolate, lerp_path
from merging.matching import (
    Assignment,
    WeightMatchingResult,
    solve_assignment_result,
    weight_matching_result,
    lap_available,
    list_solvers,
    register_solver,
    resolve_solver,
    activation_matching,
    matching_objective,
    scored_weight_matching,
    signature_start,
    similarity,
    sinkhorn_start,
    solve_assignment,
    ste_matching,
    weight_matching,
)
from merging.many import ManyMerge, merge_many, merge_many_result, repair_many
from merging.many_methods import get_many_method, list_many_methods, register_many_method
from merging.methods import MergeMethod, get_method, list_methods, merge_method, merge_states
from merging.repair import repair, reset_batchnorm
from merging.star_eval import (
    PredictionMetrics,
    aligned_barriers,
    ensemble_proba,
    expected_calibration_error,
    mean_barrier,
    pairwise_barriers,
    predict_proba,
    prediction_metrics,
    star_domain_proba,
)
from merging.starlight import Starlight, TDist, parse_t_dist

__all__ = [
    # evaluation
    "EvalResult",
    "evaluate",
    # interpolation and barriers
    "interpolate",
    "lerp_path",
    "BarrierResult",
    "barrier",
    "plot_barrier",
    # alignment
    "weight_matching",
    "signature_start",
    "sinkhorn_start",
    "scored_weight_matching",
    "activation_matching",
    "ste_matching",
    "similarity",
    "matching_objective",
    "solve_assignment",
    "solve_assignment_result",
    "Assignment",
    "weight_matching_result",
    "WeightMatchingResult",
    "list_solvers",
    "register_solver",
    "resolve_solver",
    "lap_available",
    # activation statistics
    "reset_batchnorm",
    "repair",
    # merge methods
    "MergeMethod",
    "get_method",
    "list_methods",
    "merge_method",
    "merge_states",
    # many models
    "merge_many",
    "merge_many_result",
    "repair_many",
    "ManyMerge",
    "get_many_method",
    "list_many_methods",
    "register_many_method",
    "c2m3_matching",
    "c2m3_matching_result",
    "c2m3_merge",
    "c2m3_merge_result",
    "C2M3Matching",
    "pairwise_permutation",
    "soft_permute",
    # star models
    "Starlight",
    "TDist",
    "parse_t_dist",
    "aligned_barriers",
    "pairwise_barriers",
    "mean_barrier",
    "predict_proba",
    "ensemble_proba",
    "star_domain_proba",
    "PredictionMetrics",
    "prediction_metrics",
    "expected_calibration_error",
]
