"""ONNX and TorchScript exports give the model's outputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from xrais.errors import ConfigError
from xrais.models import ModelConfig
from xrais.models.export import export_model, export_onnx, export_torchscript

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")


def reference(model, images, geometry=None):
    with torch.no_grad():
        return {k: v.numpy() for k, v in model(images, geometry).items()}


@pytest.fixture
def inputs(quadrants):
    images = torch.from_numpy(quadrants.reshape(4, 1, 512, 512)[:3]).float()
    geometry = torch.tensor([[200.0, 0.344, 1.0], [250.0, 0.344, 0.9], [300.0, 0.688, 1.2]])
    return images, geometry


def test_onnx_resolution_matches_torch_with_a_dynamic_batch(tmp_path, model_factory, inputs):
    model = model_factory("resolution", heads=("b_factor_A2",))
    path = export_onnx(model, tmp_path / "reso.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images", "geometry"]
    assert [o.name for o in session.get_outputs()] == ["inv_resolution_per_A", "b_factor_A2"]
    images, geometry = inputs  # batch 3; the export was traced with batch 2
    got = session.run(None, {"images": images.numpy(), "geometry": geometry.numpy()})
    ref = reference(model, images, geometry)
    for value, name in zip(got, ["inv_resolution_per_A", "b_factor_A2"]):
        assert value.shape == (3,)
        np.testing.assert_allclose(value, ref[name], rtol=1e-4, atol=1e-4)
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert ModelConfig.model_validate_json(props["xrais_config"]) == model.config
    assert not any(p.name.endswith(".data") for p in tmp_path.iterdir())  # one self-contained file


def test_onnx_multilattice_takes_images_only(tmp_path, model_factory, inputs):
    model = model_factory("multilattice")
    path = export_model(model, tmp_path / "ml.onnx", format="onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    (logit,) = session.run(None, {"images": inputs[0][:1].numpy()})
    np.testing.assert_allclose(logit, reference(model, inputs[0][:1])["multilattice_logit"], rtol=1e-4, atol=1e-4)


def test_torchscript_matches_and_carries_the_config(tmp_path, model_factory, inputs):
    model = model_factory("resolution", heads=("b_factor_A2",))
    path = export_torchscript(model, tmp_path / "reso.pt")
    extra = {"xrais_config.json": ""}
    loaded = torch.jit.load(str(path), _extra_files=extra)
    assert ModelConfig.model_validate_json(extra["xrais_config.json"]) == model.config
    images, geometry = inputs
    with torch.no_grad():
        got = loaded(images, geometry)
    ref = reference(model, images, geometry)
    assert set(got) == set(ref)
    for name in ref:
        np.testing.assert_allclose(got[name].numpy(), ref[name], rtol=1e-4, atol=1e-4)
    with pytest.raises(Exception, match="geometry"):
        loaded(images)


def test_unknown_format(tmp_path, model_factory):
    with pytest.raises(ConfigError, match="onnx, torchscript"):
        export_model(model_factory("multilattice"), tmp_path / "x", format="tflite")
