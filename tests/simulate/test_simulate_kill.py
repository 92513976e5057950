"""A killed ``xrais simulate`` keeps its finished images, resumes to the uninterrupted set, owns its folder.

The real command runs in a child process on a small set (PILATUS 2M, small cells: a fraction of
a second per image once compiled); SIGKILL or SIGTERM arrives at a seeded random moment after
some images are on disk; the run is then completed and every image and label compared with a
run that was never interrupted.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from xrais.cli import main
from xrais.io import read_shard
from xrais.runs import LOCK_NAME
from xrais.simulate.config import SimulationConfig
from xrais.simulate.dataset import done_indices, simulate_dataset

SMALL = dict(detector_choices=("pilatus2m",), distance_mm_range=(180.0, 220.0), cell_volume_A3_range=(6e4, 1.5e5),
             mosaic_domains=2, shard_size=4, space_group_choices=("P 21 21 21", "P 43 21 2", "C 1 2 1"))
N_IMAGES = 12
SEED = 21


def _rows(folder: Path) -> dict[int, tuple[np.ndarray, dict[str, object]]]:
    """Every row of a set by image index: (conditioned image, {column: value})."""
    rows: dict[int, tuple[np.ndarray, dict[str, object]]] = {}
    for shard in sorted(folder.glob("sim_r*_*.h5")):
        images, cols, _ = read_shard(shard)
        for r, index in enumerate(cols["source/index"]):
            assert int(index) not in rows, f"image {index} written twice"
            rows[int(index)] = (images[r], {k: v[r] for k, v in cols.items()})
    return rows


def _assert_same_set(got: Path, want: Path) -> None:
    a, b = _rows(got), _rows(want)
    assert sorted(a) == sorted(b) == list(range(N_IMAGES))
    for i in b:
        np.testing.assert_array_equal(a[i][0], b[i][0], err_msg=f"image {i}")
        assert a[i][1].keys() == b[i][1].keys()
        for name, value in b[i][1].items():
            assert a[i][1][name] == value or (value != value and a[i][1][name] != a[i][1][name]), (i, name)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "small.toml"
    path.write_text(SimulationConfig(**SMALL).to_toml())
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The set made without interruption (in this process)."""
    out = tmp_path_factory.mktemp("reference")
    report = simulate_dataset(SimulationConfig(**SMALL), N_IMAGES, out, seed=SEED, backend="numba")
    assert sorted(report.made) == list(range(N_IMAGES)) and not report.failed
    return out


def _command(config_file: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "xrais.cli", "simulate", "--config", str(config_file), "--n-images", str(N_IMAGES),
            "--out", str(out), "--seed", str(SEED), "--backend", "numba", *extra]


def _start(command: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    with log.open("w") as fh:
        return subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, env=env)


def _wait_for_images(proc: subprocess.Popen, out: Path, log: Path) -> set[int]:
    """Poll until some images are on disk (the child still running); the images first seen."""
    deadline = time.monotonic() + 300
    while not (out.is_dir() and done_indices(out)):
        assert proc.poll() is None, f"the run ended before writing an image: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, "no image reached disk"
        time.sleep(0.05)
    return done_indices(out)


def test_sigkill_loses_at_most_the_unflushed_images_and_resumes_bit_identical(reference, config_file, tmp_path):
    out, log = tmp_path / "killed", tmp_path / "run.log"
    proc = _start(_command(config_file, out, "--flush-every-images", "1"), log)
    first = _wait_for_images(proc, out, log)
    assert len(first) < SMALL["shard_size"]  # images reach disk before their shard is full
    time.sleep(random.Random(1).uniform(0.0, 0.6))
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    done = done_indices(out)
    assert done and len(done) < N_IMAGES, done  # cut in the middle, with images on disk
    assert done == set(range(len(done)))  # images are made (and written) in order
    assert not (out / "manifest.json").exists()
    report = simulate_dataset(SimulationConfig(**SMALL), N_IMAGES, out, seed=SEED, backend="numba")
    assert report.skipped_done == len(done) and sorted(report.made) == sorted(set(range(N_IMAGES)) - done)
    _assert_same_set(out, reference)
    assert json.loads((out / "manifest.json").read_text())["rows"] == N_IMAGES
    assert not list(out.glob(".*.tmp")) and not (out / LOCK_NAME).exists()


def test_sigterm_finishes_the_image_writes_and_exits_143_a_second_run_is_refused(reference, config_file, tmp_path):
    out, log = tmp_path / "stopped", tmp_path / "run.log"
    # flushes every 3 images: what SIGTERM leaves pending must reach disk too
    proc = _start(_command(config_file, out, "--flush-every-images", "3"), log)
    _wait_for_images(proc, out, log)
    proc.send_signal(signal.SIGSTOP)  # held still (and alive) while a second run tries the folder
    try:
        second = subprocess.run(_command(config_file, out), capture_output=True, text=True, timeout=300)
    finally:
        proc.send_signal(signal.SIGCONT)
    assert second.returncode == 2, second.stderr
    errors = [line for line in second.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"in use by xrais simulate (pid {proc.pid} " in errors[0], second.stderr
    assert "Traceback" not in second.stderr
    time.sleep(random.Random(2).uniform(0.0, 0.6))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM, log.read_text()[-2000:]
    text = log.read_text()
    assert "stopped by SIGTERM; finished work is saved" in text
    made = int(text.split("rank 0: ")[1].split(" image(s) made")[0])
    done = done_indices(out)
    assert done == set(range(made)) and 0 < made < N_IMAGES  # every finished image is on disk
    assert not (out / LOCK_NAME).exists()
    again = subprocess.run(_command(config_file, out), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert f"{N_IMAGES - made} image(s) made, {made} already done, 0 failed" in " ".join(again.stdout.split())
    _assert_same_set(out, reference)


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    out = tmp_path / "set"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"host": os.uname().nodename, "pid": gone.pid, "command": "xrais simulate",
                                             "started": "2026-01-01T00:00:00+0000"}))
    with caplog.at_level(logging.WARNING, logger="xrais.runs"):
        report = simulate_dataset(SimulationConfig(**SMALL), 1, out, seed=SEED, backend="numba")
    assert report.made == [0]
    assert any("taking over the lock" in r.getMessage() and str(gone.pid) in r.getMessage() for r in caplog.records)
    assert not (out / LOCK_NAME).exists()


def test_an_unusable_out_is_one_line_exit_2(tmp_path, capsys, config_file):
    blocker = tmp_path / "file"
    blocker.write_text("")
    for out, what in ((blocker, "is an existing file"), (blocker / "sub", "which is a file")):
        with pytest.raises(SystemExit) as exit_info:
            main(["simulate", "--config", str(config_file), "-n", "1", "--out", str(out), "--backend", "numba"])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and what in err and "Traceback" not in err, err


def test_cuda_without_a_gpu_stops_before_any_image(tmp_path, capsys, config_file):
    from xrais.simulate.kernel_cuda import cuda_available

    if cuda_available():
        pytest.skip("a CUDA device (or the simulator) is present")
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", "--config", str(config_file), "-n", "3", "--out", str(tmp_path / "set"), "--backend", "cuda"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "backend 'cuda'" in err, err
    assert not list(tmp_path.rglob("*.h5")) and not list(tmp_path.rglob("failures_*.tsv"))


def test_failed_images_make_exit_1(tmp_path, capsys):
    structures = tmp_path / "structures"
    structures.mkdir()
    (structures / "broken.pdb").write_text("CRYST1 garbage\nATOM nonsense\n")
    config = tmp_path / "broken.toml"
    config.write_text(SimulationConfig(**SMALL, structures_dir=str(structures)).to_toml())
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", "--config", str(config), "-n", "2", "--out", str(tmp_path / "set"), "--backend", "numba"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "2 image(s) failed" in " ".join(err.split()), err
    assert len((tmp_path / "set" / "failures_r0000.tsv").read_text().splitlines()) == 2
