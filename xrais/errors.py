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
    "RunLockedError",
    "RunInterrupted",
]


class XraisError(Exception):
    """Base class of every error xrais raises on purpose.

    ``exit_code`` is the status the ``xrais`` command exits with when this error stops it
    (1: the command could not finish; 2: a usage error).
    """

    exit_code: int = 1


class ConfigError(XraisError, ValueError):
    """A parameter or configuration value is out of range or inconsistent (a usage error: exit 2)."""

    exit_code = 2


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


class RunLockedError(XraisError, RuntimeError):
    """An output folder is held by another live run (a usage error: exit 2)."""

    exit_code = 2


class RunInterrupted(XraisError, RuntimeError):
    """A run stopped by a signal after saving its finished work; exits with 128 + the signal."""

    def __init__(self, signum: int, where: str = "") -> None:
        import signal

        self.signum = int(signum)
        self.exit_code = 128 + self.signum
        name = signal.Signals(self.signum).name
        super().__init__(f"{where + ': ' if where else ''}stopped by {name}; finished work is saved, "
                         "run the same command again to resume")
