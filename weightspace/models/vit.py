"""Small Vision Transformer (ViT-tiny style)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from weightspace.models._common import ExampleInputMixin, positive_int
from weightspace.models._registry import register_model

_ATTENTIONS = ("manual", "torch")


class Attention(nn.Module):
    r"""Hand-written multi-head self-attention with a fused ``qkv`` projection.

    .. math::
        \mathrm{Attn}(x) = \mathrm{proj}\big(\mathrm{concat}_h\,
        \mathrm{softmax}(q_h k_h^\top / \sqrt{d})\, v_h\big)

    ``qkv.weight`` rows are ordered ``(3, heads, head_dim)`` (q, k, v; heads contiguous), the
    layout of ``nn.MultiheadAttention.in_proj_weight``.

    Args:
        dim (int): embedding size.
        heads (int): number of heads; must divide ``dim``.

    Shapes:
        - input: ``(B, N, dim)``
        - output: ``(B, N, dim)``
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.dim = dim
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens = x.shape[0], x.shape[1]
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, self.head_dim)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, B, H, N, d)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(batch, tokens, self.dim)
        return self.proj(out)


class FeedForward(nn.Module):
    r"""Transformer MLP: ``Linear`` - GELU - ``Linear``.

    Args:
        dim (int): embedding size.
        hidden (int): hidden width.

    Shapes:
        - input: ``(*, dim)``
        - output: ``(*, dim)``
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock(nn.Module):
    r"""Pre-norm transformer encoder block.

    .. math::
        x \leftarrow x + \mathrm{Attn}(\mathrm{LN}_1(x)), \quad x \leftarrow x + \mathrm{MLP}(\mathrm{LN}_2(x))

    Args:
        dim (int): embedding size.
        heads (int): attention heads.
        mlp_hidden (int): hidden width of the MLP.
        attention (str, optional): ``"torch"`` (``nn.MultiheadAttention``) or ``"manual"``
            (:class:`Attention`) (default: ``"torch"``).

    Shapes:
        - input: ``(B, N, dim)``
        - output: ``(B, N, dim)``
    """

    def __init__(self, dim: int, heads: int, mlp_hidden: int, attention: str = "torch") -> None:
        super().__init__()
        self.attention = attention
        self.norm1 = nn.LayerNorm(dim)
        self.attn: nn.Module
        if attention == "torch":
            self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        else:
            self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, mlp_hidden)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm1(x)
        if self.attention == "torch":
            x = x + self.attn(h, h, h, need_weights=False)[0]
        else:
            x = x + self.attn(h)
        return x + self.mlp(self.norm2(x))


@register_model("vit", pretty_name="Vision Transformer (tiny)", reference_url="https://arxiv.org/abs/2010.11929")
class ViT(ExampleInputMixin, nn.Module):
    r"""Small Vision Transformer from `"An Image is Worth 16x16 Words: Transformers for Image
    Recognition at Scale" <https://arxiv.org/abs/2010.11929>`_.

    Patches are embedded by a ``Conv2d`` with ``kernel_size = stride = patch``; a learnable class
    token is prepended and a learnable position embedding added; ``depth`` pre-norm
    :class:`TransformerBlock` follow; a final ``LayerNorm`` and a ``Linear`` head read the class token.

    .. math::
        z_0 = [c; \mathrm{embed}(x)] + p, \quad z_l = \mathrm{Block}_l(z_{l-1}), \quad
        y = W \, \mathrm{LN}(z_L)_0 + b

    Args:
        image_size (int, optional): input height and width, divisible by ``patch`` (default: ``32``).
        patch (int, optional): patch size (default: ``4``).
        in_channels (int, optional): input channels (default: ``3``).
        num_classes (int, optional): outputs (default: ``10``).
        dim (int, optional): embedding size (default: ``64``).
        depth (int, optional): number of blocks (default: ``2``).
        heads (int, optional): attention heads; must divide ``dim`` (default: ``4``).
        mlp_ratio (float, optional): MLP hidden width over ``dim`` (default: ``2.0``).
        attention (str, optional): ``"torch"`` for ``nn.MultiheadAttention(batch_first=True)`` or
            ``"manual"`` for the hand-written :class:`Attention` (default: ``"torch"``).

    Shapes:
        - input: ``(B, in_channels, image_size, image_size)``
        - output: ``(B, num_classes)``

    State dict: ``cls_token`` ``(1, 1, dim)``, ``pos_embed`` ``(1, N + 1, dim)`` with
    ``N = (image_size / patch)^2``, ``patch_embed.weight`` ``(dim, in_channels, patch, patch)``,
    ``patch_embed.bias``; per block ``blocks.{l}.norm1.{weight,bias}``, ``blocks.{l}.norm2.*``,
    ``blocks.{l}.mlp.fc1.*``, ``blocks.{l}.mlp.fc2.*`` and attention
    ``blocks.{l}.attn.in_proj_weight`` ``(3 dim, dim)``, ``blocks.{l}.attn.in_proj_bias``,
    ``blocks.{l}.attn.out_proj.{weight,bias}`` (``"torch"``) or ``blocks.{l}.attn.qkv.{weight,bias}``,
    ``blocks.{l}.attn.proj.{weight,bias}`` (``"manual"``, same layouts); ``norm.*``, ``head.*``.

    Example:
        >>> model = ViT(attention="manual")
        >>> model(model.example_input()).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        image_size: int = 32,
        patch: int = 4,
        in_channels: int = 3,
        num_classes: int = 10,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        *,
        attention: str = "torch",
    ) -> None:
        super().__init__()
        self.image_size = positive_int(image_size, owner="ViT", name="image_size")
        self.patch = positive_int(patch, owner="ViT", name="patch")
        self.in_channels = positive_int(in_channels, owner="ViT", name="in_channels")
        self.num_classes = positive_int(num_classes, owner="ViT", name="num_classes")
        self.dim = positive_int(dim, owner="ViT", name="dim")
        self.depth = positive_int(depth, owner="ViT", name="depth")
        self.heads = positive_int(heads, owner="ViT", name="heads")
        if image_size % patch:
            raise ValueError(f"ViT: image_size={image_size} must be divisible by patch={patch}")
        if dim % heads:
            raise ValueError(f"ViT: dim={dim} must be divisible by heads={heads}")
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or mlp_ratio <= 0:
            raise ValueError(f"ViT: mlp_ratio must be a positive number, got {mlp_ratio!r}")
        if attention not in _ATTENTIONS:
            raise ValueError(f"ViT: unknown attention {attention!r}; choose one of: {', '.join(_ATTENTIONS)}")
        self.mlp_ratio = mlp_ratio
        self.attention = attention
        self.num_patches = (image_size // patch) ** 2
        self.input_shape: tuple[int, ...] = (self.in_channels, self.image_size, self.image_size)

        self.patch_embed = nn.Conv2d(self.in_channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches + 1, dim))
        mlp_hidden = max(1, int(round(dim * mlp_ratio)))
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, mlp_hidden, attention) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, self.num_classes)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Truncated-normal (std 0.02) tokens and linear weights, zero biases, unit LayerNorm."""
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.patch_embed.reset_parameters()
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()
            elif isinstance(module, nn.MultiheadAttention):
                nn.init.trunc_normal_(module.in_proj_weight, std=0.02)
                nn.init.zeros_(module.in_proj_bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, dim)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])
