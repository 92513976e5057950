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
from dataclasses import replace
from typing import Any, Sequence

import numpy as np

from xrais.errors import ConfigError
from xrais.geometry import Beam, Detector
from xrais.simulate.background import BackgroundLayer, background_image
from xrais.simulate.crystal import Crystal
from xrais.simulate.kernel import run_plan
from xrais.simulate.mosaic import mosaic_rotations
from xrais.simulate.render import fluence_photons_per_m2, render_plan
from xrais.simulate.sampler import random_rotation
from xrais.simulate.shoebox_checks import screen_shoeboxes, synthetic_shoeboxes
from xrais.simulate.shoebox_prediction import predict_still_reflections, predict_rotation_reflections
from xrais.simulate.shoebox_set import REFLECTION_COLUMNS, SHOEBOX_ARRAYS, ShoeboxConfig, ShoeboxSet
from xrais.simulate.shoebox_truth import check_lattice_shape, true_intensities

__all__ = ["ShoeboxConfig", "ShoeboxSet", "simulate_shoeboxes", "predict_rotation_reflections",
           "screen_shoeboxes", "synthetic_shoeboxes", "REFLECTION_COLUMNS", "SHOEBOX_ARRAYS"]

# the pieces live in their own modules; this one renders and assembles the shoeboxes

log = logging.getLogger(__name__)

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
    check_lattice_shape(crystal)
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
            p = predict_still_reflections(xtal_i, beam, detector, cfg.d_min_A)
            p["image"] = np.full(len(p["d_A"]), i, dtype=np.int64)
            p["orientation"] = p["image"]
            p["z"] = p["image"] + 0.5
            parts.append(p)
        pred = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else \
            {k: v[:0] for k, v in predict_still_reflections(crystal, beam, detector, cfg.d_min_A).items()} | {
                "image": np.zeros(0, np.int64), "orientation": np.zeros(0, np.int64), "z": np.zeros(0)}

    n_all = len(pred["d_A"])
    center_px = np.floor(pred["position_px"]).astype(np.int64)
    corner = np.stack([center_px[:, 0] - width // 2, center_px[:, 1] - height // 2], axis=1) if n_all else \
        np.zeros((0, 2), dtype=np.int64)
    first = (np.floor(pred["z"]).astype(np.int64) - n_f // 2) if cfg.mode == "rotation" else pred["image"].copy()

    wanted = np.ones(n_all, dtype=bool) if images is None else np.isin(pred["image"], np.asarray(list(images)))
    # the truth of the reflections returned only (the others are rendered for their overlaps)
    truth_part = true_intensities(crystal, crystals, domains, beam, detector, cfg, {k: v[wanted] for k, v in pred.items()},
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
