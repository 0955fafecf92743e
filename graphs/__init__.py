"""Structure of networks: permutation symmetry (trace, act on weights) and parameter graphs."""
from .structure import (
    Axis,
    Cat,
    Group,
    Layer,
    PermDict,
    Prod,
    StateDict,
    Structure,
    Unit,
    Unpermuted,
    axis_groups,
    compose_permutations,
    group_rows,
    identity_permutation,
    inverse_permutation,
    permute,
    permute_tensor,
    random_permutation,
)
from .trace import check_structure, trace

__all__ = [
    "Axis", "Cat", "Group", "Layer", "PermDict", "Prod", "StateDict", "Structure", "Unit",
    "Unpermuted", "axis_groups", "check_structure", "compose_permutations", "group_rows",
    "identity_permutation", "inverse_permutation", "permute", "permute_tensor",
    "random_permutation", "trace",
]
