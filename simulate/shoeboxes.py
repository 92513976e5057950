"""Shoeboxes: per reflection, the (frames, height, width) voxels around its predicted spot.

For a rotation series (spindle +x, ``osc_deg`` per frame) or a set of stills,
:func:`simulate_shoeboxes` predicts every reflection, renders the Bragg signal of the
kinematic simulator (:func:`xrais.simulate.render`, the same per-pixel physics) only in the
shoebox windows, adds the amorphous background and draws Poisson counts. Per reflection it
returns the counts, the noiseless signal of that reflection alone, the background in the same
voxels, a mask of the voxels a detector measured, and its metadata and true intensity.

Conventions
-----------
* Voxels are indexed ``[frame, slow, fast]``; a shoebox of shape (F, H, W) starts at data-array
  pixel ``corner_px = (fast0, slow0)`` and at frame ``frame_first``. The shoebox is centred on
  the pixel and frame holding the predicted centroid.
* Frame ``i`` of a rotation series covers φ ∈ [φ₀ + i·osc, φ₀ + (i+1)·osc); its image is the
  average over ``phi_steps`` sub-steps at the sub-step midpoints. Continuous frame
  coordinates ``z`` put the start of frame ``i`` at ``z = i`` (DIALS' convention), so a
  reflection in diffraction at φ_c has ``z = (φ_c − φ₀)/osc``.
* A still is a one-frame shoebox (F = 1); image ``i`` has its own random crystal orientation.
* Only predicted reflections scatter: the signal of each is rendered with a structure-factor
  table holding that reflection alone (reflections whose windows do not touch are rendered
  together), so ``signal`` is the reflection's own photons and ``counts`` also hold any
  neighbour whose window overlaps.

True intensity (photons recorded on the detector; nanoBragg units, PHYSICS.md §6)
---------------------------------------------------------------------------------
A pixel holds r_e²·Φ·Ω·P·|F|²·⟨F_latt²⟩ (Φ fluence, Ω solid angle, P polarization, ⟨⟩ the mean
over sub-steps and mosaic domains), times the crystal's domain count and the image's scale s.
Summed over pixels, ΣΩ → ∫dΩ = λ²∫dA over the Ewald sphere, so a reflection records
I = s·c·r_e²·Φ·P·|F|²·λ²·⟨Π(ε)⟩ where Π(ε) is the integral of F_latt² over the plane at
excitation error ε (Å⁻¹) from the lattice point. For the Gaussian lattice transforms
(``gauss_2022``: F_latt = N·exp(−Σ(Δh_i N_i)²/0.63); ``gauss``: N·exp(−|ΔS|²N²/0.63)),
F_latt² = N²·exp(−ΔSᵀQΔS) and

    Π(ε) = N²·π^{3/2}/√det Q · exp(−ε²/2σ²)/√(2πσ²),   σ² = n̂ᵀQ⁻¹n̂/2,

with n̂ the Ewald-sphere normal ŝ₁. This is evaluated at every sub-step and domain of every
frame (exact ε, no linearisation), so ``intensity_true`` is independent of the render and
``Σ signal`` over a shoebox equals ``intensity_true·(1 − tail_fraction)`` up to the small
spatial tails outside the window. A rotation sweep through a whole reflection gives
λ³·L·Π₀/Δφ with the Lorentz factor L = 1/|ê·(ŝ₀ × ŝ₁)| (the integral of Π over ε is
Π₀ = N²·π^{3/2}/√det Q).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from xrais.errors import ConfigError, DatasetError
from xrais.geometry import Beam, Detector, rotation_matrix
from xrais.simulate.background import BackgroundLayer, background_image
from xrais.simulate.crystal import Crystal
from xrais.simulate.kernel import run_plan
from xrais.simulate.mosaic import SPINDLE_AXIS, mosaic_rotations
from xrais.simulate.render import R_E2_M2, fluence_photons_per_m2, render_plan
from xrais.simulate.sampler import random_rotation
from xrais.simulate.sources import polarization_axis

__all__ = ["ShoeboxConfig", "ShoeboxSet", "simulate_shoeboxes", "predict_rotation_reflections",
           "screen_shoeboxes", "synthetic_shoeboxes", "REFLECTION_COLUMNS", "SHOEBOX_ARRAYS"]

log = logging.getLogger(__name__)

#: Per-reflection metadata columns of a :class:`ShoeboxSet` (shape, dtype, meaning).
REFLECTION_COLUMNS = {
    "miller_index": ("(n, 3) int32", "h, k, l as indexed (not reduced to the asymmetric unit)"),
    "image": ("(n,) int32", "0-based image holding the centroid (BATCH − 1)"),
    "frame_first": ("(n,) int32", "image of the shoebox's first frame"),
    "corner_px": ("(n, 2) int32", "(fast, slow) data-array pixel of voxel [:, 0, 0]"),
    "xyz_px": ("(n, 3) float64", "predicted centroid: fast, slow (pixels), z (frames)"),
    "phi_deg": ("(n,) float64", "spindle angle of the centroid (stills: the image's angle, 0)"),
    "panel": ("(n,) int32", "detector panel of the centroid"),
    "d_A": ("(n,) float64", "resolution d from the cell"),
    "wavelength_A": ("(n,) float64", "wavelength"),
    "ewald_offset_per_A": ("(n,) float64", "excitation error |s₀+S| − 1/λ at the centroid image's mid-angle"),
    "partiality": ("(n,) float64", "rotation: fraction of the reflection recorded in the scan; "
                   "still: Π(ε)/Π(0) averaged over domains"),
    "lorentz": ("(n,) float64", "Lorentz factor 1/|ê·(ŝ₀×ŝ₁)| (rotation), 1 for stills"),
    "polarization": ("(n,) float64", "polarization factor P at the centroid"),
    "solid_angle_sr": ("(n,) float64", "solid angle Ω of the centroid pixel"),
    "scale": ("(n,) float64", "per-image scale applied to the Bragg signal of the centroid image"),
    "F_true": ("(n,) float64", "|F| (electrons) of the reflection in the structure-factor table"),
    "intensity_true": ("(n,) float64", "photons the reflection records over the scan (its image, for a still)"),
    "tail_fraction": ("(n,) float64", "part of intensity_true in frames outside the shoebox"),
}
#: The voxel arrays of a :class:`ShoeboxSet`.
SHOEBOX_ARRAYS = ("counts", "signal", "background", "mask")


class ShoeboxConfig(BaseModel):
    """How shoeboxes are simulated: the scan, the shoebox, background, scales and noise."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["rotation", "stills"] = Field("rotation", description="a rotation series or independent stills")
    n_images: int = Field(10, ge=1, le=100_000, description="frames of the series, or number of stills")
    shoebox_shape: tuple[int, int, int] = Field((3, 21, 21),
                                                description="(frames, height, width) voxels; stills use 1 frame")
    phi_start_deg: float = Field(0.0, description="spindle angle at the start of the first frame")
    osc_deg: float = Field(0.5, gt=0, le=30, description="rotation per frame")
    phi_steps: int = Field(4, ge=1, le=100, description="sub-steps averaged per frame")
    d_min_A: float = Field(2.0, gt=0.3, le=100, description="resolution limit of the predicted reflections")
    oversample: int = Field(1, ge=1, le=16, description="sub-pixels per pixel side")
    min_partiality: float = Field(0.05, ge=0, le=1, description="stills: drop reflections less in diffraction")
    image_scale_sigma: float = Field(0.1, ge=0, le=3, description="σ of the log-normal per-image scale (mean 1)")
    crystal_scale: float = Field(1.0, gt=0, description="Bragg signal multiplier: mosaic domains in the crystal")
    air_mm: float = Field(5.0, ge=0, le=10000, description="air path in the beam")
    water_um: float = Field(25.0, ge=0, le=10000, description="water / buffer thickness")
    background_scale: float = Field(1.0, ge=0, description="overall background factor")

    @field_validator("shoebox_shape")
    @classmethod
    def _shape(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if not all(1 <= int(n) <= 255 for n in v):
            raise ValueError("shoebox_shape: expected three sizes of 1–255 voxels")
        return tuple(int(n) for n in v)  # type: ignore[return-value]

    def effective_shape(self) -> tuple[int, int, int]:
        """The shoebox shape actually used: one frame for stills."""
        f, h, w = self.shoebox_shape
        return (1, h, w) if self.mode == "stills" else (f, h, w)


@dataclass(frozen=True, eq=False)
class ShoeboxSet:
    """Shoeboxes with their truth and metadata; every array has one row per reflection.

    Attributes
    ----------
    counts : ndarray, shape (n, F, H, W), int32 — photons counted (0 where masked)
    signal : ndarray, shape (n, F, H, W), float32 — the reflection's own noiseless photons
    background : ndarray, shape (n, F, H, W), float32 — noiseless background photons
    mask : ndarray, shape (n, F, H, W), bool — True where a pixel of a frame of the scan was measured
    reflections : dict of str to ndarray — :data:`REFLECTION_COLUMNS`
    attrs : dict — provenance (config JSON, seed, geometry), stored as file attributes
    """

    counts: np.ndarray
    signal: np.ndarray
    background: np.ndarray
    mask: np.ndarray
    reflections: dict[str, np.ndarray]
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.counts.shape[0]
        for name in SHOEBOX_ARRAYS:
            arr = getattr(self, name)
            if arr.shape != self.counts.shape:
                raise DatasetError(f"shoeboxes: {name} has shape {arr.shape}, expected {self.counts.shape}")
        for name, col in self.reflections.items():
            if len(col) != n:
                raise DatasetError(f"shoeboxes: column {name!r} has {len(col)} rows, expected {n}")

    def __len__(self) -> int:
        return int(self.counts.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """(frames, height, width) of one shoebox."""
        return tuple(self.counts.shape[1:])  # type: ignore[return-value]

    def subset(self, index: Any) -> "ShoeboxSet":
        """The rows ``index`` (an integer array or a boolean mask)."""
        return ShoeboxSet(self.counts[index], self.signal[index], self.background[index], self.mask[index],
                          {k: v[index] for k, v in self.reflections.items()}, dict(self.attrs))

    @staticmethod
    def concatenate(sets: Sequence["ShoeboxSet"]) -> "ShoeboxSet":
        """Rows of several sets of the same shoebox shape and columns, in order."""
        if not sets:
            raise DatasetError("shoeboxes: nothing to concatenate")
        shapes = {s.shape for s in sets}
        if len(shapes) != 1:
            raise DatasetError(f"shoeboxes: cannot join sets of shapes {sorted(shapes)}")
        cols = set(sets[0].reflections)
        return ShoeboxSet(*(np.concatenate([getattr(s, a) for s in sets]) for a in SHOEBOX_ARRAYS),
                          {k: np.concatenate([s.reflections[k] for s in sets]) for k in sorted(cols)},
                          dict(sets[0].attrs))

    def signal_sum(self) -> np.ndarray:
        """(n,) float64 — the reflection's noiseless photons inside the shoebox (all voxels)."""
        return self.signal.reshape(len(self), -1).sum(axis=1, dtype=np.float64)


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


def _predict_still(crystal: Crystal, beam: Beam, detector: Detector, d_min_A: float) -> dict[str, np.ndarray]:
    """Reflections near the Ewald sphere of a still (window: 5 σ of the widest Gaussian lattice point)."""
    hkl, f_abs = _miller_candidates(crystal, d_min_A)
    k = 1.0 / beam.wavelength_A
    s0 = np.asarray(beam.direction) * k
    s = hkl @ crystal.A.T
    v = s0[None, :] + s
    eps = np.linalg.norm(v, axis=1) - k
    width = 5.0 * math.sqrt(_sigma2_bound(crystal)) + np.linalg.norm(s, axis=1) * math.radians(crystal.mosaic_spread_deg)
    near = np.abs(eps) <= width
    s1 = v[near] / np.linalg.norm(v[near], axis=1, keepdims=True) * k
    pos, panel = _intersect(detector, s1)
    hit = panel >= 0
    idx = np.nonzero(near)[0][hit]
    return {"miller_index": hkl[idx], "phi_deg": np.zeros(len(idx)), "position_px": pos[hit], "panel": panel[hit],
            "d_A": 1.0 / np.linalg.norm(s[idx], axis=1), "F": f_abs[idx], "s1": s1[hit]}


# --------------------------------------------------------------------------- truth
_GAUSS_SHAPES = ("gauss_2022", "gauss")


def _check_shape(crystal: Crystal) -> None:
    if crystal.shape not in _GAUSS_SHAPES:
        raise ConfigError(f"shoebox truth: crystal shape {crystal.shape!r} has no closed-form integral here; "
                          f"expected one of {', '.join(_GAUSS_SHAPES)}")


def _sigma2_bound(crystal: Crystal) -> float:
    """Largest σ² (Å⁻²) of the Gaussian lattice point along any direction."""
    n = np.asarray(crystal.n_cells, dtype=float)
    if crystal.shape == "gauss":
        return 0.63 / (4.0 * float(np.prod(n)) ** 2)
    return 0.63 / 4.0 * float(np.max(np.linalg.svd(crystal.A / n[None, :], compute_uv=False)) ** 2)


def _lattice_point_integral(crystal: Crystal) -> float:
    """Π₀ = ∫F_latt² d³S (Å⁻³): N·(0.315π)^{3/2}/V (gauss_2022) or N²·(0.315π/N²)^{3/2} (gauss)."""
    n = float(np.prod(crystal.n_cells))
    if crystal.shape == "gauss":
        return n * n * (0.315 * math.pi / (n * n)) ** 1.5
    volume = abs(float(np.linalg.det(crystal.real_space_matrix)))
    return n * (0.315 * math.pi) ** 1.5 / volume


def _plane_integrals(crystal: Crystal, hkl: np.ndarray, orientations: np.ndarray,
                     s0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Π(ε) (Å⁻²) and ε (Å⁻¹) for every reflection × orientation; orientations (m, 3, 3) are U·R(φ) rotations.

    For ``gauss_2022`` σ² = 0.63/4·Σ_i (n̂·a*_i)²/N_i² with a*_i the oriented reciprocal
    axes; for ``gauss`` σ² = 0.63/(4N²).
    """
    a_mats = orientations @ crystal.A  # (m, 3, 3) columns a*, b*, c*
    s = np.einsum("mij,nj->nmi", a_mats, hkl.astype(float))  # (n, m, 3)
    v = s + s0[None, None, :]
    length = np.linalg.norm(v, axis=2)
    eps = length - np.linalg.norm(s0)
    normal = v / length[..., None]
    n_cells = np.asarray(crystal.n_cells, dtype=float)
    if crystal.shape == "gauss":
        sigma2 = np.full(eps.shape, 0.63 / (4.0 * float(np.prod(n_cells)) ** 2))
    else:
        proj = np.einsum("nmi,mij->nmj", normal, a_mats)  # n̂·a*_j
        sigma2 = 0.63 / 4.0 * np.sum((proj / n_cells[None, None, :]) ** 2, axis=2)
    pi0 = _lattice_point_integral(crystal)
    return pi0 * np.exp(-eps * eps / (2.0 * sigma2)) / np.sqrt(2.0 * math.pi * sigma2), eps


def _polarization(beam: Beam, s1_unit: np.ndarray) -> np.ndarray:
    """P = ½(1 + cos²2θ − K·(d·ê)² + K·(d·b̂)²) for unit diffracted directions (n, 3) (as pixel_maps)."""
    inc = np.asarray(beam.direction, dtype=float)
    e_axis = polarization_axis(beam)
    b_axis = np.cross(e_axis, inc)
    b_axis /= np.linalg.norm(b_axis)
    e_axis = np.cross(inc, b_axis)
    kahn = 2.0 * beam.polarization_fraction - 1.0
    cos2t = s1_unit @ inc
    de, db = s1_unit @ e_axis, s1_unit @ b_axis
    return 0.5 * (1.0 + cos2t * cos2t - kahn * (de * de - db * db))


def _solid_angle(detector: Detector, panel: np.ndarray, position_px: np.ndarray) -> np.ndarray:
    """Ω (sr) of the pixels holding ``position_px`` (their centres): p_f·p_s·close/R³."""
    out = np.zeros(len(panel))
    for idx, p in enumerate(detector.panels):
        sel = panel == idx
        if not sel.any():
            continue
        f = np.floor(position_px[sel, 0]) + 0.5 - p.array_offset_px[0]
        s = np.floor(position_px[sel, 1]) + 0.5 - p.array_offset_px[1]
        xyz = p.pixel_lab_coord_mm(f, s)
        r = np.linalg.norm(xyz, axis=-1)
        out[sel] = p.pixel_size_mm[0] * p.pixel_size_mm[1] * p.distance_mm / r**3
    return out


# --------------------------------------------------------------------------- rendering
def _window_rows(detector: Detector, corner: np.ndarray, height: int, width: int) -> list[np.ndarray]:
    """Kernel rows (panel, slow, fast range, output slow, fast offset) of every window, clipped to the panels."""
    out = []
    for f0, s0 in corner:
        rows = []
        for i, p in enumerate(detector.panels):
            off_f, off_s = p.array_offset_px
            f_lo, f_hi = max(0, f0 - off_f), min(p.image_size[0], f0 + width - off_f)
            s_lo, s_hi = max(0, s0 - off_s), min(p.image_size[1], s0 + height - off_s)
            if f_hi <= f_lo or s_hi <= s_lo:
                continue
            for s in range(s_lo, s_hi):
                rows.append((i, s, f_lo, f_hi, off_s + s, off_f))
        out.append(np.array(rows, dtype=np.int64).reshape(-1, 6))
    return out


def _colour(keys: np.ndarray, corner: np.ndarray, first: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Group number per observation: observations whose windows overlap get different groups.

    Observations of one Miller index share a group (they share the structure-factor entry).
    Greedy colouring of the overlap graph over a spatial hash of the windows.
    """
    n_f, height, width = shape
    uniq, node = np.unique(keys, return_inverse=True)
    neighbours: list[set[int]] = [set() for _ in range(len(uniq))]
    cells: dict[tuple[int, int], list[int]] = {}
    for i, (f0, s0) in enumerate(corner):
        cells.setdefault((int(f0) // width, int(s0) // height), []).append(i)
    for i, (f0, s0) in enumerate(corner):
        cf, cs = int(f0) // width, int(s0) // height
        for df in (-1, 0, 1):
            for ds in (-1, 0, 1):
                for j in cells.get((cf + df, cs + ds), ()):
                    if j <= i or node[i] == node[j]:
                        continue
                    if (abs(int(corner[j, 0]) - int(f0)) < width and abs(int(corner[j, 1]) - int(s0)) < height
                            and abs(int(first[j]) - int(first[i])) < n_f):
                        neighbours[node[i]].add(node[j])
                        neighbours[node[j]].add(node[i])
    colour = np.full(len(uniq), -1, dtype=np.int64)
    for v in np.argsort([-len(nb) for nb in neighbours], kind="stable"):
        used = {colour[u] for u in neighbours[v]}
        c = 0
        while c in used:
            c += 1
        colour[v] = c
    return colour[node]


def _structure_grid(hkl: np.ndarray, f_abs: np.ndarray, members: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A dense |F| box holding only the reflections ``members`` (others 0)."""
    lo = hkl.min(axis=0)
    grid = np.zeros(tuple(hkl.max(axis=0) - lo + 1), dtype=np.float32)
    idx = hkl[members] - lo
    grid[idx[:, 0], idx[:, 1], idx[:, 2]] = f_abs[members]
    return grid, tuple(int(v) for v in lo)  # type: ignore[return-value]


def _frame_noise(mean: np.ndarray, seed: int, image: int) -> np.ndarray:
    """Poisson counts of a whole frame from its own generator (seed, image): the same pixels give the same counts."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x5B0, int(image)])
    return rng.poisson(mean).astype(np.int32)


# --------------------------------------------------------------------------- main entry
def simulate_shoeboxes(
    crystal: Crystal,
    beam: Beam,
    detector: Detector,
    config: ShoeboxConfig | None = None,
    *,
    seed: int = 0,
    images: range | Sequence[int] | None = None,
    backend: str = "auto",
) -> ShoeboxSet:
    """Simulate the shoeboxes of every predicted reflection of a rotation series or of stills.

    Parameters
    ----------
    crystal : Crystal
        Cell, orientation (the orientation at φ = 0; stills draw their own), |F|, domain size
        and mosaicity. The lattice transform must be Gaussian (``gauss_2022`` or ``gauss``)
        for the closed-form true intensity.
    beam : Beam
        Wavelength, polarization and photons per image (``fluence_photons`` over ``beam_size_um``).
    detector : Detector
        Any panels; windows are clipped to them and the rest of a shoebox masked.
    config : ShoeboxConfig, optional
        The scan, shoebox shape, background and scales (defaults: :class:`ShoeboxConfig`).
    seed : int
        Seed of the per-image scales, still orientations and every frame's noise.
    images : range or sequence of int, optional
        Keep only reflections whose centroid lies on these images (the work of one MPI rank);
        frames are still rendered with every reflection that reaches them, so the counts of a
        pixel do not depend on how the images are shared.
    backend : {"auto", "numba", "cuda"}
        Kernel backend of the render.

    Returns
    -------
    ShoeboxSet
        Rows ordered by image, then spindle angle.

    Raises
    ------
    ConfigError
        For a lattice shape without a closed-form truth, or a shoebox larger than the detector.

    Examples
    --------
    >>> from xrais.simulate.structure_factors import StructureFactors
    >>> det = Detector.flat(image_size=(96, 96), pixel_size_mm=0.172, distance_mm=60, beam_center_px=(48, 48))
    >>> xtal = Crystal(cell=(40, 40, 40, 90, 90, 90), n_cells=(6, 6, 6), shape="gauss_2022",
    ...                structure_factors=StructureFactors.constant(100.0))
    >>> sb = simulate_shoeboxes(xtal, Beam(wavelength_A=1.0, fluence_photons=1e12, beam_size_um=30), det,
    ...                         ShoeboxConfig(n_images=4, d_min_A=3.0, shoebox_shape=(3, 11, 11)), backend="numba")
    >>> sb.shape, sb.counts.dtype.name, bool((sb.mask.sum(axis=(1, 2, 3)) > 0).all())
    ((3, 11, 11), 'int32', True)
    """
    cfg = config or ShoeboxConfig()
    _check_shape(crystal)
    n_f, height, width = cfg.effective_shape()
    n_slow, n_fast = detector.array_shape
    if height > n_slow or width > n_fast:
        raise ConfigError(f"shoebox {height}×{width} pixels is larger than the detector ({n_slow}×{n_fast})")
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x5CA1E])
    scales = np.exp(cfg.image_scale_sigma * rng.standard_normal(cfg.n_images) - 0.5 * cfg.image_scale_sigma**2)
    fluence = fluence_photons_per_m2(beam)
    k_len = 1.0 / beam.wavelength_A
    s0 = np.asarray(beam.direction) * k_len
    domains = mosaic_rotations(crystal.mosaic_spread_deg, int(crystal.mosaic_domains), crystal.mosaic_seed)

    if cfg.mode == "rotation":
        pred = predict_rotation_reflections(crystal, beam, detector, d_min_A=cfg.d_min_A,
                                            phi_start_deg=cfg.phi_start_deg, phi_range_deg=cfg.n_images * cfg.osc_deg)
        pred["z"] = (pred["phi_deg"] - cfg.phi_start_deg) / cfg.osc_deg
        pred["image"] = np.minimum(np.floor(pred["z"]).astype(np.int64), cfg.n_images - 1)
        crystals = [crystal]
        pred["orientation"] = np.zeros(len(pred["z"]), dtype=np.int64)
    else:
        still_rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x571])
        crystals, parts = [], []
        chosen = set(range(cfg.n_images)) if images is None else {int(i) for i in images}
        for i in range(cfg.n_images):
            xtal_i = replace(crystal, U=random_rotation(still_rng))
            crystals.append(xtal_i)
            if i not in chosen:  # a still's reflections touch no other image
                continue
            p = _predict_still(xtal_i, beam, detector, cfg.d_min_A)
            p["image"] = np.full(len(p["d_A"]), i, dtype=np.int64)
            p["orientation"] = p["image"]
            p["z"] = p["image"] + 0.5
            parts.append(p)
        pred = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else \
            {k: v[:0] for k, v in _predict_still(crystal, beam, detector, cfg.d_min_A).items()} | {
                "image": np.zeros(0, np.int64), "orientation": np.zeros(0, np.int64), "z": np.zeros(0)}

    n_all = len(pred["d_A"])
    center_px = np.floor(pred["position_px"]).astype(np.int64)
    corner = np.stack([center_px[:, 0] - width // 2, center_px[:, 1] - height // 2], axis=1) if n_all else \
        np.zeros((0, 2), dtype=np.int64)
    first = (np.floor(pred["z"]).astype(np.int64) - n_f // 2) if cfg.mode == "rotation" else pred["image"].copy()

    wanted = np.ones(n_all, dtype=bool) if images is None else np.isin(pred["image"], np.asarray(list(images)))
    # the truth of the reflections returned only (the others are rendered for their overlaps)
    truth_part = _truth(crystal, crystals, domains, beam, detector, cfg, {k: v[wanted] for k, v in pred.items()},
                        first[wanted], scales, fluence, s0)
    truth = {k: np.zeros(n_all) for k in truth_part}
    for k, v in truth_part.items():
        truth[k][wanted] = v
    if cfg.mode == "stills":
        keep_pred = truth["partiality"] >= cfg.min_partiality
        pred = {k: v[keep_pred] for k, v in pred.items()}
        truth = {k: v[keep_pred] for k, v in truth.items()}
        corner, first, wanted = corner[keep_pred], first[keep_pred], wanted[keep_pred]
        n_all = int(keep_pred.sum())
    out_idx = np.nonzero(wanted)[0]
    n_out = len(out_idx)
    shape = (n_out, n_f, height, width)
    counts = np.zeros(shape, np.int32)
    signal = np.zeros(shape, np.float32)
    bg_out = np.zeros(shape, np.float32)
    mask = np.zeros(shape, bool)
    slot = np.full(n_all, -1, dtype=np.int64)
    slot[out_idx] = np.arange(n_out)

    ident = np.column_stack([pred["miller_index"], pred["orientation"]]) if n_all else np.zeros((0, 4), np.int64)
    keys = np.unique(ident, axis=0, return_inverse=True)[1].reshape(-1) if n_all else np.zeros(0, np.int64)
    group = _colour(keys, corner, first, (n_f, height, width)) if n_all else np.zeros(0, np.int64)
    rows = _window_rows(detector, corner, height, width)
    layers = [BackgroundLayer("air", cfg.air_mm * 1000.0), BackgroundLayer("water", cfg.water_um)]
    background = background_image(beam, detector, layers, fluence_per_m2=fluence,
                                  beam_size_um=beam.beam_size_um or 100.0, scale=cfg.background_scale)
    measured = ~detector.gap_mask()
    # frames needed: every frame of the wanted shoeboxes inside the scan
    needed = sorted({int(f) for i in out_idx for f in range(first[i], first[i] + n_f) if 0 <= f < cfg.n_images})
    grid_hkl = pred["miller_index"]
    for frame in needed:
        touching = np.nonzero((first <= frame) & (first + n_f > frame))[0]
        if cfg.mode == "stills":
            touching = touching[pred["image"][touching] == frame]
        bragg = np.zeros(detector.array_shape, np.float32)
        own: dict[int, np.ndarray] = {}
        xtal = crystals[frame] if cfg.mode == "stills" else crystal
        phi0 = cfg.phi_start_deg + frame * cfg.osc_deg if cfg.mode == "rotation" else 0.0
        osc = cfg.osc_deg if cfg.mode == "rotation" else 0.0
        steps = cfg.phi_steps if cfg.mode == "rotation" else 1
        plan = render_plan(xtal, beam, detector, oversample=cfg.oversample, fluence_per_m2=fluence,
                           phi_start_deg=phi0 + 0.5 * osc / steps, osc_deg=osc, phi_steps=steps,
                           check_reflections=False, water_um=0.0)
        for g in np.unique(group[touching]):
            members = touching[group[touching] == g]
            grid, hkl_min = _structure_grid(grid_hkl, pred["F"], members)
            plan_g = replace(plan, rows=np.concatenate([rows[i] for i in members]), grid=grid, hkl_min=hkl_min,
                             default_f=0.0)
            image = run_plan(plan_g, backend, method="brute") * np.float32(cfg.crystal_scale * scales[frame])
            bragg += image
            for i in members:
                if slot[i] >= 0:
                    own[int(i)] = _cut(image, corner[i], height, width)
        mean = bragg.astype(np.float64) + background
        noisy = _frame_noise(mean, seed, frame)
        for i, sig in own.items():
            j, fz = slot[i], frame - first[i]
            m = _cut(measured, corner[i], height, width, fill=False)
            signal[j, fz] = sig * m
            bg_out[j, fz] = _cut(background, corner[i], height, width) * m
            counts[j, fz] = _cut(noisy, corner[i], height, width) * m
            mask[j, fz] = m
    reflections = _columns(pred, truth, corner, first, beam, out_idx)
    attrs = {"shoebox_config": cfg.model_dump(mode="json"), "seed": int(seed), "beam": beam.to_dict(),
             "detector": detector.to_dict(), "crystal": crystal.to_dict(), "scales": scales.tolist()}
    return ShoeboxSet(counts, signal, bg_out, mask, reflections, attrs)


def _cut(image: np.ndarray, corner: np.ndarray, height: int, width: int, fill: Any = 0) -> np.ndarray:
    """The (height, width) window of ``image`` at (fast0, slow0), ``fill`` off the array."""
    f0, s0 = int(corner[0]), int(corner[1])
    out = np.full((height, width), fill, dtype=image.dtype)
    n_s, n_f = image.shape
    fs, fe, ss, se = max(0, f0), min(n_f, f0 + width), max(0, s0), min(n_s, s0 + height)
    if fe > fs and se > ss:
        out[ss - s0: se - s0, fs - f0: fe - f0] = image[ss:se, fs:fe]
    return out


def _truth(crystal: Crystal, crystals: list[Crystal], domains: np.ndarray, beam: Beam, detector: Detector,
           cfg: ShoeboxConfig, pred: dict[str, np.ndarray], first: np.ndarray, scales: np.ndarray, fluence: float,
           s0: np.ndarray) -> dict[str, np.ndarray]:
    """True intensity, tail fraction, partiality, Lorentz, polarization, Ω, scale and ε per observation."""
    n = len(pred["d_A"])
    lam = beam.wavelength_A
    s1_unit = pred["s1"] / np.linalg.norm(pred["s1"], axis=1, keepdims=True) if n else np.zeros((0, 3))
    polar = _polarization(beam, s1_unit)
    omega = _solid_angle(detector, pred["panel"], pred["position_px"])
    prefactor = R_E2_M2 * fluence * cfg.crystal_scale * polar * pred["F"] ** 2 * lam * lam
    image = pred["image"]
    out: dict[str, np.ndarray] = {"polarization": polar, "solid_angle_sr": omega, "scale": scales[image]}
    if cfg.mode == "stills":
        total = np.zeros(n)
        part = np.zeros(n)
        eps_out = np.zeros(n)
        for i, xtal in enumerate(crystals):
            sel = image == i
            if not sel.any():
                continue
            pis, eps = _plane_integrals(xtal, pred["miller_index"][sel], domains, s0)  # φ = 0
            total[sel] = pis.mean(axis=1)
            part[sel] = total[sel] / _peak(xtal, pred["miller_index"][sel], domains, s0)
            eps_out[sel] = eps[:, 0]
        out.update(intensity_true=prefactor * scales[image] * total, tail_fraction=np.zeros(n), partiality=part,
                   lorentz=np.ones(n), ewald_offset_per_A=eps_out)
        return out
    e = np.asarray(SPINDLE_AXIS, dtype=float)
    s0_unit = np.asarray(beam.direction, dtype=float)
    lorentz = 1.0 / np.abs(np.cross(s0_unit[None, :], s1_unit) @ e) if n else np.zeros(0)
    # frames to sum: the rocking width in frames from the widest lattice point and the mosaic spread
    d_eps = np.abs(np.cross(s0_unit[None, :], s1_unit) @ e) / lam * math.radians(cfg.osc_deg)  # ε per frame
    width = np.sqrt(_sigma2_bound(crystal)) + math.radians(crystal.mosaic_spread_deg) / pred["d_A"]
    reach_each = np.minimum(200, np.ceil(6.0 * width / np.maximum(d_eps, 1e-12))).astype(np.int64) + cfg.shoebox_shape[0]
    reach = int(reach_each.max(initial=0))
    z0 = np.floor(pred["z"]).astype(np.int64)
    total = np.zeros(n)
    unscaled_scan = np.zeros(n)
    unscaled_all = np.zeros(n)
    in_box = np.zeros(n)
    sub = (np.arange(cfg.phi_steps) + 0.5) / cfg.phi_steps
    eps_mid = np.zeros(n)
    for off in range(-reach, reach + 1):
        frame = z0 + off
        acc = np.zeros(n)
        near = np.abs(off) <= reach_each  # frames beyond 6 rocking widths hold nothing
        for t in sub:
            phi = cfg.phi_start_deg + (frame[near] + t) * cfg.osc_deg
            acc[near] += _rotating_integrals(crystal, pred["miller_index"][near], phi, domains, s0)
        acc /= len(sub)
        inside = (frame >= 0) & (frame < cfg.n_images)
        sc = scales[np.clip(frame, 0, cfg.n_images - 1)]
        unscaled_all += acc
        unscaled_scan += np.where(inside, acc, 0.0)
        total += np.where(inside, acc * sc, 0.0)
        in_box += np.where(inside & (frame >= first) & (frame < first + cfg.shoebox_shape[0]), acc * sc, 0.0)
        if off == 0:
            mid = cfg.phi_start_deg + (z0 + 0.5) * cfg.osc_deg
            eps_mid = _rotating_eps(crystal, pred["miller_index"], mid, s0)
    with np.errstate(invalid="ignore", divide="ignore"):
        tail = np.where(total > 0, 1.0 - in_box / total, 0.0)
        part = np.where(unscaled_all > 0, unscaled_scan / unscaled_all, 0.0)
    out.update(intensity_true=prefactor * total, tail_fraction=np.clip(tail, 0.0, 1.0), partiality=part,
               lorentz=lorentz, ewald_offset_per_A=eps_mid)
    return out


def _rotating_integrals(crystal: Crystal, hkl: np.ndarray, phi_deg: np.ndarray, domains: np.ndarray,
                        s0: np.ndarray) -> np.ndarray:
    """Mean over mosaic domains of Π(ε) for each reflection at its own spindle angle ``phi_deg`` (n,)."""
    out = np.zeros(len(hkl))
    for phi in np.unique(phi_deg):
        sel = phi_deg == phi
        rots = domains @ rotation_matrix(SPINDLE_AXIS, float(phi))
        pis, _ = _plane_integrals(crystal, hkl[sel], rots, s0)
        out[sel] = pis.mean(axis=1)
    return out


def _rotating_eps(crystal: Crystal, hkl: np.ndarray, phi_deg: np.ndarray, s0: np.ndarray) -> np.ndarray:
    out = np.zeros(len(hkl))
    for phi in np.unique(phi_deg):
        sel = phi_deg == phi
        s = hkl[sel] @ (rotation_matrix(SPINDLE_AXIS, float(phi)) @ crystal.A).T
        out[sel] = np.linalg.norm(s + s0[None, :], axis=1) - np.linalg.norm(s0)
    return out


def _peak(crystal: Crystal, hkl: np.ndarray, rots: np.ndarray, s0: np.ndarray) -> np.ndarray:
    """Mean over domains of Π(0): the plane integral through the centre of the lattice point."""
    a_mats = rots @ crystal.A
    s = np.einsum("mij,nj->nmi", a_mats, hkl.astype(float))
    v = s + s0[None, None, :]
    normal = v / np.linalg.norm(v, axis=2, keepdims=True)
    n_cells = np.asarray(crystal.n_cells, dtype=float)
    if crystal.shape == "gauss":
        sigma2 = np.full(v.shape[:2], 0.63 / (4.0 * float(np.prod(n_cells)) ** 2))
    else:
        proj = np.einsum("nmi,mij->nmj", normal, a_mats)
        sigma2 = 0.63 / 4.0 * np.sum((proj / n_cells[None, None, :]) ** 2, axis=2)
    return (_lattice_point_integral(crystal) / np.sqrt(2.0 * math.pi * sigma2)).mean(axis=1)


def _columns(pred: dict[str, np.ndarray], truth: dict[str, np.ndarray], corner: np.ndarray, first: np.ndarray,
             beam: Beam, idx: np.ndarray) -> dict[str, np.ndarray]:
    n = len(idx)
    xyz = np.zeros((n, 3))
    xyz[:, :2] = pred["position_px"][idx]
    xyz[:, 2] = pred["z"][idx]
    cols = {
        "miller_index": pred["miller_index"][idx].astype(np.int32),
        "image": pred["image"][idx].astype(np.int32),
        "frame_first": first[idx].astype(np.int32),
        "corner_px": corner[idx].astype(np.int32),
        "xyz_px": xyz,
        "phi_deg": pred["phi_deg"][idx].astype(np.float64),
        "panel": pred["panel"][idx].astype(np.int32),
        "d_A": pred["d_A"][idx],
        "wavelength_A": np.full(n, beam.wavelength_A),
        "F_true": pred["F"][idx],
    }
    for name in ("ewald_offset_per_A", "partiality", "lorentz", "polarization", "solid_angle_sr", "scale",
                 "intensity_true", "tail_fraction"):
        cols[name] = np.asarray(truth[name], dtype=np.float64)[idx]
    return {k: cols[k] for k in REFLECTION_COLUMNS}


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
