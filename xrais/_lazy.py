"""Package namespaces whose names are imported on first use, so that importing a package is cheap.

``xrais --help`` and ``xrais info`` import the command modules of every stage, and with them
each stage's package; a package that imported its submodules (and so torch and Numba) at once
would make every start take seconds. :func:`lazy_package` keeps the package's public names
(``from xrais.models import load_pretrained`` works as before) but imports the submodule that
defines a name only when the name is first looked up.

A name that is also a submodule's name (``xrais.conditioning.condition`` is a function and a
module) stays the function, as it was when packages imported their names at once: importing
the submodule does not replace it.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any, Mapping, Sequence

__all__ = ["lazy_package"]


class _LazyPackage(types.ModuleType):
    """A package module that imports its exported names on first use."""

    _lazy_exports: dict[str, str]

    def __getattr__(self, name: str) -> Any:  # only called for names not yet in the module
        exports = self.__dict__.get("_lazy_exports", {})
        if name not in exports:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        types.ModuleType.__setattr__(self, name, value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        exports = self.__dict__.get("_lazy_exports", {})
        if name in exports and isinstance(value, types.ModuleType) and value.__name__ == f"{self.__name__}.{name}":
            return  # the import system binding a submodule whose name an export already has: the export wins
        types.ModuleType.__setattr__(self, name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self.__dict__.get("_lazy_exports", {})))


def lazy_package(name: str, exports: Mapping[str, Sequence[str]]) -> None:
    """Make package ``name`` import its public names on first use.

    Parameters
    ----------
    name : str
        The package (its ``__name__``); call this from its ``__init__.py``.
    exports : mapping
        ``{submodule: (names…)}``: which submodule defines each name.

    Examples
    --------
    In ``xrais/conditioning/__init__.py``::

        lazy_package(__name__, {"xrais.conditioning.condition": ("ConditioningConfig", "condition")})
    """
    module = sys.modules[name]
    table = {item: source for source, items in exports.items() for item in items}
    types.ModuleType.__setattr__(module, "_lazy_exports", table)
    for item in table:  # a submodule bound before this call (a name clash) gives way to the export
        current = module.__dict__.get(item)
        if isinstance(current, types.ModuleType) and current.__name__ == f"{name}.{item}":
            del module.__dict__[item]
    module.__class__ = _LazyPackage
