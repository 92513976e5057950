"""The registry of model builders: ``@register_model()``, ``get_model(name)``, ``list_models()``.

A builder is a keyword-only function ``(*, weights=None, progress=True, **kwargs)`` that
returns a ready model (torchvision style); its name is the registry key, e.g.
``resolution_resnet50``. ``xrais train --model NAME`` and ``xrais models list`` read it.

Examples
--------
>>> from xrais.models import list_models
>>> "resolution_resnet50" in list_models()
True
>>> list_models("multilattice_resnet3*")
['multilattice_resnet34']
"""

from __future__ import annotations

import fnmatch
import importlib
from typing import Any, Callable, TypeVar

from xrais.errors import ConfigError

__all__ = ["BUILTIN_MODELS", "register_model", "get_model", "get_model_builder", "list_models"]

F = TypeVar("F", bound=Callable[..., Any])

#: Registered builders by name.
BUILTIN_MODELS: dict[str, Callable[..., Any]] = {}


def register_model(name: str | None = None) -> Callable[[F], F]:
    """Decorator that adds a builder to :data:`BUILTIN_MODELS` under ``name`` (default: its own name).

    Raises
    ------
    ConfigError
        Another builder of that name is already registered.
    """

    def wrapper(fn: F) -> F:
        key = name or fn.__name__
        old = BUILTIN_MODELS.get(key)
        if old is not None and not _same_definition(old, fn):
            raise ConfigError(f"model builder {key!r}: a builder of that name is already registered")
        BUILTIN_MODELS[key] = fn
        return fn

    return wrapper


def _same_definition(a: Any, b: Any) -> bool:
    """True for one function defined once but imported twice (e.g. by doctest collection)."""
    code_a, code_b = getattr(a, "__code__", None), getattr(b, "__code__", None)
    return (code_a is not None and code_b is not None and a.__qualname__ == b.__qualname__
            and code_a.co_filename == code_b.co_filename and code_a.co_firstlineno == code_b.co_firstlineno)


def _ensure_builtins() -> None:
    importlib.import_module("xrais.models.resnet")  # its import registers the ResNet builders


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered builders, optionally filtered by a shell-style pattern.

    Parameters
    ----------
    pattern : str, optional
        e.g. ``"resolution_*"``.

    Returns
    -------
    list of str
    """
    _ensure_builtins()
    names = sorted(BUILTIN_MODELS)
    return [n for n in names if pattern is None or fnmatch.fnmatchcase(n, pattern)]


def get_model_builder(name: str) -> Callable[..., Any]:
    """The builder registered as ``name``.

    Raises
    ------
    ConfigError
        No builder of that name (the message lists the registered ones).
    """
    _ensure_builtins()
    try:
        return BUILTIN_MODELS[name]
    except KeyError:
        raise ConfigError(f"model {name!r}: no such builder; expected one of {', '.join(sorted(BUILTIN_MODELS))}") from None


def get_model(name: str, **config: Any) -> Any:
    """Build the registered model ``name`` with the builder's keyword options.

    Parameters
    ----------
    name : str
        A registered builder, e.g. ``"multilattice_resnet34"``.
    **config
        ``weights``, ``heads``, ``dropout``, ``input_mean``, ``input_std``, ``conditioning``.

    Returns
    -------
    XraisResNet

    Raises
    ------
    ConfigError
        Unknown name or bad option.
    """
    return get_model_builder(name)(**config)
