"""Accuracy as XRAIS defines it, the metrics CSV, the plot and the TensorBoard scalars."""

from __future__ import annotations

import csv
import sys
import types

import torch

from xrais.train.metrics import TensorBoardLog, count_correct, plot_history, write_metrics_csv

ROWS = [{"epoch": e, "train_loss": 0.2 / e, "train_accuracy": 0.3 * e, "val_loss": 0.25 / e, "val_accuracy": 0.2 * e,
         "lr": 6e-3, "images_per_s": 4.0, "seconds": 30.0} for e in (1, 2, 3)]


def test_accuracy_is_xrais_definition():
    true = torch.tensor([0.5, 0.5, 0.5, 0.5])
    assert count_correct("resolution", torch.tensor([0.569, 0.431, 0.571, 0.3]), true) == 2  # |Δ(1/d)| < 0.07 Å⁻¹
    logits = torch.tensor([2.0, -0.5, 0.1, -3.0])
    assert count_correct("multilattice", logits, torch.tensor([1.0, 1.0, 0.0, 0.0])) == 2  # label at p = 0.5


def test_csv_and_plot(tmp_path):
    path = write_metrics_csv(ROWS + [{"epoch": 4, "train_loss": 0.01, "extra": 1}], tmp_path / "metrics.csv")
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[:8] == ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr",
                                 "images_per_s", "seconds"]
    assert rows[1]["val_loss"] == "0.125" and rows[3]["val_loss"] == "" and rows[3]["extra"] == "1"
    png = plot_history(ROWS, tmp_path / "training.png", task="resolution", best_epoch=3, resumed_at=[1])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(tmp_path.glob(".*.tmp"))


def test_tensorboard_scalars_when_installed(monkeypatch, tmp_path):
    written = []

    class FakeWriter:
        def __init__(self, log_dir, purge_step):
            self.purge_step = purge_step

        def add_scalar(self, tag, value, step):
            written.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            pass

    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    log = TensorBoardLog(tmp_path, purge_step=2)
    assert log.writer.purge_step == 2  # a resumed run drops the events of epochs it repeats
    log.log(ROWS[1])
    assert ("train/loss", 0.1, 2) in written and ("val/accuracy", 0.4, 2) in written
    assert not any(tag == "epoch" for tag, _, _ in written)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # not installed: nothing happens
    quiet = TensorBoardLog(tmp_path)
    quiet.log(ROWS[0])
    assert quiet.writer is None
