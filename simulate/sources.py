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

__all__ = ["beam_sources", "sample_sources", "polarization_axis"]


def polarization_axis(beam: Beam) -> np.ndarray:
    """Unit E-vector axis: perpendicular to the beam and to ``beam.polarization_normal``."""
    e = np.cross(beam.direction, beam.polarization_normal)
    return e / np.linalg.norm(e)


Sampling = tuple[float, float, int]  # (full range, step, number of samples)


def _sampling(range_: float, steps: int) -> Sampling:
    """(range, range/(steps − 1), steps), or a single sample for no range."""
    if steps <= 1 or range_ <= 0:
        return 0.0, 0.0, 1
    return range_, range_ / (steps - 1), steps


def sample_sources(direction, e_axis, wavelength_A: float, hdiv: Sampling, vdiv: Sampling, disp: Sampling,
                   elliptical: bool = True) -> np.ndarray:
    """Sources on a divergence grid × a wavelength grid, shape (n, 4): î (unit) and λ (Å).

    ``hdiv``/``vdiv`` = (range, step, samples) in radians about the axes unit(beam × ê) and ê;
    ``disp`` = (Δλ/λ range, step, samples). Order: horizontal, vertical, wavelength (the first
    source is the one nanoBragg evaluates polarization with).
    """
    b = np.asarray(direction, dtype=float)
    e = np.asarray(e_axis, dtype=float)
    v_axis = np.cross(b, e)
    v_axis /= np.linalg.norm(v_axis)
    (hr, hs, hn), (vr, vs, vn), (dr, ds, dn) = hdiv, vdiv, disp
    rows = []
    for ih in range(hn):
        for iv in range(vn):
            h, v = hs * ih - hr / 2.0, vs * iv - vr / 2.0
            if elliptical and hr > 0 and vr > 0:
                term = 4.0 * ((h * h - hs * hs / 4.0 * (1 - hn % 2)) / hr**2 + (v * v - vs * vs / 4.0 * (1 - vn % 2)) / vr**2)
                if term > 1.1:
                    continue
            upstream = rotation_matrix(e, np.degrees(v)) @ -b
            upstream = rotation_matrix(v_axis, np.degrees(h)) @ upstream
            incident = -upstream / np.linalg.norm(upstream)
            for j in range(dn):
                rows.append([*incident, wavelength_A * (1.0 + ds * j - dr / 2.0)])
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def beam_sources(beam: Beam, *, divergence_steps: int = 1, dispersion_steps: int = 1, square_divergence: bool = False,
                 hdivergence_mrad: float | None = None, vdivergence_mrad: float | None = None) -> np.ndarray:
    """Incident directions and wavelengths, shape (n_sources, 4): î (unit, lab frame) and λ (Å).

    ``beam.divergence_mrad`` (full range, both directions unless h/v are given) is sampled on
    ``divergence_steps`` points per direction, ``beam.spectral_dispersion`` (Δλ/λ, full
    width) on ``dispersion_steps`` wavelengths.
    """
    hrange = 1e-3 * (beam.divergence_mrad if hdivergence_mrad is None else hdivergence_mrad)
    vrange = 1e-3 * (beam.divergence_mrad if vdivergence_mrad is None else vdivergence_mrad)
    return sample_sources(beam.direction, polarization_axis(beam), beam.wavelength_A,
                          _sampling(hrange, divergence_steps), _sampling(vrange, divergence_steps),
                          _sampling(beam.spectral_dispersion, dispersion_steps), elliptical=not square_divergence)
