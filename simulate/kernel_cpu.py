"""The CPU backend: :func:`xrais.simulate.physics.pixel_value` over all pixels with Numba ``prange``."""

from __future__ import annotations

import numba
import numpy as np

import xrais.numba_cache  # noqa: F401  (kernel caches follow every kernel source)
from xrais.simulate.physics import pixel_value

__all__ = ["render_cpu"]


# Cached on disk; the cache follows physics.py too (xrais.numba_cache).
@numba.njit(parallel=True, cache=True)
def _render_rows(image, rows, panels, sources, orientations, a0, shape, na, nb, nc, fudge, grid, hmin, kmin, lmin,
                 default_f, inv_dmin, oversample, kahn, pol_ex, pol_ey, pol_ez, flags, scale, background, steps):
    for r in numba.prange(rows.shape[0]):
        p, si, f_lo, f_hi, out_s, out_f0 = rows[r, 0], rows[r, 1], rows[r, 2], rows[r, 3], rows[r, 4], rows[r, 5]
        for fi in range(f_lo, f_hi):
            image[out_s, out_f0 + fi] = pixel_value(
                p, fi, si, panels, sources, orientations, a0, shape, na, nb, nc, fudge, grid, hmin, kmin, lmin,
                default_f, inv_dmin, oversample, kahn, pol_ex, pol_ey, pol_ez, flags, scale, background, steps)


def render_cpu(plan) -> np.ndarray:
    """Render a :class:`~xrais.simulate.kernel.KernelPlan` on the CPU; float32 (n_slow, n_fast)."""
    image = np.zeros(plan.image_shape, dtype=np.float32)
    _render_rows(image, *plan.kernel_args())
    return image
