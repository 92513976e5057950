"""Where a render's Bragg spots can be: per orientation and source, the pixels worth computing.

For one orientation o (a phi step × mosaic domain) and one source j, a pixel's intensity is
|F(h₀)|²·F_latt²(h) with h₀ the integer index nearest to its fractional index h. F_latt² falls
below ``tolerance`` × its peak once h − h₀ leaves a region around 0 that depends only on the
shape, the cell counts N and ``fudge`` (:func:`lattice_extent`). In reciprocal space that region
lies within a radius r_tol of the lattice point, so a pixel can only matter if its scattering
vector is within r_tol of a reciprocal-lattice point: the reflections within r_tol of the Ewald
sphere of source j, and on it the cap within r_tol of each. The cap is projected onto every panel
and its pixel bounding box is a window. Windows of the same (o, j) and panel
are merged into disjoint runs along each pixel row (:func:`spot_spans`), so that every pixel is
evaluated at most once per (o, j): the kernel then adds that orientation's and source's whole
term there, exactly the term the brute-force kernel would add.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from xrais.simulate.physics import (
    SHAPE_GAUSS,
    SHAPE_GAUSS_2022,
    SHAPE_ROUND,
    SHAPE_SQUARE,
    SHAPE_TOPHAT,
    SHAPE_TOPHAT_2022,
)

__all__ = ["lattice_extent", "spot_spans", "SPAN_COLUMNS"]

#: Columns of the span table: orientation, source, panel, slow index, fast start, fast end
#: (exclusive), output slow, output fast offset.
SPAN_COLUMNS = ("orientation", "source", "panel", "slow", "fast_lo", "fast_hi", "out_slow", "out_fast0")



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
    centre holds less than ``tolerance`` of the transform (≈ 1/x², x = π·N-scaled radius), gauss/tophat (2022) an ellipsoid of N-scaled
    radius ρ, and gauss/tophat (2023+) a sphere of radius ρ/(NaNbNc) in Å⁻¹.
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


def _row_table(rows: np.ndarray, n_panels: int):
    """Per (panel, slow): fast range to render and output placement, from the plan's rows."""
    max_s = int(rows[:, 1].max()) + 1 if len(rows) else 1
    table = np.zeros((n_panels, max_s, 4), dtype=np.int64)  # f_lo, f_hi (0: row absent), out_s, out_f0
    table[rows[:, 0], rows[:, 1]] = rows[:, 2:6]
    return table


def _panel_groups(panels: np.ndarray, extents: np.ndarray) -> list[list[int]]:
    """Panels sharing a plane, axes and pitch (their projections differ by a shift only)."""
    groups: dict[tuple, list[int]] = {}
    for p in range(len(panels)):
        if extents[p, 0] == 0:
            continue
        fast, slow = panels[p, 3:6], panels[p, 6:9]
        normal = np.cross(fast, slow)
        key = tuple(np.round(np.concatenate([fast, slow, [np.dot(panels[p, 0:3], normal)], panels[p, 9:11]]), 6))
        groups.setdefault(key, []).append(p)
    return list(groups.values())


def _max_scattering(panels: np.ndarray, extents: np.ndarray, sources: np.ndarray) -> float:
    """Largest |S| (Å⁻¹) any panel corner sees from any source."""
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


def _reflections(plan, radius: float, s_max: float) -> np.ndarray:
    """Miller indices that may be within ``radius`` of an Ewald sphere of any orientation and source.

    |S_h| ≤ s_max + radius and |F| > 0; the Ewald test is made with the first orientation and
    source, widened by how far the others can move a point (θ·|S| for a rotation by θ, plus the
    change of the incident wave vector and of 1/λ). Returns float rows (n, 3).
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
    return hkl[f != 0.0].astype(np.float64)


@numba.njit(cache=True)
def _candidates(hmax, a, k_in, k_len, reach, slack, theta):
    """Integer (h, k, l) with |A·h| ≤ reach and ||k_in + A·h| − k_len| ≤ slack + θ·|A·h|; (n, 3) int64."""
    out = np.empty(((2 * hmax[0] + 1) * (2 * hmax[1] + 1) * (2 * hmax[2] + 1), 3), dtype=np.int64)
    n = 0
    reach2 = reach * reach
    for h in range(-hmax[0], hmax[0] + 1):
        for k in range(-hmax[1], hmax[1] + 1):
            x0 = a[0, 0] * h + a[0, 1] * k
            y0 = a[1, 0] * h + a[1, 1] * k
            z0 = a[2, 0] * h + a[2, 1] * k
            for l in range(-hmax[2], hmax[2] + 1):
                x = x0 + a[0, 2] * l
                y = y0 + a[1, 2] * l
                z = z0 + a[2, 2] * l
                s2 = x * x + y * y + z * z
                if s2 > reach2:
                    continue
                px, py, pz = x + k_in[0], y + k_in[1], z + k_in[2]
                if abs(math.sqrt(px * px + py * py + pz * pz) - k_len) <= slack + theta * math.sqrt(s2):
                    out[n, 0], out[n, 1], out[n, 2] = h, k, l
                    n += 1
    return out[:n]


@numba.njit(cache=True)
def _windows(hkl, a_all, sources, radius, planes, members, member_start, pad):
    """Windows (o, j, panel, f0, f1, s0, s1) of every reflection near the Ewald sphere of every (o, j).

    ``planes[g]`` = origin xyz, fast xyz, slow xyz, pitch f, s of the first panel of group g;
    ``members[i]`` = panel, shift along fast and slow (px, from the group's first panel), size
    fast and slow (px), for the panels of group g at ``member_start[g]:member_start[g + 1]``.
    The cap of the sphere within ``radius`` of a point is a cone of directions; a polygon
    circumscribing its outline is projected onto each plane and its bounding box taken.
    """
    n_sides = 12
    widen = 1.0 / math.cos(math.pi / n_sides)
    out = np.empty((1024, 7), dtype=np.int64)
    m = 0
    n_groups = planes.shape[0]
    for o in range(a_all.shape[0]):
        a = a_all[o]
        for j in range(sources.shape[0]):
            k = 1.0 / sources[j, 3]
            kx, ky, kz = sources[j, 0] * k, sources[j, 1] * k, sources[j, 2] * k
            for r in range(hkl.shape[0]):
                h, kk, l = hkl[r, 0], hkl[r, 1], hkl[r, 2]
                px = a[0, 0] * h + a[0, 1] * kk + a[0, 2] * l + kx
                py = a[1, 0] * h + a[1, 1] * kk + a[1, 2] * l + ky
                pz = a[2, 0] * h + a[2, 1] * kk + a[2, 2] * l + kz
                pl = math.sqrt(px * px + py * py + pz * pz)
                if abs(pl - k) > radius or pl == 0.0:
                    continue
                cos_half = (k * k + pl * pl - radius * radius) / (2.0 * k * pl)
                cos_half = min(1.0, max(-1.0, cos_half))
                half = math.acos(cos_half)
                unbounded = half > math.radians(80.0)
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
                            phi = 2.0 * math.pi * q / n_sides
                            c, sn = math.cos(phi), math.sin(phi)
                            dx = cx + t * (c * ux + sn * vx)
                            dy = cy + t * (c * uy + sn * vy)
                            dz = cz + t * (c * uz + sn * vz)
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
                    for i in range(member_start[g], member_start[g + 1]):
                        nf, ns = members[i, 3], members[i, 4]
                        if full:
                            f0, f1, s0, s1 = 0, int(nf), 0, int(ns)
                        else:
                            df, ds = members[i, 1], members[i, 2]
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
                            grown = np.empty((2 * m, 7), dtype=np.int64)
                            grown[:m] = out
                            out = grown
                        out[m, 0], out[m, 1], out[m, 2] = o, j, int(members[i, 0])
                        out[m, 3], out[m, 4], out[m, 5], out[m, 6] = f0, f1, s0, s1
                        m += 1
    return out[:m]


def spot_spans(plan, tolerance: float = 1e-3, pad_px: int = 0) -> np.ndarray:
    """The pixels to evaluate per (orientation, source): an int64 table, one row per run of pixels.

    Columns :data:`SPAN_COLUMNS`. Runs of the same (orientation, source) never overlap, and
    they lie within the plan's rows (``roi``). A window holds every pixel that the projected
    cap touches (every sub-pixel sample of the cap lies in such a pixel), widened by 10⁻⁶ px
    against rounding and by ``pad_px`` on each side.
    """
    panels, sources, rows = plan.panels, plan.sources, plan.rows
    n_p = len(panels)
    if len(rows) == 0:
        return np.zeros((0, 8), dtype=np.int64)
    table = _row_table(rows, n_p)
    extents = np.zeros((n_p, 2), dtype=np.int64)  # fast, slow size of the rendered part of each panel
    for p in range(n_p):
        present = np.nonzero(table[p, :, 1])[0]
        if len(present):
            extents[p] = (int(table[p, present, 1].max()), int(present.max()) + 1)
    radius = lattice_extent(plan.shape_code, plan.n_cells, plan.fudge, tolerance, plan.a0)
    s_max = _max_scattering(panels, extents, sources)
    if plan.inv_dmin > 0:
        s_max = min(s_max, plan.inv_dmin)
    hkl = _reflections(plan, radius, s_max)
    groups = _panel_groups(panels, extents)
    planes = np.array([panels[g[0], 0:11] for g in groups], dtype=np.float64).reshape(-1, 11)
    members, member_start = [], [0]
    for g in groups:
        p0 = g[0]
        for p in g:
            shift = panels[p, 0:3] - panels[p0, 0:3]
            members.append((p, shift @ panels[p0, 3:6] / panels[p0, 9], shift @ panels[p0, 6:9] / panels[p0, 10],
                            extents[p, 0], extents[p, 1]))
        member_start.append(len(members))
    a_all = np.ascontiguousarray(np.linalg.inv(plan.orientations))  # S_h = A_o·h, A_o = M_o⁻¹
    win = _windows(np.ascontiguousarray(hkl), a_all, np.ascontiguousarray(sources, dtype=np.float64), float(radius),
                   planes, np.array(members, dtype=np.float64).reshape(-1, 5),
                   np.array(member_start, dtype=np.int64), int(pad_px))
    if len(win) == 0:
        return np.zeros((0, 8), dtype=np.int64)
    # sort by (orientation, source, panel), then by fast start, and merge per row
    group = (win[:, 0] * len(sources) + win[:, 1]) * n_p + win[:, 2]
    win = win[np.argsort(group * (int(extents[:, 0].max()) + 1) + win[:, 3], kind="stable")]
    group = (win[:, 0] * len(sources) + win[:, 1]) * n_p + win[:, 2]
    spans = _merge_windows(np.ascontiguousarray(win), group, table)
    return spans[np.argsort(spans[:, 6], kind="stable")]


@numba.njit(cache=True)
def _merge_windows(win, group, table):
    """Disjoint runs per (orientation, source, panel, row) from windows sorted by group, then fast start."""
    n = win.shape[0]
    capacity = 0
    for w in range(n):
        capacity += win[w, 6] - win[w, 5]
    out = np.empty((capacity, 8), dtype=np.int64)
    m = 0
    g0 = 0
    while g0 < n:
        g1 = g0
        s_lo, s_hi = win[g0, 5], win[g0, 6]
        while g1 < n and group[g1] == group[g0]:
            s_lo = min(s_lo, win[g1, 5])
            s_hi = max(s_hi, win[g1, 6])
            g1 += 1
        o, j, p = win[g0, 0], win[g0, 1], win[g0, 2]
        for s in range(s_lo, s_hi):
            f_lo, f_hi = table[p, s, 0], table[p, s, 1]
            if f_hi <= f_lo:
                continue
            cur0, cur1 = -1, -1
            for w in range(g0, g1):
                if win[w, 5] <= s < win[w, 6]:
                    a = max(win[w, 3], f_lo)
                    b = min(win[w, 4], f_hi)
                    if b <= a:
                        continue
                    if cur1 >= 0 and a <= cur1:
                        cur1 = max(cur1, b)
                    else:
                        if cur1 >= 0:
                            out[m, 0], out[m, 1], out[m, 2], out[m, 3] = o, j, p, s
                            out[m, 4], out[m, 5], out[m, 6], out[m, 7] = cur0, cur1, table[p, s, 2], table[p, s, 3]
                            m += 1
                        cur0, cur1 = a, b
            if cur1 >= 0:
                out[m, 0], out[m, 1], out[m, 2], out[m, 3] = o, j, p, s
                out[m, 4], out[m, 5], out[m, 6], out[m, 7] = cur0, cur1, table[p, s, 2], table[p, s, 3]
                m += 1
        g0 = g1
    return out[:m]
