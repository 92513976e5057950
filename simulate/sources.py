"""Beam sources of a render: beam divergence × spectral dispersion, as nanoBragg samples them.

Divergence grid (PHYSICS.md §4): h = hstep·i − hrange/2 for i < hsteps (likewise v), with
hstep = hrange/(hsteps − 1); with the elliptical cut (default) a point is dropped when
4·[(h² − hstep²/4·(1 − hsteps mod 2))/hrange² + (same for v)] > 1.1. The source direction is
the upstream beam direction rotated about the E-vector axis by v, then about
unit(beam × E) by h. Wavelengths: λ_j = λ₀·(1 + dstep·j − dispersion/2),
dstep = dispersion/(steps − 1). Every source counts equally.
"""

from __future__ import annotations

import numpy as np

from xrais.geometry import Beam, rotation_matrix

__all__ = ["beam_sources", "polarization_axis"]


def polarization_axis(beam: Beam) -> np.ndarray:
    """Unit E-vector axis: perpendicular to the beam and to ``beam.polarization_normal``."""
    e = np.cross(beam.direction, beam.polarization_normal)
    return e / np.linalg.norm(e)


def _divergence_grid(range_rad: float, steps: int) -> np.ndarray:
    if steps <= 1 or range_rad <= 0:
        return np.zeros(1)
    step = range_rad / (steps - 1)
    return step * np.arange(steps) - range_rad / 2


def beam_sources(beam: Beam, *, divergence_steps: int = 1, dispersion_steps: int = 1, square_divergence: bool = False,
                 hdivergence_mrad: float | None = None, vdivergence_mrad: float | None = None) -> np.ndarray:
    """Incident directions and wavelengths, shape (n_sources, 4): î (unit, lab frame) and λ (Å).

    ``beam.divergence_mrad`` (full range, both directions unless h/v are given) is sampled on
    ``divergence_steps`` points per direction, ``beam.spectral_dispersion`` (Δλ/λ, full
    width) on ``dispersion_steps`` wavelengths.
    """
    hrange = 1e-3 * (beam.divergence_mrad if hdivergence_mrad is None else hdivergence_mrad)
    vrange = 1e-3 * (beam.divergence_mrad if vdivergence_mrad is None else vdivergence_mrad)
    hs = _divergence_grid(hrange, divergence_steps if hrange > 0 else 1)
    vs = _divergence_grid(vrange, divergence_steps if vrange > 0 else 1)
    hstep = hs[1] - hs[0] if hs.size > 1 else 0.0
    vstep = vs[1] - vs[0] if vs.size > 1 else 0.0
    b = np.asarray(beam.direction, dtype=float)
    e_axis = polarization_axis(beam)
    v_axis = np.cross(b, e_axis)
    v_axis /= np.linalg.norm(v_axis)
    directions = []
    for h in hs:
        for v in vs:
            if not square_divergence and hrange > 0 and vrange > 0:
                term = 4.0 * ((h * h - hstep * hstep / 4.0 * (1 - hs.size % 2)) / hrange**2
                              + (v * v - vstep * vstep / 4.0 * (1 - vs.size % 2)) / vrange**2)
                if term > 1.1:
                    continue
            upstream = -b
            upstream = rotation_matrix(e_axis, np.degrees(v)) @ upstream
            upstream = rotation_matrix(v_axis, np.degrees(h)) @ upstream
            directions.append(-upstream / np.linalg.norm(upstream))
    dispersion = beam.spectral_dispersion
    if dispersion_steps > 1 and dispersion > 0:
        dstep = dispersion / (dispersion_steps - 1)
        lams = beam.wavelength_A * (1.0 + dstep * np.arange(dispersion_steps) - dispersion / 2)
    else:
        lams = np.array([beam.wavelength_A])
    return np.array([[*d, lam] for d in directions for lam in lams], dtype=np.float64)
