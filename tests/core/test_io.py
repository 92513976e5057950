"""HDF5 shards: round trip, atomic writes, numbering and resume."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from xrais.errors import DatasetError
from xrais.io import SHARD_FORMAT, ShardWriter, list_shards, read_shard, write_shard


def test_round_trip_with_groups_strings_and_attrs(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(3, 512, 512), dtype=np.uint8)
    cols = {"source/path": ["a.cbf", "b.cbf", "c ü.cbf"], "source/frame": [0, 1, 2],
            "geometry/distance_mm": np.array([200.0, 250.0, 300.0], dtype=np.float32)}
    path = write_shard(tmp_path / "s.h5", images, cols, {"config": {"block": 2}, "seed": 7})
    assert [p.name for p in tmp_path.iterdir()] == ["s.h5"]  # no temporary left behind
    got, columns, attrs = read_shard(path)
    np.testing.assert_array_equal(got, images)
    assert columns["source/path"].tolist() == ["a.cbf", "b.cbf", "c ü.cbf"]
    assert columns["source/frame"].tolist() == [0, 1, 2]
    assert columns["geometry/distance_mm"].dtype == np.float32
    assert json.loads(attrs["config"]) == {"block": 2} and attrs["seed"] == 7
    assert attrs["format"] == SHARD_FORMAT and attrs["xrais_version"]
    with h5py.File(path) as f:
        assert f["images"].chunks == (1, 512, 512) and f["images"].compression == "gzip"


def test_writer_numbers_shards_and_resumes_after_existing_ones(tmp_path):
    img = np.zeros((1, 512, 512), np.uint8)
    with ShardWriter(tmp_path, "cond", shard_size=2) as w:
        for i in range(5):
            w.add(img + i, {"source/frame": [i]})
    assert [p.name for p in list_shards(tmp_path, "cond")] == ["cond_00000.h5", "cond_00001.h5", "cond_00002.h5"]
    with ShardWriter(tmp_path, "cond", shard_size=2) as w:  # a second run adds, never overwrites
        w.add(img, {"source/frame": [9]})
    shards = list_shards(tmp_path, "cond")
    assert shards[-1].name == "cond_00003.h5"
    frames = [int(v) for s in shards for v in read_shard(s, images=False)[1]["source/frame"]]
    assert frames == [0, 1, 2, 3, 4, 9]


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="images must be"):
        write_shard(tmp_path / "x.h5", np.zeros((2, 4, 4), np.float32), {})
    with pytest.raises(DatasetError, match="column 'a': expected 2 values"):
        write_shard(tmp_path / "x.h5", np.zeros((2, 4, 4), np.uint8), {"a": [1]})
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["images"] = np.zeros((1, 2, 2), np.uint8)
    with pytest.raises(DatasetError, match="plain.h5: not an xrais shard"):
        read_shard(plain)
    (tmp_path / "junk.h5").write_bytes(b"nope")
    with pytest.raises(DatasetError, match="junk.h5: cannot read shard"):
        read_shard(tmp_path / "junk.h5")
