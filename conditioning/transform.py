"""The XRAIS image conditioning transform on the CPU (xrais.txt §2.2 and Figure 4).

Raw pixels are grouped in N×N blocks; each block keeps its largest count, which is replaced
by the floor of its square root, clipped at 255 so that it fits ``uint8``. Masked, gap,
negative and NaN pixels count as 0.

The image is cut into four 512×512 quadrants that meet at the beam centre. The block grid
is anchored on the pixel corner nearest the beam centre, ``(round(fast), round(slow))``, so
each quadrant covers exactly 512·N × 512·N raw pixels and no pixel is shared. Each quadrant
is turned by a multiple of 90° (never mirrored) so that the beam centre sits at the outer
corner of its pixel ``[0, 0]``. Quadrant order (by the raw-array region it covers; slow
grows downwards as the image is displayed):

====  ==============  ===================
 q     region          rotation (np.rot90)
====  ==============  ===================
 0     upper left      180°  (k=2)
 1     upper right     90° clockwise (k=-1)
 2     lower right     none  (k=0)
 3     lower left      90° anticlockwise (k=1)
====  ==============  ===================

``quadrants=1`` returns quadrant 0, the upper-left one that XRAIS trains on. Parts of a
quadrant beyond the detector edge are zero (padded, never shifted or shrunk).

Everything here is pure: arrays in, arrays out.
"""

from __future__ import annotations

import math

import numba
import numpy as np

import xrais.numba_cache  # noqa: F401  (kernel caches follow every kernel source)
from xrais.errors import ConfigError, GeometryError

__all__ = [
    "QUADRANT_SIZE",
    "QUADRANT_ROTATIONS",
    "QUADRANT_REGIONS",
    "pool_sqrt",
    "condition_pixels",
    "quadrant_corner_px",
    "check_image_fits",
    "reference_condition",
]

#: Side of a conditioned quadrant in pooled pixels.
QUADRANT_SIZE = 512
#: np.rot90 ``k`` turning each raw-array quadrant so the beam centre is at [0, 0].
QUADRANT_ROTATIONS = (2, -1, 0, 1)
#: Each quadrant's region of the (2·512)² pooled window around the beam-centre corner.
QUADRANT_REGIONS = tuple(
    (slice(r * QUADRANT_SIZE, (r + 1) * QUADRANT_SIZE), slice(c * QUADRANT_SIZE, (c + 1) * QUADRANT_SIZE))
    for r, c in ((0, 0), (0, 1), (1, 1), (1, 0))
)
_CLIP = 255.0


@numba.njit(cache=True, inline="always")
def _sqrt_floor_u8(v: float) -> np.uint8:
    if v >= 65536.0:  # sqrt ≥ 256 → clipped; also catches +inf
        return np.uint8(255)
    return np.uint8(math.floor(math.sqrt(v)))


@numba.njit(parallel=True, cache=True)
def _pooled_window_kernel(pixels, mask, has_mask, f_start, s_start, block, out):
    """out[r, c] = sqrt-floor of the max over raw block [s_start + r·N, …) × [f_start + c·N, …).

    Raw pixels outside the array count as 0. Rows run in parallel and each reads its raw rows
    in memory order; the inner loop is branch-free (selects) so that it vectorises.
    """
    n_slow, n_fast = pixels.shape
    n_rows, n_cols = out.shape
    # columns whose block lies wholly on the detector, and the partial ones at its edges
    c_lo = min(max(0, (-f_start + block - 1) // block), n_cols)
    c_hi = max(min(n_cols, (n_fast - f_start) // block), c_lo)
    edges = (c_lo - 1, c_hi)
    zero = pixels.dtype.type(0)
    for r in numba.prange(n_rows):
        best = np.zeros(n_cols, dtype=pixels.dtype)  # max in the native type: exact, and it vectorises
        s0 = s_start + r * block
        for s in range(max(s0, 0), min(s0 + block, n_slow)):
            for c in edges:
                if 0 <= c < n_cols:
                    for f in range(max(f_start + c * block, 0), min(f_start + (c + 1) * block, n_fast)):
                        x = pixels[s, f]
                        if has_mask:
                            x = zero if mask[s, f] else x
                        best[c] = x if x > best[c] else best[c]  # NaN is never greater: ignored
            for c in range(c_lo, c_hi):
                f0 = f_start + c * block
                b = best[c]
                for k in range(block):
                    x = pixels[s, f0 + k]
                    if has_mask:
                        x = zero if mask[s, f0 + k] else x
                    b = x if x > b else b
                best[c] = b
        for c in range(n_cols):
            out[r, c] = _sqrt_floor_u8(np.float64(best[c]))  # sqrt in double precision


def _check_pixels(pixels: np.ndarray, mask: np.ndarray | None, name: str) -> tuple[np.ndarray, np.ndarray, bool]:
    a = np.asarray(pixels)
    if a.ndim != 2 or 0 in a.shape:
        raise ConfigError(f"{name}: expected a 2-D (slow, fast) pixel array, got shape {a.shape}")
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ConfigError(f"{name}: expected integer or float counts, got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).any():
        raise ConfigError(f"{name}: every pixel is NaN or infinite; expected counts")
    if mask is None:
        return a, np.zeros((1, 1), dtype=np.bool_), False
    m = np.asarray(mask, dtype=np.bool_)
    if m.shape != a.shape:
        raise ConfigError(f"{name}: mask shape {m.shape} does not match pixels {a.shape}")
    return a, m, True


def _check_block(block: int) -> int:
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or not 1 <= int(block) <= 64:
        raise ConfigError(f"downsample block: expected an integer 1–64, got {block!r}")
    return int(block)


def pool_sqrt(pixels: np.ndarray, block: int, mask: np.ndarray | None = None) -> np.ndarray:
    """N×N max-pool, square root, floor, clip to 255 (the Figure 4 transform alone).

    The block grid starts at pixel [0, 0]; a partial block at the far edges is pooled over
    the pixels it has.

    Parameters
    ----------
    pixels : ndarray, shape (n_slow, n_fast), integer or float
        Counts (photons).
    block : int
        N, the block side in pixels.
    mask : ndarray of bool, shape (n_slow, n_fast), optional
        True for pixels to treat as 0.

    Returns
    -------
    ndarray, shape (ceil(n_slow / N), ceil(n_fast / N)), uint8
        ``min(floor(sqrt(max(block))), 255)``, in √photon units.

    Examples
    --------
    >>> pool_sqrt(np.array([[26, 35], [33, 29]]), 2)
    array([[5]], dtype=uint8)
    """
    a, m, has_mask = _check_pixels(pixels, mask, "pixels")
    block = _check_block(block)
    out = np.empty((-(-a.shape[0] // block), -(-a.shape[1] // block)), dtype=np.uint8)
    _pooled_window_kernel(a, m, has_mask, 0, 0, block, out)
    return out


def quadrant_corner_px(beam_center_px: tuple[float, float], shape: tuple[int, int]) -> tuple[int, int]:
    """The pixel corner (fast, slow) where the quadrants meet: the beam centre rounded.

    Raises
    ------
    GeometryError
        If the beam centre is not finite or lies outside the ``shape`` (n_slow, n_fast) array.
    """
    bf, bs = (float(v) for v in beam_center_px)
    n_slow, n_fast = shape
    if not (math.isfinite(bf) and math.isfinite(bs)):
        raise GeometryError(
            f"beam centre {beam_center_px}: expected finite (fast, slow) pixel coordinates "
            "(give one with beam_center_px= or --beam-center when the header has none)"
        )
    if not (0.0 <= bf <= n_fast and 0.0 <= bs <= n_slow):
        raise GeometryError(
            f"beam centre ({bf:.2f}, {bs:.2f}) px lies outside the {n_fast}×{n_slow} (fast×slow) detector"
        )
    return int(math.floor(bf + 0.5)), int(math.floor(bs + 0.5))


def _check_quadrants(quadrants: int) -> int:
    if quadrants not in (1, 4):
        raise ConfigError(f"quadrants: expected 1 or 4, got {quadrants!r}")
    return int(quadrants)


_QUADRANT_NAMES = ("upper left", "upper right", "lower right", "lower left")
_QUADRANT_DIRECTIONS = ((-1, -1), (1, -1), (1, 1), (-1, 1))  # (fast, slow) away from the corner


def check_image_fits(corner: tuple[int, int], shape: tuple[int, int], block: int, quadrants: int) -> None:
    """Refuse an image too small for the requested quadrants.

    Raises
    ------
    ConfigError
        If the image is smaller than one N×N block.
    GeometryError
        If a requested quadrant would hold no detector pixel at all (the beam centre sits on
        the detector's edge on that side); partly covered quadrants are zero-padded instead.
    """
    n_slow, n_fast = shape
    if n_slow < block or n_fast < block:
        raise ConfigError(f"pixels: a {n_fast}×{n_slow} image is smaller than one {block}×{block} block")
    cf, cs = corner
    for q in range(quadrants):
        df, ds = _QUADRANT_DIRECTIONS[q]
        if ((n_fast - cf) if df > 0 else cf) == 0 or ((n_slow - cs) if ds > 0 else cs) == 0:
            raise GeometryError(
                f"quadrant {q} ({_QUADRANT_NAMES[q]}) would hold no detector pixels: the beam centre corner "
                f"({cf}, {cs}) px lies on the edge of the {n_fast}×{n_slow} detector"
            )


def condition_pixels(
    pixels: np.ndarray,
    beam_center_px: tuple[float, float],
    block: int,
    quadrants: int = 4,
    mask: np.ndarray | None = None,
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Crop around the beam centre, max-pool, sqrt and cut into turned 512×512 quadrants.

    Parameters
    ----------
    pixels : ndarray, shape (n_slow, n_fast)
        Raw counts.
    beam_center_px : (float, float)
        (fast, slow) beam centre in continuous pixel coordinates.
    block : int
        Max-pool block N.
    quadrants : {4, 1}
        All four quadrants, or only quadrant 0 (upper left).
    mask : ndarray of bool, optional
        True for invalid pixels (treated as 0).
    out : ndarray, shape (quadrants, 512, 512), uint8, optional
        Destination (e.g. a slice of a batch array).

    Returns
    -------
    ndarray, shape (quadrants, 512, 512), uint8
    """
    a, m, has_mask = _check_pixels(pixels, mask, "pixels")
    block = _check_block(block)
    quadrants = _check_quadrants(quadrants)
    corner_f, corner_s = quadrant_corner_px(beam_center_px, a.shape)
    check_image_fits((corner_f, corner_s), a.shape, block, quadrants)
    if out is None:
        out = np.empty((quadrants, QUADRANT_SIZE, QUADRANT_SIZE), dtype=np.uint8)
    elif out.shape != (quadrants, QUADRANT_SIZE, QUADRANT_SIZE) or out.dtype != np.uint8:
        raise ConfigError(f"out: expected uint8 array of shape ({quadrants}, 512, 512), got {out.dtype} {out.shape}")
    n = QUADRANT_SIZE
    half = n * block
    # the pooled window around the corner: 2n × 2n blocks, or only the upper-left n × n
    window = np.empty((2 * n, 2 * n) if quadrants == 4 else (n, n), dtype=np.uint8)
    _pooled_window_kernel(a, m, has_mask, corner_f - half, corner_s - half, block, window)
    for q in range(quadrants):
        out[q] = np.rot90(window[QUADRANT_REGIONS[q]], QUADRANT_ROTATIONS[q])
    return out


def reference_condition(
    pixels: np.ndarray,
    beam_center_px: tuple[float, float],
    block: int,
    quadrants: int = 4,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Plain-NumPy statement of :func:`condition_pixels` (pad, crop, pool, sqrt, rot90).

    Slow and memory-hungry; it exists to define the transform in the most readable way and
    to check the fast kernels against it.
    """
    a = np.asarray(pixels, dtype=np.float64).copy()
    if mask is not None:
        a[np.asarray(mask, bool)] = 0.0
    a = np.nan_to_num(a, nan=0.0, posinf=65536.0, neginf=0.0).clip(0.0, 65536.0)
    corner_f, corner_s = quadrant_corner_px(beam_center_px, a.shape)
    half = QUADRANT_SIZE * block
    padded = np.pad(a, half)
    window = padded[corner_s : corner_s + 2 * half, corner_f : corner_f + 2 * half]
    pooled = window.reshape(2 * QUADRANT_SIZE, block, 2 * QUADRANT_SIZE, block).max(axis=(1, 3))
    cond = np.minimum(np.floor(np.sqrt(pooled)), _CLIP).astype(np.uint8)
    return np.stack([np.rot90(cond[r], k) for r, k in zip(QUADRANT_REGIONS, QUADRANT_ROTATIONS)][:quadrants])
