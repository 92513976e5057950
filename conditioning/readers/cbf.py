"""miniCBF: PILATUS and EIGER frames with the ``PILATUS_1.2`` text header (plain, .gz, .bz2).

The text header (``_array_data.header_contents``) gives the geometry: ``Pixel_size``,
``Detector_distance``, ``Wavelength``, ``Beam_xy`` (fast, slow pixels, from the corner of the
first pixel), ``Count_cutoff``, and optionally ``Detector_2theta``. fabio decodes the
byte-offset compressed pixels. -1 marks module gaps, -2 bad pixels, and counts at or above
``Count_cutoff`` are invalid.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from xrais.conditioning.image import DiffractionImage, trusted_mask
from xrais.conditioning.readers.base import ImageReader, read_head
from xrais.conditioning.readers.fabio_generic import load_fabio
from xrais.errors import CorruptImageError
from xrais.geometry import Beam, Detector, catalog_entry_for_shape

__all__ = ["MiniCBFReader", "parse_minicbf_header"]

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_UNIT_TO_MM = {"m": 1e3, "mm": 1.0, "um": 1e-3, "µm": 1e-3}


def parse_minicbf_header(text: str) -> dict[str, Any]:
    """Parse the ``# Key value`` lines of a PILATUS_1.2 miniCBF header.

    Returns lengths in mm and the wavelength in Å; keys missing from the header are absent.

    Examples
    --------
    >>> h = parse_minicbf_header("# Pixel_size 172e-6 m x 172e-6 m\\r\\n# Beam_xy (1261.61, 1306.96) pixels\\r\\n"
    ...                          "# Detector_distance 0.35100 m\\r\\n# Wavelength 0.96859 A\\r\\n")
    >>> h["pixel_size_mm"], h["beam_xy_px"], round(h["distance_mm"], 3), h["wavelength_A"]
    ((0.172, 0.172), (1261.61, 1306.96), 351.0, 0.96859)
    """
    out: dict[str, Any] = {}
    for raw in text.splitlines():
        line = raw.strip().lstrip("#").strip()
        if not line:
            continue
        if m := re.match(r"Detector:\s*(.*?)(?:,\s*S/N\s*(.*))?$", line):
            out["detector_model"] = m.group(1).strip()
            if m.group(2):
                out["serial_number"] = m.group(2).strip()
        elif m := re.match(r"\d{4}-\d\d-\d\dT[\d:.]+", line):
            out["date"] = m.group(0)
        elif m := re.match(rf"Pixel_size\s+({_NUMBER})\s*(\S+)\s*x\s*({_NUMBER})\s*(\S+)", line):
            out["pixel_size_mm"] = (
                round(float(m.group(1)) * _UNIT_TO_MM.get(m.group(2), 1e3), 9),
                round(float(m.group(3)) * _UNIT_TO_MM.get(m.group(4), 1e3), 9),
            )
        elif m := re.match(rf"(\w+) sensor, thickness\s+({_NUMBER})\s*(\S+)", line):
            out["material"] = {"Silicon": "Si", "CdTe": "CdTe"}.get(m.group(1), m.group(1))
            out["thickness_mm"] = float(m.group(2)) * _UNIT_TO_MM.get(m.group(3), 1e3)
        elif m := re.match(rf"Exposure_time\s+({_NUMBER})", line):
            out["exposure_s"] = float(m.group(1))
        elif m := re.match(rf"Count_cutoff\s+({_NUMBER})", line):
            out["count_cutoff"] = float(m.group(1))
        elif m := re.match(rf"Wavelength\s+({_NUMBER})", line):
            out["wavelength_A"] = float(m.group(1))
        elif m := re.match(rf"Detector_distance\s+({_NUMBER})\s*(\S*)", line):
            out["distance_mm"] = float(m.group(1)) * _UNIT_TO_MM.get(m.group(2) or "m", 1e3)
        elif m := re.match(rf"Beam_xy\s*\(\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\)", line):
            out["beam_xy_px"] = (float(m.group(1)), float(m.group(2)))
        elif m := re.match(rf"Detector_2theta\s+({_NUMBER})", line):
            out["two_theta_deg"] = float(m.group(1))
        elif m := re.match(rf"Polarization\s+({_NUMBER})", line):
            out["polarization_fraction"] = float(m.group(1))
        elif m := re.match(rf"Flux\s+({_NUMBER})", line):
            out["flux_photons_per_s"] = float(m.group(1))
        elif m := re.match(rf"(Start_angle|Angle_increment|Omega|Phi|Chi|Kappa)\s+({_NUMBER})", line):
            out[f"{m.group(1).lower()}_deg"] = float(m.group(2))
        elif m := re.match(rf"Threshold_setting:?\s+({_NUMBER})", line):
            out["threshold_eV"] = float(m.group(1))
    return out


class MiniCBFReader(ImageReader):
    """PILATUS/EIGER miniCBF frames (one frame per file)."""

    name = "minicbf"
    priority = 20

    @classmethod
    def understand(cls, path: Path) -> bool:
        head = read_head(path, 16384)
        if not head.startswith(b"###CBF") and b"data_" not in head[:2048]:
            return False
        i = head.find(b"_array_data.header_convention")
        return i >= 0 and any(k in head[i : i + 120] for k in (b"PILATUS", b"SLS"))

    @property
    def n_frames(self) -> int:
        return 1

    def _read_frame(self, index: int) -> DiffractionImage:
        img = load_fabio(self.path)
        text = img.header.get("_array_data.header_contents", "")
        h = parse_minicbf_header(text)
        missing = [k for k in ("pixel_size_mm", "distance_mm", "wavelength_A", "beam_xy_px") if k not in h]
        if missing:
            raise CorruptImageError(
                f"{self.path.name}: miniCBF header lacks {', '.join(missing)} (expected PILATUS_1.2 keys)"
            )
        pixels = np.asarray(img.data)
        n_slow, n_fast = pixels.shape
        detector = _minicbf_detector(self.path, h, n_fast, n_slow)
        beam = Beam(
            wavelength_A=h["wavelength_A"],
            polarization_fraction=h.get("polarization_fraction", 0.999),
            flux_photons_per_s=h.get("flux_photons_per_s"),
        )
        mask = trusted_mask(pixels, detector.trusted_range, gap_mask=detector.gap_mask())
        return DiffractionImage(
            pixels=pixels,
            mask=mask,
            detector=detector,
            beam=beam,
            beam_center_px=detector.beam_center_px(beam),
            path=self.path,
            frame=index,
            format=self.name,
            header=h,
        )


def _minicbf_detector(path: Path, h: dict[str, Any], n_fast: int, n_slow: int) -> Detector:
    """Catalog detector matched by array size and pixel pitch (else one flat panel), placed
    by the header and swung by ``Detector_2theta`` about +x."""
    px_f, px_s = h["pixel_size_mm"]
    cutoff = h.get("count_cutoff")
    trusted = (0.0, cutoff - 1.0) if cutoff else (0.0, 1048575.0)
    extra = {"trusted_range": trusted}
    if "thickness_mm" in h:
        extra["thickness_mm"] = h["thickness_mm"]
        extra["material"] = h.get("material", "Si")
    entry = catalog_entry_for_shape(n_fast, n_slow, px_f)
    if entry is not None:
        det = entry.build(distance_mm=h["distance_mm"], beam_center_px=h["beam_xy_px"],
                          serial_number=h.get("serial_number", ""), **extra)
    else:
        det = Detector.flat(image_size=(n_fast, n_slow), pixel_size_mm=(px_f, px_s),
                            distance_mm=h["distance_mm"], beam_center_px=h["beam_xy_px"],
                            name=h.get("detector_model", "minicbf"),
                            serial_number=h.get("serial_number", ""), **extra)
    two_theta = h.get("two_theta_deg", 0.0)
    if two_theta:
        det = det.rotated((1.0, 0.0, 0.0), two_theta)
    return det
