"""The simulator against closed forms: Ω, polarization, fluence, N⁶, B factor, Friedel, spots, mosaic."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xrais.errors import ConfigError
from xrais.geometry import Beam, Detector, rotation_matrix
from xrais.simulate import Crystal, StructureFactors, predict_spots, render
from xrais.simulate.mosaic import mosaic_rotations
from xrais.simulate.physics import lattice_factor, polarization_factor, sinc3, sincg
from xrais.simulate.render import R_E2_M2


def test_sincg_and_sinc3_closed_forms():
    assert sincg(0.0, 7.0) == 7.0
    assert sincg(0.3, 5.0) == pytest.approx(math.sin(1.5) / math.sin(0.3))
    assert sinc3(0.0) == 1.0
    x = 1.7
    assert sinc3(x) == pytest.approx(3 * (math.sin(x) - x * math.cos(x)) / x**3)


def test_polarization_closed_forms():
    i = (0.0, 0.0, -1.0)
    e = (1.0, 0.0, 0.0)
    two_theta = math.radians(40.0)
    in_plane = (math.sin(two_theta), 0.0, -math.cos(two_theta))  # d in the plane of î and ê: ψ = 0
    normal = (0.0, math.sin(two_theta), -math.cos(two_theta))  # ψ = 90°
    c2 = math.cos(two_theta) ** 2
    assert polarization_factor(0.0, *i, *in_plane, *e) == pytest.approx(0.5 * (1 + c2))
    assert polarization_factor(1.0, *i, *in_plane, *e) == pytest.approx(c2)
    assert polarization_factor(1.0, *i, *normal, *e) == pytest.approx(1.0)
    assert polarization_factor(0.6, *i, *in_plane, *e) == pytest.approx(0.5 * (1 + c2 - 0.6 * (1 - c2)))


def _flat_field_setup(**beam_kwargs):
    # one cell (N = 1, square): F_latt = 1 everywhere, so each pixel is r_e²·fluence·F²·Ω·P
    crystal = Crystal(cell=(40, 40, 40, 90, 90, 90), structure_factors=StructureFactors.constant(10.0), n_cells=(1, 1, 1))
    det = Detector.flat(image_size=(40, 30), pixel_size_mm=1.0, distance_mm=50.0, beam_center_px=(12.5, 9.0))
    return crystal, Beam(wavelength_A=1.0, **beam_kwargs), det


def test_flat_field_is_solid_angle_times_polarization():
    crystal, beam, det = _flat_field_setup(polarization_fraction=0.999)
    img = render(crystal, beam, det, backend="numba", fluence_per_m2=1e25)
    s, f = np.mgrid[0:30, 0:40]
    xyz = det.array_lab_coord_mm(f + 0.5, s + 0.5)
    r = np.linalg.norm(xyz, axis=-1)
    omega = 1.0 * 1.0 / r**2 * 50.0 / r
    d = xyz / r[..., None]
    cos2t = -d[..., 2]
    kahn = 2 * 0.999 - 1
    cos2psi = (d[..., 0] ** 2 - d[..., 1] ** 2) / np.maximum(d[..., 0] ** 2 + d[..., 1] ** 2, 1e-300)
    polar = 0.5 * (1 + cos2t**2 - kahn * cos2psi * (1 - cos2t**2))
    expected = R_E2_M2 * 1e25 * 100.0 * omega * polar
    np.testing.assert_allclose(img, expected, rtol=2e-6)


def test_intensity_scales_with_fluence():
    crystal, beam, det = _flat_field_setup()
    a = render(crystal, beam, det, backend="numba", fluence_per_m2=1e24)
    b = render(crystal, beam, det, backend="numba", fluence_per_m2=3e24)
    np.testing.assert_allclose(b, 3 * a, rtol=1e-6)
    # photons and beam size: 4e11 photons over a 30 µm square beam
    c = render(crystal, Beam(wavelength_A=1.0, fluence_photons=4e11, beam_size_um=30.0), det, backend="numba")
    np.testing.assert_allclose(c, a * (4e11 / (30e-6) ** 2) / 1e24, rtol=1e-6)


def _bragg_on_pixel(n: int, structure_factors: StructureFactors | None = None, pixel=(30, 20)):
    """A cubic crystal whose (1, 0, 0) reflection lies exactly on the Ewald sphere at a pixel centre."""
    det = Detector.flat(image_size=(48, 40), pixel_size_mm=0.5, distance_mm=80.0, beam_center_px=(10.0, 12.0))
    beam = Beam(wavelength_A=1.0)
    d_hat = det.array_lab_coord_mm(pixel[0] + 0.5, pixel[1] + 0.5)
    d_hat = d_hat / np.linalg.norm(d_hat)
    s = (d_hat - np.asarray(beam.direction)) / beam.wavelength_A
    edge = 1.0 / np.linalg.norm(s)
    # U turns a* (x) onto S
    axis = np.cross((1.0, 0.0, 0.0), s)
    angle = math.degrees(math.acos(s[0] / np.linalg.norm(s)))
    crystal = Crystal(cell=(edge, edge, edge, 90, 90, 90), U=rotation_matrix(axis, angle), n_cells=(n, n, n),
                      structure_factors=structure_factors or StructureFactors.constant(1.0))
    return crystal, beam, det, pixel, edge


def test_peak_intensity_scales_as_n_to_the_sixth():
    peaks = {}
    for n in (4, 8):
        crystal, beam, det, (f, s), _ = _bragg_on_pixel(n)
        peaks[n] = render(crystal, beam, det, backend="numba")[s, f]
    assert peaks[8] / peaks[4] == pytest.approx(2.0**6, rel=1e-5)


def test_b_factor_scales_intensity_by_exp_minus_b_s2_over_2(tmp_path):
    hkl = tmp_path / "one.hkl"
    hkl.write_text("1 0 0 50.0\n-1 0 0 50.0\n")
    crystal, beam, det, (f, s), edge = _bragg_on_pixel(5, StructureFactors.from_hkl_file(hkl))
    cold = render(crystal, beam, det, backend="numba")[s, f]
    warm_sf = crystal.structure_factors.with_b_factor(30.0, crystal.cell)
    from dataclasses import replace

    warm = render(replace(crystal, structure_factors=warm_sf), beam, det, backend="numba")[s, f]
    s_inv_d = 1.0 / edge
    assert warm / cold == pytest.approx(math.exp(-30.0 * s_inv_d**2 / 2.0), rel=1e-5)


def test_friedel_pairs_are_equal_without_anomalous_signal():
    sf = StructureFactors.random_wilson((50.0, 60.0, 70.0, 90, 90, 90), "P 21 21 21", d_min_A=4.0, seed=3)
    rng = np.random.default_rng(0)
    for h, k, l in rng.uniform(-8, 8, size=(200, 3)):
        h0, k0, l0 = (math.ceil(v - 0.5) for v in (h, k, l))
        f_plus = sf.lookup(h0, k0, l0) * lattice_factor(0, h, k, l, 5.0, 6.0, 7.0, 0.0, 0.0, 0.0, 1.0)
        f_minus = sf.lookup(-h0, -k0, -l0) * lattice_factor(0, -h, -k, -l, 5.0, 6.0, 7.0, 0.0, 0.0, 0.0, 1.0)
        assert float(f_plus**2) == pytest.approx(float(f_minus**2), rel=1e-6)  # |F| is stored in float32


def test_spots_land_where_predicted_and_turn_with_the_crystal():
    det = Detector.flat(image_size=(200, 200), pixel_size_mm=0.2, distance_mm=60.0, beam_center_px=(100.0, 100.0))
    beam = Beam(wavelength_A=1.0)
    crystal = Crystal(cell=(30, 30, 30, 90, 90, 90), n_cells=(12, 12, 12), U=rotation_matrix((1, 1, 0), 17.0))
    img = render(crystal, beam, det, backend="numba", polarization=False)
    # reflections well inside their lattice transform (half-width 1/(N·a) = 0.0028 Å⁻¹)
    spots = predict_spots(crystal, beam, det, d_min_A=2.0, ewald_tolerance_per_A=0.0015)
    assert len(spots) > 20
    for (f, s) in spots.position_px:
        fi, si = int(f), int(s)
        if 2 <= fi < 198 and 2 <= si < 198:
            window = img[si - 2 : si + 3, fi - 2 : fi + 3]
            peak = np.unravel_index(window.argmax(), window.shape)
            assert peak == (2, 2)  # the local maximum is the predicted pixel
    # turning the crystal by 90° about the beam turns every spot by 90° about the beam centre
    turned = crystal.rotated(beam.direction, 90.0)
    moved = predict_spots(turned, beam, det, d_min_A=2.0, ewald_tolerance_per_A=0.0015)
    assert len(moved) == len(spots)
    centre = np.array([100.0, 100.0])
    original = {tuple(h): p for h, p in zip(spots.miller_index, spots.position_px)}
    for h, p in zip(moved.miller_index, moved.position_px):
        v = original[tuple(h)] - centre
        # beam along −z, fast +x, slow −y: +90° about −z takes (x, y) to (y, −x), so (fast, slow) → (−slow, fast)
        expected = centre + np.array([-v[1], v[0]])
        np.testing.assert_allclose(p, expected, atol=1e-6)
    img_turned = render(turned, beam, det, backend="numba", polarization=False)
    np.testing.assert_allclose(img_turned[1:, 1:], np.rot90(img, -1)[1:, 1:], rtol=1e-3, atol=1e-3 * img.max())


def test_mosaic_domains_follow_nanobragg_distribution():
    u = mosaic_rotations(1.0, 4001, seed=12345678)
    assert np.allclose(u[0], np.eye(3))
    angles = np.degrees(np.arccos(np.clip((np.trace(u[1:], axis1=1, axis2=2) - 1) / 2, -1, 1)))
    assert angles.max() <= 1.0 + 1e-6
    assert np.median(angles) == pytest.approx((0.75) ** (1 / 3), abs=0.02)  # P(ρ < x·spread) = 1 − √(1 − x³)
    np.testing.assert_array_equal(mosaic_rotations(1.0, 5, seed=7), mosaic_rotations(1.0, 5, seed=7))
    assert not np.allclose(mosaic_rotations(1.0, 5, seed=7), mosaic_rotations(1.0, 5, seed=8))


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: Crystal(cell=(50, 50, 50, 120, 120, 130)), "cannot close"),
        (lambda: Crystal(cell=(50, 50, -5, 90, 90, 90)), "lengths"),
        (lambda: Crystal(cell=(50, 60, 70, 90, 90, 90), space_group="P 43 21 2"), "does not fit"),
        (lambda: Crystal(cell=(50, 50, 70, 90, 90, 90), space_group="P 99"), "space group"),
        (lambda: Crystal(cell=(50, 50, 70, 90, 90, 90), shape="cube"), "shape"),
        (lambda: Crystal(cell=(50, 50, 70, 90, 90, 90), mosaic_spread_deg=-1), "mosaic spread"),
    ],
)
def test_bad_crystal_is_a_clear_error(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


def test_bad_render_set_ups_are_clear_errors():
    crystal, beam, det = _flat_field_setup()
    with pytest.raises(ConfigError, match="wavelength 50.0 Å: expected 0.1–20 Å"):
        render(crystal, Beam(wavelength_A=50.0), det, backend="numba")
    far = Detector.flat(image_size=(10, 10), pixel_size_mm=0.1, distance_mm=5000.0, beam_center_px=(-500.0, -500.0))
    small = Crystal(cell=(10, 10, 10, 90, 90, 90))
    with pytest.raises(ConfigError, match="no reflection can reach it"):
        render(small, beam, far, backend="numba")
    with pytest.raises(ConfigError, match="oversample"):
        render(crystal, beam, det, oversample=0, backend="numba")
    with pytest.raises(ConfigError, match="backend 'gpu'"):
        render(crystal, beam, det, backend="gpu")
