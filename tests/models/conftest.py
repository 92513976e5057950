"""Fixtures for the model tests: small (ResNet-18) models and checkpoints, metadata surgery."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from xrais.models import build_model, save_checkpoint


@pytest.fixture(autouse=True)
def _isolated_models_dir(monkeypatch, tmp_path):
    """Never read or write the user's real model cache, nor the models shipped with xrais (a test that wants
    shipped models points ``shipped_models_dir`` at a folder of its own)."""
    monkeypatch.delenv("XRAIS_MODELS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr("xrais.models.checkpoint.shipped_models_dir", lambda: tmp_path / "no_shipped_models")


@pytest.fixture
def quadrants() -> np.ndarray:
    """Two images × two conditioned quadrants, uint8, with a few bright 'spots'."""
    rng = np.random.default_rng(7)
    q = rng.integers(0, 12, size=(2, 2, 512, 512), dtype=np.uint8)
    q[:, :, 100:104, 200:204] = 200
    return q


def make_model(task: str = "resolution", **kwargs: Any) -> torch.nn.Module:
    """A ResNet-18 model with a fixed seed, in eval mode, with normalisation typical of shards."""
    torch.manual_seed(0)
    kwargs.setdefault("input_mean", 8.0)
    kwargs.setdefault("input_std", 20.0)
    return build_model("resnet18", task, **kwargs).eval()


@pytest.fixture
def model_factory() -> Callable[..., torch.nn.Module]:
    return make_model


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """A saved ResNet-18 resolution checkpoint with one extra head and some provenance."""
    model = make_model("resolution", heads=("b_factor_A2",))
    return save_checkpoint(model, tmp_path / "ckpt" / "best.safetensors", epochs=3, metrics={"mae_per_A": 0.01},
                           data=[Path("shard_00000.h5")])


def _rewrite_metadata(src: Path, dst: Path, drop: tuple[str, ...] = (), **changes: str) -> Path:
    """Copy a checkpoint with some metadata entries changed or dropped."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
    meta.update(changes)
    for key in drop:
        meta.pop(key, None)
    save_file(load_file(str(src)), str(dst), metadata=meta)
    return dst


@pytest.fixture
def rewrite_metadata() -> Callable[..., Path]:
    """``rewrite_metadata(src, dst, drop=(), **changes)``: copy a checkpoint with other metadata."""
    return _rewrite_metadata
