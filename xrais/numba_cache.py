"""The on-disk cache of the compiled kernels, invalidated when any of their sources changes.

The kernels are compiled by Numba with ``cache=True``, so a process loads them from disk
instead of compiling them again (20–30 s). Numba checks a cached kernel only against the file
that defines it, but a kernel also compiles in the functions it calls from other files
(``physics.py``'s pixel model, ``ran1``): after an edit or an upgrade that changes only those,
Numba would load a kernel with the old physics. Importing this module (every kernel module
does, right after ``import numba``) makes the cache of the functions defined in xrais's kernel
folders (:data:`KERNEL_PACKAGES`) carry a stamp of *all* the sources in those folders and of
the xrais version, so any change there compiles every kernel again once.

The cache lies where Numba would put it (``NUMBA_CACHE_DIR`` when set, else the package's
``__pycache__`` when writable, else the user's cache folder).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from pathlib import Path

from xrais._version import __version__

__all__ = ["KERNEL_PACKAGES", "kernel_sources_stamp", "install"]

log = logging.getLogger(__name__)

#: Folders (beside the ``xrais`` core folder) whose functions' caches follow every source in them.
KERNEL_PACKAGES: tuple[str, ...] = ("simulate", "conditioning")

_ROOT = Path(__file__).resolve().parent.parent


@functools.lru_cache(maxsize=1)
def _kernel_folders() -> tuple[Path, ...]:
    """The kernel packages' folders, found without importing them."""
    import importlib.util

    folders = []
    for name in KERNEL_PACKAGES:
        spec = importlib.util.find_spec(f"xrais.{name}")
        folders += [Path(p).resolve() for p in (spec.submodule_search_locations or [])] if spec else []
    return tuple(folders)


def _stat_key(folders: tuple[Path, ...]) -> tuple[tuple[str, int, int], ...]:
    key = []
    for folder in folders:
        for path in sorted(folder.rglob("*.py")):
            st = path.stat()
            key.append((str(path), st.st_mtime_ns, st.st_size))
    return tuple(key)


@functools.lru_cache(maxsize=8)
def _hash_sources(key: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256(__version__.encode())
    for path, _, _ in key:
        digest.update(os.path.relpath(path, _ROOT).encode())
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def kernel_sources_stamp() -> str:
    """SHA-256 of the xrais version and of every ``.py`` file in the kernel folders."""
    return _hash_sources(_stat_key(_kernel_folders()))


def _is_kernel_file(py_file: str) -> bool:
    try:
        path = Path(py_file).resolve()
    except OSError:
        return False
    return any(path.is_relative_to(folder) for folder in _kernel_folders())


@functools.lru_cache(maxsize=1)
def install() -> bool:
    """Put the kernel-aware cache locators first in Numba's list (once per process).

    Returns
    -------
    bool
        False when this Numba has no such list (its kernels then use Numba's own stamps).
    """
    try:
        from numba.core import caching
    except ImportError:  # pragma: no cover - numba is a dependency
        return False
    bases = [getattr(caching, name, None) for name in
             ("UserProvidedCacheLocator", "_UserProvidedCacheLocator", "InTreeCacheLocator", "_InTreeCacheLocator",
              "UserWideCacheLocator", "_UserWideCacheLocator")]
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    if impl is None or not isinstance(getattr(impl, "_locator_classes", None), list):
        import numba

        log.debug("numba %s: cannot attach the kernel cache stamps; a cached kernel follows its own file only",
                    numba.__version__)
        return False
    seen: list[type] = []
    for base in bases:
        if base is None or base in seen:
            continue
        seen.append(base)
    ours = []
    for base in seen:
        class _KernelLocator(base):  # type: ignore[misc, valid-type]
            """Numba's locator, for xrais kernels only, with a stamp of every kernel source."""

            def get_source_stamp(self) -> object:
                return ("xrais-kernels", kernel_sources_stamp())

            @classmethod
            def from_function(cls, py_func: object, py_file: str) -> object:
                if not _is_kernel_file(py_file):
                    return None
                return super().from_function(py_func, py_file)

        _KernelLocator.__name__ = _KernelLocator.__qualname__ = "Xrais" + base.__name__.lstrip("_")
        ours.append(_KernelLocator)
    impl._locator_classes[:0] = [c for c in ours if c.__name__ not in {k.__name__ for k in impl._locator_classes}]
    return True


install()
