"""The dispersion spot finder in plain NumPy/SciPy: the reference that checks the Numba kernel.

The same algorithm as :func:`xrais.infer.spots.find_spots`, written from its definition with
whole-array operations (it shares no code with ``infer/spot_kernel.py``):

1. Over the valid pixels of each pixel's (2k_s+1)×(2k_f+1) window, clipped to the image (only
   pixels inside the image count), the count n, the sum Σx and the sum of squares Σx² are box
   sums of the valid-pixel indicator, of the counts and of their squares with masked and NaN
   pixels set to 0. The box sums are separable ``scipy.ndimage.correlate1d`` passes with a box
   of ones, ``mode="constant", cval=0`` (pixels outside the image add nothing). A direct box
   sum keeps integer counts exact in float64; ``uniform_filter``'s running mean does not, and
   then ties such as ``x = μ + 3√μ`` at μ = 1 fall either way.
2. A valid pixel is strong when n ≥ ``min_count``, μ = Σx/n > 0, x > ``global_threshold``,
   σ²/μ > gain·(1 + σ_b·√(2/(n−1))) with σ² = (Σx² − (Σx)²/n)/(n−1), and x > μ + σ_s·√(gain·μ).
3. Spots are the 8-connected components (``scipy.ndimage.label`` with a 3×3 structure of ones)
   of ``min_spot_size`` to ``max_spot_size`` pixels, in the order of their first pixel in
   row-major order. Each spot's centroid is weighted by the counts above the local mean μ, the
   centre of pixel ``[s, f]`` being ``(f + 0.5, s + 0.5)``.

Example
-------
>>> import numpy as np
>>> from xrais.infer.spots import SpotFinderParams
>>> rng = np.random.default_rng(0)
>>> pixels = rng.poisson(2.0, size=(64, 64)).astype(np.int32)
>>> pixels[30:33, 40:43] += np.array([[20, 60, 20], [60, 200, 60], [20, 60, 20]])
>>> spots = find_spots_scipy(pixels, None, SpotFinderParams())
>>> len(spots["fast_px"]), round(float(spots["fast_px"][0]), 1), round(float(spots["slow_px"][0]), 1)
(1, 41.5, 31.5)
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["box_sums", "find_spots_scipy", "strong_pixels_scipy"]


def box_sums(values: np.ndarray, k_fast: int, k_slow: int) -> np.ndarray:
    """Sum of ``values`` over the (2k_s+1)×(2k_f+1) window of each pixel, clipped to the image."""
    out = ndimage.correlate1d(values, np.ones(2 * k_slow + 1), axis=0, mode="constant", cval=0.0)
    return ndimage.correlate1d(out, np.ones(2 * k_fast + 1), axis=1, mode="constant", cval=0.0)


def strong_pixels_scipy(pixels: np.ndarray, mask: np.ndarray | None, params) -> tuple[np.ndarray, np.ndarray]:
    """The strong-pixel image (bool) and the local mean μ (float64, NaN where n is 0)."""
    kf, ks = params.kernel_size
    x = np.asarray(pixels, dtype=np.float64)
    valid = np.isfinite(x)
    if mask is not None:
        valid &= ~np.asarray(mask, dtype=bool)
    x = np.where(valid, x, 0.0)
    n = box_sums(valid.astype(np.float64), kf, ks)
    sum_x = box_sums(x, kf, ks)
    sum_xx = box_sums(x * x, kf, ks)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = sum_x / n
        variance = (sum_xx - sum_x * sum_x / n) / (n - 1.0)
        dispersion_bound = params.gain * (1.0 + params.sigma_background * np.sqrt(2.0 / (n - 1.0)))
        strong = (valid & (n >= params.min_count) & (mean > 0.0) & (x > params.global_threshold)
                  & (variance / mean > dispersion_bound)
                  & (x > mean + params.sigma_strong * np.sqrt(params.gain * mean)))
    return strong, mean


def find_spots_scipy(pixels: np.ndarray, mask: np.ndarray | None, params) -> dict[str, np.ndarray]:
    """Spots of one image: a dict of ``fast_px``, ``slow_px``, ``intensity``, ``n_pixels``, ``peak``,
    ``bbox`` (slow0, slow1, fast0, fast1; ends exclusive), one entry per spot, and ``n_strong_pixels``.

    ``params`` is a :class:`xrais.infer.spots.SpotFinderParams` (only its values are read).
    """
    strong, mean = strong_pixels_scipy(pixels, mask, params)
    labels, n_labels = ndimage.label(strong, structure=np.ones((3, 3), dtype=bool))
    values = np.asarray(pixels, dtype=np.float64)
    index = np.arange(1, n_labels + 1)
    slow, fast = np.nonzero(strong)                    # row-major order
    lab = labels[slow, fast]
    weight = values[slow, fast] - mean[slow, fast]
    n_pixels = np.bincount(lab, minlength=n_labels + 1)[1:]
    total = np.bincount(lab, weights=weight, minlength=n_labels + 1)[1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        fast_px = np.bincount(lab, weights=weight * (fast + 0.5), minlength=n_labels + 1)[1:] / total
        slow_px = np.bincount(lab, weights=weight * (slow + 0.5), minlength=n_labels + 1)[1:] / total
    first = np.full(n_labels + 1, slow.size)
    np.minimum.at(first, lab, np.arange(slow.size))    # each label's first pixel, row-major
    peak = ndimage.maximum(values, labels, index) if n_labels else np.zeros(0)
    boxes = ndimage.find_objects(labels)
    bbox = np.array([[b[0].start, b[0].stop, b[1].start, b[1].stop] for b in boxes],
                    dtype=np.int64).reshape(-1, 4)
    keep = (n_pixels >= params.min_spot_size) & (n_pixels <= params.max_spot_size)
    order = np.argsort(first[1:][keep], kind="stable")
    return {"fast_px": fast_px[keep][order], "slow_px": slow_px[keep][order], "intensity": total[keep][order],
            "n_pixels": n_pixels[keep][order], "peak": np.asarray(peak, dtype=np.float64)[keep][order],
            "bbox": bbox[keep][order], "n_strong_pixels": int(slow.size)}
