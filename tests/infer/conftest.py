"""Fixtures for the inference tests: small checkpoints, multi-frame NXmx files, the CLI runner.

The checkpoints here are untrained ResNet-18 models (seeded), enough for everything but the
end-to-end values, which use a checkpoint trained in tests/infer/test_end_to_end.py.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pytest

PIXEL_MM = 0.172
DISTANCE_MM = 250.0
WAVELENGTH_A = 0.9795
SERIES_SHAPE = (700, 640)  # (slow, fast): small frames keep the tests fast
SERIES_CENTER = (300.5, 350.25)  # (fast, slow) px


@pytest.fixture(autouse=True)
def _isolated_models_dir(monkeypatch, tmp_path):
    """Never read the user's model cache, nor the models shipped with xrais (a test that wants
    shipped models points ``shipped_models_dir`` at a folder of its own)."""
    monkeypatch.delenv("XRAIS_MODELS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr("xrais.models.checkpoint.shipped_models_dir", lambda: tmp_path / "no_shipped_models")


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Untrained seeded ResNet-18 checkpoints: ``resolution`` and ``multilattice``."""
    import torch

    from xrais.models import build_model, save_checkpoint

    folder = tmp_path_factory.mktemp("ckpt")
    out = {}
    for seed, task in enumerate(("resolution", "multilattice")):
        torch.manual_seed(seed)
        out[task] = save_checkpoint(build_model("resnet18", task, input_std=64.0), folder / f"{task}.safetensors")
    return out


def make_frames(n: int, seed: int = 0, shape: tuple[int, int] = SERIES_SHAPE) -> np.ndarray:
    """``n`` int32 frames of Poisson background with a few bright spots, distinct per frame."""
    rng = np.random.default_rng(seed)
    frames = rng.poisson(3.0, (n, *shape)).astype(np.int32)
    for i in range(n):
        ys = rng.integers(0, shape[0], 30 + 5 * i)
        xs = rng.integers(0, shape[1], 30 + 5 * i)
        frames[i, ys, xs] = rng.integers(200, 20000, ys.size)
    frames[:, 200:204, :] = -1  # a module gap
    return frames


def write_nxmx(path: Path, frames: np.ndarray, *, beam_center_px: tuple[float, float] = SERIES_CENTER,
               distance_mm: float = DISTANCE_MM, wavelength_A: float = WAVELENGTH_A) -> Path:
    """A single-file NXmx with ``frames`` (n, slow, fast) in /entry/data/data, written whole then renamed."""
    import h5py

    tmp = path.with_name(f".{path.name}.tmp")
    with h5py.File(tmp, "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        data = entry.create_group("data")
        data.attrs["NX_class"] = "NXdata"
        data.create_dataset("data", data=frames, chunks=(1, *frames.shape[1:]))
        instrument = entry.create_group("instrument")
        instrument.attrs["NX_class"] = "NXinstrument"
        beam = instrument.create_group("beam")
        beam.attrs["NX_class"] = "NXbeam"
        beam.create_dataset("incident_wavelength", data=wavelength_A).attrs["units"] = "angstrom"
        det = instrument.create_group("detector")
        det.attrs["NX_class"] = "NXdetector"
        det.create_dataset("detector_distance", data=distance_mm * 1e-3).attrs["units"] = "m"
        det.create_dataset("beam_center_x", data=beam_center_px[0]).attrs["units"] = "pixel"
        det.create_dataset("beam_center_y", data=beam_center_px[1]).attrs["units"] = "pixel"
        for axis in ("x", "y"):
            det.create_dataset(f"{axis}_pixel_size", data=PIXEL_MM * 1e-3).attrs["units"] = "m"
        det.create_dataset("saturation_value", data=1_000_000)
    os.replace(tmp, path)
    return path


@pytest.fixture(scope="session")
def real_images(shared_data) -> Callable[[Sequence[str]], list[Path]]:
    """Paths of real images under shared/data/real by short name."""
    names = {
        "p6m_0001": "real/pilatus6m/thau_3_2_0001.cbf",
        "p6m_0003": "real/pilatus6m/thau_3_2_0003.cbf.bz2",
        "p6m_0007": "real/pilatus6m/thau_3_2_0007.cbf.bz2",
        "p6m_0015": "real/pilatus6m/thau_3_2_0015.cbf",
        "p6m_i03": "real/pilatus6m/DLS_I03_smargon_0001.cbf.gz",
        "eiger16m": "real/eiger16m/dlsnxs2cbf_therm_0001.cbf.gz",
        "p2m": "real/pilatus2m/l-cyst_01_00001.cbf",
        "stream": "real/eiger2_16m_stream/5291452/image000044",
        "adsc": "real/adsc/adsc.img.bz2",
        "rayonix": "real/rayonix340/hit-20181213155134902.cbf",
    }
    return lambda keys: [shared_data(names[k]) for k in keys]


def mpiexec() -> str | None:
    """The mpiexec beside this Python (the mpich wheel), or on PATH."""
    return shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")


def cli(*argv: str, input: str | None = None):
    """Run ``xrais ARGV…`` in-process through typer's CliRunner; returns the result."""
    from typer.testing import CliRunner

    from xrais.cli import app

    return CliRunner().invoke(app, list(argv), input=input, catch_exceptions=False)


def subprocess_env() -> dict[str, str]:
    """Environment for ``python -m xrais.cli`` children: one thread each, the test's model cache."""
    return dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", PYTHONUNBUFFERED="1")


@pytest.fixture(scope="session")
def helpers():
    """The helper functions of this file, for the tests (``helpers.write_nxmx(...)`` …)."""
    from types import SimpleNamespace

    return SimpleNamespace(make_frames=make_frames, write_nxmx=write_nxmx, mpiexec=mpiexec, cli=cli,
                           env=subprocess_env, PIXEL_MM=PIXEL_MM, DISTANCE_MM=DISTANCE_MM,
                           WAVELENGTH_A=WAVELENGTH_A, SERIES_CENTER=SERIES_CENTER)
