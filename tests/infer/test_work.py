"""Finding the work: inputs, folders and globs, frames of HDF5 files, what is done, chunks, the work journal."""

from __future__ import annotations

import pytest

from xrais.errors import ConfigError
from xrais.infer.work import (WORK_JOURNAL_NAME, DoneIndex, FrameRef, WorkItem, WorkJournal, describe_unfinished,
                              expand_inputs, make_items, natural_key, plan_refs)


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


def test_folders_matched_by_a_glob_are_named_or_expanded(tmp_path, caplog):
    for sub in ("run1", "run2/deeper"):
        (tmp_path / sub).mkdir(parents=True)
    for name in ("run1/a_1.cbf", "run2/b_1.cbf", "run2/deeper/c_1.cbf", "top_1.cbf"):
        (tmp_path / name).write_bytes(b"x")
    with caplog.at_level("WARNING", logger="xrais.infer.work"):
        got = expand_inputs([str(tmp_path / "*")])
    assert [p.name for p in got] == ["top_1.cbf"]
    assert "matches 2 folder(s), left out (give --recursive" in caplog.text
    assert str(tmp_path / "run1") in caplog.text and str(tmp_path / "run2") in caplog.text
    got = expand_inputs([str(tmp_path / "*")], recursive=True)
    assert sorted(p.name for p in got) == ["a_1.cbf", "b_1.cbf", "c_1.cbf", "top_1.cbf"]
    # a named folder: its own files, sub-folders' only with recursive
    assert [p.name for p in expand_inputs([tmp_path / "run2"])] == ["b_1.cbf"]
    assert [p.name for p in expand_inputs([tmp_path / "run2"], recursive=True)] == ["b_1.cbf", "c_1.cbf"]


def test_the_work_journal_names_what_a_dead_rank_held(tmp_path):
    journal = WorkJournal(tmp_path, ranks=3)
    journal.handed(1, WorkItem((FrameRef("/d/s_master.h5", 0), FrameRef("/d/s_master.h5", 1))))
    journal.handed(2, WorkItem((FrameRef("/d/s_master.h5", 2), FrameRef("/d/s_master.h5", 3))))
    journal.returned(1)
    journal.handed(1, WorkItem((FrameRef("/d/img_0007.cbf"),)))
    journal.close(clean=False)  # the job was aborted
    with open(tmp_path / WORK_JOURNAL_NAME, "a") as fh:
        fh.write('{"rank":1,"ba')  # a line cut by the kill
    held = WorkJournal.read_unfinished(tmp_path)
    assert held == {1: [FrameRef("/d/img_0007.cbf")], 2: [FrameRef("/d/s_master.h5", 2), FrameRef("/d/s_master.h5", 3)]}
    # frame 2 reached the results before the job died: only frame 3 is named
    done = DoneIndex.from_rows([{"file": "/d/s_master.h5", "frame": 2, "n_frames": 4, "error": ""}])
    assert describe_unfinished(held, done) == "rank 1 held img_0007.cbf; rank 2 held s_master.h5 frame 3"
    done.add("/d/s_master.h5", 3, 4)
    done.add("/d/img_0007.cbf", 0, 1)
    assert describe_unfinished(held, done) == ""
    # a clean end leaves no journal
    WorkJournal(tmp_path).close()
    assert WorkJournal.read_unfinished(tmp_path) is None and not (tmp_path / WORK_JOURNAL_NAME).exists()


def test_the_work_journal_stays_small_on_a_long_run(tmp_path):
    journal = WorkJournal(tmp_path, ranks=3, compact_lines=50)
    for i in range(400):
        journal.handed(1, WorkItem((FrameRef("/d/grow.h5", i),)))
        if i == 123:
            journal.handed(2, WorkItem((FrameRef("/d/other.cbf"),)))  # never returned
        journal.returned(1)
    journal.handed(1, WorkItem((FrameRef("/d/grow.h5", 400),)))
    lines = (tmp_path / WORK_JOURNAL_NAME).read_text().splitlines()
    assert len(lines) <= 50
    assert WorkJournal.read_unfinished(tmp_path) == {1: [FrameRef("/d/grow.h5", 400)], 2: [FrameRef("/d/other.cbf")]}
    journal.close(clean=False)
