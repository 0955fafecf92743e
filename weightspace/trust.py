"""Files are data, never code: which callables named inside a file may be imported and called.

A checkpoint's metadata, a zoo card, a recipe, a hypernetwork or metanetwork file can name a
model (``{"name": "mlp", ...}``) or a dataset (``"digits"``). Names from our registries are
data: they select code that ships with weightspace. A ``package.module:callable`` written in a
file is code, and it runs only when the user names it again (``--model``, ``--data``) or allows
code named in files (``--trust-model-code``; in Python ``trust_model_code=True`` or the
:func:`trusting_model_code` context).

A Hugging Face ``config.json`` names its model class (``architectures``); that name is data and
resolves only among transformers' own classes. A config with ``auto_map`` asks for model code
from the Hub or the directory (``trust_remote_code``): it is used only with
``--trust-remote-code`` (``trust_remote_code=True``, :func:`trusting_remote_code`).
"""
from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

__all__ = ["UntrustedCodeError", "trusting_model_code", "model_code_trusted", "takes_trust_flag",
           "check_model_name", "check_data_spec", "TRUST_FLAG", "REMOTE_CODE_FLAG", "trusting_remote_code",
           "remote_code_trusted"]

TRUST_FLAG = "--trust-model-code"
REMOTE_CODE_FLAG = "--trust-remote-code"

F = TypeVar("F", bound=Callable[..., Any])

_TRUSTED: ContextVar[bool] = ContextVar("weightspace_trust_model_code", default=False)
_REMOTE: ContextVar[bool] = ContextVar("weightspace_trust_remote_code", default=False)


class UntrustedCodeError(ValueError):
    """A file names code (``package.module:callable``) that the user has not allowed to run."""


@contextmanager
def trusting_model_code(allow: bool = True) -> Iterator[None]:
    """Within the block, callables named in files may be imported and called (when ``allow``).

    Nesting never takes trust away: ``trusting_model_code(False)`` inside a trusting block
    keeps trusting.
    """
    token = _TRUSTED.set(_TRUSTED.get() or bool(allow))
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def model_code_trusted() -> bool:
    """Whether code named in files may run here (see :func:`trusting_model_code`)."""
    return _TRUSTED.get()


@contextmanager
def trusting_remote_code(allow: bool = True) -> Iterator[None]:
    """Within the block, a Hugging Face config with ``auto_map`` may load its model code
    (transformers' ``trust_remote_code=True``), when ``allow``. Nesting never takes trust away."""
    token = _REMOTE.set(_REMOTE.get() or bool(allow))
    try:
        yield
    finally:
        _REMOTE.reset(token)


def remote_code_trusted() -> bool:
    """Whether Hugging Face remote code (``auto_map``) may run here (see :func:`trusting_remote_code`)."""
    return _REMOTE.get()


def takes_trust_flag(fn: F) -> F:
    """Give an entry point the keyword-only arguments ``trust_model_code=False`` and
    ``trust_remote_code=False``: when true, the call runs inside :func:`trusting_model_code` /
    :func:`trusting_remote_code`."""
    @functools.wraps(fn)
    def wrapper(*args: Any, trust_model_code: bool = False, trust_remote_code: bool = False, **kwargs: Any) -> Any:
        with trusting_model_code(trust_model_code), trusting_remote_code(trust_remote_code):
            return fn(*args, **kwargs)

    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    flags = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=False, annotation="bool")
             for n in ("trust_model_code", "trust_remote_code")]
    at = next((i for i, p in enumerate(params) if p.kind is p.VAR_KEYWORD), len(params))
    wrapper.__signature__ = sig.replace(parameters=params[:at] + flags + params[at:])  # type: ignore[attr-defined]
    doc = fn.__doc__ or ""
    wrapper.__doc__ = doc + ("\n" if doc else "") + (
        "\n    ``trust_model_code=True`` allows ``package.module:callable`` names read from input files "
        "to be imported and called; ``trust_remote_code=True`` allows a Hugging Face config with "
        "``auto_map`` to load its model code (see :mod:`weightspace.trust`).\n")
    return wrapper  # type: ignore[return-value]


def _refuse(kind: str, name: str, source: str, again: str) -> UntrustedCodeError:
    return UntrustedCodeError(
        f"{source} names the {kind} code {name!r}, which weightspace does not import from a file; "
        f"to run it, pass {again} {name} yourself, or {TRUST_FLAG} (trust_model_code=True in Python)")


def check_model_name(name: str, *, source: str, trusted: bool = False) -> None:
    """Refuse a model name read from ``source`` that would import code.

    Registered family names are data and pass. A name with ``:`` (``package.module:callable``)
    passes only when ``trusted`` or inside :func:`trusting_model_code`. Other names pass here
    and fail later as unknown families (no code runs for them).

    Raises:
        UntrustedCodeError: the name is code and code from files is not allowed.
    """
    from .models import list_models

    if not isinstance(name, str) or name in list_models() or ":" not in name:
        return
    if trusted or model_code_trusted():
        return
    raise _refuse("model", name, source, "--model")


def check_data_spec(spec: str, *, source: str, trusted: bool = False) -> None:
    """Refuse a dataset spec read from ``source`` that would import code.

    Built-in datasets (``digits``, ``mnist-idx:DIR``, ...) pass; ``package.module:callable``
    passes only when trusted, as for :func:`check_model_name`.

    Raises:
        UntrustedCodeError: the spec is code and code from files is not allowed.
    """
    from .data import is_builtin_data_spec

    if not isinstance(spec, str) or is_builtin_data_spec(spec) or ":" not in spec:
        return
    if trusted or model_code_trusted():
        return
    raise _refuse("data", spec, source, "--data")
