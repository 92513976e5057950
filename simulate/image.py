"""One labelled training image: lattices + background + detector effects, from its parameters.

The Bragg term of each lattice is rendered by :func:`xrais.simulate.render` (a domain of
N_a×N_b×N_c cells) and scaled by the number of domains in the crystal, (crystal volume)/(domain
volume), shared between the lattices; the amorphous background (air, water, one parasitic
scatterer) is added with the image's random scale; then photon noise and the detector's
effects (:mod:`xrais.simulate.detector_effects`) make the raw frame.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from xrais.geometry import Beam, Detector
from xrais.simulate.background import BackgroundLayer, background_image
from xrais.simulate.config import SimulationConfig
from xrais.simulate.crystal import Crystal
from xrais.simulate.detector_effects import apply_detector_effects
from xrais.simulate.render import fluence_photons_per_m2, render
from xrais.simulate.sampler import ImageParameters
from xrais.simulate.structure_factors import StructureFactors

__all__ = ["SimulatedImage", "simulate_image", "structure_factors_for", "detector_d_min_A"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimulatedImage:
    """A raw simulated frame with everything needed to label and condition it."""

    raw: np.ndarray
    """(n_slow, n_fast) int32 — counts as the detector writes them (gaps −1)"""
    photons: np.ndarray
    """(n_slow, n_fast) float32 — expected photons before noise (Bragg + background)"""
    detector: Detector
    beam: Beam
    beam_center_px: tuple[float, float]
    parameters: ImageParameters
    labels: dict[str, Any]
    seconds: dict[str, float]
    """wall time of each stage: structure factors, render, background, detector effects"""


def detector_d_min_A(detector: Detector, beam: Beam) -> float:
    """The smallest d-spacing any pixel of the detector sees (its corners)."""
    n_slow, n_fast = detector.array_shape
    corners_f = np.array([0.0, n_fast, 0.0, n_fast])
    corners_s = np.array([0.0, 0.0, n_slow, n_slow])
    return float(np.min(detector.resolution_at_pixel_A(beam, corners_f, corners_s)))


def structure_factors_for(params: ImageParameters, detector: Detector, beam: Beam, config: SimulationConfig
                          ) -> tuple[StructureFactors, tuple[float, ...], str]:
    """|F| (with the image's B factor), the cell and the space group of the image's crystal.

    A crystal of the structure bank (``params.structure_index ≥ 0``) reuses the bank's table,
    computed once per process (:func:`xrais.simulate.structure_bank.structure_bank_for`), with
    the image's jittered cell; otherwise a table is made for this image alone, to the smallest
    d its detector records (:func:`detector_d_min_A`).
    """
    from xrais.simulate.structure_bank import coarsened_d_min_A, structure_bank_for

    if params.structure_index >= 0:
        from xrais.simulate.sampler import jitter_cell

        sf, cell, space_group = structure_bank_for(config).table(params.structure_index)
        if not params.cell:  # a file: its cell is known once read
            cell = jitter_cell(cell, space_group, params.cell_jitter)
        else:
            cell = params.cell
        return sf.with_b_factor(params.b_factor_A2, cell), cell, space_group
    d_min_A = detector_d_min_A(detector, beam)
    if params.structure == "random-atom":
        d = coarsened_d_min_A(params.cell, d_min_A, config.max_structure_factor_cells)
        sf = StructureFactors.random_wilson(params.cell, params.space_group, d_min_A=d, seed=params.seed % 2**32)
        return sf.with_b_factor(params.b_factor_A2, params.cell), params.cell, params.space_group
    import gemmi

    st = gemmi.read_structure(params.structure)
    cell = (st.cell.a, st.cell.b, st.cell.c, st.cell.alpha, st.cell.beta, st.cell.gamma)
    d = coarsened_d_min_A(cell, d_min_A, config.max_structure_factor_cells)
    sf = StructureFactors.from_structure(st, d_min_A=d, b_factor_A2=params.b_factor_A2)
    return sf, cell, st.spacegroup_hm


def simulate_image(config: SimulationConfig, params: ImageParameters, *, backend: str = "auto",
                   bragg: bool = True) -> SimulatedImage:
    """Render, add background and noise, apply detector effects: the raw frame and its labels.

    With ``bragg=False``, or a blank frame drawn by the sampler (``params.bragg`` False), the
    crystal is left out: a frame of the same background, noise and detector effects (label
    ``bragg`` 0), as a frame with no crystal in the beam.
    """
    bragg = bool(bragg and params.bragg)
    params = replace(params, bragg=bragg)
    rng = np.random.default_rng(params.seed)
    clock = [time.perf_counter()]
    seconds: dict[str, float] = {}

    def lap(stage: str) -> None:
        clock.append(time.perf_counter())
        seconds[stage] = clock[-1] - clock[-2]

    detector = Detector.from_catalog(params.detector, distance_mm=params.distance_mm,
                                     beam_center_px=(params.beam_center_fast_px, params.beam_center_slow_px))
    beam = Beam(wavelength_A=params.wavelength_A, fluence_photons=params.photons_per_image or config.photons_per_image,
                beam_size_um=config.beam_size_um, divergence_mrad=config.divergence_mrad,
                polarization_fraction=config.polarization_fraction)
    sf, cell, space_group = structure_factors_for(params, detector, beam, config)
    params = replace(params, cell=tuple(float(v) for v in cell), space_group=space_group)
    lap("structure_factors")
    base = Crystal.from_domain_size(cell, params.domain_size_um, space_group=space_group, U=params.U,
                                    structure_factors=sf, shape=config.shape,
                                    mosaic_spread_deg=params.mosaic_spread_deg,
                                    mosaic_domains=config.mosaic_domains if params.mosaic_spread_deg > 0 else 1,
                                    mosaic_seed=params.seed % 2**31 or 1)
    domain_volume = math.prod(base.n_cells) * float(np.abs(np.linalg.det(base.real_space_matrix)))
    crystal_scale = (config.crystal_size_um * 1e4) ** 3 / domain_volume / params.n_lattices
    photons = np.zeros(detector.array_shape, dtype=np.float64)
    for r in params.lattice_rotations() if bragg else ():  # lattice 1 (the reference), then the rotated extras
        lattice = replace(base, U=r @ base.U)
        photons += render(lattice, beam, detector, oversample=config.oversample, backend=backend,
                          divergence_steps=config.divergence_steps, check_reflections=False,
                          method=config.render_method, tolerance=config.render_tolerance)
    photons *= crystal_scale
    lap("render")
    bg = config.background
    layers = [BackgroundLayer("air", bg.air_mm * 1000.0), BackgroundLayer("water", bg.water_um)]
    if params.parasitic_material and bg.parasitic_um > 0:
        layers.append(BackgroundLayer(params.parasitic_material, bg.parasitic_um))
    photons += background_image(beam, detector, layers, fluence_per_m2=fluence_photons_per_m2(beam),
                                beam_size_um=config.beam_size_um, scale=params.background_scale)
    photons32 = photons.astype(np.float32)
    lap("background")
    raw, record = apply_detector_effects(photons32, detector, (params.beam_center_fast_px, params.beam_center_slow_px),
                                         rng, config.detector_effects)
    lap("detector_effects")
    labels = {**params.labels(), **record.labels(), "crystal_scale": crystal_scale,
              "n_cells_a": base.n_cells[0], "n_cells_b": base.n_cells[1], "n_cells_c": base.n_cells[2],
              "photons_per_image": beam.fluence_photons}
    return SimulatedImage(raw=raw, photons=photons32, detector=detector, beam=beam,
                          beam_center_px=(params.beam_center_fast_px, params.beam_center_slow_px),
                          parameters=params, labels=labels, seconds=seconds)
