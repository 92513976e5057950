"""``mpiexec -n 3 xrais infer`` (a manager and two workers): the rows one process gives, one run
per folder, and a rank that dies: the next run names its unfinished frames and scores them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from xrais.infer import read_provenance, read_results
from xrais.infer.scoring import column_kind


def test_three_ranks_give_the_same_rows_as_one_process(tmp_path, checkpoints, real_images, helpers):
    mpiexec = helpers.mpiexec()
    if mpiexec is None:
        pytest.skip("mpiexec not found (install the mpich wheel)")
    series = helpers.write_nxmx(tmp_path / "series_master.h5", helpers.make_frames(5, seed=3))
    cut = tmp_path / "cut_0001.cbf"
    cut.write_bytes(real_images(["p6m_0001"])[0].read_bytes()[:1_500_000])
    inputs = [*map(str, real_images(["p6m_0001", "p6m_i03", "stream"])), str(series), str(cut)]
    common = ["--model", str(checkpoints["resolution"]), "--model", str(checkpoints["multilattice"]),
              "--quadrants", "1", "--chunk-frames", "2", "--device", "cpu"]
    one = helpers.cli("infer", *inputs, *common, "--out", str(tmp_path / "one"))
    assert one.exit_code == 1, one.output
    cmd = [mpiexec, "-n", "3", sys.executable, "-m", "xrais.cli", "infer", *inputs, *common,
           "--out", str(tmp_path / "mpi")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=helpers.env())
    # one row holds an error (the cut file): exit 1, the rest scored
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ranks" in proc.stdout and "9 (8 scored, 1 errors)" in proc.stdout and "Traceback" not in proc.stderr

    a = read_results(tmp_path / "one").set_index(["file", "frame"]).sort_index()
    b = read_results(tmp_path / "mpi").set_index(["file", "frame"]).sort_index()
    assert list(a.index) == list(b.index) and len(a) == 9  # 3 real frames, 5 series frames, 1 cut file
    assert set(b["rank"]) <= {1, 2} and set(a["rank"]) == {0}
    for col in a.columns:
        if col in ("read_s", "spots_s", "condition_s", "score_s", "rank", "finished_at"):
            continue
        if column_kind(col) == "float":
            np.testing.assert_allclose(b[col].to_numpy(), a[col].to_numpy(), rtol=1e-5, err_msg=col)
        else:
            assert list(b[col]) == list(a[col]), col
    assert "cut_0001.cbf" in a.loc[(str(cut), 0), "error"]
    assert read_provenance(tmp_path / "mpi")["runs"][0]["ranks"] == 3


def _mpiexec_or_skip(helpers) -> str:
    mpiexec = helpers.mpiexec()
    if mpiexec is None:
        pytest.skip("mpiexec not found (install the mpich wheel)")
    return mpiexec


def _assert_same_rows(got, want) -> None:
    a = got.set_index(["file", "frame"]).sort_index()
    b = want.set_index(["file", "frame"]).sort_index()
    assert list(a.index) == list(b.index), "frames missing or repeated"
    for col in b.columns:
        if col in ("read_s", "spots_s", "condition_s", "score_s", "rank", "finished_at"):
            continue
        if column_kind(col) == "float":
            np.testing.assert_allclose(a[col].to_numpy(), b[col].to_numpy(), rtol=1e-5, err_msg=col)
        else:
            assert list(a[col]) == list(b[col]), col


# Run as ``mpiexec -n 3 python dies.py infer …``: rank 2 dies (as a crashed node would) when it
# is handed its second work item, before it returns any row of it.
_DYING_RANK = textwrap.dedent("""
    import os
    import sys

    from xrais.infer import scoring

    _score_item = scoring.Scorer.score_item
    _calls = [0]

    def score_item(self, item):
        _calls[0] += 1
        if self.rank == 2 and _calls[0] == 2:
            os._exit(9)
        return _score_item(self, item)

    scoring.Scorer.score_item = score_item
    from xrais.cli import main

    main(sys.argv[1:])
""")


def test_a_dead_rank_is_named_on_restart_and_its_frames_scored(tmp_path, checkpoints, real_images, helpers):
    mpiexec = _mpiexec_or_skip(helpers)
    series = helpers.write_nxmx(tmp_path / "series_master.h5", helpers.make_frames(6, seed=8))
    inputs = [*map(str, real_images(["p2m"])), str(series)]
    common = ["infer", *inputs, "--model", str(checkpoints["resolution"]), "--quadrants", "1",
              "--chunk-frames", "1", "--device", "cpu"]
    out = tmp_path / "mpi"
    dies = tmp_path / "dies.py"
    dies.write_text(_DYING_RANK)
    first = subprocess.run([mpiexec, "-n", "3", sys.executable, str(dies), *common, "--out", str(out)],
                           capture_output=True, text=True, timeout=300, env=helpers.env())
    assert first.returncode != 0, first.stdout[-2000:] + first.stderr[-2000:]
    journal = [json.loads(line) for line in (out / "work.jsonl").read_text().splitlines()]
    rank2 = [r["out"] for r in journal if r.get("rank") == 2 and "out" in r]
    assert len(rank2) == 2  # its second item went out and never came back
    (path, frame), = rank2[-1]
    held = f"rank 2 held {os.path.basename(path)}" + ("" if frame is None else f" frame {frame}")
    before = read_results(out)
    assert (path, 0 if frame is None else frame) not in set(zip(before["file"], before["frame"]))

    second = subprocess.run([mpiexec, "-n", "3", sys.executable, "-m", "xrais.cli", *common, "--out", str(out)],
                            capture_output=True, text=True, timeout=300, env=helpers.env())
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "the last run did not end cleanly (a rank died or the job was killed)" in second.stderr
    assert held in second.stderr and "those frames are scored again" in second.stderr
    assert "taking over the lock" in second.stderr
    clean = helpers.cli(*common, "--out", str(tmp_path / "one"))
    assert clean.exit_code == 0, clean.output
    after = read_results(out)
    _assert_same_rows(after, read_results(tmp_path / "one"))
    assert after.iloc[: len(before)].equals(before)
    assert not (out / "work.jsonl").exists() and not (out / ".xrais.lock").exists()
    runs = read_provenance(out)["runs"]
    assert runs[0]["finished"] is None and runs[1]["finished"] and runs[1]["rows_written"] == 7 - len(before)


def test_every_rank_refuses_a_folder_in_use(tmp_path, checkpoints, helpers):
    from xrais.runs import RunLock

    mpiexec = _mpiexec_or_skip(helpers)
    out = tmp_path / "busy"
    cmd = [mpiexec, "-n", "3", sys.executable, "-m", "xrais.cli", "infer", str(tmp_path / "x.cbf"),
           "--model", str(checkpoints["resolution"]), "--device", "cpu", "--out", str(out)]
    with RunLock(out, "xrais infer"):  # a live run (this process) holds the folder
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=helpers.env())
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 3 and all(f"in use by xrais infer (pid {os.getpid()}" in line for line in lines)
    assert "Traceback" not in proc.stderr and not (out / "results.csv").exists()


def test_sigterm_to_mpiexec_finishes_the_items_out_and_exits_143(tmp_path, checkpoints, helpers):
    import random
    import signal
    import time

    mpiexec = _mpiexec_or_skip(helpers)
    series = helpers.write_nxmx(tmp_path / "series_master.h5", helpers.make_frames(10, seed=4))
    out = tmp_path / "mpi"
    common = ["infer", str(series), "--model", str(checkpoints["resolution"]), "--quadrants", "1",
              "--chunk-frames", "1", "--device", "cpu", "--out", str(out)]
    proc = subprocess.Popen([mpiexec, "-n", "3", sys.executable, "-m", "xrais.cli", *common],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=helpers.env())
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if len((out / "results.csv").read_text().splitlines()) >= 2:
                    break
            except FileNotFoundError:
                pass
            time.sleep(0.02)
        time.sleep(random.Random(1503).uniform(0.0, 0.3))
        assert proc.poll() is None, "the run ended before it could be signalled"
        proc.send_signal(signal.SIGTERM)  # mpiexec passes it to every rank, as a batch scheduler's would be
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, stdout[-2000:] + stderr[-2000:]
    assert "stopped by SIGTERM; finished work is saved" in stderr and "BAD TERMINATION" not in stdout + stderr
    before = read_results(out)
    assert 1 <= len(before) < 10 and before["error"].eq("").all()
    run = read_provenance(out)["runs"][0]
    assert run["finished"] and run["rows_written"] == len(before)
    assert not (out / "work.jsonl").exists() and not (out / ".xrais.lock").exists()
    result = helpers.cli(*common)  # the rest, in one process
    assert result.exit_code == 0, result.output
    assert sorted(read_results(out)["frame"]) == list(range(10))
