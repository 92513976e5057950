"""A real SIGKILL in the middle of ``xrais infer``: the same command then does only the rest."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest

from xrais.errors import ConfigError
from xrais.infer import read_provenance, read_results


def _data_rows(csv_path) -> int:
    try:
        return max(0, len(csv_path.read_text().splitlines()) - 1)
    except FileNotFoundError:
        return 0


def test_a_killed_run_resumes_without_redoing_rows(tmp_path, checkpoints, helpers):
    n = 10
    series = helpers.write_nxmx(tmp_path / "series.h5", helpers.make_frames(n, seed=5))
    out = tmp_path / "results"
    args = ["infer", str(series), "--model", str(checkpoints["resolution"]), "--out", str(out),
            "--quadrants", "1", "--chunk-frames", "1", "--batch-size", "4", "--device", "cpu"]
    proc = subprocess.Popen([sys.executable, "-m", "xrais.cli", *args, "--threads", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=helpers.env())
    try:
        deadline = time.monotonic() + 120
        while _data_rows(out / "results.csv") < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed: " + proc.stdout.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = read_results(out)
    killed_at = len(before)
    assert 2 <= killed_at < n and proc.returncode == -signal.SIGKILL

    result = helpers.cli(*args)  # the same command (the thread count only changes the speed)
    assert result.exit_code == 0, result.output
    after = read_results(out)
    assert sorted(after["frame"]) == list(range(n)) and after["error"].eq("").all()
    # the rows written before the kill are kept as they were, and not scored again
    assert after.iloc[:killed_at].equals(before)
    assert f"{n - killed_at} ({n - killed_at} scored" in result.output
    assert len(read_results(out / "results.h5")) == n
    runs = read_provenance(out)["runs"]
    assert len(runs) == 2 and runs[0]["finished"] is None and runs[1]["rows_written"] == n - killed_at

    # the third time there is nothing left; another setting is refused with a clear message
    again = helpers.cli(*args)
    assert "0 (0 scored, 0 errors)" in again.output and re.search(rf"already done\W+{n}\b", again.output)
    with pytest.raises(ConfigError, match=r"other models or settings \(quadrants: 1 there, 4 now\)"):
        helpers.cli(*args, "--quadrants", "4")
