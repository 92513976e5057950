"""The online merge pipeline: one process, ``mpiexec -n 3``, a killed run resumed, the shoebox source.

The runs use the simulated-reflection source (lysozyme stills to 3 Å): what the pipeline does
with the images does not depend on where they come from, and the shoebox source has its own
short test at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gemmi
import numpy as np
import pandas as pd
import pytest
import reciprocalspaceship as rs

from xrais.errors import ConfigError
from xrais.infer.pipeline import PipelineConfig, load_pipeline_config, run_pipeline

from long_runs import signal_when

STRUCTURE = "structures/RTSAD_HEWL_refine_25.pdb"
N_IMAGES = 200


def _config_text(structure: Path, **extra: str) -> str:
    lines = [
        'source = "reflections"',
        f'checkpoint_every_images = {extra.get("every", 50)}',
        f'statistics_at_checkpoints = {extra.get("stats", "true")}',
        "[reflections]",
        f'structure_path = "{structure}"',
        f"n_images = {N_IMAGES}",
        "d_min_A = 3.0",
        "seed = 3",
        "[merge]",
        "max_epochs = 10",
        "half_dataset_steps = 100",
        "warmup_images = 40",
    ]
    return "\n".join(lines) + "\n"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "MPI_", "HYDRA_"))}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def _mpiexec() -> str | None:
    candidate = Path(sys.executable).parent / "mpiexec"
    return str(candidate) if candidate.exists() else None


def _pipeline_cmd(config: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "xrais.cli", "pipeline", "--config", str(config), "--out", str(out)]


@pytest.fixture(scope="module")
def config_file(shared_data, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "pipeline.toml"
    path.write_text(_config_text(shared_data(STRUCTURE)))
    return path


@pytest.fixture(scope="module")
def single_run(config_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "run"
    proc = subprocess.run(_pipeline_cmd(config_file, out), capture_output=True, text=True, timeout=600, env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "xrais pipeline" in proc.stdout
    return out


def _merged(out: Path) -> rs.DataSet:
    return rs.read_mtz(str(out / "merged.mtz"))


def test_single_process_run_writes_every_output(single_run):
    status = json.loads((single_run / "pipeline.json").read_text())
    assert status["phase"] == "done" and status["images_done"] == N_IMAGES and not status["errors"]
    stats = pd.read_csv(single_run / "statistics.csv").set_index("shell")
    assert stats.loc["overall", "CC_true"] >= 0.95
    assert stats.loc["overall", "CC_half"] > 0.9 and stats.loc["overall", "CC_pred_test"] > 0.9
    history = pd.read_csv(single_run / "history.csv")
    assert set(history["phase"]) == {"stream", "refine"}
    assert (history[history["phase"] == "stream"]["images"].diff().dropna() == 50).all()
    mtz = gemmi.read_mtz_file(str(single_run / "merged.mtz"))
    assert mtz.spacegroup.hm == "P 43 21 2" and [c.label for c in mtz.columns][3:] == ["F", "SIGF", "I", "SIGI", "N"]
    assert len(list((single_run / "observations").glob("chunk_*.npz"))) == N_IMAGES // 50


def test_three_mpi_ranks_match_one_process(single_run, config_file, tmp_path):
    mpiexec = _mpiexec()
    if mpiexec is None:
        pytest.skip("mpiexec not found beside the Python interpreter (install the mpich wheel)")
    out = tmp_path / "mpi"
    proc = subprocess.run([mpiexec, "-n", "3", *_pipeline_cmd(config_file, out)], capture_output=True, text=True,
                          timeout=600, env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ranks" in proc.stdout and "│ 3" in proc.stdout
    a, b = _merged(single_run), _merged(out)
    assert a.index.sort_values().equals(b.index.sort_values())          # the same reflections
    b = b.loc[a.index]
    assert np.array_equal(a["N"].to_numpy(), b["N"].to_numpy())        # from the same observations
    # ranks hand images to the scaler in the order they finish, so the steps differ a little
    assert np.corrcoef(a["F"], b["F"])[0, 1] >= 0.98
    assert json.loads((out / "pipeline.json").read_text())["images_done"] == N_IMAGES


@pytest.mark.slow  # test_cli_killed_at_a_random_moment_resumes_bit_identical covers it on a smaller run
def test_killed_run_resumes_where_it_stopped(single_run, config_file, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(_pipeline_cmd(config_file, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=_env())
    deadline = time.monotonic() + 300
    try:
        while not (out / "merged.mtz").exists():     # the first checkpoint with the model started
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    status = json.loads((out / "pipeline.json").read_text())
    assert status["phase"] == "stream" and 0 < status["images_done"] < N_IMAGES
    done_at_kill = status["images_done"]

    again = subprocess.run(_pipeline_cmd(config_file, out), capture_output=True, text=True, timeout=600, env=_env())
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    status = json.loads((out / "pipeline.json").read_text())
    assert status["phase"] == "done" and status["images_done"] == N_IMAGES
    assert status["resumed_from_images"] == done_at_kill
    a, b = _merged(single_run), _merged(out)
    assert a.index.sort_values().equals(b.index.sort_values())
    assert np.array_equal(a["N"].to_numpy(), b.loc[a.index]["N"].to_numpy())
    # one process is deterministic and checkpoints do not change the steps: the very same file
    assert (single_run / "merged.mtz").read_bytes() == (out / "merged.mtz").read_bytes()
    # a finished run started again does nothing more
    third = subprocess.run(_pipeline_cmd(config_file, out), capture_output=True, text=True, timeout=600, env=_env())
    assert third.returncode == 0 and json.loads((out / "pipeline.json").read_text())["steps"] == status["steps"]


def test_config_errors(shared_data, tmp_path, config_file, single_run):
    bad = tmp_path / "bad.toml"
    bad.write_text('source = "reflections"\n')
    with pytest.raises(ConfigError, match=r"\[reflections\] section"):
        run_pipeline(load_pipeline_config(bad), tmp_path / "out")
    bad.write_text('source = "reflections"\nbogus = 1\n')
    with pytest.raises(ConfigError, match="bogus"):
        load_pipeline_config(bad)
    other = load_pipeline_config(config_file).model_copy(update={"checkpoint_every_images": 7})
    with pytest.raises(ConfigError, match="different config"):
        run_pipeline(other, single_run)
    with pytest.raises(ConfigError, match="cannot import"):
        run_pipeline(PipelineConfig(source="no_such_module:f", custom={"cell": (10, 10, 10, 90, 90, 90),
                                                                       "space_group": "P 1", "n_images": 1,
                                                                       "d_min_A": 3.0}), tmp_path / "x")


def test_shoebox_source_simulates_and_integrates_each_image(tmp_path):
    import torch

    from xrais.models.variational.integrator import build_integrator, save_integrator

    torch.manual_seed(0)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        integrator = save_integrator(build_integrator(shoebox_shape=(1, 11, 11)), tmp_path / "integrator.safetensors")
        config = PipelineConfig(
            source="shoeboxes", integrator=str(integrator),
            experiment={"detector": "flat", "image_size_px": (256, 256), "distance_mm": 100.0,
                        "shoeboxes": {"mode": "stills", "n_images": 6, "d_min_A": 4.0, "shoebox_shape": (1, 11, 11)}},
            merge={"max_epochs": 2, "polish_epochs": 0, "half_dataset_steps": 10, "warmup_images": 4,
                   "test_fraction": 0.0},
            checkpoint_every_images=3)
        report = run_pipeline(config, tmp_path / "run")
    finally:
        torch.set_num_threads(before)
    assert report["images"] == 6 and report["errors"] == 0
    merged = _merged(tmp_path / "run")
    assert len(merged) > 100 and merged.spacegroup.hm == "P 43 21 2"
    stats = pd.read_csv(tmp_path / "run" / "statistics.csv").set_index("shell")
    assert "CC_true" in stats.columns and np.isfinite(stats.loc["overall", "CC_true"])


# --- stopping, killing and resuming a small run: the same merge, bit for bit ----------------------

SMALL_IMAGES = 60


def _small_config_text(structure: Path) -> str:
    return "\n".join([
        'source = "reflections"', "checkpoint_every_images = 8",
        "[reflections]", f'structure_path = "{structure}"', f"n_images = {SMALL_IMAGES}", "d_min_A = 4.0",
        "seed = 5",
        "[merge]", "max_epochs = 5", "min_epochs = 2", "polish_epochs = 1", "half_dataset_steps = 20",
        "warmup_images = 6",
    ]) + "\n"


@pytest.fixture(scope="module")
def small_config(shared_data, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("small") / "small.toml"
    path.write_text(_small_config_text(shared_data(STRUCTURE)))
    return path


@pytest.fixture(scope="module")
def small_reference(small_config, tmp_path_factory) -> Path:
    """An uninterrupted run of the small config, in this process (one torch thread, as the CLI)."""
    import torch

    out = tmp_path_factory.mktemp("small_ref") / "run"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = run_pipeline(load_pipeline_config(small_config), out)
    finally:
        torch.set_num_threads(before)
    assert report["images"] == SMALL_IMAGES and not report["stopped"]
    assert sorted(p.name for p in report["files"]) == ["history.csv", "merged.mtz", "pipeline.json",
                                                       "statistics.csv"]
    return out


def _same_merge(a: Path, b: Path) -> None:
    assert (a / "merged.mtz").read_bytes() == (b / "merged.mtz").read_bytes()
    assert (a / "statistics.csv").read_text() == (b / "statistics.csv").read_text()


@pytest.mark.parametrize("stop_at", ["image", "epoch"])
def test_stopped_run_resumes_to_the_same_merge(small_config, small_reference, tmp_path, monkeypatch, stop_at):
    """A stop request (what SIGTERM sets) at a random image or epoch, then a second run: identical files."""
    import threading

    import torch

    import xrais.infer.merge as merge_module
    import xrais.infer.pipeline as pipeline_module

    rng = np.random.default_rng(21 if stop_at == "image" else 22)
    stop = threading.Event()
    config = load_pipeline_config(small_config)
    if stop_at == "image":
        at, made = int(rng.integers(3, SMALL_IMAGES - 3)), []
        original = pipeline_module._image_observations

        def counting(*args, **kwargs):
            made.append(1)
            if len(made) == at:
                stop.set()
            return original(*args, **kwargs)

        monkeypatch.setattr(pipeline_module, "_image_observations", counting)
    else:
        at, epochs_seen = int(rng.integers(1, 3)), []

        def train_epochs(*args, progress=None, **kwargs):
            def after(record):
                progress(record)
                epochs_seen.append(1)
                if len(epochs_seen) == at:
                    stop.set()
            return merge_module.train_epochs(*args, progress=after, **kwargs)

        monkeypatch.setattr(pipeline_module, "train_epochs", train_epochs)
    out = tmp_path / "run"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        first = run_pipeline(config, out, stop=stop)
        assert first["stopped"] and first["phase"] == ("stream" if stop_at == "image" else "refine")
        if stop_at == "image":
            assert first["images"] == at
        monkeypatch.undo()
        second = run_pipeline(config, out, stop=threading.Event())
    finally:
        torch.set_num_threads(before)
    assert not second["stopped"] and second["images"] == SMALL_IMAGES
    assert second["resumed_from_images"] == first["images"]
    _same_merge(small_reference, out)


def test_done_run_missing_its_files_writes_them_again(small_reference, small_config, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(small_reference, out)
    (out / "merged.mtz").unlink()
    report = run_pipeline(load_pipeline_config(small_config), out)
    assert (out / "merged.mtz").is_file() and all(p.is_file() for p in report["files"])
    assert report["images"] == SMALL_IMAGES


def test_checkpoint_that_is_not_this_runs_is_refused(small_reference, small_config, tmp_path):
    import shutil

    import torch

    from xrais.errors import CheckpointError

    out = tmp_path / "copy"
    shutil.copytree(small_reference, out)
    torch.save({"phase": "done", "done": [], "chunks": [], "merger": {}, "stream_history": [],
                "refine_history": []}, out / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="phase 'done' with no image done"):
        run_pipeline(load_pipeline_config(small_config), out)
    state = torch.load(small_reference / "checkpoint.pt", weights_only=True)
    state["chunks"] = ["chunk_000099.npz"]
    torch.save(state, out / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="gone"):
        run_pipeline(load_pipeline_config(small_config), out)


def test_unusable_or_busy_out_is_refused(small_config, tmp_path):
    from xrais.errors import RunLockedError
    from xrais.runs import RunLock

    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="must be a folder"):
        run_pipeline(load_pipeline_config(small_config), tmp_path / "file")
    with pytest.raises(ConfigError, match="lies under"):
        run_pipeline(load_pipeline_config(small_config), tmp_path / "file" / "run")
    with RunLock(tmp_path / "busy", "xrais pipeline"):
        with pytest.raises(RunLockedError):
            run_pipeline(load_pipeline_config(small_config), tmp_path / "busy")
    assert not (tmp_path / "busy" / "checkpoint.pt").exists()
    proc = subprocess.run([*_pipeline_cmd(small_config, tmp_path / "file")], capture_output=True, text=True,
                          timeout=300, env=_env())
    assert proc.returncode == 2 and "must be a folder" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_cli_killed_at_a_random_moment_resumes_bit_identical(small_config, small_reference, tmp_path, signum):
    """The real command, killed (SIGKILL) or stopped (SIGTERM) once work is on disk, then run again."""
    rng = np.random.default_rng(100 + int(signum))
    out = tmp_path / "run"
    code, stdout, stderr = signal_when(_pipeline_cmd(small_config, out), (out / "checkpoint.pt").exists, signum,
                                       delay_s=float(rng.uniform(0.0, 0.6)), env=_env())
    if signum == signal.SIGTERM:
        assert code == 128 + signal.SIGTERM, stdout[-2000:] + stderr[-2000:]
        assert "stopped" in stdout and "Traceback" not in stderr
    else:
        assert code == -signal.SIGKILL
    status = json.loads((out / "pipeline.json").read_text())
    assert status["phase"] != "done"
    again = subprocess.run(_pipeline_cmd(small_config, out), capture_output=True, text=True, timeout=600, env=_env())
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    status = json.loads((out / "pipeline.json").read_text())
    assert status["images_done"] == SMALL_IMAGES and status["phase"] == "done"
    assert not (out / ".xrais.lock").exists()
    _same_merge(small_reference, out)
    if signum == signal.SIGKILL:  # a finished run started again does nothing more
        third = subprocess.run(_pipeline_cmd(small_config, out), capture_output=True, text=True, timeout=600,
                               env=_env())
        assert third.returncode == 0 and json.loads((out / "pipeline.json").read_text())["steps"] == status["steps"]


def test_a_run_where_every_image_fails_is_an_error_not_an_empty_success(small_config, tmp_path, monkeypatch):
    import xrais.infer.pipeline as pipeline_module
    from xrais.errors import DatasetError

    def broken(source, unique, columns, index):
        raise ValueError(f"detector file {index} is unreadable")

    monkeypatch.setattr(pipeline_module, "_image_observations", broken)
    with pytest.raises(DatasetError, match=rf"none of the {SMALL_IMAGES} images gave observations "
                                           rf"\({SMALL_IMAGES} failed\); first: image 0: ValueError"):
        run_pipeline(load_pipeline_config(small_config), tmp_path / "run")
    assert not (tmp_path / "run" / "merged.mtz").exists()


def test_failed_images_are_reported_and_remembered_across_runs(small_config, tmp_path, monkeypatch):
    import xrais.infer.pipeline as pipeline_module

    original = pipeline_module._image_observations

    def some_fail(source, unique, columns, index):
        if index in (5, 17):
            raise ValueError(f"image {index} is truncated")
        return original(source, unique, columns, index)

    monkeypatch.setattr(pipeline_module, "_image_observations", some_fail)
    out = tmp_path / "run"
    report = run_pipeline(load_pipeline_config(small_config), out)
    assert report["errors"] == 2 and report["images"] == SMALL_IMAGES - 2 and not report["stopped"]
    assert (out / "merged.mtz").is_file()
    status = json.loads((out / "pipeline.json").read_text())
    assert [e["image"] for e in status["errors"]] == [5, 17]
    again = run_pipeline(load_pipeline_config(small_config), out)      # done: nothing made, errors still told
    assert again["errors"] == 2 and again["steps"] == report["steps"]
