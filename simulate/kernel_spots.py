"""Spot-centric rendering: the brute-force physics evaluated only near Bragg spots.

:func:`xrais.simulate.spot_windows.spot_windows` lists, per orientation, source and
reflection, a window of pixels outside which that reflection's lattice transform is negligible
(F_latt²/peak < ``tolerance``). The kernels here add, in every window, the term
:func:`xrais.simulate.physics.spot_pixel_value` of each of its pixels (all sub-pixels, only the
samples whose nearest index is the window's reflection), on top of the background term
:func:`xrais.simulate.physics.pixel_background` of every pixel: summed, that is
:func:`xrais.simulate.physics.pixel_value` less the neglected tails.

What depends only on the geometry (rows, panels, sources, sampling, polarization) is kept per
geometry: Ω·P of each pixel's first sample (the weight of every sample when they all share it,
:func:`~xrais.simulate.physics.uniform_sample_weight`), filled as windows reach new pixels,
and, where samples differ, the mean weight that the background term needs. The background is
linear in ``scale × background`` and is taken from these maps.

CPU: the output rows are cut into bands, each band renders the rows of the windows that cross
it, and the bands are spread over threads, so no two threads write the same pixel. GPU: the
windows are cut into rows and one thread renders one pixel of a row, ``cuda.atomic.add`` into
a float64 image.
"""

from __future__ import annotations

import threading
import zlib
from collections import OrderedDict
from typing import Any

import numba
import numpy as np

import xrais.numba_cache  # noqa: F401  (kernel caches follow every kernel source)
from xrais.simulate.physics import (
    first_sample_weight,
    orientation_intensity,
    pixel_background,
    sample_position,
    spot_intensity_sum,
    spot_pixel_value,
    uniform_sample_weight,
)
from xrais.simulate.spot_windows import SpotWindows, spot_windows

try:  # a module global, so that the simulator can swap in its own ``cuda`` inside the kernels
    from numba import cuda
except ImportError:  # numba-cuda not installed
    cuda = None

__all__ = ["render_spots_cpu", "render_spots_cuda", "spot_args", "window_rows"]

#: Output rows per band of the CPU kernel.
BAND_ROWS = 8
_GEOMETRY_CACHE_SIZE = 4
_geometry_cache: "OrderedDict[tuple, list]" = OrderedDict()  # key → [map, complete]
_cache_lock = threading.Lock()


_SINGLE, _UNIFORM, _GENERAL = 0, 1, 2  # one sample of shared weight; samples of shared weight; per-sample weight


def _band_kernel(mode: int):
    """The CPU kernel for one weighting ``mode`` (a constant, so that each compiles to its own loop)."""

    @numba.njit(parallel=True, cache=True)
    def render_bands(image, weights, band_order, band_start, band_windows, windows, hkl, table, panel_row0, panels,
                     sources, orientations, a0, shape, na, nb, nc, fudge, grid, hmin, kmin, lmin, default_f, inv_dmin,
                     oversample, kahn, pol_ex, pol_ey, pol_ez, flags, scale, steps):
        for k in numba.prange(band_order.shape[0]):
            b = band_order[k]
            row_lo = b * BAND_ROWS
            for t in range(band_start[b], band_start[b + 1]):
                w = band_windows[t]
                o, j, p = windows[w, 0], windows[w, 1], windows[w, 2]
                r = windows[w, 7]
                hw, kw, lw = float(hkl[r, 0]), float(hkl[r, 1]), float(hkl[r, 2])
                m = orientations[o]
                ix, iy, iz, lam = sources[j, 0], sources[j, 1], sources[j, 2], sources[j, 3]
                off = panel_row0[p]
                for si in range(max(windows[w, 5], row_lo - off), min(windows[w, 6], row_lo + BAND_ROWS - off)):
                    f_lo, f_hi = max(windows[w, 3], table[p, si, 0]), min(windows[w, 4], table[p, si, 1])
                    out_s, out_f0 = table[p, si, 2], table[p, si, 3]
                    for fi in range(f_lo, f_hi):
                        if mode == _SINGLE or mode == _UNIFORM:
                            if mode == _SINGLE:  # the one sample, at the pixel centre
                                px, py, pz = sample_position(panels, p, fi, si, 0, 0, 1)
                                value = orientation_intensity(px, py, pz, ix, iy, iz, lam, m, a0, shape, na, nb, nc,
                                                              fudge, grid, hmin, kmin, lmin, default_f, inv_dmin, hw,
                                                              kw, lw)
                            else:
                                value = spot_intensity_sum(panels, p, fi, si, oversample, ix, iy, iz, lam, m, a0,
                                                           shape, na, nb, nc, fudge, grid, hmin, kmin, lmin, default_f,
                                                           inv_dmin, hw, kw, lw)
                            weight = weights[out_s, out_f0 + fi]
                            if weight == 0.0:  # not yet computed for this geometry (only this band writes here)
                                weight = first_sample_weight(p, fi, si, panels, sources, oversample, kahn, pol_ex,
                                                             pol_ey, pol_ez, flags)
                                weights[out_s, out_f0 + fi] = weight
                                weight = weights[out_s, out_f0 + fi]  # as stored (float32), as a later image reads it
                            image[out_s, out_f0 + fi] += scale * weight * value / steps
                        else:
                            image[out_s, out_f0 + fi] += spot_pixel_value(
                                p, fi, si, o, j, hw, kw, lw, panels, sources, orientations, a0, shape, na, nb, nc,
                                fudge, grid, hmin, kmin, lmin, default_f, inv_dmin, oversample, kahn, pol_ex, pol_ey,
                                pol_ez, flags, scale, steps)

    return render_bands


_band_kernels: dict[int, Any] = {}


def _render_bands(mode: int, *args) -> None:
    if mode not in _band_kernels:
        _band_kernels[mode] = _band_kernel(mode)
    _band_kernels[mode](*args)


@numba.njit(cache=True)
def _band_index(windows, panel_row0, n_bands):
    """Windows crossing each band of :data:`BAND_ROWS` output rows: CSR (start per band, window indices)."""
    counts = np.zeros(n_bands + 1, dtype=np.int64)
    for w in range(windows.shape[0]):
        off = panel_row0[windows[w, 2]]
        for b in range((off + windows[w, 5]) // BAND_ROWS, (off + windows[w, 6] - 1) // BAND_ROWS + 1):
            counts[b + 1] += 1
    for b in range(n_bands):
        counts[b + 1] += counts[b]
    fill = counts[:-1].copy()
    index = np.empty(counts[-1], dtype=np.int64)
    for w in range(windows.shape[0]):
        off = panel_row0[windows[w, 2]]
        for b in range((off + windows[w, 5]) // BAND_ROWS, (off + windows[w, 6] - 1) // BAND_ROWS + 1):
            index[fill[b]] = w
            fill[b] += 1
    return counts, index


@numba.njit(parallel=True, cache=True)
def _fill_weight_map(image, rows, panels, sources, oversample, kahn, pol_ex, pol_ey, pol_ez, flags):
    """Ω·P of the first sample of every rendered pixel that does not have it yet (0)."""
    for r in numba.prange(rows.shape[0]):
        p, si, f_lo, f_hi, out_s, out_f0 = rows[r, 0], rows[r, 1], rows[r, 2], rows[r, 3], rows[r, 4], rows[r, 5]
        for fi in range(f_lo, f_hi):
            if image[out_s, out_f0 + fi] == 0.0:
                image[out_s, out_f0 + fi] = first_sample_weight(p, fi, si, panels, sources, oversample, kahn, pol_ex,
                                                                pol_ey, pol_ez, flags)


@numba.njit(parallel=True, cache=True)
def _mean_weight_map(image, rows, panels, sources, oversample, kahn, pol_ex, pol_ey, pol_ez, flags):
    for r in numba.prange(rows.shape[0]):
        p, si, f_lo, f_hi, out_s, out_f0 = rows[r, 0], rows[r, 1], rows[r, 2], rows[r, 3], rows[r, 4], rows[r, 5]
        for fi in range(f_lo, f_hi):
            image[out_s, out_f0 + fi] = pixel_background(p, fi, si, panels, sources, oversample, kahn, pol_ex,
                                                         pol_ey, pol_ez, flags & ~16, 1.0, 1.0, 1.0)


def _geometry_key(plan) -> tuple:
    digest = 0
    for a in (plan.rows, plan.panels, plan.sources):
        digest = zlib.crc32(np.ascontiguousarray(a).view(np.uint8), digest)
    return (digest, len(plan.rows), plan.panels.shape, plan.sources.shape, plan.image_shape, int(plan.oversample),
            float(plan.kahn), tuple(plan.polarization_axis), int(plan.flags) & ~16)


def _geometry_map(plan, kind: str, *, complete: bool = True) -> np.ndarray:
    """A float32 per-pixel map of the plan's geometry, cached (the last few geometries are kept).

    ``"weight"``: Ω·P of each pixel's first sample. It is filled lazily: 0 marks a pixel not
    yet computed, the spot kernel computes and stores the pixels of its windows, and
    ``complete=True`` fills the rest, so that a new geometry (a training set of random detector
    distances) costs only its windows' pixels. ``"mean"``: the mean Ω·P of each pixel's samples
    (read-only, always complete).
    """
    key = (kind, *_geometry_key(plan))
    with _cache_lock:
        entry = _geometry_cache.get(key)
        if entry is not None:
            _geometry_cache.move_to_end(key)
    if entry is None:
        image = np.zeros(plan.image_shape, dtype=np.float32)  # pages untouched until written
        if kind == "mean":
            _mean_weight_map(image, plan.rows, plan.panels, plan.sources, int(plan.oversample), float(plan.kahn),
                             *map(float, plan.polarization_axis), int(plan.flags))
            image.flags.writeable = False
        with _cache_lock:
            entry = _geometry_cache.setdefault(key, [image, kind == "mean"])  # [map, complete]
            while len(_geometry_cache) > _GEOMETRY_CACHE_SIZE:
                _geometry_cache.popitem(last=False)
    if complete and not entry[1]:
        _fill_weight_map(entry[0], plan.rows, plan.panels, plan.sources, int(plan.oversample), float(plan.kahn),
                         *map(float, plan.polarization_axis), int(plan.flags))
        entry[1] = True
    return entry[0]


def _uniform(plan) -> bool:
    return bool(uniform_sample_weight(int(plan.oversample), len(plan.sources), int(plan.flags)))


@numba.njit(parallel=True, cache=True)
def _scaled_copy(image, source, factor):
    """image = factor × source, row by row over the threads (zeros when ``source`` is empty)."""
    empty = source.shape[0] == 0
    for s in numba.prange(image.shape[0]):
        for f in range(image.shape[1]):
            image[s, f] = 0.0 if empty else source[s, f] * factor


def _background_image(plan) -> np.ndarray:
    """A new float32 image holding the plan's background term on every pixel (zeros without background).

    It is written by all threads, which also spreads over them the cost of a fresh image's first
    touch of its memory.
    """
    image = np.empty(plan.image_shape, dtype=np.float32)
    source, factor = np.zeros((0, 0), dtype=np.float32), 0.0
    if plan.background != 0.0 and len(plan.rows):
        if plan.flags & 16:  # nanoBragg's: scale·background·Ω·P(first sample)/steps
            source, factor = _geometry_map(plan, "weight"), plan.scale * plan.background / plan.steps
        else:
            source, factor = _geometry_map(plan, "weight" if _uniform(plan) else "mean"), plan.scale * plan.background
    _scaled_copy(image, source, np.float32(factor))
    return image


def spot_args(plan) -> tuple:
    """Kernel arguments after the windows: the plan's, without rows and background."""
    na, nb, nc = plan.n_cells
    return (plan.panels, plan.sources, plan.orientations, plan.a0, plan.shape_code, float(na), float(nb), float(nc),
            float(plan.fudge), plan.grid, int(plan.hkl_min[0]), int(plan.hkl_min[1]), int(plan.hkl_min[2]),
            float(plan.default_f), float(plan.inv_dmin), int(plan.oversample), float(plan.kahn),
            *map(float, plan.polarization_axis), int(plan.flags), float(plan.scale), float(plan.steps))


def _panel_row0(plan) -> np.ndarray:
    """Output row of each panel's row 0."""
    row0 = np.zeros(len(plan.panels), dtype=np.int64)
    row0[plan.rows[:, 0]] = plan.rows[:, 4] - plan.rows[:, 1]
    return row0


def render_spots_cpu(plan, tolerance: float = 1e-3, windows: SpotWindows | None = None) -> np.ndarray:
    """Spot-centric render of a :class:`~xrais.simulate.kernel.KernelPlan` on the CPU; float32 (n_slow, n_fast)."""
    if windows is None:
        windows = spot_windows(plan, tolerance)
    image = _background_image(plan)
    if len(windows):
        row0 = _panel_row0(plan)
        n_bands = -(-plan.image_shape[0] // BAND_ROWS)
        band_start, band_windows = _band_index(windows.windows, row0, n_bands)
        # bands in a fixed shuffled order, so that the threads' contiguous shares get equal work
        band_order = np.random.default_rng(0).permutation(n_bands).astype(np.int64)
        if _uniform(plan):
            mode = _SINGLE if plan.oversample == 1 else _UNIFORM
            weights = _geometry_map(plan, "weight", complete=False)
        else:
            mode, weights = _GENERAL, np.zeros((0, 0), dtype=np.float32)
        _render_bands(mode, image, weights, band_order, band_start, band_windows, windows.windows,
                      windows.miller_index, windows.row_table, row0, *spot_args(plan))
    return image


@numba.njit(cache=True)
def _window_rows(windows, table):
    """Windows cut into rows: orientation, source, panel, slow, fast start and end, output row and fast offset,
    reflection."""
    n = 0
    for w in range(windows.shape[0]):
        n += windows[w, 6] - windows[w, 5]
    out = np.empty((n, 9), dtype=np.int64)
    m = 0
    for w in range(windows.shape[0]):
        p = windows[w, 2]
        for si in range(windows[w, 5], windows[w, 6]):
            f_lo, f_hi = max(windows[w, 3], table[p, si, 0]), min(windows[w, 4], table[p, si, 1])
            if f_hi <= f_lo:
                continue
            out[m, 0], out[m, 1], out[m, 2], out[m, 3] = windows[w, 0], windows[w, 1], p, si
            out[m, 4], out[m, 5], out[m, 6], out[m, 7], out[m, 8] = f_lo, f_hi, table[p, si, 2], table[p, si, 3], \
                windows[w, 7]
            m += 1
    return out[:m]


def window_rows(windows: SpotWindows) -> np.ndarray:
    """The windows cut into rendered pixel rows, (n, 9) int64 (see :func:`render_spots_cuda`)."""
    return _window_rows(windows.windows, windows.row_table)


_KERNELS: dict[str, Any] = {}


def _cuda_kernels() -> dict[str, Any]:
    if not _KERNELS:
        @cuda.jit
        def render_rows(image, spans, hkl, panels, sources, orientations, a0, shape, na, nb, nc, fudge, grid, hmin,
                        kmin, lmin, default_f, inv_dmin, oversample, kahn, pol_ex, pol_ey, pol_ez, flags, scale,
                        steps):
            t, fi = cuda.grid(2)
            if t >= spans.shape[0]:
                return
            fi += spans[t, 4]
            if fi >= spans[t, 5]:
                return
            r = spans[t, 8]
            value = spot_pixel_value(spans[t, 2], fi, spans[t, 3], spans[t, 0], spans[t, 1], float(hkl[r, 0]),
                                     float(hkl[r, 1]), float(hkl[r, 2]), panels, sources, orientations, a0,
                                     shape, na, nb, nc, fudge, grid, hmin, kmin, lmin, default_f, inv_dmin,
                                     oversample, kahn, pol_ex, pol_ey, pol_ez, flags, scale, steps)
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

        _KERNELS["rows"] = render_rows
        _KERNELS["background"] = add_background
    return _KERNELS


def render_spots_cuda(plan, tolerance: float = 1e-3, *, threads: tuple[int, int] = (4, 32), to_host: bool = True,
                      windows: SpotWindows | None = None) -> Any:
    """Spot-centric render with the CUDA kernels (NumPy under the simulator, else CuPy unless ``to_host``)."""
    from xrais.simulate.kernel_cuda import simulator_active

    kernels = _cuda_kernels()
    if windows is None:
        windows = spot_windows(plan, tolerance)
    spans = window_rows(windows)
    hkl = np.ascontiguousarray(windows.miller_index)
    args = list(spot_args(plan))
    bg_args = [plan.rows, plan.panels, plan.sources, int(plan.oversample), float(plan.kahn),
               *map(float, plan.polarization_axis), int(plan.flags), float(plan.scale), float(plan.background),
               float(plan.steps)]
    sim = simulator_active()
    if sim:
        xp, image = np, np.zeros(plan.image_shape, dtype=np.float64)
    else:
        import cupy as cp

        xp, image = cp, cp.zeros(plan.image_shape, dtype=cp.float64)
        args = [cp.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
        bg_args = [cp.asarray(a) if isinstance(a, np.ndarray) else a for a in bg_args]
        spans, hkl = cp.asarray(spans), cp.asarray(hkl)
    if len(spans):
        width = int((spans[:, 5] - spans[:, 4]).max())
        blocks = (-(-len(spans) // threads[0]), max(1, -(-width // threads[1])))
        kernels["rows"][blocks, threads](image, spans, hkl, *args)
    if plan.background != 0.0 and len(plan.rows):
        width = int((plan.rows[:, 3] - plan.rows[:, 2]).max())
        blocks = (-(-len(plan.rows) // threads[0]), max(1, -(-width // threads[1])))
        kernels["background"][blocks, threads](image, *bg_args)
    image = image.astype(xp.float32)
    if sim:
        return image
    return xp.asnumpy(image) if to_host else image
