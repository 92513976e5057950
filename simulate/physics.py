"""Per-pixel kinematic diffraction, written once for both backends.

Every function here is plain Python marked with Numba's ``register_jitable``: it runs as is
from Python (the tests call it directly), compiles into the Numba CPU kernel
(:mod:`xrais.simulate.kernel_cpu`) and into the numba-cuda GPU kernel
(:mod:`xrais.simulate.kernel_cuda`). Vectors are passed as scalars (no array allocation),
so the same code is valid device code.

The physics is nanoBragg's (PHYSICS.md §6, citing ``nanoBragg.c``):

* scattering vector S = (d̂ − î)/λ (Å⁻¹) for diffracted unit vector d̂ and incident unit vector î;
* fractional Miller index h = a·S (real-space rows of the oriented A⁻¹), nearest integer
  h₀ = ceil(h − ½);
* lattice transform F_latt of an N_a×N_b×N_c domain for the shape (square, round, gauss,
  tophat, and the pre-2023 gauss/tophat);
* |F(h₀)|² from a dense grid (``default_F`` outside it);
* polarization ½(1 + cos²2θ − K·cos2ψ·sin²2θ) for Kahn factor K;
* solid angle Ω = p_f·p_s/R² · (close distance)/R, or 1/R² for a point pixel.

Units: lengths in mm, wavelengths in Å, angles in radians.
"""

from __future__ import annotations

import math

from numba.extending import register_jitable

__all__ = [
    "sincg",
    "sinc3",
    "lattice_factor",
    "polarization_factor",
    "solid_angle",
    "structure_factor_lookup",
    "pixel_intensity",
    "pixel_value",
    "orientation_intensity",
    "sample_position",
    "spot_pixel_value",
    "spot_intensity_sum",
    "first_sample_omega_polar",
    "first_sample_weight",
    "uniform_sample_weight",
    "pixel_background",
    "SHAPE_SQUARE",
    "SHAPE_ROUND",
    "SHAPE_GAUSS",
    "SHAPE_TOPHAT",
    "SHAPE_GAUSS_2022",
    "SHAPE_TOPHAT_2022",
]

SHAPE_SQUARE, SHAPE_ROUND, SHAPE_GAUSS, SHAPE_TOPHAT, SHAPE_GAUSS_2022, SHAPE_TOPHAT_2022 = range(6)
_ROUND_NORM = 0.723601254558268  # nanoBragg's ROUND normalisation (equal volume sphere)


@register_jitable
def sincg(x: float, n: float) -> float:
    """Lattice transform of n cells along one axis: sin(n·x)/sin(x) (nanoBragg ``sincg``).

    Equal to n at x = 0; at other multiples of π it is evaluated numerically (≈ ±n), as the
    reference does.
    """
    if x == 0.0:
        return n
    return math.sin(n * x) / math.sin(x)


@register_jitable
def sinc3(x: float) -> float:
    """Transform of a uniform sphere: 3(sin x/x − cos x)/x² (1 at x = 0; nanoBragg ``sinc3``)."""
    if x == 0.0:
        return 1.0
    return 3.0 * (math.sin(x) / x - math.cos(x)) / (x * x)


@register_jitable
def lattice_factor(shape: int, h: float, k: float, l: float, na: float, nb: float, nc: float,
                   dx: float, dy: float, dz: float, fudge: float) -> float:
    """F_latt for fractional index (h, k, l) of an na×nb×nc domain.

    ``(dx, dy, dz)`` is (h−h₀)a* + (k−k₀)b* + (l−l₀)c* in Å⁻¹ with the unrotated reciprocal
    vectors (used by the 2023+ GAUSS and TOPHAT forms); ``fudge`` scales the squared radius.
    """
    if shape == 0:  # SQUARE: product over axes with more than one cell
        f = 1.0
        if na > 1.0:
            f *= sincg(math.pi * h, na)
        if nb > 1.0:
            f *= sincg(math.pi * k, nb)
        if nc > 1.0:
            f *= sincg(math.pi * l, nc)
        return f
    h0 = math.ceil(h - 0.5)
    k0 = math.ceil(k - 0.5)
    l0 = math.ceil(l - 0.5)
    hrad2 = ((h - h0) * na) ** 2 + ((k - k0) * nb) ** 2 + ((l - l0) * nc) ** 2
    nnn = na * nb * nc
    if shape == 1:  # ROUND
        return nnn * _ROUND_NORM * sinc3(math.pi * math.sqrt(hrad2 * fudge))
    rad2 = hrad2
    if shape == 2 or shape == 3:  # 2023+ forms: reciprocal-space radius times (NaNbNc)²
        rad2 = (dx * dx + dy * dy + dz * dz) * nnn * nnn
    if shape == 2 or shape == 4:  # GAUSS
        return nnn * math.exp(-rad2 * fudge / 0.63)
    # TOPHAT
    return nnn if rad2 * fudge < 0.3969 else 0.0


@register_jitable
def polarization_factor(kahn: float, ix: float, iy: float, iz: float, dx: float, dy: float, dz: float,
                        ex: float, ey: float, ez: float) -> float:
    """½(1 + cos²2θ − K·cos2ψ·sin²2θ) for incident î, diffracted d̂ (unit) and E-vector axis ê.

    K is the Kahn factor (0 unpolarized, 1 fully polarized along ê); ψ is the azimuth of d̂
    about î measured from the plane of î and ê (nanoBragg ``polarization_factor``).
    """
    cos2t = ix * dx + iy * dy + iz * dz
    sin2t_sq = 1.0 - cos2t * cos2t
    # B = unit(ê × î), E = unit(î × B)
    bx, by, bz = ey * iz - ez * iy, ez * ix - ex * iz, ex * iy - ey * ix
    bn = math.sqrt(bx * bx + by * by + bz * bz)
    if bn == 0.0:
        return 0.5 * (1.0 + cos2t * cos2t)
    bx, by, bz = bx / bn, by / bn, bz / bn
    qx, qy, qz = iy * bz - iz * by, iz * bx - ix * bz, ix * by - iy * bx
    qn = math.sqrt(qx * qx + qy * qy + qz * qz)
    qx, qy, qz = qx / qn, qy / qn, qz / qn
    psi = -math.atan2(dx * bx + dy * by + dz * bz, dx * qx + dy * qy + dz * qz)
    return 0.5 * (1.0 + cos2t * cos2t - kahn * math.cos(2.0 * psi) * sin2t_sq)


@register_jitable
def solid_angle(px: float, py: float, pz: float, pixel_f_mm: float, pixel_s_mm: float, close_mm: float,
                point_pixel: bool) -> float:
    """Ω (sr) of a pixel at lab position P (mm): p_f·p_s/R² · close/R.

    For a point pixel (nanoBragg ``-point_pixel``) 1/R² with R in metres: the image is then in
    photons per m² of a surface normal to the ray at the pixel.
    """
    r2 = px * px + py * py + pz * pz
    if point_pixel:
        return 1e6 / r2
    r = math.sqrt(r2)
    return pixel_f_mm * pixel_s_mm / r2 * close_mm / r


@register_jitable
def structure_factor_lookup(grid, hmin: int, kmin: int, lmin: int, default_f: float,
                            h0: float, k0: float, l0: float) -> float:
    """|F| at integer (h₀, k₀, l₀) from a dense grid starting at (hmin, kmin, lmin)."""
    i = int(h0) - hmin
    j = int(k0) - kmin
    m = int(l0) - lmin
    if i < 0 or j < 0 or m < 0 or i >= grid.shape[0] or j >= grid.shape[1] or m >= grid.shape[2]:
        return default_f
    return grid[i, j, m]


@register_jitable
def pixel_intensity(px: float, py: float, pz: float, ix: float, iy: float, iz: float, wavelength_A: float,
                    orientations, a0, shape: int, na: float, nb: float, nc: float, fudge: float,
                    grid, hmin: int, kmin: int, lmin: int, default_f: float, inv_dmin: float) -> float:
    """Σ over orientations of |F(h₀)|²·F_latt² at one sub-pixel position and one source.

    ``orientations`` holds the real-space matrices (rows a, b, c in Å) of every phi step ×
    mosaic domain, shape (n, 3, 3); ``a0`` the unrotated reciprocal basis (columns, Å⁻¹).
    Returns 0 beyond the resolution limit 1/``inv_dmin`` (0: no limit).
    """
    r = math.sqrt(px * px + py * py + pz * pz)
    dx, dy, dz = px / r, py / r, pz / r
    sx = (dx - ix) / wavelength_A
    sy = (dy - iy) / wavelength_A
    sz = (dz - iz) / wavelength_A
    if inv_dmin > 0.0 and math.sqrt(sx * sx + sy * sy + sz * sz) > inv_dmin:
        return 0.0
    total = 0.0
    # The body repeats orientation_intensity's on purpose: factored into one shared function
    # (called per orientation) the brute-force kernel runs about 40 % slower under Numba.
    for o in range(orientations.shape[0]):
        m = orientations[o]
        h = m[0, 0] * sx + m[0, 1] * sy + m[0, 2] * sz
        k = m[1, 0] * sx + m[1, 1] * sy + m[1, 2] * sz
        l = m[2, 0] * sx + m[2, 1] * sy + m[2, 2] * sz
        h0 = math.ceil(h - 0.5)
        k0 = math.ceil(k - 0.5)
        l0 = math.ceil(l - 0.5)
        ddh, ddk, ddl = h - h0, k - k0, l - l0
        qx = ddh * a0[0, 0] + ddk * a0[0, 1] + ddl * a0[0, 2]
        qy = ddh * a0[1, 0] + ddk * a0[1, 1] + ddl * a0[1, 2]
        qz = ddh * a0[2, 0] + ddk * a0[2, 1] + ddl * a0[2, 2]
        f_latt = lattice_factor(shape, h, k, l, na, nb, nc, qx, qy, qz, fudge)
        f_cell = structure_factor_lookup(grid, hmin, kmin, lmin, default_f, h0, k0, l0)
        total += f_cell * f_cell * f_latt * f_latt
    return total


@register_jitable
def pixel_value(p: int, fi: int, si: int, panels, sources, orientations, a0, shape: int,
                na: float, nb: float, nc: float, fudge: float, grid, hmin: int, kmin: int, lmin: int,
                default_f: float, inv_dmin: float, oversample: int, kahn: float, pol_ex: float, pol_ey: float,
                pol_ez: float, flags: int, scale: float, background: float, steps: float) -> float:
    """Photons in pixel (fi, si) of panel p: the whole nanoBragg per-pixel sum (PHYSICS.md §6).

    ``panels[p]`` = origin xyz, fast xyz, slow xyz (mm, unit vectors), pixel pitch f, s (mm),
    close distance (mm); ``sources[j]`` = incident unit vector xyz and wavelength (Å).
    ``flags`` bits: 1 Ω and 2 polarization once per pixel (first sub-pixel, first source:
    nanoBragg's default) instead of per sample; 4 point pixel; 8 no polarization;
    16 nanoBragg's background (added to the sum before the scale and divided by the step
    count) instead of the physical one (scale·background·mean(Ω·P)).

    pixel = scale · (Σ_samples w·Σ_orient |F|²F_latt² / steps + background term), with the
    sample weight w = Ω·P.
    """
    pitch_f, pitch_s, close = panels[p, 9], panels[p, 10], panels[p, 11]
    omega_once = (flags & 1) != 0
    polar_once = (flags & 2) != 0
    point_pixel = (flags & 4) != 0
    no_polar = (flags & 8) != 0
    nanobragg_background = (flags & 16) != 0
    acc = 0.0
    weight_sum = 0.0
    omega0 = 0.0
    polar0 = 1.0
    n = oversample
    for sub_s in range(n):
        for sub_f in range(n):
            px, py, pz = sample_position(panels, p, fi, si, sub_f, sub_s, n)
            first_sub = sub_s == 0 and sub_f == 0
            r = math.sqrt(px * px + py * py + pz * pz)
            for j in range(sources.shape[0]):
                ix, iy, iz, lam = sources[j, 0], sources[j, 1], sources[j, 2], sources[j, 3]
                first = first_sub and j == 0
                if first or not omega_once:
                    omega = solid_angle(px, py, pz, pitch_f, pitch_s, close, point_pixel)
                    if first:
                        omega0 = omega
                else:
                    omega = omega0
                if no_polar:
                    polar = 1.0
                elif first or not polar_once:
                    polar = polarization_factor(kahn, ix, iy, iz, px / r, py / r, pz / r, pol_ex, pol_ey, pol_ez)
                    if first:
                        polar0 = polar
                else:
                    polar = polar0
                w = omega * polar
                weight_sum += w
                acc += w * pixel_intensity(px, py, pz, ix, iy, iz, lam, orientations, a0, shape, na, nb, nc,
                                           fudge, grid, hmin, kmin, lmin, default_f, inv_dmin)
    if nanobragg_background:
        bg = background * omega0 * polar0 / steps
    else:
        bg = background * weight_sum / (n * n * sources.shape[0])
    return scale * (acc / steps + bg)


@register_jitable(inline="always")  # inlined into the spot kernels' loops (about 25 % faster)
def orientation_intensity(px: float, py: float, pz: float, ix: float, iy: float, iz: float, wavelength_A: float,
                          m, a0, shape: int, na: float, nb: float, nc: float, fudge: float, grid, hmin: int,
                          kmin: int, lmin: int, default_f: float, inv_dmin: float, hw: float, kw: float,
                          lw: float) -> float:
    """|F(h₀)|²·F_latt² at one sub-pixel position and one source for ONE orientation ``m`` (3×3 rows a, b, c).

    The term that :func:`pixel_intensity` sums over orientations, counted only when the nearest
    integer index h₀ is the reflection (``hw``, ``kw``, ``lw``) (0 otherwise): summed over every
    reflection it is the whole term, and spot-centric rendering evaluates each reflection's
    part only where it is not negligible.
    """
    r = math.sqrt(px * px + py * py + pz * pz)
    dx, dy, dz = px / r, py / r, pz / r
    sx = (dx - ix) / wavelength_A
    sy = (dy - iy) / wavelength_A
    sz = (dz - iz) / wavelength_A
    if inv_dmin > 0.0 and math.sqrt(sx * sx + sy * sy + sz * sz) > inv_dmin:
        return 0.0
    h = m[0, 0] * sx + m[0, 1] * sy + m[0, 2] * sz
    k = m[1, 0] * sx + m[1, 1] * sy + m[1, 2] * sz
    l = m[2, 0] * sx + m[2, 1] * sy + m[2, 2] * sz
    h0 = math.ceil(h - 0.5)
    k0 = math.ceil(k - 0.5)
    l0 = math.ceil(l - 0.5)
    if h0 != hw or k0 != kw or l0 != lw:
        return 0.0
    qx, qy, qz = 0.0, 0.0, 0.0
    if shape == 2 or shape == 3:  # only the 2023+ forms use the offset in Å⁻¹
        ddh, ddk, ddl = h - h0, k - k0, l - l0
        qx = ddh * a0[0, 0] + ddk * a0[0, 1] + ddl * a0[0, 2]
        qy = ddh * a0[1, 0] + ddk * a0[1, 1] + ddl * a0[1, 2]
        qz = ddh * a0[2, 0] + ddk * a0[2, 1] + ddl * a0[2, 2]
    f_latt = lattice_factor(shape, h, k, l, na, nb, nc, qx, qy, qz, fudge)
    f_cell = structure_factor_lookup(grid, hmin, kmin, lmin, default_f, h0, k0, l0)
    return f_cell * f_cell * f_latt * f_latt


@register_jitable
def sample_position(panels, p: int, fi: int, si: int, sub_f: int, sub_s: int, n: int):
    """Lab position (mm) of sub-pixel (sub_f, sub_s) of an n×n grid in pixel (fi, si) of panel p."""
    df = (fi + (sub_f + 0.5) / n) * panels[p, 9]
    ds = (si + (sub_s + 0.5) / n) * panels[p, 10]
    px = panels[p, 0] + df * panels[p, 3] + ds * panels[p, 6]
    py = panels[p, 1] + df * panels[p, 4] + ds * panels[p, 7]
    pz = panels[p, 2] + df * panels[p, 5] + ds * panels[p, 8]
    return px, py, pz


@register_jitable
def first_sample_omega_polar(p: int, fi: int, si: int, panels, sources, oversample: int, kahn: float, pol_ex: float,
                             pol_ey: float, pol_ez: float, flags: int):
    """(Ω, P) at the first sub-pixel of pixel (fi, si) with the first source (P = 1 with flag 8).

    What :func:`pixel_value` uses for every sample when Ω or polarization is taken once per
    pixel (flags 1, 2), and for nanoBragg's background (flag 16).
    """
    px, py, pz = sample_position(panels, p, fi, si, 0, 0, oversample)
    omega = solid_angle(px, py, pz, panels[p, 9], panels[p, 10], panels[p, 11], (flags & 4) != 0)
    if (flags & 8) != 0:
        return omega, 1.0
    r = math.sqrt(px * px + py * py + pz * pz)
    return omega, polarization_factor(kahn, sources[0, 0], sources[0, 1], sources[0, 2], px / r, py / r, pz / r,
                                      pol_ex, pol_ey, pol_ez)


@register_jitable
def first_sample_weight(p: int, fi: int, si: int, panels, sources, oversample: int, kahn: float, pol_ex: float,
                        pol_ey: float, pol_ez: float, flags: int) -> float:
    """Ω·P of :func:`first_sample_omega_polar`.

    The weight :func:`pixel_value` gives every sample when Ω and polarization are taken once
    per pixel (flags 1 and 2), and the only one with one sub-pixel and one source.
    """
    omega, polar = first_sample_omega_polar(p, fi, si, panels, sources, oversample, kahn, pol_ex, pol_ey, pol_ez,
                                            flags)
    return omega * polar


@register_jitable
def spot_pixel_value(p: int, fi: int, si: int, o: int, j: int, hw: float, kw: float, lw: float, panels, sources,
                     orientations, a0, shape: int, na: float, nb: float, nc: float, fudge: float, grid, hmin: int,
                     kmin: int, lmin: int, default_f: float, inv_dmin: float, oversample: int, kahn: float,
                     pol_ex: float, pol_ey: float, pol_ez: float, flags: int, scale: float, steps: float) -> float:
    """The part of :func:`pixel_value` from orientation ``o``, source ``j`` and reflection (hw, kw, lw) alone.

    Summed over every (o, j) and every reflection, and added to :func:`pixel_background`, it
    is :func:`pixel_value`. Ω·P is computed per sample as :func:`pixel_value` does (with flags
    1/2 at the first sub-pixel with the first source); when every sample shares it
    (:func:`uniform_sample_weight`) ``scale · weight · spot_intensity_sum(...) / steps`` is the
    same term.
    """
    omega_once = (flags & 1) != 0
    polar_once = (flags & 2) != 0
    point_pixel = (flags & 4) != 0
    no_polar = (flags & 8) != 0
    n = oversample
    ix, iy, iz, lam = sources[j, 0], sources[j, 1], sources[j, 2], sources[j, 3]
    m = orientations[o]
    acc = 0.0
    omega0, polar0 = -1.0, 1.0
    for sub_s in range(n):
        for sub_f in range(n):
            px, py, pz = sample_position(panels, p, fi, si, sub_f, sub_s, n)
            value = orientation_intensity(px, py, pz, ix, iy, iz, lam, m, a0, shape, na, nb, nc, fudge, grid, hmin,
                                          kmin, lmin, default_f, inv_dmin, hw, kw, lw)
            if value == 0.0:
                continue
            if (omega_once or polar_once) and omega0 < 0.0:
                omega0, polar0 = first_sample_omega_polar(p, fi, si, panels, sources, n, kahn, pol_ex, pol_ey, pol_ez,
                                                          flags)
            if omega_once:
                omega = omega0
            else:
                omega = solid_angle(px, py, pz, panels[p, 9], panels[p, 10], panels[p, 11], point_pixel)
            if no_polar:
                polar = 1.0
            elif polar_once:
                polar = polar0
            else:
                r = math.sqrt(px * px + py * py + pz * pz)
                polar = polarization_factor(kahn, ix, iy, iz, px / r, py / r, pz / r, pol_ex, pol_ey, pol_ez)
            acc += omega * polar * value
    return scale * acc / steps


@register_jitable
def spot_intensity_sum(panels, p: int, fi: int, si: int, oversample: int, ix: float, iy: float, iz: float,
                       wavelength_A: float, m, a0, shape: int, na: float, nb: float, nc: float, fudge: float, grid,
                       hmin: int, kmin: int, lmin: int, default_f: float, inv_dmin: float, hw: float, kw: float,
                       lw: float) -> float:
    """Σ over the sub-pixels of pixel (fi, si) of :func:`orientation_intensity` for reflection (hw, kw, lw)."""
    n = oversample
    acc = 0.0
    for sub_s in range(n):
        for sub_f in range(n):
            px, py, pz = sample_position(panels, p, fi, si, sub_f, sub_s, n)
            acc += orientation_intensity(px, py, pz, ix, iy, iz, wavelength_A, m, a0, shape, na, nb, nc, fudge, grid,
                                         hmin, kmin, lmin, default_f, inv_dmin, hw, kw, lw)
    return acc


@register_jitable
def uniform_sample_weight(oversample: int, n_sources: int, flags: int) -> bool:
    """True when every sample of a pixel has the weight :func:`first_sample_weight` gives.

    Ω is shared when it is taken once per pixel or there is one sub-pixel; P when it is off,
    taken once per pixel, or there is one sub-pixel and one source.
    """
    single = oversample == 1
    omega_shared = (flags & 1) != 0 or single
    polar_shared = (flags & 8) != 0 or (flags & 2) != 0 or (single and n_sources == 1)
    return omega_shared and polar_shared


@register_jitable
def pixel_background(p: int, fi: int, si: int, panels, sources, oversample: int, kahn: float, pol_ex: float,
                     pol_ey: float, pol_ez: float, flags: int, scale: float, background: float,
                     steps: float) -> float:
    """The background term of :func:`pixel_value` alone (scale · background · mean Ω·P, or nanoBragg's)."""
    if background == 0.0:
        return 0.0
    omega_once = (flags & 1) != 0
    polar_once = (flags & 2) != 0
    point_pixel = (flags & 4) != 0
    no_polar = (flags & 8) != 0
    n = oversample
    omega0, polar0 = first_sample_omega_polar(p, fi, si, panels, sources, n, kahn, pol_ex, pol_ey, pol_ez, flags)
    if (flags & 16) != 0:
        return scale * background * omega0 * polar0 / steps
    weight_sum = 0.0
    for sub_s in range(n):
        for sub_f in range(n):
            px, py, pz = sample_position(panels, p, fi, si, sub_f, sub_s, n)
            r = math.sqrt(px * px + py * py + pz * pz)
            for j in range(sources.shape[0]):
                if omega_once:
                    omega = omega0
                else:
                    omega = solid_angle(px, py, pz, panels[p, 9], panels[p, 10], panels[p, 11], point_pixel)
                if no_polar:
                    polar = 1.0
                elif polar_once:
                    polar = polar0
                else:
                    polar = polarization_factor(kahn, sources[j, 0], sources[j, 1], sources[j, 2], px / r, py / r,
                                                pz / r, pol_ex, pol_ey, pol_ez)
                weight_sum += omega * polar
    return scale * background * weight_sum / (n * n * sources.shape[0])
