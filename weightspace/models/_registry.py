"""The model registry behind ``--model``: built-in families by name, or ``package.module:callable``."""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import Tensor, nn

from graphs.registry import Registry
from weightspace.models._common import device_and_dtype, random_input
from weightspace.trust import check_model_name

F = TypeVar("F", bound=Callable[..., nn.Module])

_INPUT_SHAPE_HINT = "pass --input-shape (the shape of one example without the batch axis, e.g. 784 or 3,32,32)"


@dataclass(frozen=True)
class ModelEntry:
    """One registered model family.

    Args:
        name (str): the name used by ``--model`` and :func:`get_model`.
        factory (callable): builds the ``nn.Module`` from keyword arguments.
        pretty_name (str): a human-readable name.
        reference_url (str, optional): the paper or page the family follows.
    """

    name: str
    factory: Callable[..., nn.Module]
    pretty_name: str
    reference_url: str | None = None


#: the registered model families (listed sorted: users add their own)
MODELS: Registry[ModelEntry] = Registry("model", allow_colon=False, sort=True)


def register_model(
    name: str, *, pretty_name: str | None = None, reference_url: str | None = None
) -> Callable[[F], F]:
    """Decorator registering a model class or factory under ``name``.

    Args:
        name (str): registry name: non-empty, no whitespace and no ``:``.
        pretty_name (str, optional): human-readable name (default: ``name``).
        reference_url (str, optional): paper or page the family follows (default: ``None``).

    Returns:
        The decorator; it returns the class or function unchanged.

    Raises:
        ValueError: if ``name`` is malformed or already registered, or the target is not callable.

    Example:
        >>> @register_model("my-mlp")  # doctest: +SKIP
        ... def my_mlp(width: int = 32) -> nn.Module: ...
    """
    register = MODELS.register(name, description=pretty_name or name, caller="register_model")

    def decorator(factory: F) -> F:
        if not callable(factory):
            raise ValueError(f"register_model: {name!r} must decorate a class or function, got {factory!r}")
        if name in MODELS:
            raise ValueError(
                f"register_model: model name {name!r} is already registered "
                f"(by {_qualname(MODELS.get(name).factory)}); choose another name"
            )
        register(ModelEntry(name, factory, pretty_name or name, reference_url))
        return factory

    return decorator


def list_models() -> list[str]:
    """Sorted names of the registered model families."""
    return MODELS.names()


def get_model(spec: str, **kwargs: Any) -> nn.Module:
    """Build a model from a registered name or a ``package.module:callable`` spec.

    Args:
        spec (str): a name from :func:`list_models` (``"mlp"``) or ``"package.module:callable"``;
            the callable is imported and called with ``kwargs``.
        **kwargs: keyword arguments of the family or callable.

    Returns:
        The ``nn.Module``.

    Raises:
        ValueError: unknown name (the message lists every registered name), import failure,
            arguments the family does not accept, or a callable that does not return an ``nn.Module``.

    Example:
        >>> get_model("mlp", in_features=64, hidden=[32], out_features=10)  # doctest: +SKIP
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"get_model: expected a model name or 'package.module:callable', got {spec!r}")
    spec = spec.strip()
    if spec in MODELS:
        factory: Callable[..., Any] = MODELS.get(spec).factory
        label = f"model {spec!r}"
    elif ":" in spec:
        factory = import_callable(spec, caller="get_model")
        label = spec
    else:
        raise ValueError(
            f"get_model: unknown model {spec!r}; choose one of: {', '.join(list_models())}; "
            "or give package.module:callable"
        )
    _check_arguments(factory, kwargs, caller="get_model", label=label)
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise ValueError(f"get_model: {label} returned {type(model).__name__}, expected a torch.nn.Module")
    return model


def import_callable(spec: str, *, caller: str) -> Callable[..., Any]:
    """Import ``package.module:attr[.attr]`` and return the callable it names."""
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise ValueError(f"{caller}: {spec!r} is not of the form package.module:callable")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        hint = ""
        if isinstance(exc, ModuleNotFoundError) and exc.name and module_name.startswith(exc.name):
            hint = ("; is its directory on PYTHONPATH (e.g. PYTHONPATH=. when the file is in the current "
                    "directory) or the package installed?")
        raise ValueError(f"{caller}: cannot import module {module_name!r} from {spec!r}: {exc}{hint}") from None
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{caller}: module {module_name!r} has no attribute {attr_path!r}") from None
    if not callable(obj):
        raise ValueError(f"{caller}: {spec!r} is a {type(obj).__name__}, not a callable")
    return obj


def _check_arguments(factory: Callable[..., Any], kwargs: Mapping[str, Any], *, caller: str, label: str) -> None:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        accepted = [
            p.name
            for p in signature.parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        raise ValueError(
            f"{caller}: bad arguments for {label}: {exc}; accepted: {', '.join(accepted) or '(none)'}"
        ) from None


def accepts_keyword(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` can be called with the keyword argument ``name``."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        (p.name == name and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)) or p.kind == p.VAR_KEYWORD
        for p in parameters
    )


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _to_json_value(value: Any, key: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_to_json_value(v, key) for v in value]
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise ValueError(f"model_spec_to_json: keys of {key!r} must be strings")
        return {k: _to_json_value(v, f"{key}.{k}") for k, v in value.items()}
    raise ValueError(
        f"model_spec_to_json: argument {key!r} is a {type(value).__name__}, which JSON cannot hold; "
        "use numbers, strings, booleans, None, lists or dicts"
    )


def model_spec_to_json(name: str, kwargs: Mapping[str, Any] | None = None) -> str:
    """Serialise a model spec as ``{"name": ..., "kwargs": {...}}`` (tuples become lists).

    Args:
        name (str): registered name or ``package.module:callable``.
        kwargs (dict, optional): the keyword arguments (default: none).

    Returns:
        A compact JSON string with sorted keys, for checkpoint metadata (``weightspace.model``).

    Raises:
        ValueError: if ``name`` is not a string or a value cannot be written as JSON.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"model_spec_to_json: name must be a non-empty string, got {name!r}")
    kwargs = dict(kwargs or {})
    payload = {"name": name, "kwargs": {k: _to_json_value(v, k) for k, v in kwargs.items()}}
    try:
        return json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except ValueError as exc:  # NaN / inf
        raise ValueError(f"model_spec_to_json: {exc}") from None


def model_spec_from_json(s: str | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Parse what :func:`model_spec_to_json` wrote into ``(name, kwargs)``.

    Raises:
        ValueError: invalid JSON, or not an object with a string ``name`` and an object ``kwargs``.
    """
    if isinstance(s, Mapping):
        payload: Any = s
    else:
        try:
            payload = json.loads(s)
        except (TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"model_from_json: not valid JSON ({exc}): {str(s)[:80]!r}") from None
    if not isinstance(payload, Mapping) or not isinstance(payload.get("name"), str):
        raise ValueError(f'model_from_json: expected {{"name": str, "kwargs": {{...}}}}, got {str(s)[:80]!r}')
    kwargs = payload.get("kwargs", {})
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"model_from_json: 'kwargs' must be a JSON object, got {kwargs!r}")
    return payload["name"], dict(kwargs)


def model_from_json(s: str | Mapping[str, Any], *, source: str = "a file", trusted: bool = False) -> nn.Module:
    """Build the model that a :func:`model_spec_to_json` string read from ``source`` describes.

    The spec is data: a registered family is built; a ``package.module:callable`` is imported
    only when ``trusted`` or inside :func:`weightspace.trust.trusting_model_code`.

    Raises:
        UntrustedCodeError: the spec names code that is not allowed to run.
        ValueError: as :func:`get_model`.
    """
    name, kwargs = model_spec_from_json(s)
    check_model_name(name, source=source, trusted=trusted)
    return get_model(name, **kwargs)


def parse_input_shape(s: str | int | Sequence[int]) -> tuple[int, ...]:
    """Parse ``--input-shape``: ``"784"`` -> ``(784,)``, ``"3,32,32"`` -> ``(3, 32, 32)``.

    Spaces and surrounding parentheses are allowed; sequences of ints pass through.

    Raises:
        ValueError: empty input, non-integers, or sizes that are not positive.
    """
    hint = "expected comma-separated positive integers such as '784' or '3,32,32'"
    if isinstance(s, bool):
        raise ValueError(f"parse_input_shape: {hint}, got {s!r}")
    if isinstance(s, int):
        parts: list[Any] = [s]
    elif isinstance(s, str):
        text = s.strip().strip("()[]").strip()
        pieces = [p.strip() for p in text.split(",")]
        if len(pieces) > 1 and pieces[-1] == "":  # trailing comma, as in "784,"
            pieces = pieces[:-1]
        try:
            parts = [int(p) for p in pieces]
        except ValueError:
            raise ValueError(f"parse_input_shape: {hint}, got {s!r}") from None
    elif isinstance(s, Sequence):
        parts = list(s)
    else:
        raise ValueError(f"parse_input_shape: {hint}, got {s!r}")
    if not parts or any(isinstance(p, bool) or not isinstance(p, int) or p <= 0 for p in parts):
        raise ValueError(f"parse_input_shape: {hint}, got {s!r}")
    return tuple(parts)


def example_input_for(
    model: nn.Module,
    input_shape: str | Sequence[int] | None = None,
    batch_size: int = 2,
    *,
    seed: int = 0,
) -> Tensor:
    """An example batch for tracing ``model``.

    An explicit ``input_shape`` wins (a seeded standard-normal batch of that shape); otherwise the
    model's own ``example_input(batch_size)`` is used, otherwise its ``input_shape`` attribute.

    Args:
        model (nn.Module): the model.
        input_shape (str or sequence of int, optional): shape of one example without the batch axis,
            e.g. ``"3,32,32"`` (default: ``None``).
        batch_size (int, optional): batch size (default: ``2``).
        seed (int, optional): seed of the random batch (default: ``0``).

    Shapes:
        - output: ``(B, *input_shape)`` on the model's device and dtype.

    Raises:
        ValueError: if no shape is known; the message says to pass ``--input-shape``.
    """
    device, dtype = device_and_dtype(model)
    if input_shape is not None:
        shape = parse_input_shape(input_shape)
        return random_input(shape, batch_size, seed=seed, device=device, dtype=dtype)
    example = getattr(model, "example_input", None)
    if callable(example):
        if accepts_keyword(example, "seed"):
            return example(batch_size, seed=seed)
        return example(batch_size)  # a user's example_input(batch_size) without a seed
    declared = getattr(model, "input_shape", None)
    if declared is not None:
        shape = parse_input_shape(declared)
        return random_input(shape, batch_size, seed=seed, device=device, dtype=dtype)
    raise ValueError(
        f"example_input_for: {type(model).__name__} declares no input shape "
        f"(no example_input method or input_shape attribute); {_INPUT_SHAPE_HINT}"
    )
