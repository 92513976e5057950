"""``xrais train`` as a long run: killed or stopped at any moment it keeps its work and resumes to the
same weights; one run per output folder; an unusable --out or a manifest naming files elsewhere is refused."""

from __future__ import annotations

import csv
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xrais.errors import ConfigError, DatasetError, RunLockedError
from xrais.runs import LOCK_NAME
from xrais.train.data import resolve_data
from xrais.train.state import load_training_state, state_path

from train_helpers import SMALL_RUN, child_env, run_checked, xrais_command


def _wait_for_save(child: subprocess.Popen, state: Path, after_ns: int, deadline_s: float = 600) -> None:
    """Wait until the child has written a training state newer than ``after_ns``."""
    deadline = time.monotonic() + deadline_s
    while not (state.exists() and state.stat().st_mtime_ns > after_ns):
        if child.poll() is not None:
            raise AssertionError(f"the run ended (status {child.returncode}) before saving:\n"
                                 + child.stdout.read().decode()[-3000:])
        assert time.monotonic() < deadline
        time.sleep(0.02)


def _signal_at_random(cmd: list[str], state: Path, signum: int, rng: random.Random) -> tuple[int, str]:
    """Start ``cmd``, wait for its first save, wait a seeded random moment, send ``signum``."""
    before = state.stat().st_mtime_ns if state.exists() else -1
    child = subprocess.Popen(cmd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_for_save(child, state, before)
        time.sleep(rng.uniform(0.0, 3.0))
        child.send_signal(signum)
        out, _ = child.communicate(timeout=300)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return child.returncode, out.decode()


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_sigkill_and_sigterm_at_random_moments_resume_to_the_same_weights(tmp_path, small_shard, single_process_run,
                                                                         load_weights):
    out = tmp_path / "run"
    cmd = xrais_command("train", str(small_shard), "--out", str(out), *SMALL_RUN, "--checkpoint-every-s", "0.001")
    state = state_path(out)
    rng = random.Random(20261202)

    code, text = _signal_at_random(cmd, state, signal.SIGKILL, rng)
    assert code == -signal.SIGKILL, text
    killed = load_training_state(state)  # whole and readable: the kill cannot cut it
    assert (killed["epoch"], killed["batch"]) != (0, 0)

    code, text = _signal_at_random(cmd, state, signal.SIGTERM, rng)
    if code != 0:  # the run may have finished first; else it stopped after a batch, saying so
        assert code == 128 + signal.SIGTERM, text
        assert "stopped by SIGTERM; finished work is saved, run the same command again to resume" in text
        assert "Traceback" not in text
        stopped = load_training_state(state)
        assert (stopped["epoch"], stopped["batch"]) >= (killed["epoch"], killed["batch"])
    assert not (out / LOCK_NAME).exists()  # a stopped run gives the folder back

    proc = run_checked(cmd)
    assert "resumed" in proc.stdout or "already done" in proc.stdout
    for name in ("last.safetensors", "best.safetensors"):
        resumed, reference = load_weights(out / name), load_weights(single_process_run / name)
        assert resumed.keys() == reference.keys()
        for key in reference:
            assert resumed[key].equal(reference[key]), f"{name}: {key}"
    rows, expected = _rows(out / "metrics.csv"), _rows(single_process_run / "metrics.csv")
    for column in ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"):
        assert [r[column] for r in rows] == [r[column] for r in expected], column


def _held_lock(folder: Path, pid: int) -> None:
    from xrais.runs import _process_start

    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps({
        "host": socket.gethostname(), "pid": pid, "process_start": _process_start(pid),
        "command": "xrais train", "started": "2026-12-02T07:00:00+0000"}))


def test_a_second_run_into_a_held_folder_is_refused(tmp_path, small_shard, capsys):
    from xrais.cli import main

    out = tmp_path / "run"
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        _held_lock(out, owner.pid)
        with pytest.raises(SystemExit) as info:
            main(["train", str(small_shard), "--out", str(out), *SMALL_RUN])
        err = capsys.readouterr().err
        assert info.value.code == 2
        assert f"in use by xrais train (pid {owner.pid} on {socket.gethostname()}" in " ".join(err.split())
        assert not state_path(out).exists()
        with pytest.raises(RunLockedError):
            main(["--debug", "train", str(small_shard), "--out", str(out), *SMALL_RUN])
    finally:
        owner.kill()
        owner.wait()


def test_a_stale_lock_is_taken_over_and_given_back(tmp_path, small_shard, caplog):
    from xrais.train.config import make_train_config
    from xrais.train.loop import train

    out = tmp_path / "run"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _held_lock(out, gone.pid)
    # too large a batch: the run gets past the lock, then stops on the data
    cfg = make_train_config(data=(str(small_shard),), out=str(out), arch="resnet18", batch_size=64, workers=0,
                            device="cpu")
    with pytest.raises(DatasetError, match="fewer than one global batch of 64"):
        train(cfg)
    assert "taking over the lock of a run that is gone" in caplog.text
    assert not (out / LOCK_NAME).exists()


@pytest.mark.parametrize("case", ["file", "under_file"])
def test_an_unusable_out_is_a_usage_error(case, tmp_path, small_shard, capsys):
    from xrais.cli import main

    blocker = tmp_path / "taken"
    blocker.write_text("a file")
    out = blocker if case == "file" else blocker / "run"
    with pytest.raises(SystemExit) as info:
        main(["train", str(small_shard), "--out", str(out), *SMALL_RUN])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "--out must be a folder" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_manifest_naming_files_outside_its_folder_is_refused(tmp_path, small_shard):
    folder = tmp_path / "set"
    folder.mkdir()
    inside = folder / "part.h5"
    os.symlink(small_shard, inside)
    for entry in (str(small_shard), "../elsewhere/x.h5", "sub/../../x.h5"):
        manifest = folder / "manifest.json"
        manifest.write_text(json.dumps({"shards": [{"file": "part.h5"}, {"file": entry}]}))
        with pytest.raises(DatasetError, match="^" + re.escape(f"{manifest}: names '{entry}', outside the manifest's "
                                                               "folder; ") + ".*--allow-outside-manifest"):
            resolve_data([folder])
    manifest.write_text(json.dumps({"shards": [{"file": str(small_shard)}, "./part.h5"]}))
    assert resolve_data([manifest], allow_outside_manifest=True) == [small_shard.resolve()]
    manifest.write_text(json.dumps({"shards": ["part.h5"]}))
    assert resolve_data([folder]) == [small_shard.resolve()]


def test_the_train_command_passes_the_manifest_flag_on(tmp_path, small_shard):
    from typer.testing import CliRunner

    from xrais.cli import app

    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"shards": [str(small_shard)]}))
    base = ["train", str(folder), "--out", str(tmp_path / "run"), "--arch", "resnet18", "--batch-size", "64",
            "--workers", "0", "--device", "cpu"]
    refused = CliRunner().invoke(app, base)
    assert isinstance(refused.exception, DatasetError) and "outside the manifest's folder" in str(refused.exception)
    allowed = CliRunner().invoke(app, [*base, "--allow-outside-manifest"])  # read, then too few for the batch
    assert isinstance(allowed.exception, DatasetError) and "fewer than one global batch" in str(allowed.exception)


def test_checkpoint_interval_is_checked():
    from xrais.train.config import make_train_config

    with pytest.raises(ConfigError, match="checkpoint_every_s: Input should be greater than 0"):
        make_train_config(data=("x",), out="o", checkpoint_every_s=0)
