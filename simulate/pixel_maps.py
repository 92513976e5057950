"""The smooth per-pixel maps of a detector geometry, computed once and cached.

Everything in an image that does not depend on the crystal varies slowly across the
detector and depends only on the beam and the detector: the solid angle Ω of each pixel,
the polarization factor P and sin θ/λ at its centre. :func:`pixel_maps` computes them for the
whole data array (the formulas of :func:`xrais.simulate.physics.solid_angle` and
:func:`~xrais.simulate.physics.polarization_factor`, vectorised) and keeps the last few
geometries, so that a series of images on one detector (a rotation series, a fixed-distance
training set, a benchmark) computes them once.

Conventions: Ω = p_f·p_s·(close distance)/R³ at the pixel centre (sr);
P = ½(1 + cos²2θ − K·cos 2ψ·sin²2θ) with Kahn factor K = 2f − 1; pixels of the data array that
belong to no panel have Ω·P = 0 and sin θ/λ = 0. Arrays are float32 (n_slow, n_fast) and
read-only (they are shared by every caller of the same geometry).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from xrais.geometry import Beam, Detector
from xrais.simulate.sources import polarization_axis

__all__ = ["PixelMaps", "pixel_maps", "clear_pixel_map_cache", "PIXEL_MAP_CACHE_SIZE"]

#: Geometries kept (a PILATUS 6M costs 50 MB, an EIGER 16M 145 MB).
PIXEL_MAP_CACHE_SIZE = 2
_CHUNK_PX = 1 << 20  # pixels per vectorised block
_cache: "OrderedDict[str, PixelMaps]" = OrderedDict()
_lock = threading.Lock()


@dataclass(frozen=True, eq=False)
class PixelMaps:
    """Smooth per-pixel quantities of one beam and detector.

    Attributes
    ----------
    omega_polar_sr : ndarray, shape (n_slow, n_fast), float32
        Solid angle × polarization factor at the pixel centre, sr (P = 1 without polarization).
    stol_per_A : ndarray, shape (n_slow, n_fast), float32
        sin θ / λ at the pixel centre, Å⁻¹.
    """

    omega_polar_sr: np.ndarray
    stol_per_A: np.ndarray


def _key(beam: Beam, detector: Detector, polarization: bool) -> str:
    b = beam.to_dict()
    geometry = {k: b.get(k) for k in ("wavelength_A", "direction", "polarization_fraction", "polarization_normal")}
    return json.dumps([geometry, detector.to_dict(), bool(polarization)], sort_keys=True)


def _compute(beam: Beam, detector: Detector, polarization: bool) -> PixelMaps:
    omega_polar = np.zeros(detector.array_shape, dtype=np.float32)
    stol = np.zeros(detector.array_shape, dtype=np.float32)
    inc = np.asarray(beam.direction, dtype=np.float64)
    e_axis = polarization_axis(beam)
    b_axis = np.cross(e_axis, inc)
    b_axis /= np.linalg.norm(b_axis)
    e_axis = np.cross(inc, b_axis)
    kahn = 2.0 * beam.polarization_fraction - 1.0
    for panel in detector.panels:
        nf, ns = panel.image_size
        pf, ps = panel.pixel_size_mm
        close = panel.distance_mm
        origin, fast, slow = (np.asarray(v, dtype=np.float64) for v in (panel.origin_mm, panel.fast_axis, panel.slow_axis))
        f0, s0 = panel.array_offset_px
        fcol = (np.arange(nf, dtype=np.float64) + 0.5)[None, :] * pf
        rows = max(1, _CHUNK_PX // nf)
        for r0 in range(0, ns, rows):
            srow = (np.arange(r0, min(ns, r0 + rows), dtype=np.float64) + 0.5)[:, None] * ps
            x, y, z = (origin[k] + fcol * fast[k] + srow * slow[k] for k in range(3))
            r2 = x * x + y * y + z * z
            r = np.sqrt(r2)
            weight = (pf * ps * close) / (r2 * r)  # Ω
            cos2t = (x * inc[0] + y * inc[1] + z * inc[2]) / r
            if polarization:
                de = (x * e_axis[0] + y * e_axis[1] + z * e_axis[2]) / r
                db = (x * b_axis[0] + y * b_axis[1] + z * b_axis[2]) / r
                weight *= 0.5 * (1.0 + cos2t * cos2t - kahn * (de * de - db * db))  # cos2ψ·sin²2θ = dE² − dB²
            block = np.s_[s0 + r0 : s0 + r0 + srow.shape[0], f0 : f0 + nf]
            omega_polar[block] = weight
            stol[block] = np.sqrt(np.clip(0.5 * (1.0 - cos2t), 0.0, None)) / beam.wavelength_A
    omega_polar.flags.writeable = False
    stol.flags.writeable = False
    return PixelMaps(omega_polar, stol)


def pixel_maps(beam: Beam, detector: Detector, *, polarization: bool = True) -> PixelMaps:
    """Ω·P and sin θ/λ of every pixel, from the cache when this geometry was seen recently.

    Parameters
    ----------
    beam : Beam
        Wavelength, direction and polarization (fraction f, normal); photon numbers are ignored.
    detector : Detector
        Panels in the lab frame.
    polarization : bool
        Include the polarization factor (False: P = 1).

    Returns
    -------
    PixelMaps
        Read-only float32 maps of shape ``detector.array_shape``.

    Examples
    --------
    >>> det = Detector.flat(image_size=(8, 8), pixel_size_mm=0.1, distance_mm=100, beam_center_px=(4, 4))
    >>> maps = pixel_maps(Beam(wavelength_A=1.0), det)
    >>> maps is pixel_maps(Beam(wavelength_A=1.0), det), f"{maps.omega_polar_sr.max():.2e}"
    (True, '1.00e-06')
    """
    key = _key(beam, detector, polarization)
    with _lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    maps = _compute(beam, detector, polarization)
    with _lock:
        _cache[key] = maps
        while len(_cache) > PIXEL_MAP_CACHE_SIZE:
            _cache.popitem(last=False)
    return maps


def clear_pixel_map_cache() -> None:
    """Forget every cached geometry (frees its memory)."""
    with _lock:
        _cache.clear()
