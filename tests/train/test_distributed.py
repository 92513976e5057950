"""``torchrun --nproc_per_node 2`` on the CPU (gloo) gives the run of one process with the same global batch."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from xrais.train.state import load_training_state, state_path

from train_helpers import SMALL_RUN, child_env, run_checked, torchrun_command


def _column(run, name):
    with (run / "metrics.csv").open() as fh:
        return [float(r[name]) for r in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, small_shard):
    out = tmp_path_factory.mktemp("ddp") / "run"
    proc = run_checked(torchrun_command(2, "train", str(small_shard), "--out", str(out), *SMALL_RUN))
    return out, proc


def test_two_processes_match_one(two_process_run, single_process_run, load_weights):
    out, proc = two_process_run
    assert "2 process(es)" in proc.stdout
    assert proc.stdout.count("epoch 1/2") == 1  # only rank 0 reports
    # Each process took 4 images per step; BatchNorm statistics and gradients are those of the global 8.
    for name in ("train_loss", "val_loss", "train_accuracy", "val_accuracy"):
        torch.testing.assert_close(_column(out, name), _column(single_process_run, name), rtol=1e-4, atol=1e-6)
    one, two = load_weights(single_process_run / "last.safetensors"), load_weights(out / "last.safetensors")
    assert one.keys() == two.keys()
    # Float rounding differs (sums in another order) and grows over the 6 steps to ~1e-5 of the
    # weights; a wrong batch statistic or batch split differs by the size of a step.
    for key in one:  # BatchNorm running statistics included
        torch.testing.assert_close(two[key], one[key], rtol=1e-3, atol=2e-4, msg=key)


def test_plain_batchnorm_under_torchrun_is_not_the_same_run(tmp_path, small_shard, single_process_run, load_weights):
    out = tmp_path / "run"
    run_checked(torchrun_command(2, "train", str(small_shard), "--out", str(out), *SMALL_RUN, "--epochs", "1",
                                 "--no-sync-batchnorm"))
    one = _column(single_process_run, "train_loss")[0]
    assert abs(_column(out, "train_loss")[0] - one) > 1e-4 * abs(one)  # the comparison above can fail


def _worker_of_rank(agent_pid: int, rank: int) -> int | None:
    """The pid of torchrun's worker process of ``rank`` (a direct child whose environment says so)."""
    try:
        children = Path(f"/proc/{agent_pid}/task/{agent_pid}/children").read_text().split()
    except OSError:
        return None
    for pid in children:
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return int(pid)
    return None


def test_a_sigterm_to_one_process_stops_both_and_the_run_resumes(tmp_path, small_shard, two_process_run, load_weights):
    """SIGTERM to rank 1 only: the processes agree to stop after the same batch, save, and the resumed run
    ends with the weights of the uninterrupted two-process run."""
    out = tmp_path / "run"
    cmd = torchrun_command(2, "train", str(small_shard), "--out", str(out), *SMALL_RUN)
    agent = subprocess.Popen(cmd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while not (out / ".xrais.lock").exists():  # the processes have joined and hold the folder
            assert agent.poll() is None, agent.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        worker = None
        while worker is None and time.monotonic() < deadline:
            worker = _worker_of_rank(agent.pid, 1)
            time.sleep(0.05)
        assert worker is not None
        time.sleep(1.0)
        if agent.poll() is None:
            os.kill(worker, signal.SIGTERM)
        text, _ = agent.communicate(timeout=600)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    text = text.decode()
    state = load_training_state(state_path(out))
    assert state["epoch"] < 2, text  # it stopped before the end …
    assert agent.returncode != 0 and "stopped by SIGTERM" in text  # … and said so
    assert "stopped after epoch 1" in text or "stopped in epoch" in text  # rank 0, which got no signal, stopped too
    proc = run_checked(cmd)
    assert "resumed" in proc.stdout
    reference, resumed = load_weights(two_process_run[0] / "last.safetensors"), load_weights(out / "last.safetensors")
    assert reference.keys() == resumed.keys()
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=0, atol=0, msg=key)
