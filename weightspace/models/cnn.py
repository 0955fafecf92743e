"""Plain convolutional network."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from weightspace.models._common import ExampleInputMixin, int_tuple, make_activation, positive_int
from weightspace.models._registry import register_model

_POOLS: dict[str, type[nn.Module]] = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}


@register_model("cnn", pretty_name="Plain CNN")
class CNN(ExampleInputMixin, nn.Module):
    r"""Plain convolutional network: ``Conv2d`` + activation (+ 2x2 pooling) blocks and a linear head.

    .. math::
        h_l = \mathrm{pool}(\sigma(\mathrm{conv}_l(h_{l-1}))), \quad
        y = W \, \mathrm{flatten}(h_L) + b \ \text{ or } \ y = W \, \mathrm{mean}_{hw}(h_L) + b

    Convolutions use ``padding = kernel_size // 2``. With ``pool`` set, a 2x2 pooling (stride 2)
    follows each convolution while the feature map is at least 2x2.

    Args:
        in_channels (int, optional): input channels (default: ``1``).
        channels (sequence of int, optional): output channels of each convolution
            (default: ``(16, 32, 32)``).
        num_classes (int, optional): outputs of the head (default: ``10``).
        image_size (int, optional): input height and width (default: ``28``).
        kernel_size (int, optional): convolution kernel size (default: ``3``).
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
        if pool is not None and pool not in _POOLS:
            raise ValueError(f"CNN: unknown pool {pool!r}; choose one of: avg, max, or None")
        self.pool_kind = pool
        self.flatten = bool(flatten)
        self.activation = activation
        self.input_shape: tuple[int, ...] = (self.in_channels, self.image_size, self.image_size)

        size = self.image_size
        pooled: list[bool] = []
        for _ in self.channels:
            size = size + 2 * (self.kernel_size // 2) - self.kernel_size + 1
            if size < 1:
                raise ValueError(f"CNN: image_size={image_size} is too small for kernel_size={kernel_size}")
            pooled.append(pool is not None and size >= 2)
            if pooled[-1]:
                size //= 2
        self._pool_after = tuple(pooled)
        self.feature_size = size  # height = width of the last feature map

        sizes = (self.in_channels, *self.channels)
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, self.kernel_size, padding=self.kernel_size // 2) for a, b in zip(sizes[:-1], sizes[1:])
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
        for conv, pooled in zip(self.convs, self._pool_after):
            x = self.act(conv(x))
            if pooled:
                x = self.pool(x)
        if self.gap is not None:
            x = self.gap(x)
        return self.head(x.flatten(1))
