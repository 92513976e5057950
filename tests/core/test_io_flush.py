"""ShardWriter.flush: rows reach disk before a shard is full, the shard grows whole, a resume numbers after it."""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from xrais.errors import DatasetError
from xrais.io import ShardWriter, append_shard, list_shards, read_shard, write_shard


def _image(i: int) -> np.ndarray:
    return np.full((1, 512, 512), i, np.uint8)


def test_flush_writes_the_rows_so_far_and_later_rows_grow_the_same_shard(tmp_path):
    w = ShardWriter(tmp_path, "sim", shard_size=4, attrs={"seed": 3})
    w.add(_image(0), {"source/index": [0], "labels/d_A": [2.5], "labels/name": ["a"]})
    assert not list_shards(tmp_path, "sim")  # buffered only
    assert w.flush() == 1
    images, cols, attrs = read_shard(tmp_path / "sim_00000.h5")
    assert images.shape == (1, 512, 512) and cols["source/index"].tolist() == [0] and attrs["seed"] == 3
    for i in range(1, 6):
        w.add(_image(i), {"source/index": [i], "labels/d_A": [2.5 + i], "labels/name": [f"n{i}"]})
        if i == 2:
            assert w.flush() == 2  # rows 1 and 2, appended to the shard on disk
            assert read_shard(tmp_path / "sim_00000.h5", images=False)[1]["source/index"].tolist() == [0, 1, 2]
    w.close()
    shards = list_shards(tmp_path, "sim")
    assert [p.name for p in shards] == ["sim_00000.h5", "sim_00001.h5"] and w.written == shards
    rows = [read_shard(p) for p in shards]
    assert [r[1]["source/index"].tolist() for r in rows] == [[0, 1, 2, 3], [4, 5]]
    np.testing.assert_array_equal(np.concatenate([r[0] for r in rows])[:, 0, 0], np.arange(6))
    assert rows[0][1]["labels/name"].tolist() == ["a", "n1", "n2", "n3"]
    np.testing.assert_allclose(rows[0][1]["labels/d_A"], [2.5, 3.5, 4.5, 5.5])
    with h5py.File(shards[0]) as f:
        assert f["images"].chunks == (1, 512, 512) and f["images"].compression == "gzip"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_a_resumed_writer_numbers_after_a_partial_shard(tmp_path):
    w = ShardWriter(tmp_path, "sim", shard_size=4)
    w.add(_image(0), {"source/index": [0]})
    w.flush()  # then the run is killed: sim_00000.h5 holds one row
    again = ShardWriter(tmp_path, "sim", shard_size=4)
    again.add(_image(1), {"source/index": [1]})
    again.close()
    assert [read_shard(p, images=False)[1]["source/index"].tolist() for p in list_shards(tmp_path, "sim")] == [[0], [1]]


def test_an_integer_column_widens_when_floats_arrive(tmp_path):
    path = write_shard(tmp_path / "s_00000.h5", _image(0), {"labels/x": [1]}, growable=True)
    append_shard(path, _image(1), {"labels/x": [2.5]})
    assert read_shard(path, images=False)[1]["labels/x"].tolist() == [1.0, 2.5]


def test_append_refuses_rows_that_do_not_fit(tmp_path):
    path = write_shard(tmp_path / "s_00000.h5", _image(0), {"labels/x": [1]}, growable=True)
    with pytest.raises(DatasetError, match=r"s_00000.h5: columns \['labels/y'\] differ"):
        append_shard(path, _image(1), {"labels/y": [1]})
    with pytest.raises(DatasetError, match="rows to add must be"):
        append_shard(path, np.zeros((1, 8, 8), np.uint8), {"labels/x": [1]})
    fixed = write_shard(tmp_path / "t_00000.h5", _image(0), {"labels/x": [1]})
    with pytest.raises(DatasetError, match="not written to grow"):
        append_shard(fixed, _image(1), {"labels/x": [2]})
    assert read_shard(path, images=False)[1]["labels/x"].tolist() == [1]  # untouched by the refusals


def test_temporaries_of_a_killed_writer_are_removed(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = tmp_path / f".sim_00003.h5.{gone.pid}.tmp"
    live = tmp_path / f".sim_00004.h5.{os.getppid()}.tmp"  # a live process's: kept
    other = tmp_path / f".cond_00000.h5.{gone.pid}.tmp"  # another writer's prefix: kept
    for p in (stale, live, other):
        p.write_bytes(b"partial")
    ShardWriter(tmp_path, "sim", shard_size=2)
    assert not stale.exists() and live.exists() and other.exists()
