"""``xrais infer`` killed (SIGKILL) or stopped (SIGTERM) at a random moment, then run again.

The killed run is the real command in a subprocess; it is signalled at a seeded random moment
after its first rows are on disk. The same command then finishes the work, and the rows per
(file, frame) must equal those of an uninterrupted run. While the first run lives, a second
one into the same folder is refused, naming it; after a SIGKILL its lock is taken over.
"""

from __future__ import annotations

import random
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from xrais.cli import main
from xrais.infer import read_provenance, read_results
from xrais.infer.work import WORK_JOURNAL_NAME, WorkJournal
from xrais.infer.scoring import column_kind
from xrais.runs import LOCK_NAME

from long_runs import signal_when

_TIMING = ("read_s", "spots_s", "condition_s", "score_s", "finished_at")


@pytest.fixture(scope="module")
def kill_inputs(tmp_path_factory, real_images, helpers):
    """Real images of five detectors and a small NXmx series: twelve frames, one work item each."""
    folder = tmp_path_factory.mktemp("kill_inputs")
    series = helpers.write_nxmx(folder / "series.h5", helpers.make_frames(6, seed=11))
    return [*map(str, real_images(["p6m_0015", "p6m_i03", "p2m", "adsc", "eiger16m", "stream"])), str(series)]


@pytest.fixture(scope="module")
def common_args(checkpoints):
    return ["--model", str(checkpoints["multilattice"]), "--quadrants", "1", "--chunk-frames", "1",
            "--device", "cpu", "--threads", "1", "--flush-rows", "1"]


def _thread_counts() -> tuple[int, int]:
    import numba
    import torch

    return torch.get_num_threads(), numba.get_num_threads()


def _set_thread_counts(counts: tuple[int, int]) -> None:
    import numba
    import torch

    torch.set_num_threads(counts[0])
    numba.set_num_threads(counts[1])


@pytest.fixture
def one_thread():
    """``--threads 1`` in this process sets torch's and Numba's thread counts; put them back afterwards."""
    before = _thread_counts()
    yield
    _set_thread_counts(before)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, kill_inputs, common_args, helpers):
    before = _thread_counts()
    out = tmp_path_factory.mktemp("clean") / "out"
    try:
        result = helpers.cli("infer", *kill_inputs, *common_args, "--out", str(out))
    finally:
        _set_thread_counts(before)
    assert result.exit_code == 0, result.output
    rows = read_results(out)
    assert len(rows) == 12 and rows["error"].eq("").all()
    return rows


def _data_rows(csv_path: Path) -> int:
    try:
        return max(0, len(csv_path.read_text().splitlines()) - 1)
    except FileNotFoundError:
        return 0


def _main(capsys, *argv: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    return int(exit_info.value.code or 0), capsys.readouterr().err


def _start_and_signal(args, out: Path, helpers, seed: int, signum: int, capsys):
    """Start the real command, refuse a second run while it lives, signal it at a random moment."""
    def second_run_is_refused(proc) -> None:  # one run per folder: refused at once, naming the first
        code, err = _main(capsys, *args)
        assert code == 2 and f"pid {proc.pid}" in err and "in use by xrais infer" in err, err
        assert len(err.strip().splitlines()) == 1

    return signal_when([sys.executable, "-m", "xrais.cli", *args], lambda: _data_rows(out / "results.csv") >= 1,
                       signum, delay_s=random.Random(seed).uniform(0.0, 1.0), env=helpers.env(),
                       while_running=second_run_is_refused, ready_timeout_s=120, end_timeout_s=120)


def _assert_same_rows(got, want) -> None:
    a = got.set_index(["file", "frame"]).sort_index()
    b = want.set_index(["file", "frame"]).sort_index()
    assert list(a.index) == list(b.index), "frames missing or repeated"
    for col in b.columns:
        if col in _TIMING:
            continue
        if column_kind(col) == "float":
            np.testing.assert_array_equal(a[col].to_numpy(), b[col].to_numpy(), err_msg=col)
        else:
            assert list(a[col]) == list(b[col]), col


def test_sigkill_at_a_random_moment_then_the_same_command_finishes(
        tmp_path, kill_inputs, common_args, uninterrupted, helpers, capsys, caplog, one_thread):
    out = tmp_path / "out"
    args = ["infer", *kill_inputs, *common_args, "--out", str(out)]
    code, _, _ = _start_and_signal(args, out, helpers, seed=1501, signum=signal.SIGKILL, capsys=capsys)
    assert code == -signal.SIGKILL
    before = read_results(out)
    killed_at = len(before)
    assert 1 <= killed_at < 12
    # the killed run's entry tells how far it got (the count is written with each flush)
    run = read_provenance(out)["runs"][0]
    assert run["finished"] is None and killed_at - 1 <= run["rows_written"] <= killed_at
    assert (out / LOCK_NAME).exists()
    held = WorkJournal.read_unfinished(out)
    assert held is not None  # the journal of the work in flight survives the kill
    done = {(f, int(i)) for f, i in zip(before["file"], before["frame"])}
    missing = [r for refs in held.values() for r in refs
               if (r.path, r.frame) not in done and not (r.frame is None and (r.path, 0) in done)]

    with caplog.at_level("WARNING"):
        result = helpers.cli(*args)
    assert result.exit_code == 0, result.output
    assert "taking over the lock of a run that is gone" in caplog.text
    for ref in missing:  # the frame the killed run was scoring is named, and scored again
        assert "did not end cleanly" in caplog.text and f"rank 0 held {Path(ref.path).name}" in caplog.text
    after = read_results(out)
    assert after.iloc[:killed_at].equals(before)  # rows on disk are kept as they were
    _assert_same_rows(after, uninterrupted)
    assert len(read_results(out / "results.h5")) == 12
    assert not (out / LOCK_NAME).exists() and not (out / WORK_JOURNAL_NAME).exists()


def test_sigterm_at_a_random_moment_stops_cleanly_and_resumes(
        tmp_path, kill_inputs, common_args, uninterrupted, helpers, capsys, caplog, one_thread):
    out = tmp_path / "out"
    args = ["infer", *kill_inputs, *common_args, "--out", str(out)]
    code, stdout, stderr = _start_and_signal(args, out, helpers, seed=1502, signum=signal.SIGTERM, capsys=capsys)
    assert code == 128 + signal.SIGTERM, stderr[-2000:]
    assert "stopped by SIGTERM; finished work is saved, run the same command again to resume" in stderr
    assert "Traceback" not in stderr and "interrupted" in stdout
    before = read_results(out)
    stopped_at = len(before)
    assert 1 <= stopped_at < 12 and before["error"].eq("").all()
    # a clean stop: the run's entry is closed, the tables hold every row, the folder is free
    run = read_provenance(out)["runs"][0]
    assert run["finished"] and run["rows_written"] == stopped_at
    assert len(read_results(out / "results.h5")) == stopped_at
    assert not (out / LOCK_NAME).exists() and not (out / WORK_JOURNAL_NAME).exists()

    with caplog.at_level("WARNING"):
        result = helpers.cli(*args)
    assert result.exit_code == 0, result.output
    assert "did not end cleanly" not in caplog.text and "taking over" not in caplog.text
    after = read_results(out)
    assert after.iloc[:stopped_at].equals(before)
    _assert_same_rows(after, uninterrupted)
