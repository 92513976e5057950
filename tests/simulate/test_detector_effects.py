"""Detector effects against closed forms: Poisson, gain/offset/read noise, calibration, flicker,
PSF, beam stop, hot/dead pixels, gaps, saturation, reproducibility, config checks, conditioning."""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest
from pydantic import ValidationError

from xrais.conditioning import condition, trusted_mask
from xrais.geometry import Detector, Panel
from xrais.simulate.detector_effects import (
    POISSON_GAUSSIAN_THRESHOLD,
    DetectorEffectsConfig,
    EffectsRecord,
    apply_detector_effects,
    beamstop_mask,
)

#: No beam stop, hot or dead pixels: only the noise under test.
PLAIN = dict(beamstop_radius_mm_range=None, hot_pixels_range=(0, 0), dead_pixels_range=(0, 0))
PILATUS_CENTER = (1231.5, 1263.5)


def flat(n_fast: int = 200, n_slow: int = 200, trusted_max: float = 1e9) -> Detector:
    return Detector.flat(image_size=(n_fast, n_slow), pixel_size_mm=0.172, distance_mm=200.0,
                         beam_center_px=(n_fast / 2, n_slow / 2), trusted_range=(0.0, trusted_max))


def uniform(det: Detector, photons: float) -> np.ndarray:
    return np.full(det.array_shape, photons, dtype=np.float32)


def run(photons: np.ndarray, det: Detector, seed: int = 0, **config):
    center = (det.n_fast / 2, det.n_slow / 2)
    return apply_detector_effects(photons, det, center, np.random.default_rng(seed), DetectorEffectsConfig(**config))


def assert_moments(x: np.ndarray, mean: float, var: float, kurt_excess_var: float, n_sigma: float = 5.0) -> None:
    """Sample mean and variance within ``n_sigma`` standard errors of ``mean`` and ``var``.

    The standard error of the sample variance is √((μ₄ − σ⁴)/N) with μ₄ − σ⁴ = 2σ⁴ + κ₄,
    ``kurt_excess_var`` being the fourth cumulant κ₄ (λ for Poisson, 0 for a Gaussian).
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    n = x.size
    assert abs(x.mean() - mean) < n_sigma * math.sqrt(var / n)
    assert abs(x.var(ddof=1) - var) < n_sigma * math.sqrt((2 * var**2 + kurt_excess_var) / n)


# --- photon statistics ---------------------------------------------------------------------


# table means and their steps (0.125 below 64, then 1), PTRS from 256, the Gaussian from 10⁷
@pytest.mark.parametrize("lam", [0.05, 0.5, 0.93, 20.0, 63.9, 64.5, 255.7, 300.0, 3000.0, 2e7])
def test_poisson_mean_and_variance(lam):
    det = flat()
    frame, _ = run(uniform(det, lam), det, seed=11, **PLAIN)
    assert frame.dtype == np.int32
    assert_moments(frame, lam, lam, lam)


def _poisson_pmf(k: np.ndarray, lam: float) -> np.ndarray:
    return np.exp(-lam + k * math.log(lam) - np.array([math.lgamma(v + 1.0) for v in k]))


@pytest.mark.parametrize("lam", [0.3, 5.3, 30.1, 100.3, 400.0])
def test_poisson_counts_follow_the_poisson_distribution(lam):
    det = flat(250, 200)
    frame, _ = run(uniform(det, lam), det, seed=int(lam * 10), **PLAIN)
    lam = float(np.float32(lam))
    k = np.arange(int(max(0.0, lam - 8 * math.sqrt(lam) - 5)), int(lam + 8 * math.sqrt(lam) + 10))
    expected = _poisson_pmf(k.astype(np.float64), lam) * frame.size
    observed = np.bincount(np.clip(frame.ravel() - k[0], 0, k.size - 1), minlength=k.size)
    ok = expected > 20  # bins with enough counts for χ²
    chi2 = float(((observed[ok] - expected[ok]) ** 2 / expected[ok]).sum())
    dof = int(ok.sum()) - 1
    assert chi2 < dof + 5 * math.sqrt(2 * dof), (chi2, dof)


def test_large_means_use_the_gaussian_path_with_poisson_moments():
    det = flat()
    lam = 5.0 * POISSON_GAUSSIAN_THRESHOLD
    photons = uniform(det, lam)
    photons[:100] = 7.0  # half the image through rng.poisson, half through the Gaussian
    frame, _ = run(photons, det, seed=3, **PLAIN)
    assert_moments(frame[100:], lam, lam, 0.0)
    assert_moments(frame[:100], 7.0, 7.0, 7.0)
    assert frame.min() >= 0


def test_no_poisson_keeps_expected_counts():
    det = flat(20, 10)
    photons = np.random.default_rng(0).uniform(0, 50, det.array_shape).astype(np.float32)
    frame, _ = run(photons, det, poisson=False, integer_output=False, **PLAIN)
    assert frame.dtype == np.float32
    np.testing.assert_allclose(frame, photons, rtol=1e-6)


def test_gain_offset_and_read_noise_closed_forms():
    det = flat()
    lam, gain, offset, sigma = 50.0, 2.5, 100.0, 3.0
    frame, _ = run(uniform(det, lam), det, seed=5, gain_adu_per_photon=gain, adc_offset_adu=offset,
                   read_noise_adu=sigma, integer_output=False, **PLAIN)
    # ADU = gain·N + offset + ε: mean gain·λ + offset, variance gain²·λ + σ², κ₄ = gain⁴·λ
    assert_moments(frame, gain * lam + offset, gain**2 * lam + sigma**2, gain**4 * lam)
    frame, _ = run(uniform(det, lam), det, seed=5, poisson=False, adc_offset_adu=offset,
                   read_noise_adu=sigma, integer_output=False, **PLAIN)
    assert_moments(frame, lam + offset, sigma**2, 0.0)


def test_counts_never_fall_below_the_trusted_minimum():
    det = flat(50, 50)
    frame, _ = run(uniform(det, 0.0), det, read_noise_adu=5.0, **PLAIN)
    assert frame.min() == 0 and frame.max() > 0


# --- calibration and flicker ---------------------------------------------------------------


def test_calibration_pattern_is_fixed_per_detector_with_the_requested_sigma():
    det = flat()
    cfg = dict(poisson=False, integer_output=False, calibration_noise=0.03, **PLAIN)
    a, _ = run(uniform(det, 1000.0), det, seed=1, **cfg)
    b, _ = run(uniform(det, 1000.0), det, seed=2, **cfg)
    np.testing.assert_array_equal(a, b)
    rel = a.astype(np.float64) / 1000.0 - 1.0
    assert_moments(rel, 0.0, 0.03**2, 0.0)
    c, _ = run(uniform(det, 1000.0), det, seed=1, calibration_seed=7, **cfg)
    assert not np.array_equal(a, c)


def test_flicker_scales_the_whole_image():
    det = flat(30, 20)
    factors = []
    for seed in range(300):
        frame, rec = run(uniform(det, 1000.0), det, seed=seed, poisson=False, integer_output=False,
                         flicker_noise=0.1, **PLAIN)
        np.testing.assert_allclose(frame, 1000.0 * rec.flicker_factor, rtol=1e-6)
        factors.append(rec.flicker_factor)
    f = np.array(factors)
    assert abs(f.mean() - 1.0) < 5 * 0.1 / math.sqrt(f.size)
    assert 0.08 < f.std() < 0.12
    _, rec = run(uniform(det, 1000.0), det, seed=0, **PLAIN)
    assert rec.flicker_factor == 1.0


# --- point spread --------------------------------------------------------------------------


def test_psf_conserves_the_total_and_widens_a_point():
    det = flat(101, 101)
    photons = np.zeros(det.array_shape, dtype=np.float32)
    photons[50, 50] = 1e4
    fwhm = 3.0
    frame, _ = run(photons, det, poisson=False, integer_output=False, psf_fwhm_px=fwhm, **PLAIN)
    assert frame.sum() == pytest.approx(1e4, rel=1e-6)
    assert frame[50, 50] < 0.2 * 1e4
    x = np.arange(101) - 50.0
    profile = frame.sum(axis=0).astype(np.float64)
    variance = float((profile * x**2).sum() / profile.sum())
    sigma = fwhm / (2 * math.sqrt(2 * math.log(2)))
    assert variance == pytest.approx(sigma**2, rel=0.02)
    np.testing.assert_allclose(frame, frame.T, rtol=1e-5, atol=1e-6)


# --- beam stop -----------------------------------------------------------------------------


def test_beamstop_mask_circle_and_arm():
    m = beamstop_mask((40, 60), (30.0, 20.0), 5.0)
    s, f = np.nonzero(m)
    assert np.all((f + 0.5 - 30.0) ** 2 + (s + 0.5 - 20.0) ** 2 <= 25.0)
    assert m.sum() == pytest.approx(math.pi * 25, rel=0.1)
    arm = beamstop_mask((40, 60), (30.0, 20.0), 5.0, arm_angle_deg=0.0, arm_width_px=4.0)
    assert arm[19, 30:].all() and arm[20, 59]          # to the +fast edge
    assert not arm[19, :24].any()                       # nothing on the other side
    up = beamstop_mask((40, 60), (30.0, 20.0), 5.0, arm_angle_deg=90.0)
    assert up[20:, 29].all() and not up[:14, 29].any()  # +slow


def test_beamstop_shadows_the_drawn_radius_around_the_beam_centre():
    det = flat(300, 300)
    radii = []
    for seed in range(8):
        frame, rec = run(uniform(det, 100.0), det, seed=seed, hot_pixels_range=(0, 0), dead_pixels_range=(0, 0))
        r_px = rec.beamstop_radius_mm / 0.172
        assert 1.0 <= rec.beamstop_radius_mm <= 15.0
        assert rec.beamstop_center_px == (150.0, 150.0)
        d = np.hypot(np.arange(300)[None, :] + 0.5 - 150.0, np.arange(300)[:, None] + 0.5 - 150.0)
        assert np.all(frame[d <= r_px] == 0)
        assert np.mean(frame[d > r_px + 1] > 0) > 0.999
        assert math.isnan(rec.beamstop_arm_angle_deg)
        radii.append(rec.beamstop_radius_mm)
    assert len(set(radii)) == len(radii)


def test_beamstop_arm_reaches_the_edge_and_transmission_scales():
    det = flat(300, 300)
    frame, rec = run(uniform(det, 100.0), det, seed=4, beamstop_arm=True, hot_pixels_range=(0, 0),
                     dead_pixels_range=(0, 0))
    a = math.radians(rec.beamstop_arm_angle_deg)
    t = np.arange(0.0, 500.0, 0.5)
    f = np.floor(150.0 + t * math.cos(a)).astype(int)
    s = np.floor(150.0 + t * math.sin(a)).astype(int)
    inside = (f >= 0) & (f < 300) & (s >= 0) & (s < 300)
    assert np.all(frame[s[inside], f[inside]] == 0)
    assert f[inside][-1] in (0, 299) or s[inside][-1] in (0, 299)
    half, _ = run(uniform(det, 100.0), det, seed=4, poisson=False, beamstop_transmission=0.5,
                  hot_pixels_range=(0, 0), dead_pixels_range=(0, 0), integer_output=False)
    assert half[150, 150] == pytest.approx(50.0) and half[0, 0] == pytest.approx(100.0)


# --- hot, dead, gaps, saturation -----------------------------------------------------------


@pytest.fixture(scope="module")
def pilatus():
    det = Detector.from_catalog("pilatus6m", distance_mm=200.0)
    gaps = det.gap_mask()
    photons = np.where(gaps, 0.0, 50.0).astype(np.float32)
    frame, rec = apply_detector_effects(photons, det, PILATUS_CENTER, np.random.default_rng(2024),
                                        DetectorEffectsConfig(hot_pixels_range=(5, 5)))
    return det, gaps, frame, rec


def test_pilatus_gaps_carry_the_gap_value(pilatus):
    det, gaps, frame, _ = pilatus
    assert frame.shape == (2527, 2463) and frame.dtype == np.int32
    assert int(gaps.sum()) == 526_101
    np.testing.assert_array_equal(frame == -1, gaps)
    mask = trusted_mask(frame, det.trusted_range, gap_mask=gaps)
    np.testing.assert_array_equal(mask, gaps)  # hot pixels (2¹⁶) are within the PILATUS range


def test_hot_and_dead_pixels_at_their_recorded_positions(pilatus):
    _, gaps, frame, rec = pilatus
    assert rec.hot_pixels.shape == (5, 2)
    f, s = rec.hot_pixels.T
    assert np.all(frame[s, f] == 65536) and not gaps[s, f].any()
    assert np.count_nonzero(frame == 65536) == 5
    f, s = rec.dead_pixels.T
    assert 0 <= len(rec.dead_pixels) <= 124
    assert np.all(frame[s, f] == 0) and not gaps[s, f].any()


def test_hot_and_dead_counts_follow_their_ranges():
    det = flat(40, 40)
    n_hot, n_dead = [], []
    for seed in range(60):
        frame, rec = run(uniform(det, 100.0), det, seed=seed, beamstop_radius_mm_range=None)
        lab = rec.labels()
        n_hot.append(lab["n_hot_pixels"])
        n_dead.append(lab["n_dead_pixels"])
        f, s = rec.hot_pixels.T
        assert np.all(frame[s, f] == 65536)
        f, s = rec.dead_pixels.T
        assert np.all(frame[s, f] == 0)
        assert not set(map(tuple, rec.hot_pixels)) & set(map(tuple, rec.dead_pixels))
    assert set(n_hot) == set(range(6))
    assert 0 <= min(n_dead) and max(n_dead) <= 124 and len(set(n_dead)) > 20


def test_saturation_clips_at_the_overload_value():
    det = flat(50, 50, trusted_max=65535.0)
    frame, rec = run(uniform(det, 1e5), det, **PLAIN)
    assert np.all(frame == 65536) and rec.n_saturated == 2500
    frame, rec = run(uniform(det, 1e5), det, overload_value=5e4, **PLAIN)
    assert np.all(frame == 50000) and rec.n_saturated == 2500
    frame, rec = run(uniform(det, 10.0), det, **PLAIN)
    assert rec.n_saturated == 0 and frame.max() < 65536


def test_wrong_photon_arrays_are_rejected():
    det = flat(20, 10)
    with pytest.raises(ValueError, match="expected shape"):
        run(np.zeros((20, 10), np.float32), det)
    bad = uniform(det, 1.0)
    bad[0, 0] = -1.0
    with pytest.raises(ValueError, match="finite counts"):
        run(bad, det)


def _two_module_detector() -> Detector:
    """Modules of 30×20 and 20×20 px side by side with a 7-column gap, in a 24-row array (4 gap rows)."""
    axes = dict(pixel_size_mm=(0.172, 0.172), fast_axis=(1.0, 0.0, 0.0), slow_axis=(0.0, -1.0, 0.0))
    return Detector(panels=(Panel("a", (30, 20), origin_mm=(-5.0, 2.0, -100.0), **axes),
                            Panel("b", (20, 20), origin_mm=(1.4, 2.0, -100.0), array_offset_px=(37, 4), **axes)),
                    array_shape=(24, 57))


def test_hot_and_dead_pixels_are_distinct_module_pixels_uniformly_spread():
    det = _two_module_detector()
    gaps = det.gap_mask()
    assert int((~gaps).sum()) == 1000
    hits = np.zeros(gaps.shape, dtype=np.int64)
    for seed in range(200):
        frame, rec = run(uniform(det, 10.0), det, seed=seed, beamstop_radius_mm_range=None,
                         hot_pixels_range=(10, 10), dead_pixels_range=(40, 40))
        picked = np.concatenate([rec.hot_pixels, rec.dead_pixels])
        assert len({tuple(p) for p in picked}) == 50  # distinct
        f, s = picked.T
        assert not gaps[s, f].any()
        np.add.at(hits, (s, f), 1)
        assert np.count_nonzero(frame == 65536) == 10
        assert np.all(frame[rec.dead_pixels[:, 1], rec.dead_pixels[:, 0]] == 0)
        np.testing.assert_array_equal(frame == -1, gaps)
    assert not hits[gaps].any()
    counts = hits[~gaps]  # 200 × 50 picks over 1000 pixels: 10 each on average
    assert abs(counts.mean() - 10.0) < 1e-12
    chi2 = float(((counts - 10.0) ** 2 / 10.0).sum())
    assert chi2 < 999 + 5 * math.sqrt(2 * 999)
    assert 0.55 < hits[:, :30].sum() / hits.sum() < 0.65  # the 600-pixel module gets 60 %


def test_hot_and_dead_pixels_when_most_module_pixels_are_picked():
    det = _two_module_detector()
    gaps = det.gap_mask()
    frame, rec = run(uniform(det, 10.0), det, seed=3, beamstop_radius_mm_range=None,
                     hot_pixels_range=(300, 300), dead_pixels_range=(900, 900))
    assert len(rec.hot_pixels) == 300 and len(rec.dead_pixels) == 700  # capped at the 1000 module pixels
    assert np.all(frame[~gaps] >= 0) and np.all(frame[gaps] == -1)
    assert np.count_nonzero(frame == 65536) == 300 and np.count_nonzero(frame == 0) == 700


def test_beam_stop_shadow_is_beamstop_mask_exactly():
    det = flat(300, 280)
    photons = np.random.default_rng(5).uniform(1.0, 100.0, det.array_shape).astype(np.float32)
    for seed in range(5):
        frame, rec = run(photons, det, seed=seed, poisson=False, integer_output=False, beamstop_arm=True,
                         beamstop_transmission=0.25, hot_pixels_range=(0, 0), dead_pixels_range=(0, 0))
        r_px = rec.beamstop_radius_mm / 0.172
        shadow = beamstop_mask(det.array_shape, rec.beamstop_center_px, (r_px, r_px), rec.beamstop_arm_angle_deg)
        expected = np.where(shadow, photons.astype(np.float64) * 0.25, photons).astype(np.float32)
        np.testing.assert_array_equal(frame, expected)


# --- reproducibility -----------------------------------------------------------------------


def test_frames_do_not_depend_on_the_number_of_threads():
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 Numba threads")
    det = flat(301, 407)  # 4 random-number blocks of rows
    photons = np.random.default_rng(1).uniform(0.0, 120.0, det.array_shape)
    photons[:5] = 3e7  # Gaussian branch
    photons[5:9] = 5e3  # PTRS
    photons[9, :] = 0.0
    cfg = dict(read_noise_adu=1.5, flicker_noise=0.05, calibration_noise=0.02, beamstop_arm=True,
               hot_pixels_range=(3, 5), dead_pixels_range=(5, 20), adc_offset_adu=4.0)
    before = numba.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 1):
            numba.set_num_threads(threads)
            results.append(run(photons.astype(np.float32), det, seed=21, **cfg))
            results.append(run(photons, det, seed=21, psf_fwhm_px=1.2, integer_output=False, **cfg))
    finally:
        numba.set_num_threads(before)
    for i in (0, 1):
        for frame, rec in results[2 + i :: 2]:
            np.testing.assert_array_equal(frame, results[i][0])
            assert rec == results[i][1]
    assert not np.array_equal(results[0][0], run(photons.astype(np.float32), det, seed=22, **cfg)[0])


def test_same_seed_identical_and_different_seed_different():
    det = flat(120, 100)
    cfg = dict(read_noise_adu=2.0, flicker_noise=0.05, calibration_noise=0.02, psf_fwhm_px=1.5,
               beamstop_arm=True, adc_offset_adu=10.0)
    a, ra = run(uniform(det, 30.0), det, seed=9, **cfg)
    b, rb = run(uniform(det, 30.0), det, seed=9, **cfg)
    c, rc = run(uniform(det, 30.0), det, seed=10, **cfg)
    np.testing.assert_array_equal(a, b)
    assert ra == rb
    assert not np.array_equal(a, c) and ra != rc
    # the geometric choices do not depend on the noise settings
    _, rd = run(uniform(det, 30.0), det, seed=9, poisson=False, beamstop_arm=True)
    assert rd.beamstop_radius_mm == ra.beamstop_radius_mm
    np.testing.assert_array_equal(rd.hot_pixels, ra.hot_pixels)


def test_record_labels_are_flat_scalars():
    det = flat(60, 60)
    _, rec = run(uniform(det, 1.0), det, seed=1)
    labels = rec.labels()
    assert isinstance(rec, EffectsRecord)
    assert set(labels) == {"beamstop_radius_mm", "beamstop_center_fast_px", "beamstop_center_slow_px",
                           "beamstop_arm_angle_deg", "n_hot_pixels", "n_dead_pixels", "flicker_factor",
                           "n_saturated"}
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in labels.values())
    assert math.isnan(labels["beamstop_arm_angle_deg"])
    _, rec = run(uniform(det, 1.0), det, seed=1, **PLAIN)
    assert rec.labels()["beamstop_radius_mm"] == 0.0


# --- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"beamstop_radius": 3.0}, "Extra inputs are not permitted"),
        ({"beamstop_radius_mm_range": (1.0, 60.0)}, "high ≤ 50 mm"),
        ({"beamstop_radius_mm_range": (10.0, 5.0)}, "0 ≤ low ≤ high"),
        ({"beamstop_radius_mm_range": (-1.0, 5.0)}, "0 ≤ low ≤ high"),
        ({"hot_pixels_range": (-1, 5)}, "hot_pixels_range"),
        ({"dead_pixels_range": (10, 2)}, "dead_pixels_range"),
        ({"read_noise_adu": -1.0}, "greater than or equal to 0"),
        ({"gain_adu_per_photon": 0.0}, "greater than 0"),
        ({"beamstop_transmission": 1.5}, "less than or equal to 1"),
        ({"beamstop_radius_mm_range": None, "beamstop_arm": True}, "arm needs a beam stop"),
        ({"hot_pixel_value": float("nan")}, "finite"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValidationError, match=match):
        DetectorEffectsConfig(**kwargs)


def test_config_is_frozen_and_round_trips_json():
    cfg = DetectorEffectsConfig(read_noise_adu=2.0, beamstop_radius_mm_range=(2.0, 10.0))
    with pytest.raises(ValidationError):
        cfg.read_noise_adu = 3.0  # type: ignore[misc]
    assert DetectorEffectsConfig.model_validate_json(cfg.model_dump_json()) == cfg
    assert DetectorEffectsConfig().beamstop_radius_mm_range == (1.0, 15.0)


# --- end to end: a PILATUS 6M frame through conditioning -----------------------------------


def test_pilatus_frame_conditions_with_a_dark_beamstop_at_the_corner(pilatus):
    _, _, frame, rec = pilatus
    q = condition(frame, PILATUS_CENTER, 2, mask=frame < 0)
    assert q.shape == (4, 512, 512) and q.dtype == np.uint8
    r_px = rec.beamstop_radius_mm / 0.172
    hot_d = np.hypot(rec.hot_pixels[:, 0] + 0.5 - PILATUS_CENTER[0], rec.hot_pixels[:, 1] + 0.5 - PILATUS_CENTER[1])
    assert np.all(hot_d > r_px + 4)  # precondition of this seed: no hot pixel behind the stop
    # pooled pixel [i, j] holds raw pixels at most (2i + 2, 2j + 2) px from the beam centre
    i = np.arange(512)
    far = np.hypot(2 * i[:, None] + 2.0, 2 * i[None, :] + 2.0)
    behind = far < r_px
    assert behind.sum() > 10
    assert np.all(q[:, behind] == 0)
    assert np.all(np.median(q[:, 150:250, 150:250], axis=(1, 2)) == 7)  # √50 ≈ 7 away from the stop
