"""The model-free spot finder (xrais.infer.spots): real frames, the SciPy reference, simulation, geometry.

The spot counts of the real frames are those of ``shared/data/README.md``; the Numba kernel
is checked against ``benchmarks/spot_finding_scipy.py``, the same algorithm written with
``scipy.ndimage``; a simulated still checks the centroids against the predicted spot positions.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from xrais.conditioning import read_image
from xrais.conditioning.image import DiffractionImage
from xrais.errors import ConfigError
from xrais.geometry import Beam, Detector, rotation_matrix
from xrais.infer.spots import SpotFinderParams, analyze_image, estimate_resolution, find_spots, spot_d_spacings_A

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from spot_finding_scipy import box_sums, find_spots_scipy

THAUMATIN = {  # README "approx. spots"
    "real/pilatus6m/thau_3_2_0001.cbf": 302,
    "real/pilatus6m/thau_3_2_0003.cbf.bz2": 1422,
    "real/pilatus6m/thau_3_2_0007.cbf.bz2": 1122,
    "real/pilatus6m/thau_3_2_0015.cbf": 51,
}
README_COUNTS = {  # README "about N dispersion spots" / "only about N spots"
    **THAUMATIN,
    "real/pilatus6m/DLS_I03_smargon_0001.cbf.gz": 120,
    "real/eiger16m/dlsnxs2cbf_therm_0001.cbf.gz": 84,
    "real/pilatus12m/DLS_I23_P12M_thau_00001.cbf.gz": 174,
    "real/pilatus2m/l-cyst_01_00001.cbf": 7,
}
EIGER2_STREAM = "real/eiger2_16m_stream/5291452/image000044"  # README: ~330 features ≥ 3 px at ≥ 5 counts
CSPAD = "real/cspad/idx-20130301060858401.cbf"
LCYST = "real/pilatus2m/l-cyst_01_00001.cbf"


@pytest.fixture(scope="module")
def real(shared_data):
    """``real(relpath)``: the DiffractionImage of a shared real frame, read once per module."""
    cache: dict[str, DiffractionImage] = {}

    def get(relpath: str) -> DiffractionImage:
        if relpath not in cache:
            cache[relpath] = read_image(shared_data(relpath))
        return cache[relpath]

    return get


def assert_same_spots(spots, ref: dict) -> None:
    """The Numba spots equal the SciPy reference's: count, pixels, boxes, peaks, centroids within 1e-6 px."""
    assert len(spots) == len(ref["fast_px"])
    assert spots.n_strong_pixels == ref["n_strong_pixels"]
    np.testing.assert_array_equal(spots.n_pixels, ref["n_pixels"])
    np.testing.assert_array_equal(spots.bbox, ref["bbox"])
    np.testing.assert_array_equal(spots.peak, ref["peak"])
    np.testing.assert_allclose(spots.fast_px, ref["fast_px"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(spots.slow_px, ref["slow_px"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(spots.intensity, ref["intensity"], rtol=1e-6, atol=1e-6)


def poisson_background(shape: tuple[int, int], mean: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).poisson(mean, size=shape).astype(np.int32)


SPOT_3X3 = np.array([[20, 60, 20], [60, 200, 60], [20, 60, 20]])


# --- real frames and the README ----------------------------------------------------------------

@pytest.mark.parametrize("relpath", sorted(README_COUNTS))
def test_real_frame_spot_count_matches_readme(real, relpath):
    image = real(relpath)
    n = len(find_spots(image.pixels, image.mask))
    expected = README_COUNTS[relpath]
    assert abs(n - expected) <= 0.3 * expected, f"{relpath}: {n} spots, README about {expected}"


def test_thaumatin_frames_in_readme_order(real):
    counts = {rel: len(find_spots(real(rel).pixels, real(rel).mask)) for rel in THAUMATIN}
    by_readme = sorted(THAUMATIN, key=THAUMATIN.get, reverse=True)   # 0003 > 0007 > 0001 > 0015
    assert sorted(counts, key=counts.get, reverse=True) == by_readme
    assert len(set(counts.values())) == len(counts)


def test_thaumatin_d5pct_near_readme(real):
    """README "d 5 %": 2.49, 1.91, 2.14, 2.99 Å (flat header geometry); ±15 %."""
    readme = {"thau_3_2_0001.cbf": 2.49, "thau_3_2_0003.cbf.bz2": 1.91, "thau_3_2_0007.cbf.bz2": 2.14,
              "thau_3_2_0015.cbf": 2.99}
    for rel in THAUMATIN:
        result = analyze_image(real(rel))
        d5 = float(np.percentile(result.spots.d_A, 5.0))
        assert d5 == pytest.approx(readme[Path(rel).name], rel=0.15)
        assert result.hit


def test_eiger2_stream_frame_is_a_hit_with_the_readme_features(real):
    """The README's ~330 is a crude count (features ≥ 3 px at ≥ 5 counts), not a dispersion count.

    Its own definition is reproduced from the decoded frame, most of those features are
    dispersion spots, and the dispersion count is of the same size.
    """
    from scipy import ndimage

    image = real(EIGER2_STREAM)
    bright = (image.pixels >= 5) & ~image.mask
    labels, _ = ndimage.label(bright, structure=np.ones((3, 3)))
    big = np.flatnonzero(np.bincount(labels.ravel())[1:] >= 3) + 1
    assert abs(big.size - 330) <= 0.1 * 330
    centres = np.array(ndimage.center_of_mass(bright, labels, big)) + 0.5   # (slow, fast)
    result = analyze_image(image)
    spots = result.spots
    nearest = np.array([np.hypot(spots.fast_px - f, spots.slow_px - s).min() for s, f in centres])
    assert (nearest < 2.0).mean() >= 0.8
    assert 0.7 * 330 <= len(spots) <= 1.5 * 330
    assert result.hit


# --- the SciPy reference ------------------------------------------------------------------------

@pytest.mark.parametrize("relpath", ["real/pilatus6m/thau_3_2_0001.cbf", LCYST])
def test_kernel_matches_scipy_reference_on_real_frames(real, relpath):
    image = real(relpath)
    params = SpotFinderParams()
    spots = find_spots(image.pixels, image.mask, params)
    assert len(spots) > 0
    assert_same_spots(spots, find_spots_scipy(image.pixels, image.mask, params))


def synthetic_frame(dtype) -> tuple[np.ndarray, np.ndarray]:
    """A 257×300 frame of non-integer counts: a background slope, 60 spots (some at the edges and
    corners), gaps, masked pixels of absurd values, NaN and inf."""
    rng = np.random.default_rng(11)
    shape = (257, 300)
    slope = 1.0 + 4.0 * np.linspace(0, 1, shape[1])[None, :] + np.zeros(shape)
    image = rng.poisson(slope).astype(np.float64)
    s, f = np.mgrid[0:shape[0], 0:shape[1]]
    centres = np.column_stack([rng.uniform(-1, shape[0], 60), rng.uniform(-1, shape[1], 60)])
    centres[:4] = [(0.3, 0.4), (256.6, 299.5), (1.0, 150.0), (128.0, 298.8)]
    for (cs, cf), height in zip(centres, rng.uniform(5, 400, 60)):
        image += rng.poisson(height * np.exp(-((s + 0.5 - cs) ** 2 + (f + 0.5 - cf) ** 2) / (2 * 1.2 ** 2)))
    mask = np.zeros(shape, dtype=bool)
    mask[100:107, :] = True                          # a module gap
    mask[:, 200:203] = True
    mask |= rng.random(shape) < 0.01                 # bad pixels
    image[mask] = rng.choice([-1.0, 1e9], size=int(mask.sum()))
    nan = (rng.random(shape) < 0.005) & ~mask        # unmasked NaN and inf are invalid too
    image[nan] = np.nan
    image[5, 7] = np.inf
    image = (image * 0.73 + 0.11).astype(dtype)       # not integers: the sums are rounded
    return image, mask


@pytest.mark.parametrize("settings", [
    {},
    {"kernel_size": (2, 4), "min_local": 0},
    {"gain": 1.5, "sigma_strong": 2.0, "sigma_background": 3.0, "global_threshold": 8.0, "min_spot_size": 1,
     "max_spot_size": 20},
], ids=["defaults", "kernel_2x4_full_area", "other_thresholds"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_kernel_matches_scipy_reference_on_synthetic_frame(settings, dtype):
    image, mask = synthetic_frame(dtype)
    params = SpotFinderParams(**settings)
    spots = find_spots(image, mask, params)
    assert len(spots) >= 20
    assert_same_spots(spots, find_spots_scipy(image, mask, params))


@pytest.mark.parametrize("shape", [(7, 7), (9, 300), (300, 9), (8, 13), (64, 61)])
def test_kernel_matches_scipy_reference_on_small_and_narrow_images(shape):
    """Windows clipped on every side at once; fewer rows than bands."""
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    image = rng.poisson(3.0, size=shape).astype(np.int32)
    bright = rng.random(shape) < 0.08
    image[bright] += rng.integers(10, 300, int(bright.sum()))
    mask = rng.random(shape) < 0.05
    params = SpotFinderParams(min_spot_size=1)
    spots = find_spots(image, mask, params)
    assert len(spots) > 0
    assert_same_spots(spots, find_spots_scipy(image, mask, params))


def test_thread_count_does_not_change_the_spots(real):
    image = real("real/pilatus6m/thau_3_2_0003.cbf.bz2")
    one = find_spots(image.pixels, image.mask, n_threads=1)
    two = find_spots(image.pixels, image.mask, n_threads=2)
    for name in ("fast_px", "slow_px", "intensity", "n_pixels", "peak", "bbox"):
        np.testing.assert_array_equal(getattr(one, name), getattr(two, name))


def test_find_spots_does_not_modify_its_input():
    image, mask = synthetic_frame(np.float64)
    before, mask_before = image.copy(), mask.copy()
    find_spots(image, mask)
    np.testing.assert_array_equal(image, before)
    np.testing.assert_array_equal(mask, mask_before)


# --- a simulated still: centroids on the predicted positions -----------------------------------

def test_spots_sit_on_predicted_positions_of_a_simulated_still():
    from xrais.simulate import Crystal, StructureFactors, predict_spots, render

    cell = (25.0, 25.0, 25.0, 90.0, 90.0, 90.0)
    detector = Detector.flat(image_size=(320, 288), pixel_size_mm=0.1, distance_mm=60.0,
                             beam_center_px=(160.3, 144.6))
    beam = Beam(wavelength_A=1.0, fluence_photons=3e20, beam_size_um=20.0)
    # equal N along a, b, c and a Gaussian lattice transform: round spots centred on the rays
    crystal = Crystal.from_domain_size(cell, 0.015, space_group="P 1", shape="gauss",
                                       U=rotation_matrix((1.0, 2.0, 3.0), 37.0),
                                       structure_factors=StructureFactors.random_wilson(cell, "P 1", d_min_A=1.5,
                                                                                        seed=3))
    photons = render(crystal, beam, detector, backend="numba").astype(np.float64)
    predicted = predict_spots(crystal, beam, detector, d_min_A=1.5).position_px      # (fast, slow)
    counts = np.random.default_rng(1).poisson(photons + 2.0).astype(np.int32)      # background + noise
    spots = find_spots(counts)

    s, f = np.mgrid[0:photons.shape[0], 0:photons.shape[1]]
    spot_photons = np.array([photons[np.hypot(f + 0.5 - pf, s + 0.5 - ps) < 4.0].sum() for pf, ps in predicted])
    inside = ((predicted[:, 0] > 4) & (predicted[:, 0] < 316) & (predicted[:, 1] > 4) & (predicted[:, 1] < 284))
    bright = predicted[(spot_photons > 50.0) & inside]
    assert len(bright) >= 30
    distance = np.array([np.hypot(spots.fast_px - pf, spots.slow_px - ps).min() for pf, ps in bright])
    assert distance.max() < 0.5, f"{np.sort(distance)[-3:]}"
    # and no strong spot away from every prediction (at the edges, spots predicted just outside show)
    strong = ((spots.intensity > 200.0) & (spots.fast_px > 4) & (spots.fast_px < 316) & (spots.slow_px > 4)
              & (spots.slow_px < 284))
    to_prediction = np.array([np.hypot(predicted[:, 0] - sf, predicted[:, 1] - ss).min()
                              for sf, ss in zip(spots.fast_px[strong], spots.slow_px[strong])])
    assert to_prediction.max() < 1.5


# --- background, hot pixels, the mask ------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_background_and_noise_give_at_most_two_spots(seed):
    assert len(find_spots(poisson_background((512, 512), 2.0, seed))) <= 2


def test_hot_pixels_give_no_spots():
    image = poisson_background((512, 512), 2.0, seed=0)
    assert len(find_spots(image)) == 0
    hot = [(10, 20), (100, 300), (255, 256), (400, 30), (511, 511)]
    for s, f in hot:
        image[s, f] = 1_000_000
    spots = find_spots(image)
    assert len(spots) == 0
    assert spots.n_strong_pixels <= 5          # at most the hot pixels themselves


def test_spot_under_a_masked_gap_is_not_found():
    image = poisson_background((128, 128), 2.0, seed=3)
    image[60:63, 70:73] += SPOT_3X3
    mask = np.zeros(image.shape, dtype=bool)
    found = find_spots(image, mask)
    assert len(found) == 1 and found.fast_px[0] == pytest.approx(71.5, abs=0.05)
    mask[57:66, :] = True                      # a module gap across the spot
    assert len(find_spots(image, mask)) == 0


def test_masked_pixels_do_not_enter_neighbour_statistics():
    image = poisson_background((128, 128), 2.0, seed=4)
    image[60:63, 70:73] += SPOT_3X3
    mask = np.zeros(image.shape, dtype=bool)
    mask[61, 74] = True                        # inside the 7×7 windows of the spot's pixels
    reference = find_spots(image, mask)
    assert len(reference) == 1
    for value in (2**31 - 1, -(2**31), 0):
        changed = image.copy()
        changed[61, 74] = value
        spots = find_spots(changed, mask)
        for name in ("fast_px", "slow_px", "intensity", "n_pixels", "peak", "bbox"):
            np.testing.assert_array_equal(getattr(spots, name), getattr(reference, name))
    floats = image.astype(np.float64)
    floats[61, 74] = np.nan
    assert len(find_spots(floats, mask)) == 1
    # unmasked, the same huge value swamps the neighbourhood: the spot is lost (the check can fail)
    changed = image.copy()
    changed[61, 74] = 10_000_000
    assert len(find_spots(changed)) == 0


# --- several panels ---------------------------------------------------------------------------------

def test_modules_alone_give_the_whole_array_spots(real):
    image = real("real/pilatus6m/thau_3_2_0003.cbf.bz2")
    detector = image.detector
    assert len(detector.panels) == 60 and detector.is_coplanar_grid()
    whole = find_spots(image.pixels, image.mask)
    parts = []
    for panel in detector.panels:
        f0, s0 = panel.array_offset_px
        nf, ns = panel.image_size
        block = (slice(s0, s0 + ns), slice(f0, f0 + nf))
        spots = find_spots(image.pixels[block], image.mask[block])
        parts.append(np.column_stack([spots.fast_px + f0, spots.slow_px + s0, spots.intensity, spots.n_pixels,
                                      spots.bbox + [s0, s0, f0, f0]]))
    modules = np.concatenate(parts)
    together = np.column_stack([whole.fast_px, whole.slow_px, whole.intensity, whole.n_pixels, whole.bbox])
    order = lambda a: a[np.lexsort((a[:, 7], a[:, 6], a[:, 5], a[:, 4]))]  # noqa: E731  (by bounding box)
    assert len(modules) == len(together) == 1422
    np.testing.assert_allclose(order(modules), order(together), rtol=0, atol=1e-9)


def test_cspad_assembled_image_spots_have_plausible_d(real):
    """The CSPAD frame is read as one image resampled onto a grid normal to the beam.

    Its counts are dark-subtracted ADU, not photons: at gain 1 every background pixel is
    over-dispersed (24,000 "spots"); with the gain set to the background's own index of
    dispersion (as ``dials.estimate_gain`` measures it) the count is that of a still. The README
    gives no count. Each spot's d is checked against the lab position of the panel pixel that
    the assembly put under it.
    """
    image = real(CSPAD)
    assert image.pixels.dtype == np.float32 and len(image.detector.panels) == 64
    valid = ~image.mask
    values = np.where(valid, image.pixels, 0).astype(np.float64)
    n = box_sums(valid.astype(np.float64), 3, 3)
    total, squares = box_sums(values, 3, 3), box_sums(values * values, 3, 3)
    full = (n == 49) & (total > 0)
    dispersion = (squares[full] - total[full] ** 2 / 49) / 48 / (total[full] / 49)
    gain = float(np.median(dispersion))
    assert 2.0 < gain < 20.0
    result = analyze_image(image, SpotFinderParams(gain=gain))
    spots = result.spots
    assert 100 <= len(spots) <= 3000 and result.hit
    assert np.isfinite(spots.d_A).all()
    assert 1.5 < np.median(spots.d_A) < 10.0

    # independent d: assemble pixel ids, find the panel pixel under each spot, take its lab position
    beam, panels = image.beam, image.detector.panels
    sizes = [p.image_size[0] * p.image_size[1] for p in panels]
    first = np.concatenate([[0], np.cumsum(sizes)])
    ids = [np.arange(first[i], first[i + 1], dtype=np.float32).reshape(p.image_size[1], p.image_size[0])
           for i, p in enumerate(panels)]
    assembled = image.detector.assemble(ids, beam)
    assert assembled.pixels.shape == image.pixels.shape
    cell_s, cell_f = np.floor(spots.slow_px).astype(int), np.floor(spots.fast_px).astype(int)
    hit = ~assembled.mask[cell_s, cell_f]
    assert hit.mean() > 0.9
    pixel_id = assembled.pixels[cell_s[hit], cell_f[hit]].astype(np.int64)
    panel_index = np.searchsorted(first, pixel_id, side="right") - 1
    two_theta_lab = []
    for pid, k in zip(pixel_id, panel_index):
        p = panels[k]
        local = pid - first[k]
        xyz = p.pixel_lab_coord_mm(local % p.image_size[0] + 0.5, local // p.image_size[0] + 0.5)
        two_theta_lab.append(math.acos(float(xyz @ np.asarray(beam.direction)) / float(np.linalg.norm(xyz))))
    d_cell = spot_d_spacings_A(image, cell_f[hit] + 0.5, cell_s[hit] + 0.5)
    two_theta = 2.0 * np.arcsin(beam.wavelength_A / (2.0 * d_cell))
    pitch_rad = 0.10992 / 130.1
    np.testing.assert_allclose(two_theta, two_theta_lab, rtol=0, atol=pitch_rad)


# --- d-spacings -------------------------------------------------------------------------------------

def test_d_spacings_on_a_two_theta_tilted_detector(real):
    image = real(LCYST)
    detector, beam = image.detector, image.beam
    assert math.degrees(math.acos(abs(float(detector.panels[0].normal @ beam.direction)))) == pytest.approx(30.0)
    rng = np.random.default_rng(5)
    spots = find_spots(image.pixels, image.mask)
    fast = np.concatenate([spots.fast_px, rng.uniform(0, image.shape[1], 200)])
    slow = np.concatenate([spots.slow_px, rng.uniform(0, image.shape[0], 200)])
    d = spot_d_spacings_A(image, fast, slow)
    # independently: the panel under each point, its lab position, the angle to the beam
    expected = np.full(fast.shape, np.nan)
    for panel in detector.panels:
        f0, s0 = panel.array_offset_px
        nf, ns = panel.image_size
        on = (fast >= f0) & (fast < f0 + nf) & (slow >= s0) & (slow < s0 + ns)
        xyz = panel.pixel_lab_coord_mm(fast[on] - f0, slow[on] - s0)
        cos2t = (xyz @ np.asarray(beam.direction)) / np.linalg.norm(xyz, axis=1)
        expected[on] = beam.wavelength_A / (2.0 * np.sin(np.arccos(cos2t) / 2.0))
    on_panel = np.isfinite(expected)
    assert on_panel[: len(spots)].all() and on_panel.sum() > 150
    np.testing.assert_allclose(d[on_panel], expected[on_panel], rtol=1e-9)
    np.testing.assert_allclose(d, spot_d_spacings_A(image, fast, slow))
    # the tilt matters: the flat formula from the header's Beam_xy would be far off
    bf, bs = image.header["beam_xy_px"]
    flat = beam.wavelength_A / (2 * np.sin(np.arctan2(0.172 * np.hypot(fast - bf, slow - bs),
                                                      image.header["distance_mm"]) / 2))
    assert np.median(np.abs(flat[on_panel] / d[on_panel] - 1)) > 0.1


def test_d_spacings_on_a_flat_detector_normal_to_the_beam():
    centre = (140.3, 90.7)
    detector = Detector.flat(image_size=(300, 200), pixel_size_mm=0.1, distance_mm=120.0, beam_center_px=centre)
    beam = Beam(wavelength_A=1.2)
    image = DiffractionImage(pixels=np.zeros((200, 300), dtype=np.int32), mask=np.zeros((200, 300), dtype=bool),
                             detector=detector, beam=beam, beam_center_px=centre,
                             header={"distance_mm": 120.0, "wavelength_A": 1.2})
    rng = np.random.default_rng(2)
    fast, slow = rng.uniform(0, 300, 500), rng.uniform(0, 200, 500)
    r = 0.1 * np.hypot(fast - centre[0], slow - centre[1])
    expected = 1.2 / (2.0 * np.sin(np.arctan(r / 120.0) / 2.0))
    np.testing.assert_allclose(spot_d_spacings_A(image, fast, slow), expected, rtol=1e-10)


# --- resolution -----------------------------------------------------------------------------------

def test_d_5pct_is_the_fifth_percentile():
    d = np.random.default_rng(0).uniform(1.5, 20.0, 333)
    result = estimate_resolution(d)
    assert result.d_5pct_A == pytest.approx(float(np.percentile(d, 5.0)))
    assert result.n_spots == 333
    keep = d > 3.0
    assert estimate_resolution(d, exclude=~keep).d_5pct_A == pytest.approx(float(np.percentile(d[keep], 5.0)))


def uniform_in_reciprocal_volume(rng, n: int, d_min: float, d_max: float) -> np.ndarray:
    ds3 = rng.uniform(d_max ** -3, d_min ** -3, n)
    return ds3 ** (-1.0 / 3.0)


@pytest.mark.parametrize("d_min", [1.8, 2.5, 3.5])
def test_distl_method_2_finds_the_limit_of_uniform_spots(d_min):
    rng = np.random.default_rng(int(d_min * 10))
    d = np.concatenate([uniform_in_reciprocal_volume(rng, 600, d_min, 40.0),
                        rng.uniform(0.75 * d_min, 0.9 * d_min, 4)])   # a few spots beyond the limit
    result = estimate_resolution(d)
    assert result.spot_resolution_A == pytest.approx(d_min, rel=0.1)
    assert result.d_5pct_A < d_min * 1.2
    assert 20 <= len(result.shells) <= 40
    assert sum(c for *_, c in result.shells) == len(d)


def test_too_few_spots_give_no_limit():
    d = uniform_in_reciprocal_volume(np.random.default_rng(1), 10, 2.0, 30.0)
    result = estimate_resolution(d)
    assert math.isnan(result.spot_resolution_A) and math.isfinite(result.d_5pct_A)
    empty = estimate_resolution(np.array([np.nan, np.inf]))
    assert math.isnan(empty.d_5pct_A) and math.isnan(empty.spot_resolution_A) and empty.n_spots == 0


# --- bad input --------------------------------------------------------------------------------------

def test_image_without_geometry_still_gets_spots(caplog):
    pixels = poisson_background((128, 128), 2.0, seed=5)
    pixels[60:63, 70:73] += SPOT_3X3
    detector = Detector.flat(image_size=(128, 128), pixel_size_mm=0.1, distance_mm=100.0,
                             beam_center_px=(64.0, 64.0))
    image = DiffractionImage(pixels=pixels, mask=np.zeros(pixels.shape, dtype=bool), detector=detector,
                             beam=Beam(wavelength_A=1.0), beam_center_px=(math.nan, math.nan),
                             header={"geometry_from_header": False})
    with caplog.at_level(logging.WARNING, logger="xrais.infer.spots"):
        result = analyze_image(image)
    assert len(result.spots) == 1 and np.isnan(result.spots.d_A).all()
    assert math.isnan(result.resolution.d_5pct_A) and not result.hit
    assert "distance_mm" in result.missing_geometry
    assert any("distance_mm" in r.getMessage() and "wavelength_A" in r.getMessage() for r in caplog.records)


def test_tiff_without_geometry_still_gets_spots(tmp_path, caplog):
    from fabio.tifimage import TifImage

    pixels = poisson_background((128, 128), 2.0, seed=6).astype(np.uint16)
    pixels[30:33, 40:43] += SPOT_3X3.astype(np.uint16)
    TifImage(data=pixels).write(str(tmp_path / "frame.tif"))
    image = read_image(tmp_path / "frame.tif")
    with caplog.at_level(logging.WARNING, logger="xrais.infer.spots"):
        result = analyze_image(image)
    assert len(result.spots) == 1 and np.isnan(result.spots.d_A).all()
    assert any("frame.tif" in r.getMessage() and "distance_mm" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("settings, name", [
    ({"sigma_strong": -1.0}, "sigma_strong"),
    ({"sigma_background": -0.5}, "sigma_background"),
    ({"kernel_size": 40}, "kernel_size"),
    ({"kernel_size": (3, 40)}, "kernel_size"),
    ({"kernel_size": 0}, "kernel_size"),
    ({"min_local": 1}, "min_local"),
    ({"min_local": 50}, "min_local"),
    ({"gain": 0.0}, "gain"),
    ({"gain": math.nan}, "gain"),
    ({"max_spot_size": 2}, "max_spot_size"),
])
def test_absurd_parameters_raise_config_error_naming_them(settings, name):
    with pytest.raises(ConfigError, match=name):
        find_spots(np.ones((64, 64), dtype=np.int32), **settings)


def test_the_examples_in_the_docstrings_run():
    """The doctests of the spot finder and of its SciPy reference (the infer folder is not on pytest's path)."""
    import doctest

    import spot_finding_scipy
    import xrais.infer.spots as spots_module

    for module in (spots_module, spot_finding_scipy):
        failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert failed == 0 and attempted >= 1, module.__name__


def test_ice_ring_flags_and_spots_outside_every_ring():
    from xrais.infer.spots import ice_ring_d_spacings_A, on_ice_rings

    first = ice_ring_d_spacings_A(2.0)[0]
    d = np.array([first, 3.39, np.nan])
    assert on_ice_rings(d).tolist() == [True, False, False]
    # only spots at lower resolution than the first ice ring (a blank frame's few stray ones)
    assert on_ice_rings(np.array([6.0, 9.5])).tolist() == [False, False]
    assert on_ice_rings(np.array([])).tolist() == []
