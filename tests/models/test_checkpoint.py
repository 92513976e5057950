"""Checkpoints: one safetensors file that rebuilds the model alone; every bad file is a CheckpointError."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from xrais._version import __version__
from xrais.errors import CheckpointError
from xrais.models import (
    CHECKPOINT_FORMAT,
    build_model,
    list_checkpoints,
    load_checkpoint_meta,
    load_pretrained,
    save_checkpoint,
)

GEOM = torch.tensor([[200.0, 0.344, 1.0], [350.0, 0.688, 0.8]])


def outputs(model, quadrants):
    with torch.no_grad():
        return {k: v.numpy() for k, v in model(torch.from_numpy(quadrants[:, 0, None]), GEOM).items()}


def test_round_trip_gives_identical_outputs_config_and_provenance(checkpoint, quadrants, model_factory):
    original = model_factory("resolution", heads=("b_factor_A2",))
    loaded = load_pretrained(checkpoint)
    assert not loaded.training and loaded.config == original.config
    assert loaded.provenance == {"epochs": 3, "metrics": {"mae_per_A": 0.01}, "data": ["shard_00000.h5"]}
    a, b = outputs(original, quadrants), outputs(loaded, quadrants)
    assert a.keys() == b.keys() == {"inv_resolution_per_A", "b_factor_A2"}
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    meta = load_checkpoint_meta(checkpoint)
    assert meta.num_params == original.num_params() and meta.xrais_version == __version__
    assert [p.name for p in checkpoint.parent.iterdir()] == ["best.safetensors"]  # no temporary left behind


def test_file_holds_the_documented_metadata(checkpoint):
    from safetensors import safe_open

    with safe_open(str(checkpoint), framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert meta["format"] == CHECKPOINT_FORMAT == "xrais-model-1"
    assert json.loads(meta["config"])["arch"] == "resnet18"
    assert json.loads(meta["provenance"])["epochs"] == 3
    assert int(meta["num_params"]) == 11_783_542 and meta["xrais_version"] == __version__
    assert "backbone.conv1.weight" in keys and "fc2.bias" in keys and "heads.b_factor_A2.weight" in keys


def test_loads_in_a_fresh_process_from_the_file_alone(checkpoint, quadrants, tmp_path):
    np.save(tmp_path / "q.npy", quadrants[:, 0, None])
    code = (
        "import sys, numpy as np, torch\n"
        "from xrais.models import load_pretrained\n"
        "m = load_pretrained(sys.argv[1])\n"
        "x = torch.from_numpy(np.load(sys.argv[2]))\n"
        "g = torch.tensor([[200.0, 0.344, 1.0], [350.0, 0.688, 0.8]])\n"
        "with torch.no_grad():\n"
        "    np.save(sys.argv[3], m(x, g)['inv_resolution_per_A'].numpy())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "XRAIS_MODELS"}
    subprocess.run([sys.executable, "-c", code, str(checkpoint), str(tmp_path / "q.npy"), str(tmp_path / "out.npy")],
                   check=True, cwd=tmp_path, env=env, timeout=120)
    expected = outputs(load_pretrained(checkpoint), quadrants)["inv_resolution_per_A"]
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)


def test_saves_through_ddp_and_compile_wrappers(tmp_path, quadrants, model_factory):
    model = model_factory("multilattice")

    class Wrapper(torch.nn.Module):  # the attribute layout of DistributedDataParallel / torch.compile
        def __init__(self, inner, attr):
            super().__init__()
            setattr(self, attr, inner)

    wrapped = Wrapper(Wrapper(model, "_orig_mod"), "module")
    path = save_checkpoint(wrapped, tmp_path / "m.safetensors")
    loaded = load_pretrained(path)
    with torch.no_grad():
        x = torch.from_numpy(quadrants[0, :, None])
        torch.testing.assert_close(loaded(x)["multilattice_logit"], model(x)["multilattice_logit"], rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="XraisResNet"):
        save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "x.safetensors")


def test_sha256_verified_when_given(checkpoint):
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert load_pretrained(checkpoint, sha256=digest.upper()) is not None
    with pytest.raises(CheckpointError, match=r"best\.safetensors.*SHA-256 mismatch"):
        load_pretrained(checkpoint, sha256="0" * 64)


def test_wrong_format_is_refused(checkpoint, tmp_path, rewrite_metadata):
    bad = rewrite_metadata(checkpoint, tmp_path / "other.safetensors", format="someone-else-1")
    with pytest.raises(CheckpointError, match=r"other\.safetensors: expected format 'xrais-model-1'"):
        load_pretrained(bad)
    plain = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file

    save_file(build_model("resnet18", "resolution").state_dict(), str(plain))
    with pytest.raises(CheckpointError, match=r"plain\.safetensors: expected format"):
        load_pretrained(plain)


def test_incompatible_version_names_both_versions(checkpoint, tmp_path, rewrite_metadata):
    major, minor, *_ = __version__.split(".")
    other = f"{major}.{int(minor) + 1}.0"
    bad = rewrite_metadata(checkpoint, tmp_path / "newer.safetensors", xrais_version=other)
    with pytest.raises(CheckpointError, match=rf"newer\.safetensors: written by xrais {other}, this is xrais {__version__}"):
        load_pretrained(bad)
    patch = rewrite_metadata(checkpoint, tmp_path / "patch.safetensors", xrais_version=f"{major}.{minor}.99")
    assert load_pretrained(patch).config.arch == "resnet18"


def test_task_and_arch_mismatch(checkpoint, tmp_path, rewrite_metadata):
    with pytest.raises(CheckpointError, match=r"best\.safetensors: expected a multilattice model"):
        load_pretrained(checkpoint, task="multilattice")
    with pytest.raises(CheckpointError, match=r"best\.safetensors: expected a resnet50 model"):
        load_pretrained(checkpoint, arch="resnet50")
    cfg = json.loads(load_checkpoint_meta(checkpoint).config.model_dump_json())
    cfg["arch"] = "resnet34"  # config says resnet34, weights are resnet18
    lying = rewrite_metadata(checkpoint, tmp_path / "lying.safetensors", config=json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"lying\.safetensors: weights do not match.*missing"):
        load_pretrained(lying)
    cfg["arch"] = "resnet20"
    unknown = rewrite_metadata(checkpoint, tmp_path / "unknown.safetensors", config=json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"unknown\.safetensors: invalid model config.*resnet20"):
        load_pretrained(unknown)


def test_head_shape_mismatch_and_unexpected_keys(checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    meta = load_checkpoint_meta(checkpoint)
    from safetensors import safe_open

    with safe_open(str(checkpoint), framework="pt") as f:
        raw_meta = dict(f.metadata())
    state = load_file(str(checkpoint))
    state["heads.b_factor_A2.weight"] = torch.zeros(2, 100)
    save_file(state, str(tmp_path / "shape.safetensors"), metadata=raw_meta)
    with pytest.raises(CheckpointError, match=r"shape\.safetensors: .*other shape.*heads\.b_factor_A2\.weight"):
        load_pretrained(tmp_path / "shape.safetensors")
    state = load_file(str(checkpoint))
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "extra.safetensors"), metadata=raw_meta)
    with pytest.raises(CheckpointError, match=r"extra\.safetensors: .*unexpected \(extra\.weight\)"):
        load_pretrained(tmp_path / "extra.safetensors")
    assert meta.config.heads == ("b_factor_A2",)


def test_truncated_or_foreign_file(checkpoint, tmp_path):
    data = checkpoint.read_bytes()
    for name, content in [("cut.safetensors", data[: len(data) // 2]), ("head.safetensors", data[:100]),
                          ("text.safetensors", b"not a checkpoint at all")]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
            load_pretrained(tmp_path / name)


def test_folder_picks_best_then_model_then_single(tmp_path, checkpoint):
    folder = checkpoint.parent
    assert load_pretrained(folder).checkpoint_path.name == "best.safetensors"
    single = tmp_path / "single"
    single.mkdir()
    (single / "run7.safetensors").write_bytes(checkpoint.read_bytes())
    assert load_pretrained(single).checkpoint_path.name == "run7.safetensors"
    (single / "run8.safetensors").write_bytes(checkpoint.read_bytes())
    with pytest.raises(CheckpointError, match=r"single: expected best\.safetensors.*run7\.safetensors, run8"):
        load_pretrained(single)
    (single / "model.safetensors").write_bytes(checkpoint.read_bytes())
    assert load_pretrained(single).checkpoint_path.name == "model.safetensors"


def test_names_resolve_in_models_dir_env_and_cache(tmp_path, monkeypatch, checkpoint):
    store = tmp_path / "store"
    store.mkdir()
    (store / "reso18.safetensors").write_bytes(checkpoint.read_bytes())
    assert load_pretrained("reso18", models_dir=store).config.task == "resolution"
    monkeypatch.setenv("XRAIS_MODELS", str(store))
    assert load_pretrained("reso18").checkpoint_path == store / "reso18.safetensors"
    assert list_checkpoints() == {"reso18": store / "reso18.safetensors"}
    monkeypatch.delenv("XRAIS_MODELS")
    cache = tmp_path / "xdg" / "xrais" / "models"
    cache.mkdir(parents=True)
    (cache / "ml.safetensors").write_bytes(checkpoint.read_bytes())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert load_pretrained("ml").checkpoint_path == cache / "ml.safetensors"
    with pytest.raises(CheckpointError, match=r"nope: no such checkpoint.*available: ml"):
        load_pretrained("nope")


def test_sidecar_and_index_digests_are_checked(tmp_path, checkpoint):
    store = tmp_path / "store"
    store.mkdir()
    data = checkpoint.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    (store / "good.safetensors").write_bytes(data)
    (store / "good.sha256").write_text(f"{digest}  good.safetensors\n")
    assert load_pretrained("good", models_dir=store) is not None
    (store / "bad.safetensors").write_bytes(data)
    (store / "bad.sha256").write_text("f" * 64 + "\n")
    with pytest.raises(CheckpointError, match=r"bad\.safetensors: SHA-256 mismatch"):
        load_pretrained("bad", models_dir=store)
    (store / "index.json").write_text(json.dumps({
        "resolution-v1": {"file": "good.safetensors", "sha256": digest},
        "broken-v1": {"file": "good.safetensors", "sha256": "1" * 64},
    }))
    assert load_pretrained("resolution-v1", models_dir=store).checkpoint_path.name == "good.safetensors"
    with pytest.raises(CheckpointError, match="SHA-256 mismatch"):
        load_pretrained("broken-v1", models_dir=store)
    assert set(list_checkpoints(store)) == {"good", "bad", "resolution-v1", "broken-v1"}
