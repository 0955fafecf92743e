"""CIFAR-style ResNet-20."""

from __future__ import annotations

from torch import Tensor, nn

from weightspace.models._common import ExampleInputMixin, init_conv_bn_, positive_int, scale_width
from weightspace.models._registry import register_model


class BasicBlock(nn.Module):
    r"""Two 3x3 convolutions with BatchNorm and a residual add.

    .. math::
        y = \mathrm{ReLU}(\mathrm{BN}_2(\mathrm{conv}_2(\mathrm{ReLU}(\mathrm{BN}_1(\mathrm{conv}_1(x)))))
        + s(x))

    where :math:`s` is the identity, or a 1x1 convolution + BatchNorm (``shortcut``) when the stride
    or the channel count changes.

    Args:
        in_channels (int): input channels.
        out_channels (int): output channels.
        stride (int, optional): stride of the first convolution (default: ``1``).

    Shapes:
        - input: ``(B, in_channels, H, W)``
        - output: ``(B, out_channels, ceil(H / stride), ceil(W / stride))``
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Sequential | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + identity)


@register_model(
    "resnet20", pretty_name="ResNet-20 (CIFAR)", reference_url="https://arxiv.org/abs/1512.03385"
)
class ResNet20(ExampleInputMixin, nn.Module):
    r"""CIFAR ResNet-20 from `"Deep Residual Learning for Image Recognition"
    <https://arxiv.org/abs/1512.03385>`_: a 3x3 stem, three stages of three :class:`BasicBlock`
    (strides 1, 2, 2; ``16, 32, 64`` channels times ``width``), global average pooling and a
    linear head. Shortcuts are 1x1 convolution + BatchNorm where the shape changes.

    .. math::
        y = W \, \mathrm{mean}_{hw}(\mathrm{stage}_3(\mathrm{stage}_2(\mathrm{stage}_1(
        \mathrm{ReLU}(\mathrm{BN}(\mathrm{conv}(x))))))) + b

    Args:
        width (float, optional): channel multiplier; ``1`` gives 16/32/64 channels (default: ``1``).
        num_classes (int, optional): outputs (default: ``10``).
        in_channels (int, optional): input channels (default: ``3``).
        image_size (int, optional): input height and width, used for :meth:`example_input` only;
            the network accepts any size (default: ``32``).

    Shapes:
        - input: ``(B, in_channels, H, W)``
        - output: ``(B, num_classes)``

    State dict: ``conv1.weight``, ``bn1.*``; ``layer{s}.{b}.conv1.weight``, ``layer{s}.{b}.bn1.*``,
    ``layer{s}.{b}.conv2.weight``, ``layer{s}.{b}.bn2.*`` for ``s = 1..3``, ``b = 0..2``;
    ``layer2.0.shortcut.0.weight`` ``(32 w, 16 w, 1, 1)`` and ``layer2.0.shortcut.1.*``, likewise
    ``layer3.0.shortcut.*``; ``head.weight`` ``(num_classes, 64 * width)``, ``head.bias``.
    BatchNorm ``*`` is ``weight, bias, running_mean, running_var, num_batches_tracked``;
    convolutions have no bias.

    Example:
        >>> model = ResNet20(width=2)
        >>> model(model.example_input()).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        width: float = 1,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, (int, float)) or width <= 0:
            raise ValueError(f"ResNet20: width must be a positive number, got {width!r}")
        self.width = width
        self.num_classes = positive_int(num_classes, owner="ResNet20", name="num_classes")
        self.in_channels = positive_int(in_channels, owner="ResNet20", name="in_channels")
        self.image_size = positive_int(image_size, owner="ResNet20", name="image_size")
        self.input_shape: tuple[int, ...] = (self.in_channels, self.image_size, self.image_size)
        widths = [scale_width(c, width) for c in (16, 32, 64)]

        self.conv1 = nn.Conv2d(self.in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act = nn.ReLU()
        channels = widths[0]
        stages: list[nn.Sequential] = []
        for stage_width, stride in zip(widths, (1, 2, 2)):
            blocks = []
            for b in range(3):
                blocks.append(BasicBlock(channels, stage_width, stride if b == 0 else 1))
                channels = stage_width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, self.num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal convolutions, unit BatchNorm, default ``Linear`` initialisation."""
        init_conv_bn_(self)
        self.head.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.head(self.gap(x).flatten(1))
