"""The GPU backend: :func:`xrais.simulate.physics.pixel_value` in a numba-cuda kernel on CuPy arrays.

One thread per pixel of each (panel, row) of the plan. Under the numba-cuda simulator
(``NUMBA_ENABLE_CUDASIM=1``) the same kernel runs on NumPy arrays, which is how machines
without a GPU test it.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from xrais.simulate.physics import pixel_value

try:  # a module global, so that the simulator can swap in its own ``cuda`` inside the kernel
    from numba import cuda
except ImportError:  # numba-cuda not installed
    cuda = None

__all__ = ["render_cuda", "cuda_available", "simulator_active"]

_KERNEL = None


def simulator_active() -> bool:
    """True when numba-cuda runs its Python simulator instead of a GPU."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"


def cuda_available() -> bool:
    """True if a CUDA device (or the simulator) can run the GPU kernel."""
    try:
        return cuda is not None and bool(cuda.is_available())
    except Exception:  # no driver
        return False


def _kernel() -> Any:
    global _KERNEL
    if _KERNEL is None:

        @cuda.jit
        def render_rows(image, rows, panels, sources, orientations, a0, shape, na, nb, nc, fudge, grid, hmin, kmin,
                        lmin, default_f, inv_dmin, oversample, kahn, pol_ex, pol_ey, pol_ez, flags, scale,
                        background, steps):
            r, fi = cuda.grid(2)
            if r >= rows.shape[0]:
                return
            p, si, f_lo, f_hi, out_s, out_f0 = rows[r, 0], rows[r, 1], rows[r, 2], rows[r, 3], rows[r, 4], rows[r, 5]
            fi += f_lo
            if fi >= f_hi:
                return
            image[out_s, out_f0 + fi] = pixel_value(
                p, fi, si, panels, sources, orientations, a0, shape, na, nb, nc, fudge, grid, hmin, kmin, lmin,
                default_f, inv_dmin, oversample, kahn, pol_ex, pol_ey, pol_ez, flags, scale, background, steps)

        _KERNEL = render_rows
    return _KERNEL


def render_cuda(plan, *, threads: tuple[int, int] = (4, 64), to_host: bool = True) -> Any:
    """Render a :class:`~xrais.simulate.kernel.KernelPlan` with the CUDA kernel.

    Returns a NumPy array (``to_host``) or the CuPy device array; under the simulator NumPy.
    """
    kernel = _kernel()
    args = list(plan.kernel_args())
    width = int(max((row[3] - row[2]) for row in plan.rows)) if len(plan.rows) else 0
    blocks = (-(-len(plan.rows) // threads[0]), max(1, -(-width // threads[1])))
    if simulator_active():
        image = np.zeros(plan.image_shape, dtype=np.float32)
        kernel[blocks, threads](image, *args)
        return image
    import cupy as cp

    device_args = [cp.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
    image = cp.zeros(plan.image_shape, dtype=cp.float32)
    kernel[blocks, threads](image, *device_args)
    return cp.asnumpy(image) if to_host else image
