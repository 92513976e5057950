"""Packing a render into flat arrays (the kernel plan) and choosing the backend.

The plan is what both kernels read: panels as rows of numbers, the sources, the orientation
matrices, the |F| grid and scalar switches. It is built once on the host; the CPU kernel reads
it directly and the GPU kernel after a copy to the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from xrais.errors import ConfigError
from xrais.geometry import Detector

__all__ = ["KernelPlan", "panel_table", "pixel_rows", "choose_backend", "run_plan", "Backend", "METHODS",
           "AUTO_SPOT_FRACTION", "AUTO_SPOT_FRACTION_PER_SAMPLE", "FLAG_OMEGA_ONCE", "FLAG_POLAR_ONCE",
           "FLAG_POINT_PIXEL", "FLAG_NO_POLAR", "FLAG_NANOBRAGG_BACKGROUND"]

Backend = Literal["auto", "numba", "cuda"]

FLAG_OMEGA_ONCE, FLAG_POLAR_ONCE, FLAG_POINT_PIXEL, FLAG_NO_POLAR, FLAG_NANOBRAGG_BACKGROUND = 1, 2, 4, 8, 16


def panel_table(detector: Detector) -> np.ndarray:
    """Per panel: origin xyz (mm), fast xyz, slow xyz, pitch f, s (mm), close distance (mm); (P, 12)."""
    origin = np.array([p.origin_mm for p in detector.panels], dtype=np.float64).reshape(-1, 3)
    fast = np.array([p.fast_axis for p in detector.panels], dtype=np.float64).reshape(-1, 3)
    slow = np.array([p.slow_axis for p in detector.panels], dtype=np.float64).reshape(-1, 3)
    pitch = np.array([p.pixel_size_mm for p in detector.panels], dtype=np.float64).reshape(-1, 2)
    normal = np.cross(fast, slow)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    close = np.abs(np.einsum("ij,ij->i", origin, normal))  # Panel.distance_mm
    return np.column_stack([origin, fast, slow, pitch, close])


def pixel_rows(detector: Detector, roi: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """One row per (panel, slow line) to render: panel, slow index, fast range, output slow, output fast offset.

    ``roi`` = (fast_min, fast_max, slow_min, slow_max), inclusive, in data-array coordinates
    (nanoBragg ``-roi``); pixels outside it are not computed (they stay 0).
    """
    n_slow, n_fast = detector.array_shape
    f_min, f_max, s_min, s_max = roi if roi is not None else (0, n_fast - 1, 0, n_slow - 1)
    blocks = []
    for i, p in enumerate(detector.panels):
        off_f, off_s = p.array_offset_px
        f_lo = max(0, f_min - off_f)
        f_hi = min(p.image_size[0], f_max - off_f + 1)
        if f_hi <= f_lo:
            continue
        s = np.arange(max(0, s_min - off_s), min(p.image_size[1], s_max - off_s + 1), dtype=np.int64)
        block = np.empty((len(s), 6), dtype=np.int64)
        block[:] = (i, 0, f_lo, f_hi, off_s, off_f)
        block[:, 1] = s
        block[:, 4] += s
        blocks.append(block)
    return np.concatenate(blocks) if blocks else np.zeros((0, 6), dtype=np.int64)


@dataclass(frozen=True)
class KernelPlan:
    """Everything a kernel needs, as arrays and numbers (see :func:`xrais.simulate.physics.pixel_value`)."""

    image_shape: tuple[int, int]
    rows: np.ndarray
    panels: np.ndarray
    sources: np.ndarray
    orientations: np.ndarray
    a0: np.ndarray
    shape_code: int
    n_cells: tuple[float, float, float]
    fudge: float
    grid: np.ndarray
    hkl_min: tuple[int, int, int]
    default_f: float
    inv_dmin: float
    oversample: int
    kahn: float
    polarization_axis: tuple[float, float, float]
    flags: int
    scale: float
    background: float

    @property
    def steps(self) -> int:
        """Samples per pixel: sources × orientations × oversample²."""
        return len(self.sources) * len(self.orientations) * self.oversample**2

    @property
    def evaluations(self) -> int:
        """Lattice evaluations of the whole render: pixels × steps."""
        return int((self.rows[:, 3] - self.rows[:, 2]).sum()) * self.steps if len(self.rows) else 0

    def kernel_args(self) -> tuple:
        """Positional arguments of the kernels, after the output image."""
        na, nb, nc = self.n_cells
        return (self.rows, self.panels, self.sources, self.orientations, self.a0, self.shape_code, float(na),
                float(nb), float(nc), float(self.fudge), self.grid, int(self.hkl_min[0]), int(self.hkl_min[1]),
                int(self.hkl_min[2]), float(self.default_f), float(self.inv_dmin), int(self.oversample),
                float(self.kahn), *map(float, self.polarization_axis), int(self.flags), float(self.scale),
                float(self.background), float(self.steps))


def choose_backend(backend: Backend) -> str:
    """``"numba"`` or ``"cuda"``: ``auto`` picks the GPU when CUDA works.

    Raises
    ------
    ConfigError
        For an unknown name, or ``cuda`` without a usable device.
    """
    from xrais.simulate.kernel_cuda import cuda_available, simulator_active

    if backend == "auto":
        return "cuda" if cuda_available() and not simulator_active() else "numba"
    if backend == "numba":
        return "numba"
    if backend == "cuda":
        if not cuda_available():
            raise ConfigError("backend 'cuda': no CUDA device (or numba-cuda) is available; use 'numba' or 'auto'")
        return "cuda"
    raise ConfigError(f"backend {backend!r}: expected 'auto', 'numba' or 'cuda'")


#: ``method="auto"`` renders spot-centric when its windows hold fewer than this fraction of the
#: brute-force (pixel, orientation, source) terms and every sample of a pixel has the same Ω·P
#: (one sub-pixel and one source, or Ω and P once per pixel): a spot term recomputes the pixel's
#: geometry, which the brute-force kernel shares between orientations, and the window search
#: costs too (on the CPU the two methods take the same time near a fraction of 0.8).
AUTO_SPOT_FRACTION = 0.5
#: The same when Ω·P varies between the samples of a pixel (sub-pixels, several sources), where a
#: spot term also recomputes it (the two methods take the same time near 0.3).
AUTO_SPOT_FRACTION_PER_SAMPLE = 0.2
METHODS = ("auto", "brute", "spots")


def run_plan(plan: KernelPlan, backend: Backend = "auto", *, method: str = "brute",
             tolerance: float = 1e-3) -> np.ndarray:
    """Render a plan; float32 image of shape ``plan.image_shape`` (photons).

    ``method="brute"`` evaluates every pixel with every orientation and source;
    ``method="spots"`` the same per-pixel physics only where an orientation's lattice transform
    is at least ``tolerance`` × its peak (:mod:`xrais.simulate.kernel_spots`); ``method="auto"``
    lists the spot windows and renders spot-centric when they hold fewer than
    :data:`AUTO_SPOT_FRACTION` (:data:`AUTO_SPOT_FRACTION_PER_SAMPLE`) of the brute-force
    terms, else brute force.
    """
    if method not in METHODS:
        raise ConfigError(f"method {method!r}: expected one of {', '.join(METHODS)}")
    if method != "brute" and not 0.0 < tolerance < 1.0:
        raise ConfigError(f"tolerance {tolerance!r}: expected 0 < tolerance < 1")
    windows = None
    if method == "auto":
        from xrais.simulate.physics import uniform_sample_weight
        from xrais.simulate.spot_windows import spot_windows

        windows = spot_windows(plan, tolerance)
        shared = uniform_sample_weight(plan.oversample, len(plan.sources), plan.flags)
        fraction = AUTO_SPOT_FRACTION if shared else AUTO_SPOT_FRACTION_PER_SAMPLE
        method = "spots" if windows.pixel_terms < fraction * plan.evaluations / plan.oversample**2 else "brute"
    if choose_backend(backend) == "cuda":
        if method == "spots":
            from xrais.simulate.kernel_spots import render_spots_cuda

            return render_spots_cuda(plan, tolerance, windows=windows)
        from xrais.simulate.kernel_cuda import render_cuda

        return render_cuda(plan)
    if method == "spots":
        from xrais.simulate.kernel_spots import render_spots_cpu

        return render_spots_cpu(plan, tolerance, windows=windows)
    from xrais.simulate.kernel_cpu import render_cpu

    return render_cpu(plan)
