"""The structure bank: entries fixed by their index, each |F| table made once and reused."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

import xrais.simulate.structure_factors as structure_factors
from xrais.geometry import Beam, Detector
from xrais.simulate.config import SimulationConfig
from xrais.simulate.image import detector_d_min_A, simulate_image
from xrais.simulate.sampler import jitter_cell, sample_image
from xrais.simulate.structure_bank import StructureBank, bank_entry, config_d_min_A

SMALL = dict(detector_choices=("pilatus2m",), distance_mm_range=(180.0, 220.0), cell_volume_A3_range=(6e4, 1.5e5),
             mosaic_domains=1, render_method="spots", space_group_choices=("P 21 21 21", "P 43 21 2", "C 1 2 1"))


@pytest.fixture
def count_ffts(monkeypatch):
    """Count the |F| computations (one density FFT each)."""
    calls = []
    real = structure_factors._model_amplitudes

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(structure_factors, "_model_amplitudes", counting)
    return calls


def test_bank_images_reuse_each_table(count_ffts):
    config = SimulationConfig(**SMALL, structure_bank_size=2)
    images = [simulate_image(config, sample_image(config, 3, i)) for i in range(6)]
    used = {im.parameters.structure_index for im in images}
    assert len(count_ffts) == len(used) <= 2
    assert all(im.labels["structure"] == f"bank{im.parameters.structure_index:03d}" for im in images)
    assert {"structure_index", "cell_jitter_a", "cell_jitter_b", "cell_jitter_c"} <= set(images[0].labels)


def test_bank_size_0_makes_a_table_per_image(count_ffts):
    config = SimulationConfig(**SMALL, structure_bank_size=0)
    for i in range(3):
        assert simulate_image(config, sample_image(config, 3, i)).labels["structure"] == "random-atom"
    assert len(count_ffts) == 3


def test_entries_depend_on_the_bank_seed_only():
    config = SimulationConfig(**SMALL, structure_bank_size=8)
    assert bank_entry(config, 5) == bank_entry(config.model_copy(update={"distance_mm_range": (150.0, 160.0)}), 5)
    assert bank_entry(config, 5) != bank_entry(config, 6)
    other = config.model_copy(update={"structure_bank_seed": 1})
    assert bank_entry(config, 5).cell != bank_entry(other, 5).cell
    entries = [bank_entry(config, j) for j in range(8)]
    for e in entries:
        lo, hi = config.cell_volume_A3_range
        a, b, c, al, be, ga = e.cell
        volume = a * b * c * math.sqrt(1 - sum(math.cos(math.radians(x)) ** 2 for x in (al, be, ga))
                                       + 2 * math.prod(math.cos(math.radians(x)) for x in (al, be, ga)))
        assert lo * 0.999 <= volume <= hi * 1.001 and e.space_group in config.space_group_choices
    # an image's crystal is its entry's, with the cell jittered by ~cell_jitter_fraction
    params = [sample_image(config, 9, i) for i in range(40)]
    ratios = np.array([np.array(p.cell[:3]) / np.array(entries[p.structure_index].cell[:3]) for p in params])
    assert 0.004 < np.std(np.log(ratios)) < 0.02
    assert all(p.space_group == entries[p.structure_index].space_group for p in params)


def test_jitter_keeps_the_crystal_system():
    assert jitter_cell((80, 80, 80, 90, 90, 90), "P 21 3", (1.1, 0.9, 1.0))[:3] == pytest.approx((88, 88, 88))
    assert jitter_cell((60, 60, 90, 90, 90, 120), "P 61", (0.5, 2.0, 2.0))[:3] == pytest.approx((30, 30, 180))
    assert jitter_cell((40, 50, 60, 90, 100, 90), "C 1 2 1", (1.1, 1.2, 1.3)) == pytest.approx(
        (44, 60, 78, 90, 100, 90))


def test_the_tables_reach_every_configured_detector_corner():
    config = SimulationConfig(**SMALL)
    d_min = config_d_min_A(config)
    beam = Beam(wavelength_A=config.wavelength_A)
    for i in range(10):
        p = sample_image(config, 4, i)
        det = Detector.from_catalog(p.detector, distance_mm=p.distance_mm,
                                    beam_center_px=(p.beam_center_fast_px, p.beam_center_slow_px))
        assert d_min <= detector_d_min_A(det, beam) + 1e-9


def test_disk_cache_is_read_back_and_recomputed_when_damaged(tmp_path, count_ffts, caplog):
    config = SimulationConfig(**SMALL, structure_bank_size=3, structure_cache_dir=str(tmp_path / "cache"))
    first = StructureBank(config)
    sf, cell, space_group = first.table(1)
    assert first.n_computed == 1 and len(list((tmp_path / "cache").glob("F_*.npy"))) == 1
    second = StructureBank(config)
    again, cell2, sg2 = second.table(1)
    assert second.n_computed == 0 and len(count_ffts) == 1
    np.testing.assert_array_equal(again.amplitudes, sf.amplitudes)
    assert (again.hkl_min, cell2, sg2) == (sf.hkl_min, cell, space_group)
    next(iter((tmp_path / "cache").glob("F_*.npy"))).write_bytes(b"not a table")
    with caplog.at_level(logging.WARNING):
        third = StructureBank(config)
        np.testing.assert_array_equal(third.table(1)[0].amplitudes, sf.amplitudes)
    assert third.n_computed == 1 and "unreadable" in caplog.text


def test_memory_budget_drops_the_least_recently_used(count_ffts):
    config = SimulationConfig(**SMALL, structure_bank_size=3, structure_cache_mb=1e-3)
    bank = StructureBank(config)
    bank.table(0)
    bank.table(1)
    bank.table(1)
    assert bank.n_computed == 2
    bank.table(0)  # dropped to make room for 1: computed again
    assert bank.n_computed == 3


def test_structure_files_are_bank_entries(tmp_path, shared_data, count_ffts):
    import shutil

    shutil.copy(shared_data("structures/RTSAD_HEWL_refine_25.pdb"), tmp_path / "hewl.pdb")
    config = SimulationConfig(**SMALL, structures_dir=str(tmp_path), resolution_A_range=(2.5, 3.0))
    images = [simulate_image(config, sample_image(config, 1, i)) for i in range(2)]
    assert len(count_ffts) == 1
    assert all(im.parameters.structure.endswith("hewl.pdb") for im in images)
    assert images[0].parameters.cell[:3] != images[1].parameters.cell[:3]  # each its own jitter
    assert images[0].parameters.space_group == "P 43 21 2"
