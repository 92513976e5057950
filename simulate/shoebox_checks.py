"""Shoeboxes that cannot be integrated, and cheap synthetic shoeboxes with exact truth."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from xrais.simulate.shoebox_set import ShoeboxSet

__all__ = ["screen_shoeboxes", "synthetic_shoeboxes"]

# --------------------------------------------------------------------------- checks and synthetic data
def screen_shoeboxes(counts: np.ndarray | Sequence[np.ndarray], mask: np.ndarray | Sequence[np.ndarray] | None = None,
                     *, expected_shape: tuple[int, int, int] | None = None) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Find the shoeboxes that cannot be integrated, and say why.

    A shoebox is rejected when it has the wrong shape, a NaN or infinite count, a negative
    count in a measured voxel, or no measured voxel at all.

    Parameters
    ----------
    counts : ndarray (n, F, H, W) or sequence of n arrays (F, H, W)
        Counts per voxel.
    mask : same layout as ``counts``, optional
        True for measured voxels (default: every voxel).
    expected_shape : (F, H, W), optional
        The shape every shoebox must have (default: that of the first).

    Returns
    -------
    keep : ndarray, shape (n,), bool
        True for usable shoeboxes.
    problems : list of (row, reason)
        One entry per rejected shoebox.

    Examples
    --------
    >>> c = np.ones((3, 1, 2, 2)); c[1, 0, 0, 0] = np.nan; c[2, 0, 1, 1] = -4
    >>> screen_shoeboxes(c)[1]
    [(1, 'NaN or infinite counts in 1 voxel(s)'), (2, 'negative counts in 1 measured voxel(s) (min -4)')]
    """
    n = len(counts)
    keep = np.ones(n, dtype=bool)
    problems: list[tuple[int, str]] = []
    if expected_shape is None and n:
        expected_shape = tuple(np.shape(counts[0]))  # type: ignore[assignment]
    for i in range(n):
        c = np.asarray(counts[i], dtype=np.float64)
        if c.shape != tuple(expected_shape or ()):
            keep[i] = False
            problems.append((i, f"shape {c.shape}, expected {tuple(expected_shape or ())}"))
            continue
        m = np.ones(c.shape, dtype=bool) if mask is None else np.asarray(mask[i], dtype=bool)
        if m.shape != c.shape:
            keep[i] = False
            problems.append((i, f"mask shape {m.shape}, expected {c.shape}"))
            continue
        bad = ~np.isfinite(c)
        if bad.any():
            keep[i] = False
            problems.append((i, f"NaN or infinite counts in {int(bad.sum())} voxel(s)"))
            continue
        negative = (c < 0) & m
        if negative.any():
            keep[i] = False
            problems.append((i, f"negative counts in {int(negative.sum())} measured voxel(s) (min {c[negative].min():g})"))
            continue
        if not m.any():
            keep[i] = False
            problems.append((i, "no measured voxel (all masked)"))
    return keep, problems


def synthetic_shoeboxes(n: int, *, shape: tuple[int, int, int] = (3, 21, 21), seed: int = 0,
                        intensity_scale: float = 2000.0, b_factor_A2: float = 20.0,
                        background_range: tuple[float, float] = (0.5, 4.0), d_range_A: tuple[float, float] = (1.5, 8.0),
                        detector_px: tuple[int, int] = (2463, 2527)) -> ShoeboxSet:
    """Cheap shoeboxes with known truth, without the diffraction physics (for model tests and benchmarks).

    Each reflection has a random place on a ``detector_px`` (fast, slow) detector, a resolution
    d, an intensity drawn from an exponential (Wilson) distribution of mean
    ``intensity_scale``·exp(−B/(2d²)), a constant background drawn uniformly in
    ``background_range`` (photons per voxel) and a multivariate-normal profile whose widths
    grow with the distance from the detector centre (σ_fast, σ_slow 1.0–2.0 px, σ_z 0.5–0.8
    frames, a tilt of up to ±0.4 correlation between fast and slow). The profile is the MVN
    integrated over each voxel (6×2×2 sub-samples: frames are
    coarse along z) and normalised over the shoebox, so the
    signal sums to the intensity exactly; the predicted centroid is the MVN mean (anywhere in
    the central voxel). Counts are Poisson(I·profile + background). The extra column
    ``profile_covariance`` (n, 3, 3) holds the true covariance in (z, slow, fast) voxel units.
    """
    rng = np.random.default_rng(seed)
    n_f, height, width = shape
    pos = rng.uniform([width, height], [detector_px[0] - width, detector_px[1] - height], size=(n, 2))
    radius = np.linalg.norm((pos - np.asarray(detector_px) / 2.0) / (np.asarray(detector_px) / 2.0), axis=1) / math.sqrt(2)
    inv_d2 = rng.uniform(1.0 / d_range_A[1] ** 2, 1.0 / d_range_A[0] ** 2, size=n)
    d = 1.0 / np.sqrt(inv_d2)
    intensity = rng.exponential(intensity_scale * np.exp(-0.5 * b_factor_A2 * inv_d2))
    bg = rng.uniform(*background_range, size=n)
    sig_xy = 1.0 + radius
    sig_z = 0.5 + 0.3 * radius
    rho = 0.4 * np.cos(np.arctan2(pos[:, 1] - detector_px[1] / 2, pos[:, 0] - detector_px[0] / 2) * 2.0)
    cov = np.zeros((n, 3, 3))
    cov[:, 0, 0] = sig_z**2
    cov[:, 1, 1] = sig_xy**2
    cov[:, 2, 2] = (sig_xy * 1.1) ** 2
    cov[:, 1, 2] = cov[:, 2, 1] = rho * sig_xy * sig_xy * 1.1
    centre = np.stack([rng.uniform(n_f // 2, n_f // 2 + 1, n), rng.uniform(height // 2, height // 2 + 1, n),
                       rng.uniform(width // 2, width // 2 + 1, n)], axis=1)  # (z, slow, fast) in voxels
    sub_z, sub_xy = (np.arange(6) + 0.5) / 6.0, (np.arange(2) + 0.5) / 2.0
    zz, yy, xx = np.meshgrid(np.arange(n_f), np.arange(height), np.arange(width), indexing="ij")
    grid = np.stack([zz, yy, xx], axis=-1).reshape(-1, 3).astype(np.float32)
    offsets = np.stack(np.meshgrid(sub_z, sub_xy, sub_xy, indexing="ij"), axis=-1).reshape(-1, 3)
    profile = np.zeros((n, grid.shape[0]), np.float32)
    inv = np.linalg.inv(cov).astype(np.float32)
    for o in offsets:
        delta = grid[None, :, :] + (o - centre).astype(np.float32)[:, None, :]
        profile += np.exp(-0.5 * np.sum(np.matmul(delta, inv) * delta, axis=-1))
    profile /= profile.sum(axis=1, keepdims=True)
    profile = profile.reshape(n, n_f, height, width)
    signal = (intensity[:, None, None, None] * profile).astype(np.float32)
    background = np.broadcast_to(bg[:, None, None, None], signal.shape).astype(np.float32)
    counts = rng.poisson(signal.astype(np.float64) + background).astype(np.int32)
    corner = (np.floor(pos) - np.array([width // 2, height // 2])).astype(np.int32)
    image = rng.integers(1, 1000, size=n).astype(np.int32)
    xyz = np.stack([corner[:, 0] + centre[:, 2], corner[:, 1] + centre[:, 1], image - n_f // 2 + centre[:, 0]], axis=1)
    reflections = {
        "miller_index": rng.integers(-30, 31, size=(n, 3)).astype(np.int32),
        "image": image,
        "frame_first": (image - n_f // 2).astype(np.int32),
        "corner_px": corner,
        "xyz_px": xyz,
        "phi_deg": (xyz[:, 2] * 0.1).astype(np.float64),
        "panel": np.zeros(n, np.int32),
        "d_A": d,
        "wavelength_A": np.ones(n),
        "ewald_offset_per_A": np.zeros(n),
        "partiality": np.ones(n),
        "lorentz": np.ones(n),
        "polarization": np.ones(n),
        "solid_angle_sr": np.zeros(n),
        "scale": np.ones(n),
        "F_true": np.sqrt(intensity),
        "intensity_true": intensity,
        "tail_fraction": np.zeros(n),
        "profile_covariance": cov,
    }
    attrs = {"synthetic": {"n": n, "shape": list(shape), "seed": seed, "intensity_scale": intensity_scale,
                           "b_factor_A2": b_factor_A2, "background_range": list(background_range),
                           "d_range_A": list(d_range_A), "detector_px": list(detector_px)}, "seed": int(seed)}
    return ShoeboxSet(counts, signal, background, np.ones(signal.shape, bool), reflections, attrs)
