"""No file a user is handed can run code: every loader refuses a malicious pickle.

Two halves. The source check reads every module of the package: each ``torch.load`` passes
``weights_only=True``, each ``np.load`` passes ``allow_pickle=False``, and nothing calls
``pickle.load``, ``pickle.loads``, ``pandas.read_pickle``, ``joblib.load`` or ``torch.jit.load``.
The planted files: a pickle whose ``__reduce__`` would create a marker file (through
``os.system``) is put at every place the package loads from (pipeline checkpoint and
observation chunks, merge and integrator training states, model training states, resonet
weights, model and integrator checkpoints, shoebox files, dataset shards, reflection files,
images, config files); the loader, or the command, must refuse it with one clear line, and the
marker must not exist afterwards.
"""

from __future__ import annotations

import ast
import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from xrais.errors import XraisError

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_FOLDERS = ("xrais", "simulate", "conditioning", "models", "train", "infer")
STRUCTURE = "structures/RTSAD_HEWL_refine_25.pdb"


# --- the source check ----------------------------------------------------------------------------

_FORBIDDEN = {("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"), ("pd", "read_pickle"),
              ("pandas", "read_pickle"), ("joblib", "load"), ("dill", "load"), ("dill", "loads"),
              ("cloudpickle", "load"), ("cloudpickle", "loads"), ("jit", "load"), ("np", "fromfile")}


def _dotted(node: ast.AST) -> tuple[str, ...]:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return tuple(reversed(parts))


def _keyword_is(call: ast.Call, name: str, value: bool) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


def find_unsafe_loads(source: str, label: str) -> list[str]:
    """Lines of ``source`` that could unpickle: torch.load without weights_only=True, np.load
    without allow_pickle=False, or a call to a pickle-based loader."""
    problems = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        where = f"{label}:{node.lineno}: {'.'.join(name)}"
        if name[-2:] == ("torch", "load") and not _keyword_is(node, "weights_only", True):
            problems.append(f"{where} without weights_only=True")
        elif name[-2:] in (("np", "load"), ("numpy", "load")) and not _keyword_is(node, "allow_pickle", False):
            problems.append(f"{where} without allow_pickle=False")
        elif name[-2:] in _FORBIDDEN:
            problems.append(f"{where} can unpickle")
    return problems


def test_the_source_check_finds_unsafe_loads():
    bad = ("import torch, numpy as np, pickle\n"
           "torch.load('a')\ntorch.load('a', weights_only=False)\nnp.load('b')\nnp.load('b', allow_pickle=True)\n"
           "pickle.loads(b'')\ntorch.load('a', weights_only=True)\nnp.load('b', allow_pickle=False)\n")
    assert [p.split(":")[1] for p in find_unsafe_loads(bad, "x.py")] == ["2", "3", "4", "5", "6"]


def test_no_module_of_the_package_can_unpickle():
    files = [p for folder in PACKAGE_FOLDERS for p in sorted((ROOT / folder).rglob("*.py"))]
    assert len(files) > 50
    problems = [p for f in files for p in find_unsafe_loads(f.read_text(encoding="utf-8"), str(f.relative_to(ROOT)))]
    assert not problems, "\n".join(problems)


# --- planted files -------------------------------------------------------------------------------

class _Planted:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def evil_pickle_bytes(marker: Path) -> bytes:
    return pickle.dumps({"state": _Planted(marker)})


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "code-ran"


def test_the_planted_pickle_does_run_code_when_unpickled(tmp_path):
    """The payload is real: plain unpickling creates the marker (so the tests below can fail)."""
    marker = tmp_path / "sanity"
    pickle.loads(evil_pickle_bytes(marker))
    assert marker.exists()
    marker.unlink()
    torch.save({"x": _Planted(marker)}, tmp_path / "t.pt")
    torch.load(tmp_path / "t.pt", weights_only=False)
    assert marker.exists()


def _plant(path: Path, marker: Path, kind: str = "pickle") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "torch":
        torch.save({"state": _Planted(marker)}, path)
    elif kind == "npz":
        np.savez(path, refl_id=np.array([_Planted(marker)], dtype=object))
    else:
        path.write_bytes(evil_pickle_bytes(marker))
    return path


def _refused(load: Callable[[], object], marker: Path, match: str | None = None) -> str:
    with pytest.raises(XraisError) as info:
        load()
    message = str(info.value)
    assert "\n" not in message and message
    assert "weights_only" not in message, "the refusal repeats advice to load the file unsafely"
    if match:
        assert match in message, message
    assert not marker.exists(), "code from the file ran"
    return message


# loaders of one file each: (name, file name, kind of payload, loader)
def _load_training_state(p: Path) -> object:
    from xrais.train.state import load_training_state
    return load_training_state(p)


def _load_resonet(p: Path) -> object:
    from xrais.models.resonet_import import import_resonet
    return import_resonet(p, arch="resnet18", task="resolution")


def _load_pretrained(p: Path) -> object:
    from xrais.models import load_pretrained
    return load_pretrained(p)


def _load_integrator(p: Path) -> object:
    from xrais.models.variational import load_integrator
    return load_integrator(p)


def _read_shoeboxes(p: Path) -> object:
    from xrais.simulate.shoebox_io import read_shoeboxes
    return read_shoeboxes(p)


def _read_shard(p: Path) -> object:
    from xrais.io import read_shard
    return read_shard(p)


def _read_reflections(p: Path) -> object:
    from xrais.infer.reflections import read_reflections
    return read_reflections(p, space_group="P 1")


def _read_image(p: Path) -> object:
    from xrais.conditioning.readers.registry import read_image
    return read_image(p)


def _read_config(p: Path) -> object:
    from xrais.config_files import read_config_file
    return read_config_file(p)


def _read_results(p: Path) -> object:
    from xrais.infer.results import read_results
    return read_results(p)


SINGLE_FILE_LOADERS = [
    ("training state (xrais train --resume)", "last_state.pt", "torch", _load_training_state),
    ("training state, plain pickle", "state.pt", "pickle", _load_training_state),
    ("resonet weights", "nety_ep40.nn", "torch", _load_resonet),
    ("model checkpoint", "best.safetensors", "torch", _load_pretrained),
    ("integrator checkpoint", "integrator.safetensors", "torch", _load_integrator),
    ("shoebox file", "shoeboxes.h5", "pickle", _read_shoeboxes),
    ("dataset shard", "shard_00000.h5", "pickle", _read_shard),
    ("reflections HDF5", "refl.h5", "pickle", _read_reflections),
    ("reflections MTZ", "refl.mtz", "pickle", _read_reflections),
    ("CrystFEL stream", "run.stream", "pickle", _read_reflections),
    ("CBF image", "image.cbf", "pickle", _read_image),
    ("HDF5 image", "master.h5", "pickle", _read_image),
    ("config TOML", "config.toml", "pickle", _read_config),
    ("config JSON", "config.json", "pickle", _read_config),
    ("results table", "results.parquet", "pickle", _read_results),
    ("results HDF5", "results.h5", "pickle", _read_results),
]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("what,name,kind,load", SINGLE_FILE_LOADERS, ids=[c[0] for c in SINGLE_FILE_LOADERS])
def test_single_file_loaders_refuse_a_planted_pickle(tmp_path, marker, what, name, kind, load):
    path = _plant(tmp_path / name, marker, kind)
    _refused(lambda: load(path), marker)


def test_resonet_import_gives_its_own_advice(tmp_path, marker, capsys):
    from xrais.cli import main

    path = _plant(tmp_path / "nety_ep40.nn", marker, "torch")
    with pytest.raises(SystemExit) as info:
        main(["models", "import-resonet", str(path), "--arch", "resnet18", "--out", str(tmp_path / "m.safetensors")])
    err = " ".join(capsys.readouterr().err.split())
    assert info.value.code == 1 and not marker.exists()
    assert "never unpickles code" in err and "state_dict" in err
    assert "weights_only=False" not in err and "weights_only" not in err.replace("weights_only=True", "")
    assert not (tmp_path / "m.safetensors").exists()


def test_merge_state_refuses_a_planted_pickle(shared_data, tmp_path, marker):
    from xrais.infer.merge import MergeConfig, merge_table
    from xrais.infer.reflections import ReflectionSimulationConfig, ReflectionSimulator

    table = ReflectionSimulator(ReflectionSimulationConfig(structure_path=str(shared_data(STRUCTURE)), n_images=8,
                                                           d_min_A=5.0, seed=1)).table()
    state = _plant(tmp_path / "merged_merge_state.pt", marker, "torch")
    _refused(lambda: merge_table(table, MergeConfig(max_epochs=1, half_dataset_steps=0), state_path=state), marker,
             "never unpickles code")


def test_integrator_training_state_refuses_a_planted_pickle(tmp_path, marker):
    from xrais.simulate.shoeboxes import synthetic_shoeboxes
    from xrais.train.integrate import IntegrateTrainConfig, train_integrator

    state = _plant(tmp_path / "m.safetensors.train-state.pt", marker, "torch")
    _refused(lambda: train_integrator(synthetic_shoeboxes(32, shape=(1, 9, 9), seed=0),
                                      train_config=IntegrateTrainConfig(epochs=1, device="cpu"), state_path=state),
             marker, "never unpickles code")


# --- the pipeline's folder: checkpoint.pt and observations/chunk_*.npz -------------------------------

def _pipeline_config(shared_data, tmp_path: Path) -> Path:
    path = tmp_path / "pipeline.toml"
    path.write_text("\n".join([
        'source = "reflections"', "checkpoint_every_images = 4",
        "[reflections]", f'structure_path = "{shared_data(STRUCTURE)}"', "n_images = 8", "d_min_A = 5.0",
        "[merge]", "max_epochs = 2", "min_epochs = 1", "polish_epochs = 0", "half_dataset_steps = 0",
        "warmup_images = 4"]) + "\n")
    return path


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "MPI_", "HYDRA_"))}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def test_pipeline_refuses_a_planted_checkpoint(shared_data, tmp_path, marker):
    """The command ends with one line and exit 1: no code runs, no report of images it never made."""
    config = _pipeline_config(shared_data, tmp_path)
    out = tmp_path / "run"
    _plant(out / "checkpoint.pt", marker, "torch")
    proc = subprocess.run([sys.executable, "-m", "xrais.cli", "pipeline", "--config", str(config), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=_env())
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "checkpoint.pt" in err and "never unpickles code" in err and "Traceback" not in err
    assert "merged.mtz" not in proc.stdout and not (out / "merged.mtz").exists()
    assert not marker.exists()


def test_pipeline_refuses_a_planted_observation_chunk(shared_data, tmp_path, marker):
    from xrais.errors import DatasetError
    from xrais.infer.pipeline import load_pipeline_config, run_pipeline

    config = load_pipeline_config(_pipeline_config(shared_data, tmp_path))
    out = tmp_path / "run"
    run_pipeline(config, out, stop=threading.Event())
    chunk = sorted((out / "observations").glob("chunk_*.npz"))[0]
    _plant(chunk, marker, "npz")
    (out / "merged.mtz").unlink()              # a done run rewrites its files from the chunks
    message = _refused(lambda: run_pipeline(config, out), marker)
    assert chunk.name in message and "plain arrays" in message
    with pytest.raises(DatasetError):
        run_pipeline(config, out)
