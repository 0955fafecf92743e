"""VGG-style network with batch normalisation."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from weightspace.models._common import ExampleInputMixin, int_tuple, positive_int, scale_width
from weightspace.models._registry import register_model

DEFAULT_CONFIG: tuple[int | str, ...] = (32, "M", 64, "M", 128, 128, "M")


@register_model(
    "vgg", pretty_name="VGG with BatchNorm", reference_url="https://arxiv.org/abs/1409.1556"
)
class VGG(ExampleInputMixin, nn.Module):
    r"""VGG-style network from `"Very Deep Convolutional Networks for Large-Scale Image Recognition"
    <https://arxiv.org/abs/1409.1556>`_, with ``BatchNorm2d`` after each convolution.

    .. math::
        h \leftarrow \mathrm{ReLU}(\mathrm{BN}(\mathrm{conv}_{3\times 3}(h))) \ \text{per int in config},
        \quad h \leftarrow \mathrm{maxpool}_{2\times 2}(h) \ \text{per ``"M"``},
        \quad y = \mathrm{MLP}(\mathrm{flatten}(h))

    Args:
        in_channels (int, optional): input channels (default: ``3``).
        num_classes (int, optional): outputs (default: ``10``).
        image_size (int, optional): input height and width (default: ``32``; ``28`` works too).
        width (float, optional): multiplier of every conv and hidden width (default: ``1.0``).
        config (sequence of int or "M", optional): conv widths and ``"M"`` max-pools
            (default: ``(32, "M", 64, "M", 128, 128, "M")``).
        classifier (sequence of int, optional): hidden widths of the classifier MLP (default: ``(256,)``).

    Shapes:
        - input: ``(B, in_channels, image_size, image_size)``
        - output: ``(B, num_classes)``

    State dict: ``convs.{l}.weight`` ``(C_out, C_in, 3, 3)`` (no conv bias),
    ``bns.{l}.{weight,bias,running_mean,running_var,num_batches_tracked}``,
    ``classifier.{j}.weight`` / ``classifier.{j}.bias``; the first classifier layer reads the
    flattened ``(C, H, W)`` feature map.

    Example:
        >>> model = VGG(width=0.5)
        >>> model(model.example_input()).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        image_size: int = 32,
        width: float = 1.0,
        config: Sequence[int | str] = DEFAULT_CONFIG,
        classifier: Sequence[int] = (256,),
    ) -> None:
        super().__init__()
        self.in_channels = positive_int(in_channels, owner="VGG", name="in_channels")
        self.num_classes = positive_int(num_classes, owner="VGG", name="num_classes")
        self.image_size = positive_int(image_size, owner="VGG", name="image_size")
        if isinstance(width, bool) or not isinstance(width, (int, float)) or width <= 0:
            raise ValueError(f"VGG: width must be a positive number, got {width!r}")
        self.width = width
        if isinstance(config, (str, bytes)) or any(
            not (c == "M" or (isinstance(c, int) and not isinstance(c, bool) and c > 0)) for c in config
        ):
            raise ValueError(f'VGG: config must hold positive ints and "M", got {config!r}')
        self.config = tuple(config)
        if not any(c != "M" for c in self.config):
            raise ValueError(f"VGG: config needs at least one convolution, got {config!r}")
        self.classifier_widths = int_tuple(classifier, owner="VGG", name="classifier")
        self.input_shape: tuple[int, ...] = (self.in_channels, self.image_size, self.image_size)

        convs: list[nn.Conv2d] = []
        bns: list[nn.BatchNorm2d] = []
        pool_after: list[bool] = []
        channels, size = self.in_channels, self.image_size
        for c in self.config:
            if c == "M":
                if not convs:
                    raise ValueError(f'VGG: config must start with a convolution, got {config!r}')
                if size < 2:
                    raise ValueError(f"VGG: image_size={image_size} is too small for {config!r}")
                pool_after[-1] = True
                size //= 2
                continue
            out = scale_width(int(c), width)
            convs.append(nn.Conv2d(channels, out, 3, padding=1, bias=False))
            bns.append(nn.BatchNorm2d(out))
            pool_after.append(False)
            channels = out
        self._pool_after = tuple(pool_after)
        self.feature_shape = (channels, size, size)

        self.convs = nn.ModuleList(convs)
        self.bns = nn.ModuleList(bns)
        self.pool = nn.MaxPool2d(2)
        self.act = nn.ReLU()
        sizes = (channels * size * size, *(scale_width(h, width) for h in self.classifier_widths), self.num_classes)
        self.classifier = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal convolutions, unit BatchNorm, default ``Linear`` initialisation."""
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        for bn in self.bns:
            bn.reset_parameters()
        for layer in self.classifier:
            layer.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        for conv, bn, pooled in zip(self.convs, self.bns, self._pool_after):
            x = self.act(bn(conv(x)))
            if pooled:
                x = self.pool(x)
        x = x.flatten(1)
        for layer in self.classifier[:-1]:
            x = self.act(layer(x))
        return self.classifier[-1](x)
