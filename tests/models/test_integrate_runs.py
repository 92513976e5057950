"""``xrais integrate`` as a long run: batch headers in its MTZ, training stopped or killed and resumed.

Training on synthetic shoeboxes (:func:`xrais.simulate.shoeboxes.synthetic_shoeboxes`) is
deterministic on the CPU, so a training stopped after any epoch (a stop request, SIGTERM) or
killed at any moment (SIGKILL) and started again must end with the very weights of a training
never interrupted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import gemmi
import numpy as np
import pytest
import torch

from xrais.errors import ConfigError, RunInterrupted
from xrais.models.variational import build_integrator, load_integrator
from xrais.models.variational.integrator import IntegratorConfig
from xrais.simulate.shoebox_io import write_shoeboxes
from xrais.simulate.shoeboxes import synthetic_shoeboxes
from xrais.train.integrate import IntegrateTrainConfig, integrate_shoeboxes, train_integrator, write_reflections_mtz

from long_runs import signal_when

SHAPE = (3, 15, 15)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_unmerged_mtz_has_one_batch_header_per_batch(tmp_path):
    sb = synthetic_shoeboxes(120, shape=SHAPE, seed=4)
    torch.manual_seed(0)
    table, _ = integrate_shoeboxes(build_integrator(shoebox_shape=SHAPE).eval(), sb, device="cpu")
    table["WAVELENGTH"] = 0.9 + 0.001 * (table["BATCH"] % 3)
    cell = [79.1, 79.1, 38.0, 90.0, 90.0, 90.0]
    mtz = gemmi.read_mtz_file(str(write_reflections_mtz(tmp_path / "r.mtz", table, cell=cell, space_group="P 43 21 2")))
    batches = sorted(set(table["BATCH"].tolist()))
    assert [b.number for b in mtz.batches] == batches and min(batches) >= 1
    assert {b.dataset_id for b in mtz.batches} == {mtz.datasets[-1].id}
    for b in mtz.batches:
        rows = table[table["BATCH"] == b.number]
        assert b.cell.a == pytest.approx(79.1, rel=1e-6) and b.cell.c == pytest.approx(38.0, rel=1e-6)
        assert b.wavelength == pytest.approx(float(rows["WAVELENGTH"].median()), rel=1e-6)
        assert list(b.floats)[36:38] == pytest.approx([rows["ROT"].min(), rows["ROT"].max()], rel=1e-6)
        assert list(b.ints)[12] == 1 and b.axes == ["PHI"]
    # the batch numbers of the reflections all have a header
    assert set(np.unique(mtz.column_with_label("BATCH").array).astype(int)) == set(batches)


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_stopped_training_resumes_to_the_same_weights(tmp_path):
    sb = synthetic_shoeboxes(256, shape=SHAPE, seed=6)
    cfg = IntegrateTrainConfig(epochs=4, batch_size=64, seed=2, device="cpu")
    reference, reference_history = train_integrator(sb, IntegratorConfig(), cfg)
    at = int(np.random.default_rng(3).integers(1, 4))
    stop = threading.Event()
    state = tmp_path / "m.train-state.pt"

    def on_epoch(epoch, metrics):
        if epoch + 1 == at:
            stop.set()

    with pytest.raises(RunInterrupted, match=f"after epoch {at} of 4"):
        train_integrator(sb, IntegratorConfig(), cfg, on_epoch=on_epoch, state_path=state, stop=stop)
    resumed, history = train_integrator(sb, IntegratorConfig(), cfg, state_path=state, stop=threading.Event())
    assert len(history) == 4
    assert [h["loss"] for h in history] == [h["loss"] for h in reference_history]
    for name, value in _weights(reference).items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    with pytest.raises(ConfigError, match="other shoeboxes or options"):
        train_integrator(sb, IntegratorConfig(), cfg.model_copy(update={"learning_rate": 2e-3}), state_path=state)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "MPI_", "HYDRA_"))}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


EPOCHS = 6


def _train_cmd(shoeboxes: Path, model: Path) -> list[str]:
    return [sys.executable, "-m", "xrais.cli", "integrate", str(shoeboxes), "--model", str(model), "--train",
            "--epochs", str(EPOCHS), "--batch-size", "32", "--seed", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def shoebox_file(tmp_path_factory) -> Path:
    return write_shoeboxes(tmp_path_factory.mktemp("sb") / "synthetic.h5", synthetic_shoeboxes(384, shape=SHAPE,
                                                                                                 seed=9))


@pytest.fixture(scope="module")
def reference_model(shoebox_file):
    """The training the command runs (its default model options), uninterrupted, in this process."""
    from xrais.simulate.shoebox_io import read_shoebox_files

    torch.set_num_threads(1)
    config = IntegratorConfig(encoder="fc", profile="mvn", surrogate="gamma", kl_weight_intensity=1e-4,
                              kl_weight_background=1e-4, kl_mode="tempered")
    model, _ = train_integrator(read_shoebox_files([shoebox_file]), config,
                                IntegrateTrainConfig(epochs=EPOCHS, batch_size=32, learning_rate=1e-3, seed=4,
                                                     device="cpu"))
    return model


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_cli_training_killed_at_a_random_moment_resumes_to_the_same_weights(shoebox_file, reference_model,
                                                                            tmp_path, signum):
    from xrais.models.variational.cli import training_state_path

    rng = np.random.default_rng(40 + int(signum))
    model = tmp_path / "m.safetensors"
    state = training_state_path(model)
    # signalled once the first epoch is on disk
    code, stdout, stderr = signal_when(_train_cmd(shoebox_file, model), state.exists, signum,
                                       delay_s=float(rng.uniform(0.0, 0.4)), env=_env())
    if signum == signal.SIGTERM:
        assert code == 128 + signal.SIGTERM, stdout[-2000:] + stderr[-2000:]
        assert "stopped by SIGTERM" in " ".join(stderr.split()) and "Traceback" not in stderr
    else:
        assert code == -signal.SIGKILL
    assert not model.exists() and state.exists()
    again = subprocess.run(_train_cmd(shoebox_file, model), capture_output=True, text=True, timeout=600, env=_env())
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "resuming the training" in again.stdout and not state.exists()
    a, b = reference_model, load_integrator(model)
    for name, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[name]), name


def test_cli_refuses_unusable_model_path(shoebox_file, tmp_path):
    (tmp_path / "file").write_text("x")
    proc = subprocess.run(_train_cmd(shoebox_file, tmp_path / "file" / "m.safetensors"), capture_output=True,
                          text=True, timeout=300, env=_env())
    assert proc.returncode == 2 and "which is a file" in proc.stderr and "Traceback" not in proc.stderr
