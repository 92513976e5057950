"""ADSC SMV images (``{ KEY=value; … }`` text header, big- or little-endian unsigned 16-bit).

Beam-centre convention (as dxtbx reads ADSC): ``BEAM_CENTER_X`` is measured along the
slow axis and ``BEAM_CENTER_Y`` along the fast axis, both in mm from the first pixel's corner.
Images simulated by nanoBragg (``BEAMLINE=fake``) count ``BEAM_CENTER_X/Y`` from the first
pixel's centre; their ``DENZO_X_BEAM``/``DENZO_Y_BEAM`` (slow, fast) count from the corner and
are used instead.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from xrais.conditioning.image import DiffractionImage, trusted_mask
from xrais.conditioning.readers.base import ImageReader, read_head
from xrais.errors import CorruptImageError
from xrais.geometry import Beam, Detector

__all__ = ["SMVReader", "parse_smv_header"]


def parse_smv_header(head: bytes) -> dict[str, str]:
    """``KEY=value;`` pairs of an SMV header block (values as strings)."""
    end = head.find(b"}")
    text = head[: end if end > 0 else len(head)].decode("ascii", "replace")
    return {k.strip(): v.strip() for k, v in re.findall(r"(\w+)\s*=\s*([^;]*);", text)}


def _check_header_numbers(path: Path, header_bytes: int, n_fast: int, n_slow: int, px: float,
                          distance: float, wavelength: float) -> None:
    """Refuse header sizes and geometry no detector has, before any memory is taken for them."""
    from xrais.conditioning.readers.cbf import MAX_PIXELS

    if not 0 < header_bytes <= 1 << 20:
        raise CorruptImageError(f"{path.name}: SMV HEADER_BYTES {header_bytes}; expected 1–{1 << 20}")
    if n_fast < 1 or n_slow < 1 or n_fast * n_slow > MAX_PIXELS:
        raise CorruptImageError(
            f"{path.name}: SMV SIZE1×SIZE2 {n_fast}×{n_slow}; expected 1 to {MAX_PIXELS} pixels in all")
    for key, value in (("PIXEL_SIZE", px), ("DISTANCE", distance), ("WAVELENGTH", wavelength)):
        if not (math.isfinite(value) and value > 0):
            raise CorruptImageError(f"{path.name}: SMV {key} {value}; expected a positive number")


class SMVReader(ImageReader):
    """ADSC (and other SMV) frames; one frame per file, plain, .gz or .bz2."""

    name = "smv"
    priority = 10

    @classmethod
    def understand(cls, path: Path) -> bool:
        head = read_head(path, 512)
        if not head.startswith(b"{") or b"HEADER_BYTES" not in head:
            return False
        h = parse_smv_header(head)
        return all(k in h for k in ("SIZE1", "SIZE2", "BYTE_ORDER"))

    @property
    def n_frames(self) -> int:
        return 1

    def _read_frame(self, index: int) -> DiffractionImage:
        from xrais.conditioning.readers.base import open_maybe_compressed

        with open_maybe_compressed(self.path) as fh:
            raw = fh.read()
        h = parse_smv_header(raw[:8192])
        try:
            header_bytes = int(h["HEADER_BYTES"])
            n_fast, n_slow = int(h["SIZE1"]), int(h["SIZE2"])
            px = float(h["PIXEL_SIZE"])
            distance = float(h["DISTANCE"])
            wavelength = float(h["WAVELENGTH"])
            bx_mm, by_mm = float(h["BEAM_CENTER_X"]), float(h["BEAM_CENTER_Y"])
            if h.get("BEAMLINE") == "fake" and "DENZO_X_BEAM" in h and "DENZO_Y_BEAM" in h:
                bx_mm, by_mm = float(h["DENZO_X_BEAM"]), float(h["DENZO_Y_BEAM"])
        except KeyError as exc:
            raise CorruptImageError(f"{self.path.name}: SMV header lacks {exc}") from None
        except ValueError as exc:
            raise CorruptImageError(f"{self.path.name}: SMV header holds a garbled value ({exc})") from None
        _check_header_numbers(self.path, header_bytes, n_fast, n_slow, px, distance, wavelength)
        order = ">" if h.get("BYTE_ORDER", "").lower().startswith("big") else "<"
        dtype = np.dtype(order + ("u4" if h.get("TYPE") == "unsigned_long" else "u2"))
        need = header_bytes + n_fast * n_slow * dtype.itemsize
        if len(raw) < need:
            raise CorruptImageError(
                f"{self.path.name}: truncated SMV file, expected {need} bytes for {n_fast}×{n_slow} pixels, got {len(raw)}"
            )
        if len(raw) > need + header_bytes:  # more than a trailer: the sizes in the header are wrong
            raise CorruptImageError(
                f"{self.path.name}: SMV file holds {len(raw)} bytes, but its header (HEADER_BYTES {header_bytes}, "
                f"SIZE1×SIZE2 {n_fast}×{n_slow} of {dtype.itemsize} bytes) accounts for {need}")
        pixels = np.frombuffer(raw, dtype=dtype, count=n_fast * n_slow, offset=header_bytes)
        pixels = pixels.reshape(n_slow, n_fast).astype(dtype.newbyteorder("="))
        saturation = float(h.get("CCD_IMAGE_SATURATION", 65535))
        pedestal = float(h.get("IMAGE_PEDESTAL", 0))
        detector = Detector.flat(
            image_size=(n_fast, n_slow), pixel_size_mm=px, distance_mm=distance,
            beam_center_px=(by_mm / px, bx_mm / px),
            name="nanobragg_smv" if h.get("BEAMLINE") == "fake" else f"adsc_{h.get('DETECTOR_SN', 'smv')}",
            trusted_range=(0.0, saturation - 1.0 - pedestal),
            serial_number=h.get("DETECTOR_SN", ""),
        )
        beam = Beam(wavelength_A=wavelength)
        header: dict[str, Any] = {
            "date": h.get("DATE", ""), "exposure_s": float(h.get("TIME", "nan")),
            "osc_start_deg": float(h.get("OSC_START", "nan")), "osc_range_deg": float(h.get("OSC_RANGE", "nan")),
            "two_theta_deg": float(h.get("TWOTHETA", 0.0)), "serial_number": h.get("DETECTOR_SN", ""),
            "saturation": saturation,
        }
        return DiffractionImage(
            pixels=pixels, mask=trusted_mask(pixels, detector.trusted_range), detector=detector, beam=beam,
            beam_center_px=detector.beam_center_px(beam), path=self.path, frame=index, format=self.name,
            header=header,
        )
