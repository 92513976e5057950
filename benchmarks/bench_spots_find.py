"""Spot-finding speed: the Numba dispersion kernel against the same algorithm in NumPy/SciPy.

Method
------
Each real frame is read once (the read is excluded). :func:`xrais.infer.spots.find_spots`
runs on ``--threads`` Numba threads (``find_spots(..., n_threads=T)``; the kernels are compiled
by a first call); the reference, :func:`spot_finding_scipy.find_spots_scipy` (the same
dispersion threshold with ``scipy.ndimage`` box sums and ``label``), runs on one core. Every
time is the median (and the best) of ``--repeat`` calls after a warm-up call. Before timing,
both must find the same spots: the same count and centroids within 1e-6 px.

Frames: the PILATUS3 6M thaumatin still ``thau_3_2_0001.cbf`` (2463 × 2527) and the EIGER 16M
frame ``dlsnxs2cbf_therm_0001.cbf.gz`` (4148 × 4362, a full 16M frame).

Targets: at most 10 ms per PILATUS 6M frame per core (the 1-thread time), and at least 5× the
SciPy version on one core.

Usage::

    python benchmarks/bench_spots_find.py --data ../shared/data [--repeat 10] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import time
from pathlib import Path

import numba
import numpy as np
import scipy

from _common import cpu_model
from spot_finding_scipy import find_spots_scipy
from xrais._version import __version__
from xrais.conditioning import read_image
from xrais.infer.spots import SpotFinderParams, find_spots

FRAMES = {
    "PILATUS 6M": "real/pilatus6m/thau_3_2_0001.cbf",
    "EIGER 16M": "real/eiger16m/dlsnxs2cbf_therm_0001.cbf.gz",
}
TARGET_MS_PER_CORE = 10.0  # per PILATUS 6M frame
TARGET_SPEEDUP = 5.0  # against the SciPy version, one core each
CENTROID_TOL_PX = 1e-6


def times_ms(fn, repeat: int) -> tuple[float, float]:
    """Median and best milliseconds of ``repeat`` calls of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times), min(times)


def check_same(name: str, numba_spots, scipy_spots: dict) -> float:
    """Raise unless both found the same spots; the largest centroid difference in px."""
    n_ref = len(scipy_spots["fast_px"])
    if len(numba_spots) != n_ref:
        raise SystemExit(f"{name}: find_spots found {len(numba_spots)} spots, the SciPy version {n_ref}")
    if n_ref == 0:
        return 0.0
    worst = float(max(np.abs(numba_spots.fast_px - scipy_spots["fast_px"]).max(),
                      np.abs(numba_spots.slow_px - scipy_spots["slow_px"]).max()))
    if not worst <= CENTROID_TOL_PX:
        raise SystemExit(f"{name}: centroids differ by up to {worst:.3g} px (tolerance {CENTROID_TOL_PX:g})")
    return worst


def machine(threads: list[int]) -> str:
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (f"CPU {cpu_model()} ({numba.config.NUMBA_NUM_THREADS} threads available, timed on "
            f"{'/'.join(map(str, threads))}; load average {load}); xrais {__version__}, numba {numba.__version__}, "
            f"scipy {scipy.__version__}, numpy {np.__version__}, Python {platform.python_version()}; "
            f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, numba.config.NUMBA_NUM_THREADS])
    args = ap.parse_args()
    threads = sorted({max(1, min(t, numba.config.NUMBA_NUM_THREADS)) for t in args.threads})
    params = SpotFinderParams()

    rows, verdicts = [], []
    for name, rel in FRAMES.items():
        image = read_image(args.data / rel)
        pixels, mask = image.pixels, image.mask
        reference = find_spots_scipy(pixels, mask, params)
        worst = check_same(name, find_spots(pixels, mask, params, n_threads=threads[0]), reference)
        scipy_ms, scipy_best = times_ms(lambda p=pixels, m=mask: find_spots_scipy(p, m, params),
                                        max(3, args.repeat // 3))
        ms = {t: times_ms(lambda p=pixels, m=mask, t=t: find_spots(p, m, params, n_threads=t), args.repeat)
              for t in threads}
        shape = f"{pixels.shape[1]}×{pixels.shape[0]}"
        rows.append((name, shape, len(reference["fast_px"]), worst, scipy_ms, scipy_best, ms))
        one = ms.get(1, ms[threads[0]])[0]
        if name == "PILATUS 6M":
            verdicts.append((f"{name}: ≤ {TARGET_MS_PER_CORE:g} ms per frame per core (1 thread: {one:.1f} ms)",
                             one <= TARGET_MS_PER_CORE))
        verdicts.append((f"{name}: ≥ {TARGET_SPEEDUP:g}× the SciPy version on one core ({scipy_ms / one:.1f}×)",
                         scipy_ms / one >= TARGET_SPEEDUP))

    print(f"# find_spots (Numba) vs the SciPy version, read excluded, median (best) of {args.repeat} after a warm-up")
    head = "".join(f"{f'numba {t} thr ms':>20}" for t in threads)
    ratios = "".join(f"{f'scipy/numba {t}':>15}" for t in threads)
    print(f"{'frame':<12}{'fast×slow':>11}{'spots':>7}{'max Δc px':>11}{'scipy ms':>18}{head}{ratios}"
          f"{f'{threads[-1]} vs {threads[0]} thr':>12}")
    for name, shape, n, worst, scipy_ms, scipy_best, ms in rows:
        cells = "".join(f"{f'{ms[t][0]:.1f} ({ms[t][1]:.1f})':>20}" for t in threads)
        cells += "".join(f"{scipy_ms / ms[t][0]:>14.1f}×" for t in threads)
        scaling = ms[threads[0]][0] / ms[threads[-1]][0]
        print(f"{name:<12}{shape:>11}{n:>7}{worst:>11.1e}{f'{scipy_ms:.0f} ({scipy_best:.0f})':>18}{cells}"
              f"{scaling:>11.2f}×")
    for text, ok in verdicts:
        print(f"target {text}: {'PASS' if ok else 'MISS'}")
    print(machine(threads))


if __name__ == "__main__":
    main()
