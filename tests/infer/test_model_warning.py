"""``model_warning``: frames outside the geometry a model was trained on are flagged, never dropped;
``xrais infer`` without ``--model`` uses the shipped resolution model."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import pytest

from xrais.errors import CheckpointError, ConfigError
from xrais.infer import read_results
from xrais.infer.config import InferConfig
from xrais.infer.scoring import Scorer, describe_models, result_columns
from xrais.infer.work import FrameRef, WorkItem

TRAINED = {"detectors": ["pilatus6m"], "pixel_mm": [0.172], "distance_mm": [200.0, 300.0],
           "wavelength_A": [0.9, 1.1], "untilted": True}


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory) -> Path:
    """An untrained ResNet-18 resolution checkpoint that says it was trained on TRAINED (float16, as shipped)."""
    import torch

    from xrais.models import build_model, save_checkpoint

    torch.manual_seed(3)
    model = build_model("resnet18", "resolution", input_std=64.0)
    return save_checkpoint(model, tmp_path_factory.mktemp("trained") / "resolution.safetensors",
                           weights_dtype="float16", training_geometry=TRAINED)


@pytest.fixture(scope="module")
def frames(tmp_path_factory, helpers):
    """Two one-frame NXmx files of 0.172 mm pixels at λ 0.9795 Å: 250 mm (inside) and 850 mm (outside)."""
    folder = tmp_path_factory.mktemp("frames")
    return {d: helpers.write_nxmx(folder / f"at_{d}mm.h5", helpers.make_frames(1, seed=d), distance_mm=float(d))
            for d in (250, 850)}


def _score(models, paths, **options):
    config = InferConfig(models=tuple(str(m) for m in models), spots=False, quadrants=1, batch_size=4,
                         device="cpu", **options)
    scorer = Scorer(config, describe_models(config.models), device="cpu")
    return scorer, scorer.score_item(WorkItem(tuple(FrameRef(str(p)) for p in paths)))


def test_inside_has_no_warning_outside_names_the_field_and_keeps_the_values(trained_checkpoint, frames):
    scorer, rows = _score([trained_checkpoint], [frames[250], frames[850]])
    assert "model_warning" in scorer.columns
    inside, outside = rows
    assert inside["error"] == outside["error"] == ""
    assert inside["model_warning"] == ""
    assert outside["model_warning"] == "distance 850 mm outside the trained 200–300 mm"
    assert math.isfinite(inside["resolution_q0_A"]) and math.isfinite(outside["resolution_q0_A"])
    # the run's own overrides are what is compared
    _, (row,) = _score([trained_checkpoint], [frames[250]], wavelength_A=1.5)
    assert row["model_warning"] == "wavelength 1.5 Å outside the trained 0.9–1.1 Å"


def test_several_models_get_prefixed_warning_columns_and_models_without_a_geometry_none(
        trained_checkpoint, checkpoints, frames):
    infos = describe_models([str(trained_checkpoint), str(checkpoints["multilattice"])])
    assert [i.warning_column for i in infos] == ["m1_model_warning", ""]
    assert infos[0].training_geometry.to_dict() == TRAINED and infos[1].training_geometry is None
    assert infos[0].to_dict()["training_geometry"] == TRAINED and "training_geometry" not in infos[1].to_dict()
    columns = result_columns(infos, 1)
    assert columns.index("m1_model_warning") == columns.index("mean_resolution_A") + 1
    assert "model_warning" not in columns
    _, (row,) = _score([trained_checkpoint, checkpoints["multilattice"]], [frames[850]])
    assert row["m1_model_warning"].startswith("distance 850 mm") and math.isfinite(row["multilattice_probability"])
    _, (row,) = _score([checkpoints["resolution"]], [frames[850]])
    assert not any(k.endswith("model_warning") for k in row)  # no training geometry: no column


def test_a_malformed_training_geometry_is_a_checkpoint_error(tmp_path):
    import torch

    from xrais.models import build_model, save_checkpoint

    torch.manual_seed(0)
    path = save_checkpoint(build_model("resnet18", "multilattice"), tmp_path / "odd.safetensors",
                           training_geometry={"distance_mm": [300.0, 200.0]})
    with pytest.raises(CheckpointError, match=r"odd\.safetensors: training_geometry\.distance_mm: expected \[low, high\]"):
        describe_models([str(path)])


def test_the_real_tilted_pilatus_2m_frame_is_flagged(trained_checkpoint, shared_data):
    from xrais.conditioning import read_image

    path = shared_data("real/pilatus2m/l-cyst_01_00001.cbf")
    image = read_image(path)
    assert image.detector.tilt_deg(image.beam) == pytest.approx(30.0, abs=1e-6)  # Detector_2theta 30.0
    _, (row,) = _score([trained_checkpoint], [path])
    assert row["error"] == "" and math.isfinite(row["min_resolution_A"])
    parts = row["model_warning"].split("; ")
    assert "detector tilted 2θ=30°" in parts
    assert "distance 160 mm outside the trained 200–300 mm" in parts  # header: 0.16000 m
    assert not any(p.startswith("pixel") for p in parts)  # 0.172 mm, as trained


# --- the default model of `xrais infer`


@pytest.fixture
def shipped(tmp_path, monkeypatch, trained_checkpoint) -> Path:
    folder = tmp_path / "pretrained"
    folder.mkdir()
    file = folder / "resolution.safetensors"
    shutil.copy(trained_checkpoint, file)
    (folder / "index.json").write_text(json.dumps({"resolution": {
        "file": file.name, "sha256": hashlib.sha256(file.read_bytes()).hexdigest(), "description": "test"}}))
    monkeypatch.setattr("xrais.models.checkpoint.shipped_models_dir", lambda: folder)
    return file


def test_infer_without_model_uses_the_shipped_resolution_model(shipped, frames, tmp_path, helpers):
    args = ["-q", "1", "--device", "cpu", "--format", "csv"]
    result = helpers.cli("infer", str(frames[850]), *args, "--out", str(tmp_path / "default"))
    assert result.exit_code == 0, result.output
    assert f"model: resolution, shipped with xrais ({shipped})" in result.output.replace("\n", "")
    rows = read_results(tmp_path / "default")
    assert rows["min_resolution_A"].notna().all() and (rows["models"] == "resolution").all()
    assert rows["n_spots"].notna().all() and "hit" in rows  # the spot columns stay
    assert rows["model_warning"].tolist() == ["distance 850 mm outside the trained 200–300 mm"]

    result = helpers.cli("infer", str(frames[250]), *args, "--no-model", "--out", str(tmp_path / "spots"))
    assert result.exit_code == 0, result.output
    assert "shipped with xrais" not in result.output
    rows = read_results(tmp_path / "spots")
    assert "min_resolution_A" not in rows and "model_warning" not in rows and (rows["models"] == "").all()
    assert rows["n_spots"].notna().all()


def test_without_a_shipped_model_infer_gives_the_spot_columns_as_before(frames, tmp_path, helpers):
    result = helpers.cli("infer", str(frames[250]), "--device", "cpu", "--format", "csv", "--out", str(tmp_path / "o"))
    assert result.exit_code == 0 and "shipped with xrais" not in result.output
    rows = read_results(tmp_path / "o")
    assert "min_resolution_A" not in rows and rows["n_spots"].notna().all()


def test_model_and_no_model_exclude_each_other(frames, tmp_path, checkpoints, helpers):
    with pytest.raises(ConfigError, match="--no-model and --model"):
        helpers.cli("infer", str(frames[250]), "--model", str(checkpoints["resolution"]), "--no-model",
                    "--out", str(tmp_path / "o"))
