"""The strip chart of a results table: resolution and multi-lattice probability per image.

As the Interceptor display (xrais.txt Figure 16B) and Figure 8: one row of panels per data
set, with the image number across. Panels, where the results have the values:

* resolution (Å): the minimum (red) and the mean (blue) over the quadrants of each image and,
  where spots were found, the model-free limit from them (``spot_resolution_A``, green
  triangles) on the same axes: the Figure 8 view, where model and classical estimate disagree;
* below it, where spots were found, ``n_spots`` per image (hits filled, others open);
* per-quadrant resolution (Å): one colour per quadrant, showing their spread (Figure 17);
* multi-lattice probability: mean over the scored quadrants (black), each quadrant (grey).

A data set is the frames of files in one folder whose names differ only by a trailing image
number (``thau_3_2_0001.cbf.bz2`` … → ``thau_3_2``; EIGER ``x_master.h5`` and
``x_data_000001.h5`` → ``x``). Images are numbered from 1 in file-name order, then by frame.
Rows with an error are marked as grey ticks along the bottom of the resolution panel.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from xrais.errors import DatasetError
from xrais.infer.work import natural_key

__all__ = ["dataset_key", "add_image_numbers", "plot_results"]

log = logging.getLogger(__name__)

_COMPRESSION = {".gz", ".bz2", ".xz"}
_EIGER = re.compile(r"(?P<prefix>.+)_(master|data_\d+)$")
_TRAILING_NUMBER = re.compile(r"[_\-.]?\d+$")
_QUADRANT_COLOURS = ("tab:red", "tab:blue", "tab:green", "tab:orange")


def dataset_key(path: str) -> str:
    """The data set a file belongs to: its folder and its name without the image number.

    Examples
    --------
    >>> dataset_key("/data/thau/thau_3_2_0007.cbf.bz2")
    '/data/thau/thau_3_2'
    >>> dataset_key("/data/x/lyso_1_data_000002.h5"), dataset_key("/data/x/lyso_1_master.h5")
    ('/data/x/lyso_1', '/data/x/lyso_1')
    >>> dataset_key("/s/image000044")
    '/s/image'
    """
    p = Path(path)
    name = p.name
    stem, suffix = (name[: -len(Path(name).suffix)], Path(name).suffix) if Path(name).suffix else (name, "")
    if suffix.lower() in _COMPRESSION:
        name = stem
        stem = name[: -len(Path(name).suffix)] if Path(name).suffix else name
    elif suffix and suffix[1:].isdigit():  # "frame.0001": the suffix is the number
        stem = name
    m = _EIGER.fullmatch(stem)
    if m is not None:
        stem = m["prefix"]
    else:
        stripped = _TRAILING_NUMBER.sub("", stem)
        stem = stripped or stem
    return str(p.parent / stem)


def add_image_numbers(df: Any) -> Any:
    """Add ``dataset`` (see :func:`dataset_key`) and ``image_number`` (from 1 within each data
    set, by file name then frame) to a results DataFrame; returns a new, sorted frame."""
    df = df.copy()
    df["dataset"] = [dataset_key(f) for f in df["file"]]
    order = sorted(range(len(df)), key=lambda i: (df["dataset"].iat[i], natural_key(str(df["file"].iat[i])),
                                                  int(df["frame"].iat[i])))
    df = df.iloc[order].reset_index(drop=True)
    df["image_number"] = df.groupby("dataset").cumcount() + 1
    return df


def _finite(values: Any) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    return np.where(np.isfinite(a), a, np.nan)


def _draw_spot_counts(row_axes: Any, above: Any, x: np.ndarray, sub: Any, ok: Any, *, last: bool) -> None:
    """``n_spots`` per image in the first axes of the row below a data set (hits filled); the rest left blank."""
    from matplotlib.ticker import MaxNLocator

    ax = row_axes[0]
    n = _finite(sub["n_spots"][ok])
    hit = np.asarray(sub["hit"][ok]) == 1
    ax.plot(x[ok][hit], n[hit], "s", ms=3, color="tab:green", label="hit")
    ax.plot(x[ok][~hit], n[~hit], "s", ms=3, mfc="none", color="tab:green", label="no hit")
    ax.set_ylabel("spots")
    ax.set_ylim(bottom=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.sharex(above)
    if last:
        ax.set_xlabel("image number")
    for other in row_axes[1:]:
        other.axis("off")


def plot_results(results: Any, out_png: str | Path, *, max_datasets: int = 24, dpi: int = 100) -> dict[str, Any]:
    """Draw the strip chart of a results folder, file or DataFrame into a PNG.

    Parameters
    ----------
    results : str, Path or pandas.DataFrame
        A results folder or table (see :func:`~xrais.infer.results.read_results`), or rows.
    out_png : str or Path
        The image to write (parent folders are created).
    max_datasets : int
        Draw at most this many data sets (the largest ones), noted in the title.
    dpi : int
        Resolution of the PNG.

    Returns
    -------
    dict
        ``path`` (the PNG), ``datasets`` (labels drawn, in order), ``panels`` (names of the
        panel columns) and ``images`` (rows drawn).

    Raises
    ------
    DatasetError
        No rows, or neither resolution nor multi-lattice values.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from xrais.infer.results import read_results

    df = results if hasattr(results, "columns") else read_results(results)
    if len(df) == 0:
        raise DatasetError(f"{results if not hasattr(results, 'columns') else 'results'}: no rows to plot")
    res_q = sorted((c for c in df.columns if re.fullmatch(r"resolution_q\d+_A", c)), key=natural_key)
    ml_q = sorted((c for c in df.columns if re.fullmatch(r"multilattice_q\d+_probability", c)), key=natural_key)
    panels = []
    has_spots = "n_spots" in df.columns
    if "min_resolution_A" in df.columns or has_spots:
        panels.append("resolution")
        if len(res_q) > 1:
            panels.append("quadrants")
    if "multilattice_probability" in df.columns:
        panels.append("multilattice")
    if not panels:
        raise DatasetError("results: no resolution, spot or multi-lattice columns to plot")
    df = add_image_numbers(df)
    sizes = df.groupby("dataset").size().sort_values(ascending=False)
    keys = sorted(sizes.index[:max_datasets], key=natural_key)
    n_rows, n_cols = len(keys), len(panels)
    per_set = 2 if has_spots else 1
    height = (2.4 + 1.4 * (per_set - 1)) * n_rows + 0.6
    fig, grid = plt.subplots(n_rows * per_set, n_cols, figsize=(4.8 * n_cols, height),
                             squeeze=False, constrained_layout=True,
                             gridspec_kw={"height_ratios": [2.4, 1.4] * n_rows if has_spots else None})
    axes = grid[::per_set]
    for r, key in enumerate(keys):
        sub = df[df["dataset"] == key]
        ok = sub["error"].astype(str) == ""
        x = sub["image_number"].to_numpy()
        label = f"{Path(key).parent.name}/{Path(key).name}"
        for c, panel in enumerate(panels):
            ax = axes[r][c]
            if panel == "resolution":
                if "min_resolution_A" in sub.columns:
                    ax.plot(x[ok], _finite(sub["min_resolution_A"][ok]), "o", ms=3, color="tab:red", label="min")
                    ax.plot(x[ok], _finite(sub["mean_resolution_A"][ok]), "o", ms=3, color="tab:blue", label="mean")
                if has_spots:
                    ax.plot(x[ok], _finite(sub["spot_resolution_A"][ok]), "^", ms=4, color="tab:green",
                            label="spots (DISTL)")
                if (~ok).any():
                    ax.plot(x[~ok], np.zeros((~ok).sum()), "|", ms=8, color="0.5", label="error",
                            transform=ax.get_xaxis_transform())
                ax.set_ylabel("resolution (Å)")
                n_bad = int((~ok).sum())
                ax.set_title(f"{label}: {int(ok.sum())} images" + (f", {n_bad} with errors" if n_bad else ""),
                             fontsize=9, loc="left")
            elif panel == "quadrants":
                for i, col in enumerate(res_q):
                    ax.plot(x[ok], _finite(sub[col][ok]), ".", ms=3, color=_QUADRANT_COLOURS[i % 4], label=f"q{i}")
                ax.set_ylabel("per quadrant (Å)")
            else:
                for col in ml_q if len(ml_q) > 1 else []:
                    ax.plot(x[ok], _finite(sub[col][ok]), ".", ms=2, color="0.65")
                ax.plot(x[ok], _finite(sub["multilattice_probability"][ok]), "o", ms=3, color="black", label="mean")
                ax.set_ylim(-0.03, 1.03)
                ax.set_ylabel("multi-lattice P")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if r == n_rows - 1 and not has_spots:
                ax.set_xlabel("image number")
            if r == 0 and panel != "multilattice":
                ax.legend(fontsize=7, loc="best", markerscale=1.5)
        if has_spots:
            _draw_spot_counts(grid[r * per_set + 1], axes[r][0], x, sub, ok, last=r == n_rows - 1)
    note = f" (the {n_rows} largest of {len(sizes)} data sets)" if len(sizes) > n_rows else ""
    fig.suptitle(f"xrais inference: {len(df)} rows{note}", fontsize=10)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return {"path": out, "datasets": [f"{Path(k).parent.name}/{Path(k).name}" for k in keys], "panels": panels,
            "images": int(df["dataset"].isin(keys).sum())}
