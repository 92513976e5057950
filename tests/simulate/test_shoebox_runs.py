"""``xrais simulate --shoeboxes``: parts reach disk as they finish; stop, kill and resume; one run per folder."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from xrais.cli import main
from xrais.runs import LOCK_NAME
from xrais.simulate import shoebox_io
from xrais.simulate.shoebox_io import load_experiment, read_shoeboxes, simulate_shoebox_dataset
from xrais.simulate.shoeboxes import SHOEBOX_ARRAYS

N_IMAGES = 6
EXPERIMENT = ('detector = "flat"\nimage_size_px = [192, 192]\ndistance_mm = 80.0\ncell = [40.0, 40.0, 50.0, 90.0, '
              '90.0, 90.0]\nspace_group = "P 1"\nmosaic_domains = 2\n[shoeboxes]\nn_images = 6\nd_min_A = 3.0\n'
              'phi_steps = 2\n')


@pytest.fixture(scope="module")
def experiment_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("experiment") / "exp.toml"
    path.write_text(EXPERIMENT)
    return path


@pytest.fixture(scope="module")
def uncut(tmp_path_factory, experiment_file) -> Path:
    """The rank's file made in one part."""
    out = tmp_path_factory.mktemp("uncut")
    report = simulate_shoebox_dataset(load_experiment(experiment_file), out, seed=7, backend="numba")
    assert report["parts"] == 1 and not report["stopped"]
    return out / "shoeboxes_r0000.h5"


def _assert_same_file(got: Path, want: Path) -> None:
    a, b = read_shoeboxes(got), read_shoeboxes(want)
    assert len(b) > 10
    for name in SHOEBOX_ARRAYS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.reflections.keys() == b.reflections.keys()
    for name, values in b.reflections.items():
        np.testing.assert_array_equal(a.reflections[name], values, err_msg=name)
        assert a.reflections[name].dtype == values.dtype
    drop = {"created"}
    assert {k: v for k, v in a.attrs.items() if k not in drop} == {k: v for k, v in b.attrs.items() if k not in drop}
    with h5py.File(got) as fa, h5py.File(want) as fb:
        assert sorted(fa.attrs) == sorted(fb.attrs)
        assert {k: type(fa.attrs[k]) for k in fa.attrs} == {k: type(fb.attrs[k]) for k in fb.attrs}


def test_a_wedge_made_in_parts_is_the_file_made_whole(uncut, experiment_file, tmp_path):
    out = tmp_path / "parts"
    report = simulate_shoebox_dataset(load_experiment(experiment_file), out, seed=7, backend="numba",
                                      flush_every_images=2)
    assert report["parts"] == 3 and not report["stopped"] and report["reflections"] == len(read_shoeboxes(uncut))
    _assert_same_file(out / "shoeboxes_r0000.h5", uncut)
    assert not (out / "parts_r0000").exists() and not (out / LOCK_NAME).exists()
    assert json.loads((out / "manifest.json").read_text())["rows"] == report["reflections"]


def test_a_stop_keeps_the_finished_parts_and_the_rerun_completes_them(uncut, experiment_file, tmp_path, monkeypatch):
    out = tmp_path / "stopped"
    stop = threading.Event()
    write = shoebox_io.write_shoeboxes

    def write_then_stop(*args, **kwargs):  # a SIGTERM while the first part is made
        stop.set()
        return write(*args, **kwargs)

    monkeypatch.setattr(shoebox_io, "write_shoeboxes", write_then_stop)
    report = simulate_shoebox_dataset(load_experiment(experiment_file), out, seed=7, backend="numba", stop=stop,
                                      flush_every_images=2)
    monkeypatch.setattr(shoebox_io, "write_shoeboxes", write)
    assert report["stopped"] and report["parts"] == 1
    assert [p.name for p in (out / "parts_r0000").iterdir()] == ["images_000000_000002.h5"]
    assert not (out / "shoeboxes_r0000.h5").exists() and not (out / "manifest.json").exists()
    # the rest, in parts of another size: the same file
    again = simulate_shoebox_dataset(load_experiment(experiment_file), out, seed=7, backend="numba",
                                     flush_every_images=3)
    assert again["parts"] == 2 and not again["stopped"]
    _assert_same_file(out / "shoeboxes_r0000.h5", uncut)


def test_sigkill_during_a_cli_run_then_resume_and_a_second_run_is_refused(experiment_file, tmp_path):
    n = 24  # about 0.3 s per image once compiled
    out, log = tmp_path / "killed", tmp_path / "run.log"
    cmd = [sys.executable, "-m", "xrais.cli", "simulate", "--shoeboxes", "--config", str(experiment_file), "--out",
           str(out), "--seed", "7", "--backend", "numba", "--n-images", str(n), "--flush-every-images", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 300
    parts = out / "parts_r0000"
    while not (parts.is_dir() and list(parts.glob("images_*.h5"))):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGSTOP)  # held still (and alive) while a second run tries the folder
    try:
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    finally:
        proc.send_signal(signal.SIGCONT)
    assert second.returncode == 2 and f"in use by xrais simulate --shoeboxes (pid {proc.pid} " in second.stderr, \
        second.stdout + second.stderr
    time.sleep(random.Random(3).uniform(0.0, 1.0))
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    kept = list(parts.glob("images_*.h5"))
    assert 0 < len(kept) < n and not (out / "shoeboxes_r0000.h5").exists()
    report = simulate_shoebox_dataset(load_experiment(experiment_file, shoeboxes={"n_images": n}), out, seed=7,
                                      backend="numba", flush_every_images=5)
    assert report["parts"] >= 1 and not (out / LOCK_NAME).exists()
    whole = simulate_shoebox_dataset(load_experiment(experiment_file, shoeboxes={"n_images": n}), tmp_path / "whole",
                                     seed=7, backend="numba", flush_every_images=n)
    assert whole["parts"] == 1
    _assert_same_file(out / "shoeboxes_r0000.h5", tmp_path / "whole" / "shoeboxes_r0000.h5")


def test_cuda_without_a_gpu_and_an_unusable_out_exit_2(experiment_file, tmp_path, capsys):
    from xrais.simulate.kernel_cuda import cuda_available

    blocker = tmp_path / "file"
    blocker.write_text("")
    cases = [(["--out", str(blocker), "--backend", "numba"], "is an existing file")]
    if not cuda_available():
        cases.append((["--out", str(tmp_path / "gpu"), "--backend", "cuda"], "backend 'cuda'"))
    for args, what in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(["simulate", "--shoeboxes", "--config", str(experiment_file), *args])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and what in err and "Traceback" not in err, err
    assert not list(tmp_path.rglob("*.h5"))
