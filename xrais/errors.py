"""The xrais exception hierarchy.

Every error raised on purpose by xrais derives from :class:`XraisError` and from the
builtin that ordinary ``except`` clauses expect (``ValueError``, ``OSError``, …), so
callers can catch either. A message names the input, what was expected and what was
found, on one line, e.g.
``"thau_0003.cbf: expected 2463×2527 pixels for pilatus6m, header says 1475×1679"``.
"""

from __future__ import annotations

__all__ = [
    "XraisError",
    "ConfigError",
    "UnknownFormatError",
    "CorruptImageError",
    "GeometryError",
    "CheckpointError",
    "DatasetError",
    "FrameIndexError",
]


class XraisError(Exception):
    """Base class of every error xrais raises on purpose."""


class ConfigError(XraisError, ValueError):
    """A parameter or configuration value is out of range or inconsistent."""


class UnknownFormatError(XraisError, ValueError):
    """No image reader understands a file."""


class CorruptImageError(XraisError, OSError):
    """An image file is missing, truncated, unreadable or holds invalid pixels."""


class FrameIndexError(XraisError, IndexError):
    """A frame index outside the frames a file holds."""


class GeometryError(XraisError, ValueError):
    """Detector or beam geometry is missing, inconsistent or impossible."""


class CheckpointError(XraisError, ValueError):
    """A model checkpoint is missing, corrupt or does not match what was asked for."""


class DatasetError(XraisError, ValueError):
    """A dataset file does not follow the xrais schema."""
