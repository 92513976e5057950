"""``xrais simulate`` end to end on small sets: files, labels against images, seeds, resume, MPI, raw CBF."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from xrais.cli import main
from xrais.conditioning import read_image
from xrais.io import read_shard
from xrais.simulate.config import SimulationConfig
from xrais.simulate.dataset import done_indices, simulate_dataset
from xrais.simulate.image import simulate_image
from xrais.simulate.sampler import sample_image

SMALL = dict(detector_choices=("pilatus2m",), distance_mm_range=(180.0, 220.0), cell_volume_A3_range=(6e4, 1.5e5),
             mosaic_domains=2, shard_size=2, space_group_choices=("P 21 21 21", "P 43 21 2", "C 1 2 1"))


def small_config(**kw) -> SimulationConfig:
    return SimulationConfig(**{**SMALL, **kw})


def _all_rows(folder: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    images, columns = [], {}
    for shard in sorted(folder.glob("sim_r*_*.h5")):
        img, cols, _ = read_shard(shard)
        images.append(img)
        for k, v in cols.items():
            columns.setdefault(k, []).append(v)
    order = np.argsort(np.concatenate(columns["source/index"]))
    return np.concatenate(images)[order], {k: np.concatenate(v)[order] for k, v in columns.items()}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("set")
    report = simulate_dataset(small_config(), 5, out, seed=11, backend="numba")
    return out, report


def test_files_labels_and_manifest(small_set):
    out, report = small_set
    assert sorted(report.made) == [0, 1, 2, 3, 4] and not report.failed
    images, cols = _all_rows(out)
    assert images.shape == (5, 512, 512) and images.dtype == np.uint8 and images.max() > 0
    assert cols["source/index"].tolist() == [0, 1, 2, 3, 4]
    for name in ("resolution_A", "inv_resolution_per_A", "b_factor_A2", "n_lattices", "distance_mm", "space_group",
                 "mosaic_spread_deg", "domain_size_um", "background_scale", "beamstop_radius_mm", "n_hot_pixels"):
        assert f"labels/{name}" in cols, name
    np.testing.assert_allclose(cols["labels/b_factor_A2"], 4 * cols["labels/resolution_A"] ** 2 + 12)
    assert set(cols["geometry/downsample"]) == {2}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows"] == 5 and sum(s["rows"] for s in manifest["shards"]) == 5
    run = json.loads((out / "simulation.json").read_text())
    assert run["seed"] == 11 and run["config"]["detector_choices"] == ["pilatus2m"]


def test_same_seed_same_set_other_seed_other_set(small_set, tmp_path):
    out, _ = small_set
    simulate_dataset(small_config(), 2, tmp_path / "again", seed=11, backend="numba")
    a, cols_a = _all_rows(out)
    b, cols_b = _all_rows(tmp_path / "again")
    np.testing.assert_array_equal(b, a[:2])
    assert cols_b["labels/resolution_A"].tolist() == cols_a["labels/resolution_A"][:2].tolist()
    simulate_dataset(small_config(), 1, tmp_path / "other", seed=12, backend="numba")
    c, _ = _all_rows(tmp_path / "other")
    assert not np.array_equal(c[0], a[0])


def test_resume_after_a_kill_is_bit_identical(small_set, tmp_path):
    out, _ = small_set
    partial = tmp_path / "partial"
    shutil.copytree(out, partial)
    for shard in sorted(partial.glob("sim_r*_*.h5"))[1:]:  # a kill lost every shard but the first
        shard.unlink()
    (partial / "manifest.json").unlink()
    assert done_indices(partial) == {0, 1}
    report = simulate_dataset(small_config(), 5, partial, seed=11, backend="numba")
    assert sorted(report.made) == [2, 3, 4] and report.skipped_done == 2
    np.testing.assert_array_equal(_all_rows(partial)[0], _all_rows(out)[0])
    with pytest.raises(Exception, match="different seed"):
        simulate_dataset(small_config(), 5, partial, seed=99, backend="numba")


def test_labels_agree_with_the_images():
    # Bragg scattering only, so that counting bright pixels counts spots
    cfg = small_config(background=dict(air_mm=0.0, water_um=0.0, parasitic_um=0.0))
    base = replace(sample_image(cfg, 3, 0), n_lattices=1, lattice_axes=(), lattice_angles_deg=())
    one = simulate_image(cfg, base, backend="numba")
    three = simulate_image(cfg, replace(base, n_lattices=3, lattice_axes=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
                                        lattice_angles_deg=(5.0, -7.0)), backend="numba")
    # more lattices → more spots (pixels above 1 % of the strongest spot), the same total crystal
    level = 0.01 * float(one.photons.max())
    assert (three.photons > level / 3).sum() > 1.5 * (one.photons > level).sum()
    # higher B → fewer high-resolution spots (beyond 3 Å)
    low_b = simulate_image(cfg, replace(base, resolution_A=1.5, b_factor_A2=4 * 1.5**2 + 12), backend="numba")
    high_b = simulate_image(cfg, replace(base, resolution_A=4.5, b_factor_A2=4 * 4.5**2 + 12), backend="numba")
    s, f = np.mgrid[0 : low_b.photons.shape[0], 0 : low_b.photons.shape[1]]
    d = low_b.detector.resolution_at_pixel_A(low_b.beam, f + 0.5, s + 0.5)
    outer = d < 3.0
    level = 0.001 * float(low_b.photons.max())
    assert (low_b.photons[outer] > level).sum() > 3 * max(int((high_b.photons[outer] > level).sum()), 1)
    # the detector effects are where the labels say
    raw = one.raw
    assert (raw == -1).sum() == 197_365  # module gaps of a PILATUS 2M
    assert (raw == 65536).sum() == one.labels["n_hot_pixels"]
    r_px = one.labels["beamstop_radius_mm"] / 0.172
    cf, cs = one.beam_center_px
    inside = (f + 0.5 - cf) ** 2 + (s + 0.5 - cs) ** 2 < (0.9 * r_px) ** 2
    assert inside.any() and (raw[inside & (raw != 65536)] <= 0).all()


def test_raw_cbf_reads_back_with_its_geometry(tmp_path):
    report = simulate_dataset(small_config(), 1, tmp_path, seed=5, backend="numba", save_raw="cbf")
    assert report.made == [0]
    image = read_image(tmp_path / "raw" / "sim_0000000.cbf")
    _, cols = _all_rows(tmp_path)
    assert image.detector.name == "pilatus2m" and image.pixels.shape == (1679, 1475)
    assert image.detector.distance_mm == pytest.approx(cols["labels/distance_mm"][0], abs=1e-3)
    assert image.beam_center_px == pytest.approx((cols["labels/beam_center_fast_px"][0],
                                                  cols["labels/beam_center_slow_px"][0]), abs=1e-3)
    assert image.beam.wavelength_A == pytest.approx(0.9795)


def test_raw_nxmx_reads_back(tmp_path):
    simulate_dataset(small_config(), 1, tmp_path, seed=5, backend="numba", save_raw="nxs")
    image = read_image(tmp_path / "raw" / "sim_0000000.nxs")
    cbf_free = simulate_image(small_config(), sample_image(small_config(), 5, 0), backend="numba")
    np.testing.assert_array_equal(image.pixels, cbf_free.raw)
    assert image.format == "nxmx" and image.detector.distance_mm == pytest.approx(cbf_free.detector.distance_mm)
    assert image.beam_center_px == pytest.approx(cbf_free.beam_center_px)
    assert image.mask[cbf_free.raw == -1].all()


def test_bad_input_stops_before_any_work(tmp_path, monkeypatch):
    import shutil as _shutil
    from collections import namedtuple

    from xrais.errors import ConfigError

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(_shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10**6, 10**6))
    with pytest.raises(ConfigError, match=r"needs about .* GB and the disk has 0.00 GB free"):
        simulate_dataset(small_config(), 100, tmp_path / "full", seed=1, backend="numba")
    assert not list((tmp_path / "full").glob("*.h5"))
    with pytest.raises(ConfigError, match="--save-raw 'tif'"):
        simulate_dataset(small_config(), 1, tmp_path / "x", save_raw="tif")
    with pytest.raises(ConfigError, match="no PDB/mmCIF files"):
        simulate_dataset(small_config(structures_dir=str(tmp_path)), 1, tmp_path / "y")


def test_a_bad_crystal_file_is_skipped_and_recorded(tmp_path, shared_data):
    structures = tmp_path / "structures"
    structures.mkdir()
    shutil.copy(shared_data("structures/RTSAD_HEWL_refine_25.pdb"), structures / "hewl.pdb")
    (structures / "broken.pdb").write_text("CRYST1 garbage\nATOM nonsense\n")
    cfg = small_config(structures_dir=str(structures), resolution_A_range=(2.5, 3.0))
    report = simulate_dataset(cfg, 6, tmp_path / "out", seed=2, backend="numba")
    assert report.failed and len(report.made) + len(report.failed) == 6 and report.made
    lines = (tmp_path / "out" / "failures_r0000.tsv").read_text().splitlines()
    assert all("broken.pdb" in line for line in lines) and len(lines) == len(report.failed)


def test_mpi_run_makes_the_same_set(small_set, tmp_path):
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("mpiexec not found (install the mpich wheel)")
    out, _ = small_set
    config = tmp_path / "small.toml"
    config.write_text(small_config().to_toml())
    cmd = [mpiexec, "-n", "2", sys.executable, "-m", "xrais.cli", "simulate", "--config", str(config),
           "--n-images", "5", "--out", str(tmp_path / "mpi"), "--seed", "11", "--backend", "numba"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "rank 1/2" in proc.stdout
    assert {p.name.split("_")[1] for p in (tmp_path / "mpi").glob("sim_r*_*.h5")} == {"r0000", "r0001"}
    np.testing.assert_array_equal(_all_rows(tmp_path / "mpi")[0], _all_rows(out)[0])


def test_cli_print_config_and_show(small_set, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", "--print-config", "--preset", "multilattice"])
    assert (exit_info.value.code or 0) == 0
    assert 'detector_choices = ["rayonix_mx340"]' in capsys.readouterr().out
    out, _ = small_set
    shard = sorted(out.glob("sim_r*_*.h5"))[0]
    png = tmp_path / "row.png"
    with pytest.raises(SystemExit) as exit_info:
        main(["show", str(shard), "--index", "1", "--out", str(png)])
    assert (exit_info.value.code or 0) == 0 and png.stat().st_size > 10_000
    with pytest.raises(SystemExit) as exit_info:
        main(["show", str(shard), "--index", "99"])
    assert exit_info.value.code == 1 and "row 99 out of range" in capsys.readouterr().err


def test_each_lattice_is_rendered_with_the_rotation_its_labels_give(monkeypatch):
    from scipy.spatial.transform import Rotation

    import xrais.simulate.image as image_module

    rendered = []

    def fake_render(lattice, beam, detector, **kw):
        rendered.append(np.asarray(lattice.U))
        return np.zeros(detector.array_shape)

    monkeypatch.setattr(image_module, "render", fake_render)
    cfg = small_config()
    base = sample_image(cfg, 3, 0)
    params = replace(base, n_lattices=3, lattice_axes=((0.6, 0.0, 0.8), (0.0, 1.0, 0.0)),
                     lattice_angles_deg=(5.0, -7.0))
    labels = simulate_image(cfg, params, backend="numba").labels
    assert len(rendered) == 3 and labels["n_lattices"] == 3 and labels["lattice1_angle_deg"] == 0.0
    np.testing.assert_allclose(rendered[0], base.U, atol=1e-12)
    for k in (2, 3):
        rotvec = np.radians(labels[f"lattice{k}_angle_deg"]) * np.array([labels[f"lattice{k}_axis_{c}"] for c in "xyz"])
        np.testing.assert_allclose(rendered[k - 1], Rotation.from_rotvec(rotvec).as_matrix() @ base.U, atol=1e-12)
