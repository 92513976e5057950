"""Crystal orientations of a render: spindle (phi) steps × mosaic domains.

Mosaic domains are drawn as nanoBragg draws them (``mosaic_rotation_umat``, PHYSICS.md §5):
per domain three uniform deviates r₁, r₂, r₃ = 2·ran1 − 1 give the axis
(√(1−r₂²)·sin πr₁, √(1−r₂²)·cos πr₁, r₂) — uniform on the sphere — and the angle
ρ = spread·(1 − r₃²)^⅓ (float32, so at most the spread, median 0.91·spread); domain 0 is
the unrotated crystal. nanoBragg works in its own frame (beam along +x); the rotations are
drawn there and carried into the xrais lab frame by :data:`NANOBRAGG_TO_LAB`, so a seed gives
the very domains nanoBragg would.
"""

from __future__ import annotations

import math

import numpy as np

from xrais.geometry import rotation_matrix
from xrais.simulate.ran1 import ran1, ran1_state

__all__ = ["NANOBRAGG_TO_LAB", "mosaic_rotations", "phi_angles_deg", "orientation_matrices"]

#: Rotation taking nanoBragg's MOSFLM-convention lab vectors (beam +x, fast +z, slow −y,
#: spindle +z, E-vector +z) into the xrais/dxtbx lab frame (beam −z, spindle +x): x' = z, y' = y, z' = −x.
NANOBRAGG_TO_LAB = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])

#: The spindle axis in the xrais lab frame (+x, as dxtbx's goniometer; nanoBragg's +z).
SPINDLE_AXIS = (1.0, 0.0, 0.0)


def mosaic_rotations(spread_deg: float, n_domains: int, seed: int = 12345678) -> np.ndarray:
    """Rotation matrices of ``n_domains`` mosaic domains in the lab frame, shape (n, 3, 3).

    Examples
    --------
    >>> u = mosaic_rotations(0.5, 3, seed=12345678)
    >>> u.shape, bool(np.allclose(u[0], np.eye(3)))
    ((3, 3, 3), True)
    """
    state = ran1_state(-abs(int(seed)))
    spread = np.float32(math.radians(spread_deg))
    t = NANOBRAGG_TO_LAB
    out = np.empty((n_domains, 3, 3))
    for d in range(n_domains):
        r1 = 2.0 * float(ran1(state)) - 1.0
        r2 = 2.0 * float(ran1(state)) - 1.0
        r3 = 2.0 * float(ran1(state)) - 1.0
        if d == 0 or spread == 0:
            out[d] = np.eye(3)
            continue
        s = math.sqrt(1.0 - r2 * r2)
        axis = (s * math.sin(math.pi * r1), s * math.cos(math.pi * r1), r2)
        rho = np.float32(spread * np.power(np.float32(1.0 - r3 * r3), np.float32(1.0 / 3.0)))
        u_nb = rotation_matrix(axis, math.degrees(float(rho)))
        out[d] = t @ u_nb @ t.T
    return out


def phi_angles_deg(phi_start_deg: float = 0.0, osc_deg: float = 0.0, phi_steps: int = 1) -> np.ndarray:
    """Spindle angles of the sub-steps: φ₀ + t·osc/steps, t = 0 … steps−1 (start of each sub-step)."""
    if phi_steps < 1:
        raise ValueError(f"phi steps: expected ≥ 1, got {phi_steps}")
    return phi_start_deg + np.arange(phi_steps) * (osc_deg / phi_steps)


def orientation_matrices(real_space: np.ndarray, phis_deg: np.ndarray, domains: np.ndarray,
                         spindle_axis=SPINDLE_AXIS) -> np.ndarray:
    """Real-space matrices (rows a, b, c in Å) for every phi step × domain, shape (n, 3, 3).

    Each real vector is turned about the spindle by φ, then by the domain rotation U:
    a' = U·R(φ)·a, so the rows become M·(U·R(φ))ᵀ.
    """
    mats = []
    for phi in phis_deg:
        r_phi = rotation_matrix(spindle_axis, float(phi))
        for u in domains:
            mats.append(real_space @ (u @ r_phi).T)
    return np.ascontiguousarray(np.array(mats, dtype=np.float64))
