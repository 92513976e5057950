"""The simulation configuration and the per-image sampler."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xrais.errors import ConfigError
from xrais.simulate.config import PRESETS, SimulationConfig, load_config
from xrais.simulate.sampler import b_factor_from_resolution, image_seed, random_cell, random_rotation, sample_image


def test_defaults_are_xrais_appendix_a():
    c = SimulationConfig()
    assert c.detector_choices == ("pilatus6m", "eiger16m") and c.distance_mm_range == (200.0, 300.0)
    assert (c.wavelength_A, c.photons_per_image, c.beam_size_um, c.divergence_mrad) == (0.9795, 4e11, 30.0, 0.02)
    assert c.crystal_size_um == 25.0 and c.domain_size_um_choices == (0.05, 0.10, 0.15)
    assert c.mosaic_spread_deg_range == (0.05, 1.0) and c.background.scale_range == (0.0125, 1.25)
    ml = load_config(preset="multilattice")
    assert ml.detector_choices == ("rayonix_mx340",) and ml.distance_mm_range == (240.0, 240.0)
    assert ml.mosaic_spread_deg_range == (0.001, 0.01) and ml.lattice_weights == (0.5, 0.25, 0.25)
    assert set(PRESETS) == {"resolution", "multilattice"}


def test_config_files_round_trip_and_bad_input(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text(SimulationConfig(distance_mm_range=(150.0, 160.0)).to_toml())
    assert load_config(toml).distance_mm_range == (150.0, 160.0)
    (tmp_path / "bad.toml").write_text("distance_mm = 200\n")
    with pytest.raises(ConfigError, match=r"bad.toml: unknown key 'distance_mm'; did you mean 'distance_mm_range'\?"):
        load_config(tmp_path / "bad.toml")
    (tmp_path / "range.toml").write_text("distance_mm_range = [300, 200]\n")
    with pytest.raises(ConfigError, match=r"range.toml: distance_mm_range: .*low 300.0 must not exceed high 200.0"):
        load_config(tmp_path / "range.toml")
    (tmp_path / "type.toml").write_text('wavelength_A = "blue"\n')
    with pytest.raises(ConfigError, match=r"type.toml: wavelength_A"):
        load_config(tmp_path / "type.toml")
    (tmp_path / "det.toml").write_text('detector_choices = ["pilatus7m"]\n')
    with pytest.raises(ConfigError, match="pilatus7m"):
        load_config(tmp_path / "det.toml")
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="preset 'x'"):
        load_config(preset="x")


def test_holton_relation():
    assert b_factor_from_resolution(2.0) == 28.0
    assert math.sqrt((b_factor_from_resolution(3.3) - 12) / 4) == pytest.approx(3.3)


def test_image_parameters_are_reproducible_and_independent_of_order():
    c = SimulationConfig()
    a = sample_image(c, 7, 3)
    assert sample_image(c, 7, 3) == a
    assert sample_image(c, 7, 4) != a and sample_image(c, 8, 3) != a
    assert image_seed(7, 3) == a.seed
    labels = a.labels()
    assert labels["inv_resolution_per_A"] == pytest.approx(1 / a.resolution_A)
    assert labels["b_factor_A2"] == pytest.approx(4 * a.resolution_A**2 + 12)
    assert 200 <= labels["distance_mm"] <= 300 and labels["detector"] in ("pilatus6m", "eiger16m")
    assert labels["n_lattices"] == 1


def test_lattice_mix_and_angles_follow_the_preset():
    c = load_config(preset="multilattice")
    draws = [sample_image(c, 1, i) for i in range(800)]
    counts = np.bincount([d.n_lattices for d in draws], minlength=4)[1:] / len(draws)
    np.testing.assert_allclose(counts, [0.5, 0.25, 0.25], atol=0.05)
    sigmas = {d.lattice_sigma_deg for d in draws}
    assert sigmas == {0.1, 1.0, 10.0}
    for d in draws:
        assert len(d.lattice_axes) == len(d.lattice_angles_deg) == d.n_lattices - 1
        assert all(abs(np.linalg.norm(ax) - 1) < 1e-12 for ax in d.lattice_axes)
    big = [a for d in draws if d.lattice_sigma_deg == 10.0 for a in d.lattice_angles_deg]
    assert len(big) > 40 and np.std(big) == pytest.approx(10.0, rel=0.3)  # Gaussian angles of σ = 10°


@pytest.mark.parametrize("space_group", ["P 1", "C 1 2 1", "P 43 21 2", "P 61 2 2", "R 3:H", "I 2 3"])
def test_random_cells_fit_their_space_group(space_group):
    import gemmi

    rng = np.random.default_rng(0)
    cell = random_cell(space_group, 1.0e6, rng)
    uc = gemmi.UnitCell(*cell)
    assert uc.volume == pytest.approx(1.0e6, rel=1e-9)
    assert uc.is_compatible_with_spacegroup(gemmi.SpaceGroup(space_group), 1e-3)


def test_random_rotations_are_rotations_and_uniform():
    rng = np.random.default_rng(1)
    us = np.array([random_rotation(rng) for _ in range(3000)])
    assert np.allclose(np.einsum("nij,nkj->nik", us, us), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(us), 1.0)
    # uniform on SO(3): the image of a fixed axis is uniform on the sphere (mean ≈ 0, ⟨z²⟩ ≈ 1/3)
    z = us[:, :, 2]
    assert np.abs(z.mean(axis=0)).max() < 0.05 and abs((z[:, 2] ** 2).mean() - 1 / 3) < 0.03


def test_lattice_labels_name_each_lattice_and_rebuild_its_rotation():
    from scipy.spatial.transform import Rotation

    c = load_config(preset="multilattice")
    seen = set()
    for i in range(60):
        p = sample_image(c, 4, i)
        labels = p.labels()
        seen.add(p.n_lattices)
        assert labels["lattice1_angle_deg"] == 0.0  # lattice 1 is the reference
        rotations = p.lattice_rotations()
        assert len(rotations) == p.n_lattices and np.array_equal(rotations[0], np.eye(3))
        for k in (2, 3):
            axis = np.array([labels[f"lattice{k}_axis_{c}"] for c in "xyz"])
            angle = labels[f"lattice{k}_angle_deg"]
            if k > p.n_lattices:  # a lattice the image does not have
                assert angle == 0.0 and not axis.any()
                continue
            assert np.linalg.norm(axis) == pytest.approx(1.0, abs=1e-12)
            assert (axis.tolist(), angle) == (list(p.lattice_axes[k - 2]), p.lattice_angles_deg[k - 2])
            # the stored axis and angle, rotated independently of xrais, give the lattice's rotation
            expected = Rotation.from_rotvec(np.radians(angle) * axis).as_matrix()
            np.testing.assert_allclose(rotations[k - 1], expected, atol=1e-12)
            np.testing.assert_allclose(rotations[k - 1] @ p.U, expected @ p.U, atol=1e-12)
    assert seen == {1, 2, 3}
