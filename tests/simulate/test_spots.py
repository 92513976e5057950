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
from xrais.simulate.spot_windows import lattice_extent, spot_windows

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
    found = spot_windows(plan)
    assert 0 < found.pixel_terms < 0.05 * 200 * 200 * len(plan.orientations)
    w = found.windows
    assert np.all((w[:, 3] < w[:, 4]) & (w[:, 5] < w[:, 6]) & (w[:, 3] >= 0) & (w[:, 4] <= 200) & (w[:, 6] <= 200))
    assert set(w[:, 0]) == set(range(4)) and w[:, 7].max() < len(found.miller_index)


@pytest.mark.parametrize("shape", ["square", "gauss_2022"])
def test_overlapping_windows_count_every_term_once(shape):
    # a large cell with few cells per domain: neighbouring spots' windows overlap (at a low
    # tolerance they cover most of the detector), yet each term is added by one window only
    cell = (180.0, 190.0, 200.0, 90.0, 90.0, 90.0)
    sf = StructureFactors.random_wilson(cell, "P 21 21 21", d_min_A=3.0, seed=2)
    crystal = Crystal(cell=cell, structure_factors=sf, space_group="P 21 21 21", U=U, n_cells=(4, 5, 6), shape=shape,
                      mosaic_spread_deg=0.2, mosaic_domains=2)
    det = Detector.flat(image_size=(90, 80), pixel_size_mm=0.5, distance_mm=120.0, beam_center_px=(45.5, 40.2))
    beam = Beam(wavelength_A=1.0, fluence_photons=1e17, beam_size_um=30.0)
    plan = render_plan(crystal, beam, det)
    found = spot_windows(plan, tolerance=1e-9)
    cover = np.zeros((len(plan.orientations), 80, 90), dtype=np.int64)
    for o, _j, _p, f0, f1, s0, s1, _r in found.windows:
        cover[o, s0:s1, f0:f1] += 1
    assert cover.max() >= 3  # windows do overlap
    brute = render(crystal, beam, det, backend="numba")
    spots = render(crystal, beam, det, backend="numba", method="spots", tolerance=1e-9)
    np.testing.assert_allclose(spots, brute, rtol=1e-4, atol=1e-6 * float(brute.max()))


def test_auto_picks_spots_for_large_domains_and_brute_for_tiny_ones(monkeypatch):
    from xrais.simulate import kernel_cpu, kernel_spots

    det = Detector.flat(image_size=(200, 200), pixel_size_mm=0.2, distance_mm=100.0, beam_center_px=(100.5, 100.5))
    beam = Beam(wavelength_A=1.0)
    used = []
    brute_cpu, spots_cpu = kernel_cpu.render_cpu, kernel_spots.render_spots_cpu
    monkeypatch.setattr(kernel_cpu, "render_cpu", lambda plan: used.append("brute") or brute_cpu(plan))
    monkeypatch.setattr(kernel_spots, "render_spots_cpu",
                        lambda plan, tol, windows=None: used.append("spots") or spots_cpu(plan, tol, windows))
    for n_cells, expected in (((20, 20, 20), "spots"), ((2, 2, 2), "brute")):
        crystal = Crystal(cell=CELL, structure_factors=SF, space_group="P 21 21 21", U=U, n_cells=n_cells,
                          shape="gauss_2022", mosaic_spread_deg=0.3, mosaic_domains=4)
        auto = render(crystal, beam, det, backend="numba", method="auto")
        assert used[-1] == expected
        np.testing.assert_array_equal(auto, render(crystal, beam, det, backend="numba", method=expected))


@pytest.mark.parametrize("uniform", [True, False], ids=["one-sample", "oversampled"])
def test_cached_geometry_maps_are_reused_and_scale(uniform):
    from xrais.simulate import kernel_spots

    crystal, beam, det, options = _scene("gauss_2022", not uniform)
    kernel_spots._geometry_cache.clear()
    first = render(crystal, beam, det, backend="numba", method="spots", water_um=30.0, **options)
    n_maps = len(kernel_spots._geometry_cache)
    assert n_maps == 1  # Ω·P of the one sample, or (oversampled) the mean Ω·P for the background
    twice = render(crystal, beam, det, backend="numba", method="spots", water_um=60.0, **options)
    assert len(kernel_spots._geometry_cache) == n_maps  # same geometry: the maps were reused
    brute = render(crystal, beam, det, backend="numba", water_um=60.0, **options)
    np.testing.assert_allclose(twice, brute, rtol=2e-3, atol=1e-4 * float(brute.max()))
    assert not np.allclose(twice, first, rtol=1e-2)
    other = Detector.flat(image_size=(120, 100), pixel_size_mm=0.4, distance_mm=110.0, beam_center_px=(50.5, 40.2))
    render(crystal, beam, other, backend="numba", method="spots", water_um=30.0, **options)
    assert len(kernel_spots._geometry_cache) == 2 * n_maps


def test_reflection_terms_and_background_sum_to_the_brute_force_pixel():
    # per pixel: Σ over orientations, sources and reflections of the spot term, plus the
    # background term, is pixel_value (the plain-Python functions, no kernel)
    from xrais.simulate import physics

    crystal, beam, det, options = _scene("round", True)
    plan = render_plan(crystal, beam, det, water_um=10.0, **options)
    args = dict(panels=plan.panels, sources=plan.sources, orientations=plan.orientations, a0=plan.a0,
                shape=plan.shape_code, na=plan.n_cells[0], nb=plan.n_cells[1], nc=plan.n_cells[2], fudge=plan.fudge,
                grid=plan.grid, hmin=plan.hkl_min[0], kmin=plan.hkl_min[1], lmin=plan.hkl_min[2],
                default_f=plan.default_f, inv_dmin=plan.inv_dmin, oversample=plan.oversample, kahn=plan.kahn,
                pol_ex=plan.polarization_axis[0], pol_ey=plan.polarization_axis[1], pol_ez=plan.polarization_axis[2],
                flags=plan.flags, scale=plan.scale)
    brute = render(crystal, beam, det, backend="numba", water_um=10.0, **options)
    for fi, si in [tuple(np.unravel_index(np.argmax(brute), brute.shape))[::-1], (7, 90), (60, 33)]:
        total = physics.pixel_background(0, fi, si, plan.panels, plan.sources, plan.oversample, plan.kahn,
                                         *plan.polarization_axis, plan.flags, plan.scale, plan.background, plan.steps)
        for o in range(len(plan.orientations)):
            for j in range(len(plan.sources)):
                centre = plan.orientations[o] @ ((det.panels[0].pixel_lab_coord_mm(fi + 0.5, si + 0.5)
                                                  / np.linalg.norm(det.panels[0].pixel_lab_coord_mm(fi + 0.5, si + 0.5))
                                                  - plan.sources[j, :3]) / plan.sources[j, 3])
                near = np.round(centre)
                for dh in np.ndindex(3, 3, 3):  # every index a sub-pixel can round to
                    h = near + np.array(dh) - 1
                    total += physics.spot_pixel_value(0, fi, si, o, j, *h, steps=plan.steps, **args)
        whole = physics.pixel_value(0, fi, si, background=plan.background, steps=plan.steps, **args)
        assert total == pytest.approx(whole, rel=1e-12)
        assert whole == pytest.approx(float(brute[si, fi]), rel=1e-6)


def test_shared_sample_weight_gives_the_same_term():
    # one sub-pixel and one source: scale · Ω·P · Σ intensity / steps is spot_pixel_value
    from xrais.simulate import physics

    crystal, beam, det, _ = _scene("gauss", False)
    plan = render_plan(crystal, beam, det)
    assert physics.uniform_sample_weight(plan.oversample, len(plan.sources), plan.flags)
    assert not physics.uniform_sample_weight(2, 1, 0) and physics.uniform_sample_weight(2, 3, 1 | 2)
    brute = render(crystal, beam, det, backend="numba")
    si, fi = np.unravel_index(np.argmax(brute), brute.shape)
    m = plan.orientations[0]
    pos = det.panels[0].pixel_lab_coord_mm(fi + 0.5, si + 0.5)
    h = np.round(m @ ((pos / np.linalg.norm(pos) - plan.sources[0, :3]) / plan.sources[0, 3]))
    common = (plan.a0, plan.shape_code, *plan.n_cells, plan.fudge, plan.grid, *plan.hkl_min, plan.default_f,
              plan.inv_dmin)
    weight = physics.first_sample_weight(0, fi, si, plan.panels, plan.sources, 1, plan.kahn, *plan.polarization_axis,
                                         plan.flags)
    shared = plan.scale * weight * physics.spot_intensity_sum(plan.panels, 0, fi, si, 1, *plan.sources[0], m, *common,
                                                              *h) / plan.steps
    term = physics.spot_pixel_value(0, fi, si, 0, 0, *h, plan.panels, plan.sources, plan.orientations, *common,
                                    1, plan.kahn, *plan.polarization_axis, plan.flags, plan.scale, plan.steps)
    assert term > 0 and shared == pytest.approx(term, rel=1e-12)


def test_spots_with_omega_and_polarization_once_per_oversampled_pixel():
    # nanoBragg's default weighting: every sub-pixel shares the first one's Ω·P (cached map)
    from xrais.simulate.kernel import FLAG_OMEGA_ONCE, FLAG_POLAR_ONCE, run_plan

    crystal, beam, det, options = _scene("square", True)
    for water_um in (0.0, 1.0):
        plan = render_plan(crystal, beam, det, flags=FLAG_OMEGA_ONCE | FLAG_POLAR_ONCE, water_um=water_um, **options)
        assert plan.oversample == 2 and len(plan.sources) > 1
        brute = run_plan(plan, "numba", method="brute")
        spots = run_plan(plan, "numba", method="spots")
        if water_um:
            np.testing.assert_allclose(spots, brute, rtol=2e-3, atol=1e-4 * float(brute.max()))
        else:
            assert compare_spots(brute, spots) >= 3


def test_weight_map_fills_lazily_and_gives_the_same_image():
    # a new geometry computes Ω·P only on its windows' pixels; a background needs all of them
    from xrais.simulate import kernel_spots, physics

    crystal, beam, det, _ = _scene("gauss_2022", False)
    kernel_spots._geometry_cache.clear()
    first = render(crystal, beam, det, backend="numba", method="spots")
    (weights, complete), = kernel_spots._geometry_cache.values()
    assert not complete and 0 < np.count_nonzero(weights) < 0.5 * weights.size
    plan = render_plan(crystal, beam, det)
    s, f = np.argwhere(weights > 0)[0]
    expected = physics.first_sample_weight(0, f, s, plan.panels, plan.sources, 1, plan.kahn, *plan.polarization_axis,
                                           plan.flags)
    assert weights[s, f] == np.float32(expected)
    np.testing.assert_array_equal(render(crystal, beam, det, backend="numba", method="spots"), first)
    render(crystal, beam, det, backend="numba", method="spots", water_um=1.0)
    (weights, complete), = kernel_spots._geometry_cache.values()
    assert complete and np.all(weights > 0)
    np.testing.assert_array_equal(render(crystal, beam, det, backend="numba", method="spots"), first)


def test_reachable_reflections_equal_a_search_of_the_whole_index_box():
    # the per-(h, k) line–shell intervals miss no index that the plain test over the box keeps
    from xrais.simulate.spot_reflections import reachable_reflections

    crystal, beam, det, options = _scene("gauss_2022", True)
    plan = render_plan(crystal, beam, det, **options)
    radius, s_max = 0.004, 0.55
    found = {tuple(h) for h in reachable_reflections(plan, radius, s_max)}
    a = np.linalg.inv(plan.orientations[0])
    grids = np.meshgrid(*[np.arange(-m, m + 1) for m in (40, 45, 50)], indexing="ij")
    hkl = np.stack([g.ravel() for g in grids], axis=1)
    s = hkl @ a.T
    k_in = plan.sources[:, :3] / plan.sources[:, 3:4]
    theta = max(np.arccos(np.clip((np.trace(np.linalg.inv(m) @ plan.orientations[0]) - 1) / 2, -1, 1))
                for m in plan.orientations)
    shift = np.max(np.linalg.norm(k_in - k_in[0], axis=1) + np.abs(1 / plan.sources[:, 3] - 1 / plan.sources[0, 3]))
    s_len = np.linalg.norm(s, axis=1)
    excitation = np.abs(np.linalg.norm(s + k_in[0], axis=1) - 1 / plan.sources[0, 3])
    keep = (s_len <= s_max + radius) & (excitation <= radius + shift + 1e-12 + theta * s_len)
    idx = hkl[keep] - np.asarray(plan.hkl_min)
    inside = np.all((idx >= 0) & (idx < plan.grid.shape), axis=1)
    f = np.full(len(idx), plan.default_f)
    f[inside] = plan.grid[tuple(idx[inside].T)]
    expected = {tuple(h) for h in hkl[keep][f != 0]}
    assert len(expected) > 100 and found == expected


def test_spots_on_panels_in_different_planes():
    # two panels tilted towards each other (two plane groups), one beside the beam and one
    # further out, each with its own block of the data array
    from dataclasses import replace

    crystal, beam, _, _ = _scene("gauss_2022", True)
    panels = []
    for i, angle in enumerate((-12.0, 20.0)):
        flat = Detector.flat(image_size=(60, 80), pixel_size_mm=0.4, distance_mm=100.0, beam_center_px=(30.0, 40.0))
        panel = flat.rotated((0.0, 1.0, 0.0), angle).panels[0]
        panels.append(replace(panel, name=f"p{i}", array_offset_px=(60 * i, 0)))
    det = Detector(panels=tuple(panels))
    brute = render(crystal, beam, det, backend="numba")
    spots = render(crystal, beam, det, backend="numba", method="spots")
    assert spots.shape == (80, 120) and brute[:, :60].max() > 0 and brute[:, 60:].max() > 0
    assert compare_spots(brute, spots) >= 3


def test_window_padding_is_checked():
    crystal, beam, det, _ = _scene("gauss", False)
    with pytest.raises(ConfigError, match="pad_px"):
        spot_windows(render_plan(crystal, beam, det), pad_px=-1)


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
