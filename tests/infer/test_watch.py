"""Following a running experiment: files copied in while the run goes, growing HDF5 files, stdin."""

from __future__ import annotations

import os
import shutil
import threading
import time

from xrais.infer import InferConfig, RunStats, WatchConfig, read_results, run_inference
from xrais.infer.watch import FolderWatcher


def _slow_copy(src, dst, pause_s: float) -> None:
    """Copy in two halves with a pause, as a detector writer or a network copy would."""
    data = src.read_bytes()
    with open(dst, "wb") as fh:
        fh.write(data[: len(data) // 2])
        fh.flush()
        time.sleep(pause_s)
        fh.write(data[len(data) // 2 :])


def test_files_and_frames_arriving_while_the_run_goes_are_scored_once(tmp_path, checkpoints, real_images, helpers):
    run = tmp_path / "run"
    run.mkdir()
    first, second, third = real_images(["p6m_0001", "p6m_0015", "stream"])
    shutil.copy(first, run / first.name)
    old = time.time() - 60
    os.utime(run / first.name, (old, old))  # already there, long settled, when the run starts
    config = InferConfig(models=(str(checkpoints["multilattice"]),), quadrants=1, device="cpu")
    watch = WatchConfig(folder=str(run), settle_s=0.6, poll_s=0.1, idle_timeout_s=3.0)
    stats, reports = RunStats(), []
    thread = threading.Thread(target=lambda: reports.append(
        run_inference(config, [], tmp_path / "out", watch=watch, on_rows=stats.update)))
    thread.start()
    try:
        time.sleep(0.5)
        _slow_copy(second, run / second.name, pause_s=0.3)  # must not be read half-way
        (run / "notes.txt").write_text("not an image")
        helpers.write_nxmx(run / "series.h5", helpers.make_frames(2, seed=1))
        time.sleep(1.2)
        helpers.write_nxmx(run / "series.h5", helpers.make_frames(4, seed=1))  # the file grows by 2 frames
        time.sleep(0.3)
        shutil.copy(third.parent / "header", run / "header")  # the stream's series header: not an image
        shutil.copy(third, run / "image000044")
    finally:
        thread.join(timeout=120)
    assert not thread.is_alive() and reports and not reports[0].interrupted
    rows = read_results(tmp_path / "out")
    assert rows["error"].eq("").all(), rows["error"].tolist()
    got = sorted((os.path.basename(f), int(i)) for f, i in zip(rows["file"], rows["frame"]))
    assert got == sorted([(first.name, 0), (second.name, 0), ("image000044", 0)] + [("series.h5", i) for i in range(4)])
    assert stats.scored == 7 and stats.errors == 0 and stats.last


def test_a_growing_hdf5_file_holds_back_its_newest_frame_until_it_settles(tmp_path, helpers):
    clock = [100.0]
    watcher = FolderWatcher(tmp_path, settle_s=1.0, clock=lambda: clock[0], wall_clock=time.time)
    helpers.write_nxmx(tmp_path / "grow.h5", helpers.make_frames(3, shape=(64, 64)))
    assert [r.frame for r in watcher.poll()] == [0, 1]  # frame 2 may still be being written
    clock[0] += 0.5
    assert watcher.poll() == []
    clock[0] += 0.6  # unchanged for 1.1 s: settled
    assert [r.frame for r in watcher.poll()] == [2]
    helpers.write_nxmx(tmp_path / "grow.h5", helpers.make_frames(5, shape=(64, 64)))
    assert [r.frame for r in watcher.poll()] == [3]
    clock[0] += 1.5
    assert [r.frame for r in watcher.poll()] == [4] and watcher.poll() == []
    # a file that stays unreadable is handed on once settled, so that its error is a row
    (tmp_path / "broken.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    assert watcher.poll() == []
    clock[0] += 2.0
    assert [(r.path.endswith("broken.h5"), r.frame) for r in watcher.poll()] == [(True, None)]


def test_watch_stdin_from_the_command_line(tmp_path, checkpoints, real_images, helpers):
    paths = real_images(["p6m_0015", "p2m"])
    listing = "".join(f"{p}\n" for p in paths) + "# a comment\n\n"
    result = helpers.cli("infer", "--watch", "-", "--model", str(checkpoints["multilattice"]), "--out",
                         str(tmp_path / "out"), "--quadrants", "1", "--device", "cpu", input=listing)
    assert result.exit_code == 0, result.output
    assert "2 (2 scored, 0 errors)" in result.output
    assert sorted(read_results(tmp_path / "out")["file"]) == sorted(map(str, paths))
