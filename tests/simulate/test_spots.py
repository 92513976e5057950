"""Spot-centric rendering (``method="spots"``) against brute force on the same inputs.

Spots are the connected regions above a threshold in the brute-force image; each spot with at
least 10 photons must have the same integrated intensity (1 %) and centroid (0.05 px) in both
images, integrated over the same pixels. The whole images must agree (Pearson r ≥ 0.9999,
total photons 0.5 %), and so must the nanoBragg reference cases rendered with spots.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from xrais.errors import ConfigError
from xrais.geometry import Beam, Detector
from xrais.simulate import Crystal, StructureFactors, render
from xrais.simulate.render import render_plan
from xrais.simulate.spot_windows import lattice_extent, spot_spans

from test_parity import CASE_NAMES, _cases, render_case

CELL = (61.2, 72.5, 84.3, 90.0, 90.0, 90.0)
U = np.array([[0.8, 0.6, 0.0], [-0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])
SF = StructureFactors.random_wilson(CELL, "P 21 21 21", d_min_A=1.5, seed=5)


def _label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of a boolean image (labels from 1)."""
    labels = np.zeros(mask.shape, dtype=np.int64)
    n = 0
    for start in zip(*np.nonzero(mask)):
        if labels[start]:
            continue
        n += 1
        labels[start] = n
        stack = [start]
        while stack:
            y, x = stack.pop()
            for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                yy, xx = y + dy, x + dx
                if 0 <= yy < mask.shape[0] and 0 <= xx < mask.shape[1] and mask[yy, xx] and not labels[yy, xx]:
                    labels[yy, xx] = n
                    stack.append((yy, xx))
    return labels, n


def compare_spots(brute: np.ndarray, spots: np.ndarray, min_photons: float = 10.0) -> int:
    """Assert the spot-level and image-level agreement; returns the number of spots checked."""
    brute64, spots64 = brute.astype(np.float64), spots.astype(np.float64)
    r = np.corrcoef(brute64.ravel(), spots64.ravel())[0, 1]
    assert r >= 0.9999, f"Pearson r = {r:.7f}"
    assert abs(spots64.sum() / brute64.sum() - 1.0) <= 5e-3
    threshold = max(0.02 * brute64.max(), float(np.median(brute64)) * 3)
    labels, n = _label(brute64 > threshold)
    ys, xs = np.mgrid[0:brute.shape[0], 0:brute.shape[1]]
    checked = 0
    for i in range(1, n + 1):
        sel = labels == i
        b, s = brute64[sel], spots64[sel]
        if b.sum() < min_photons:
            continue
        checked += 1
        assert abs(s.sum() / b.sum() - 1.0) <= 0.01, f"spot {i}: intensity ratio {s.sum() / b.sum():.5f}"
        for coord in (ys[sel], xs[sel]):
            assert abs((coord * s).sum() / s.sum() - (coord * b).sum() / b.sum()) <= 0.05
    return checked


def _scene(shape: str, mosaic: bool):
    crystal = Crystal(cell=CELL, structure_factors=SF, space_group="P 21 21 21", U=U, n_cells=(12, 10, 9), shape=shape,
                      mosaic_spread_deg=0.3 if mosaic else 0.0, mosaic_domains=5 if mosaic else 1)
    det = Detector.flat(image_size=(120, 100), pixel_size_mm=0.4, distance_mm=100.0, beam_center_px=(50.5, 40.2))
    beam = Beam(wavelength_A=1.0, divergence_mrad=0.5 if mosaic else 0.0, fluence_photons=1e17, beam_size_um=30.0)
    options = dict(oversample=2, divergence_steps=3) if mosaic else {}
    return crystal, beam, det, options


@pytest.mark.parametrize("mosaic", [False, True], ids=["still", "mosaic+divergence+oversample"])
@pytest.mark.parametrize("shape", ["square", "round", "gauss", "gauss_2022", "tophat", "tophat_2022"])
def test_spots_match_brute_force(shape, mosaic):
    crystal, beam, det, options = _scene(shape, mosaic)
    brute = render(crystal, beam, det, backend="numba", **options)
    spots = render(crystal, beam, det, backend="numba", method="spots", **options)
    assert spots.dtype == np.float32 and spots.shape == brute.shape
    assert compare_spots(brute, spots) >= 3


def test_spots_with_background_roi_and_resolution_limit():
    crystal, beam, det, options = _scene("gauss_2022", True)
    kw = dict(options, water_um=30.0, d_min_A=3.0, roi=(10, 90, 5, 110))
    brute = render(crystal, beam, det, backend="numba", **kw)
    spots = render(crystal, beam, det, backend="numba", method="spots", **kw)
    np.testing.assert_allclose(spots, brute, rtol=2e-3, atol=1e-4 * float(brute.max()))
    assert np.all(spots[:5] == 0) and np.all(spots[:, 91:] == 0)


def test_spots_evaluate_few_pixels_for_large_domains():
    crystal = Crystal(cell=CELL, structure_factors=SF, space_group="P 21 21 21", U=U, n_cells=(20, 20, 20),
                      shape="gauss_2022", mosaic_spread_deg=0.3, mosaic_domains=4)
    det = Detector.flat(image_size=(200, 200), pixel_size_mm=0.2, distance_mm=100.0, beam_center_px=(100.5, 100.5))
    plan = render_plan(crystal, Beam(wavelength_A=1.0), det)
    spans = spot_spans(plan)
    evaluated = int((spans[:, 5] - spans[:, 4]).sum())
    assert 0 < evaluated < 0.05 * 200 * 200 * len(plan.orientations)
    # runs of the same (orientation, source) never overlap
    pixels = set()
    for o, j, _p, s, f0, f1, out_s, out_f0 in spans:
        for f in range(f0, f1):
            key = (o, j, out_s, out_f0 + f)
            assert key not in pixels
            pixels.add(key)


def test_auto_picks_spots_for_large_domains_and_brute_for_tiny_ones(monkeypatch):
    from xrais.simulate import kernel_cpu, kernel_spots

    det = Detector.flat(image_size=(200, 200), pixel_size_mm=0.2, distance_mm=100.0, beam_center_px=(100.5, 100.5))
    beam = Beam(wavelength_A=1.0)
    used = []
    monkeypatch.setattr(kernel_cpu, "render_cpu", lambda plan, _f=kernel_cpu.render_cpu: used.append("brute") or _f(plan))
    monkeypatch.setattr(kernel_spots, "render_spots_cpu",
                        lambda plan, tol, spans=None, _f=kernel_spots.render_spots_cpu: used.append("spots") or _f(plan, tol, spans))
    for n_cells, expected in (((20, 20, 20), "spots"), ((2, 2, 2), "brute")):
        crystal = Crystal(cell=CELL, structure_factors=SF, space_group="P 21 21 21", U=U, n_cells=n_cells,
                          shape="gauss_2022", mosaic_spread_deg=0.3, mosaic_domains=4)
        auto = render(crystal, beam, det, backend="numba", method="auto")
        assert used[-1] == expected
        np.testing.assert_array_equal(auto, render(crystal, beam, det, backend="numba", method=expected))


def test_cached_background_map_is_reused_and_scales():
    from xrais.simulate import kernel_spots

    crystal, beam, det, options = _scene("gauss_2022", True)
    kernel_spots._unit_background_cache.clear()
    first = render(crystal, beam, det, backend="numba", method="spots", water_um=30.0, **options)
    assert len(kernel_spots._unit_background_cache) == 1
    twice = render(crystal, beam, det, backend="numba", method="spots", water_um=60.0, **options)
    assert len(kernel_spots._unit_background_cache) == 1  # same geometry: the map was reused
    brute = render(crystal, beam, det, backend="numba", water_um=60.0, **options)
    np.testing.assert_allclose(twice, brute, rtol=2e-3, atol=1e-4 * float(brute.max()))
    assert not np.allclose(twice, first, rtol=1e-2)
    other = Detector.flat(image_size=(120, 100), pixel_size_mm=0.4, distance_mm=110.0, beam_center_px=(50.5, 40.2))
    render(crystal, beam, other, backend="numba", method="spots", water_um=30.0, **options)
    assert len(kernel_spots._unit_background_cache) == 2


def test_lattice_extent_shrinks_with_tolerance_and_size():
    a0 = np.diag([1 / 60.0, 1 / 70.0, 1 / 80.0])
    for shape in range(6):
        wide = lattice_extent(shape, (40, 40, 40), 1.0, 1e-3, a0)
        assert lattice_extent(shape, (40, 40, 40), 1.0, 1e-1, a0) <= wide
        assert lattice_extent(shape, (80, 80, 80), 1.0, 1e-3, a0) <= wide


def test_method_and_tolerance_are_checked():
    crystal, beam, det, _ = _scene("gauss", False)
    with pytest.raises(ConfigError, match="method"):
        render(crystal, beam, det, backend="numba", method="fast")
    with pytest.raises(ConfigError, match="tolerance"):
        render(crystal, beam, det, backend="numba", method="spots", tolerance=0.0)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_nanobragg_cases_with_spots(shared_data, name):
    case = _cases(shared_data)[name]
    reference = np.load(shared_data(f"nanobragg/{case['output']['file']}"))["image"].astype(np.float64)
    image = render_case(case, shared_data, method="spots").astype(np.float64)
    r = np.corrcoef(image.ravel(), reference.ravel())[0, 1]
    assert r >= 0.999, f"{name}: Pearson r = {r:.7f}"
    assert abs(image.sum() / reference.sum() - 1.0) <= 0.01


CUDA_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from xrais.geometry import Beam
    from xrais.simulate import StructureFactors, render
    from xrais.simulate.nanobragg import nanobragg_crystal, nanobragg_detector

    out = {}
    sf = StructureFactors.random_wilson((61.2, 72.5, 84.3, 90, 90, 90), "P 21 21 21", d_min_A=3.0, seed=5)
    det = nanobragg_detector(pixel_mm=1.376, n_fast=14, n_slow=12, distance_mm=100, xbeam_mm=8.0, ybeam_mm=9.8)
    beam = Beam(wavelength_A=1.0, divergence_mrad=0.4, polarization_fraction=0.95)
    for shape in ("square", "gauss_2022"):
        crystal = nanobragg_crystal((61.2, 72.5, 84.3, 90, 90, 90), (12.5, -27.3, 41.8), structure_factors=sf,
                                    n_cells=(6, 7, 8), shape=shape, mosaic_spread_deg=0.3, mosaic_domains=2)
        kw = dict(oversample=2, divergence_steps=2, water_um=20, method="spots")
        out[shape + "_numba"] = render(crystal, beam, det, backend="numba", **kw)
        out[shape + "_cuda"] = render(crystal, beam, det, backend="cuda", **kw)
    np.savez(sys.argv[1], **out)
    """
)


def test_spots_numba_and_cuda_kernels_agree(run_under_cudasim):
    images = run_under_cudasim(CUDA_SCRIPT)
    for shape in ("square", "gauss_2022"):
        cpu, gpu = images[shape + "_numba"], images[shape + "_cuda"]
        assert cpu.shape == (12, 14) and cpu.max() > 0
        np.testing.assert_allclose(gpu, cpu, rtol=1e-5, atol=1e-6 * float(cpu.max()))
