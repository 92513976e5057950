"""Geometry models: lab frame, catalog dimensions, conversions and (de)serialisation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xrais.errors import ConfigError, GeometryError
from xrais.geometry import (
    DETECTOR_CATALOG,
    HC_EV_A,
    Beam,
    Detector,
    Panel,
    catalog_entry_for_shape,
    list_detectors,
)

# (name, fast×slow, pixel mm, gap pixels, block): the numbers of each model's real frames
# (data README) and of the manufacturers' specifications.
CATALOG_FACTS = [
    ("pilatus6m", (2463, 2527), 0.172, 526_101, 2),
    ("pilatus2m", (1475, 1679), 0.172, 197_365, 2),
    ("pilatus12m", (2463, 5071), 0.172, 1_094_073, 2),
    ("eiger16m", (4150, 4371), 0.075, 4150 * 4371 - 32 * 1030 * 514, 4),
    ("eiger2_16m", (4148, 4362), 0.075, 1_250_824, 4),
    ("eiger2_4m", (2068, 2162), 0.075, 2068 * 2162 - 8 * 1028 * 512, 4),
    ("rayonix_mx340", (3840, 3840), 340 / 3840, 0, 4),
    ("rayonix_mx340_4x4", (1920, 1920), 0.177083333, 0, 2),
    ("jungfrau16m", (4218, 4434), 0.075, 4218 * 4434 - 32 * 1030 * 514, 4),
]


@pytest.mark.parametrize("name, size, pixel_mm, gaps, block", CATALOG_FACTS)
def test_catalog_dimensions_and_gaps(name, size, pixel_mm, gaps, block):
    det = Detector.from_catalog(name, distance_mm=200.0)
    assert det.array_shape == (size[1], size[0])
    assert det.pixel_size_mm[0] == pytest.approx(pixel_mm, rel=1e-6)
    assert int(det.gap_mask().sum()) == gaps
    assert det.downsample_block == block
    assert det.is_coplanar_grid()
    assert catalog_entry_for_shape(*size, pixel_mm).name == name


def test_pilatus6m_modules_match_dxtbx_layout():
    det = Detector.from_catalog("pilatus6m", distance_mm=351.0, beam_center_px=(1261.61, 1306.96))
    assert len(det.panels) == 60
    assert {p.image_size for p in det.panels} == {(487, 195)}
    offsets = sorted({p.array_offset_px[0] for p in det.panels})
    assert offsets == [0, 494, 988, 1482, 1976]  # 487 + 7 px gap
    rows = sorted({p.array_offset_px[1] for p in det.panels})
    assert rows[:3] == [0, 212, 424]  # 195 + 17 px gap
    # dxtbx DetectorFactory.simple(…, "+x", "-y"): origin = (-bx, +by, -distance) mm
    first = det.panels[0]
    assert first.origin_mm == pytest.approx((-1261.61 * 0.172, 1306.96 * 0.172, -351.0))
    assert first.fast_axis == pytest.approx((1, 0, 0)) and first.slow_axis == pytest.approx((0, -1, 0))


def test_beam_centre_and_resolution_are_analytic():
    det = Detector.from_catalog("pilatus6m", distance_mm=250.0, beam_center_px=(1200.25, 1300.75))
    beam = Beam(wavelength_A=0.9795)
    assert det.beam_center_px(beam) == pytest.approx((1200.25, 1300.75))
    r_mm = 100.0
    f, s = 1200.25 + r_mm / 0.172, 1300.75
    two_theta = math.atan2(r_mm, 250.0)
    assert float(det.two_theta_rad(beam, f, s)) == pytest.approx(two_theta, rel=1e-9)
    assert float(det.resolution_at_pixel_A(beam, f, s)) == pytest.approx(0.9795 / (2 * math.sin(two_theta / 2)))
    assert np.isinf(det.resolution_at_pixel_A(beam, 1200.25, 1300.75))
    xyz = det.array_lab_coord_mm(1200.25, 1300.75)
    assert xyz == pytest.approx((0.0, 0.0, -250.0), abs=1e-9)


def test_two_theta_swing_moves_the_direct_beam():
    det = Detector.from_catalog("pilatus2m", distance_mm=160.0, beam_center_px=(730.0, 865.0))
    swung = det.rotated((1.0, 0.0, 0.0), 30.0)
    f, s = swung.beam_center_px(Beam(wavelength_A=0.6889))
    assert f == pytest.approx(730.0)
    assert s == pytest.approx(865.0 + 160.0 * math.tan(math.radians(30.0)) / 0.172)
    assert swung.distance_mm == pytest.approx(160.0)


def test_energy_wavelength_and_round_trips():
    beam = Beam.from_energy_eV(12398.419843320026, polarization_fraction=0.99, spectrum=((1.0, 0.5), (1.01, 0.5)))
    assert beam.wavelength_A == pytest.approx(1.0)
    assert beam.energy_eV == pytest.approx(HC_EV_A)
    assert Beam.from_dict(beam.to_dict()) == beam
    assert beam != Beam(wavelength_A=1.001)
    det = Detector.from_catalog("eiger2_16m", distance_mm=120.0, beam_center_px=(2074.0, 2181.0))
    again = Detector.from_dict(det.to_dict())
    assert again == det
    assert again != Detector.from_catalog("eiger2_16m", distance_mm=120.1, beam_center_px=(2074.0, 2181.0))


def test_assemble_rotated_panels_onto_one_grid():
    # Two 4×2 panels 100 mm downstream: one plain, one turned 90° about the beam.
    px = 0.1
    a = Panel("a", (4, 2), (px, px), (1, 0, 0), (0, -1, 0), (0.0, 0.0, -100.0))
    b = Panel("b", (4, 2), (px, px), (0, -1, 0), (-1, 0, 0), (-0.1, -0.2, -100.0))
    det = Detector(panels=(a, b), array_shape=(2, 8))
    data_a = np.arange(8, dtype=np.float32).reshape(2, 4)
    data_b = 100 + np.arange(8, dtype=np.float32).reshape(2, 4)
    out = det.assemble([data_a, data_b], Beam(wavelength_A=1.0))
    # b's pixel [s, f] sits at x = -0.1 - 0.1(s + 0.5), y = -0.2 - 0.1(f + 0.5): left of and below a.
    assert out.pixels.shape == (6, 7)
    assert out.beam_center_px == pytest.approx((3.0, 0.0))
    assert out.pixels[0, 3:].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert out.pixels[2, 1] == 100.0 and out.pixels[2, 0] == 104.0 and out.pixels[5, 1] == 103.0
    assert out.mask[0, 0] and not out.mask[0, 3]


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: Beam(wavelength_A=-1.0), "wavelength"),
        (lambda: Beam(wavelength_A=float("nan")), "wavelength"),
        (lambda: Beam(wavelength_A=1.0, direction=(0, 0, 0)), "direction"),
        (lambda: Detector.from_catalog("pilatus6m", distance_mm=0.0), "distance"),
        (lambda: Detector.from_catalog("pilatus7m", distance_mm=100.0), "pilatus7m"),
        (lambda: Panel("p", (0, 5), (0.1, 0.1), (1, 0, 0), (0, -1, 0), (0, 0, -1)), "image size"),
        (lambda: Panel("p", (5, 5), (0.1, 0.1), (1, 0, 0), (1, 0, 0), (0, 0, -1)), "perpendicular"),
    ],
)
def test_bad_geometry_is_a_clear_error(build, message):
    with pytest.raises((GeometryError, ConfigError), match=message):
        build()


def test_list_detectors_names_the_catalog():
    assert set(list_detectors()) == set(DETECTOR_CATALOG)
    assert {"pilatus6m", "eiger16m", "eiger2_16m", "rayonix_mx340", "jungfrau16m"} <= set(list_detectors())
