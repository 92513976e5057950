"""Models shipped inside the package: names fall back to them, the user's folder wins, digests are checked."""

from __future__ import annotations

import hashlib
import math
import json
import shutil
import tomllib
from importlib.resources import files
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xrais.cli import app
from xrais.errors import CheckpointError
from xrais.models import checkpoint as ckpt
from xrais.models import load_pretrained, resolve_checkpoint, save_checkpoint, shipped_checkpoints
from xrais.models.training_geometry import TrainingGeometry

ROOT = Path(__file__).resolve().parents[2]


def _ship(folder: Path, source: Path, name: str = "resolution", sha256: str | None = None, **extra) -> Path:
    folder.mkdir(exist_ok=True)
    file = folder / f"{name}.safetensors"
    shutil.copy(source, file)
    digest = hashlib.sha256(file.read_bytes()).hexdigest() if sha256 is None else sha256
    index = json.loads((folder / "index.json").read_text()) if (folder / "index.json").exists() else {}
    index[name] = {"file": file.name, "sha256": digest, "description": f"{name} for tests", **extra}
    (folder / "index.json").write_text(json.dumps(index))
    return file


@pytest.fixture
def shipped(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "pretrained"
    folder.mkdir()
    (folder / "index.json").write_text("{}")
    monkeypatch.setattr(ckpt, "shipped_models_dir", lambda: folder)
    return folder


def test_a_name_found_only_in_the_shipped_folder_loads(shipped, checkpoint):
    file = _ship(shipped, checkpoint)
    model = load_pretrained("resolution")
    assert model.checkpoint_path == file and model.config.task == "resolution"
    path, digest = resolve_checkpoint("resolution")
    assert path == file and digest == hashlib.sha256(file.read_bytes()).hexdigest()
    assert set(shipped_checkpoints()) == {"resolution"}
    assert shipped_checkpoints()["resolution"].description == "resolution for tests"


def test_the_user_folder_wins_over_the_shipped_one(shipped, checkpoint, tmp_path, model_factory, monkeypatch):
    _ship(shipped, checkpoint)
    user = tmp_path / "user"
    save_checkpoint(model_factory("multilattice"), user / "resolution.safetensors")
    assert load_pretrained("resolution", models_dir=user).config.task == "multilattice"
    monkeypatch.setenv("XRAIS_MODELS", str(user))
    assert load_pretrained("resolution").checkpoint_path == user / "resolution.safetensors"
    monkeypatch.setenv("XRAIS_MODELS", str(tmp_path / "empty"))
    assert load_pretrained("resolution").checkpoint_path == shipped / "resolution.safetensors"


def test_a_digest_mismatch_in_the_shipped_index_names_the_file(shipped, checkpoint):
    file = _ship(shipped, checkpoint, sha256="0" * 64)
    with pytest.raises(CheckpointError, match=r"resolution\.safetensors: SHA-256 mismatch, expected 0{64}"):
        load_pretrained("resolution")
    with pytest.raises(CheckpointError, match=r"resolution\.safetensors: SHA-256 mismatch"):
        load_pretrained(file)  # the shipped file named by its path is checked against the index too


def test_a_shipped_entry_needs_its_digest_and_its_file(shipped, checkpoint):
    _ship(shipped, checkpoint, sha256="")
    with pytest.raises(CheckpointError, match=r"lists resolution\.safetensors without its sha256"):
        load_pretrained("resolution")
    (shipped / "index.json").write_text(json.dumps({"gone": {"file": "gone.safetensors", "sha256": "1" * 64}}))
    with pytest.raises(CheckpointError, match=r"lists gone\.safetensors, which does not exist"):
        load_pretrained("gone")
    shutil.copy(checkpoint, shipped / "loose.safetensors")  # a file the index does not list is not shipped
    with pytest.raises(CheckpointError, match="loose: no such checkpoint"):
        load_pretrained("loose")


def test_not_found_names_both_places(shipped, checkpoint, tmp_path):
    _ship(shipped, checkpoint)
    user = tmp_path / "user"
    user.mkdir()
    shutil.copy(checkpoint, user / "mine.safetensors")
    with pytest.raises(CheckpointError) as info:
        load_pretrained("nope", models_dir=user)
    text = str(info.value)
    assert text.startswith("nope: no such checkpoint")
    assert f"in {user} (available: mine)" in text and f"shipped with xrais in {shipped} (available: resolution)" in text


def test_models_list_prints_the_shipped_table(shipped, checkpoint, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["models", "list", "--models-dir", str(tmp_path / "user")])
    assert result.exit_code == 0, result.output
    assert "no models shipped with xrais" in result.output
    _ship(shipped, checkpoint)
    result = runner.invoke(app, ["models", "list", "--models-dir", str(tmp_path / "user")], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "shipped with xrais" in result.output and "resolution for tests" in result.output
    size = f"{(shipped / 'resolution.safetensors').stat().st_size / 1e6:.1f}"
    assert "resolution.safetensors" in result.output and size in result.output


def test_the_packaged_folder_is_consistent():
    """What the package ships (nothing yet, or the real models): listed in pyproject, each file
    present, of its digest, at most 25 MB, loadable, and with a valid training geometry."""
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert package_data["xrais.models"] == ["pretrained/*.json", "pretrained/*.safetensors"]
    folder = Path(str(files("xrais.models") / "pretrained"))
    index = json.loads((folder / "index.json").read_text(encoding="utf-8"))
    assert isinstance(index, dict)
    for name, entry in index.items():
        file = folder / entry["file"]
        assert file.is_file(), name
        assert hashlib.sha256(file.read_bytes()).hexdigest() == entry["sha256"], name
        assert file.stat().st_size <= 25_000_000 and entry.get("description"), name
        model = load_pretrained(file, sha256=entry["sha256"])
        TrainingGeometry.from_dict(model.provenance["training_geometry"], where=file.name)


def _packaged_index() -> dict:
    folder = Path(str(files("xrais.models") / "pretrained"))
    return json.loads((folder / "index.json").read_text(encoding="utf-8"))


_REFERENCED = sorted(name for name, entry in _packaged_index().items() if "reference" in entry)


@pytest.mark.parametrize("name", _REFERENCED)
def test_a_packaged_model_repeats_its_recorded_outputs_in_a_fresh_process(name, shared_data, tmp_path):
    """By name, offline, in a new interpreter (no user models folder): the recorded 1/d of its reference
    real frame, to float32 rounding; every quadrant finite."""
    import os
    import subprocess
    import sys

    reference = _packaged_index()[name]["reference"]
    frame = shared_data(reference["frame"])
    code = ("import json, sys\n"
            "from xrais.conditioning import read_image\n"
            "from xrais.models import load_pretrained\n"
            "from xrais.models.predict import predict\n"
            f"model = load_pretrained({name!r})\n"
            "inv = predict(model, read_image(sys.argv[1])).inv_resolution_per_A[0]\n"
            "print(json.dumps([float(v) for v in inv]))\n")
    env = {**os.environ, "XRAIS_MODELS": str(tmp_path / "no_user_models"), "HF_HUB_OFFLINE": "1",
           "NO_PROXY": "*", "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    done = subprocess.run([sys.executable, "-c", code, str(frame)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    inv = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(math.isfinite(v) for v in inv)
    assert inv == pytest.approx(reference["inv_resolution_per_A"], abs=2e-5)
