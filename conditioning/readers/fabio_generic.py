"""Formats read through fabio: MAR/Rayonix ``.mccd``, mar345, EDF and other single-array images.

fabio decodes the pixels; the geometry comes from the header where the format has it
(MarCCD headers carry distance, wavelength, beam centre and pixel size). A format without
geometry gives an image whose beam centre is unknown (NaN); conditioning then asks for one.
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from xrais.conditioning.image import DiffractionImage, trusted_mask
from xrais.conditioning.readers.base import ImageReader, exception_reason, read_head
from xrais.errors import CorruptImageError
from xrais.geometry import Beam, Detector, catalog_entry_for_shape

__all__ = ["FabioReader", "load_fabio", "quiet_fabio", "exception_reason"]

# Suffixes (after stripping .gz/.bz2) of the formats this generic reader claims.
_SUFFIXES = {".mccd", ".mar3450", ".mar2300", ".mar2000", ".mar1200", ".mar1600", ".mar3000",
             ".edf", ".tif", ".tiff", ".rx", ".sfrm", ".kccd", ".osc"}


@contextlib.contextmanager
def quiet_fabio() -> Iterator[None]:
    """Hold back fabio's own log records while it reads (a failure is reported once, by xrais)."""
    logger = logging.getLogger("fabio")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_fabio(path: Path, frame: int = 0) -> Any:
    """Open ``path`` with fabio and return the image object for ``frame``.

    Raises
    ------
    CorruptImageError
        If fabio cannot decode the file (truncated, corrupt or not an image).
    """
    import fabio

    try:
        with quiet_fabio():
            img = fabio.open(str(path))
            if frame:
                img = img.getframe(frame)
            data = img.data
    except Exception as exc:  # fabio raises many types for truncated or corrupt files
        raise CorruptImageError(f"{path.name}: cannot decode image data ({exception_reason(exc)})") from None
    if data is None or np.ndim(data) != 2 or 0 in np.shape(data):
        raise CorruptImageError(f"{path.name}: expected a 2-D pixel array, fabio found {np.shape(data)}")
    return img


def _suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    while suffixes and suffixes[-1] in (".gz", ".bz2", ".xz"):
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


class FabioReader(ImageReader):
    """Any single- or multi-frame image fabio decodes (fallback reader, tried last)."""

    name = "fabio"
    priority = -10

    @classmethod
    def understand(cls, path: Path) -> bool:
        if _suffix(path) not in _SUFFIXES:
            return False
        head = read_head(path, 1100)
        return len(head) >= 512

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self._n_frames: int | None = None

    @property
    def n_frames(self) -> int:
        if self._n_frames is None:
            self._n_frames = int(getattr(load_fabio(self.path), "nframes", 1) or 1)
        return self._n_frames

    def _read_frame(self, index: int) -> DiffractionImage:
        img = load_fabio(self.path, index)
        pixels = np.asarray(img.data)
        n_slow, n_fast = pixels.shape
        geo = _marccd_geometry(_marccd_header(self.path)) if type(img).__name__ == "MarccdImage" else {}
        px = geo.get("pixel_size_mm", 0.1)
        centre = geo.get("beam_center_px", (math.nan, math.nan))
        entry = catalog_entry_for_shape(n_fast, n_slow, px)
        top = geo.get("saturated_value", float(np.iinfo(pixels.dtype).max) if pixels.dtype.kind in "ui" else 65535.0)
        kw = dict(distance_mm=geo.get("distance_mm", 100.0), trusted_range=(0.0, top - 1.0),
                  beam_center_px=centre if all(map(math.isfinite, centre)) else None)
        detector = entry.build(**kw) if entry else Detector.flat(
            image_size=(n_fast, n_slow), pixel_size_mm=px, name=type(img).__name__,
            distance_mm=kw["distance_mm"], trusted_range=kw["trusted_range"],
            beam_center_px=kw["beam_center_px"] or (n_fast / 2, n_slow / 2))
        beam = Beam(wavelength_A=geo.get("wavelength_A", 1.0))
        header = {k: v for k, v in geo.items()}
        header["geometry_from_header"] = bool(geo)
        return DiffractionImage(
            pixels=pixels,
            mask=trusted_mask(pixels, detector.trusted_range),
            detector=detector,
            beam=beam,
            beam_center_px=centre,
            path=self.path,
            frame=index,
            format=f"{self.name}:{type(img).__name__}",
            header=header,
        )


def _marccd_header(path: Path) -> dict[str, Any]:
    """The 3072-byte MAR header that follows the 1024-byte TIFF header (parsed by fabio)."""
    from fabio.marccdimage import HEADER_FORMAT, HEADER_NAMES, interpret_header

    head = read_head(path, 4096)
    if len(head) < 4096:
        raise CorruptImageError(f"{path.name}: truncated MarCCD header, expected 4096 bytes, got {len(head)}")
    return interpret_header(head[1024:4096], HEADER_FORMAT, HEADER_NAMES)


def _marccd_geometry(header: dict[str, Any]) -> dict[str, Any]:
    """Geometry from a MarCCD header (fabio's field names; integers in 1/1000 units)."""
    def num(key: str) -> float:
        try:
            return float(header.get(key, 0) or 0)
        except (TypeError, ValueError):
            return 0.0

    out: dict[str, Any] = {}
    if num("pixelsize_x") > 0:
        out["pixel_size_mm"] = num("pixelsize_x") * 1e-6  # nm → mm
    if num("xtal_to_detector") > 0:
        out["distance_mm"] = num("xtal_to_detector") / 1000.0
    if num("source_wavelength") > 0:
        out["wavelength_A"] = num("source_wavelength") * 1e-5  # fm → Å
    if num("saturated_value") > 0:
        out["saturated_value"] = num("saturated_value")
    if num("beam_x") > 0 and num("beam_y") > 0:
        out["beam_center_px"] = (num("beam_x") / 1000.0, num("beam_y") / 1000.0)
    return out
