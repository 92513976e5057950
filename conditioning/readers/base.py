"""The reader interface and the helpers every reader shares.

A reader class declares a cheap ``understand(path) -> bool`` (header bytes only; it never
raises) and, once constructed on a path it understands, gives ``n_frames`` and
``read_frame(i) -> DiffractionImage``. Readers know file formats; geometry lives in
:mod:`xrais.geometry` and algorithms never read headers.
"""

from __future__ import annotations

import abc
import bz2
import gzip
import logging
import lzma
from pathlib import Path
from typing import ClassVar, Iterator

import numpy as np

from xrais.conditioning.image import DiffractionImage
from xrais.errors import CorruptImageError, FrameIndexError, XraisError

__all__ = ["ImageReader", "read_head", "open_maybe_compressed", "COMPRESSED_SUFFIXES", "exception_reason",
           "named_error"]

log = logging.getLogger(__name__)

#: File suffixes decompressed transparently by :func:`open_maybe_compressed`.
COMPRESSED_SUFFIXES = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def open_maybe_compressed(path: Path):
    """Open ``path`` for binary reading, decompressing ``.gz``, ``.bz2`` and ``.xz``."""
    opener = COMPRESSED_SUFFIXES.get(path.suffix.lower(), open)
    return opener(path, "rb")


def read_head(path: Path, nbytes: int = 4096) -> bytes:
    """The first ``nbytes`` (decompressed) bytes of a file, or ``b""`` if it cannot be read."""
    try:
        with open_maybe_compressed(Path(path)) as fh:
            return fh.read(nbytes)
    except (OSError, EOFError, ValueError, lzma.LZMAError):
        return b""


def exception_reason(exc: BaseException) -> str:
    """A readable reason for an exception a decoder raised, never an empty one.

    Examples
    --------
    >>> exception_reason(AssertionError())
    'AssertionError: the decoded data disagree with the header'
    >>> exception_reason(EOFError("Compressed file ended before the end-of-stream marker was reached"))
    'EOFError: Compressed file ended before the end-of-stream marker was reached'
    """
    text = " ".join(str(exc).split())
    if not text or text in ("()", "None"):
        text = {
            "AssertionError": "the decoded data disagree with the header",
            "EOFError": "the file ends early",
            "MemoryError": "the header declares more pixels than fit in memory",
            "IndexError": "the data end before the header's dimensions are filled",
        }.get(type(exc).__name__, "no reason given")
    return f"{type(exc).__name__}: {text}"


def named_error(exc: Exception, path: Path) -> XraisError:
    """``exc`` as an xrais error whose one-line message names ``path``.

    An xrais error that already names the file is returned as it is; one that does not gets
    the file name in front; any other exception (a decoder's own) becomes a
    :class:`~xrais.errors.CorruptImageError` with its reason, its traceback kept in the debug log.
    """
    if isinstance(exc, XraisError):
        if path.name in str(exc):
            return exc
        try:
            return type(exc)(f"{path.name}: {exc}")
        except TypeError:  # an error class with another signature
            return CorruptImageError(f"{path.name}: {exc}")
    log.debug("%s: decoder failure", path, exc_info=exc)
    return CorruptImageError(f"{path.name}: cannot be decoded (unexpected {exception_reason(exc)})")


class ImageReader(abc.ABC):
    """Base class of the format readers.

    Subclasses set ``name`` and ``priority`` (higher is more specific and is tried first),
    implement :meth:`understand`, :meth:`n_frames` and :meth:`_read_frame`.
    """

    name: ClassVar[str] = "base"
    priority: ClassVar[int] = 0

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise CorruptImageError(f"{self.path}: no such file")

    @classmethod
    @abc.abstractmethod
    def understand(cls, path: Path) -> bool:
        """True if this reader can read ``path``; reads the header only, never raises."""

    @property
    @abc.abstractmethod
    def n_frames(self) -> int:
        """Number of frames in the file."""

    @abc.abstractmethod
    def _read_frame(self, index: int) -> DiffractionImage:
        """Read one frame (index already checked)."""

    def read_frame(self, index: int = 0) -> DiffractionImage:
        """Read frame ``index`` (0-based).

        Raises
        ------
        FrameIndexError
            If ``index`` is outside ``0 … n_frames − 1``.
        CorruptImageError
            If the data cannot be decoded, or no pixel of a floating-point frame is finite.
        """
        n = self.n_frames
        if not isinstance(index, int) or not 0 <= index < n:
            raise FrameIndexError(
                f"{self.path.name}: frame {index!r} out of range; the file has {n} frame(s) (0–{n - 1})"
            )
        try:
            image = self._read_frame(index)
        except Exception as exc:  # every failure is one line naming the file
            raise named_error(exc, self.path) from None
        pixels = image.pixels
        if np.issubdtype(pixels.dtype, np.floating) and not np.isfinite(pixels).any():
            raise CorruptImageError(f"{image.label}: every pixel is NaN or infinite; expected counts")
        return image

    def frames(self) -> Iterator[DiffractionImage]:
        """Every frame in order, read one at a time (a stream)."""
        for i in range(self.n_frames):
            yield self.read_frame(i)

    def close(self) -> None:
        """Release open file handles (no-op for readers that hold none)."""

    def __enter__(self) -> "ImageReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"
