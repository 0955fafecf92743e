"""Private helpers shared by the built-in model families."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "identity": nn.Identity,
    "leaky_relu": nn.LeakyReLU,
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
}


def make_activation(name: str, *, owner: str) -> nn.Module:
    """Build the elementwise activation module called ``name``."""
    try:
        return _ACTIVATIONS[name]()
    except (KeyError, TypeError):
        raise ValueError(
            f"{owner}: unknown activation {name!r}; choose one of: {', '.join(sorted(_ACTIVATIONS))}"
        ) from None


def scale_width(channels: int, width: float) -> int:
    """``channels * width`` rounded, at least 1."""
    return max(1, int(round(channels * width)))


def int_tuple(values: Sequence[int] | int, *, owner: str, name: str) -> tuple[int, ...]:
    """Validate a sequence of positive ints (lists from JSON included) into a tuple."""
    if isinstance(values, int) and not isinstance(values, bool):
        values = (values,)
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"{owner}: {name} must be a sequence of positive ints, got {values!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{owner}: {name} must be a sequence of positive ints, got {values!r}")
    return tuple(values)


def positive_int(value: int, *, owner: str, name: str) -> int:
    """Validate one positive int."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")
    return value


def init_conv_bn_(model: nn.Module) -> None:
    """Kaiming-normal (fan-out, ReLU) weights for every ``Conv2d`` of ``model``, and every
    ``BatchNorm2d`` reset (unit weight, zero bias, fresh running statistics)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            module.reset_parameters()


def device_and_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of a module's first parameter (CPU / default dtype if none)."""
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def random_input(
    shape: Sequence[int],
    batch_size: int,
    *,
    seed: int,
    device: torch.device,
    dtype: torch.dtype,
    low: float | None = None,
    high: float | None = None,
) -> Tensor:
    """Seeded random batch of shape ``(batch_size, *shape)``: standard normal, or uniform in [low, high)."""
    positive_int(batch_size, owner="example_input", name="batch_size")
    generator = torch.Generator().manual_seed(seed)
    size = (batch_size, *shape)
    if low is None or high is None:
        x = torch.randn(size, generator=generator)
    else:
        x = torch.rand(size, generator=generator) * (high - low) + low
    return x.to(device=device, dtype=dtype)


class ExampleInputMixin:
    """Gives a model ``example_input(batch_size, seed=...)`` from its ``input_shape`` attribute."""

    input_shape: tuple[int, ...]

    def example_input(self, batch_size: int = 2, *, seed: int = 0) -> Tensor:
        """A deterministic random batch of shape ``(batch_size, *self.input_shape)``.

        Args:
            batch_size (int, optional): number of examples (default: ``2``).
            seed (int, optional): seed of the generator (default: ``0``).

        Shapes:
            - output: ``(B, *input_shape)``, on the model's device and dtype.
        """
        device, dtype = device_and_dtype(self)  # type: ignore[arg-type]
        return random_input(self.input_shape, batch_size, seed=seed, device=device, dtype=dtype)
