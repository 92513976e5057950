"""Where reflections are recorded: rotation-series and still predictions for the shoebox simulator.

Conventions are those of :mod:`xrais.simulate.shoeboxes` (spindle +x, frames starting at
integer ``z``, data-array (fast, slow) pixel coordinates).
"""

from __future__ import annotations

import math

import numpy as np

from xrais.geometry import Beam, Detector
from xrais.simulate.crystal import Crystal
from xrais.simulate.mosaic import SPINDLE_AXIS
from xrais.simulate.shoebox_truth import sigma2_bound

__all__ = ["predict_rotation_reflections", "predict_still_reflections"]

# --------------------------------------------------------------------------- prediction
def _intersect(detector: Detector, s1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fast, slow) data-array coordinates and panel where rays ``s1`` (n, 3) meet the detector (nan, −1: miss)."""
    pos = np.full((len(s1), 2), np.nan)
    panel = np.full(len(s1), -1, dtype=np.int32)
    for idx, p in enumerate(detector.panels):
        n = p.normal
        along = s1 @ n
        dist = float(np.dot(p.origin_mm, n))
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(along * dist > 0, dist / np.where(along == 0, 1.0, along), np.nan)
        hit = t[:, None] * s1 - np.asarray(p.origin_mm)
        f = hit @ np.asarray(p.fast_axis) / p.pixel_size_mm[0]
        s = hit @ np.asarray(p.slow_axis) / p.pixel_size_mm[1]
        inside = (panel < 0) & np.isfinite(t) & (f >= 0) & (f < p.image_size[0]) & (s >= 0) & (s < p.image_size[1])
        pos[inside, 0] = f[inside] + p.array_offset_px[0]
        pos[inside, 1] = s[inside] + p.array_offset_px[1]
        panel[inside] = idx
    return pos, panel


def _miller_candidates(crystal: Crystal, d_min_A: float) -> tuple[np.ndarray, np.ndarray]:
    """All non-zero (h, k, l) with d ≥ d_min and |F| > 0, and their |F|."""
    real = crystal.real_space_matrix
    hmax = [int(math.floor(np.linalg.norm(real[i]) / d_min_A)) for i in range(3)]
    grids = np.meshgrid(*[np.arange(-m, m + 1) for m in hmax], indexing="ij")
    hkl = np.stack([g.ravel() for g in grids], axis=1)
    hkl = hkl[np.any(hkl != 0, axis=1)]
    hkl = hkl[np.linalg.norm(hkl @ crystal.A.T, axis=1) <= 1.0 / d_min_A]
    f = crystal.structure_factors.lookup(hkl[:, 0], hkl[:, 1], hkl[:, 2]).astype(np.float64)
    keep = f > 0
    return hkl[keep], f[keep]


def predict_rotation_reflections(crystal: Crystal, beam: Beam, detector: Detector, *, d_min_A: float,
                                 phi_start_deg: float, phi_range_deg: float) -> dict[str, np.ndarray]:
    """Reflections crossing the Ewald sphere while the crystal turns about the spindle (+x).

    S(φ) = R(φ)·A·h; it is on the sphere when 2 s₀·S + |S|² = 0, i.e. a·cos φ + b·sin φ = c with
    a = s₀·S⊥, b = s₀·(ê×S⊥), c = −|S|²/2 − s₀·S∥ (S∥, S⊥: parts along and across ê). Each
    reflection crosses twice per turn; the crossings with φ in [φ₀, φ₀ + range) that land on a
    panel are returned.

    Returns
    -------
    dict with ``miller_index`` (n, 3) int, ``phi_deg`` (n,), ``position_px`` (n, 2) (fast, slow),
    ``panel`` (n,), ``d_A`` (n,), ``F`` (n,), ``s1`` (n, 3) diffracted wave vector (Å⁻¹).
    """
    hkl, f_abs = _miller_candidates(crystal, d_min_A)
    e = np.asarray(SPINDLE_AXIS, dtype=float)
    k = 1.0 / beam.wavelength_A
    s0 = np.asarray(beam.direction) * k
    s = hkl @ crystal.A.T
    par = (s @ e)[:, None] * e[None, :]
    perp = s - par
    cross = np.cross(e[None, :], perp)
    a, b = perp @ s0, cross @ s0
    c = -0.5 * np.sum(s * s, axis=1) - par @ s0
    r = np.hypot(a, b)
    ok = (r > 0) & (np.abs(c) <= r)
    delta = np.arctan2(b, a)
    w = np.arccos(np.clip(c / np.where(r > 0, r, 1.0), -1.0, 1.0))
    rows, phis = [], []
    for sign in (1.0, -1.0):
        phi = np.degrees(delta + sign * w)
        phi = phi_start_deg + np.mod(phi - phi_start_deg, 360.0)
        sel = ok & (phi < phi_start_deg + phi_range_deg)
        rows.append(np.nonzero(sel)[0])
        phis.append(phi[sel])
    idx = np.concatenate(rows)
    phi = np.concatenate(phis)
    order = np.lexsort((idx, phi))
    idx, phi = idx[order], phi[order]
    ph = np.radians(phi)[:, None]
    s_rot = par[idx] + np.cos(ph) * perp[idx] + np.sin(ph) * cross[idx]
    s1 = s0[None, :] + s_rot
    pos, panel = _intersect(detector, s1)
    hit = panel >= 0
    idx = idx[hit]
    return {"miller_index": hkl[idx], "phi_deg": phi[hit], "position_px": pos[hit], "panel": panel[hit],
            "d_A": 1.0 / np.linalg.norm(s[idx], axis=1), "F": f_abs[idx], "s1": s1[hit]}


def predict_still_reflections(crystal: Crystal, beam: Beam, detector: Detector, d_min_A: float) -> dict[str, np.ndarray]:
    """Reflections near the Ewald sphere of a still (window: 5 σ of the widest Gaussian lattice point)."""
    hkl, f_abs = _miller_candidates(crystal, d_min_A)
    k = 1.0 / beam.wavelength_A
    s0 = np.asarray(beam.direction) * k
    s = hkl @ crystal.A.T
    v = s0[None, :] + s
    eps = np.linalg.norm(v, axis=1) - k
    width = 5.0 * math.sqrt(sigma2_bound(crystal)) + np.linalg.norm(s, axis=1) * math.radians(crystal.mosaic_spread_deg)
    near = np.abs(eps) <= width
    s1 = v[near] / np.linalg.norm(v[near], axis=1, keepdims=True) * k
    pos, panel = _intersect(detector, s1)
    hit = panel >= 0
    idx = np.nonzero(near)[0][hit]
    return {"miller_index": hkl[idx], "phi_deg": np.zeros(len(idx)), "position_px": pos[hit], "panel": panel[hit],
            "d_A": 1.0 / np.linalg.norm(s[idx], axis=1), "F": f_abs[idx], "s1": s1[hit]}
