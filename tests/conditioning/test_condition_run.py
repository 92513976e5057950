"""``xrais condition`` as a long run: flushing, stopping on signals, killing and resuming, one run per folder."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from image_corpus import make_frames, write_nxmx
from xrais.conditioning.run import condition_files
from xrais.errors import ConfigError
from xrais.io import list_shards, read_shard
from xrais.runs import LOCK_NAME, RunLock

from long_runs import signal_when

N_FRAMES = 60


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", PYTHONUNBUFFERED="1", COLUMNS="200")


def _on_disk(out: Path) -> dict[tuple[str, int, int], np.ndarray]:
    """Every stored quadrant by (file name, frame, quadrant); a frame stored twice fails the test."""
    rows: dict[tuple[str, int, int], np.ndarray] = {}
    for shard in list_shards(out, "conditioned"):
        images, cols, _ = read_shard(shard)
        for img, path, frame, quadrant in zip(images, cols["source/path"], cols["source/frame"],
                                              cols["source/quadrant"]):
            key = (Path(path).name, int(frame), int(quadrant))
            assert key not in rows, f"{key} stored twice"
            rows[key] = img
    return rows


def _frames_on_disk(out: Path) -> int:
    try:
        return len(_on_disk(out)) // 4
    except Exception:  # a shard replaced while it was read: ask again
        return 0


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> Path:
    return write_nxmx(tmp_path_factory.mktemp("series") / "series.h5", make_frames(N_FRAMES, seed=3))


@pytest.fixture(scope="module")
def reference(series, tmp_path_factory) -> dict[tuple[str, int, int], np.ndarray]:
    """The quadrants of an uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    report = condition_files([series], out)
    assert not report.failed and not report.stopped
    rows = _on_disk(out)
    assert len(rows) == 4 * N_FRAMES
    return rows


def test_flushes_every_few_frames(series, tmp_path):
    """With --flush-every 3, at most 3 finished frames are ever waiting in memory."""
    out = tmp_path / "out"
    seen = []

    def on_result(r) -> None:
        seen.append(r.frame)
        if len(seen) % 5 == 0:  # looking costs a shard read: look now and then
            assert len(seen) - _frames_on_disk(out) < 3, (len(seen), _frames_on_disk(out))

    paths = [series]
    report = condition_files(paths, out, flush_every_frames=3, shard_size=16, on_result=on_result)
    assert len(report.results) == N_FRAMES and not report.failed
    assert [len(read_shard(s, images=False)[1]["source/frame"]) for s in list_shards(out, "conditioned")] == [
        64, 64, 64, 48]  # shards of 16 frames × 4 quadrants, filled across flushes


def test_stop_request_finishes_the_frame_in_hand(series, reference, tmp_path):
    out = tmp_path / "out"
    stop = threading.Event()

    def on_result(r) -> None:
        if r.frame == 6:
            stop.set()

    report = condition_files([series], out, flush_every_frames=100, on_result=on_result, stop=stop)
    assert report.stopped and [r.frame for r in report.results] == list(range(7))
    rows = _on_disk(out)
    assert sorted({k[1] for k in rows}) == list(range(7))  # every finished frame written at the stop
    for key, img in rows.items():
        np.testing.assert_array_equal(img, reference[key])
    again = condition_files([series], out)
    assert sum(r.skipped for r in again.results) == 7 and not again.stopped
    assert _on_disk(out).keys() == reference.keys()


def test_bad_flush_interval_and_out_are_config_errors(series, tmp_path):
    with pytest.raises(ConfigError, match="flush interval"):
        condition_files([series], tmp_path / "o", flush_every_frames=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="must be a folder"):
        condition_files([series], tmp_path / "file" / "o")


@pytest.mark.parametrize("signum, seed", [(signal.SIGKILL, 11), (signal.SIGTERM, 12)])
def test_killed_run_resumes_to_the_same_quadrants(series, reference, tmp_path, signum, seed):
    """Kill at a random moment after some frames are on disk; the rerun ends with what one run makes."""
    rng = random.Random(seed)
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "xrais.cli", "condition", str(series), "--out", str(out), "--flush-every", "2"]
    target = rng.randint(2, 12)  # frames on disk before the signal
    on_disk_before = []
    code, _, err = signal_when(argv, lambda: _frames_on_disk(out) >= target, signum, delay_s=rng.uniform(0.0, 0.1),
                               env=_env(), while_running=lambda _: on_disk_before.append(_frames_on_disk(out)),
                               ready_timeout_s=120, end_timeout_s=120)
    before = on_disk_before[0]
    if signum == signal.SIGKILL:
        assert code == -signal.SIGKILL
        assert (out / LOCK_NAME).exists()  # left behind by the killed run: the rerun takes it over
    else:
        assert code == 128 + signal.SIGTERM, err
        assert "stopped by SIGTERM" in err and "Traceback" not in err
        assert not (out / LOCK_NAME).exists()
    partial = _on_disk(out)
    assert before <= len(partial) // 4 < N_FRAMES
    for key, img in partial.items():
        np.testing.assert_array_equal(img, reference[key])

    rerun = subprocess.run(argv, capture_output=True, text=True, env=_env(), timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(partial) // 4} already done, 0 failed" in rerun.stdout
    if signum == signal.SIGKILL:
        assert "taking over the lock of a run that is gone" in rerun.stderr
    final = _on_disk(out)
    assert final.keys() == reference.keys()
    for key, img in final.items():
        np.testing.assert_array_equal(img, reference[key])


def test_second_run_into_a_busy_folder_is_refused(series, tmp_path):
    out = tmp_path / "out"
    with RunLock(out, "xrais condition (first)"):
        proc = subprocess.run([sys.executable, "-m", "xrais.cli", "condition", str(series), "--out", str(out)],
                              capture_output=True, text=True, env=_env(), timeout=300)
        owner = json.loads((out / LOCK_NAME).read_text())
    assert proc.returncode == 2
    assert f"in use by xrais condition (first) (pid {owner['pid']}" in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.startswith("error:")]) == 1
    assert "Traceback" not in proc.stderr and not list_shards(out, "conditioned")
