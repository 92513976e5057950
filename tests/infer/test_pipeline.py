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
    assert np.corrcoef(a["F"], b["F"])[0, 1] >= 0.99
    assert json.loads((out / "pipeline.json").read_text())["images_done"] == N_IMAGES


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
    assert np.corrcoef(a["F"], b.loc[a.index]["F"])[0, 1] >= 0.99
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
