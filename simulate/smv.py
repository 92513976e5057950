"""nanoBragg's image files: SMV (``-intfile``, ``-noisefile``), PGM (``-pgmfile``) and raw floats.

Conventions (PHYSICS.md §8): arrays are ``(slow, fast)``; files are slow-major, fast index
fastest. The SMV header is nanoBragg's: a ``{ KEY=value; … }`` block of 512 bytes padded with
spaces after ``}\\f``, little-endian unsigned 16-bit pixels. ``BEAM_CENTER_X`` / ``_Y`` hold
nanoBragg's ``-Xbeam`` / ``-Ybeam`` (mm; X along the slow axis), and the header also lists the
beam centre in the ADXV, MOSFLM, DENZO, XDS and DIALS conventions as nanoBragg does. One
deliberate difference: nanoBragg writes ``DIALS_ORIGIN=x,y,z`` without the closing ``;``,
which hides the next key (``XDS_ORGX``) from ``KEY=value;`` parsers; the ``;`` is written here.

Examples
--------
>>> import numpy as np
>>> img = np.array([[0.0, 1.0], [2.0, 4.0]], dtype=np.float32)
>>> intfile_pixels(img, scale=None, adc=40.0).tolist()
[[40, 13790], [27540, 55040]]
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from xrais.errors import ConfigError

__all__ = ["SMV_HEADER_BYTES", "roi_mask", "intfile_pixels", "intfile_scale", "pgm_pixels", "pgm_scale",
           "nanobragg_smv_header", "write_smv", "write_pgm", "write_floatfile"]

SMV_HEADER_BYTES = 512


def roi_mask(shape: tuple[int, int], roi: tuple[int, int, int, int] | None) -> np.ndarray:
    """Boolean (slow, fast) mask of the inclusive ROI (fast_min, fast_max, slow_min, slow_max)."""
    mask = np.zeros(shape, dtype=bool)
    if roi is None:
        mask[:] = True
        return mask
    f_lo, f_hi, s_lo, s_hi = (int(v) for v in roi)
    mask[max(0, s_lo): max(0, s_hi + 1), max(0, f_lo): max(0, f_hi + 1)] = True
    return mask


def intfile_scale(image: np.ndarray, scale: float | None = None, roi: tuple[int, int, int, int] | None = None) -> float:
    """nanoBragg's ``-intfile`` scale: ``scale`` if > 0, else 55000 / max (1 for an empty image)."""
    if scale is not None and scale > 0:
        return float(scale)
    values = np.asarray(image, dtype=np.float64)[roi_mask(image.shape, roi)]
    peak = float(values.max()) if values.size else 0.0
    return 55000.0 / peak if peak > 0 else 1.0


def intfile_pixels(image: np.ndarray, scale: float | None = None, adc: float = 40.0,
                   roi: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """uint16 pixels of the noiseless SMV image: floor(value·scale + adc + ½), clipped to 0–65535.

    Parameters
    ----------
    image : ndarray, shape (n_slow, n_fast), float32 — photons
    scale : float, optional
        Counts per photon; None or ≤ 0 gives :func:`intfile_scale`'s 55000/max.
    adc : float
        ADC offset (nanoBragg ``-adc``).
    roi : (fast_min, fast_max, slow_min, slow_max), optional
        Pixels outside stay 0.

    Returns
    -------
    ndarray, shape (n_slow, n_fast), uint16
    """
    s = intfile_scale(image, scale, roi)
    test = np.clip(np.asarray(image, dtype=np.float64) * s + adc, 0.0, 65535.0)
    # nanoBragg rounds with floorf(test + 0.5): the sum is rounded to float32 first.
    counts = np.floor((test + 0.5).astype(np.float32)).astype(np.uint16)
    counts[~roi_mask(image.shape, roi)] = 0
    return counts


def pgm_scale(image: np.ndarray, scale: float | None = None, int_scale: float = 1.0,
              roi: tuple[int, int, int, int] | None = None) -> float:
    """nanoBragg's PGM scale: ``scale`` if > 0, else 250/(5·rmsd) of the ROI (``int_scale`` if rmsd is 0)."""
    if scale is not None and scale > 0:
        return float(scale)
    values = np.asarray(image, dtype=np.float64)[roi_mask(image.shape, roi)]
    n = max(values.size, 2)
    rmsd = float(np.sqrt(np.sum((values - values.sum() / max(values.size, 1)) ** 2) / (n - 1)))
    return 250.0 / (5.0 * rmsd) if rmsd > 0 else float(int_scale)


def pgm_pixels(image: np.ndarray, scale: float, roi: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """uint8 PGM pixels: trunc(min(value·scale, 255)) inside the ROI, 0 outside."""
    test = np.minimum(np.asarray(image, dtype=np.float64) * scale, 255.0)
    out = np.clip(test, 0.0, 255.0).astype(np.uint8)
    out[~roi_mask(image.shape, roi)] = 0
    return out


def nanobragg_smv_header(*, n_fast: int, n_slow: int, pixel_mm: float, distance_mm: float, wavelength_A: float,
                         xbeam_mm: float, ybeam_mm: float, fbeam_mm: float, sbeam_mm: float, detsize_s_mm: float,
                         fclose_mm: float, sclose_mm: float, close_distance_mm: float,
                         dials_origin_mm: tuple[float, float, float], phi_deg: float, osc_deg: float,
                         twotheta_deg: float) -> dict[str, str]:
    """The SMV header nanoBragg writes, in its order, values formatted with C's ``%g``.

    ``fbeam_mm``/``sbeam_mm`` are the direct-beam position from the detector origin (outer
    corner of the first pixel) along fast/slow (nanoBragg's Fbeam/Sbeam), ``fclose_mm``/
    ``sclose_mm`` the foot of the perpendicular from the sample (XDS ORGX/ORGY = close/pixel + ½),
    ``dials_origin_mm`` the origin in the DIALS frame.
    """
    g = lambda v: "%g" % v  # noqa: E731 -- C printf %g, as nanoBragg
    return {
        "HEADER_BYTES": str(SMV_HEADER_BYTES), "DIM": "2", "BYTE_ORDER": "little_endian",
        "TYPE": "unsigned_short", "SIZE1": str(int(n_fast)), "SIZE2": str(int(n_slow)),
        "PIXEL_SIZE": g(pixel_mm), "DISTANCE": g(distance_mm), "WAVELENGTH": g(wavelength_A),
        "BEAM_CENTER_X": g(xbeam_mm), "BEAM_CENTER_Y": g(ybeam_mm),
        "ADXV_CENTER_X": g(fbeam_mm), "ADXV_CENTER_Y": g(detsize_s_mm - sbeam_mm),
        "MOSFLM_CENTER_X": g(sbeam_mm - 0.5 * pixel_mm), "MOSFLM_CENTER_Y": g(fbeam_mm - 0.5 * pixel_mm),
        "DENZO_X_BEAM": g(sbeam_mm), "DENZO_Y_BEAM": g(fbeam_mm),
        "DIALS_ORIGIN": ",".join(g(v) for v in dials_origin_mm),
        "XDS_ORGX": g(fclose_mm / pixel_mm + 0.5), "XDS_ORGY": g(sclose_mm / pixel_mm + 0.5),
        "CLOSE_DISTANCE": g(close_distance_mm), "PHI": g(phi_deg), "OSC_START": g(phi_deg),
        "OSC_RANGE": g(osc_deg), "TWOTHETA": g(twotheta_deg), "DETECTOR_SN": "000", "BEAMLINE": "fake",
    }


def write_smv(path: str | Path, pixels: np.ndarray, header: Mapping[str, str]) -> Path:
    """Write an SMV file: ``header`` as ``KEY=value;`` lines padded to 512 bytes, then uint16 pixels.

    Raises
    ------
    ConfigError
        Pixels that are not a 2-D uint16 array matching SIZE1 × SIZE2, or a header over 512 bytes.
    """
    data = np.asarray(pixels)
    if data.dtype != np.uint16 or data.ndim != 2:
        raise ConfigError(f"SMV pixels of dtype {data.dtype} and shape {data.shape}: expected 2-D uint16")
    if (int(header["SIZE1"]), int(header["SIZE2"])) != (data.shape[1], data.shape[0]):
        raise ConfigError(f"SMV header SIZE1×SIZE2 = {header['SIZE1']}×{header['SIZE2']} does not match "
                          f"pixels of shape (slow, fast) = {data.shape}")
    text = "{\n" + "".join(f"{key}={value};\n" for key, value in header.items()) + "}\f"
    raw = text.encode("ascii")
    if len(raw) > SMV_HEADER_BYTES:
        raise ConfigError(f"SMV header of {len(raw)} bytes: expected at most {SMV_HEADER_BYTES}")
    order = "<" if header.get("BYTE_ORDER", "little_endian").lower().startswith("little") else ">"
    path = Path(path)
    with open(path, "wb") as fh:
        fh.write(raw.ljust(SMV_HEADER_BYTES, b" "))
        fh.write(data.astype(order + "u2", copy=False).tobytes())
    return path


def write_pgm(path: str | Path, pixels: np.ndarray, scale: float) -> Path:
    """Write an 8-bit binary PGM (P5) with nanoBragg's ``# pixels scaled by`` comment."""
    data = np.asarray(pixels)
    if data.dtype != np.uint8 or data.ndim != 2:
        raise ConfigError(f"PGM pixels of dtype {data.dtype} and shape {data.shape}: expected 2-D uint8")
    path = Path(path)
    with open(path, "wb") as fh:
        fh.write(f"P5\n{data.shape[1]} {data.shape[0]}\n# pixels scaled by {scale:g}\n255\n".encode("ascii"))
        fh.write(data.tobytes())
    return path


def write_floatfile(path: str | Path, image: np.ndarray) -> Path:
    """Write nanoBragg's ``-floatfile``: raw little-endian float32, slow-major, no header.

    (nanoBragg writes native byte order, which is little-endian on x86-64 and ARM.)
    """
    path = Path(path)
    np.ascontiguousarray(image, dtype="<f4").tofile(path)
    return path
