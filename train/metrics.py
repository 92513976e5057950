"""Training metrics: the per-epoch CSV, TensorBoard scalars (when installed) and the loss/accuracy plot.

Accuracy is XRAIS's (xrais.txt Figure 6): for resolution the fraction of images whose 1/d is
within 0.07 Å⁻¹ of the truth; for multi-lattice the fraction with the correct label (logit
above 0, i.e. probability above 0.5).

The CSV and the plot are rewritten whole from the run's history after every epoch (a
temporary file renamed into place), so after a kill and resume they hold each epoch once.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

from torch import Tensor

__all__ = ["METRIC_COLUMNS", "RESOLUTION_TOLERANCE_PER_A", "count_correct", "write_metrics_csv", "plot_history",
           "TensorBoardLog"]

log = logging.getLogger(__name__)

#: Columns of ``metrics.csv``; losses are means per image, seconds per epoch (training + validation).
METRIC_COLUMNS: tuple[str, ...] = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr",
                                   "images_per_s", "seconds")
#: |Δ(1/d)| below which a resolution prediction counts as correct (xrais.txt, Figure 6A), Å⁻¹.
RESOLUTION_TOLERANCE_PER_A = 0.07


def count_correct(task: str, prediction: Tensor, target: Tensor) -> Tensor:
    """How many predictions are correct, as a 0-d float tensor.

    Parameters
    ----------
    task : {"resolution", "multilattice"}
    prediction : Tensor, shape (B,)
        1/d in Å⁻¹, or the multi-lattice logit.
    target : Tensor, shape (B,)
        True 1/d in Å⁻¹, or 0/1.
    """
    prediction, target = prediction.detach().float(), target.float()
    if task == "resolution":
        return ((prediction - target).abs() < RESOLUTION_TOLERANCE_PER_A).sum().float()
    return ((prediction > 0).float() == target).sum().float()


def _atomic_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_metrics_csv(history: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write the rows of ``history`` (one dict per epoch) as CSV with :data:`METRIC_COLUMNS` first."""
    path = Path(path)
    extra = [k for row in history for k in row if k not in METRIC_COLUMNS]
    columns = list(METRIC_COLUMNS) + list(dict.fromkeys(extra))
    tmp = _atomic_path(path)
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    os.replace(tmp, path)
    return path


def plot_history(
    history: Sequence[dict[str, Any]],
    path: str | os.PathLike[str],
    *,
    task: str,
    best_epoch: int | None = None,
    resumed_at: Sequence[int] = (),
) -> Path:
    """Loss and accuracy against epoch, training and held-out images (as xrais.txt Figure 6).

    Training values are a line, held-out values black markers; a solid vertical line marks the
    epoch of ``best.safetensors`` and dotted ones the epochs where a killed run was resumed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    path = Path(path)
    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    what = {"loss": "MAE of 1/d (Å⁻¹)" if task == "resolution" else "loss",
            "accuracy": "accuracy (|Δ1/d| < 0.07 Å⁻¹)" if task == "resolution" else "accuracy (correct label)"}
    for ax, key in zip(axes, ("loss", "accuracy")):
        train = [row.get(f"train_{key}") for row in history]
        val = [row.get(f"val_{key}") for row in history]
        ax.plot(epochs, train, "-", color="tab:blue", label="training images")
        if any(v is not None and not math.isnan(v) for v in val):
            ax.plot(epochs, [math.nan if v is None else v for v in val], "o", color="black", ms=4,
                    label="held-out images")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="tab:red", lw=1, label=f"best (epoch {best_epoch})")
        for i, e in enumerate(resumed_at):
            ax.axvline(e + 0.5, color="grey", lw=1, ls=":", label="resumed" if i == 0 else None)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylabel(what[key] if key == "accuracy" or task == "resolution" else "BCE loss")
        ax.grid(alpha=0.3)
    axes[1].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"{task} training")
    fig.tight_layout()
    tmp = _atomic_path(path)
    fig.savefig(tmp, dpi=100, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    os.replace(tmp, path)
    return path


class TensorBoardLog:
    """Per-epoch scalars for TensorBoard in ``log_dir``, when the ``tensorboard`` package is installed.

    Without it every method does nothing. ``purge_step`` drops events of epochs a resumed run
    repeats.
    """

    def __init__(self, log_dir: str | os.PathLike[str], purge_step: int | None = None) -> None:
        self.writer: Any = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.info("tensorboard is not installed; metrics go to metrics.csv only")
            return
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def log(self, row: dict[str, Any]) -> None:
        """Add one epoch's metrics (every numeric column but ``epoch``)."""
        if self.writer is None:
            return
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and not math.isnan(value):
                group = key.replace("train_", "train/").replace("val_", "val/")
                self.writer.add_scalar(group, value, row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

