"""Finding the work: inputs, folders and globs, frames of HDF5 files, what is done, chunks."""

from __future__ import annotations

import pytest

from xrais.errors import ConfigError
from xrais.infer.work import DoneIndex, FrameRef, expand_inputs, make_items, natural_key, plan_refs


def test_folders_globs_and_files_expand_in_natural_order(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("img_10.cbf", "img_2.cbf", "img_1.cbf", "notes.txt", "header", ".hidden.cbf", "x_master.h5",
                 "x_data_000001.h5", "y_data_000001.h5"):
        (run / name).write_bytes(b"x")
    got = [p.name for p in expand_inputs([run])]
    # x_data is reachable through its master; y_data has none, so it stays
    assert got == ["img_1.cbf", "img_2.cbf", "img_10.cbf", "x_master.h5", "y_data_000001.h5"]
    assert [p.name for p in expand_inputs([str(run / "img_*.cbf")])] == ["img_1.cbf", "img_2.cbf", "img_10.cbf"]
    # a named file is kept even if missing (its row will say so); repeats are dropped
    missing = tmp_path / "gone.cbf"
    got = expand_inputs([missing, run / "img_2.cbf", str(run / "img_2.cbf")])
    assert got == [missing.absolute(), (run / "img_2.cbf").absolute()]
    with pytest.raises(ConfigError, match="no image files found"):
        expand_inputs([str(tmp_path / "nothing_*.cbf")])


def test_hdf5_files_give_one_entry_per_frame_and_done_frames_are_left_out(tmp_path, helpers):
    series = helpers.write_nxmx(tmp_path / "series.h5", helpers.make_frames(5))
    cbf = tmp_path / "a_0001.cbf"
    cbf.write_bytes(b"not really")
    done = DoneIndex.from_rows([
        {"file": str(series), "frame": 1, "n_frames": 5, "error": ""},
        {"file": str(series), "frame": 3, "n_frames": 5, "error": "CorruptImageError: boom"},
    ])
    refs = plan_refs([series, cbf], done)
    assert refs == [FrameRef(str(series), 0), FrameRef(str(series), 2), FrameRef(str(series), 4), FrameRef(str(cbf))]
    # with retry_errors the error row is not counted as done
    redo = DoneIndex.from_rows([{"file": str(series), "frame": 3, "n_frames": 5, "error": "boom"}], retry_errors=True)
    assert FrameRef(str(series), 3) in plan_refs([series], redo)
    # a file whose frames are all done, or whose error row covers the whole file, is skipped
    all_done = DoneIndex.from_rows([{"file": str(cbf), "frame": 0, "n_frames": 1, "error": ""},
                                    {"file": "/x/broken.cbf", "frame": -1, "n_frames": -1, "error": "bad"}])
    assert plan_refs([cbf, "/x/broken.cbf"], all_done) == []
    assert all_done.file_done(str(cbf)) and ("/x/broken.cbf", 7) in all_done and len(all_done) == 2


def test_items_are_chunks_in_order():
    refs = [FrameRef("f", i) for i in range(7)]
    items = make_items(refs, 3)
    assert [len(i) for i in items] == [3, 3, 1]
    assert [r for i in items for r in i.refs] == refs
    with pytest.raises(ConfigError):
        make_items(refs, 0)
    assert sorted(["b10", "b9", "a"], key=natural_key) == ["a", "b9", "b10"]
