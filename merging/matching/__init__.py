"""Alignment of two networks' hidden units: weight, activation and straight-through matching."""
from ._solve import (ASSIGNMENT_SOLVERS, SOLVERS, Assignment, lap_available, list_solvers, register_solver,
                     resolve_solver, solve_assignment, solve_assignment_result)
from .activation import activation_correlations, activation_matching
from .relaxed import sinkhorn_start
from .scored import scored_weight_matching
from .ste import ste_matching
from .streamed import streaming_weight_matching, streaming_weight_matching_result
from .starts import from_two_starts, signature_start
from .weight import WeightMatchingResult, matching_objective, similarity, weight_matching, weight_matching_result

__all__ = ["ASSIGNMENT_SOLVERS", "SOLVERS", "Assignment", "WeightMatchingResult", "solve_assignment_result",
           "weight_matching_result", "lap_available", "list_solvers", "register_solver", "resolve_solver",
           "activation_correlations", "activation_matching", "matching_objective", "scored_weight_matching",
           "signature_start", "from_two_starts", "similarity", "sinkhorn_start", "solve_assignment", "ste_matching",
           "streaming_weight_matching", "streaming_weight_matching_result", "weight_matching"]
