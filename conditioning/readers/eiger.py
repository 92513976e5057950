"""Helpers shared by the EIGER readers (NXmx HDF5 files and DECTRIS stream frames).

Bitshuffle-compressed chunks (HDF5 filter 32008) are decoded by hdf5plugin's filter, but their
block framing is checked first (:func:`check_bitshuffle_chunk`): the filter trusts the
per-block lengths and reads past a truncated or damaged chunk, which would crash the process
instead of raising. DECTRIS stream frames carry their pixels as exactly such chunks.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import re
import struct
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin
import numpy as np

from xrais.errors import CorruptImageError, GeometryError
from xrais.geometry import Detector, catalog_entry_for_shape

__all__ = [
    "BITSHUFFLE_FILTER_ID",
    "check_bitshuffle_chunk",
    "decode_bitshuffle_chunk",
    "undefined_pixel_value",
    "eiger_trusted_range",
    "eiger_detector",
    "master_for_data_file",
    "DATA_FILE_NAME",
    "h5_reason",
]

log = logging.getLogger(__name__)

#: HDF5 filter id of bitshuffle (with optional LZ4 or Zstandard compression).
BITSHUFFLE_FILTER_ID = 32008

#: ``<prefix>_data_NNNNNN.h5``: an EIGER data file (the master is ``<prefix>_master.h5``).
DATA_FILE_NAME = re.compile(r"(?P<prefix>.+)_data_\d+(?P<ext>\.[A-Za-z0-9]+)")
_core_file_ids = itertools.count()


def h5_reason(exc: BaseException) -> str:
    """The first line of an h5py/HDF5 message, without the C call-stack prefixes."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = text.replace("Unable to synchronously open file ", "").replace("Unable to open file ", "")
    return text[1:-1] if text.startswith("(") and text.endswith(")") else text


# --------------------------------------------------------------------------- bitshuffle chunks


def check_bitshuffle_chunk(blob: bytes, nbytes: int, itemsize: int) -> None:
    """Check the framing of a bitshuffle-compressed chunk without decoding it.

    The layout is that of HDF5 filter 32008 with LZ4 or Zstandard: an 8-byte big-endian
    uncompressed size in bytes, a 4-byte big-endian block size in bytes, then per block a
    4-byte big-endian compressed length and that many bytes, and finally the
    ``n_elements mod 8`` trailing elements stored raw.

    Parameters
    ----------
    blob : bytes
        The compressed chunk.
    nbytes : int
        Expected uncompressed size in bytes.
    itemsize : int
        Bytes per element (2 for uint16).

    Raises
    ------
    ValueError
        Naming the first inconsistency (short header, wrong size, a block running past the end).
    """
    size = len(blob)
    if size < 12:
        raise ValueError(f"compressed chunk is {size} bytes, shorter than its 12-byte header")
    total, block_bytes = struct.unpack_from(">QI", blob, 0)
    if total != nbytes:
        raise ValueError(f"chunk header says {total} bytes uncompressed, expected {nbytes}")
    if block_bytes == 0 or block_bytes % (8 * itemsize):
        raise ValueError(f"chunk block size {block_bytes} bytes is not a positive multiple of {8 * itemsize}")
    n_full, rest = divmod(total // itemsize, block_bytes // itemsize)
    n_blocks = n_full + (1 if rest - rest % 8 else 0)
    pos = 12
    for i in range(n_blocks):
        if pos + 4 > size:
            raise ValueError(f"chunk cut short: {size} bytes end inside block {i + 1} of {n_blocks}")
        (length,) = struct.unpack_from(">I", blob, pos)
        pos += 4 + length
        if pos > size:
            raise ValueError(
                f"chunk cut short: block {i + 1} of {n_blocks} needs {length} bytes, past the end at {size}"
            )
    if pos + (rest % 8) * itemsize > size:
        raise ValueError(f"chunk cut short: {size} bytes, its blocks need {pos + (rest % 8) * itemsize}")


def decode_bitshuffle_chunk(
    blob: bytes, shape: tuple[int, ...], dtype: Any, *, cname: str = "lz4", label: str = "chunk"
) -> np.ndarray:
    """Decode one bitshuffle chunk with hdf5plugin's filter, after checking its framing.

    The chunk is written as the single chunk of a dataset in an in-memory HDF5 file and read
    back, so the maintained codec does the work.

    Parameters
    ----------
    blob : bytes
        The compressed chunk (HDF5 filter 32008 layout).
    shape : tuple of int
        Array shape, e.g. (n_slow, n_fast).
    dtype : numpy dtype-like
        Element type (``"<u2"`` for ``bs16-lz4<``).
    cname : {"lz4", "zstd"}
        The compressor behind the bitshuffle.
    label : str
        Names the input in error messages (file, frame).

    Returns
    -------
    ndarray, shape ``shape``, dtype ``dtype`` (native byte order)

    Raises
    ------
    CorruptImageError
        If the chunk is cut short, mis-framed or does not decompress.
    """
    dtype = np.dtype(dtype)
    try:
        check_bitshuffle_chunk(blob, math.prod(shape) * dtype.itemsize, dtype.itemsize)
    except ValueError as exc:
        raise CorruptImageError(f"{label}: {exc}") from None
    name = f"xrais-bitshuffle-{os.getpid()}-{next(_core_file_ids)}.h5"
    try:
        with h5py.File(name, "w", driver="core", backing_store=False) as f:
            ds = f.create_dataset("chunk", shape=shape, dtype=dtype, chunks=tuple(shape),
                                  **hdf5plugin.Bitshuffle(nelems=0, cname=cname))
            ds.id.write_direct_chunk((0,) * len(shape), bytes(blob))
            return ds[()]
    except (OSError, ValueError, RuntimeError) as exc:
        raise CorruptImageError(f"{label}: bitshuffle/{cname} data do not decode ({h5_reason(exc)})") from None


# --------------------------------------------------------------------------- EIGER conventions


def undefined_pixel_value(dtype: Any, bit_depth: int | None = None) -> int | None:
    """The count an EIGER writes for masked and gap pixels: all ones at the bit depth.

    Parameters
    ----------
    dtype : numpy dtype-like
        Pixel type as stored.
    bit_depth : int, optional
        ``bit_depth_image`` from the header, when it is narrower than the stored type.

    Returns
    -------
    int or None
        2**bits − 1 for unsigned data (65535, 4294967295), −1 for signed data of full width,
        ``None`` for floating-point data.

    Examples
    --------
    >>> undefined_pixel_value("uint16"), undefined_pixel_value("uint32"), undefined_pixel_value("int32")
    (65535, 4294967295, -1)
    """
    dt = np.dtype(dtype)
    bits = dt.itemsize * 8
    if dt.kind == "u":
        return 2 ** min(bit_depth or bits, bits) - 1
    if dt.kind == "i":
        return 2**bit_depth - 1 if bit_depth and bit_depth < bits else -1
    return None


def eiger_trusted_range(
    dtype: Any,
    *,
    undefined: int | None,
    count_cutoff: float | None = None,
    saturation_value: float | None = None,
    underload_value: float | None = None,
) -> tuple[float, float]:
    """Valid counts (inclusive) of an EIGER frame.

    Counts at or above ``count_cutoff`` are invalid; without a cutoff, counts above
    ``saturation_value`` (NeXus: "data is known to be invalid above this value"); without
    either, counts below the undefined value. Counts below ``underload_value`` (default 0 for
    integer data) are invalid.

    Returns
    -------
    (float, float)
        Lowest and highest valid count.
    """
    integer = np.dtype(dtype).kind in "iu"
    lo = float(underload_value) if underload_value is not None else (0.0 if integer else -math.inf)
    if count_cutoff:
        hi = float(count_cutoff) - 1.0
    elif saturation_value:
        hi = float(saturation_value)
    elif undefined is not None and undefined > 0:
        hi = float(undefined) - 1.0
    elif integer:
        hi = float(np.iinfo(np.dtype(dtype)).max)
    else:
        hi = math.inf
    return lo, hi


def eiger_detector(
    *,
    n_fast: int,
    n_slow: int,
    pixel_size_mm: tuple[float, float],
    distance_mm: float,
    beam_center_px: tuple[float, float],
    trusted_range: tuple[float, float],
    thickness_mm: float = 0.0,
    material: str = "",
    serial_number: str = "",
    name: str = "eiger",
    label: str = "",
) -> Detector:
    """The detector of an EIGER header: the catalog model whose array size and pixel pitch
    match (e.g. 4148×4362 @ 0.075 mm → ``eiger2_16m``), else one flat panel named ``name``.

    Parameters
    ----------
    n_fast, n_slow : int
        Array size in pixels.
    pixel_size_mm : (float, float)
        Pixel pitch (fast, slow) in mm.
    distance_mm : float
        Sample–detector distance in mm along the beam.
    beam_center_px : (float, float)
        (fast, slow) direct-beam position in pixels from the corner of pixel [0, 0].
    trusted_range : (float, float)
        Valid counts (inclusive).
    thickness_mm : float
        Sensor thickness in mm (0 when unknown).
    material : str
        Sensor material.
    serial_number : str
        Detector serial number.
    name : str
        Name of a flat, non-catalog detector.
    label : str
        Names the input in error messages.

    Returns
    -------
    Detector

    Raises
    ------
    GeometryError
        If the distance, pixel size or beam centre is not finite and positive.
    """
    checks = {"detector distance (mm)": distance_mm, "x pixel size (mm)": pixel_size_mm[0],
              "y pixel size (mm)": pixel_size_mm[1]}
    for what, value in checks.items():
        if not (math.isfinite(value) and value > 0):
            raise GeometryError(f"{label}: {what} is {value!r}; expected a positive number")
    if not all(math.isfinite(v) for v in beam_center_px):
        raise GeometryError(f"{label}: beam centre {beam_center_px!r} px is not finite")
    extra: dict[str, Any] = {"trusted_range": trusted_range}
    if thickness_mm:
        extra.update(thickness_mm=thickness_mm, material=material or "Si")
    entry = catalog_entry_for_shape(n_fast, n_slow, pixel_size_mm[0])
    if entry is not None:
        return entry.build(distance_mm=distance_mm, beam_center_px=beam_center_px,
                           serial_number=serial_number, pixel_size_mm=pixel_size_mm, **extra)
    return Detector.flat(image_size=(n_fast, n_slow), pixel_size_mm=pixel_size_mm,
                         distance_mm=distance_mm, beam_center_px=beam_center_px, name=name,
                         serial_number=serial_number, **extra)


def master_for_data_file(path: Path) -> Path | None:
    """``<prefix>_master.h5`` beside ``<prefix>_data_NNNNNN.h5`` if it exists, else ``None``."""
    m = DATA_FILE_NAME.fullmatch(path.name)
    if m is None:
        return None
    master = path.with_name(f"{m['prefix']}_master{m['ext']}")
    return master if master.is_file() else None
