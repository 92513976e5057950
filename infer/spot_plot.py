"""A picture of one frame with its spots circled, for a person to look at (``xrais spots --png``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["draw_spots"]

#: Largest side, in pixels, of the picture of the image (larger images are max-pooled to fit).
_MAX_SIDE_PX = 1200


def _pooled(pixels: np.ndarray, mask: np.ndarray, block: int) -> np.ndarray:
    """Max-pool the valid pixels by ``block`` (masked pixels count as 0)."""
    values = np.where(mask, 0.0, np.asarray(pixels, dtype=np.float32))
    ns, nf = values.shape
    ps, pf = -(-ns // block) * block, -(-nf // block) * block
    padded = np.zeros((ps, pf), dtype=np.float32)
    padded[:ns, :nf] = values
    return padded.reshape(ps // block, block, pf // block, block).max(axis=(1, 3))


def draw_spots(image: Any, analysis: Any, path: str | Path) -> Path:
    """Write a PNG of ``image`` (square-root scale) with every spot circled.

    Spots that count for the hit call are circled in red, those on ice rings in cyan; the
    title gives the file, the spot count, d 5 %, the DISTL limit and the hit call.

    Parameters
    ----------
    image : DiffractionImage
    analysis : SpotAnalysis
        From :func:`xrais.infer.spots.analyze_image`.
    path : str or Path
        The PNG to write (written to a temporary name, then renamed).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import EllipseCollection

    path = Path(path)
    block = max(1, math.ceil(max(image.pixels.shape) / _MAX_SIDE_PX))
    shown = np.sqrt(np.clip(_pooled(image.pixels, image.mask, block), 0.0, None))
    valid = shown[shown > 0]
    top = float(np.percentile(valid, 99.5)) if valid.size else 1.0
    fig, ax = plt.subplots(figsize=(8, 8 * shown.shape[0] / shown.shape[1] + 0.6), dpi=120)
    ax.imshow(shown, cmap="gray_r", vmin=0.0, vmax=max(top, 1.0), interpolation="nearest",
              extent=(0, shown.shape[1] * block, shown.shape[0] * block, 0))
    spots = analysis.spots
    if len(spots):
        radius = 6.0 * block + 2.0 * np.sqrt(spots.n_pixels)
        colours = np.where(analysis.ice, "tab:cyan", np.where(analysis.counted, "tab:red", "tab:orange"))
        xy = np.column_stack([spots.fast_px, spots.slow_px])
        ax.add_collection(EllipseCollection(2 * radius, 2 * radius, 0.0, units="xy", offsets=xy,
                                            offset_transform=ax.transData, facecolors="none",
                                            edgecolors=list(colours), linewidths=0.8))
    bf, bs = image.beam_center_px
    if math.isfinite(bf) and math.isfinite(bs):
        ax.plot([bf], [bs], marker="+", color="tab:blue", markersize=10)
    res = analysis.resolution
    d5 = f"{res.d_5pct_A:.2f} Å" if math.isfinite(res.d_5pct_A) else "–"
    limit = f"{res.spot_resolution_A:.2f} Å" if math.isfinite(res.spot_resolution_A) else "–"
    ax.set_title(f"{image.label}: {len(spots)} spots ({int(analysis.ice.sum())} on ice rings), d 5 % {d5}, "
                 f"limit {limit}, {'hit' if analysis.hit else 'no hit'}", fontsize=9)
    ax.set_xlabel("fast (px)")
    ax.set_ylabel("slow (px)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path
