"""Kill and resume: a run killed after an epoch and started again with the same command ends where an
uninterrupted run ends; a command that would make it another run is refused."""

from __future__ import annotations

import csv
import shutil
import signal
import subprocess
import time

import pytest
import torch

from xrais.errors import CheckpointError, ConfigError
from xrais.train.config import make_train_config
from xrais.train.loop import train
from xrais.train.state import load_training_state, state_path

from train_helpers import SMALL_RUN, child_env, run_checked, xrais_command


@pytest.mark.slow  # test_train_kill.py's kills at random moments cover it
def test_killed_run_resumes_to_the_same_weights(tmp_path, small_shard, single_process_run, load_weights):
    out = tmp_path / "run"
    cmd = xrais_command("train", str(small_shard), "--out", str(out), *SMALL_RUN)
    child = subprocess.Popen(cmd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    state = state_path(out)
    deadline = time.monotonic() + 600
    try:
        while not state.exists():
            assert child.poll() is None, child.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)  # mid-way through epoch 2 of 2
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    saved = torch.load(state, map_location="cpu", weights_only=True)  # tensors, numbers and strings only
    assert saved["epoch"] == 1 and saved["format"] == "xrais-train-state-1"
    proc = run_checked(cmd)
    assert "resumed after epoch 1" in proc.stdout and "epoch 1/2" not in proc.stdout
    resumed, reference = load_weights(out / "last.safetensors"), load_weights(single_process_run / "last.safetensors")
    assert resumed.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=0, atol=0, msg=key)
    with (out / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    with (single_process_run / "metrics.csv").open() as fh:
        expected = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert [r["val_loss"] for r in rows] == [r["val_loss"] for r in expected]
    assert load_training_state(state)["resumed_at"] == [1]


def _config(data, out, **changes):
    args = dict(data=(str(data),), out=str(out), task="resolution", arch="resnet18", epochs=2, batch_size=8,
                val_fraction=0.25, workers=1, seed=3, device="cpu")
    args.update(changes)
    return make_train_config(**args)


@pytest.fixture
def saved_run(tmp_path, single_process_run):
    out = tmp_path / "copy"
    shutil.copytree(single_process_run, out)
    return out


def test_resume_refuses_another_architecture_task_or_setting(saved_run, small_shard, tiny_training_set):
    state = state_path(saved_run)
    with pytest.raises(CheckpointError, match=rf"{state}: holds a resolution resnet18 run; the command asks for "
                                              "a resolution resnet34 run"):
        train(_config(small_shard, saved_run, arch="resnet34"))
    with pytest.raises(CheckpointError, match="holds a resolution resnet18 run; .* multilattice resnet18"):
        train(_config(small_shard, saved_run, task="multilattice"))
    with pytest.raises(ConfigError, match=r"last.pt: the command differs from the saved run in lr: 0.006 → 0.01"):
        train(_config(small_shard, saved_run, lr=0.01))
    with pytest.raises(ConfigError, match=r"last.pt: the run was trained on 1 shard\(s\), the command gives 4"):
        train(_config(tiny_training_set, saved_run))
    result = train(_config(small_shard, saved_run, workers=0))  # workers do not matter; nothing left to do
    assert result.start_epoch == 2 and result.epochs_done == 2


def test_unreadable_state_is_an_error_naming_the_file(saved_run, small_shard):
    state = state_path(saved_run)
    state.write_bytes(state.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=rf"{state}: expected an xrais training state, could not read it"):
        train(_config(small_shard, saved_run))
