"""Which reflections a render's spots can come from: lattice points within reach of an Ewald sphere.

A reflection h can light a pixel of orientation o and source j only if its reciprocal-lattice
point A_o·h lies within the lattice-transform radius r_tol of the Ewald sphere of j, and within
the largest scattering vector the detector sees (plus r_tol). :func:`reachable_reflections`
finds every such h for all orientations and sources at once: it tests the first orientation
and source with a shell widened by how far the others can move a point, and for each (h, k)
only the l where the line A·(h, k, l) can cross that shell.
"""

from __future__ import annotations

import math

import numba
import numpy as np

import xrais.numba_cache  # noqa: F401  (kernel caches follow every kernel source)

__all__ = ["reachable_reflections", "max_scattering"]


def max_scattering(panels: np.ndarray, extents: np.ndarray, sources: np.ndarray) -> float:
    """Largest |S| (Å⁻¹) any panel corner sees from any source.

    Parameters
    ----------
    panels : ndarray, shape (P, 12)
        :func:`xrais.simulate.kernel.panel_table` rows.
    extents : ndarray, shape (P, 2)
        Rendered fast and slow size of each panel (px; 0: not rendered).
    sources : ndarray, shape (J, 4)
        Incident unit vector and wavelength (Å) of each source.

    Returns
    -------
    float
    """
    used = extents[:, 0] > 0
    if not used.any():
        return 0.0
    p, ext = panels[used], extents[used].astype(np.float64)
    corners = np.array([(0, 0), (1, 0), (0, 1), (1, 1)], dtype=np.float64)  # × (n_fast, n_slow)
    f = corners[None, :, 0] * ext[:, None, 0] * p[:, None, 9]  # mm along fast, (panels, 4)
    s = corners[None, :, 1] * ext[:, None, 1] * p[:, None, 10]
    xyz = p[:, None, 0:3] + f[..., None] * p[:, None, 3:6] + s[..., None] * p[:, None, 6:9]
    d = (xyz / np.linalg.norm(xyz, axis=-1, keepdims=True)).reshape(-1, 3)
    s_len = np.linalg.norm(d[:, None, :] - sources[None, :, 0:3], axis=-1) / sources[None, :, 3]
    return float(s_len.max())


def _rotation_angle(m_ref: np.ndarray, m: np.ndarray) -> float:
    """Angle (rad) of the rotation taking the reciprocal basis of ``m_ref`` to that of ``m`` (real rows)."""
    rot = np.linalg.inv(m) @ m_ref
    return math.acos(max(-1.0, min(1.0, (float(np.trace(rot)) - 1.0) / 2.0)))


def reachable_reflections(plan, radius: float, s_max: float) -> np.ndarray:
    """Miller indices that may be within ``radius`` of an Ewald sphere of any orientation and source.

    |S_h| ≤ s_max + radius and |F| > 0; the Ewald test is made with the first orientation and
    source, widened by how far the others can move a point (θ·|S| for a rotation by θ, plus the
    change of the incident wave vector and of 1/λ).

    Parameters
    ----------
    plan : KernelPlan
        The render (orientations, sources, |F| grid).
    radius : float
        Lattice-transform radius (Å⁻¹) around each point (:func:`~xrais.simulate.spot_windows.lattice_extent`).
    s_max : float
        Largest |S| (Å⁻¹) the detector sees (:func:`max_scattering`).

    Returns
    -------
    ndarray, shape (n, 3), int64 — Miller indices
    """
    m_all, sources = plan.orientations, plan.sources
    a_ref = np.linalg.inv(m_all[0])
    real = np.asarray(m_all[0])
    reach = s_max + radius
    hmax = [int(math.floor(np.linalg.norm(real[i]) * reach)) + 1 for i in range(3)]
    theta = max(_rotation_angle(m_all[0], m) for m in m_all)
    k_in = sources[:, 0:3] / sources[:, 3:4]
    k_len = 1.0 / sources[:, 3]
    shift = float(np.max(np.linalg.norm(k_in - k_in[0], axis=1) + np.abs(k_len - k_len[0])))
    hkl = _candidates(np.array(hmax, dtype=np.int64), np.ascontiguousarray(a_ref), k_in[0].copy(), float(k_len[0]),
                      float(reach), float(radius + shift + 1e-12), float(theta))
    grid = plan.grid
    idx = hkl - np.asarray(plan.hkl_min)[None, :]
    inside = np.all((idx >= 0) & (idx < np.asarray(grid.shape)[None, :]), axis=1)
    f = np.full(len(hkl), float(plan.default_f))
    f[inside] = grid[idx[inside, 0], idx[inside, 1], idx[inside, 2]]
    return np.ascontiguousarray(hkl[f != 0.0])


@numba.njit(cache=True)
def _line_interval(p0, c, radius):
    """Parameters t with |p0 + t·c| ≤ radius: (t0, t1), empty when t0 > t1."""
    a = c[0] * c[0] + c[1] * c[1] + c[2] * c[2]
    b = p0[0] * c[0] + p0[1] * c[1] + p0[2] * c[2]
    q = p0[0] * p0[0] + p0[1] * p0[1] + p0[2] * p0[2] - radius * radius
    disc = b * b - a * q
    if disc < 0.0 or a == 0.0:
        return 1.0, -1.0
    root = math.sqrt(disc)
    return (-b - root) / a, (-b + root) / a


@numba.njit(cache=True)
def _candidates(hmax, a, k_in, k_len, reach, slack, theta):
    """Integer (h, k, l) with |A·h| ≤ reach and ||k_in + A·h| − k_len| ≤ slack + θ·|A·h|; (n, 3) int64.

    For each (h, k) only the l that the line A·(h, k, l) can have inside the sphere |S| ≤ reach
    and inside the shell k_len ± (slack + θ·reach) are tested (with one index of margin).
    """
    out = np.empty((1024, 3), dtype=np.int64)
    n = 0
    reach2 = reach * reach
    wide = slack + theta * reach
    c = np.array([a[0, 2], a[1, 2], a[2, 2]])
    s0 = np.empty(3)
    p0 = np.empty(3)
    for h in range(-hmax[0], hmax[0] + 1):
        for k in range(-hmax[1], hmax[1] + 1):
            for i in range(3):
                s0[i] = a[i, 0] * h + a[i, 1] * k
                p0[i] = s0[i] + k_in[i]
            t0, t1 = _line_interval(s0, c, reach)
            u0, u1 = _line_interval(p0, c, k_len + wide)
            lo = max(t0, u0)
            hi = min(t1, u1)
            if lo > hi:
                continue
            l_lo = max(-hmax[2], int(math.ceil(lo)) - 1)
            l_hi = min(hmax[2], int(math.floor(hi)) + 1)
            skip_lo, skip_hi = 1, 0  # l strictly inside the inner sphere k_len − wide
            if k_len > wide:
                v0, v1 = _line_interval(p0, c, k_len - wide)
                if v0 <= v1:
                    skip_lo, skip_hi = int(math.ceil(v0)) + 1, int(math.floor(v1)) - 1
            l = l_lo
            while l <= l_hi:
                if skip_lo <= l <= skip_hi:
                    l = skip_hi + 1
                    continue
                x = s0[0] + c[0] * l
                y = s0[1] + c[1] * l
                z = s0[2] + c[2] * l
                s2 = x * x + y * y + z * z
                if s2 <= reach2:
                    px, py, pz = x + k_in[0], y + k_in[1], z + k_in[2]
                    if abs(math.sqrt(px * px + py * py + pz * pz) - k_len) <= slack + theta * math.sqrt(s2):
                        if n == out.shape[0]:
                            grown = np.empty((2 * n, 3), dtype=np.int64)
                            grown[:n] = out
                            out = grown
                        out[n, 0], out[n, 1], out[n, 2] = h, k, l
                        n += 1
                l += 1
    return out[:n]
