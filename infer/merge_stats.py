"""Quality statistics of a merge, per resolution shell and overall.

* CC½ — Pearson correlation between the intensities merged from two random halves of the
  images (here: two half-data-set models, see :func:`xrais.infer.merge.fit_half_datasets`).
* CCpred — Spearman rank correlation of predicted and observed intensities among one image's
  reflections, averaged over images (online-inference-structure-factors.txt, Fig. 3); reported
  for the held-out test images and for the training images.
* completeness — observed unique reflections / possible ones (systematic absences left out;
  with anomalous data, I(+) and I(−) of acentric reflections count separately).
* multiplicity — observations / observed unique reflections.
* CC to the true F and, for anomalous data, CC of ΔF_anom = F(+) − F(−) to the true ΔF (simulated data).

Shells hold equal numbers of possible reflections (reciprocalspaceship's ``bin_by_percentile``
over the complete list), numbered 0 (lowest resolution) … n − 1.

Examples
--------
>>> import numpy as np
>>> shells = np.array([0, 0, 0, 1, 1, 1])
>>> compute_cc_half(np.array([1., 2., 3., 1., 2., 3.]), np.array([1., 2., 4., 3., 2., 1.]), shells, 2).round(3).tolist()
[0.982, -1.0]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import reciprocalspaceship as rs
from scipy import stats as _scipy_stats

__all__ = [
    "make_shell_edges",
    "assign_shells",
    "compute_pearson_by_shell",
    "compute_cc_half",
    "compute_cc_pred",
    "compute_completeness",
    "compute_multiplicity",
    "make_statistics_table",
]

_MIN_PAIRS = 3


def make_shell_edges(d_possible_A: Any, n_shells: int) -> np.ndarray:
    """Shell edges (Å, descending, n_shells + 1 values) with equal numbers of the given reflections.

    Parameters
    ----------
    d_possible_A : array-like, shape (n,) — resolution of every possible unique reflection, Å.
    n_shells : int ≥ 1
    """
    d = np.asarray(d_possible_A, dtype=np.float64)
    n_shells = int(max(1, min(n_shells, len(d) // 2 if len(d) > 1 else 1)))
    _, edges = rs.utils.bin_by_percentile(d, bins=n_shells, ascending=False)
    return np.asarray(edges, dtype=np.float64)


def assign_shells(d_A: Any, edges: np.ndarray) -> np.ndarray:
    """Shell number (0 … n − 1, 0 at low resolution) of each resolution; values outside the edges
    join the nearest end shell."""
    d = np.clip(np.asarray(d_A, dtype=np.float64), edges.min(), edges.max())
    if d.size == 0:
        return np.zeros(0, dtype=np.int64)
    shell = np.asarray(rs.utils.assign_with_binedges(d, edges), dtype=np.int64)
    return np.clip(shell, 0, len(edges) - 2)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size < _MIN_PAIRS or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def compute_pearson_by_shell(x: Any, y: Any, shell: Any, n_shells: int) -> np.ndarray:
    """Pearson correlation of x and y within each shell (NaN where fewer than 3 finite pairs).

    Returns
    -------
    ndarray, shape (n_shells,)
    """
    x, y, shell = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64), np.asarray(shell)
    return np.array([_pearson(x[shell == s], y[shell == s]) for s in range(n_shells)])


def compute_cc_half(half1: Any, half2: Any, shell: Any, n_shells: int) -> np.ndarray:
    """CC½ per shell: Pearson correlation of the two halves' merged intensities.

    Parameters
    ----------
    half1, half2 : array-like, shape (n,) — merged intensity of each reflection from each half
        (NaN where a half did not observe it).
    shell : array-like, shape (n,), int
    n_shells : int

    Returns
    -------
    ndarray, shape (n_shells,)
    """
    return compute_pearson_by_shell(half1, half2, shell, n_shells)


def compute_cc_pred(predicted: Any, observed: Any, image: Any, shell: Any | None = None,
                    n_shells: int = 1) -> tuple[np.ndarray, float]:
    """CCpred: Spearman correlation of predicted and observed intensities within each image, averaged.

    Parameters
    ----------
    predicted, observed : array-like, shape (n,)
    image : array-like, shape (n,) — image of each observation.
    shell : array-like, shape (n,), optional — per-shell values average the (image, shell) groups.
    n_shells : int

    Returns
    -------
    per_shell : ndarray, shape (n_shells,) — NaN where no group has 3 or more observations.
    overall : float — mean over images of the whole image's correlation.
    """
    frame = pd.DataFrame({"p": np.asarray(predicted, dtype=np.float64), "o": np.asarray(observed, dtype=np.float64),
                          "image": np.asarray(image), "shell": np.zeros(len(predicted), dtype=np.int64)
                          if shell is None else np.asarray(shell)})

    def spearman(group: pd.DataFrame) -> float:
        if len(group) < _MIN_PAIRS or group["p"].nunique() < 2 or group["o"].nunique() < 2:
            return float("nan")
        return float(_scipy_stats.spearmanr(group["p"], group["o"]).statistic)

    per_image = [spearman(g) for _, g in frame.groupby("image", sort=False)]
    overall = float(np.nanmean(per_image)) if np.isfinite(per_image).any() else float("nan")
    per_shell = np.full(n_shells, np.nan)
    for s, g_shell in frame.groupby("shell", sort=True):
        values = [spearman(g) for _, g in g_shell.groupby("image", sort=False)]
        if np.isfinite(values).any() and 0 <= int(s) < n_shells:
            per_shell[int(s)] = float(np.nanmean(values))
    return per_shell, overall


def compute_completeness(observed: Any, shell: Any, n_shells: int) -> np.ndarray:
    """Fraction of the possible unique reflections observed, per shell.

    Parameters
    ----------
    observed : array-like, shape (R,), bool — whether each possible reflection was observed.
    shell : array-like, shape (R,) — its shell.
    """
    observed, shell = np.asarray(observed, dtype=bool), np.asarray(shell)
    total = np.bincount(shell, minlength=n_shells).astype(np.float64)
    seen = np.bincount(shell[observed], minlength=n_shells).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, seen / total, np.nan)


def compute_multiplicity(n_observations: Any, shell: Any, n_shells: int) -> np.ndarray:
    """Mean number of observations of the observed reflections, per shell.

    Parameters
    ----------
    n_observations : array-like, shape (R,), int — observations of each possible reflection.
    shell : array-like, shape (R,)
    """
    n = np.asarray(n_observations, dtype=np.float64)
    shell = np.asarray(shell)
    seen = n > 0
    total = np.bincount(shell[seen], weights=n[seen], minlength=n_shells)
    count = np.bincount(shell[seen], minlength=n_shells)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def make_statistics_table(edges: np.ndarray, columns: dict[str, tuple[np.ndarray, float]]) -> pd.DataFrame:
    """One row per shell plus an ``overall`` row.

    Parameters
    ----------
    edges : ndarray, shape (n + 1,) — shell edges, Å, descending.
    columns : name → (per-shell values (n,), overall value)
    """
    n = len(edges) - 1
    rows = {"shell": [str(s) for s in range(n)] + ["overall"],
            "d_max_A": list(edges[:-1]) + [float(edges[0])],
            "d_min_A": list(edges[1:]) + [float(edges[-1])]}
    for name, (per_shell, overall) in columns.items():
        rows[name] = list(np.asarray(per_shell, dtype=np.float64)) + [float(overall)]
    return pd.DataFrame(rows)
