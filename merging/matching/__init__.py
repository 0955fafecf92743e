"""Alignment of two networks' hidden units: weight, activation and straight-through matching."""
from ._solve import SOLVERS, solve_assignment
from .activation import activation_correlations, activation_matching
from .relaxed import sinkhorn_start
from .scored import scored_weight_matching
from .ste import ste_matching
from .weight import matching_objective, signature_start, similarity, weight_matching

__all__ = ["SOLVERS", "activation_correlations", "activation_matching", "matching_objective", "scored_weight_matching",
           "signature_start", "similarity", "sinkhorn_start", "solve_assignment", "ste_matching", "weight_matching"]
