"""Fine-tuning: a run that starts from a checkpoint's weights."""

from __future__ import annotations

import pytest
import torch

from xrais.errors import CheckpointError
from xrais.models import load_pretrained
from xrais.models.checkpoint import compute_sha256
from xrais.train.config import make_train_config
from xrais.train.ddp import DistInfo
from xrais.train.loop import Trainer


def _trainer(tmp_path, data, start, **kwargs):
    cfg = make_train_config(data=(str(data),), out=str(tmp_path / "run"), epochs=1, batch_size=8, workers=0,
                            device="cpu", init_weights=str(start), **{"arch": "resnet18", **kwargs})
    return Trainer(cfg, DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu")))


def test_the_run_starts_from_the_checkpoint(learned_run, small_shard, tmp_path):
    start = learned_run / "best.safetensors"
    trainer = _trainer(tmp_path, small_shard, start)
    expected = load_pretrained(start).state_dict()
    for name, value in trainer.bare.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0, msg=name)
    assert trainer.data_info["init_weights"] == {"checkpoint": str(start), "sha256": compute_sha256(start)}
    assert "output_init" not in trainer.data_info  # the checkpoint's output layers are kept as trained


def test_another_architecture_is_refused(learned_run, small_shard, tmp_path):
    with pytest.raises(CheckpointError, match="resnet34"):
        _trainer(tmp_path, small_shard, learned_run / "best.safetensors", arch="resnet34")
