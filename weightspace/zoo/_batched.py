"""Many small models trained as one: stacked parameters, batched kernels, per-model optimizers.

Parameters of ``M`` models of one architecture are held as one tensor per state-dict key with
a leading model axis (what :func:`torch.func.stack_module_state` gives). Forward passes run
all models in one call: convolutions as grouped convolutions (on a CPU our C kernels of
``_grouped_conv``, on model-major activations; elsewhere torch's ``groups=M``), linear layers
as batched matrix products; :func:`vmap_forward` is the generic ``torch.func.vmap(functional_call)``
path, used to check the fast ones. The optimizers are written as tensor operations over the
stacked parameters with per-model learning rates and weight decays broadcast along the model
axis, following ``torch.optim.Adam`` / ``torch.optim.SGD`` update for update, so one model
trained in a batch and alone with the same hyper-parameters and data order agree to rounding.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

__all__ = ["StackedOptimizer", "IndexStream", "cnn_forward", "siren_forward", "vmap_forward", "stack_models",
           "model_generator", "OPTIMIZERS"]

OPTIMIZERS = ("adam", "sgd")


def model_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from integer keys (seed, model id, purpose), the same on any machine."""
    h = 0x9E3779B97F4A7C15
    for k in keys:
        h = (h ^ (int(k) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return torch.Generator().manual_seed(h & 0x7FFFFFFFFFFFFFFF)


def stack_models(models: Sequence[nn.Module], device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """``torch.func.stack_module_state`` of ``models``: key -> ``(M, *shape)``, detached, on ``device``."""
    params, buffers = stack_module_state(list(models))
    if buffers:
        raise ValueError(f"stack_models: models with buffers ({', '.join(buffers)}) are not supported in zoos")
    return {k: v.detach().to(device).clone() for k, v in params.items()}


def vmap_forward(template: nn.Module, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """All models at once with ``vmap(functional_call)``: ``x`` ``(M, B, *in)`` -> ``(M, B, *out)``."""
    return vmap(lambda p, xb: functional_call(template, p, (xb,)))(dict(params), x)


class IndexStream:
    """The order in which one model sees its training examples.

    The model draws a random subset of ``n_subset`` of the ``n`` examples once, then walks
    through it in a fresh random order each pass, passes running on into each other. Both the
    batched and the one-at-a-time trainer read the same stream, from a generator keyed by the
    seed and the model id.
    """

    def __init__(self, n: int, n_subset: int, generator: torch.Generator) -> None:
        self.generator = generator
        self.subset = torch.randperm(n, generator=generator)[:n_subset]
        self._buffer = torch.empty(0, dtype=torch.long)

    def take(self, k: int) -> Tensor:
        """The next ``k`` example indices."""
        parts, have = [self._buffer], len(self._buffer)
        while have < k:
            perm = self.subset[torch.randperm(len(self.subset), generator=self.generator)]
            parts.append(perm)
            have += len(perm)
        allidx = torch.cat(parts)
        self._buffer = allidx[k:]
        return allidx[:k]


class StackedOptimizer:
    """Adam or SGD (momentum) over stacked parameters with per-model hyper-parameters.

    Follows ``torch.optim.Adam(lr, betas, eps, weight_decay)`` (L2 added to the gradient) and
    ``torch.optim.SGD(lr, momentum, weight_decay)`` exactly, each model with its own ``lr`` and
    ``weight_decay``; ``active`` (per model) freezes finished models.

    Args:
        params (dict[str, Tensor]): key -> ``(M, *shape)``, updated in place.
        lr (Tensor): ``(M,)`` learning rates.
        weight_decay (Tensor): ``(M,)`` L2 coefficients.
        kind (str): ``"adam"`` or ``"sgd"``.
        betas, eps: Adam's; momentum: SGD's.
    """

    def __init__(self, params: Mapping[str, Tensor], lr: Tensor, weight_decay: Tensor, *, kind: str = "adam",
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, momentum: float = 0.9) -> None:
        if kind not in OPTIMIZERS:
            raise ValueError(f"StackedOptimizer: unknown optimizer {kind!r}; choose one of: {', '.join(OPTIMIZERS)}")
        self.params = dict(params)
        self.kind = kind
        self.betas, self.eps, self.momentum = betas, eps, momentum
        self.step_count = 0
        first = next(iter(self.params.values()))
        self.lr = lr.to(first.device, first.dtype)
        self.weight_decay = weight_decay.to(first.device, first.dtype)
        self.state: dict[str, dict[str, Tensor]] = {}

    def select_(self, index: Tensor) -> dict[str, Tensor]:
        """Keep only the models at ``index`` (parameters, optimizer state, hyper-parameters).

        Returns the new parameter dict (fresh leaf tensors); the optimizer updates those from now on.
        """
        self.params = {k: p.detach()[index].clone().requires_grad_(p.requires_grad) for k, p in self.params.items()}
        self.state = {k: {n: t[index] for n, t in st.items()} for k, st in self.state.items()}
        self.lr, self.weight_decay = self.lr[index], self.weight_decay[index]
        return self.params

    @staticmethod
    def _view(v: Tensor, like: Tensor) -> Tensor:
        return v.view(-1, *([1] * (like.ndim - 1)))

    @torch.no_grad()
    def step(self, grads: Mapping[str, Tensor], active: Tensor | None = None) -> None:
        """One update of every model. All parameters go through each operation at once
        (``torch._foreach_*``, as ``torch.optim``'s foreach path), in the same order of
        operations as the per-tensor update, so results are the same to the bit."""
        self.step_count += 1
        t = self.step_count
        keys = list(self.params)
        ps = [self.params[k] for k in keys]
        lr = self.lr if active is None else self.lr * active
        wds = [self._view(self.weight_decay, p) for p in ps]
        lrs = [self._view(lr, p) for p in ps]
        gs = torch._foreach_add([grads[k] for k in keys], torch._foreach_mul(ps, wds))
        if self.kind == "adam":
            b1, b2 = self.betas
            for k, p in zip(keys, ps):
                if not self.state.get(k):
                    self.state[k] = {"m": torch.zeros_like(p), "v": torch.zeros_like(p)}
            ms = [self.state[k]["m"] for k in keys]
            vs = [self.state[k]["v"] for k in keys]
            torch._foreach_lerp_(ms, gs, 1 - b1)
            torch._foreach_mul_(vs, b2)
            torch._foreach_addcmul_(vs, gs, gs, value=1 - b2)
            bc1, bc2 = 1 - b1**t, 1 - b2**t
            denom = torch._foreach_sqrt(vs)
            torch._foreach_div_(denom, math.sqrt(bc2))
            torch._foreach_add_(denom, self.eps)
            upd = torch._foreach_mul(torch._foreach_div(lrs, bc1), ms)
            torch._foreach_div_(upd, denom)
            torch._foreach_sub_(ps, upd)
        else:
            for k, g in zip(keys, gs):
                st = self.state.setdefault(k, {})
                if "buf" not in st:
                    st["buf"] = g.clone()
                else:
                    st["buf"].mul_(self.momentum).add_(g)
            torch._foreach_sub_(ps, torch._foreach_mul(lrs, [self.state[k]["buf"] for k in keys]))


def cnn_forward(template: nn.Module, params: Mapping[str, Tensor], x: Tensor, *,
                dropout: Tensor | None = None) -> Tensor:
    """All models of the ``cnn`` family at once, as grouped convolutions.

    Computes exactly what :class:`weightspace.models.CNN` computes for each model; activations
    stay in the grouped layout ``(B, M * C, H, W)`` from layer to layer, so elementwise steps
    and pooling need no copies.

    Args:
        template (CNN): a model of the architecture (its weights are not used).
        params (dict[str, Tensor]): key -> ``(M, *shape)``.
        x (Tensor): ``(M, B, C, H, W)`` (each model its own batch) or ``(B, C, H, W)`` (one
            batch for every model).
        dropout (Tensor, optional): ``(M, B, F)`` multipliers of the head's input features
            (inverted dropout during training). (default: ``None``)

    Shapes:
        - output: ``(M, B, num_classes)``
    """
    if _use_kernels(template, params, x) and _cnn_path(template, params, x) == "ours":
        return _cnn_forward_kernels(template, params, x, dropout)
    return _cnn_forward_torch(template, params, x, dropout)


def _cnn_forward_torch(template: nn.Module, params: Mapping[str, Tensor], x: Tensor,
                       dropout: Tensor | None) -> Tensor:
    """:func:`cnn_forward` with torch's grouped convolutions."""
    M = params["head.weight"].shape[0]
    cl = torch.channels_last
    if x.ndim == 4:  # one batch for all: the first layer is one dense convolution of M * C_out channels
        B, C, H, W = x.shape
        h, groups = x.contiguous(memory_format=cl), 1
    else:
        _, B, C, H, W = x.shape
        h, groups = x.permute(1, 0, 2, 3, 4).reshape(B, M * C, H, W).contiguous(memory_format=cl), M
    relu = template.activation == "relu"
    for i, (pooled, (before, after)) in enumerate(zip(template._pool_after, template.pads)):
        w = params[f"convs.{i}.weight"]
        w = w.reshape(-1, *w.shape[2:]).contiguous(memory_format=cl)
        if before != after:  # TensorFlow's "SAME" on an even size: the odd row / column at the bottom / right
            h, before = F.pad(h, (before, after, before, after)), 0
        h = F.conv2d(h, w, params[f"convs.{i}.bias"].reshape(-1), stride=template.stride, padding=before, groups=groups)
        groups = M
        h = torch.relu_(h) if relu else template.act(h)
        if pooled:
            h = template.pool(h)
    c = template.channels[-1]
    if template.gap is not None:
        feats = h.mean((2, 3)).view(B, M, c)
    else:
        feats = h.reshape(B, M, -1)
    feats = feats.transpose(0, 1)
    if dropout is not None:
        feats = feats * dropout
    return torch.baddbmm(params["head.bias"].unsqueeze(1), feats, params["head.weight"].transpose(1, 2))


def _use_kernels(template: nn.Module, params: Mapping[str, Tensor], x: Tensor) -> bool:
    from ._grouped_conv import kernels_available
    return (kernels_available() and x.device.type == "cpu" and x.dtype == torch.float32
            and all(c % 16 == 0 for c in template.channels)
            and all(params[f"convs.{i}.weight"].dtype == torch.float32 for i in range(len(template.channels))))


def _cnn_path(template: nn.Module, params: Mapping[str, Tensor], x: Tensor) -> str:
    """``"ours"`` or ``"torch"`` for this forward: ``$WEIGHTSPACE_GCONV``, or with ``auto`` the
    faster of :func:`_cnn_forward_kernels` and :func:`_cnn_forward_torch` on these sizes,
    forward and backward, measured at the first call with them (``_grouped_conv.CHOICES``).

    The whole network is what is timed, not each convolution: torch's path keeps the grouped
    layout from layer to layer, ours the model-major one, and the copies between the two
    layouts would cost more than a layer's difference."""
    from . import _grouped_conv as gc

    if gc.mode() == "ours":
        return "ours"
    keys = sorted(params)
    grad = torch.is_grad_enabled()
    grads = [grad and x.requires_grad] + [grad and params[k].requires_grad for k in keys]
    sig = ("cnn", tuple(template.channels), template.stride, tuple(template.pads), tuple(template._pool_after),
           template.activation, template.gap is not None, tuple(x.shape),
           tuple((k, tuple(params[k].shape)) for k in keys), tuple(grads))
    choice = gc.CHOICES.get(sig)
    if choice is None:
        def run(fwd):
            return gc.forward_backward(lambda x, *ps: fwd(template, dict(zip(keys, ps)), x, None),
                                       [x, *(params[k] for k in keys)], grads)

        times = gc.timed_min({"ours": run(_cnn_forward_kernels), "torch": run(_cnn_forward_torch)})
        choice = gc.record_choice(sig, times, f"cnn_forward {len(template.channels)} convs of {template.channels} "
                                              f"stride {template.stride}, x{tuple(x.shape)}, "
                                              f"{'forward and backward' if any(grads) else 'forward'}")
    return choice


def _cnn_forward_kernels(template: nn.Module, params: Mapping[str, Tensor], x: Tensor,
                         dropout: Tensor | None) -> Tensor:
    """:func:`cnn_forward` with our C kernels (``_grouped_conv``): activations model-major and
    channels-last, ``(M, B, H, W, C)``, so each model's block is contiguous and no padded
    copy is made."""
    from ._grouped_conv import grouped_conv2d

    M = params["head.weight"].shape[0]
    if x.ndim == 4:  # one batch for all: read by every model without a copy
        xb = x.permute(0, 2, 3, 1).contiguous()
        h = xb.unsqueeze(0).expand(M, *xb.shape)
    else:
        h = x.permute(0, 1, 3, 4, 2)
    B = h.shape[1]
    relu = template.activation == "relu"
    for i, (pooled, (before, after)) in enumerate(zip(template._pool_after, template.pads)):
        h = grouped_conv2d(h, params[f"convs.{i}.weight"], params[f"convs.{i}.bias"], stride=template.stride,
                           pads=(before, after, before, after), path="ours")
        h = torch.relu_(h) if relu else template.act(h)
        if pooled:  # torch's pooling on a channels-last view of the same memory
            _, _, hh, ww, c = h.shape
            v = template.pool(h.view(M * B, hh, ww, c).permute(0, 3, 1, 2))
            h = v.permute(0, 2, 3, 1).reshape(M, B, v.shape[2], v.shape[3], c)
    if template.gap is not None:
        feats = h.mean((2, 3))
    else:  # the module flattens (C, H, W)
        feats = h.permute(0, 1, 4, 2, 3).reshape(M, B, -1)
    if dropout is not None:
        feats = feats * dropout
    return torch.baddbmm(params["head.bias"].unsqueeze(1), feats, params["head.weight"].transpose(1, 2))


def siren_forward(template: nn.Module, params: Mapping[str, Tensor], coords: Tensor) -> Tensor:
    """All models of the ``siren`` family at once: ``coords`` ``(P, in)`` -> ``(M, P, out)``."""
    n = len(template.layers)
    M = params["layers.0.weight"].shape[0]
    h = coords.expand(M, *coords.shape)
    for i in range(n):
        b, w = params[f"layers.{i}.bias"].unsqueeze(1), params[f"layers.{i}.weight"].transpose(1, 2)
        if i < n - 1:  # sin(w0 (h W^T + b)), the scaling folded into baddbmm
            w0 = template.sines[i].w0
            h = torch.sin(torch.baddbmm(b, h, w, beta=w0, alpha=w0))
        else:
            h = torch.baddbmm(b, h, w)
    return h
