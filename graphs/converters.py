"""Converters between MLP state dicts and the weight-space layouts of other metanetwork codebases.

* **DWSNets** (`"Equivariant Architectures for Learning in Deep Weight Spaces"
  <https://arxiv.org/abs/2301.12780>`_, github.com/AvivNavon/DWSNets): a network is a pair of
  tuples ``(weights, biases)`` with one entry per layer; ``weights[l]`` is the *transposed*
  weight with a trailing feature axis, ``(d_in, d_out, 1)``, ``biases[l]`` is ``(d_out, 1)``; a
  batch adds a leading axis: ``(B, d_in, d_out, 1)`` and ``(B, d_out, 1)``.
* **nfn** (`"Permutation Equivariant Neural Functionals" <https://arxiv.org/abs/2302.14040>`_,
  the ``nfn`` package): ``WeightSpaceFeatures(weights, biases)`` with ``weights[l]`` of shape
  ``(B, C, n_out, n_in)`` (``(B, C, n_out, n_in, *kernel)`` for a convolution) and
  ``biases[l]`` ``(B, C, n_out)``; a state dict has ``C = 1``.

Both directions are exact (the same values, reshaped). The layer order is given by ``names``:
``[(weight_key, bias_key or None), ...]``, from :func:`mlp_layer_names`.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from torch import Tensor

from .structure import Structure

__all__ = ["mlp_layer_names", "state_dict_to_dwsnets", "dwsnets_to_state_dict",
           "state_dict_to_nfn", "nfn_to_state_dict"]

LayerNames = Sequence[tuple[str, "str | None"]]


def mlp_layer_names(source: Structure | Mapping[str, Tensor]) -> list[tuple[str, str | None]]:
    """The ``(weight_key, bias_key or None)`` of each layer, in forward order.

    Args:
        source: a :class:`~graphs.structure.Structure` (its linear and convolution layers) or a
            state dict whose keys come in pairs ``<prefix>weight``, ``<prefix>bias`` (a layer
            without a bias is a lone ``weight``), as ``nn.Sequential`` of ``nn.Linear`` writes them.

    Raises:
        ValueError: the structure has other parametric layers, or a key is neither a weight
            nor the bias of the weight before it.
    """
    if isinstance(source, Structure):
        out = []
        for lay in source.layers:
            if lay.kind not in ("linear", "conv"):
                raise ValueError(f"mlp_layer_names: layer {lay.name!r} is a {lay.kind}; only "
                                 f"linear (and convolution) layers have this layout")
            out.append((lay.tensors["weight"], lay.tensors.get("bias")))
        if not out:
            raise ValueError("mlp_layer_names: the structure has no layers; trace the model first")
        return out
    out: list[tuple[str, str | None]] = []
    for k in source:
        if k.endswith("weight"):
            out.append((k, None))
        elif k.endswith("bias") and out and out[-1][1] is None and \
                out[-1][0][:-len("weight")] == k[:-len("bias")]:
            out[-1] = (out[-1][0], k)
        else:
            raise ValueError(f"mlp_layer_names: {k!r} is neither a weight nor the bias of the "
                             f"weight before it; pass names=[(weight_key, bias_key), ...]")
    if not out:
        raise ValueError("mlp_layer_names: the state dict has no weights")
    return out


def _names(state: Mapping[str, Tensor], names: LayerNames | Structure | None) -> list[tuple[str, str | None]]:
    if names is None:
        return mlp_layer_names(state)
    if isinstance(names, Structure):
        return mlp_layer_names(names)
    out = [(w, b) for w, b in names]
    for w, b in out:
        for k in (w, b):
            if k is not None and k not in state:
                raise KeyError(f"{k!r} is not in the state dict (it has {sorted(state)[:8]}...)")
    return out


def state_dict_to_dwsnets(state: Mapping[str, Tensor], names: LayerNames | Structure | None = None, *,
                          stacked: bool = False) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """An MLP state dict in the DWSNets layout.

    Args:
        state (dict[str, Tensor]): ``weight (n_out, n_in)`` and ``bias (n_out,)`` per layer, or
            with a leading model axis when ``stacked``.
        names (list or Structure, optional): layer order (default: :func:`mlp_layer_names`).
        stacked (bool, optional): tensors carry a leading model axis ``B`` (default: ``False``).

    Returns:
        ``(weights, biases)``; a layer without a bias gets zeros.

    Shapes:
        weights[l]: ``(d_in, d_out, 1)`` or ``(B, d_in, d_out, 1)``;
        biases[l]: ``(d_out, 1)`` or ``(B, d_out, 1)``.

    Raises:
        ValueError: a weight is not a matrix (DWSNets handles MLPs only).
    """
    lead = 1 if stacked else 0
    ws, bs = [], []
    for w, b in _names(state, names):
        W = state[w]
        if W.dim() != 2 + lead:
            raise ValueError(f"state_dict_to_dwsnets: {w!r} has shape {tuple(W.shape)}; expected a "
                             f"{'(B, n_out, n_in)' if stacked else '(n_out, n_in)'} linear weight")
        ws.append(W.transpose(-1, -2).unsqueeze(-1).contiguous())
        B = state[b] if b is not None else W.new_zeros(W.shape[:-1])
        bs.append(B.unsqueeze(-1).contiguous())
    return tuple(ws), tuple(bs)


def dwsnets_to_state_dict(weights: Sequence[Tensor], biases: Sequence[Tensor],
                          names: LayerNames) -> dict[str, Tensor]:
    """Inverse of :func:`state_dict_to_dwsnets`: 3-d weights give one state dict, 4-d weights
    (a batch) give stacked tensors with a leading model axis. A layer whose bias name is
    ``None`` drops its bias.

    Raises:
        ValueError: the number of layers or a shape does not fit the layout.
    """
    names = [(w, b) for w, b in names]
    if not (len(weights) == len(biases) == len(names)):
        raise ValueError(f"dwsnets_to_state_dict: {len(weights)} weights, {len(biases)} biases and "
                         f"{len(names)} layer names; they must agree")
    out: dict[str, Tensor] = {}
    for (wn, bn), W, B in zip(names, weights, biases):
        if W.dim() not in (3, 4) or W.shape[-1] != 1 or B.shape[-1] != 1:
            raise ValueError(f"dwsnets_to_state_dict: {wn!r} has weight {tuple(W.shape)} and bias "
                             f"{tuple(B.shape)}; expected (B?, d_in, d_out, 1) and (B?, d_out, 1)")
        out[wn] = W.squeeze(-1).transpose(-1, -2).contiguous()
        if bn is not None:
            out[bn] = B.squeeze(-1).contiguous()
    return out


def _nfn_class():
    try:
        from nfn.common import WeightSpaceFeatures
    except ImportError:
        return None
    return WeightSpaceFeatures


def state_dict_to_nfn(state: Mapping[str, Tensor], names: LayerNames | Structure | None = None, *,
                      stacked: bool = False) -> Any:
    """An MLP (or plain CNN) state dict in the ``nfn`` layout.

    Args:
        state (dict[str, Tensor]): weights ``(n_out, n_in)`` (or ``(n_out, n_in, *kernel)``) and
            biases ``(n_out,)``, or with a leading model axis when ``stacked``.
        names (list or Structure, optional): layer order (default: :func:`mlp_layer_names`).
        stacked (bool, optional): tensors carry a leading model axis ``B`` (default: ``False``:
            ``B = 1``).

    Returns:
        An ``nfn.common.WeightSpaceFeatures`` when the ``nfn`` package is installed, otherwise
        the ``(weights, biases)`` tuples it would hold. A layer without a bias gets zeros.

    Shapes:
        weights[l]: ``(B, 1, n_out, n_in, *kernel)``; biases[l]: ``(B, 1, n_out)``.
    """
    ws, bs = [], []
    for w, b in _names(state, names):
        W = state[w] if stacked else state[w].unsqueeze(0)
        if W.dim() < 3:
            raise ValueError(f"state_dict_to_nfn: {w!r} has shape {tuple(state[w].shape)}; expected "
                             f"a weight with (n_out, n_in) axes" + (" after the model axis" if stacked else ""))
        B = (state[b] if stacked else state[b].unsqueeze(0)) if b is not None else W.new_zeros(W.shape[:2])
        ws.append(W.unsqueeze(1))
        bs.append(B.unsqueeze(1))
    cls = _nfn_class()
    return cls(tuple(ws), tuple(bs)) if cls is not None else (tuple(ws), tuple(bs))


def nfn_to_state_dict(features: Any, names: LayerNames, *, stacked: bool | None = None) -> dict[str, Tensor]:
    """Inverse of :func:`state_dict_to_nfn`.

    Args:
        features: a ``WeightSpaceFeatures`` or a ``(weights, biases)`` pair in the nfn layout,
            with one channel (``C = 1``).
        names: ``[(weight_key, bias_key or None), ...]``.
        stacked (bool, optional): return tensors with the leading model axis ``B``
            (default: only when ``B > 1``).

    Raises:
        ValueError: more than one channel, or the number of layers does not fit ``names``.
    """
    if hasattr(features, "weights") and hasattr(features, "biases"):
        weights, biases = features.weights, features.biases
    else:
        weights, biases = features
    names = [(w, b) for w, b in names]
    if not (len(weights) == len(biases) == len(names)):
        raise ValueError(f"nfn_to_state_dict: {len(weights)} weights, {len(biases)} biases and "
                         f"{len(names)} layer names; they must agree")
    out: dict[str, Tensor] = {}
    for (wn, bn), W, B in zip(names, weights, biases):
        if W.dim() < 4 or W.shape[1] != 1 or B.dim() != 3 or B.shape[1] != 1:
            raise ValueError(f"nfn_to_state_dict: {wn!r} has weight {tuple(W.shape)} and bias "
                             f"{tuple(B.shape)}; expected (B, 1, n_out, n_in, ...) and (B, 1, n_out) "
                             f"(a state dict has one channel)")
        keep = stacked if stacked is not None else W.shape[0] > 1
        if not keep and W.shape[0] != 1:
            raise ValueError(f"nfn_to_state_dict: {W.shape[0]} models in the batch; pass stacked=True")
        W, B = W.squeeze(1), B.squeeze(1)
        out[wn] = (W if keep else W[0]).contiguous()
        if bn is not None:
            out[bn] = (B if keep else B[0]).contiguous()
    return out
