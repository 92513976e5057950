"""``mpiexec -n 3 xrais infer`` (a manager and two workers) gives the rows one process gives."""

from __future__ import annotations

import subprocess
import sys

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
    assert one.exit_code == 0, one.output
    cmd = [mpiexec, "-n", "3", sys.executable, "-m", "xrais.cli", "infer", *inputs, *common,
           "--out", str(tmp_path / "mpi")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=helpers.env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ranks" in proc.stdout and "9 (8 scored, 1 errors)" in proc.stdout

    a = read_results(tmp_path / "one").set_index(["file", "frame"]).sort_index()
    b = read_results(tmp_path / "mpi").set_index(["file", "frame"]).sort_index()
    assert list(a.index) == list(b.index) and len(a) == 9  # 3 real frames, 5 series frames, 1 cut file
    assert set(b["rank"]) <= {1, 2} and set(a["rank"]) == {0}
    for col in a.columns:
        if col in ("read_s", "condition_s", "score_s", "rank", "finished_at"):
            continue
        if column_kind(col) == "float":
            np.testing.assert_allclose(b[col].to_numpy(), a[col].to_numpy(), rtol=1e-5, err_msg=col)
        else:
            assert list(b[col]) == list(a[col]), col
    assert "cut_0001.cbf" in a.loc[(str(cut), 0), "error"]
    assert read_provenance(tmp_path / "mpi")["runs"][0]["ranks"] == 3
