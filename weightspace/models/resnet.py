"""ResNet-18/34/50/101 in torchvision's layout and state-dict key names (our own implementation)."""

from __future__ import annotations

from torch import Tensor, nn

from weightspace.models._common import ExampleInputMixin, init_conv_bn_, positive_int
from weightspace.models._registry import register_model

# depth -> (block kind, blocks per stage)
_CONFIGS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}


def _downsample(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    """1x1 convolution + BatchNorm projection where the shortcut changes shape, else ``None``."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class BasicBlock(nn.Module):
    r"""Two 3x3 convolutions with BatchNorm and a residual add (ResNet-18/34).

    .. math::
        y = \mathrm{ReLU}(\mathrm{BN}_2(\mathrm{conv}_2(\mathrm{ReLU}(\mathrm{BN}_1(\mathrm{conv}_1(x)))))
        + d(x))

    where :math:`d` is the identity, or ``downsample`` (1x1 convolution + BatchNorm) when the
    stride or the channel count changes.

    Args:
        in_channels (int): input channels.
        planes (int): channels of both convolutions; the block outputs ``planes`` channels.
        stride (int, optional): stride of the first convolution (default: ``1``).

    Shapes:
        - input: ``(B, in_channels, H, W)``
        - output: ``(B, planes, ceil(H / stride), ceil(W / stride))``
    """

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.planes = planes
        self.stride = stride
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(in_channels, planes, stride)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    r"""1x1 reduce, 3x3, 1x1 expand (x4), each with BatchNorm, and a residual add (ResNet-50/101).

    The stride sits on the 3x3 convolution ("ResNet v1.5", as torchvision does).

    .. math::
        y = \mathrm{ReLU}(\mathrm{BN}_3(\mathrm{conv}_3(\mathrm{ReLU}(\mathrm{BN}_2(\mathrm{conv}_2(
        \mathrm{ReLU}(\mathrm{BN}_1(\mathrm{conv}_1(x)))))))) + d(x))

    Args:
        in_channels (int): input channels.
        planes (int): channels of the two inner convolutions; the block outputs ``4 * planes``.
        stride (int, optional): stride of the 3x3 convolution (default: ``1``).

    Shapes:
        - input: ``(B, in_channels, H, W)``
        - output: ``(B, 4 * planes, ceil(H / stride), ceil(W / stride))``
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.planes = planes
        self.stride = stride
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample = _downsample(in_channels, out_channels, stride)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


@register_model("resnet", pretty_name="ResNet-18/34/50/101", reference_url="https://arxiv.org/abs/1512.03385")
class ResNet(ExampleInputMixin, nn.Module):
    r"""ResNet from `"Deep Residual Learning for Image Recognition" <https://arxiv.org/abs/1512.03385>`_
    with torchvision's module layout, so torchvision ResNet checkpoints load by name.

    A stem (7x7 stride-2 convolution, BatchNorm, ReLU, 3x3 stride-2 max pool; or, with
    ``small_input``, a 3x3 stride-1 convolution and no pool), four stages of residual blocks
    (:class:`BasicBlock` for depths 18/34, :class:`Bottleneck` for 50/101; strides 1, 2, 2, 2;
    ``width * (1, 2, 4, 8)`` inner channels), global average pooling and a linear head.

    .. math::
        y = W \, \mathrm{mean}_{hw}(\mathrm{layer}_4(\cdots\mathrm{layer}_1(\mathrm{stem}(x)))) + b

    Args:
        depth (int, optional): ``18``, ``34``, ``50`` or ``101`` (default: ``50``).
        width (int, optional): channels of the stem and of the first stage's inner convolutions;
            ``64`` is torchvision's network, smaller values give a proportionally thinner copy
            (default: ``64``).
        num_classes (int, optional): outputs (default: ``1000``).
        in_channels (int, optional): input channels (default: ``3``).
        small_input (bool, optional): CIFAR-style stem for 32x32 inputs: a 3x3 stride-1
            ``conv1`` and no max pool; the state dict keys are unchanged, only ``conv1.weight``
            is ``3x3`` (default: ``False``).
        image_size (int, optional): input height and width for :meth:`example_input` only; the
            network accepts any size (default: ``32`` with ``small_input``, else ``64``).

    Shapes:
        - input: ``(B, in_channels, H, W)``
        - output: ``(B, num_classes)``

    State dict (torchvision's names): ``conv1.weight``, ``bn1.*``;
    ``layer{s}.{b}.conv{i}.weight`` and ``layer{s}.{b}.bn{i}.*`` for ``s = 1..4`` and ``i = 1, 2``
    (basic) or ``1, 2, 3`` (bottleneck); ``layer{s}.0.downsample.0.weight`` and
    ``layer{s}.0.downsample.1.*`` where a stage changes the shape; ``fc.weight``
    ``(num_classes, 8 * width * expansion)``, ``fc.bias``. BatchNorm ``*`` is ``weight, bias,
    running_mean, running_var, num_batches_tracked``; convolutions have no bias. At the defaults
    (depth 50, width 64, 1000 classes) the network has 25,557,032 parameters, as torchvision's
    ``resnet50``.

    Raises:
        ValueError: unsupported depth, or a size that is not a positive int.

    Example:
        >>> model = ResNet(depth=18, width=8, num_classes=10, small_input=True)
        >>> model(model.example_input()).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        depth: int = 50,
        width: int = 64,
        num_classes: int = 1000,
        in_channels: int = 3,
        small_input: bool = False,
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(depth, bool) or depth not in _CONFIGS:
            raise ValueError(
                f"ResNet: unsupported depth {depth!r}; choose one of: {', '.join(map(str, _CONFIGS))}"
            )
        if not isinstance(small_input, bool):
            raise ValueError(f"ResNet: small_input must be true or false, got {small_input!r}")
        self.depth = depth
        self.width = positive_int(width, owner="ResNet", name="width")
        self.num_classes = positive_int(num_classes, owner="ResNet", name="num_classes")
        self.in_channels = positive_int(in_channels, owner="ResNet", name="in_channels")
        self.small_input = small_input
        if image_size is None:
            image_size = 32 if small_input else 64
        self.image_size = positive_int(image_size, owner="ResNet", name="image_size")
        self.input_shape: tuple[int, ...] = (self.in_channels, self.image_size, self.image_size)

        kind, blocks = _CONFIGS[depth]
        block: type[BasicBlock] | type[Bottleneck] = BasicBlock if kind == "basic" else Bottleneck
        if small_input:
            self.conv1 = nn.Conv2d(self.in_channels, self.width, 3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(self.in_channels, self.width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.width)
        self.relu = nn.ReLU()
        self.maxpool: nn.Module = nn.Identity() if small_input else nn.MaxPool2d(3, stride=2, padding=1)

        channels = self.width
        stages: list[nn.Sequential] = []
        for s, (n_blocks, stride) in enumerate(zip(blocks, (1, 2, 2, 2))):
            planes = self.width * 2**s
            layer = []
            for b in range(n_blocks):
                layer.append(block(channels, planes, stride if b == 0 else 1))
                channels = planes * block.expansion
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, self.num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan-out) convolutions, unit BatchNorm, default ``Linear`` initialisation."""
        init_conv_bn_(self)
        self.fc.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))

    def extra_repr(self) -> str:
        return f"depth={self.depth}, width={self.width}, num_classes={self.num_classes}"
