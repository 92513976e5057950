"""Choosing the reader for a file (dxtbx-style ``understand()`` registry).

Built-in readers are tried from the most specific (highest ``priority``) down; readers that
other packages register under the entry-point group ``xrais.readers`` join them. The first
that understands the file reads it.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from pathlib import Path
from typing import Iterator

from xrais.conditioning.image import DiffractionImage
from xrais.conditioning.readers.base import ImageReader, named_error
from xrais.errors import CorruptImageError, UnknownFormatError

__all__ = ["list_readers", "get_reader_class", "open_image", "read_image", "iter_frames"]

log = logging.getLogger(__name__)

_READERS: list[type[ImageReader]] | None = None


def _builtin_readers() -> list[type[ImageReader]]:
    from xrais.conditioning.readers.cbf import MiniCBFReader
    from xrais.conditioning.readers.imgcif import ImgCIFReader
    from xrais.conditioning.readers.nexus import NXmxReader
    from xrais.conditioning.readers.smv import SMVReader
    from xrais.conditioning.readers.stream import DectrisStreamReader
    from xrais.conditioning.readers.fabio_generic import FabioReader

    return [MiniCBFReader, ImgCIFReader, NXmxReader, SMVReader, DectrisStreamReader, FabioReader]


def list_readers() -> list[type[ImageReader]]:
    """All reader classes, most specific first."""
    global _READERS
    if _READERS is None:
        readers = _builtin_readers()
        for ep in entry_points(group="xrais.readers"):
            try:
                readers.append(ep.load())
            except Exception as exc:  # a broken plug-in must not break the built-in formats
                log.warning("reader plug-in %s failed to load: %s", ep.name, exc)
        _READERS = sorted(readers, key=lambda r: -r.priority)
    return list(_READERS)


def get_reader_class(path: str | Path, hint: str | None = None) -> type[ImageReader]:
    """The reader class for ``path``; ``hint`` (a reader name) is tried first.

    Raises
    ------
    CorruptImageError
        If the file does not exist.
    UnknownFormatError
        If no reader understands it; the message lists the readers tried.
    """
    path = Path(path)
    if not path.exists():
        raise CorruptImageError(f"{path}: no such file")
    if path.is_dir():
        raise UnknownFormatError(f"{path}: is a directory, expected an image file")
    readers = list_readers()
    if hint is not None:
        named = [r for r in readers if r.name == hint]
        if not named:
            raise UnknownFormatError(
                f"{path.name}: unknown format hint {hint!r}; expected one of {', '.join(r.name for r in readers)}"
            )
        readers = named + [r for r in readers if r.name != hint]
    for reader in readers:
        if reader.understand(path):
            return reader
    raise UnknownFormatError(
        f"{path.name}: not a detector image format xrais reads (tried {', '.join(r.name for r in readers)})"
    )


def open_image(path: str | Path, hint: str | None = None) -> ImageReader:
    """Open ``path`` with the reader that understands it (the only entry point stages use).

    Raises
    ------
    XraisError
        One line naming the file: it is missing, no reader understands it, or opening it failed.
    """
    reader = get_reader_class(path, hint)
    try:
        return reader(path)
    except Exception as exc:  # a reader that reads headers on opening: its failure names the file
        raise named_error(exc, Path(path)) from None


def read_image(path: str | Path, frame: int | None = None, *, hint: str | None = None) -> DiffractionImage:
    """Read one frame of an image file (the first frame when ``frame`` is None).

    Parameters
    ----------
    path : str or Path
        A detector image: miniCBF (plain, .gz, .bz2), full imgCIF CBF, SMV, MAR/Rayonix,
        EIGER/NXmx HDF5 master or data file, or a DECTRIS stream frame.
    frame : int, optional
        0-based frame index within multi-frame files.
    hint : str, optional
        Name of the reader to try first.

    Returns
    -------
    DiffractionImage

    Raises
    ------
    CorruptImageError, UnknownFormatError, FrameIndexError
        With the file named in the message.
    """
    with open_image(path, hint) as reader:
        return reader.read_frame(0 if frame is None else frame)


def iter_frames(path: str | Path, *, hint: str | None = None) -> Iterator[DiffractionImage]:
    """Every frame of a file, one at a time."""
    with open_image(path, hint) as reader:
        yield from reader.frames()
