"""Training data: shard discovery and checks, the split by image, samplers, augmentation, lazy HDF5."""

from __future__ import annotations

import json
import pickle

import h5py
import numpy as np
import pytest
import torch

from xrais.errors import DatasetError
from xrais.io import write_shard
from xrais.train.data import (GlobalBatchSampler, ShardDataset, apply_photon_gain, compute_input_stats,
                              resolve_data, scan_shards, split_by_image)


def _columns(n: int, index_offset: int = 0) -> dict:
    return {
        "labels/inv_resolution_per_A": np.linspace(0.2, 0.6, n), "labels/n_lattices": np.ones(n, dtype=np.int64),
        "labels/b_factor_A2": np.linspace(20, 80, n), "geometry/distance_mm": np.full(n, 200.0),
        "geometry/pixel_mm": np.full(n, 0.172), "geometry/downsample": np.full(n, 2),
        "geometry/wavelength_A": np.full(n, 0.9795), "source/index": np.arange(n) // 4 + index_offset,
        "source/quadrant": np.arange(n) % 4,
    }


@pytest.fixture
def shard(tmp_path):
    images = np.random.default_rng(0).integers(0, 20, size=(12, 512, 512), dtype=np.uint8)
    return write_shard(tmp_path / "a_00000.h5", images, _columns(12))


def test_resolve_data_reads_manifests_folders_and_files(tiny_training_set, tmp_path):
    shards = sorted(tiny_training_set.glob("sim_r*.h5"))
    assert resolve_data([tiny_training_set]) == [p.resolve() for p in shards]
    assert resolve_data([tiny_training_set / "manifest.json", shards[0]]) == [p.resolve() for p in shards]
    assert resolve_data([shards[1], shards[0], shards[1]]) == [shards[1].resolve(), shards[0].resolve()]
    with pytest.raises(DatasetError, match="nothing_here: no such file"):
        resolve_data([tmp_path / "nothing_here"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty: expected a manifest.json or .h5 shards"):
        resolve_data([tmp_path / "empty"])
    bad = tmp_path / "manifest.json"
    bad.write_text(json.dumps({"shards": [{"file": "gone.h5"}]}))
    with pytest.raises(DatasetError, match="manifest.json: lists shards that do not exist: gone.h5"):
        resolve_data([bad])


def test_scan_checks_schema_and_labels(shard, tmp_path):
    table = scan_shards([shard], "resolution", ("b_factor_A2",))
    assert len(table) == 12 and table.heads.shape == (12, 1)
    np.testing.assert_allclose(table.geometry[0], [200.0, 0.344, 0.9795], rtol=1e-6)
    assert len(np.unique(table.image_id)) == 3  # four quadrants per image
    with pytest.raises(DatasetError, match=r"a_00000.h5: expected column\(s\) labels/mosaic_spread_deg"):
        scan_shards([shard], "resolution", ("mosaic_spread_deg",))
    small = write_shard(tmp_path / "small.h5", np.zeros((2, 256, 256), np.uint8), _columns(2))
    with pytest.raises(DatasetError, match=r"small.h5: expected 'images' of shape \(N, 512, 512\) uint8, found"):
        scan_shards([small], "resolution")
    cols = _columns(2)
    del cols["geometry/wavelength_A"]
    nogeo = write_shard(tmp_path / "nogeo.h5", np.zeros((2, 512, 512), np.uint8), cols)
    with pytest.raises(DatasetError, match="nogeo.h5: expected column.*geometry/wavelength_A"):
        scan_shards([nogeo], "resolution")
    assert len(scan_shards([nogeo], "multilattice")) == 2  # the multi-lattice model needs no geometry
    cols = _columns(2)
    cols["labels/inv_resolution_per_A"] = np.array([0.3, np.nan])
    nan = write_shard(tmp_path / "nan.h5", np.zeros((2, 512, 512), np.uint8), cols)
    with pytest.raises(DatasetError, match="nan.h5: expected finite numbers in column labels/inv_resolution_per_A"):
        scan_shards([nan], "resolution")
    empty = write_shard(tmp_path / "empty.h5", np.zeros((0, 512, 512), np.uint8),
                        {k: v[:0] for k, v in _columns(2).items()})
    with pytest.raises(DatasetError, match="empty.h5: expected at least one image"):
        scan_shards([empty], "resolution")
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["images"] = np.zeros((1, 512, 512), np.uint8)
    with pytest.raises(DatasetError, match="foreign.h5: expected an xrais shard"):
        scan_shards([tmp_path / "foreign.h5"], "resolution")


def test_split_keeps_quadrants_of_an_image_together_and_is_deterministic(tiny_training_set):
    table = scan_shards(resolve_data([tiny_training_set]), "resolution")
    train, val = split_by_image(table, 0.25, seed=5)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == len(table)
    assert not set(table.image_id[train]) & set(table.image_id[val])
    assert len(np.unique(table.image_id[val])) == 8  # 25 % of 32 images
    np.testing.assert_array_equal(split_by_image(table, 0.25, seed=5)[1], val)
    assert not np.array_equal(split_by_image(table, 0.25, seed=6)[1], val)
    assert len(split_by_image(table, 0.0, seed=5)[1]) == 0


def test_processes_together_see_the_single_process_batches():
    rows = np.arange(100, 150)
    single = GlobalBatchSampler(rows, 8, seed=2)
    single.set_epoch(3)
    batches = np.array(list(single)).reshape(-1, 8)
    assert len(batches) == 6 and len(set(batches.ravel())) == 48 and set(batches.ravel()) <= set(rows)
    parts = []
    for rank in range(4):
        s = GlobalBatchSampler(rows, 8, num_replicas=4, rank=rank, seed=2)
        s.set_epoch(3)
        assert len(s) == 12
        parts.append(np.array(list(s)).reshape(-1, 2))
    for k, batch in enumerate(batches):
        assert sorted(np.concatenate([p[k] for p in parts])) == sorted(batch)
    single.set_epoch(4)
    assert not np.array_equal(np.array(list(single)).reshape(-1, 8), batches)


def test_photon_gain_keeps_zeros_and_the_sqrt_scale():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 200, size=(512, 512), dtype=np.uint8)
    image[:40] = 0
    assert np.array_equal(apply_photon_gain(image, 1.0, rng), image)  # the same photons condition the same
    four = apply_photon_gain(image, 4.0, rng).astype(int)
    v = image.astype(int)
    unclipped = 2 * v + 1 < 255
    assert np.all((four[unclipped] >= 2 * v[unclipped]) & (four[unclipped] <= 2 * v[unclipped] + 1))
    assert np.all(four[image == 0] == 0) and four.max() == 255
    quarter = apply_photon_gain(image, 0.25, rng).astype(int)
    assert np.all(np.abs(quarter - v / 2) <= 1) and quarter[0, 0] == 0  # beam corner untouched


def test_dataset_opens_files_lazily_per_process_and_augments_reproducibly(shard):
    table = scan_shards([shard], "resolution")
    ds = ShardDataset(table, augment=True, seed=4)
    first = ds[5]
    assert first["image"].shape == (1, 512, 512) and first["image"].dtype == torch.uint8
    assert ds._handles  # open in this process now
    clone = pickle.loads(pickle.dumps(ds))  # a pickled dataset carries no HDF5 handle
    assert clone._handles == {} and torch.equal(clone[5]["image"], first["image"])
    ds.epoch = 1
    assert not torch.equal(ds[5]["image"], first["image"])  # another epoch, another gain
    ds.close()
    assert ds._handles == {}
    mean, std = compute_input_stats(ShardDataset(table), np.arange(12), 4, seed=0)
    assert 8.0 < mean < 11.0 and 5.0 < std < 6.5  # uniform integers 0–19
