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
    axis_index,
    axis_rows,
    compose_permutations,
    group_rows,
    product_block,
    product_blocks,
    identity_permutation,
    inverse_permutation,
    permute,
    permute_tensor,
    random_permutation,
)
from .trace import check_structure, trace
from .param_graph import ParamGraph
from .converters import (
    dwsnets_to_state_dict,
    mlp_layer_names,
    nfn_to_state_dict,
    state_dict_to_dwsnets,
    state_dict_to_nfn,
)

__all__ = [
    "Axis", "Cat", "Group", "Layer", "PermDict", "Prod", "StateDict", "Structure", "Unit",
    "Unpermuted", "axis_groups", "axis_index", "axis_rows", "check_structure", "compose_permutations", "group_rows",
    "product_block",
    "product_blocks",
    "identity_permutation", "inverse_permutation", "permute", "permute_tensor",
    "random_permutation", "trace",
    "ParamGraph", "dwsnets_to_state_dict", "mlp_layer_names", "nfn_to_state_dict",
    "state_dict_to_dwsnets", "state_dict_to_nfn",
]
