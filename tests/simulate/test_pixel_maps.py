"""Per-pixel Ω·P and sin θ/λ maps against the kernel's own functions, and their cache."""

from __future__ import annotations

import math

import numpy as np

from xrais.geometry import Beam, Detector
from xrais.simulate.physics import polarization_factor, solid_angle
from xrais.simulate.pixel_maps import clear_pixel_map_cache, pixel_maps
from xrais.simulate.sources import polarization_axis


def _detector(distance_mm: float = 100.0) -> Detector:
    return Detector.flat(image_size=(40, 30), pixel_size_mm=0.5, distance_mm=distance_mm, beam_center_px=(12.3, 20.7))


def test_maps_match_solid_angle_polarization_and_bragg():
    beam = Beam(wavelength_A=1.3, polarization_fraction=0.9)
    det = _detector()
    maps = pixel_maps(beam, det)
    panel = det.panels[0]
    kahn = 2 * 0.9 - 1
    e = polarization_axis(beam)
    inc = np.asarray(beam.direction)
    for f, s in ((0, 0), (12, 20), (39, 29), (5, 17)):
        xyz = (np.asarray(panel.origin_mm) + (f + 0.5) * 0.5 * np.asarray(panel.fast_axis)
               + (s + 0.5) * 0.5 * np.asarray(panel.slow_axis))
        r = np.linalg.norm(xyz)
        omega = solid_angle(*xyz, 0.5, 0.5, panel.distance_mm, False)
        pol = polarization_factor(kahn, *inc, *(xyz / r), *e)
        assert math.isclose(maps.omega_polar_sr[s, f], omega * pol, rel_tol=1e-6)
        two_theta = math.acos(float(np.dot(xyz / r, inc)))
        assert math.isclose(maps.stol_per_A[s, f], math.sin(two_theta / 2) / 1.3, rel_tol=1e-6)
    assert not maps.omega_polar_sr.flags.writeable


def test_cache_returns_the_same_maps_for_the_same_geometry_only():
    clear_pixel_map_cache()
    beam = Beam(wavelength_A=1.0)
    a = pixel_maps(beam, _detector())
    assert pixel_maps(Beam(wavelength_A=1.0, fluence_photons=1e12), _detector()) is a  # photons do not matter
    assert pixel_maps(beam, _detector(101.0)) is not a
    assert pixel_maps(Beam(wavelength_A=1.1), _detector()) is not a
    no_pol = pixel_maps(beam, _detector(), polarization=False)
    assert no_pol is not a and not np.array_equal(no_pol.omega_polar_sr, a.omega_polar_sr)


def test_panels_land_in_their_blocks_and_gaps_stay_zero():
    det = Detector.from_catalog("pilatus6m", distance_mm=180.0)
    beam = Beam(wavelength_A=0.98, polarization_fraction=0.99)
    maps = pixel_maps(beam, det)
    gaps = det.gap_mask()
    assert not maps.omega_polar_sr[gaps].any() and not maps.stol_per_A[gaps].any()
    assert (maps.omega_polar_sr[~gaps] > 0).all()
    kahn, e, inc = 2 * 0.99 - 1, polarization_axis(beam), np.asarray(beam.direction)
    for panel in (det.panels[0], det.panels[27], det.panels[-1]):
        f0, s0 = panel.array_offset_px
        for f, s in ((0, 0), (panel.image_size[0] - 1, panel.image_size[1] - 1), (100, 77)):
            xyz = panel.pixel_lab_coord_mm(f + 0.5, s + 0.5)
            r = np.linalg.norm(xyz)
            omega = solid_angle(*xyz, *panel.pixel_size_mm, panel.distance_mm, False)
            pol = polarization_factor(kahn, *inc, *(xyz / r), *e)
            assert math.isclose(maps.omega_polar_sr[s0 + s, f0 + f], omega * pol, rel_tol=1e-6)
            stol = math.sin(math.acos(float(np.dot(xyz / r, inc))) / 2) / 0.98
            assert math.isclose(maps.stol_per_A[s0 + s, f0 + f], stol, rel_tol=1e-6)
