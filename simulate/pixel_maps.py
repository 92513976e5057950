"""The smooth per-pixel maps of a detector geometry, computed once and cached.

Everything in an image that does not depend on the crystal varies slowly across the
detector and depends only on the beam and the detector: the solid angle Ω of each pixel,
the polarization factor P and sin θ/λ at its centre. :func:`pixel_maps` computes them for the
whole data array (the formulas of :func:`xrais.simulate.physics.solid_angle` and
:func:`~xrais.simulate.physics.polarization_factor`, in one parallel Numba pass over the panel
rows) and keeps the last few geometries, so that a series of images on one detector (a rotation
series, a fixed-distance training set, a benchmark) computes them once. The per-pixel formula,
:func:`pixel_omega_polar_stol`, and the kernel inputs (:func:`beam_geometry`, :func:`panel_rows`) are
shared with :func:`xrais.simulate.background.background_image`, which evaluates them inline.

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

import numba
import numpy as np

import xrais.numba_cache  # noqa: F401  (kernel caches follow every kernel source)
from xrais.geometry import Beam, Detector
from xrais.simulate.sources import polarization_axis

__all__ = ["PixelMaps", "pixel_maps", "clear_pixel_map_cache", "PIXEL_MAP_CACHE_SIZE", "beam_geometry", "panel_rows",
           "pixel_omega_polar_stol"]

#: Geometries kept (a PILATUS 6M costs 50 MB, an EIGER 16M 145 MB).
PIXEL_MAP_CACHE_SIZE = 2
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


def beam_geometry(beam: Beam) -> tuple[float, ...]:
    """The beam as the per-pixel formula wants it: (î, ê, b̂, K, λ) as 11 floats.

    î is the unit beam direction, ê the E-vector axis made exactly ⊥ î, b̂ = unit(ê × î) (so that
    ê = î × b̂), K = 2f − 1 the Kahn factor of the polarization fraction f and λ the wavelength (Å).
    """
    inc = np.asarray(beam.direction, dtype=np.float64)
    e_axis = polarization_axis(beam)
    b_axis = np.cross(e_axis, inc)
    b_axis /= np.linalg.norm(b_axis)
    e_axis = np.cross(inc, b_axis)
    kahn = 2.0 * beam.polarization_fraction - 1.0
    return (*map(float, inc), *map(float, e_axis), *map(float, b_axis), float(kahn), float(beam.wavelength_A))


def panel_rows(detector: Detector) -> tuple[np.ndarray, np.ndarray]:
    """The panels of ``detector`` as arrays for a kernel, and one task per panel row.

    Returns
    -------
    panels : ndarray, shape (n_panels, 14), float64
        Per panel: origin (mm), unit fast axis, unit slow axis (lab frame), fast and slow pixel
        size (mm), p_f·p_s·(close distance) (mm³), n_fast, and the array column of its pixel [0, 0].
    rows : ndarray, shape (n_rows, 3), int64
        (panel, slow row within the panel, row of the data array) of every panel row, panels in order.
    """
    panels = np.array([(*p.origin_mm, *p.fast_axis, *p.slow_axis, *p.pixel_size_mm, 0.0, p.image_size[0],
                        p.array_offset_px[0]) for p in detector.panels], dtype=np.float64).reshape(-1, 14)
    normal = np.cross(panels[:, 3:6], panels[:, 6:9])  # Panel.normal and Panel.distance_mm, for all panels
    close = np.abs(np.sum(panels[:, 0:3] * normal / np.linalg.norm(normal, axis=1)[:, None], axis=1))
    panels[:, 11] = panels[:, 9] * panels[:, 10] * close
    n_rows = np.array([p.image_size[1] for p in detector.panels], dtype=np.int64)
    first = np.repeat(np.cumsum(n_rows) - n_rows, n_rows)  # task of each panel's row 0
    r = np.arange(int(n_rows.sum()), dtype=np.int64) - first
    s0 = np.repeat(np.array([p.array_offset_px[1] for p in detector.panels], dtype=np.int64), n_rows)
    return panels, np.stack([np.repeat(np.arange(n_rows.size, dtype=np.int64), n_rows), r, s0 + r], axis=1)


@numba.njit(cache=True, error_model="numpy")
def pixel_omega_polar_stol(x, y, z, pixel_area_close, beam, polarization):
    """Ω·P (sr) and sin θ/λ (Å⁻¹) of a pixel centred at lab position (x, y, z) mm (Numba, float64).

    ``pixel_area_close`` is p_f·p_s·(close distance), mm³; ``beam`` the tuple of
    :func:`beam_geometry`; the formulas are those of the module docstring, with
    cos 2ψ·sin²2θ = (d·ê)² − (d·b̂)² for the unit direction d.
    """
    ix, iy, iz, ex, ey, ez, bx, by, bz, kahn, wavelength_A = beam
    inv_r = 1.0 / np.sqrt(x * x + y * y + z * z)
    weight = pixel_area_close * (inv_r * inv_r * inv_r)  # Ω
    cos2t = (x * ix + y * iy + z * iz) * inv_r
    if polarization:
        de = (x * ex + y * ey + z * ez) * inv_r
        db = (x * bx + y * by + z * bz) * inv_r
        weight *= 0.5 * (1.0 + cos2t * cos2t - kahn * (de * de - db * db))
    stol = np.sqrt(max(0.5 * (1.0 - cos2t), 0.0)) / wavelength_A
    return weight, stol


@numba.njit(cache=True, error_model="numpy")
def panel_row_maps(panels, p, r, beam, polarization, weight, stol):
    """Ω·P (sr) and sin θ/λ (Å⁻¹) of the pixel centres of row ``r`` of panel ``p``, into ``weight`` and ``stol``.

    ``panels`` is the array of :func:`panel_rows`; ``weight`` and ``stol`` hold at least the
    panel's n_fast float64 values; the formulas are :func:`pixel_omega_polar_stol`'s.
    """
    pf, area_close, nf = panels[p, 9], panels[p, 11], int(panels[p, 12])
    ox, oy, oz = panels[p, 0], panels[p, 1], panels[p, 2]
    fx, fy, fz = panels[p, 3], panels[p, 4], panels[p, 5]
    srow = (r + 0.5) * panels[p, 10]
    sx, sy, sz = srow * panels[p, 6], srow * panels[p, 7], srow * panels[p, 8]
    for f in range(nf):
        fcol = (f + 0.5) * pf
        weight[f], stol[f] = pixel_omega_polar_stol(ox + fcol * fx + sx, oy + fcol * fy + sy, oz + fcol * fz + sz,
                                                    area_close, beam, polarization)


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _fill_maps(omega_polar, stol, panels, rows, beam, polarization):
    """Write Ω·P and sin θ/λ of every panel pixel into the (n_slow, n_fast) maps, one task per panel row."""
    for t in numba.prange(rows.shape[0]):
        p, r, s_out = rows[t, 0], rows[t, 1], rows[t, 2]
        nf, f0 = int(panels[p, 12]), int(panels[p, 13])
        w = np.empty(nf)
        s = np.empty(nf)
        panel_row_maps(panels, p, r, beam, polarization, w, s)
        for f in range(nf):
            omega_polar[s_out, f0 + f] = w[f]
            stol[s_out, f0 + f] = s[f]


def _compute(beam: Beam, detector: Detector, polarization: bool) -> PixelMaps:
    omega_polar = np.zeros(detector.array_shape, dtype=np.float32)
    stol = np.zeros(detector.array_shape, dtype=np.float32)
    panels, rows = panel_rows(detector)
    _fill_maps(omega_polar, stol, panels, rows, beam_geometry(beam), bool(polarization))
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
    >>> from xrais.simulate.pixel_maps import pixel_maps  # (the kernels' module, under pytest too)
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
