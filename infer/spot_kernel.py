"""Numba kernels of the spot finder: the dispersion threshold and the 8-connected spots.

Each band of image rows (a few per thread) slides a window down the image: per column, the
valid-pixel count and the sum over the window's rows are kept up to date (one row added, one
dropped per image row), and their prefix sums along the row give every pixel's window count n
and sum Σx with two subtractions, whatever the kernel size. A cheap first test (x > μ +
σ_s·√(gain·μ), written without a square root) runs on whole rows as vector code; the sum of
squares, and with it the dispersion test, is computed only for the few pixels that pass it,
directly from the window's pixels. For integer counts every sum is exact. Everything here is
arrays in, arrays out; :mod:`xrais.infer.spots` holds the API.
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["strong_pixels", "strong_pixel_list", "label_spots", "spot_properties"]


@numba.njit(cache=True)
def _add_row(img_row: np.ndarray, inv_row: np.ndarray, col_n: np.ndarray, col_x: np.ndarray) -> None:
    """Add one image row's valid pixels to the per-column window count and sum."""
    for c in range(img_row.shape[0]):
        ok = inv_row[c] == 0
        col_n[c] += 1.0 if ok else 0.0
        col_x[c] += float(img_row[c]) if ok else 0.0


@numba.njit(cache=True)
def _slide_row(add_img: np.ndarray, add_inv: np.ndarray, drop_img: np.ndarray, drop_inv: np.ndarray,
               col_n: np.ndarray, col_x: np.ndarray) -> None:
    """Add one row to the per-column window count and sum and drop another, in one pass."""
    for c in range(add_img.shape[0]):
        a = add_inv[c] == 0
        d = drop_inv[c] == 0
        col_n[c] += (1.0 if a else 0.0) - (1.0 if d else 0.0)
        col_x[c] += (float(add_img[c]) if a else 0.0) - (float(drop_img[c]) if d else 0.0)


@numba.njit(cache=True)
def _drop_row(img_row: np.ndarray, inv_row: np.ndarray, col_n: np.ndarray, col_x: np.ndarray) -> None:
    """Take one image row's valid pixels out of the per-column window count and sum."""
    for c in range(img_row.shape[0]):
        ok = inv_row[c] == 0
        col_n[c] -= 1.0 if ok else 0.0
        col_x[c] -= float(img_row[c]) if ok else 0.0


@numba.njit(cache=True)
def _prefix_sums(col_n: np.ndarray, col_x: np.ndarray, pre_n: np.ndarray, pre_x: np.ndarray) -> None:
    """``pre[c] = col[0] + … + col[c−1]`` along the row."""
    acc_n = 0.0
    acc_x = 0.0
    pre_n[0] = 0.0
    pre_x[0] = 0.0
    for c in range(col_n.shape[0]):
        acc_n += col_n[c]
        acc_x += col_x[c]
        pre_n[c + 1] = acc_n
        pre_x[c + 1] = acc_x


@numba.njit(cache=True, inline="always")
def _maybe_strong(v: float, inv: np.uint8, n: float, x: float, min_local: float, global_threshold: float,
                  s2g: float) -> bool:
    """The tests that need no sum of squares: valid, n ≥ min_local, μ > 0, v > threshold and
    v > μ + σ_s·√(gain·μ)."""
    d = n * v - x  # n·(v − μ)
    return (inv == 0) & (n >= min_local) & (x > 0.0) & (v > global_threshold) & (d > 0.0) & (d * d > s2g * n * x)


@numba.njit(cache=True)
def _interior(img: np.ndarray, inv: np.ndarray, n_hi: np.ndarray, n_lo: np.ndarray, x_hi: np.ndarray,
              x_lo: np.ndarray, count: int, min_local: float, global_threshold: float, s2g: float,
              cand: np.ndarray) -> None:
    """Pixel c of ``img`` has the window sums ``n_hi[c] − n_lo[c]`` and ``x_hi[c] − x_lo[c]``.

    The caller passes shifted views, so that the loop has no offsets and compiles to vector code.
    """
    for c in range(count):
        cand[c] = _maybe_strong(float(img[c]), inv[c], n_hi[c] - n_lo[c], x_hi[c] - x_lo[c], min_local,
                                global_threshold, s2g)


@numba.njit(cache=True)
def _row_candidates(img_row: np.ndarray, inv_row: np.ndarray, pre_n: np.ndarray, pre_x: np.ndarray, k_fast: int,
                    min_local: float, global_threshold: float, s2g: float, cand: np.ndarray) -> None:
    """``cand[c]`` = 1 where pixel c of the row passes :func:`_maybe_strong`; the window is clipped at the edges."""
    n_fast = img_row.shape[0]
    w = 2 * k_fast + 1
    _interior(img_row[k_fast:], inv_row[k_fast:], pre_n[w:], pre_n, pre_x[w:], pre_x, n_fast - w + 1, min_local,
              global_threshold, s2g, cand[k_fast:])
    for i in range(2 * k_fast):  # the k_fast columns at each edge (n_fast ≥ w: they do not overlap)
        c = i if i < k_fast else n_fast - 2 * k_fast + i
        c0 = max(0, c - k_fast)
        c1 = min(n_fast, c + k_fast + 1)
        cand[c] = _maybe_strong(float(img_row[c]), inv_row[c], pre_n[c1] - pre_n[c0], pre_x[c1] - pre_x[c0],
                                min_local, global_threshold, s2g)


@numba.njit(parallel=True, cache=True)
def strong_pixels(image: np.ndarray, invalid: np.ndarray, k_fast: int, k_slow: int, gain: float,
                  sigma_background: float, sigma_strong: float, min_local: int, global_threshold: float,
                  n_bands: int, strong: np.ndarray, row_counts: np.ndarray) -> None:
    """Mark the strong pixels of ``image`` by the dispersion threshold, in place.

    A valid pixel is strong when, over the valid pixels of its (2·k_slow+1)×(2·k_fast+1)
    neighbourhood clipped to the image (n of them, mean μ, unbiased variance σ²), n ≥
    ``min_local``, μ > 0, σ²/μ > gain·(1 + sigma_background·√(2/(n−1))), value > μ +
    sigma_strong·√(gain·μ) and value > ``global_threshold``.

    Parameters
    ----------
    image : ndarray, shape (n_slow, n_fast), any real dtype
        n_fast ≥ 2·k_fast + 1.
    invalid : ndarray of bool, same shape
    n_bands : int
        Bands of rows run in parallel.
    strong : ndarray of uint8, same shape
        Output: 1 for strong pixels, 0 elsewhere.
    row_counts : ndarray of int64, shape (n_slow,)
        Output: the number of strong pixels in each row.
    """
    n_slow, n_fast = image.shape
    band = (n_slow + n_bands - 1) // n_bands
    area = (2 * k_fast + 1) * (2 * k_slow + 1)
    bound_b = np.zeros(area + 1)  # gain·(1 + σ_b·√(2/(n−1))) for each n
    for n in range(2, area + 1):
        bound_b[n] = gain * (1.0 + sigma_background * math.sqrt(2.0 / (n - 1.0)))
    s2g = sigma_strong * sigma_strong * gain
    min_n = float(max(min_local, 2))
    n_words = (n_fast + 7) // 8
    inv8 = invalid.view(np.uint8)
    for b in numba.prange(n_bands):
        r_first = b * band
        r_last = min(n_slow, r_first + band)
        if r_first >= r_last:
            continue
        col_n = np.zeros(n_fast)  # valid pixels of the window's rows, per column
        col_x = np.zeros(n_fast)  # their sum
        pre_n = np.zeros(n_fast + 1)
        pre_x = np.zeros(n_fast + 1)
        cand = np.zeros(8 * n_words, dtype=np.uint8)
        cand_words = cand.view(np.uint64)
        top = max(0, r_first - k_slow)  # the columns hold rows [top, bottom)
        bottom = top
        for r in range(r_first, r_last):
            lo = max(0, r - k_slow)
            hi = min(n_slow, r + k_slow + 1)
            while bottom < hi and top < lo:
                _slide_row(image[bottom], inv8[bottom], image[top], inv8[top], col_n, col_x)
                bottom += 1
                top += 1
            while bottom < hi:
                _add_row(image[bottom], inv8[bottom], col_n, col_x)
                bottom += 1
            while top < lo:
                _drop_row(image[top], inv8[top], col_n, col_x)
                top += 1
            _prefix_sums(col_n, col_x, pre_n, pre_x)
            _row_candidates(image[r], inv8[r], pre_n, pre_x, k_fast, min_n, global_threshold, s2g, cand)
            strong[r, :] = 0
            count = 0
            for word in range(n_words):
                if cand_words[word] == 0:
                    continue
                for c in range(8 * word, min(n_fast, 8 * word + 8)):
                    if cand[c] == 0:
                        continue
                    c0 = max(0, c - k_fast)
                    c1 = min(n_fast, c + k_fast + 1)
                    n = pre_n[c1] - pre_n[c0]
                    x = pre_x[c1] - pre_x[c0]
                    xx = 0.0
                    for rr in range(lo, hi):
                        for cc in range(c0, c1):
                            if inv8[rr, cc] == 0:
                                u = float(image[rr, cc])
                                xx += u * u
                    # σ²/μ = (n·Σx² − (Σx)²) / (Σx·(n−1)); both sides multiplied by Σx·(n−1) > 0
                    if n * xx - x * x > bound_b[int(n)] * x * (n - 1.0):
                        strong[r, c] = 1
                        count += 1
            row_counts[r] = count


@numba.njit(parallel=True, cache=True)
def strong_pixel_list(image: np.ndarray, invalid: np.ndarray, k_fast: int, k_slow: int, strong: np.ndarray,
                      row_start: np.ndarray, rows: np.ndarray, cols: np.ndarray, values: np.ndarray,
                      means: np.ndarray) -> None:
    """Gather the strong pixels in row-major order (rows, then columns ascending), in place.

    ``row_start`` (n_slow + 1,) holds each row's first index into the outputs (the cumulative
    row counts of :func:`strong_pixels`). ``means`` gets each strong pixel's local mean μ over
    the valid pixels of its window, summed afresh (the few strong pixels need no image-sized
    array of means).
    """
    n_slow, n_fast = strong.shape
    for r in numba.prange(n_slow):
        i = row_start[r]
        if i == row_start[r + 1]:
            continue
        lo = max(0, r - k_slow)
        hi = min(n_slow, r + k_slow + 1)
        for c in range(n_fast):
            if strong[r, c]:
                n = 0.0
                x = 0.0
                for rr in range(lo, hi):
                    for cc in range(max(0, c - k_fast), min(n_fast, c + k_fast + 1)):
                        if not invalid[rr, cc]:
                            n += 1.0
                            x += float(image[rr, cc])
                rows[i] = r
                cols[i] = c
                values[i] = float(image[r, c])
                means[i] = x / n
                i += 1


@numba.njit(cache=True, inline="always")
def _find(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@numba.njit(cache=True, inline="always")
def _union(parent: np.ndarray, i: int, j: int) -> None:
    ri = _find(parent, i)
    rj = _find(parent, j)
    if ri < rj:
        parent[rj] = ri
    elif rj < ri:
        parent[ri] = rj


@numba.njit(cache=True)
def label_spots(rows: np.ndarray, cols: np.ndarray, row_start: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of the strong pixels listed row-major.

    Returns
    -------
    labels : ndarray of int64, shape (n_pixels,)
        Component of each pixel, numbered 0, 1, … in the order of their first pixel.
    n_components : int
    """
    n = cols.shape[0]
    parent = np.arange(n)
    n_slow = row_start.shape[0] - 1
    for i in range(1, n):  # left neighbour in the same row
        if rows[i] == rows[i - 1] and cols[i] == cols[i - 1] + 1:
            _union(parent, i, i - 1)
    for r in range(1, n_slow):  # the three neighbours in the row above
        a0, a1 = row_start[r - 1], row_start[r]
        b0, b1 = row_start[r], row_start[r + 1]
        if a0 == a1 or b0 == b1:
            continue
        j = a0
        for i in range(b0, b1):
            c = cols[i]
            while j < a1 and cols[j] < c - 1:
                j += 1
            jj = j
            while jj < a1 and cols[jj] <= c + 1:
                _union(parent, i, jj)
                jj += 1
    labels = np.empty(n, dtype=np.int64)
    first = np.full(n, -1, dtype=np.int64)
    n_components = 0
    for i in range(n):
        root = _find(parent, i)
        if first[root] < 0:
            first[root] = n_components
            n_components += 1
        labels[i] = first[root]
    return labels, n_components


@numba.njit(cache=True)
def spot_properties(labels: np.ndarray, n_components: int, rows: np.ndarray, cols: np.ndarray,
                    values: np.ndarray, means: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per component: centroid (fast, slow) px, counts above the local mean, pixels, peak, bounding box.

    The centroid is weighted by the counts above the local mean, in continuous pixel
    coordinates (the centre of pixel ``[s, f]`` is ``(f + 0.5, s + 0.5)``).
    """
    n_pixels = np.zeros(n_components, dtype=np.int64)
    intensity = np.zeros(n_components)
    weight = np.zeros(n_components)
    sum_f = np.zeros(n_components)
    sum_s = np.zeros(n_components)
    plain_f = np.zeros(n_components)
    plain_s = np.zeros(n_components)
    peak = np.full(n_components, -np.inf)
    bbox = np.empty((n_components, 4), dtype=np.int64)  # slow0, slow1, fast0, fast1 (ends exclusive)
    for k in range(n_components):
        bbox[k, 0] = np.iinfo(np.int64).max
        bbox[k, 2] = np.iinfo(np.int64).max
        bbox[k, 1] = -1
        bbox[k, 3] = -1
    for i in range(labels.shape[0]):
        k = labels[i]
        w = values[i] - means[i]
        n_pixels[k] += 1
        intensity[k] += w
        if w > 0.0:
            weight[k] += w
            sum_f[k] += w * (cols[i] + 0.5)
            sum_s[k] += w * (rows[i] + 0.5)
        plain_f[k] += cols[i] + 0.5
        plain_s[k] += rows[i] + 0.5
        peak[k] = max(peak[k], values[i])
        bbox[k, 0] = min(bbox[k, 0], rows[i])
        bbox[k, 1] = max(bbox[k, 1], rows[i] + 1)
        bbox[k, 2] = min(bbox[k, 2], cols[i])
        bbox[k, 3] = max(bbox[k, 3], cols[i] + 1)
    fast = np.empty(n_components)
    slow = np.empty(n_components)
    for k in range(n_components):
        if weight[k] > 0.0:
            fast[k] = sum_f[k] / weight[k]
            slow[k] = sum_s[k] / weight[k]
        else:  # no pixel above its local mean (sigma_strong 0): the plain centre
            fast[k] = plain_f[k] / n_pixels[k]
            slow[k] = plain_s[k] / n_pixels[k]
    return fast, slow, intensity, n_pixels, peak, bbox
