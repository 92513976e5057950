"""Where a render's Bragg spots can be: per orientation, source and reflection, the pixels worth computing.

For one orientation o (a phi step × mosaic domain) and one source j, a pixel's intensity is
|F(h₀)|²·F_latt²(h) with h₀ the integer index nearest to its fractional index h. F_latt² falls
below ``tolerance`` × its peak once h − h₀ leaves a region around 0 that depends only on the
shape, the cell counts N and ``fudge`` (:func:`lattice_extent`). In reciprocal space that region
lies within a radius r_tol of the lattice point, so a pixel can only matter if its scattering
vector is within r_tol of a reciprocal-lattice point: the reflections within r_tol of the Ewald
sphere of source j, and on it the cap within r_tol of each. The cap is projected onto every panel
and its pixel bounding box is a window (:func:`spot_windows`).

Every term of a pixel belongs to one reflection, its h₀, so windows need no merging: a kernel
adds, in the window of reflection h, only the terms whose h₀ is h
(:func:`xrais.simulate.physics.spot_pixel_value`). Where windows of two reflections overlap
each term is still counted once, and every term above ``tolerance`` lies in the window of its
own reflection: the sum is the brute-force sum less the neglected tails.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

import xrais.numba_cache  # noqa: F401  (kernel caches follow every kernel source)
from xrais.errors import ConfigError
from xrais.simulate.physics import (
    SHAPE_GAUSS,
    SHAPE_GAUSS_2022,
    SHAPE_ROUND,
    SHAPE_SQUARE,
    SHAPE_TOPHAT,
    SHAPE_TOPHAT_2022,
)
from xrais.simulate.spot_reflections import max_scattering, reachable_reflections

__all__ = ["lattice_extent", "spot_windows", "SpotWindows", "WINDOW_COLUMNS", "row_table"]

#: Columns of a window table: orientation, source, panel, fast start, fast end, slow start,
#: slow end (ends exclusive, panel pixels), reflection (row of :attr:`SpotWindows.miller_index`).
WINDOW_COLUMNS = ("orientation", "source", "panel", "fast_lo", "fast_hi", "slow_lo", "slow_hi", "reflection")
_POLYGON_SIDES = 12  # the cap outline is circumscribed by a regular polygon of this many sides
_BOXES_PER_CHUNK = 1 << 20  # (orientation × source, reflection, plane) boxes held at once


@dataclass(frozen=True)
class SpotWindows:
    """The pixel windows of a render and the reflections they belong to.

    Attributes
    ----------
    miller_index : ndarray, shape (n_reflections, 3), int64
        Reflections that may reach a window.
    windows : ndarray, shape (n_windows, 8), int64
        One row per (orientation, source, reflection, panel): :data:`WINDOW_COLUMNS`.
    row_table : ndarray, shape (n_panels, n_rows, 4), int64
        Per panel row: fast start and end to render (end 0: row not rendered), output row and
        output fast offset (:func:`row_table`).
    """

    miller_index: np.ndarray
    windows: np.ndarray
    row_table: np.ndarray

    def __len__(self) -> int:
        return len(self.windows)

    @property
    def pixel_terms(self) -> int:
        """(pixel, orientation, source) terms the windows hold (the brute-force render has pixels × those)."""
        w = self.windows
        return int(((w[:, 4] - w[:, 3]) * (w[:, 6] - w[:, 5])).sum()) if len(w) else 0


def _sinc3_radius(tolerance: float) -> float:
    """Smallest x beyond which sinc3(x)² < tolerance, from |sinc3(x)| ≤ 3(1 + 1/x)/x²."""
    target = math.sqrt(tolerance)
    lo, hi = 1e-6, 1e6
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if 3.0 * (1.0 + 1.0 / mid) / (mid * mid) < target:
            hi = mid
        else:
            lo = mid
    return hi


def lattice_extent(shape: int, n_cells, fudge: float, tolerance: float, a0: np.ndarray) -> float:
    """Reciprocal-space radius (Å⁻¹) around a lattice point outside which F_latt²/peak < ``tolerance``.

    The offsets h − h₀ are at most ½ per axis (h₀ is the nearest integer), so each axis is
    capped at ½; square shapes use the sinc envelope 1/(2N|x|) per axis (the product is below
    every factor), round the envelope of sinc3 and, since its slow 1/x⁴ tail would otherwise
    carry a noticeable share of the photons, at least the x beyond which a plane through the
    centre holds less than ``tolerance`` of the transform (≈ 1/x², x = π·N-scaled radius),
    gauss/tophat (2022) an ellipsoid of N-scaled radius ρ, and gauss/tophat (2023+) a sphere of
    radius ρ/(NaNbNc) in Å⁻¹.
    """
    n = np.array([max(1.0, float(v)) for v in n_cells])
    a0 = np.asarray(a0, dtype=float)
    half = np.full(3, 0.5)
    if not tolerance > 0 or not fudge > 0:
        delta, ellipsoid, sphere = half, None, None
    else:
        ellipsoid = sphere = None
        if shape == SHAPE_SQUARE:
            delta = np.where(n > 1.0, np.minimum(0.5, 1.0 / (2.0 * n * math.sqrt(tolerance))), 0.5)
        else:
            if shape == SHAPE_ROUND:  # also: a plane through the centre holds < tolerance beyond x (≈ 1/x²)
                x_tol = max(_sinc3_radius(tolerance), 1.0 / math.sqrt(tolerance))
                rho = x_tol / (math.pi * math.sqrt(fudge))
            elif shape in (SHAPE_GAUSS, SHAPE_GAUSS_2022):
                rho = math.sqrt(0.63 * math.log(1.0 / min(tolerance, 1.0)) / (2.0 * fudge)) if tolerance < 1 else 0.0
            elif shape in (SHAPE_TOPHAT, SHAPE_TOPHAT_2022):
                rho = math.sqrt(0.3969 / fudge)
            else:
                rho = math.inf
            rho *= 1.0 + 1e-9
            if shape in (SHAPE_GAUSS, SHAPE_TOPHAT):  # sphere in Å⁻¹
                sphere = rho / float(np.prod(n))
                real = np.linalg.inv(a0)  # rows a, b, c: |Δh_i| ≤ |row i|·r
                delta = np.minimum(0.5, np.linalg.norm(real, axis=1) * sphere)
            else:
                delta = np.minimum(0.5, rho / n)
                ellipsoid = rho
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=float)
    radius = float(np.max(np.linalg.norm((signs * delta) @ a0.T, axis=1)))
    if ellipsoid is not None:  # {Σ(Δh_i N_i/ρ)² ≤ 1}: largest |A·Δh| is ρ·σ_max(A·diag(1/N))
        radius = min(radius, ellipsoid * float(np.linalg.norm(a0 / n[None, :], 2)))
    if sphere is not None:
        radius = min(radius, sphere)
    return radius


def row_table(rows: np.ndarray, n_panels: int) -> np.ndarray:
    """Per (panel, slow): fast range to render and output placement, from a plan's rows; (P, S, 4) int64."""
    max_s = int(rows[:, 1].max()) + 1 if len(rows) else 1
    table = np.zeros((n_panels, max_s, 4), dtype=np.int64)  # f_lo, f_hi (0: row absent), out_s, out_f0
    table[rows[:, 0], rows[:, 1]] = rows[:, 2:6]
    return table


def _panel_groups(panels: np.ndarray, extents: np.ndarray) -> list[list[int]]:
    """Panels sharing a plane, axes and pitch (their projections differ by a shift only)."""
    normal = np.cross(panels[:, 3:6], panels[:, 6:9])
    plane_offset = np.einsum("ij,ij->i", panels[:, 0:3], normal)
    keys = np.round(np.column_stack([panels[:, 3:9], plane_offset, panels[:, 9:11]]), 6)
    groups: dict[tuple, list[int]] = {}
    for p in np.nonzero(extents[:, 0] > 0)[0]:
        groups.setdefault(tuple(keys[p]), []).append(int(p))
    return list(groups.values())


@numba.njit(parallel=True, cache=True)
def _cap_boxes(hkl, a_all, sources, radius, planes, q0, boxes, status):
    """Bounding boxes, in each plane's pixels, of the caps of (orientation × source) q0 + i and every reflection.

    ``planes[g]`` = origin xyz, fast xyz, slow xyz, pitch f, s of the first panel of group g.
    The cap of the sphere within ``radius`` of a point is a cone of directions; a polygon
    circumscribing its outline is projected onto each plane. ``status[i, r, g]``: 0 the cap
    misses plane g, 1 ``boxes[i, r, g]`` = (f_lo, f_hi, s_lo, s_hi) holds it, 2 it may cover
    the whole plane (the cap crosses the plane's horizon).
    """
    n_sides = _POLYGON_SIDES
    widen = 1.0 / math.cos(math.pi / n_sides)
    cos_q = np.empty(n_sides)
    sin_q = np.empty(n_sides)
    for q in range(n_sides):
        cos_q[q] = math.cos(2.0 * math.pi * q / n_sides)
        sin_q[q] = math.sin(2.0 * math.pi * q / n_sides)
    n_groups = planes.shape[0]
    n_sources = sources.shape[0]
    horizon = math.radians(80.0)
    for i in numba.prange(status.shape[0]):
        o = (q0 + i) // n_sources
        j = (q0 + i) % n_sources
        a = a_all[o]
        k = 1.0 / sources[j, 3]
        kx, ky, kz = sources[j, 0] * k, sources[j, 1] * k, sources[j, 2] * k
        for r in range(hkl.shape[0]):
            for g in range(n_groups):
                status[i, r, g] = 0
            h, kk, l = hkl[r, 0], hkl[r, 1], hkl[r, 2]
            px = a[0, 0] * h + a[0, 1] * kk + a[0, 2] * l + kx
            py = a[1, 0] * h + a[1, 1] * kk + a[1, 2] * l + ky
            pz = a[2, 0] * h + a[2, 1] * kk + a[2, 2] * l + kz
            pl = math.sqrt(px * px + py * py + pz * pz)
            if abs(pl - k) > radius or pl == 0.0:
                continue
            cos_half = min(1.0, max(-1.0, (k * k + pl * pl - radius * radius) / (2.0 * k * pl)))
            half = math.acos(cos_half)
            unbounded = half > horizon
            cx, cy, cz = px / pl, py / pl, pz / pl
            # two unit vectors perpendicular to the cone axis
            if abs(cx) < 0.9:
                ux, uy, uz = 0.0, cz, -cy
            else:
                ux, uy, uz = -cz, 0.0, cx
            un = math.sqrt(ux * ux + uy * uy + uz * uz)
            ux, uy, uz = ux / un, uy / un, uz / un
            vx, vy, vz = cy * uz - cz * uy, cz * ux - cx * uz, cx * uy - cy * ux
            t = math.tan(half) * widen if not unbounded else 0.0
            for g in range(n_groups):
                ox, oy, oz = planes[g, 0], planes[g, 1], planes[g, 2]
                fx, fy, fz = planes[g, 3], planes[g, 4], planes[g, 5]
                sx, sy, sz = planes[g, 6], planes[g, 7], planes[g, 8]
                nx, ny, nz = fy * sz - fz * sy, fz * sx - fx * sz, fx * sy - fy * sx
                dist = ox * nx + oy * ny + oz * nz
                centre_hit = (cx * nx + cy * ny + cz * nz) * dist > 0
                full = unbounded
                any_hit = False
                f_lo, f_hi, s_lo, s_hi = 1e300, -1e300, 1e300, -1e300
                if not unbounded:
                    for q in range(n_sides):
                        dx = cx + t * (cos_q[q] * ux + sin_q[q] * vx)
                        dy = cy + t * (cos_q[q] * uy + sin_q[q] * vy)
                        dz = cz + t * (cos_q[q] * uz + sin_q[q] * vz)
                        along = dx * nx + dy * ny + dz * nz
                        if along * dist <= 0:
                            full = True
                            continue
                        any_hit = True
                        sc = dist / along
                        hx, hy, hz = sc * dx - ox, sc * dy - oy, sc * dz - oz
                        f = (hx * fx + hy * fy + hz * fz) / planes[g, 9]
                        s_ = (hx * sx + hy * sy + hz * sz) / planes[g, 10]
                        f_lo, f_hi = min(f_lo, f), max(f_hi, f)
                        s_lo, s_hi = min(s_lo, s_), max(s_hi, s_)
                if full and not (centre_hit or any_hit):
                    continue  # the whole cap misses this plane
                status[i, r, g] = 2 if full else 1
                boxes[i, r, g, 0], boxes[i, r, g, 1], boxes[i, r, g, 2], boxes[i, r, g, 3] = f_lo, f_hi, s_lo, s_hi


@numba.njit(cache=True)
def _box_windows(boxes, status, q0, n_sources, members, member_start, max_slow, pad):
    """Window rows (:data:`WINDOW_COLUMNS`) of the cap boxes on every panel of their plane.

    ``members[i]`` = panel, shift along fast and slow (px, from the group's first panel), size
    fast and slow (px), for the panels of group g at ``member_start[g]:member_start[g + 1]``,
    sorted by the slow shift; ``max_slow[g]`` is the largest slow size in group g.
    """
    out = np.empty((1024, 8), dtype=np.int64)
    m = 0
    for i in range(status.shape[0]):
        o = (q0 + i) // n_sources
        j = (q0 + i) % n_sources
        for r in range(status.shape[1]):
            for g in range(status.shape[2]):
                if status[i, r, g] == 0:
                    continue
                full = status[i, r, g] == 2
                f_lo, f_hi, s_lo, s_hi = boxes[i, r, g, 0], boxes[i, r, g, 1], boxes[i, r, g, 2], boxes[i, r, g, 3]
                e0, e1 = member_start[g], member_start[g + 1]
                if not full:  # members are sorted by their slow shift: only those near the box
                    shifts = members[e0:e1, 2]
                    e1 = e0 + np.searchsorted(shifts, s_hi + 1.0, side="right")
                    e0 = e0 + np.searchsorted(shifts, s_lo - max_slow[g] - 1.0, side="left")
                for e in range(e0, e1):
                    nf, ns = members[e, 3], members[e, 4]
                    if full:
                        f0, f1, s0, s1 = 0, int(nf), 0, int(ns)
                    else:
                        df, ds = members[e, 1], members[e, 2]
                        if f_hi < df - 1.0 or f_lo > df + nf + 1.0 or s_hi < ds - 1.0 or s_lo > ds + ns + 1.0:
                            continue
                        f0 = int(math.floor(min(max(f_lo - df - 1e-6, -2.0), nf + 2.0))) - pad
                        f1 = int(math.floor(min(max(f_hi - df + 1e-6, -2.0), nf + 2.0))) + 1 + pad
                        s0 = int(math.floor(min(max(s_lo - ds - 1e-6, -2.0), ns + 2.0))) - pad
                        s1 = int(math.floor(min(max(s_hi - ds + 1e-6, -2.0), ns + 2.0))) + 1 + pad
                        f0, f1 = max(f0, 0), min(f1, int(nf))
                        s0, s1 = max(s0, 0), min(s1, int(ns))
                    if f1 <= f0 or s1 <= s0:
                        continue
                    if m == out.shape[0]:
                        grown = np.empty((2 * m, 8), dtype=np.int64)
                        grown[:m] = out
                        out = grown
                    out[m, 0], out[m, 1], out[m, 2] = o, j, int(members[e, 0])
                    out[m, 3], out[m, 4], out[m, 5], out[m, 6], out[m, 7] = f0, f1, s0, s1, r
                    m += 1
    return out[:m]


def spot_windows(plan, tolerance: float = 1e-3, pad_px: int = 0) -> SpotWindows:
    """The pixel windows of every (orientation, source, reflection) of a render.

    A window holds every pixel that the projected cap touches (every sub-pixel sample of the
    cap lies in such a pixel), widened by 10⁻⁶ px against rounding and by ``pad_px`` on each
    side, and lies within the plan's rendered panel extents (``roi``).

    Parameters
    ----------
    plan : KernelPlan
        The render (:func:`xrais.simulate.render.render_plan`).
    tolerance : float
        Relative lattice-transform level below which a term is neglected.
    pad_px : int
        Extra pixels on each side of every window.

    Returns
    -------
    SpotWindows
    """
    if not (isinstance(pad_px, (int, np.integer)) and pad_px >= 0):
        raise ConfigError(f"pad_px {pad_px!r}: expected a whole number of pixels ≥ 0")
    panels, sources, rows = plan.panels, plan.sources, plan.rows
    n_p = len(panels)
    table = row_table(rows, n_p)
    none = SpotWindows(np.zeros((0, 3), dtype=np.int64), np.zeros((0, 8), dtype=np.int64), table)
    if len(rows) == 0:
        return none
    extents = np.zeros((n_p, 2), dtype=np.int64)  # fast, slow size of the rendered part of each panel
    present = table[:, :, 1] > 0
    extents[:, 0] = table[:, :, 1].max(axis=1)
    extents[:, 1] = np.where(present.any(axis=1), present.shape[1] - np.argmax(present[:, ::-1], axis=1), 0)
    radius = lattice_extent(plan.shape_code, plan.n_cells, plan.fudge, tolerance, plan.a0)
    s_max = max_scattering(panels, extents, sources)
    if plan.inv_dmin > 0:
        s_max = min(s_max, plan.inv_dmin)
    hkl = reachable_reflections(plan, radius, s_max)
    groups = _panel_groups(panels, extents)
    if len(hkl) == 0 or not groups:
        return SpotWindows(hkl, none.windows, table)
    planes = np.array([panels[g[0], 0:11] for g in groups], dtype=np.float64).reshape(-1, 11)
    members, member_start, max_slow = [], [0], []
    for g in groups:
        p0 = g[0]
        shift = panels[g, 0:3] - panels[p0, 0:3]
        rows = np.column_stack([g, shift @ panels[p0, 3:6] / panels[p0, 9], shift @ panels[p0, 6:9] / panels[p0, 10],
                                extents[g, 0], extents[g, 1]]).astype(np.float64)
        members.append(rows[np.argsort(rows[:, 2], kind="stable")])
        member_start.append(member_start[-1] + len(g))
        max_slow.append(float(rows[:, 4].max()))
    members_arr = np.concatenate(members)
    member_start_arr = np.array(member_start, dtype=np.int64)
    a_all = np.ascontiguousarray(np.linalg.inv(plan.orientations))  # S_h = A_o·h, A_o = M_o⁻¹
    src = np.ascontiguousarray(sources, dtype=np.float64)
    n_q = len(plan.orientations) * len(sources)
    chunk = max(1, min(n_q, _BOXES_PER_CHUNK // (len(hkl) * len(planes))))
    parts = []
    for q0 in range(0, n_q, chunk):
        n = min(chunk, n_q - q0)
        boxes = np.empty((n, len(hkl), len(planes), 4))
        status = np.empty((n, len(hkl), len(planes)), dtype=np.int8)
        _cap_boxes(hkl, a_all, src, float(radius), planes, q0, boxes, status)
        parts.append(_box_windows(boxes, status, q0, len(sources), members_arr, member_start_arr,
                                  np.array(max_slow), int(pad_px)))
    return SpotWindows(hkl, np.concatenate(parts), table)
