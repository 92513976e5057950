"""Amorphous background: packaged curves, closed forms, rings, gaps, magnitude and bad inputs."""

from __future__ import annotations

import time

import numba
import numpy as np
import pytest

from xrais.errors import ConfigError, DatasetError
from xrais.geometry import Beam, Detector, Panel, rotation_matrix
from xrais.simulate.background import (
    AVOGADRO,
    MATERIALS,
    BackgroundLayer,
    Material,
    ScatteringCurve,
    _data_path,
    _regenerate_atomic_tables,
    background_image,
    formula_mass_g_per_mol,
    ice_ring_d_spacings_A,
    independent_atom_curve,
    load_curve,
    read_stol,
)
from xrais.simulate.physics import polarization_factor, solid_angle
from xrais.simulate.pixel_maps import clear_pixel_map_cache, pixel_maps
from xrais.simulate.render import R_E2_M2
from xrais.simulate.sources import polarization_axis

SHIPPED = ("water", "air", "ice", "nanoice", "unity")
LAMBDA = 0.9795
FLUENCE = 4e11 / (30e-6) ** 2  # XRAIS: 4e11 photons over a 30 µm square beam
UNITY = Material("unity", load_curve("unity"), 18.0, 1.0, "test unit")


def _flat_detector(distance_mm=50.0, size=(40, 30), pixel=(0.1, 0.15), corner=(-3.0, 2.0)):
    panel = Panel("p", size, pixel, (1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (corner[0], corner[1], -distance_mm))
    return Detector(panels=(panel,))


@pytest.fixture(scope="module")
def pilatus():
    return Detector.from_catalog("pilatus6m", distance_mm=200.0)


@pytest.fixture(scope="module")
def water_image(pilatus):
    beam = Beam(wavelength_A=LAMBDA)
    start = time.perf_counter()
    img = background_image(beam, pilatus, [BackgroundLayer("water", 100.0)], fluence_per_m2=FLUENCE, beam_size_um=30.0)
    return img, time.perf_counter() - start


def _pixel_stol(detector, beam):
    s, f = np.mgrid[0 : detector.array_shape[0], 0 : detector.array_shape[1]]
    return 1.0 / (2.0 * detector.resolution_at_pixel_A(beam, f + 0.5, s + 0.5))


# --- data files ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SHIPPED)
def test_packaged_curves_equal_the_shared_originals(name, shared_data):
    original = shared_data(f"stol/{name}.stol")
    assert _data_path(f"{name}.stol").read_bytes() == original.read_bytes()
    ours, theirs = load_curve(name), read_stol(original)
    np.testing.assert_array_equal(ours.stol_per_A, theirs.stol_per_A)
    np.testing.assert_array_equal(ours.F, theirs.F)


def test_licence_and_readme_are_packaged(shared_data):
    assert _data_path("LICENSE-stol.txt").read_text() == shared_data("stol/LICENSE").read_text()
    readme = _data_path("README.md").read_text()
    for name in [*SHIPPED, "glycerol", "sucrose", "peg", "paper", "kapton"]:
        assert f"{name}.stol" in readme


def test_read_stol_skips_comments_and_extra_columns():
    curve = load_curve("nanoice")  # '#' header lines and a third 'type' column
    assert curve.stol_per_A.size == 1000 and curve.source.startswith("nanoice.stol")
    assert load_curve("water").stol_per_A.size == 10000


def test_atomic_tables_regenerate_from_gemmi(tmp_path):
    for path in _regenerate_atomic_tables(tmp_path):
        fresh, shipped = read_stol(path), load_curve(path.stem)
        np.testing.assert_allclose(shipped.F, fresh.F, rtol=1e-5)
        assert "IT92 coefficients via gemmi" in shipped.source


def test_independent_atom_curve_closed_form():
    # F(0)² = Σ Z² (f(0) ≈ Z for neutral atoms): water 64 + 2 = 66
    assert independent_atom_curve("H2O", np.array([0.0]))[0] ** 2 == pytest.approx(66.0, rel=2e-3)
    assert formula_mass_g_per_mol("C22H10N2O5") == pytest.approx(382.33, abs=0.02)
    assert MATERIALS["kapton"].molar_mass_g_per_mol == pytest.approx(382.33, abs=0.02)


def test_scattering_curve_interpolates_and_holds_ends():
    c = ScatteringCurve(np.array([0.1, 0.3]), np.array([1.0, 3.0]), "t")
    np.testing.assert_allclose(c(np.array([0.0, 0.2, 0.3, 9.0])), [1.0, 2.0, 3.0, 3.0])
    assert c.scaled(stol_factor=2.0, F_factor=3.0)(0.4) == pytest.approx(6.0)


# --- materials --------------------------------------------------------------------------------
def test_materials_cover_the_xrais_mix():
    for name in ("water", "air", "ice", "nanoice", "glycerol", "sucrose", "peg", "paper", "kapton"):
        m = MATERIALS[name]
        curve = m.scattering_curve()
        assert np.all(np.isfinite(curve.F)) and curve.F.max() > 0 and m.units_per_m3 > 0, name
    assert MATERIALS["water"].units_per_m3 == pytest.approx(1e6 * AVOGADRO / 18.015, rel=1e-4)


def test_water_curve_maximum():
    c = MATERIALS["water"].scattering_curve()
    assert c.stol_per_A[np.argmax(c.F)] == pytest.approx(0.160, abs=0.002)


def test_ice_curves_normalised_to_water_and_ringed_at_3_67_A():
    water = MATERIALS["water"].scattering_curve().mean_square_moment()
    for name in ("ice", "nanoice"):
        assert MATERIALS[name].scattering_curve().mean_square_moment() == pytest.approx(water, rel=1e-6)
    nano = MATERIALS["nanoice"].scattering_curve()
    beyond = nano.stol_per_A > 0.05  # past the small-angle spike
    assert nano.stol_per_A[beyond][np.argmax(nano.F[beyond])] == pytest.approx(1 / (2 * 3.67), abs=0.002)
    ice = MATERIALS["ice"].scattering_curve()
    low = ice.stol_per_A < 0.15
    assert ice.stol_per_A[low][np.argmax(ice.F[low])] == pytest.approx(1 / (2 * 3.9), abs=0.002)


# nanoBragg's ice.stol sticks sit 0.32 % further out in d than the 100 K cell: a = 4.511, c = 7.346 Å
TABLE_ICE_CELL = (4.5111, 7.3462)


def test_ice_d_spacings_from_the_space_group():
    d = ice_ring_d_spacings_A()
    expected = [3.897, 3.669, 3.441, 2.671, 2.249, 2.072, 1.948, 1.918, 1.883, 1.8305, 1.721]
    np.testing.assert_allclose(d, expected, rtol=2.5e-3)  # 004 (c/4) is allowed in P 63/m m c
    assert not np.any(np.isclose(d, 7.322 / 3))  # 003 absent (00l: l = 2n)
    sticks = 1.0 / (2.0 * load_curve("ice").stol_per_A[load_curve("ice").F > 0])
    table = ice_ring_d_spacings_A(1.72, TABLE_ICE_CELL)
    np.testing.assert_allclose(sticks[: table.size], table, rtol=5e-4)
    np.testing.assert_allclose(table / ice_ring_d_spacings_A(1.71), 1.0032, rtol=5e-4)


# --- closed forms -----------------------------------------------------------------------------
def test_unity_curve_gives_r_e2_fluence_n_omega_p():
    det = _flat_detector()
    beam = Beam(wavelength_A=1.0, polarization_fraction=0.9)  # Kahn 0.8, E-vector along x
    t_um, size_um, fluence = 40.0, 20.0, 3e20
    img = background_image(beam, det, [BackgroundLayer(UNITY, t_um)], fluence_per_m2=fluence, beam_size_um=size_um)
    s, f = np.mgrid[0:30, 0:40]
    x, y, z = -3.0 + (f + 0.5) * 0.1, 2.0 - (s + 0.5) * 0.15, -50.0
    r = np.sqrt(x * x + y * y + z * z)
    omega = 0.1 * 0.15 * 50.0 / r**3
    pol = 0.5 * (1 + (z / r) ** 2 - 0.8 * (x * x - y * y) / r**2)
    n = t_um * 1e-6 * (size_um * 1e-6) ** 2 * 1e6 * AVOGADRO / 18.0
    assert img.dtype == np.float32 and img.shape == (30, 40)
    np.testing.assert_allclose(img, R_E2_M2 * fluence * n * omega * pol, rtol=2e-6)
    no_pol = background_image(beam, det, [BackgroundLayer(UNITY, t_um)], fluence_per_m2=fluence,
                              beam_size_um=size_um, polarization=False)
    np.testing.assert_allclose(no_pol, R_E2_M2 * fluence * n * omega, rtol=2e-6)


def test_tilted_panel_matches_the_kernel_functions():
    rot = rotation_matrix((0.3, 1.0, 0.2), 25.0)
    fast, slow = rot @ (1.0, 0.0, 0.0), rot @ (0.0, -1.0, 0.0)
    origin = rot @ (-4.0, 3.0, -60.0)
    det = Detector(panels=(Panel("t", (50, 20), (0.172, 0.172), tuple(fast), tuple(slow), tuple(origin)),))
    beam = Beam(wavelength_A=1.3, direction=(0.02, -0.01, -1.0), polarization_fraction=0.8)
    img = background_image(beam, det, [BackgroundLayer(UNITY, 1.0)], fluence_per_m2=1.0, beam_size_um=1.0)
    n = 1e-6 * 1e-12 * UNITY.units_per_m3
    panel, e = det.panels[0], polarization_axis(beam)
    for si, fi in [(0, 0), (7, 31), (19, 49)]:
        px, py, pz = panel.pixel_lab_coord_mm(fi + 0.5, si + 0.5)
        r = np.sqrt(px * px + py * py + pz * pz)
        omega = solid_angle(px, py, pz, 0.172, 0.172, panel.distance_mm, False)
        pol = polarization_factor(0.6, *beam.direction, px / r, py / r, pz / r, *e)
        assert img[si, fi] == pytest.approx(R_E2_M2 * n * omega * pol, rel=2e-6)


def test_linear_in_thickness_fluence_scale_and_layers():
    det, beam = _flat_detector(), Beam(wavelength_A=LAMBDA)
    kw = dict(fluence_per_m2=1e21, beam_size_um=30.0)
    one = background_image(beam, det, [BackgroundLayer("water", 10.0)], **kw)
    np.testing.assert_allclose(background_image(beam, det, [BackgroundLayer("water", 30.0)], **kw), 3 * one, rtol=1e-6)
    np.testing.assert_allclose(background_image(beam, det, BackgroundLayer("water", 10.0), fluence_per_m2=5e21,
                                                beam_size_um=30.0), 5 * one, rtol=1e-6)
    np.testing.assert_allclose(background_image(beam, det, [BackgroundLayer("water", 10.0)], scale=0.0125, **kw),
                               0.0125 * one, rtol=1e-6)
    air = background_image(beam, det, [BackgroundLayer("air", 100_000.0)], **kw)
    both = background_image(beam, det, [BackgroundLayer("water", 10.0), BackgroundLayer("air", 100_000.0)], **kw)
    np.testing.assert_allclose(both, one + air, rtol=1e-6)
    assert not background_image(beam, det, [], **kw).any()
    assert not background_image(beam, det, [BackgroundLayer("water", 0.0)], **kw).any()


# --- against a direct evaluation of the formula ----------------------------------------------
SHORT = Material("short", ScatteringCurve(np.array([0.1, 0.2, 0.2, 0.35]), np.array([1.0, 3.0, 5.0, 2.0]), "t"),
                 18.0, 1.0, "a curve that starts late, ends early and jumps")


def _wide_detector() -> Detector:
    """A flat and a tilted panel with gap pixels between them; stol from ≈ 0 to beyond 0.5 Å⁻¹."""
    rot = rotation_matrix((0.2, 1.0, 0.1), 30.0)
    flat_panel = Panel("flat", (60, 50), (0.8, 0.9), (1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (-20.0, 22.0, -45.0))
    tilted = Panel("tilted", (40, 50), (1.0, 1.0), tuple(rot @ (1.0, 0.0, 0.0)), tuple(rot @ (0.0, -1.0, 0.0)),
                   tuple(rot @ (30.0, 22.0, -40.0)), array_offset_px=(66, 3))
    return Detector(panels=(flat_panel, tilted), array_shape=(56, 110))


def _direct_background(beam, detector, layers, fluence, size_um, scale, polarization=True):
    """r_e²·fluence·scale·Ω·P·Σ n·F(stol)² at each pixel centre: the formula in plain numpy, float64."""
    out = np.zeros(detector.array_shape)
    inc = np.asarray(beam.direction, dtype=np.float64)
    e = polarization_axis(beam)
    b = np.cross(e, inc)
    b /= np.linalg.norm(b)
    e = np.cross(inc, b)
    kahn = 2 * beam.polarization_fraction - 1
    terms = [(layer.material if isinstance(layer.material, Material) else MATERIALS[layer.material], layer.thickness_um)
             for layer in layers]
    for panel in detector.panels:
        nf, ns = panel.image_size
        s, f = np.mgrid[0:ns, 0:nf]
        xyz = np.asarray(panel.origin_mm) + ((f + 0.5) * panel.pixel_size_mm[0])[..., None] * np.asarray(
            panel.fast_axis) + ((s + 0.5) * panel.pixel_size_mm[1])[..., None] * np.asarray(panel.slow_axis)
        r = np.linalg.norm(xyz, axis=-1)
        d = xyz / r[..., None]
        omega = panel.pixel_size_mm[0] * panel.pixel_size_mm[1] * panel.distance_mm / r**3
        cos2t = d @ inc
        pol = 0.5 * (1 + cos2t**2 - kahn * ((d @ e) ** 2 - (d @ b) ** 2)) if polarization else 1.0
        stol = np.sin(0.5 * np.arccos(np.clip(cos2t, -1, 1))) / beam.wavelength_A
        f2 = sum(t * 1e-6 * (size_um * 1e-6) ** 2 * m.units_per_m3 * m.scattering_curve()(stol) ** 2 for m, t in terms)
        f0, s0 = panel.array_offset_px
        out[s0 : s0 + ns, f0 : f0 + nf] = R_E2_M2 * fluence * scale * omega * pol * f2
    return out


@pytest.mark.parametrize("polarization", [True, False])
def test_matches_a_direct_evaluation_of_the_formula(polarization):
    det = _wide_detector()
    beam = Beam(wavelength_A=0.6, direction=(0.01, 0.02, -1.0), polarization_fraction=0.93)
    layers = [BackgroundLayer("air", 5000.0), BackgroundLayer("water", 25.0), BackgroundLayer("ice", 3.0),
              BackgroundLayer("glycerol", 10.0), BackgroundLayer(SHORT, 1.0)]
    img = background_image(beam, det, layers, fluence_per_m2=4e20, beam_size_um=30.0, scale=0.7,
                           polarization=polarization)
    ref = _direct_background(beam, det, layers, 4e20, 30.0, 0.7, polarization)
    gaps = det.gap_mask()
    stol = pixel_maps(beam, det).stol_per_A[~gaps]
    assert stol.min() < 0.05 and stol.max() > 0.5  # below, across and beyond every table
    assert not img[gaps].any() and (ref[~gaps] > 0).all()
    np.testing.assert_allclose(img, ref, rtol=1e-5, atol=0)
    for layer in layers:  # one layer at a time, ice's sticks and the jump of SHORT alone
        one = background_image(beam, det, [layer], fluence_per_m2=4e20, beam_size_um=30.0, scale=0.7)
        np.testing.assert_allclose(one, _direct_background(beam, det, [layer], 4e20, 30.0, 0.7), rtol=1e-5,
                                   atol=1e-30)


def test_matches_the_interpolation_of_the_cached_pixel_maps():
    clear_pixel_map_cache()
    det = _wide_detector()
    beam = Beam(wavelength_A=1.0, polarization_fraction=0.99)
    layers = [BackgroundLayer("air", 5000.0), BackgroundLayer("water", 25.0), BackgroundLayer("kapton", 10.0)]
    img = background_image(beam, det, layers, fluence_per_m2=1e21, beam_size_um=20.0)
    maps = pixel_maps(beam, det)  # the former evaluation: float32 maps, one np.interp per curve
    s = maps.stol_per_A.astype(np.float64)
    f2 = sum(layer.thickness_um * 1e-6 * (20e-6) ** 2 * MATERIALS[layer.material].units_per_m3
             * MATERIALS[layer.material].scattering_curve()(s) ** 2 for layer in layers)
    np.testing.assert_allclose(img, R_E2_M2 * 1e21 * maps.omega_polar_sr * f2, rtol=1e-5)


def test_background_does_not_depend_on_the_number_of_threads():
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 Numba threads")
    det, beam = _wide_detector(), Beam(wavelength_A=0.9)
    layers = [BackgroundLayer("water", 25.0), BackgroundLayer("nanoice", 5.0)]
    before = numba.get_num_threads()
    try:
        images = []
        for threads in (1, 2):
            numba.set_num_threads(threads)
            images.append(background_image(beam, det, layers, fluence_per_m2=1e21, beam_size_um=20.0))
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(images[0], images[1])


# --- PILATUS 6M: speed, gaps, water ring, ice rings, magnitude ---------------------------------
def test_pilatus_gaps_zero_and_fast(pilatus, water_image):
    img, seconds = water_image
    gaps = pilatus.gap_mask()
    assert img.shape == (2527, 2463) and img.dtype == np.float32
    assert gaps.any() and not img[gaps].any() and (img[~gaps] > 0).all()
    assert seconds < 4.0  # ≈ 0.2 s on one CPU core


def test_water_ring_at_the_curve_maximum(pilatus, water_image):
    img, _ = water_image
    beam = Beam(wavelength_A=LAMBDA)
    stol = _pixel_stol(pilatus, beam)
    unit = background_image(beam, pilatus, [BackgroundLayer(UNITY, 100.0)], fluence_per_m2=FLUENCE, beam_size_um=30.0)
    good = unit > 0
    f2 = np.zeros_like(img)
    f2[good] = img[good] / unit[good] * UNITY.units_per_m3 / MATERIALS["water"].units_per_m3  # F² per pixel
    curve = MATERIALS["water"].scattering_curve()
    np.testing.assert_allclose(f2[good], curve(stol[good]) ** 2, rtol=1e-5)
    peak = curve.stol_per_A[np.argmax(curve.F)]
    assert stol.flat[np.argmax(f2)] == pytest.approx(peak, abs=5e-4)
    assert stol.flat[np.argmax(img)] == pytest.approx(peak, abs=5e-3)  # Ω·P pulls the ring in a little


def test_ice_rings_at_their_two_theta(pilatus):
    beam = Beam(wavelength_A=LAMBDA)
    img = background_image(beam, pilatus, [BackgroundLayer("ice", 10.0)], fluence_per_m2=FLUENCE, beam_size_um=30.0)
    bc = pilatus.beam_center_px(beam)
    s, f = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    radius = np.hypot(f + 0.5 - bc[0], s + 0.5 - bc[1])
    good = ~pilatus.gap_mask()
    bins = np.round(radius[good]).astype(int)
    profile = np.bincount(bins, img[good]) / np.maximum(np.bincount(bins), 1)
    for d in ice_ring_d_spacings_A(2.2, TABLE_ICE_CELL):
        expected = 200.0 * np.tan(2 * np.arcsin(LAMBDA / (2 * d))) / 0.172
        lo = int(expected) - 5
        found = lo + np.argmax(profile[lo : lo + 11])
        assert abs(found - expected) <= 1.0, (d, found, expected)


def test_water_magnitude_per_pixel(water_image):
    # 100 µm water, 4e11 photons through 30 µm, 200 mm, λ 0.9795 Å: r_e²·fluence·n·F²·Ω·P with
    # n = 3.0e15 molecules, F² ≈ 64, Ω ≈ 6e-7 sr, P ≈ 1 at the vertical ring: ≈ 430 photons
    img, _ = water_image
    assert 300.0 < float(img.max()) < 600.0


# --- bad inputs -------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors(tmp_path):
    det, beam = _flat_detector(), Beam(wavelength_A=1.0)
    kw = dict(fluence_per_m2=1e20, beam_size_um=30.0)
    with pytest.raises(ConfigError, match=r"unknown material 'mud'; known: air, glycerol, ice"):
        BackgroundLayer("mud", 1.0)
    with pytest.raises(ConfigError, match="thickness ≥ 0 µm"):
        BackgroundLayer("water", -1.0)
    with pytest.raises(ConfigError, match="thickness"):
        BackgroundLayer("water", float("nan"))
    for bad in ({"fluence_per_m2": 0.0}, {"beam_size_um": -3.0}, {"scale": -1.0}, {"fluence_per_m2": float("inf")}):
        with pytest.raises(ConfigError, match=f"expected {next(iter(bad))}"):
            background_image(beam, det, [BackgroundLayer("water", 1.0)], **{**kw, **bad})
    with pytest.raises(ConfigError, match="sequence of BackgroundLayer"):
        background_image(beam, det, ["water"], **kw)
    with pytest.raises(ConfigError, match="molar_mass_g_per_mol > 0"):
        Material("x", UNITY.curve, 0.0, 1.0)
    with pytest.raises(ConfigError, match="no packaged table; known: .*water"):
        load_curve("mud")
    with pytest.raises(ConfigError, match="non-decreasing"):
        ScatteringCurve(np.array([0.2, 0.1]), np.array([1.0, 1.0]))
    with pytest.raises(ConfigError, match="expected 'C3H8O3'|element symbols"):
        formula_mass_g_per_mol("c3h8")
    with pytest.raises(ConfigError, match="d_min_A > 0"):
        ice_ring_d_spacings_A(0.0)


def test_read_stol_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.stol"
    bad.write_text("# header\n0 1\n0.1 x\n")
    with pytest.raises(DatasetError, match=r"bad\.stol:3: expected 'stol F'"):
        read_stol(bad)
    bad.write_text("0 1\n0.5\n")
    with pytest.raises(DatasetError, match=r"bad\.stol:2"):
        read_stol(bad)
    bad.write_text("0.5 1\n0.1 1\n")
    with pytest.raises(DatasetError, match=r"bad\.stol: .*non-decreasing"):
        read_stol(bad)
    bad.write_text("# nothing\n")
    with pytest.raises(DatasetError, match=r"bad\.stol: .*≥ 2"):
        read_stol(bad)
    with pytest.raises(DatasetError, match=r"missing\.stol: cannot read"):
        read_stol(tmp_path / "missing.stol")
