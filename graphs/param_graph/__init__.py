"""Parameter graphs: a traced network as a graph of neurons (nodes) and weights (edges), and back.

Following `"Graph Metanetworks for Processing Diverse Neural Architectures"
<https://arxiv.org/abs/2312.04501>`_ (Lim et al.) and `"Graph Neural Networks for Learning
Equivariant Representations of Neural Networks" <https://arxiv.org/abs/2403.12143>`_ (Kofinas et
al.), built from a traced :class:`~graphs.structure.Structure` instead of hand-written cases, and
exactly invertible.

**Nodes.** One node set per *site*: the model input (one node per input feature or channel), the
output of every weight layer (one node per unit or channel), the vocabulary of an embedding (one
node per token), the ``q``/``k``/``v`` units of an attention layer, and, where a normalisation
cannot be folded (see below), the output of a normalisation layer. A residual stream is therefore
one node set per contributing layer, joined by identity ``residual`` edges along
:attr:`Layer.sources <graphs.structure.Layer.sources>`: when a layer reads the sum of several
sites, the latest one receives an edge from each earlier one that has not yet been added into it.

**Edges.** One per weight entry of a linear layer (source: input unit, target: output unit); for
a convolution one per (input channel, output channel) pair of the same group carrying the
flattened kernel as a vector (``conv="kernel"``), or one per kernel entry with its position
(``conv="entries"``); a linear layer reading a flattened feature map (``(C x ·S)`` axis) gets one
``flatten`` edge per (channel, unit) carrying the ``S`` spatial weights (or one per entry).
Attention (``nn.MultiheadAttention``) gets ``attn_q/k/v`` edges from its input to its q/k/v
nodes, ``attn_o`` edges from v to its output, and parameter-free ``attn_qk`` (k_i -> q_i, the
coordinates of one dot product) and ``attn_score`` (q -> v within a head) edges.

**Node values** (:attr:`ParamGraph.node_value`, columns :data:`NODE_VALUES`): the bias of the
layer that computes the node, and the normalisation parameters that act on it, *carried, not
folded*: scale, shift, running mean and running variance as they are stored. A normalisation
layer is attached to the nodes of the site it reads when that site feeds nothing else (conv ->
BatchNorm, linear -> LayerNorm); otherwise (a pre-norm transformer's LayerNorm reading a residual
stream) it gets its own node set, joined to its input by one ``norm`` edge per channel.

**Exact inverse.** Every node value and edge weight that came from a tensor keeps a reference
(its flat index into the concatenation of the covered tensors), so :meth:`ParamGraph.to_state_dict`
returns the original tensors bit for bit (dtype kept) and the graph is an editable view: change
``graph.edge_weight`` or ``graph.node_value`` in place and ``to_state_dict()`` puts the new values
where they belong. Tensors no layer covers (ViT's ``cls_token``/``pos_embed``, BatchNorm's
``num_batches_tracked``, parameters used through ``torch.nn.functional``, attention ``bias_k``) are
kept unchanged as :attr:`ParamGraph.extras`, so the round trip is exact for every tensor.

**Symmetry.** The graph is built from the structure only, so permuting the network's hidden units
relabels the nodes and changes nothing else (:meth:`ParamGraph.node_permutation` gives the
relabelling). The head index of q/k/v nodes is a label of the head block: permuting heads
relabels the heads too.
"""
from .graph import ParamGraph
from .topology import ACTIVATIONS, EDGE_KINDS, NODE_VALUES, PYG_WEIGHT_DIM, ROLES, Site  # noqa: F401
from .views import DenseGraph

__all__ = ["ParamGraph", "DenseGraph", "ROLES", "EDGE_KINDS", "ACTIVATIONS", "NODE_VALUES",
           "PYG_WEIGHT_DIM"]
