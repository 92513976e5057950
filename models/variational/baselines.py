"""Classical integration of shoeboxes, for comparison with the variational integrator.

* :func:`summation_integrate`: summation integration (Leslie 2006; DIALS ``summation``): a
  plane b(x, y, z) = a₀ + a₁x + a₂y (+ a₃z with several frames) fitted by least squares to the
  measured voxels outside the peak region, I = Σ_peak (x_j − b_j), and
  σ²(I) = Σ_peak x_j + gᵀ·Cov(a)·g with g = Σ_peak (1, x, y, z) and Cov(a) = b̄·(XᵀX)⁻¹
  (Poisson counts in the peak, plus the uncertainty of the fitted plane).
* :class:`ProfileModel` and :func:`profile_fit_integrate`: profile fitting (Diamond 1969; Kabsch
  2010; MOSFLM and DIALS ``fitrs`` in spirit): an average profile is learned from the strong
  reflections of each region of the detector (a grid of ``regions`` cells, MOSFLM's 3×3 by
  default) as Σ(x − b)/I_sum over reflections with I/σ above a threshold, clipped at 0 and
  normalised over the shoebox; then each reflection's I minimises Σ_j (x_j − b_j − I·p_j)²/v_j
  with v_j = I·p_j + b_j, by iterative reweighting; σ²(I) = 1/Σ p_j²/v_j plus the plane's share.

The peak region is the smallest set of voxels holding ``fraction`` (0.99) of the average profile
(:func:`peak_mask_from_profile`), or an ellipsoid of the given radii around the shoebox centre.
Arrays are numpy, shoeboxes (n, F, H, W) as in :class:`xrais.simulate.shoeboxes.ShoeboxSet`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ellipsoid_peak_mask", "peak_mask_from_profile", "fit_background_plane", "summation_integrate",
           "ProfileModel", "learn_profiles", "profile_fit_integrate"]


def ellipsoid_peak_mask(shape: tuple[int, int, int], radii: tuple[float, float, float] = (1.0, 4.0, 4.0)) -> np.ndarray:
    """(F, H, W) bool: voxels whose centres lie within the ellipsoid of ``radii`` (z, y, x) about the centre voxel.

    Examples
    --------
    >>> int(ellipsoid_peak_mask((1, 5, 5), (1.0, 1.0, 1.0)).sum())
    5
    """
    f, h, w = shape
    zz, yy, xx = np.meshgrid(np.arange(f) - f // 2, np.arange(h) - h // 2, np.arange(w) - w // 2, indexing="ij")
    return (zz / radii[0]) ** 2 + (yy / radii[1]) ** 2 + (xx / radii[2]) ** 2 <= 1.0


def peak_mask_from_profile(profile: np.ndarray, fraction: float = 0.99) -> np.ndarray:
    """The fewest voxels that hold ``fraction`` of a (normalised) profile; same shape, bool."""
    flat = np.asarray(profile, dtype=np.float64).ravel()
    order = np.argsort(flat)[::-1]
    cum = np.cumsum(flat[order]) / max(flat.sum(), 1e-300)
    keep = order[: int(np.searchsorted(cum, fraction)) + 1]
    out = np.zeros(flat.shape, dtype=bool)
    out[keep] = True
    return out.reshape(np.shape(profile))


def _design(shape: tuple[int, int, int]) -> np.ndarray:
    """(V, P) plane design matrix over the voxels: 1, x, y (and z with several frames), centred."""
    f, h, w = shape
    zz, yy, xx = np.meshgrid(np.arange(f) - (f - 1) / 2, np.arange(h) - (h - 1) / 2, np.arange(w) - (w - 1) / 2,
                             indexing="ij")
    cols = [np.ones(f * h * w), xx.ravel(), yy.ravel()] + ([zz.ravel()] if f > 1 else [])
    return np.stack(cols, axis=1)


def fit_background_plane(counts: np.ndarray, mask: np.ndarray, background_mask: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares background plane per shoebox from the measured voxels of ``background_mask``.

    Parameters
    ----------
    counts, mask : (n, F, H, W)
    background_mask : (F, H, W) or (n, F, H, W) bool — voxels that hold background only

    Returns
    -------
    background : (n, F, H, W) float64 — the plane at every voxel (≥ 0)
    params : (n, P) — plane coefficients (P = 3, or 4 with several frames)
    covariance : (n, P, P) — b̄·(XᵀX)⁻¹, the Poisson covariance of the coefficients
    """
    n = counts.shape[0]
    shape = counts.shape[1:]
    x = _design(shape)
    w = (np.asarray(mask, bool) & np.broadcast_to(background_mask, counts.shape)).reshape(n, -1).astype(np.float64)
    c = np.asarray(counts, dtype=np.float64).reshape(n, -1)
    xtx = np.einsum("nv,vi,vj->nij", w, x, x) + 1e-9 * np.eye(x.shape[1])[None]
    xtc = np.einsum("nv,vi->ni", w * c, x)
    n_bg = w.sum(axis=1)
    # too few background voxels for a plane: a constant
    few = n_bg < 3 * x.shape[1]
    if few.any():
        xtx[few, 1:, :] = 0.0
        xtx[few, :, 1:] = 0.0
        xtx[few, 1:, 1:] = np.eye(x.shape[1] - 1)
        xtc[few, 1:] = 0.0
    params = np.linalg.solve(xtx, xtc[..., None])[..., 0]
    mean_bg = (w * c).sum(axis=1) / np.maximum(n_bg, 1.0)
    cov = np.linalg.inv(xtx) * np.maximum(mean_bg, 1e-3)[:, None, None]
    background = np.clip(params @ x.T, 0.0, None).reshape(counts.shape)
    return background, params, cov


def summation_integrate(counts: np.ndarray, mask: np.ndarray, peak_mask: np.ndarray) -> dict[str, np.ndarray]:
    """Summation integration with a local background plane (see the module docstring).

    Parameters
    ----------
    counts, mask : (n, F, H, W)
    peak_mask : (F, H, W) or (n, F, H, W) bool — the peak region; the rest is background

    Returns
    -------
    dict of (n,) arrays: ``intensity``, ``sigma_intensity``, ``background`` (mean plane per voxel
    in the peak), ``sigma_background``, ``n_peak``; and ``background_map`` (n, F, H, W) and
    ``plane_covariance`` (n, P, P) for profile fitting.

    Examples
    --------
    >>> c = np.full((1, 1, 9, 9), 2.0); c[0, 0, 4, 4] += 50
    >>> r = summation_integrate(c, np.ones_like(c, bool), ellipsoid_peak_mask((1, 9, 9), (1, 1.5, 1.5)))
    >>> round(float(r["intensity"][0]), 6), round(float(r["background"][0]), 6)
    (50.0, 2.0)
    """
    n = counts.shape[0]
    peak = np.broadcast_to(np.asarray(peak_mask, bool), counts.shape)
    m = np.asarray(mask, bool)
    background, _, cov = fit_background_plane(counts, m, ~peak)
    x = _design(counts.shape[1:])
    pm = (peak & m).reshape(n, -1).astype(np.float64)
    c = np.asarray(counts, dtype=np.float64).reshape(n, -1)
    b = background.reshape(n, -1)
    intensity = (pm * (c - b)).sum(axis=1)
    g = pm @ x
    var = (pm * np.clip(c, 0.0, None)).sum(axis=1) + np.einsum("ni,nij,nj->n", g, cov, g)
    n_peak = pm.sum(axis=1)
    bg_mean = (pm * b).sum(axis=1) / np.maximum(n_peak, 1.0)
    sigma_bg = np.sqrt(np.einsum("ni,nij,nj->n", g, cov, g)) / np.maximum(n_peak, 1.0)
    return {"intensity": intensity, "sigma_intensity": np.sqrt(np.maximum(var, 1e-12)), "background": bg_mean,
            "sigma_background": sigma_bg, "n_peak": n_peak, "background_map": background, "plane_covariance": cov}


@dataclass(frozen=True)
class ProfileModel:
    """Average profiles on a grid of detector regions.

    profiles : (ny, nx, F, H, W) — each normalised to sum 1
    detector_size_px : (fast, slow) — the detector the grid divides
    counts : (ny, nx) — strong reflections averaged per region (0: the global profile was used)
    """

    profiles: np.ndarray
    detector_size_px: tuple[float, float]
    counts: np.ndarray

    def profile_for(self, position_px: np.ndarray) -> np.ndarray:
        """(n, F, H, W) profiles of reflections at (fast, slow) ``position_px`` (n, 2)."""
        ny, nx = self.profiles.shape[:2]
        ix = np.clip((np.asarray(position_px)[:, 0] / self.detector_size_px[0] * nx).astype(int), 0, nx - 1)
        iy = np.clip((np.asarray(position_px)[:, 1] / self.detector_size_px[1] * ny).astype(int), 0, ny - 1)
        return self.profiles[iy, ix]


def _normalised(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 0.0, None)
    s = p.sum()
    return p / s if s > 0 else np.full(p.shape, 1.0 / p.size)


def learn_profiles(counts: np.ndarray, mask: np.ndarray, background: np.ndarray, intensity: np.ndarray,
                   sigma: np.ndarray, position_px: np.ndarray, detector_size_px: tuple[float, float], *,
                   regions: tuple[int, int] = (3, 3), min_i_over_sigma: float = 10.0, min_reflections: int = 10
                   ) -> ProfileModel:
    """Average profiles of the strong reflections (I/σ ≥ ``min_i_over_sigma``) per detector region.

    A region with fewer than ``min_reflections`` strong reflections takes the profile of all of
    them; with none strong at all, the strongest 10 % are used.
    """
    strong = (sigma > 0) & (intensity / np.maximum(sigma, 1e-12) >= min_i_over_sigma) & (intensity > 0)
    if not strong.any():
        strong = intensity >= np.quantile(intensity, 0.9)
        strong &= intensity > 0
    m = np.asarray(mask, bool)
    contrib = np.where(m, (np.asarray(counts, np.float64) - background), 0.0)
    weights = m.astype(np.float64)
    shape = counts.shape[1:]

    def average(sel: np.ndarray) -> np.ndarray:
        # per voxel: Σ(x − b)/Σ I over the reflections measuring it (masked voxels do not count)
        num = contrib[sel].sum(axis=0)
        den = (weights[sel] * intensity[sel, None, None, None]).sum(axis=0)
        return _normalised(np.where(den > 0, num / np.maximum(den, 1e-12), 0.0))

    overall = average(strong) if strong.any() else np.full(shape, 1.0 / np.prod(shape))
    ny, nx = regions[1], regions[0]
    ix = np.clip((position_px[:, 0] / detector_size_px[0] * nx).astype(int), 0, nx - 1)
    iy = np.clip((position_px[:, 1] / detector_size_px[1] * ny).astype(int), 0, ny - 1)
    profiles = np.empty((ny, nx, *shape))
    used = np.zeros((ny, nx), dtype=np.int64)
    for j in range(ny):
        for i in range(nx):
            sel = strong & (ix == i) & (iy == j)
            if sel.sum() >= min_reflections:
                profiles[j, i] = average(sel)
                used[j, i] = int(sel.sum())
            else:
                profiles[j, i] = overall
    return ProfileModel(profiles, (float(detector_size_px[0]), float(detector_size_px[1])), used)


def profile_fit_integrate(counts: np.ndarray, mask: np.ndarray, profiles: np.ndarray, background: np.ndarray,
                          plane_covariance: np.ndarray | None = None, *, start: np.ndarray | None = None,
                          iterations: int = 5) -> dict[str, np.ndarray]:
    """Profile-fitted intensities (see the module docstring).

    Parameters
    ----------
    counts, mask : (n, F, H, W)
    profiles : (n, F, H, W) — profile of each reflection (renormalised over its measured voxels)
    background : (n, F, H, W) — background per voxel (e.g. the plane of :func:`summation_integrate`)
    plane_covariance : (n, P, P), optional — covariance of that plane, added to σ²
    start : (n,), optional — first intensity (default Σ(x − b))
    iterations : int

    Returns
    -------
    dict of (n,) arrays ``intensity``, ``sigma_intensity``
    """
    n = counts.shape[0]
    m = np.asarray(mask, bool).reshape(n, -1).astype(np.float64)
    c = np.asarray(counts, dtype=np.float64).reshape(n, -1)
    b = np.asarray(background, dtype=np.float64).reshape(n, -1)
    p = np.asarray(profiles, dtype=np.float64).reshape(n, -1) * m
    p = p / np.maximum(p.sum(axis=1, keepdims=True), 1e-300)  # over the measured voxels
    intensity = (m * (c - b)).sum(axis=1) if start is None else np.asarray(start, np.float64).copy()
    denom = np.ones(n)
    w = m
    for _ in range(iterations):
        v = np.maximum(np.clip(intensity, 0.0, None)[:, None] * p + b, 1e-3)
        w = m / v
        denom = np.maximum((w * p * p).sum(axis=1), 1e-300)
        intensity = (w * p * (c - b)).sum(axis=1) / denom
    var = 1.0 / denom
    if plane_covariance is not None:
        x = _design(counts.shape[1:])
        h = (w * p) @ x / denom[:, None]  # dI/d(plane coefficients), up to sign
        var = var + np.einsum("ni,nij,nj->n", h, plane_covariance, h)
    return {"intensity": intensity, "sigma_intensity": np.sqrt(var)}
