"""miniCBF: PILATUS and EIGER frames with the ``PILATUS_1.2`` text header (plain, .gz, .bz2).

The text header (``_array_data.header_contents``) gives the geometry: ``Pixel_size``,
``Detector_distance``, ``Wavelength``, ``Beam_xy`` (fast, slow pixels, from the corner of the
first pixel), ``Count_cutoff``, and optionally ``Detector_2theta``. -1 marks module gaps, -2
bad pixels, and counts at or above ``Count_cutoff`` are invalid. ``Flux`` is photons/s, used
only when plausible (:func:`plausible_flux`).

The binary section is checked against its MIME header before decoding
(:func:`cbf_binary_sections`: element count against the dimensions, ``X-Binary-Size`` against
the bytes present, ``Content-MD5``), so a damaged file fails with what is wrong, and fabio's
byte-offset decoder (silenced: the error is reported once, here) decodes the pixels. The
full-imgCIF reader runs the same checks on each of its binary sections.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import lzma
import math
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xrais.conditioning.image import DiffractionImage, trusted_mask
from xrais.conditioning.readers.base import ImageReader, open_maybe_compressed, read_head
from xrais.conditioning.readers.fabio_generic import quiet_fabio
from xrais.errors import CorruptImageError
from xrais.geometry import Beam, Detector, catalog_entry_for_shape

__all__ = ["MiniCBFReader", "parse_minicbf_header", "decode_minicbf", "MiniCBFData", "plausible_flux",
           "cbf_binary_sections", "BinarySection", "MAX_PIXELS", "CBF_BINARY_START"]

log = logging.getLogger(__name__)

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_UNIT_TO_MM = {"m": 1e3, "mm": 1.0, "um": 1e-3, "µm": 1e-3}

#: The four bytes that open the binary data of a CBF binary section.
CBF_BINARY_START = b"\x0c\x1a\x04\xd5"
#: Most pixels a header may declare (the largest detectors hold about 20 million): larger
#: dimensions are a damaged header, refused before any memory is taken for them.
MAX_PIXELS = 1 << 27
#: Incident flux a real beamline gives, photons/s (PILATUS headers write ``Flux`` in photons/s).
#: Outside it (0, 1.4, 1e-15 …) the header value is a placeholder and the flux is unknown.
PLAUSIBLE_FLUX_PHOTONS_PER_S = (1e6, 1e16)

_INT_TYPES = {f"{sign} {bits}-bit integer": np.dtype(f"{'i' if sign == 'signed' else 'u'}{bits // 8}")
              for sign in ("signed", "unsigned") for bits in (8, 16, 32, 64)}
_warned_flux: set[float] = set()


def plausible_flux(value: float | None, label: str = "") -> float | None:
    """The header's flux in photons/s if it is one a beamline gives, else None (with a warning).

    Detector control software writes ``Flux 0`` or small placeholders when no flux was
    measured; a beam built from such a number would hold a few photons per image.

    Examples
    --------
    >>> plausible_flux(1.3e11), plausible_flux(None)
    (130000000000.0, None)
    """
    if value is None:
        return None
    lo, hi = PLAUSIBLE_FLUX_PHOTONS_PER_S
    if math.isfinite(value) and lo <= value <= hi:
        return float(value)
    if value not in _warned_flux:  # once per value, not once per frame of a long series
        _warned_flux.add(value)
        log.warning("%sheader Flux %g is not a plausible flux (expected %.0e–%.0e photons/s); "
                    "the flux is taken as unknown", f"{label}: " if label else "", value, lo, hi)
    return None


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
            out["flux_header"] = float(m.group(1))  # photons/s as written; see plausible_flux
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
        cbf = decode_minicbf(self.path)
        h = parse_minicbf_header(cbf.header_text)
        missing = [k for k in ("pixel_size_mm", "distance_mm", "wavelength_A", "beam_xy_px") if k not in h]
        if missing:
            raise CorruptImageError(
                f"{self.path.name}: miniCBF header lacks {', '.join(missing)} (expected PILATUS_1.2 keys)"
            )
        h["flux_photons_per_s"] = plausible_flux(h.get("flux_header"), self.path.name)
        pixels = cbf.pixels
        n_slow, n_fast = pixels.shape
        detector = _minicbf_detector(self.path, h, n_fast, n_slow)
        beam = Beam(
            wavelength_A=h["wavelength_A"],
            polarization_fraction=h.get("polarization_fraction", 0.999),
            flux_photons_per_s=h["flux_photons_per_s"],
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


# --- the binary section ------------------------------------------------------------------------
@dataclass(frozen=True)
class MiniCBFData:
    """What a miniCBF file holds: the text header and the decoded pixels, shape (n_slow, n_fast)."""

    header_text: str
    mime: dict[str, str]
    pixels: np.ndarray


def _read_all(path: Path) -> bytes:
    try:
        with open_maybe_compressed(path) as fh:
            return fh.read()
    except (EOFError, OSError, lzma.LZMAError, zlib.error, ValueError) as exc:
        what = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz"}.get(path.suffix.lower())
        reason = str(exc) or type(exc).__name__
        if what:
            raise CorruptImageError(f"{path.name}: cannot decompress ({what}: {reason})") from None
        raise CorruptImageError(f"{path.name}: cannot be read ({reason})") from None


def _mime_int(path: Path, mime: dict[str, str], key: str, where: str = "") -> int:
    if key not in mime:
        raise CorruptImageError(f"{path.name}: CBF binary section{where} lacks {key}")
    try:
        return int(mime[key])
    except ValueError:
        raise CorruptImageError(f"{path.name}: CBF{where} {key} is {mime[key]!r}, expected an integer") from None


@dataclass(frozen=True)
class BinarySection:
    """One checked CBF binary section: its MIME header, data bytes and shape (n_layer, n_slow, n_fast)."""

    mime: dict[str, str]
    conversion: str
    data: bytes
    shape: tuple[int, int, int]
    dtype: np.dtype | None


def cbf_binary_sections(path: Path, raw: bytes, *, decode_check: bool = True) -> list[BinarySection]:
    """Every binary section of a CBF file, each checked against what its header declares.

    Checks, each failing with a one-line :class:`CorruptImageError` naming the file and both
    numbers: ``X-Binary-Number-of-Elements`` equals the product of the
    ``X-Binary-Size-*-Dimension`` values (and is not absurdly large); the ``X-Binary-Size``
    bytes are present; the data match ``Content-MD5`` when the header has one; with
    ``decode_check``, a byte-offset stream decodes to exactly the declared number of elements.

    Parameters
    ----------
    path : Path
        Names the file in messages.
    raw : bytes
        The whole (decompressed) file.
    decode_check : bool
        Decode byte-offset sections once to count their elements.
    """
    from fabio.compression import decByteOffset

    sections = []
    pos = 0
    while (start := raw.find(CBF_BINARY_START, pos)) >= 0:
        head = raw.rfind(b"--CIF-BINARY-FORMAT-SECTION--", pos, start)
        if head < 0:
            break
        where = f" (array {len(sections) + 1})" if sections else ""
        text = raw[head:start].decode("latin-1")
        mime: dict[str, str] = {}
        for line in text.splitlines()[1:]:
            key, sep, value = line.partition(":")
            if sep and key.strip():
                mime[key.strip()] = value.strip().strip('"').strip()
        conv = re.search(r'conversions\s*=\s*"?([\w-]+)', text)
        conversion = conv.group(1) if conv else ""
        dims = [_mime_int(path, mime, f"X-Binary-Size-{d}-Dimension", where) if f"X-Binary-Size-{d}-Dimension" in mime
                else 1 for d in ("Fastest", "Second", "Third")]
        n_elements = _mime_int(path, mime, "X-Binary-Number-of-Elements", where)
        size = _mime_int(path, mime, "X-Binary-Size", where)
        shown = "×".join(str(d) for d in (dims if dims[2] != 1 else dims[:2]))
        if min(dims) < 1 or math.prod(dims) != n_elements:
            raise CorruptImageError(
                f"{path.name}: header{where} says X-Binary-Number-of-Elements {n_elements}, but "
                f"X-Binary-Size-Fastest-Dimension × Second-Dimension{' × Third' if dims[2] != 1 else ''} = "
                f"{shown} = {math.prod(dims)}; the header is damaged")
        if n_elements > MAX_PIXELS:
            raise CorruptImageError(
                f"{path.name}: header{where} declares {shown} = {n_elements} pixels, more than any detector "
                f"(at most {MAX_PIXELS}); the header is damaged")
        begin = start + len(CBF_BINARY_START)
        present = len(raw) - begin
        if size < 1:
            raise CorruptImageError(f"{path.name}: X-Binary-Size{where} {size}; expected a positive byte count")
        if present < size:
            raise CorruptImageError(
                f"{path.name}: binary data{where} truncated at byte {present} of {size} (X-Binary-Size)")
        data = raw[begin : begin + size]
        if "Content-MD5" in mime:
            found = base64.b64encode(hashlib.md5(data).digest()).decode()
            if found != mime["Content-MD5"]:
                raise CorruptImageError(
                    f"{path.name}: binary data{where} fail their Content-MD5 checksum (header "
                    f"{mime['Content-MD5']}, data {found}); the file is damaged")
        dtype = _INT_TYPES.get(mime.get("X-Binary-Element-Type", "signed 32-bit integer"))
        if decode_check and conversion.lower() == "x-cbf_byte_offset" and dtype is not None:
            try:
                with quiet_fabio():
                    count = len(decByteOffset(data, dtype=dtype))
            except Exception as exc:  # the decoder's own errors (overflowing deltas, bad lengths)
                raise CorruptImageError(
                    f"{path.name}: bad byte-offset stream{where} ({str(exc) or type(exc).__name__})") from None
            if count != n_elements:
                raise CorruptImageError(
                    f"{path.name}: bad byte-offset stream{where}: its {size} bytes decode to {count} elements, "
                    f"the header declares {n_elements}")
        sections.append(BinarySection(mime, conversion, data, (dims[2], dims[1], dims[0]), dtype))
        pos = begin + size
    return sections


def decode_minicbf(path: str | Path) -> MiniCBFData:
    """Read a miniCBF file and decode its byte-offset pixels, checking the header against the data.

    The binary section is checked by :func:`cbf_binary_sections`; a file without one, with
    another compression or a non-integer element type is refused too, each with a one-line
    :class:`CorruptImageError` naming the file.

    Parameters
    ----------
    path : str or Path
        A miniCBF file (plain, .gz, .bz2 or .xz).

    Returns
    -------
    MiniCBFData
    """
    from fabio.compression import decByteOffset

    path = Path(path)
    raw = _read_all(path)
    start = raw.find(CBF_BINARY_START)
    section = raw.rfind(b"--CIF-BINARY-FORMAT-SECTION--", 0, start if start >= 0 else len(raw))
    if start < 0 or section < 0:
        raise CorruptImageError(
            f"{path.name}: no CBF binary section (expected '--CIF-BINARY-FORMAT-SECTION--' and the binary start "
            f"marker) in its {len(raw)} bytes; the file is truncated or not a CBF image")
    text = raw[:section].decode("latin-1")
    m = re.search(r"_array_data\.header_contents\s*\r?\n;(.*?)\r?\n;", text, re.S)
    header_text = m.group(1) if m else ""
    conversion = re.search(r'conversions\s*=\s*"?([\w-]+)', raw[section:start].decode("latin-1"))
    if conversion and conversion.group(1).lower() != "x-cbf_byte_offset":
        raise CorruptImageError(
            f"{path.name}: compression {conversion.group(1)}; expected x-CBF_BYTE_OFFSET for a miniCBF")
    binary = cbf_binary_sections(path, raw, decode_check=False)[0]
    if binary.dtype is None:
        raise CorruptImageError(
            f"{path.name}: X-Binary-Element-Type {binary.mime.get('X-Binary-Element-Type')!r}; expected a signed or "
            "unsigned integer type")
    _, n_slow, n_fast = binary.shape
    n_elements = n_slow * n_fast * binary.shape[0]
    try:
        with quiet_fabio():
            values = np.asarray(decByteOffset(binary.data, dtype=binary.dtype))
    except Exception as exc:  # the decoder's own errors (overflowing deltas, bad lengths)
        raise CorruptImageError(
            f"{path.name}: bad byte-offset stream ({str(exc) or type(exc).__name__})") from None
    if values.size != n_elements or binary.shape[0] != 1:
        raise CorruptImageError(
            f"{path.name}: bad byte-offset stream: its {len(binary.data)} bytes decode to {values.size} elements, "
            f"the header declares {n_elements}" if values.size != n_elements else
            f"{path.name}: {binary.shape[0]} layers in one array; expected one 2-D frame")
    return MiniCBFData(header_text=header_text, mime=binary.mime, pixels=values.reshape(n_slow, n_fast))
