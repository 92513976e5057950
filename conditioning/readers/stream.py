"""DECTRIS EIGER stream frames: one "dimage-1.0" message dumped from the 0MQ stream interface.

A frame file holds one msgpack array (stream API 1.x):

1. metadata map: ``htype`` "dimage-1.0", ``series``, ``frame`` (0-based image number in the
   series), ``hash``, ``acqID``;
2. JSON part: ``encoding``, ``shape`` as **[fast, slow]**, ``type`` ("uint16", "uint32", …),
   ``size`` (bytes of the pixel blob);
3. the pixel blob;
4. JSON timing part ("dconfig-1.0": ``start_time``, ``stop_time``, ``real_time`` in ns).

The geometry is in the series' "dheader-1.0" message, dumped to a file named ``header`` beside
the frames (or given as ``header_path``): a msgpack array whose second element is the detector
configuration JSON (``beam_center_x``/``beam_center_y`` in pixels, ``detector_distance`` in m,
``wavelength`` in Å, ``x_pixel_size``/``y_pixel_size`` in m, ``x_pixels_in_detector``,
``y_pixels_in_detector``, ``countrate_correction_count_cutoff``, ``bit_depth_image``,
``sensor_thickness`` in m …), optionally followed by "dpixelmask-1.0" and other parts.

Encodings: ``bs8-lz4<``, ``bs16-lz4<`` and ``bs32-lz4<`` (bitshuffle + LZ4: the blob is byte
for byte one HDF5 bitshuffle chunk, decoded by hdf5plugin's filter, see
:func:`~xrais.conditioning.readers.eiger.decode_bitshuffle_chunk`), and ``<`` (raw
little-endian). Pixels are returned as an array of shape (n_slow, n_fast). Masked: the all-ones
count of the bit depth (65535 for 16-bit frames), counts ≥ the count-rate cutoff, non-zero
pixels of the header's pixel mask when the dump carries one, and catalog module gaps.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from xrais.conditioning.image import DiffractionImage, trusted_mask
from xrais.conditioning.readers.base import ImageReader, open_maybe_compressed, read_head
from xrais.conditioning.readers.eiger import (
    decode_bitshuffle_chunk,
    eiger_detector,
    eiger_trusted_range,
    undefined_pixel_value,
)
from xrais.errors import CorruptImageError, GeometryError, UnknownFormatError
from xrais.geometry import Beam, Detector

__all__ = ["DectrisStreamReader", "decode_stream_pixels", "read_stream_header", "SUPPORTED_ENCODINGS"]

#: Pixel encodings this reader decodes.
SUPPORTED_ENCODINGS = ("bs8-lz4<", "bs16-lz4<", "bs32-lz4<", "<")

_BITSHUFFLE_LZ4 = re.compile(r"bs(8|16|32)-lz4<")
_REQUIRED_CONFIG = ("beam_center_x", "beam_center_y", "detector_distance", "wavelength",
                    "x_pixel_size", "y_pixel_size")
_MSGPACK_ARRAY_MARKERS = set(range(0x90, 0xA0)) | {0xDC, 0xDD}


def _unpack_first(raw: bytes, label: str) -> Any:
    """The first msgpack object in ``raw`` (bins stay bytes, strings are str)."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=max(len(raw), 1))
    unpacker.feed(raw)
    try:
        return unpacker.unpack()
    except msgpack.OutOfData:
        raise CorruptImageError(f"{label}: truncated msgpack message ({len(raw)} bytes)") from None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise CorruptImageError(f"{label}: not a valid msgpack message ({exc})") from None


def _json_part(part: Any, label: str, what: str) -> dict[str, Any]:
    if isinstance(part, (bytes, bytearray, str)):
        try:
            value = json.loads(part)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptImageError(f"{label}: {what} is not valid JSON ({exc})") from None
        if isinstance(value, dict):
            return value
    raise CorruptImageError(f"{label}: expected {what} as a JSON object, found {type(part).__name__}")


def _frame_shape(info: dict[str, Any], label: str) -> tuple[int, int]:
    """(n_slow, n_fast) from the JSON ``shape`` [fast, slow]."""
    shape = info.get("shape")
    if (not isinstance(shape, list) or len(shape) != 2
            or not all(isinstance(v, int) and v > 0 for v in shape)):
        raise CorruptImageError(f"{label}: expected shape [fast, slow] of positive integers, found {shape!r}")
    return shape[1], shape[0]


def decode_stream_pixels(blob: bytes, info: dict[str, Any], label: str) -> np.ndarray:
    """Decode the pixel blob of a "dimage-1.0" message.

    Parameters
    ----------
    blob : bytes
        The third element of the message.
    info : dict
        The JSON part: ``encoding``, ``shape`` [fast, slow], ``type``, optionally ``size``.
    label : str
        Names the file in error messages.

    Returns
    -------
    ndarray, shape (n_slow, n_fast), dtype ``info["type"]`` — counts

    Raises
    ------
    UnknownFormatError
        If the encoding is not one of :data:`SUPPORTED_ENCODINGS`.
    CorruptImageError
        If the blob is cut short, its size disagrees with the message, or it does not decode.
    """
    encoding = info.get("encoding")
    n_slow, n_fast = _frame_shape(info, label)
    try:
        dtype = np.dtype(str(info.get("type"))).newbyteorder("<")
    except TypeError:
        raise CorruptImageError(f"{label}: unknown pixel type {info.get('type')!r}") from None
    size = info.get("size")
    if isinstance(size, int) and size != len(blob):
        raise CorruptImageError(f"{label}: pixel blob is {len(blob)} bytes, the message says {size}")
    if encoding == "<":
        expected = n_slow * n_fast * dtype.itemsize
        if len(blob) != expected:
            raise CorruptImageError(
                f"{label}: raw {dtype.name} blob is {len(blob)} bytes, expected {expected} for {n_fast}×{n_slow}"
            )
        return np.frombuffer(blob, dtype=dtype).reshape(n_slow, n_fast).astype(dtype.newbyteorder("="))
    m = _BITSHUFFLE_LZ4.fullmatch(str(encoding))
    if m is None:
        raise UnknownFormatError(
            f"{label}: unsupported pixel encoding {encoding!r}; expected one of {', '.join(SUPPORTED_ENCODINGS)}"
        )
    if int(m.group(1)) != dtype.itemsize * 8:
        raise CorruptImageError(f"{label}: encoding {encoding!r} does not match pixel type {dtype.name}")
    return decode_bitshuffle_chunk(blob, (n_slow, n_fast), dtype, cname="lz4", label=label)


def read_stream_header(path: Path, label: str = "") -> tuple[dict[str, Any], dict[str, Any], np.ndarray | None]:
    """Read a dumped "dheader-1.0" message.

    Parameters
    ----------
    path : Path
        The ``header`` file.
    label : str
        Names the image whose geometry is wanted, for error messages.

    Returns
    -------
    meta : dict
        The message's first part (``htype``, ``series``, ``acqID``, ``header_detail``).
    config : dict
        The detector configuration (SI units as DECTRIS writes them).
    pixel_mask : ndarray of uint32, shape (n_slow, n_fast), or None
        The "dpixelmask-1.0" part when the dump carries its payload.

    Raises
    ------
    GeometryError
        If the file is missing or holds no detector configuration.
    CorruptImageError
        If it is not a readable msgpack message.
    """
    prefix = f"{label}: " if label else ""
    if not path.is_file():
        raise GeometryError(f"{prefix}no stream header file {path} (the series' dheader-1.0 message) for the geometry")
    with open_maybe_compressed(path) as fh:
        raw = fh.read()
    message = _unpack_first(raw, path.name)
    if not (isinstance(message, list) and message and isinstance(message[0], dict)
            and str(message[0].get("htype", "")).startswith("dheader")):
        raise CorruptImageError(f"{path.name}: expected a dheader-1.0 msgpack message")
    if len(message) < 2 or not message[1]:
        raise GeometryError(
            f"{prefix}{path.name} holds no detector configuration "
            f"(header_detail {message[0].get('header_detail')!r}; 'basic' or 'all' is needed)"
        )
    config = _json_part(message[1], path.name, "the detector configuration")
    return message[0], config, _pixel_mask_part(message[2:], path.name)


def _pixel_mask_part(parts: list[Any], label: str) -> np.ndarray | None:
    """The "dpixelmask-1.0" payload following its JSON description, if it is there."""
    for i, part in enumerate(parts[:-1]):
        if not isinstance(part, (bytes, str)) or b"dpixelmask" not in (
                part.encode() if isinstance(part, str) else part):
            continue
        info = _json_part(part, label, "the pixel-mask description")
        payload = parts[i + 1]
        if not isinstance(payload, bytes) or not payload:
            return None
        n_slow, n_fast = _frame_shape(info, label)
        dtype = np.dtype(str(info.get("type", "uint32"))).newbyteorder("<")
        if len(payload) != n_slow * n_fast * dtype.itemsize:
            raise CorruptImageError(
                f"{label}: pixel mask is {len(payload)} bytes, expected {n_slow * n_fast * dtype.itemsize}"
            )
        return np.frombuffer(payload, dtype=dtype).reshape(n_slow, n_fast)
    return None


def _required(config: dict[str, Any], label: str, header: Path) -> dict[str, float]:
    values: dict[str, float] = {}
    missing = []
    for key in _REQUIRED_CONFIG:
        value = config.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values[key] = float(value)
        else:
            missing.append(key)
    if missing:
        raise GeometryError(f"{label}: stream header {header.name} lacks {', '.join(missing)}")
    return values


def _header_facts(meta: dict[str, Any], info: dict[str, Any], timing: dict[str, Any],
                  config: dict[str, Any]) -> dict[str, Any]:
    """Descriptive entries for DiffractionImage.header (names shared with the other readers)."""
    facts: dict[str, Any] = {
        "series": meta.get("series"),
        "frame": meta.get("frame"),
        "acq_id": meta.get("acqID"),
        "hash": meta.get("hash"),
        "encoding": info.get("encoding"),
    }
    renames = {"description": "detector_model", "detector_number": "serial_number",
               "data_collection_date": "date", "count_time": "exposure_s", "frame_time": "frame_time_s",
               "countrate_correction_count_cutoff": "count_cutoff", "photon_energy": "photon_energy_eV",
               "threshold_energy": "threshold_eV", "roi_mode": "roi_mode", "bit_depth_image": "bit_depth",
               "sensor_material": "material"}
    facts.update({new: config[old] for old, new in renames.items() if old in config})
    if isinstance(timing.get("real_time"), (int, float)):
        facts["real_time_s"] = timing["real_time"] * 1e-9
    return {k: v for k, v in facts.items() if v is not None}


class DectrisStreamReader(ImageReader):
    """One frame dumped from the DECTRIS EIGER stream interface ("dimage-1.0" msgpack message).

    Parameters
    ----------
    path : str or Path
        The frame file (e.g. ``image000044``).
    header_path : str or Path, optional
        The series' "dheader-1.0" dump; default ``header`` in the frame's folder.

    Raises
    ------
    CorruptImageError
        If the frame file does not exist.
    """

    name = "dectris_stream"
    priority = 10

    def __init__(self, path: str | Path, *, header_path: str | Path | None = None) -> None:
        super().__init__(path)
        self.header_path = Path(header_path) if header_path is not None else self.path.parent / "header"

    @classmethod
    def understand(cls, path: Path) -> bool:
        """A msgpack array whose first element is a map with ``htype`` "dimage…"."""
        head = read_head(path, 512)
        if not head or head[0] not in _MSGPACK_ARRAY_MARKERS:
            return False
        try:
            unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
            unpacker.feed(head)
            if unpacker.read_array_header() < 3:
                return False
            meta = unpacker.unpack()
            return isinstance(meta, dict) and str(meta.get("htype", "")).startswith("dimage")
        except Exception:
            return False

    @property
    def n_frames(self) -> int:
        return 1

    def _read_message(self) -> tuple[dict[str, Any], dict[str, Any], bytes, dict[str, Any]]:
        with open_maybe_compressed(self.path) as fh:
            raw = fh.read()
        message = _unpack_first(raw, self.path.name)
        if not (isinstance(message, list) and len(message) >= 3 and isinstance(message[0], dict)
                and str(message[0].get("htype", "")).startswith("dimage")):
            raise CorruptImageError(f"{self.path.name}: expected a dimage-1.0 msgpack array [meta, info, blob, …]")
        info = _json_part(message[1], self.path.name, "the image description")
        blob = message[2]
        if not isinstance(blob, (bytes, bytearray)):
            raise CorruptImageError(f"{self.path.name}: expected the pixel blob as bytes, found {type(blob).__name__}")
        timing = _json_part(message[3], self.path.name, "the timing part") if len(message) > 3 else {}
        return message[0], info, bytes(blob), timing

    def _read_frame(self, index: int) -> DiffractionImage:
        label = self.path.name
        meta, info, blob, timing = self._read_message()
        header_meta, config, header_mask = read_stream_header(self.header_path, label)
        if meta.get("series") is not None and header_meta.get("series") not in (None, meta.get("series")):
            raise GeometryError(
                f"{label}: frame of series {meta.get('series')}, but {self.header_path} belongs to series "
                f"{header_meta.get('series')}"
            )
        pixels = decode_stream_pixels(blob, info, label)
        detector, beam, undefined = _stream_geometry(config, pixels, label, self.header_path)
        gaps = detector.gap_mask()
        if header_mask is not None:
            if header_mask.shape != gaps.shape:
                raise GeometryError(
                    f"{label}: header pixel mask has shape {header_mask.shape}, the frame {gaps.shape}"
                )
            gaps = gaps | (header_mask != 0)
        mask = trusted_mask(pixels, detector.trusted_range,
                            undefined_values=() if undefined is None else (undefined,), gap_mask=gaps)
        return DiffractionImage(
            pixels=pixels, mask=mask, detector=detector, beam=beam,
            beam_center_px=detector.beam_center_px(beam), path=self.path, frame=index,
            format=self.name, header=_header_facts(meta, info, timing, config),
        )


def _stream_geometry(
    config: dict[str, Any], pixels: np.ndarray, label: str, header: Path
) -> tuple[Detector, Beam, int | None]:
    """Detector, beam and undefined-pixel value from the detector configuration (SI units).

    Raises
    ------
    GeometryError
        If a required value is missing, absurd, or disagrees with the frame's size.
    """
    g = _required(config, label, header)
    n_slow, n_fast = pixels.shape
    announced = (config.get("x_pixels_in_detector"), config.get("y_pixels_in_detector"))
    if None not in announced and tuple(announced) != (n_fast, n_slow):
        raise GeometryError(
            f"{label}: header says {announced[0]}×{announced[1]} pixels (fast×slow), "
            f"the frame holds {n_fast}×{n_slow}"
        )
    undefined = undefined_pixel_value(pixels.dtype, config.get("bit_depth_image"))
    trusted = eiger_trusted_range(pixels.dtype, undefined=undefined,
                                  count_cutoff=config.get("countrate_correction_count_cutoff"))
    thickness_m = config.get("sensor_thickness")
    detector = eiger_detector(
        n_fast=n_fast, n_slow=n_slow,
        pixel_size_mm=(g["x_pixel_size"] * 1e3, g["y_pixel_size"] * 1e3),
        distance_mm=g["detector_distance"] * 1e3,
        beam_center_px=(g["beam_center_x"], g["beam_center_y"]),
        trusted_range=trusted,
        thickness_mm=float(thickness_m) * 1e3 if isinstance(thickness_m, (int, float)) else 0.0,
        material=str(config.get("sensor_material", "")),
        serial_number=str(config.get("detector_number", "")),
        name=str(config.get("description") or "eiger_stream"),
        label=label,
    )
    try:
        beam = Beam(wavelength_A=g["wavelength"])
    except GeometryError as exc:
        raise GeometryError(f"{label}: {exc}") from None
    return detector, beam, undefined
