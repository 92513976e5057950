"""Summation with a background plane and profile fitting: exact on noise-free shoeboxes, calibrated on noisy ones."""

from __future__ import annotations

import numpy as np
import pytest

from xrais.models.variational.baselines import (
    ellipsoid_peak_mask,
    fit_background_plane,
    learn_profiles,
    peak_mask_from_profile,
    profile_fit_integrate,
    summation_integrate,
)
from xrais.simulate.shoeboxes import synthetic_shoeboxes

SHAPE = (3, 15, 15)


def _spot(shape=SHAPE, centre=(1.0, 7.0, 7.0), sigma=(0.6, 1.3, 1.6)) -> np.ndarray:
    zz, yy, xx = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    p = np.exp(-0.5 * (((zz - centre[0]) / sigma[0]) ** 2 + ((yy - centre[1]) / sigma[1]) ** 2
                       + ((xx - centre[2]) / sigma[2]) ** 2))
    return p / p.sum()


def test_plane_and_intensity_are_exact_without_noise():
    profile = _spot()
    zz, yy, xx = np.meshgrid(*[np.arange(n, dtype=float) for n in SHAPE], indexing="ij")
    plane = 3.0 + 0.2 * (xx - 7) - 0.1 * (yy - 7) + 0.3 * (zz - 1)
    counts = (plane + 500.0 * profile)[None]
    mask = np.ones_like(counts, bool)
    peak = peak_mask_from_profile(profile, 0.999999)
    bg, params, cov = fit_background_plane(counts, mask, ~peak)
    np.testing.assert_allclose(bg[0], plane, atol=1e-4)  # the spot's far tail is in the background region
    assert params.shape == (1, 4) and cov.shape == (1, 4, 4)
    res = summation_integrate(counts, mask, peak)
    assert res["intensity"][0] == pytest.approx(500.0 * profile[peak].sum(), rel=1e-5)
    fit = profile_fit_integrate(counts, mask, profile[None], bg)
    assert fit["intensity"][0] == pytest.approx(500.0, rel=1e-4)
    # a masked half of the spot: profile fitting still gives the measured part's share
    mask2 = mask.copy()
    mask2[0, :, :, :7] = False
    fit2 = profile_fit_integrate(counts, mask2, profile[None], bg)
    assert fit2["intensity"][0] == pytest.approx(500.0 * profile[:, :, 7:].sum(), rel=1e-4)


def test_peak_masks():
    p = _spot()
    m = peak_mask_from_profile(p, 0.9)
    assert p[m].sum() >= 0.9 and p[m].sum() - p[m].min() < 0.9
    assert ellipsoid_peak_mask((1, 7, 7), (1, 2, 2)).sum() == 13


def test_sigmas_are_calibrated_on_poisson_data():
    sb = synthetic_shoeboxes(1500, shape=SHAPE, seed=4)
    truth = sb.signal_sum()
    peak = ellipsoid_peak_mask(SHAPE, (1.5, 6.0, 6.0))
    summ = summation_integrate(sb.counts, sb.mask, peak)
    inside = (sb.signal * peak).reshape(len(sb), -1).sum(axis=1)
    z = (summ["intensity"] - inside) / summ["sigma_intensity"]
    assert 0.9 < z.std() < 1.1 and abs(np.median(z)) < 0.1
    # profile fitting with each reflection's true profile is unbiased and calibrated, and beats summation
    true_profiles = sb.signal / np.maximum(sb.signal.sum(axis=(1, 2, 3), keepdims=True), 1e-30)
    fit = profile_fit_integrate(sb.counts, sb.mask, true_profiles, summ["background_map"], summ["plane_covariance"])
    zf = (fit["intensity"] - truth) / fit["sigma_intensity"]
    assert 0.9 < zf.std() < 1.15 and abs(np.median(zf[truth > 5 * fit["sigma_intensity"]])) < 0.15
    weak = truth < 2 * summ["sigma_intensity"]
    assert np.corrcoef(fit["intensity"][weak], truth[weak])[0, 1] > np.corrcoef(summ["intensity"][weak], truth[weak])[0, 1]


def test_learned_average_profile_is_the_mean_of_the_strong_ones():
    shapes = [_spot(centre=(1.0, 7.0, 7.0), sigma=(0.6, s, s)) for s in (1.0, 2.0)]
    n = 40
    profiles = np.stack([shapes[i % 2] for i in range(n)])
    counts = 1000.0 * profiles + 1.0
    position = np.tile([[100.0, 100.0]], (n, 1))
    position[1::2] = [900.0, 900.0]  # the wide spots sit in the other corner of the detector
    model = learn_profiles(counts, np.ones_like(counts, bool), np.ones_like(counts), np.full(n, 1000.0),
                           np.full(n, 10.0), position, (1000.0, 1000.0), regions=(2, 2), min_reflections=5)
    np.testing.assert_allclose(model.profile_for(np.array([[100.0, 100.0]]))[0], shapes[0], atol=1e-9)
    np.testing.assert_allclose(model.profile_for(np.array([[900.0, 900.0]]))[0], shapes[1], atol=1e-9)
    np.testing.assert_allclose(model.profile_for(np.array([[900.0, 100.0]]))[0], 0.5 * (shapes[0] + shapes[1]),
                               atol=1e-9)  # too few there: the overall average
    assert model.counts.tolist() == [[20, 0], [0, 20]]
