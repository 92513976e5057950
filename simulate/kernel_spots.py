"""Spot-centric rendering: the brute-force physics evaluated only near Bragg spots.

:func:`xrais.simulate.spot_windows.spot_spans` lists, per orientation and source, the runs of
pixels where that orientation's lattice transform is not negligible (F_latt²/peak ≥
``tolerance``). The kernels here add, for every run, the per-(orientation, source) term
:func:`xrais.simulate.physics.spot_pixel_value` of each of its pixels (all sub-pixels), then
the background term :func:`xrais.simulate.physics.pixel_background` of every pixel: summed,
that is :func:`xrais.simulate.physics.pixel_value` less the neglected tails. The background
term is linear in ``scale × background``; on the CPU its unit map is computed once per
geometry (rows, panels, sources, sampling, polarization) and cached.

CPU: the runs are sorted by output row and the rows are spread over threads, so no two
threads write the same pixel. GPU: one thread per pixel of a run, ``cuda.atomic.add`` into a
float64 image.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any

import numba
import numpy as np

from xrais.simulate.physics import pixel_background, spot_pixel_value
from xrais.simulate.spot_windows import spot_spans

try:  # a module global, so that the simulator can swap in its own ``cuda`` inside the kernels
    from numba import cuda
except ImportError:  # numba-cuda not installed
    cuda = None

__all__ = ["render_spots_cpu", "render_spots_cuda", "spot_args", "span_evaluations"]

_UNIT_BACKGROUND_CACHE_SIZE = 2
_unit_background_cache: "OrderedDict[str, np.ndarray]" = OrderedDict()
_cache_lock = threading.Lock()


@numba.njit(parallel=True)
def _render_spans(image, row_starts, spans, panels, sources, orientations, a0, shape, na, nb, nc, fudge, grid, hmin,
                  kmin, lmin, default_f, inv_dmin, oversample, kahn, pol_ex, pol_ey, pol_ez, flags, scale, steps):
    for g in numba.prange(row_starts.shape[0] - 1):
        for t in range(row_starts[g], row_starts[g + 1]):
            o, j, p, si = spans[t, 0], spans[t, 1], spans[t, 2], spans[t, 3]
            f_lo, f_hi, out_s, out_f0 = spans[t, 4], spans[t, 5], spans[t, 6], spans[t, 7]
            for fi in range(f_lo, f_hi):
                image[out_s, out_f0 + fi] += spot_pixel_value(
                    p, fi, si, o, j, panels, sources, orientations, a0, shape, na, nb, nc, fudge, grid, hmin, kmin,
                    lmin, default_f, inv_dmin, oversample, kahn, pol_ex, pol_ey, pol_ez, flags, scale, steps)


@numba.njit(parallel=True)
def _add_background(image, rows, panels, sources, oversample, kahn, pol_ex, pol_ey, pol_ez, flags, scale, background,
                    steps):
    for r in numba.prange(rows.shape[0]):
        p, si, f_lo, f_hi, out_s, out_f0 = rows[r, 0], rows[r, 1], rows[r, 2], rows[r, 3], rows[r, 4], rows[r, 5]
        for fi in range(f_lo, f_hi):
            image[out_s, out_f0 + fi] += pixel_background(p, fi, si, panels, sources, oversample, kahn, pol_ex,
                                                          pol_ey, pol_ez, flags, scale, background, steps)


def spot_args(plan) -> tuple:
    """Kernel arguments after the spans: the plan's, without rows and background."""
    na, nb, nc = plan.n_cells
    return (plan.panels, plan.sources, plan.orientations, plan.a0, plan.shape_code, float(na), float(nb), float(nc),
            float(plan.fudge), plan.grid, int(plan.hkl_min[0]), int(plan.hkl_min[1]), int(plan.hkl_min[2]),
            float(plan.default_f), float(plan.inv_dmin), int(plan.oversample), float(plan.kahn),
            *map(float, plan.polarization_axis), int(plan.flags), float(plan.scale), float(plan.steps))


def _background_args(plan) -> tuple:
    return (plan.rows, plan.panels, plan.sources, int(plan.oversample), float(plan.kahn),
            *map(float, plan.polarization_axis), int(plan.flags), float(plan.scale), float(plan.background),
            float(plan.steps))


def _unit_background(plan) -> np.ndarray:
    """The background term of every pixel for scale × background = 1 (float32, read-only, cached)."""
    digest = hashlib.sha1()
    for a in (plan.rows, plan.panels, plan.sources):
        digest.update(np.ascontiguousarray(a).tobytes())
    digest.update(repr((plan.image_shape, int(plan.oversample), float(plan.kahn), tuple(plan.polarization_axis),
                        int(plan.flags), float(plan.steps))).encode())
    key = digest.hexdigest()
    with _cache_lock:
        if key in _unit_background_cache:
            _unit_background_cache.move_to_end(key)
            return _unit_background_cache[key]
    unit = np.zeros(plan.image_shape, dtype=np.float32)
    args = list(_background_args(plan))
    args[-3:-1] = [1.0, 1.0]  # scale, background
    _add_background(unit, *args)
    unit.flags.writeable = False
    with _cache_lock:
        _unit_background_cache[key] = unit
        while len(_unit_background_cache) > _UNIT_BACKGROUND_CACHE_SIZE:
            _unit_background_cache.popitem(last=False)
    return unit


def span_evaluations(plan, spans: np.ndarray) -> tuple[int, int]:
    """Per-(pixel, orientation, source) evaluations of a spot render and of a brute-force one."""
    spot = int((spans[:, 5] - spans[:, 4]).sum()) if len(spans) else 0
    pixels = int((plan.rows[:, 3] - plan.rows[:, 2]).sum()) if len(plan.rows) else 0
    return spot, pixels * len(plan.orientations) * len(plan.sources)


def render_spots_cpu(plan, tolerance: float = 1e-3, spans: np.ndarray | None = None) -> np.ndarray:
    """Spot-centric render of a :class:`~xrais.simulate.kernel.KernelPlan` on the CPU; float32 (n_slow, n_fast)."""
    if spans is None:
        spans = spot_spans(plan, tolerance)
    if plan.background != 0.0 and len(plan.rows):
        image = _unit_background(plan) * np.float32(plan.scale * plan.background)
    else:
        image = np.zeros(plan.image_shape, dtype=np.float32)
    if len(spans):
        out_rows = spans[:, 6]
        row_starts = np.concatenate([np.nonzero(np.diff(out_rows, prepend=-1))[0], [len(spans)]]).astype(np.int64)
        _render_spans(image, row_starts, np.ascontiguousarray(spans), *spot_args(plan))
    return image


_KERNELS: dict[str, Any] = {}


def _cuda_kernels() -> dict[str, Any]:
    if not _KERNELS:
        @cuda.jit
        def render_spans(image, spans, panels, sources, orientations, a0, shape, na, nb, nc, fudge, grid, hmin, kmin,
                         lmin, default_f, inv_dmin, oversample, kahn, pol_ex, pol_ey, pol_ez, flags, scale, steps):
            t, fi = cuda.grid(2)
            if t >= spans.shape[0]:
                return
            fi += spans[t, 4]
            if fi >= spans[t, 5]:
                return
            value = spot_pixel_value(spans[t, 2], fi, spans[t, 3], spans[t, 0], spans[t, 1], panels, sources,
                                     orientations, a0, shape, na, nb, nc, fudge, grid, hmin, kmin, lmin, default_f,
                                     inv_dmin, oversample, kahn, pol_ex, pol_ey, pol_ez, flags, scale, steps)
            if value != 0.0:
                cuda.atomic.add(image, (spans[t, 6], spans[t, 7] + fi), value)

        @cuda.jit
        def add_background(image, rows, panels, sources, oversample, kahn, pol_ex, pol_ey, pol_ez, flags, scale,
                           background, steps):
            r, fi = cuda.grid(2)
            if r >= rows.shape[0]:
                return
            fi += rows[r, 2]
            if fi >= rows[r, 3]:
                return
            image[rows[r, 4], rows[r, 5] + fi] += pixel_background(rows[r, 0], fi, rows[r, 1], panels, sources,
                                                                   oversample, kahn, pol_ex, pol_ey, pol_ez, flags,
                                                                   scale, background, steps)

        _KERNELS["spans"] = render_spans
        _KERNELS["background"] = add_background
    return _KERNELS


def render_spots_cuda(plan, tolerance: float = 1e-3, *, threads: tuple[int, int] = (4, 32), to_host: bool = True,
                      spans: np.ndarray | None = None) -> Any:
    """Spot-centric render with the CUDA kernels (NumPy under the simulator, else CuPy unless ``to_host``)."""
    from xrais.simulate.kernel_cuda import simulator_active

    kernels = _cuda_kernels()
    if spans is None:
        spans = spot_spans(plan, tolerance)
    spans = np.ascontiguousarray(spans)
    args = list(spot_args(plan))
    bg_args = list(_background_args(plan))
    sim = simulator_active()
    if sim:
        xp, image = np, np.zeros(plan.image_shape, dtype=np.float64)
    else:
        import cupy as cp

        xp, image = cp, cp.zeros(plan.image_shape, dtype=cp.float64)
        args = [cp.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
        bg_args = [cp.asarray(a) if isinstance(a, np.ndarray) else a for a in bg_args]
    if len(spans):
        width = int((spans[:, 5] - spans[:, 4]).max())
        blocks = (-(-len(spans) // threads[0]), max(1, -(-width // threads[1])))
        kernels["spans"][blocks, threads](image, spans if sim else xp.asarray(spans), *args)
    if plan.background != 0.0 and len(plan.rows):
        width = int((plan.rows[:, 3] - plan.rows[:, 2]).max())
        blocks = (-(-len(plan.rows) // threads[0]), max(1, -(-width // threads[1])))
        kernels["background"][blocks, threads](image, *bg_args)
    image = image.astype(xp.float32)
    if sim:
        return image
    return xp.asnumpy(image) if to_host else image
