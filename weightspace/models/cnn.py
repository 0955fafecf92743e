"""Plain convolutional network."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from weightspace.models._common import (
    ExampleInputMixin,
    int_tuple,
    make_activation,
    positive_int,
)
from weightspace.models._registry import register_model

_POOLS: dict[str, type[nn.Module]] = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}
_PADDINGS = ("symmetric", "tf_same")


def conv_padding(size: int, kernel_size: int, stride: int, padding: str) -> tuple[int, int, int]:
    """``(before, after, output size)`` of one spatial axis of a ``CNN`` convolution.

    ``"symmetric"`` pads ``kernel_size // 2`` on both sides; ``"tf_same"`` is TensorFlow's
    ``padding="SAME"``: the output has ``ceil(size / stride)`` positions and the
    ``max((out - 1) * stride + kernel_size - size, 0)`` padded positions are split with the
    odd one after (bottom / right).
    """
    if padding == "symmetric":
        before = after = kernel_size // 2
    else:
        total = max((-(-size // stride) - 1) * stride + kernel_size - size, 0)
        before, after = total // 2, total - total // 2
    return before, after, (size + before + after - kernel_size) // stride + 1


@register_model("cnn", pretty_name="Plain CNN")
class CNN(ExampleInputMixin, nn.Module):
    r"""Plain convolutional network: ``Conv2d`` + activation (+ 2x2 pooling) blocks and a linear head.

    .. math::
        h_l = \mathrm{pool}(\sigma(\mathrm{conv}_l(h_{l-1}))), \quad
        y = W \, \mathrm{flatten}(h_L) + b \ \text{ or } \ y = W \, \mathrm{mean}_{hw}(h_L) + b

    Convolutions have stride ``stride`` and, with ``padding="symmetric"``, ``kernel_size // 2``
    zeros on each side; ``padding="tf_same"`` is TensorFlow's ``"SAME"`` (``ceil(size / stride)``
    outputs, the odd padded row / column at the bottom / right), with which networks trained in
    TensorFlow -- the Small CNN Zoo's (three 3x3 convolutions of 16 channels, stride 2, global
    average pooling: ``CNN(channels=(16, 16, 16), stride=2, padding="tf_same", pool=None)``) --
    compute here exactly what they computed there. With ``pool`` set, a 2x2 pooling (stride 2)
    follows each convolution while the feature map is at least 2x2.

    Args:
        in_channels (int, optional): input channels (default: ``1``).
        channels (sequence of int, optional): output channels of each convolution
            (default: ``(16, 32, 32)``).
        num_classes (int, optional): outputs of the head (default: ``10``).
        image_size (int, optional): input height and width (default: ``28``).
        kernel_size (int, optional): convolution kernel size (default: ``3``).
        stride (int, optional): stride of every convolution (default: ``1``).
        padding (str, optional): ``"symmetric"`` or ``"tf_same"`` (default: ``"symmetric"``).
        pool (str, optional): ``"max"``, ``"avg"`` or ``None`` (default: ``"max"``).
        flatten (bool, optional): flatten the last feature map (``C * H * W`` features) into the head;
            otherwise global average pooling gives ``C`` features (default: ``False``).
        activation (str, optional): elementwise activation name (default: ``"relu"``).

    Shapes:
        - input: ``(B, in_channels, image_size, image_size)``
        - output: ``(B, num_classes)``

    State dict: ``convs.{l}.weight`` ``(C_out, C_in, k, k)``, ``convs.{l}.bias``, ``head.weight``
    ``(num_classes, C)`` or ``(num_classes, C * H * W)`` when ``flatten``, ``head.bias``.

    Example:
        >>> model = CNN(in_channels=1, channels=(8, 16), image_size=8, flatten=True)
        >>> model(model.example_input()).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (16, 32, 32),
        num_classes: int = 10,
        image_size: int = 28,
        *,
        kernel_size: int = 3,
        stride: int = 1,
        padding: str = "symmetric",
        pool: str | None = "max",
        flatten: bool = False,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.in_channels = positive_int(in_channels, owner="CNN", name="in_channels")
        self.channels = int_tuple(channels, owner="CNN", name="channels")
        if not self.channels:
            raise ValueError("CNN: channels must name at least one convolution, got ()")
        self.num_classes = positive_int(num_classes, owner="CNN", name="num_classes")
        self.image_size = positive_int(image_size, owner="CNN", name="image_size")
        self.kernel_size = positive_int(kernel_size, owner="CNN", name="kernel_size")
        self.stride = positive_int(stride, owner="CNN", name="stride")
        if padding not in _PADDINGS:
            raise ValueError(f"CNN: unknown padding {padding!r}; choose one of: {', '.join(_PADDINGS)}")
        self.padding = padding
        if pool is not None and pool not in _POOLS:
            raise ValueError(f"CNN: unknown pool {pool!r}; choose one of: avg, max, or None")
        self.pool_kind = pool
        self.flatten = bool(flatten)
        self.activation = activation
        self.input_shape: tuple[int, ...] = (self.in_channels, self.image_size, self.image_size)

        size = self.image_size
        pooled: list[bool] = []
        pads: list[tuple[int, int]] = []
        for _ in self.channels:
            before, after, out = conv_padding(size, self.kernel_size, self.stride, padding)
            if out < 1:
                raise ValueError(f"CNN: image_size={image_size} is too small for kernel_size={kernel_size}")
            size = out
            pads.append((before, after))
            pooled.append(pool is not None and size >= 2)
            if pooled[-1]:
                size //= 2
        self._pool_after = tuple(pooled)
        #: ``(before, after)`` zero padding of each convolution's input, both spatial axes
        self.pads = tuple(pads)
        self.feature_size = size  # height = width of the last feature map

        sizes = (self.in_channels, *self.channels)
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, self.kernel_size, stride=self.stride, padding=p[0] if p[0] == p[1] else 0)
            for a, b, p in zip(sizes[:-1], sizes[1:], pads)
        )
        self.act = make_activation(activation, owner="CNN")
        self.pool = _POOLS[pool](2) if pool is not None else None
        self.gap = None if self.flatten else nn.AdaptiveAvgPool2d(1)
        head_in = self.channels[-1] * (size * size if self.flatten else 1)
        self.head = nn.Linear(head_in, self.num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise convolutions and head with PyTorch's default initialisation."""
        for conv in self.convs:
            conv.reset_parameters()
        self.head.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        for conv, pooled, (before, after) in zip(self.convs, self._pool_after, self.pads):
            if before != after:  # asymmetric ("tf_same" on even sizes): padded here, not by the convolution
                x = F.pad(x, (before, after, before, after))
            x = self.act(conv(x))
            if pooled:
                x = self.pool(x)
        if self.gap is not None:
            x = self.gap(x)
        return self.head(x.flatten(1))
