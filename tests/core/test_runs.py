"""Run control shared by every long run: output folders, the run lock, signals, flushing, exit status."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from xrais.errors import ConfigError, RunInterrupted, RunLockedError
from xrais.runs import (
    EXIT_FAILED,
    EXIT_OK,
    LOCK_NAME,
    FlushSchedule,
    RunLock,
    StopRequest,
    check_out_dir,
    check_out_file,
    exit_status,
    stop_on_signals,
)


def test_check_out_dir_creates_and_refuses_files(tmp_path):
    made = check_out_dir(tmp_path / "a" / "b")
    assert made.is_dir() and list(made.iterdir()) == []  # the write probe is gone
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match=r"file\.txt: --out must be a folder, but it is an existing file"):
        check_out_dir(blocker)
    with pytest.raises(ConfigError, match=r"lies under .*file\.txt, which is a file"):
        check_out_dir(blocker / "sub" / "dir")
    with pytest.raises(ConfigError, match="cannot be created or written"):
        check_out_dir("/proc/xrais-cannot-be-here")
    with pytest.raises(ConfigError, match="must be a file name, but it is a folder"):
        check_out_file(tmp_path)
    with pytest.raises(ConfigError, match=r"merged\.mtz: --out cannot be written: it lies under .*file\.txt"):
        check_out_file(blocker / "merged.mtz")
    assert check_out_file(tmp_path / "new" / "merged.mtz").parent.is_dir()


def _holder(folder) -> subprocess.Popen:
    """Another live process holding the lock of ``folder``."""
    code = ("import sys, time; from xrais.runs import RunLock\n"
            "with RunLock(sys.argv[1], 'xrais simulate'):\n"
            "    print('held', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_run_is_refused_naming_the_first(tmp_path):
    holder = _holder(tmp_path)
    try:
        with pytest.raises(RunLockedError) as info:
            RunLock(tmp_path, "xrais infer").acquire()
        message = str(info.value)
        assert f"pid {holder.pid} on {socket.gethostname()}" in message and "xrais simulate" in message
        assert info.value.exit_code == 2
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing (SIGKILL): its lock is stale and taken over with a warning
    assert (tmp_path / LOCK_NAME).exists()
    with RunLock(tmp_path, "xrais infer") as lock:
        owner = json.loads(lock.path.read_text())
        assert owner["pid"] == os.getpid() and owner["command"] == "xrais infer"
    assert not (tmp_path / LOCK_NAME).exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_lock_of_reused_pid_and_cut_lock_are_stale(tmp_path, caplog):
    lock_path = tmp_path / LOCK_NAME
    # our own parent is alive, but its recorded start time is not the one of the process now holding that pid
    lock_path.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid(), "process_start": "1",
                                     "command": "xrais train", "started": "then"}))
    with caplog.at_level("WARNING"), RunLock(tmp_path, "xrais train"):
        pass
    assert "taking over the lock of a run that is gone" in caplog.text
    lock_path.write_text('{"host": "cut')  # a lock cut by a crash while being written
    with RunLock(tmp_path, "xrais train") as lock:
        assert lock.held


def test_lock_on_another_host_is_respected(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": "node-elsewhere", "pid": 1, "command": "xrais infer",
                                                  "started": "2026-01-01T00:00:00"}))
    with pytest.raises(RunLockedError, match="pid 1 on node-elsewhere"):
        RunLock(tmp_path, "xrais infer").acquire()


def test_stop_on_signals_sets_the_request_and_restores_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals() as stop:
        assert not stop.is_set()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert stop.is_set() and stop.signum == signal.SIGINT
        with pytest.raises(RunInterrupted, match="stopped by SIGINT; finished work is saved") as info:
            stop.check("out/")
        assert info.value.exit_code == 130
        with pytest.raises(KeyboardInterrupt):  # the second signal stops at once
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
    assert signal.getsignal(signal.SIGTERM) == before
    assert exit_status(0, stop) == 130


def test_exit_status_and_flush_schedule():
    stop = StopRequest()
    assert (exit_status(0, stop), exit_status(2, stop), exit_status(0)) == (EXIT_OK, EXIT_FAILED, EXIT_OK)
    stop.request(signal.SIGTERM)
    assert exit_status(0, stop) == 143
    by_time = FlushSchedule(every_items=1000, every_s=0.05)
    assert not by_time.add()
    time.sleep(0.06)
    assert by_time.add() and by_time.pending == 0
    with pytest.raises(ConfigError, match="flush interval"):
        FlushSchedule(every_items=0)


def test_cli_exit_statuses(tmp_path):
    """2 for a usage error (bad option value or a file as --out), 1 for a failed input, one line each."""
    env = dict(os.environ, COLUMNS="200")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cases = [
        (["condition", str(tmp_path / "missing.cbf"), "--out", str(blocker)], 2, "must be a folder"),
        (["info", str(tmp_path / "missing.cbf")], 1, "missing.cbf"),
        (["condition", "--quadrants", "3", str(blocker), "--out", str(tmp_path / "o")], 2, ""),
    ]
    for argv, code, text in cases:
        proc = subprocess.run([sys.executable, "-m", "xrais.cli", *argv], capture_output=True, text=True, env=env,
                              timeout=120)
        assert proc.returncode == code, (argv, proc.stderr)
        assert "Traceback" not in proc.stderr and text in proc.stderr
