"""``xrais models list|info|export|import-resonet`` through the real app."""

from __future__ import annotations

import shutil

import onnx
import pytest
import torch
import torchvision
from typer.testing import CliRunner

from xrais.cli import app
from xrais.errors import CheckpointError, ConfigError
from xrais.models import load_checkpoint_meta

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=True)


def test_list_shows_builders_and_checkpoints_in_the_models_dir(checkpoint, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    shutil.copy(checkpoint, store / "reso18-v1.safetensors")
    result = invoke("models", "list", "--models-dir", str(store))
    assert result.exit_code == 0, result.output
    assert "resolution_resnet50" in result.output and "multilattice_resnet34" in result.output
    assert "reso18-v1" in result.output


def test_info_shows_arch_task_heads_params_and_provenance(checkpoint):
    result = invoke("models", "info", str(checkpoint))
    assert result.exit_code == 0, result.output
    out = result.output
    for text in ("resnet18", "resolution", "b_factor_A2", "11,783,542", "provenance.epochs", "mae_per_A",
                 "inv_resolution_per_A"):
        assert text in out


def test_info_of_a_bad_file_is_a_checkpoint_error(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x00" * 64)
    result = invoke("models", "info", str(bad))
    assert result.exit_code != 0 and isinstance(result.exception, CheckpointError)
    assert "broken.safetensors" in str(result.exception)


def test_export_torchscript(checkpoint, tmp_path):
    out = tmp_path / "model.pt"
    result = invoke("models", "export", str(checkpoint), "--format", "torchscript", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert out.is_file() and "images, geometry" in result.output


def test_export_onnx_by_name(checkpoint, tmp_path, monkeypatch):
    store = tmp_path / "store"
    store.mkdir()
    shutil.copy(checkpoint, store / "reso.safetensors")
    monkeypatch.setenv("XRAIS_MODELS", str(store))
    out = tmp_path / "reso.onnx"
    result = invoke("models", "export", "reso", "--format", "onnx", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert [o.name for o in onnx.load(str(out)).graph.output] == ["inv_resolution_per_A", "b_factor_A2"]


def test_export_unknown_format(checkpoint, tmp_path):
    result = invoke("models", "export", str(checkpoint), "--format", "tflite", "--out", str(tmp_path / "x"))
    assert isinstance(result.exception, ConfigError) and "tflite" in str(result.exception)


def test_import_resonet(tmp_path):
    net = torchvision.models.resnet18(weights=None)
    net.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    state = {f"resnet.{k}": v for k, v in net.state_dict().items()}
    state.update({"fc1.weight": torch.randn(100, 1000), "fc1.bias": torch.randn(100),
                  "fc2.weight": torch.randn(1, 100), "fc2.bias": torch.randn(1)})
    torch.save(state, tmp_path / "weights.nn")
    out = tmp_path / "imported.safetensors"
    result = invoke("models", "import-resonet", str(tmp_path / "weights.nn"), "--arch", "resnet18",
                    "--task", "multilattice", "--out", str(out))
    assert result.exit_code == 0, result.output
    meta = load_checkpoint_meta(out)
    assert (meta.config.arch, meta.config.task) == ("resnet18", "multilattice")
    assert meta.num_params == 11_783_441 and "11,783,441" in result.output
    result = invoke("models", "import-resonet", str(tmp_path / "weights.nn"), "--arch", "resnet50",
                    "--out", str(tmp_path / "x.safetensors"))
    assert isinstance(result.exception, CheckpointError) and "resnet50" in str(result.exception)


@pytest.mark.parametrize("argv", [["models"], ["models", "--help"]])
def test_help(argv):
    result = invoke(*argv)
    assert "import-resonet" in result.output and "export" in result.output
