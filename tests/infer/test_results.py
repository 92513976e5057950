"""The results folder: journal, HDF5 table, provenance, repair after a kill, refusing other settings."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest

from xrais._version import __version__
from xrais.errors import ConfigError
from xrais.infer.config import InferConfig
from xrais.infer.results import ResultsWriter, read_provenance, read_results
from xrais.infer.scoring import describe_models, empty_row, result_columns
from xrais.models.checkpoint import compute_sha256


@pytest.fixture
def setup(checkpoints):
    config = InferConfig(models=(str(checkpoints["resolution"]),), quadrants=1, flush_rows=2)
    infos = describe_models(config.models)
    return config, infos, result_columns(infos, 1)


def _rows(columns, n, start=0, error_at=()):
    rows = []
    for i in range(start, start + n):
        r = empty_row(columns, f"/data/run/img_{i:04d}.cbf", 0)
        r.update(n_frames=1, resolution_q0_A=2.0 + 0.1 * i, min_resolution_A=2.0 + 0.1 * i,
                 mean_resolution_A=2.0 + 0.1 * i, models="resolution", rank=0, error="" if i not in error_at else
                 "img: truncated, expected 6 MB, found 3 MB")
        rows.append(r)
    return rows


def test_rows_reach_the_journal_and_the_table_with_provenance(tmp_path, setup, checkpoints):
    config, infos, columns = setup
    with ResultsWriter(tmp_path, config, infos, columns) as w:
        w.write(_rows(columns, 3, error_at=(1,)))
        # the journal is flushed at once; the table gets rows every flush_rows (2) rows
        assert len((tmp_path / "results.csv").read_text().splitlines()) == 4
    csv_rows, h5_rows = read_results(tmp_path), read_results(tmp_path / "results.h5")
    assert list(csv_rows.columns) == columns == list(h5_rows.columns)
    np.testing.assert_allclose(csv_rows["min_resolution_A"], [2.0, 2.1, 2.2])
    np.testing.assert_allclose(h5_rows["min_resolution_A"], csv_rows["min_resolution_A"])
    assert list(h5_rows["error"]) == list(csv_rows["error"]) == ["", "img: truncated, expected 6 MB, found 3 MB", ""]
    assert math.isnan(csv_rows["distance_mm"][0])
    prov = read_provenance(tmp_path)
    assert prov["xrais_version"] == __version__
    assert prov["models"][0]["sha256"] == compute_sha256(checkpoints["resolution"])
    assert prov["config"]["quadrants"] == 1 and prov["runs"][0]["rows_written"] == 3 and prov["runs"][0]["finished"]
    with h5py.File(tmp_path / "results.h5") as f:
        assert json.loads(f.attrs["provenance"])["models"][0]["task"] == "resolution"


def test_a_cut_last_line_and_a_damaged_table_are_repaired(tmp_path, setup):
    config, infos, columns = setup
    w = ResultsWriter(tmp_path, config, infos, columns)
    rows = _rows(columns, 5)
    w.write(rows[:4])
    w.write(rows[4:])
    w._fh.close()  # killed: no close(), the last row never reached the table
    with open(tmp_path / "results.csv", "a") as fh:
        fh.write("/data/run/img_0099.cbf,0,1,pilat")  # a row cut by the kill
    with h5py.File(tmp_path / "results.h5", "r") as f:
        assert len(f["rows/file"]) == 4
    w2 = ResultsWriter(tmp_path, config, infos, columns)
    assert w2.rows_before == 5 and ("/data/run/img_0004.cbf", 0) in w2.done
    assert ("/data/run/img_0099.cbf", 0) not in w2.done
    w2.close()
    assert len(read_results(tmp_path / "results.h5")) == 5
    (tmp_path / "results.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)  # damaged beyond reading
    ResultsWriter(tmp_path, config, infos, columns).close()
    assert list(read_results(tmp_path / "results.h5")["file"]) == list(read_results(tmp_path)["file"])
    assert len(read_provenance(tmp_path)["runs"]) == 3


def test_a_folder_of_other_models_or_settings_is_refused(tmp_path, setup, checkpoints):
    config, infos, columns = setup
    ResultsWriter(tmp_path, config, infos, columns).close()
    other = config.model_copy(update={"quadrants": 4})
    with pytest.raises(ConfigError, match=r"other models or settings \(quadrants: 1 there, 4 now\)"):
        ResultsWriter(tmp_path, other, infos, result_columns(infos, 4))
    ml = InferConfig(models=(str(checkpoints["multilattice"]),), quadrants=1)
    ml_infos = describe_models(ml.models)
    with pytest.raises(ConfigError, match="models: resolution .* there, multilattice .* now"):
        ResultsWriter(tmp_path, ml, ml_infos, result_columns(ml_infos, 1))
    # batch size, device and threads do not change the values: the folder is resumed
    ResultsWriter(tmp_path, config.model_copy(update={"batch_size": 3, "device": "cpu", "threads": 1}),
                  infos, columns).close()


def test_parquet_parts_when_pyarrow_is_installed(tmp_path, setup):
    pytest.importorskip("pyarrow")
    config, infos, columns = setup
    config = config.model_copy(update={"formats": ("csv", "parquet")})
    with ResultsWriter(tmp_path, config, infos, columns) as w:
        w.write(_rows(columns, 3))
    assert list(read_results(tmp_path / "results.parquet")["file"]) == list(read_results(tmp_path)["file"])


def _provenance_run(folder):
    return json.loads((folder / "provenance.json").read_text())["runs"][-1]


def test_the_row_count_in_provenance_follows_each_flush(tmp_path, setup):
    config, infos, columns = setup  # flush_rows=2
    rows = _rows(columns, 3, error_at=(2,))
    w = ResultsWriter(tmp_path, config, infos, columns)
    assert _provenance_run(tmp_path)["rows_written"] == 0
    w.write(rows[:1])
    assert _provenance_run(tmp_path)["rows_written"] == 0 and len(read_results(tmp_path / "results.h5")) == 0
    w.write(rows[1:2])  # the second row: a flush, so a kill from here on leaves the count on disk
    run = _provenance_run(tmp_path)
    assert run["rows_written"] == 2 and run["errors"] == 0 and run["updated"] and run["finished"] is None
    assert len(read_results(tmp_path / "results.h5")) == 2
    w.write(rows[2:])
    assert _provenance_run(tmp_path)["rows_written"] == 2
    w.close()
    run = _provenance_run(tmp_path)
    assert run["rows_written"] == 3 and run["errors"] == 1 and run["finished"]


def test_rows_waiting_longer_than_flush_s_reach_the_table(tmp_path, setup):
    config, infos, columns = setup
    config = config.model_copy(update={"flush_rows": 1000, "flush_s": 30.0})
    w = ResultsWriter(tmp_path, config, infos, columns)
    w.write(_rows(columns, 1))
    w.write([])  # a run waiting for work: not yet due
    assert _provenance_run(tmp_path)["rows_written"] == 0
    w.schedule.last -= 31.0  # as if 31 s had passed since the last flush
    w.write([])
    assert _provenance_run(tmp_path)["rows_written"] == 1 and len(read_results(tmp_path / "results.h5")) == 1
    w.close()


def test_reading_results_names_what_is_missing(tmp_path):
    from xrais.errors import DatasetError

    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"empty: no results.csv/results.h5 in this folder"):
        read_results(tmp_path / "empty")
    with pytest.raises(DatasetError, match="nowhere: no such file or folder"):
        read_results(tmp_path / "nowhere")
