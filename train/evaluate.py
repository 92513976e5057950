"""Scoring a trained model on held-out shards: predictions, error tables and plots.

Outputs in ``OUT/``:

* ``predictions.csv``: one row per quadrant (shard, row, quadrant, true and predicted values).
* resolution: ``errors.csv``, per bin of the true d (Å) and for all rows: the number of
  quadrants, the MAE of 1/d (Å⁻¹) and of d (Å), the RMSE of 1/d (Å⁻¹) and XRAIS's accuracy
  (|Δ(1/d)| < 0.07 Å⁻¹); ``predicted_vs_true.png`` (1/d and d, with the ±0.07 Å⁻¹ band).
* multi-lattice: ``confusion.csv`` (true × predicted label at probability 0.5) and
  ``errors.csv`` (accuracy, precision, recall, ROC AUC); ``roc.png`` (ROC curve and the
  probability histograms of both classes).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from xrais.train.data import ShardDataset, resolve_data, scan_shards
from xrais.train.metrics import RESOLUTION_TOLERANCE_PER_A

__all__ = ["Evaluation", "evaluate", "resolution_error_table", "roc_curve", "D_BIN_EDGES_A"]

#: Edges of the resolution bins of the error table, d in Å.
D_BIN_EDGES_A: tuple[float, ...] = (0.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, float("inf"))


@dataclass
class Evaluation:
    """What :func:`evaluate` found and wrote.

    Attributes
    ----------
    task : str
    model_path : Path
    n_quadrants : int
    table : list of dict
        The rows of ``errors.csv`` (and, for multi-lattice, ``confusion`` separately).
    confusion : ndarray, shape (2, 2), int, or None
        ``[[TN, FP], [FN, TP]]`` (multi-lattice).
    files : dict of str to Path
        Written files by kind (``predictions``, ``errors``, ``plot``, ``confusion``).
    """

    task: str
    model_path: Path
    n_quadrants: int
    table: list[dict[str, Any]]
    confusion: np.ndarray | None = None
    files: dict[str, Path] = field(default_factory=dict)


def resolution_error_table(true_inv_d: np.ndarray, pred_inv_d: np.ndarray,
                           edges_A: Sequence[float] = D_BIN_EDGES_A) -> list[dict[str, Any]]:
    """Errors per bin of the true resolution, and for all rows (last row, ``bin`` = "all").

    Parameters
    ----------
    true_inv_d, pred_inv_d : ndarray, shape (N,)
        True and predicted 1/d, Å⁻¹. A prediction ≤ 0 has no finite d and is left out of the
        MAE of d (its 1/d errors count).
    edges_A : sequence of float
        Bin edges of the true d, Å, increasing; empty bins are left out.

    Returns
    -------
    list of dict
        Keys ``bin``, ``n``, ``mae_inv_d_per_A``, ``mae_d_A``, ``rmse_inv_d_per_A``, ``accuracy``.
    """
    true_inv_d = np.asarray(true_inv_d, dtype=np.float64)
    pred_inv_d = np.asarray(pred_inv_d, dtype=np.float64)
    d_true = 1.0 / true_inv_d
    d_pred = np.where(pred_inv_d > 0, 1.0 / np.where(pred_inv_d > 0, pred_inv_d, 1.0), np.nan)

    def summary(mask: np.ndarray, name: str) -> dict[str, Any]:
        err = pred_inv_d[mask] - true_inv_d[mask]
        d_err = np.abs(d_pred[mask] - d_true[mask])
        return {"bin": name, "n": int(mask.sum()), "mae_inv_d_per_A": float(np.mean(np.abs(err))),
                "mae_d_A": float(np.nanmean(d_err)) if np.isfinite(d_err).any() else float("nan"),
                "rmse_inv_d_per_A": float(np.sqrt(np.mean(err * err))),
                "accuracy": float(np.mean(np.abs(err) < RESOLUTION_TOLERANCE_PER_A))}

    rows = []
    for lo, hi in zip(edges_A[:-1], edges_A[1:]):
        mask = (d_true >= lo) & (d_true < hi)
        if mask.any():
            rows.append(summary(mask, f"{lo:g}–{hi:g} Å" if np.isfinite(hi) else f"≥ {lo:g} Å"))
    rows.append(summary(np.ones(len(true_inv_d), dtype=bool), "all"))
    return rows


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """False- and true-positive rates over all thresholds, and the area under the curve.

    Returns
    -------
    fpr, tpr : ndarray, shape (K,)
        From (0, 0) to (1, 1).
    auc : float
        NaN when only one class is present.
    """
    labels = np.asarray(labels).astype(bool)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    s, y = np.asarray(scores)[order], labels[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp, fp = np.cumsum(y)[distinct], np.cumsum(~y)[distinct]
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return np.array([0.0, 1.0]), np.array([0.0, 1.0]), float("nan")
    fpr, tpr = np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos]
    return fpr, tpr, float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def _write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    return path


def _plot_resolution(true_inv_d: np.ndarray, pred_inv_d: np.ndarray, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.5))
    lo, hi = 0.0, float(max(true_inv_d.max(), np.nanmax(pred_inv_d), 0.1)) * 1.05
    grid = np.linspace(lo, hi, 50)
    a.fill_between(grid, grid - RESOLUTION_TOLERANCE_PER_A, grid + RESOLUTION_TOLERANCE_PER_A, color="0.9",
                   label="±0.07 Å⁻¹")
    a.plot(grid, grid, "k-", lw=1)
    a.plot(true_inv_d, pred_inv_d, ".", ms=4, color="tab:blue")
    a.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="true 1/d (Å⁻¹)", ylabel="predicted 1/d (Å⁻¹)")
    a.legend(loc="upper left", fontsize=8)
    ok = pred_inv_d > 0
    d_true, d_pred = 1 / true_inv_d[ok], 1 / pred_inv_d[ok]
    top = float(np.percentile(np.r_[d_true, d_pred], 99)) * 1.1 if ok.any() else 1.0
    b.plot([0, top], [0, top], "k-", lw=1)
    b.plot(d_true, d_pred, ".", ms=4, color="tab:blue")
    b.set(xlim=(0, top), ylim=(0, top), xlabel="true d (Å)", ylabel="predicted d (Å)")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.set_aspect("equal")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_roc(labels: np.ndarray, prob: np.ndarray, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fpr, tpr, auc = roc_curve(labels, prob)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.5))
    a.plot(fpr, tpr, "-", color="tab:blue", label=f"AUC = {auc:.3f}")
    a.plot([0, 1], [0, 1], "k:", lw=1)
    a.set(xlabel="false-positive rate", ylabel="true-positive rate", xlim=(0, 1), ylim=(0, 1))
    a.legend(loc="lower right")
    bins = np.linspace(0, 1, 21)
    b.hist(prob[labels < 0.5], bins=bins, alpha=0.6, label="one lattice")
    b.hist(prob[labels >= 0.5], bins=bins, alpha=0.6, label="several lattices")
    b.axvline(0.5, color="k", lw=1)
    b.set(xlabel="predicted probability of several lattices", ylabel="quadrants")
    b.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def evaluate(
    model: str | os.PathLike[str],
    data: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    batch_size: int = 16,
    device: str = "auto",
    workers: int = 0,
    allow_outside_manifest: bool = False,
) -> Evaluation:
    """Score every quadrant of ``data`` with ``model`` and write tables and plots to ``out``.

    Parameters
    ----------
    model : path or name
        A checkpoint file, a training output folder (its ``best.safetensors``) or a model name.
    data : sequence of path
        Shards, manifests or folders (see :func:`~xrais.train.data.resolve_data`).
    out : path
        Output folder (created).
    batch_size : int
        Quadrants per forward pass.
    device : {"auto", "cpu", "cuda"}
    workers : int
        DataLoader worker processes.
    allow_outside_manifest : bool
        Read shards that a manifest names outside its own folder.

    Returns
    -------
    Evaluation

    Raises
    ------
    CheckpointError
        The model cannot be loaded.
    DatasetError
        Shards without the labels the model's task needs, or no rows.
    """
    from xrais.models import load_pretrained
    from xrais.train.ddp import pick_device

    dev = pick_device(device)
    net = load_pretrained(model, device=dev)
    task = net.config.task
    files = resolve_data(data, allow_outside_manifest=allow_outside_manifest)
    table = scan_shards(files, task)
    dataset = ShardDataset(table)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                         pin_memory=dev.type == "cuda")
    preds = []
    with torch.no_grad():
        for batch in loader:
            out_ = net(batch["image"].to(dev).float(), batch["geometry"].to(dev))
            preds.append(out_[net.config.output_name].float().cpu().numpy())
    dataset.close()
    pred = np.concatenate(preds).astype(np.float64)
    true = table.target.astype(np.float64)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = Evaluation(task=task, model_path=Path(getattr(net, "checkpoint_path", model)),
                        n_quadrants=len(true), table=[])
    title = f"{result.model_path.name} on {len(files)} shard(s), {len(true)} quadrants"
    per_row = [{"shard": table.files[f].name, "row": int(r), "quadrant": int(q)}
               for f, r, q in zip(table.file_id, table.row, table.quadrant)]
    if task == "resolution":
        for row, t, p in zip(per_row, true, pred):
            row.update(true_inv_d_per_A=t, pred_inv_d_per_A=p, true_d_A=1 / t, pred_d_A=1 / p if p > 0 else "")
        result.table = resolution_error_table(true, pred)
        result.files["plot"] = _plot_resolution(true, pred, out_dir / "predicted_vs_true.png", title)
    else:
        prob = 1.0 / (1.0 + np.exp(-pred))
        label = prob > 0.5
        for row, t, p in zip(per_row, true, prob):
            row.update(true_label=int(t), probability=p, pred_label=int(p > 0.5))
        conf = np.array([[np.sum(~label & (true < 0.5)), np.sum(label & (true < 0.5))],
                         [np.sum(~label & (true >= 0.5)), np.sum(label & (true >= 0.5))]], dtype=np.int64)
        tn, fp, fn, tp = conf.ravel()
        _, _, auc = roc_curve(true, prob)
        result.confusion = conf
        result.table = [{"n": int(conf.sum()), "accuracy": float((tp + tn) / conf.sum()),
                         "precision": float(tp / (tp + fp)) if tp + fp else float("nan"),
                         "recall": float(tp / (tp + fn)) if tp + fn else float("nan"), "roc_auc": auc}]
        result.files["confusion"] = _write_csv(
            [{"true": name, "predicted_single": int(conf[i, 0]), "predicted_multiple": int(conf[i, 1])}
             for i, name in enumerate(("single", "multiple"))], out_dir / "confusion.csv")
        result.files["plot"] = _plot_roc(true, prob, out_dir / "roc.png", title)
    result.files["predictions"] = _write_csv(per_row, out_dir / "predictions.csv")
    result.files["errors"] = _write_csv(result.table, out_dir / "errors.csv")
    return result
