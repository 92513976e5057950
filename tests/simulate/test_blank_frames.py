"""Blank frames (no crystal in the beam) and a fluence drawn per image."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from xrais.simulate.config import SimulationConfig
from xrais.simulate.image import simulate_image
from xrais.simulate.sampler import sample_image

SMALL = dict(detector_choices=("pilatus2m",), distance_mm_range=(180.0, 220.0), cell_volume_A3_range=(6e4, 1.5e5),
             mosaic_domains=1, render_method="spots", structure_bank_size=2)


def _without(params, *names):
    return {k: v for k, v in dataclasses.asdict(params).items() if k not in names}


def test_new_options_leave_every_other_draw_unchanged():
    plain = SimulationConfig(**SMALL)
    varied = SimulationConfig(**SMALL, blank_fraction=0.5, photons_per_image_range=(1e10, 1e12))
    for i in range(12):
        a, b = sample_image(plain, 5, i), sample_image(varied, 5, i)
        assert _without(a, "bragg", "photons_per_image") == _without(b, "bragg", "photons_per_image")
        assert a.bragg and a.photons_per_image == plain.photons_per_image


def test_blank_fraction_and_fluence_range_are_followed():
    config = SimulationConfig(**SMALL, blank_fraction=0.3, photons_per_image_range=(1e10, 1e12))
    drawn = [sample_image(config, 9, i) for i in range(400)]
    blanks = np.mean([not p.bragg for p in drawn])
    assert 0.22 < blanks < 0.38  # 0.3 ± 3.5σ for 400 draws
    log_photons = np.log10([p.photons_per_image for p in drawn])
    assert log_photons.min() >= 10 and log_photons.max() <= 12
    assert abs(log_photons.mean() - 11.0) < 0.12  # log-uniform: mean of log10 at the centre


def test_a_drawn_blank_is_the_frame_without_its_crystal():
    config = SimulationConfig(**SMALL, blank_fraction=0.5)
    params = next(p for p in (sample_image(config, 3, i) for i in range(20)) if not p.bragg)
    blank = simulate_image(config, params)
    hit = simulate_image(config, dataclasses.replace(params, bragg=True))
    removed = simulate_image(config, dataclasses.replace(params, bragg=True), bragg=False)
    np.testing.assert_array_equal(blank.raw, removed.raw)
    assert hit.photons.sum() > blank.photons.sum()
    assert blank.labels["bragg"] == 0 and hit.labels["bragg"] == 1
    assert blank.labels["inv_resolution_per_A"] == 0.0 and math.isinf(blank.labels["resolution_A"])
    assert hit.labels["inv_resolution_per_A"] == pytest.approx(1.0 / params.resolution_A)


def test_background_follows_the_drawn_fluence():
    config = SimulationConfig(**SMALL, blank_fraction=0.0)
    params = dataclasses.replace(sample_image(config, 4, 0), bragg=False)
    low = simulate_image(config, dataclasses.replace(params, photons_per_image=1e11))
    high = simulate_image(config, dataclasses.replace(params, photons_per_image=4e11))
    assert high.labels["photons_per_image"] == 4e11
    np.testing.assert_allclose(high.photons, 4.0 * low.photons, rtol=1e-5)


def test_fluence_range_is_checked():
    with pytest.raises(ValueError, match="photons_per_image_range"):
        SimulationConfig(photons_per_image_range=(1e12, 1e10))
