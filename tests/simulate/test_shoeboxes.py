"""Shoeboxes: the render agrees with the closed-form truth, counts are Poisson, files keep their provenance."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import gemmi
import h5py
import numpy as np
import pytest

from xrais.errors import ConfigError, DatasetError
from xrais.geometry import Beam, Detector, rotation_matrix
from xrais.simulate.crystal import Crystal
from xrais.simulate.mosaic import SPINDLE_AXIS
from xrais.simulate.shoebox_io import read_shoeboxes, write_shoeboxes
from xrais.simulate.shoeboxes import (
    REFLECTION_COLUMNS,
    ShoeboxConfig,
    ShoeboxSet,
    screen_shoeboxes,
    simulate_shoeboxes,
    synthetic_shoeboxes,
)
from xrais.simulate.spots import predict_spots
from xrais.simulate.structure_factors import StructureFactors

CELL = (30.0, 30.0, 36.0, 90.0, 90.0, 90.0)


def _setup(mosaic_domains: int = 3):
    sf = StructureFactors.random_wilson(CELL, "P 1", d_min_A=2.4, seed=1)
    det = Detector.flat(image_size=(384, 384), pixel_size_mm=0.172, distance_mm=100, beam_center_px=(192.3, 185.7))
    xtal = Crystal.from_domain_size(CELL, 0.03, structure_factors=sf, shape="gauss_2022", mosaic_spread_deg=0.05,
                                    mosaic_domains=mosaic_domains, U=rotation_matrix((1, 2, 3), 17.0))
    beam = Beam(wavelength_A=1.0, fluence_photons=1e12, beam_size_um=30)
    cfg = ShoeboxConfig(n_images=6, osc_deg=0.5, d_min_A=2.5, crystal_scale=3e5, background_scale=0.0008, phi_steps=3)
    return xtal, beam, det, cfg


@pytest.fixture(scope="module")
def rotation():
    xtal, beam, det, cfg = _setup()
    return xtal, beam, det, cfg, simulate_shoeboxes(xtal, beam, det, cfg, seed=3, backend="numba")


def _complete(sb: ShoeboxSet) -> np.ndarray:
    return sb.mask.reshape(len(sb), -1).all(axis=1)


def _on_panel(sb: ShoeboxSet) -> np.ndarray:
    """Every pixel measured in every frame of the scan (frames outside the scan may be masked)."""
    per_frame = sb.mask.reshape(len(sb), sb.shape[0], -1)
    return np.all(per_frame.all(axis=2) | ~per_frame.any(axis=2), axis=1) & per_frame.any(axis=(1, 2))


def test_signal_sum_is_the_true_intensity_less_its_tail(rotation):
    *_, sb = rotation
    r = sb.reflections
    assert len(sb) > 100 and sb.shape == (3, 21, 21)
    whole = _on_panel(sb)
    assert whole.sum() > 60
    expected = r["intensity_true"] * (1.0 - r["tail_fraction"])
    ratio = sb.signal_sum()[whole] / expected[whole]
    assert np.median(np.abs(ratio - 1)) < 2e-3 and np.max(np.abs(ratio - 1)) < 0.02
    # the tail is real: reflections with a long rocking curve lose signal outside three frames
    assert r["tail_fraction"].max() > 0.02 and np.all((r["tail_fraction"] >= 0) & (r["tail_fraction"] < 1))


def test_centroids_are_the_predicted_positions(rotation):
    xtal, beam, det, cfg, sb = rotation
    r = sb.reflections
    sel = _complete(sb) & (r["tail_fraction"] < 0.02)
    f, h, w = sb.shape
    zz, yy, xx = np.meshgrid(np.arange(f) + 0.5, np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    s = sb.signal[sel].astype(np.float64)
    tot = s.sum(axis=(1, 2, 3))
    got = np.stack([(s * xx).sum(axis=(1, 2, 3)) / tot + r["corner_px"][sel, 0],
                    (s * yy).sum(axis=(1, 2, 3)) / tot + r["corner_px"][sel, 1],
                    (s * zz).sum(axis=(1, 2, 3)) / tot + r["frame_first"][sel]], axis=1)
    err = np.abs(got - r["xyz_px"][sel])
    assert sel.sum() > 15 and err[:, :2].max() < 0.2 and err[:, 2].max() < 0.25
    # and they are where predict_spots puts the same reflection at its spindle angle
    for i in np.nonzero(sel)[0][:5]:
        spots = predict_spots(xtal, beam, det, d_min_A=cfg.d_min_A, ewald_tolerance_per_A=1e-6, phi_deg=r["phi_deg"][i])
        match = np.all(spots.miller_index == r["miller_index"][i], axis=1)
        assert match.sum() == 1
        np.testing.assert_allclose(spots.position_px[match][0], r["xyz_px"][i, :2], atol=1e-6)
        assert r["xyz_px"][i, 2] == pytest.approx((r["phi_deg"][i] - cfg.phi_start_deg) / cfg.osc_deg)


def test_counts_are_poisson_around_signal_plus_background(rotation):
    *_, sb = rotation
    r = sb.reflections
    f, h, w = sb.shape
    corner, first = r["corner_px"], r["frame_first"]
    overlap = ((np.abs(corner[:, None, 0] - corner[None, :, 0]) < w) & (np.abs(corner[:, None, 1] - corner[None, :, 1]) < h)
               & (np.abs(first[:, None] - first[None, :]) < f))
    isolated = overlap.sum(axis=1) == 1  # only itself: the counts hold no neighbour
    assert isolated.sum() > 30
    lam = (sb.signal + sb.background)[isolated][sb.mask[isolated]].astype(np.float64)
    c = sb.counts[isolated][sb.mask[isolated]].astype(np.float64)
    z = (c - lam) / np.sqrt(lam)
    se = 1.0 / math.sqrt(len(z))
    assert abs(z.mean()) < 4 * se and abs(z.var() - 1.0) < 4 * math.sqrt(2.0) * se + 0.01
    low = lam < 1.0  # exact small-count check: the fraction of zeros
    assert low.sum() > 1000
    p0 = np.exp(-lam[low])
    assert abs(np.mean(c[low] == 0) - p0.mean()) < 4 * math.sqrt(np.sum(p0 * (1 - p0))) / low.sum()
    assert np.all(sb.counts[~sb.mask] == 0) and np.all(sb.signal[~sb.mask] == 0)


def test_metadata(rotation):
    xtal, beam, det, cfg, sb = rotation
    r = sb.reflections
    assert set(r) == set(REFLECTION_COLUMNS)
    hkl = r["miller_index"]
    uc = gemmi.UnitCell(*CELL)
    d = np.array([uc.calculate_d(list(map(int, v))) for v in hkl])
    np.testing.assert_allclose(r["d_A"], d, rtol=1e-9)
    assert np.all(r["d_A"] >= cfg.d_min_A) and not np.any(np.all(hkl == 0, axis=1))
    np.testing.assert_array_equal(r["image"], np.floor(r["xyz_px"][:, 2]).astype(int))
    np.testing.assert_array_equal(r["frame_first"], r["image"] - 1)
    np.testing.assert_allclose(r["scale"], np.asarray(sb.attrs["scales"])[r["image"]])
    np.testing.assert_allclose(r["wavelength_A"], beam.wavelength_A)
    # Lorentz factor 1/|e·(s0 × s1)| from the diffracted direction at the centroid
    k = 1.0 / beam.wavelength_A
    a_rot = np.stack([rotation_matrix(SPINDLE_AXIS, p) @ xtal.A for p in r["phi_deg"]])
    s1 = np.einsum("nij,nj->ni", a_rot, hkl) + np.asarray(beam.direction) * k
    np.testing.assert_allclose(np.linalg.norm(s1, axis=1), k, rtol=1e-9)  # on the Ewald sphere at φ_c
    s1 /= np.linalg.norm(s1, axis=1, keepdims=True)
    np.testing.assert_allclose(r["lorentz"], 1.0 / np.abs(np.cross(beam.direction, s1) @ SPINDLE_AXIS), rtol=1e-9)
    assert np.all((r["polarization"] > 0.5) & (r["polarization"] <= 1.0)) and np.all(r["solid_angle_sr"] > 0)
    np.testing.assert_allclose(r["F_true"], xtal.structure_factors.lookup(*hkl.T), rtol=1e-6)


def test_deterministic_and_independent_of_how_images_are_shared(rotation):
    xtal, beam, det, cfg, sb = rotation
    again = simulate_shoeboxes(xtal, beam, det, cfg, seed=3, backend="numba")
    np.testing.assert_array_equal(again.counts, sb.counts)
    halves = [simulate_shoeboxes(xtal, beam, det, cfg, seed=3, images=part, backend="numba")
              for part in (range(0, 3), range(3, 6))]
    joined = ShoeboxSet.concatenate(halves)
    np.testing.assert_array_equal(joined.counts, sb.counts)
    np.testing.assert_array_equal(joined.signal, sb.signal)
    other = simulate_shoeboxes(xtal, beam, det, cfg, seed=4, images=range(0, 1), backend="numba")
    same = sb.subset(sb.reflections["image"] == 0)
    assert not np.array_equal(other.counts, same.counts)


def test_hdf5_round_trip_with_provenance(rotation, tmp_path):
    *_, sb = rotation
    path = write_shoeboxes(tmp_path / "sb.h5", sb, {"config": {"note": "test"}, "seed": 3})
    back = read_shoeboxes(path)
    for name in ("counts", "signal", "background", "mask"):
        np.testing.assert_array_equal(getattr(back, name), getattr(sb, name))
    for name, col in sb.reflections.items():
        np.testing.assert_array_equal(back.reflections[name], col)
    assert back.attrs["seed"] == 3 and back.attrs["config"] == {"note": "test"}
    assert back.attrs["xrais_version"] and back.attrs["format"] == "xrais-shoeboxes-1"
    assert back.attrs["shoebox_config"]["n_images"] == 6 and back.attrs["crystal"]["cell"] == list(CELL)
    assert [p.name for p in tmp_path.iterdir()] == ["sb.h5"]  # no temporary file left
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.attrs["format"] = "xrais-shard-1"
    with pytest.raises(DatasetError, match="not an xrais shoebox file"):
        read_shoeboxes(tmp_path / "other.h5")


def test_stills_record_their_partial_intensity():
    xtal, beam, det, cfg = _setup(mosaic_domains=1)
    cfg = cfg.model_copy(update={"mode": "stills", "n_images": 2, "min_partiality": 0.2})
    sb = simulate_shoeboxes(xtal, beam, det, cfg, seed=5, backend="numba")
    r = sb.reflections
    assert sb.shape == (1, 21, 21) and set(np.unique(r["image"])) == {0, 1}
    assert np.all((r["partiality"] >= 0.2) & (r["partiality"] <= 1.0 + 1e-12))
    whole = _complete(sb)
    ratio = sb.signal_sum()[whole] / r["intensity_true"][whole]
    assert whole.sum() > 5 and np.max(np.abs(ratio - 1)) < 0.02
    # a still's spot is where predict_spots puts it
    spots = predict_spots(replace(xtal, U=np.eye(3)), beam, det, d_min_A=2.5)
    assert len(spots) > 0


def test_bad_shoeboxes_are_reported_and_excluded():
    good = np.ones((1, 3, 3))
    boxes = [good, good * np.nan, -good, good, np.ones((2, 3, 3))]
    masks = [np.ones((1, 3, 3), bool)] * 3 + [np.zeros((1, 3, 3), bool), np.ones((2, 3, 3), bool)]
    keep, problems = screen_shoeboxes(boxes, masks, expected_shape=(1, 3, 3))
    assert keep.tolist() == [True, False, False, False, False]
    reasons = dict(problems)
    assert "NaN" in reasons[1] and "negative" in reasons[2] and "all masked" in reasons[3] and "shape" in reasons[4]
    # negative values in masked voxels (detector gap markers) are fine
    c = np.ones((1, 1, 3, 3))
    c[0, 0, 0, 0] = -1
    m = np.ones_like(c, bool)
    m[0, 0, 0, 0] = False
    assert screen_shoeboxes(c, m)[0].tolist() == [True]


def test_only_gaussian_lattice_shapes_have_a_truth():
    xtal, beam, det, cfg = _setup()
    with pytest.raises(ConfigError, match="closed-form"):
        simulate_shoeboxes(replace(xtal, shape="square"), beam, det, cfg, backend="numba")


def test_synthetic_shoeboxes_are_consistent():
    sb = synthetic_shoeboxes(50, shape=(3, 11, 11), seed=2)
    np.testing.assert_allclose(sb.signal_sum(), sb.reflections["intensity_true"], rtol=1e-4)
    assert sb.counts.dtype == np.int32 and sb.reflections["profile_covariance"].shape == (50, 3, 3)
    np.testing.assert_array_equal(synthetic_shoeboxes(50, shape=(3, 11, 11), seed=2).counts, sb.counts)


def _experiment_file(tmp_path: Path) -> Path:
    path = tmp_path / "exp.toml"
    path.write_text('detector = "flat"\nimage_size_px = [192, 192]\ndistance_mm = 80.0\ncell = [40.0, 40.0, 50.0, 90.0, '
                    '90.0, 90.0]\nspace_group = "P 1"\nmosaic_domains = 2\n[shoeboxes]\nn_images = 4\nd_min_A = 3.0\n'
                    'phi_steps = 2\n')
    return path


def test_cli_simulate_shoeboxes_and_resume(tmp_path, capsys):
    from xrais.cli import main

    exp = _experiment_file(tmp_path)
    for _ in range(2):
        with pytest.raises(SystemExit) as exit_info:
            main(["simulate", "--shoeboxes", "--config", str(exp), "--out", str(tmp_path / "out"), "--seed", "7",
                  "--backend", "numba"])
        assert (exit_info.value.code or 0) == 0
    out = capsys.readouterr().out
    assert "simulated in" in out and "already complete" in out
    sb = read_shoeboxes(tmp_path / "out" / "shoeboxes_r0000.h5")
    assert len(sb) > 10 and sb.attrs["seed"] == 7 and sb.attrs["config"]["shoeboxes"]["n_images"] == 4
    with pytest.raises(SystemExit):
        main(["simulate", "--shoeboxes", "--config", str(exp), "--out", str(tmp_path / "out"), "--seed", "8"])
    assert "different seed" in capsys.readouterr().err


def test_mpi_ranks_make_the_same_shoeboxes(tmp_path):
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("mpiexec not found (install the mpich wheel)")
    exp = _experiment_file(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    base = [sys.executable, "-m", "xrais.cli", "simulate", "--shoeboxes", "--config", str(exp), "--seed", "7",
            "--backend", "numba"]
    proc = subprocess.run([mpiexec, "-n", "2", *base, "--out", str(tmp_path / "mpi")], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    proc = subprocess.run([*base, "--out", str(tmp_path / "one")], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    parts = [read_shoeboxes(tmp_path / "mpi" / f"shoeboxes_r{r:04d}.h5") for r in range(2)]
    assert all(len(p) for p in parts)
    one = read_shoeboxes(tmp_path / "one" / "shoeboxes_r0000.h5")
    np.testing.assert_array_equal(ShoeboxSet.concatenate(parts).counts, one.counts)
