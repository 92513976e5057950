"""The true intensity of a simulated reflection, and its corrections, in closed form.

See :mod:`xrais.simulate.shoeboxes` for the formulas: for the Gaussian lattice transforms the
integral of F_latt² over the Ewald sphere is Gaussian in the excitation error, evaluated at
every sub-step and mosaic domain of every frame.
"""

from __future__ import annotations

import math

import numpy as np

from xrais.errors import ConfigError
from xrais.geometry import Beam, Detector, rotation_matrix
from xrais.simulate.crystal import Crystal
from xrais.simulate.mosaic import SPINDLE_AXIS
from xrais.simulate.render import R_E2_M2
from xrais.simulate.sources import polarization_axis
from xrais.simulate.shoebox_set import ShoeboxConfig

__all__ = ["check_lattice_shape", "sigma2_bound", "true_intensities"]

# --------------------------------------------------------------------------- truth
_GAUSS_SHAPES = ("gauss_2022", "gauss")


def check_lattice_shape(crystal: Crystal) -> None:
    if crystal.shape not in _GAUSS_SHAPES:
        raise ConfigError(f"shoebox truth: crystal shape {crystal.shape!r} has no closed-form integral here; "
                          f"expected one of {', '.join(_GAUSS_SHAPES)}")


def sigma2_bound(crystal: Crystal) -> float:
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


def true_intensities(crystal: Crystal, crystals: list[Crystal], domains: np.ndarray, beam: Beam, detector: Detector,
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
    width = np.sqrt(sigma2_bound(crystal)) + math.radians(crystal.mosaic_spread_deg) / pred["d_A"]
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
