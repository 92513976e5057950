"""Lighter checkpoints: weights stored in float16/bfloat16 load into the float32 model."""

from __future__ import annotations

import pytest
import torch

from xrais.errors import CheckpointError, ConfigError
from xrais.models import load_checkpoint_meta, load_pretrained, save_checkpoint

GEOM = torch.tensor([[200.0, 0.344, 1.0], [350.0, 0.688, 0.8]])


def _stored_dtypes(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {key: f.get_slice(key).get_dtype() for key in f.keys()}, dict(f.metadata())


def test_float16_halves_the_file_and_loads_as_float32_with_the_same_outputs(tmp_path, model_factory, quadrants):
    model = model_factory("resolution")
    full = save_checkpoint(model, tmp_path / "full.safetensors")
    half = save_checkpoint(model, tmp_path / "half.safetensors", weights_dtype="float16", epochs=2)
    ratio = half.stat().st_size / full.stat().st_size
    assert 0.45 < ratio < 0.55, ratio

    dtypes, meta = _stored_dtypes(half)
    assert meta["weights_dtype"] == "float16" and load_checkpoint_meta(half).weights_dtype == "float16"
    assert dtypes["backbone.conv1.weight"] == "F16" and dtypes["fc2.bias"] == "F16"
    counters = [k for k in dtypes if k.endswith("num_batches_tracked")]
    assert counters and all(dtypes[k] == "I64" for k in counters)  # integer buffers keep their dtype

    loaded = load_pretrained(half)
    assert loaded.weights_dtype == "float16" and loaded.provenance == {"epochs": 2}
    assert {v.dtype for k, v in loaded.state_dict().items() if v.is_floating_point()} == {torch.float32}
    x = torch.from_numpy(quadrants[:, 0, None])
    with torch.no_grad():
        want = model(x, GEOM)["inv_resolution_per_A"]
        got = loaded(x, GEOM)["inv_resolution_per_A"]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-3, atol=0.0)
    assert not torch.equal(got, want)  # the weights really were rounded


def test_bfloat16_and_float32_are_recorded(tmp_path, model_factory):
    model = model_factory("multilattice")
    bf16 = save_checkpoint(model, tmp_path / "bf16.safetensors", weights_dtype="bfloat16")
    assert _stored_dtypes(bf16)[0]["fc2.weight"] == "BF16"
    loaded = load_pretrained(bf16)
    assert loaded.weights_dtype == "bfloat16" and loaded.fc2.weight.dtype == torch.float32
    torch.testing.assert_close(loaded.fc2.weight, model.fc2.weight, rtol=1e-2, atol=0.0)
    plain = save_checkpoint(model, tmp_path / "plain.safetensors")
    assert load_checkpoint_meta(plain).weights_dtype == "float32"


def test_files_without_the_record_are_read_from_their_tensors(tmp_path, model_factory, rewrite_metadata):
    half = save_checkpoint(model_factory("multilattice"), tmp_path / "half.safetensors", weights_dtype="float16")
    old = rewrite_metadata(half, tmp_path / "old.safetensors", drop=("weights_dtype",))
    assert "weights_dtype" not in _stored_dtypes(old)[1]
    assert load_checkpoint_meta(old).weights_dtype == "float16"
    assert load_pretrained(old).fc2.weight.dtype == torch.float32


def test_bad_dtype_and_values_beyond_float16(tmp_path, model_factory):
    model = model_factory("multilattice")
    with pytest.raises(ConfigError, match="weights_dtype 'int8'"):
        save_checkpoint(model, tmp_path / "x.safetensors", weights_dtype="int8")
    with torch.no_grad():
        model.backbone.bn1.running_var[0] = 1e6
    with pytest.raises(CheckpointError, match=r"big\.safetensors: backbone\.bn1\.running_var does not fit in float16"):
        save_checkpoint(model, tmp_path / "big.safetensors", weights_dtype="float16")
    assert not (tmp_path / "big.safetensors").exists()
    save_checkpoint(model, tmp_path / "big.safetensors", weights_dtype="bfloat16")  # bfloat16 has the range
