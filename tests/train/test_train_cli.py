"""``xrais train`` through the command line (typer's CliRunner on ``xrais.cli.app``), and its errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from xrais.cli import app
from xrais.errors import ConfigError, DatasetError
from xrais.io import write_shard
from xrais.train.config import TrainConfig, make_train_config

runner = CliRunner()


def test_train_command_runs_and_resumes(small_shard, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data", str(small_shard), "--out", str(out), "--arch", "resnet18", "--epochs", "1",
            "--batch-size", "8", "--val-fraction", "0.25", "--workers", "0", "--heads", "b_factor_A2",
            "--augment", "--lr-schedule", "cosine"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "epoch 1/1: train loss" in result.output and "best epoch 1" in result.output
    for name in ("best.safetensors", "last.safetensors", "metrics.csv", "training.png", "state/last.pt"):
        assert (out / name).is_file(), name
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert header == "epoch,train_loss,train_accuracy,val_loss,val_accuracy,lr,images_per_s,seconds"
    from xrais.models import load_checkpoint_meta

    meta = load_checkpoint_meta(out / "best.safetensors")
    assert meta.config.heads == ("b_factor_A2",) and meta.provenance["train_config"]["augment"] is True
    assert meta.provenance["split"] == {"train_rows": 24, "val_rows": 8, "train_images": 6, "val_images": 2}
    trained = meta.provenance["training_geometry"]  # what inference compares a frame against
    assert trained["pixel_mm"] == [0.172] and trained["untilted"] is True and trained["detectors"] == ["pilatus6m"]
    assert 200.0 <= trained["distance_mm"][0] <= trained["distance_mm"][1] <= 300.0
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "already done" in again.output
    changed = runner.invoke(app, args[:-1] + ["constant"])
    assert changed.exit_code == 1 and "lr_schedule: 'cosine' → 'constant'" in str(changed.exception)


def test_train_help_lists_the_options():
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--data", "--task", "--arch", "--out", "--epochs", "--batch-size", "--lr", "--momentum",
                   "--weight-decay", "--loss", "--heads", "--dropout", "--val-fraction", "--workers", "--seed",
                   "--amp", "--channels-last", "--compile", "--augment", "--device", "--checkpoint-every-s",
                   "--allow-outside-manifest"):
        assert option in result.output, option


def test_table2_defaults_by_task():
    res = TrainConfig(data=("x",), out="o")
    ml = TrainConfig(data=("x",), out="o", task="multilattice")
    assert (res.lr, res.momentum, res.weight_decay, res.loss) == (6e-3, 0.9, 0.0, "mae")
    assert (ml.lr, ml.momentum, ml.weight_decay, ml.loss) == (1.04e-3, 0.9983, 2.5e-4, "bce")
    assert res.val_fraction == 0.1 and res.arch == "resnet50"
    assert TrainConfig.model_validate_json(ml.model_dump_json()) == ml
    with pytest.raises(ConfigError, match="loss 'bce' does not fit task 'resolution'"):
        make_train_config(data=("x",), out="o", loss="bce")
    with pytest.raises(ConfigError, match="arch: .*unknown architecture 'resnet9'"):
        make_train_config(data=("x",), out="o", arch="resnet9")


@pytest.mark.parametrize("case", ["missing_head", "wrong_schema", "empty", "too_few", "zero_batch", "no_data"])
def test_bad_input_is_one_clear_error(case, small_shard, tmp_path):
    args = ["train", "--out", str(tmp_path / "run"), "--arch", "resnet18", "--epochs", "1", "--batch-size", "8",
            "--workers", "0"]
    if case == "missing_head":
        args += [str(small_shard), "--heads", "labels/not_a_label"]
        error, text = DatasetError, f"{small_shard}: expected column(s) labels/not_a_label for task 'resolution'"
    elif case == "wrong_schema":
        bad = write_shard(tmp_path / "bad.h5", np.zeros((3, 512, 256), np.uint8), {"labels/x": np.zeros(3)})
        args += [str(bad)]
        error, text = DatasetError, "bad.h5: expected 'images' of shape (N, 512, 512) uint8, found uint8 (3, 512, 256)"
    elif case == "empty":
        (tmp_path / "set").mkdir()
        (tmp_path / "set" / "manifest.json").write_text(json.dumps({"shards": []}))
        args += [str(tmp_path / "set")]
        error, text = DatasetError, "set: expected at least one shard, found none"
    elif case == "too_few":
        args += [str(small_shard), "--batch-size", "64"]
        error, text = DatasetError, "28 training quadrants in 1 shard(s), fewer than one global batch of 64"
    elif case == "zero_batch":
        args += [str(small_shard), "--batch-size", "0"]
        error, text = ConfigError, "batch_size: Input should be greater than or equal to 1"
    else:
        error, text = ConfigError, "xrais train: give the data"
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert isinstance(result.exception, error) and text in str(result.exception)
    assert "\n" not in str(result.exception)
    assert not (tmp_path / "run" / "state").exists()
