"""``xrais evaluate``: predicted-vs-true plot and error table (resolution), confusion table and ROC (multi-lattice)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from typer.testing import CliRunner

from xrais.cli import app
from xrais.io import read_shard, write_shard
from xrais.train.evaluate import resolution_error_table, roc_curve


def _rows(path):
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_evaluate_writes_plot_and_error_table(learned_run, tiny_training_set, tmp_path):
    shard = sorted(tiny_training_set.glob("sim_r*.h5"))[-1]
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["evaluate", "--model", str(learned_run / "best.safetensors"), "--data",
                                      str(shard), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "mae_inv_d_per_A" in result.output and "all" in result.output
    assert (out / "predicted_vs_true.png").stat().st_size > 10_000
    preds = _rows(out / "predictions.csv")
    assert len(preds) == 32 and {r["quadrant"] for r in preds} == {"0", "1", "2", "3"}
    _, cols, _ = read_shard(shard, images=False)
    true = np.array([float(r["true_inv_d_per_A"]) for r in preds])
    np.testing.assert_allclose(true, cols["labels/inv_resolution_per_A"], rtol=1e-6)
    pred = np.array([float(r["pred_inv_d_per_A"]) for r in preds])
    table = _rows(out / "errors.csv")
    everything = table[-1]
    assert everything["bin"] == "all" and int(everything["n"]) == 32
    assert float(everything["mae_inv_d_per_A"]) == pytest.approx(np.mean(np.abs(pred - true)), rel=1e-5)
    assert float(everything["accuracy"]) == pytest.approx(np.mean(np.abs(pred - true) < 0.07))
    assert sum(int(r["n"]) for r in table[:-1]) == 32


def test_error_table_bins_by_true_resolution():
    true = 1 / np.array([1.2, 1.8, 1.9, 3.5])
    pred = true + np.array([0.01, -0.1, 0.0, 0.05])
    rows = resolution_error_table(true, pred)
    assert [r["bin"] for r in rows] == ["0–1.5 Å", "1.5–2 Å", "3–4 Å", "all"]
    assert [r["n"] for r in rows] == [1, 2, 1, 4]
    assert rows[1]["mae_inv_d_per_A"] == pytest.approx(0.05) and rows[1]["accuracy"] == 0.5
    assert rows[-1]["rmse_inv_d_per_A"] == pytest.approx(np.sqrt(np.mean(np.square([0.01, 0.1, 0.0, 0.05]))))
    assert rows[2]["mae_d_A"] == pytest.approx(abs(1 / (1 / 3.5 + 0.05) - 3.5))


def test_roc_curve_and_auc():
    fpr, tpr, auc = roc_curve(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert auc == pytest.approx(0.75)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert np.isnan(roc_curve(np.array([1, 1]), np.array([0.2, 0.3]))[2])  # one class: no curve


def test_evaluate_multilattice_confusion_and_roc(small_shard, tmp_path):
    import torch

    from xrais.models import build_model, save_checkpoint

    images, cols, _ = read_shard(small_shard)
    cols = {k: v for k, v in cols.items() if v.dtype.kind != "O"}
    cols["labels/n_lattices"] = np.tile([1, 2, 3, 1], len(images) // 4)
    shard = write_shard(tmp_path / "ml_00000.h5", images[:8], {k: v[:8] for k, v in cols.items()})
    torch.manual_seed(0)
    model = save_checkpoint(build_model("resnet18", "multilattice"), tmp_path / "ml.safetensors")
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["evaluate", str(shard), "--model", str(model), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "confusion" in result.output and "roc_auc" in result.output
    confusion = _rows(out / "confusion.csv")
    assert [r["true"] for r in confusion] == ["single", "multiple"]
    counts = [[int(r["predicted_single"]), int(r["predicted_multiple"])] for r in confusion]
    assert sum(counts[0]) == 4 and sum(counts[1]) == 4
    assert (out / "roc.png").stat().st_size > 10_000
    preds = _rows(out / "predictions.csv")
    assert [int(r["true_label"]) for r in preds] == [0, 1, 1, 0] * 2


def test_evaluate_needs_the_labels_of_its_task(learned_run, small_shard, tmp_path):
    images, cols, _ = read_shard(small_shard)
    cols = {k: v for k, v in cols.items() if k != "labels/inv_resolution_per_A" and v.dtype.kind != "O"}
    shard = write_shard(tmp_path / "nolabel.h5", images[:2], {k: v[:2] for k, v in cols.items()})
    result = CliRunner().invoke(app, ["evaluate", str(shard), "--model", str(learned_run), "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "nolabel.h5: expected column(s) labels/inv_resolution_per_A" in str(result.exception)
