"""Bragg spot positions from the orientation matrix (for tests and, later, shoeboxes).

A reflection h diffracts when its scattering vector S = A·h puts s₁ = s₀ + S on the Ewald
sphere (|s₁| = 1/λ, s₀ = î/λ). For a still, a reflection is kept when its excitation error
ε = |s₁| − 1/λ is within ``ewald_tolerance_per_A``; its spot is where the ray along s₁ meets a
panel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from xrais.errors import ConfigError
from xrais.geometry import Beam, Detector, rotation_matrix
from xrais.simulate.crystal import Crystal
from xrais.simulate.mosaic import SPINDLE_AXIS

__all__ = ["SpotList", "predict_spots", "default_ewald_tolerance"]


@dataclass(frozen=True)
class SpotList:
    """Predicted spots; every array has one entry per spot."""

    miller_index: np.ndarray
    """(n, 3) int — h, k, l"""
    position_px: np.ndarray
    """(n, 2) float — (fast, slow) continuous data-array coordinates"""
    panel: np.ndarray
    """(n,) int — panel index"""
    d_A: np.ndarray
    """(n,) float — d-spacing"""
    excitation_error_per_A: np.ndarray
    """(n,) float — |s₁| − 1/λ"""

    def __len__(self) -> int:
        return len(self.d_A)


def default_ewald_tolerance(crystal: Crystal) -> float:
    """Half-width (Å⁻¹) of a reflection in reciprocal space: 1/(N·edge) of the smallest domain edge.

    The mosaic spread widens each reflection by |S|·spread; that part is added per reflection.
    """
    return 1.0 / min(n * edge for n, edge in zip(crystal.n_cells, crystal.cell[:3]))


def predict_spots(
    crystal: Crystal,
    beam: Beam,
    detector: Detector,
    *,
    d_min_A: float,
    ewald_tolerance_per_A: float | None = None,
    phi_deg: float = 0.0,
) -> SpotList:
    """Reflections with d ≥ ``d_min_A`` near the Ewald sphere, and where they land.

    Parameters
    ----------
    crystal, beam, detector
        As for :func:`xrais.simulate.render`.
    d_min_A : float
        Resolution limit.
    ewald_tolerance_per_A : float, optional
        Largest |excitation error| kept; default :func:`default_ewald_tolerance` plus
        |S|·mosaic spread.
    phi_deg : float
        Spindle angle (about +x) applied to the crystal.

    Returns
    -------
    SpotList
    """
    if not d_min_A > 0:
        raise ConfigError(f"d_min {d_min_A!r} Å: expected > 0")
    a_mat = rotation_matrix(SPINDLE_AXIS, phi_deg) @ crystal.A
    real = np.linalg.inv(a_mat)
    hmax = [int(math.floor(np.linalg.norm(real[i]) / d_min_A)) for i in range(3)]
    grids = np.meshgrid(*[np.arange(-m, m + 1) for m in hmax], indexing="ij")
    hkl = np.stack([g.ravel() for g in grids], axis=1)
    hkl = hkl[np.any(hkl != 0, axis=1)]
    s = hkl @ a_mat.T
    s_len = np.linalg.norm(s, axis=1)
    keep = s_len <= 1.0 / d_min_A
    hkl, s, s_len = hkl[keep], s[keep], s_len[keep]
    k = 1.0 / beam.wavelength_A
    s1 = np.asarray(beam.direction) * k + s
    s1_len = np.linalg.norm(s1, axis=1)
    eps = s1_len - k
    tol = (default_ewald_tolerance(crystal) if ewald_tolerance_per_A is None else ewald_tolerance_per_A) + s_len * math.radians(
        crystal.mosaic_spread_deg)
    near = np.abs(eps) <= tol
    hkl, s1, s_len, eps = hkl[near], s1[near], s_len[near], eps[near]
    out_hkl, out_pos, out_panel, out_d, out_eps = [], [], [], [], []
    for idx, p in enumerate(detector.panels):
        n = p.normal
        along = s1 @ n
        dist = float(np.dot(p.origin_mm, n))
        ok = along * dist > 0
        t = np.where(ok, dist / np.where(along == 0, 1.0, along), np.nan)
        hit = t[:, None] * s1 - np.asarray(p.origin_mm)
        f = hit @ np.asarray(p.fast_axis) / p.pixel_size_mm[0]
        sl = hit @ np.asarray(p.slow_axis) / p.pixel_size_mm[1]
        inside = ok & (f >= 0) & (f < p.image_size[0]) & (sl >= 0) & (sl < p.image_size[1])
        out_hkl.append(hkl[inside])
        out_pos.append(np.stack([f[inside] + p.array_offset_px[0], sl[inside] + p.array_offset_px[1]], axis=1))
        out_panel.append(np.full(int(inside.sum()), idx))
        out_d.append(1.0 / s_len[inside])
        out_eps.append(eps[inside])
    return SpotList(
        miller_index=np.concatenate(out_hkl).astype(int).reshape(-1, 3),
        position_px=np.concatenate(out_pos).reshape(-1, 2),
        panel=np.concatenate(out_panel).astype(int),
        d_A=np.concatenate(out_d),
        excitation_error_per_A=np.concatenate(out_eps),
    )
