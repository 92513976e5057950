"""Labelled training images per second: the default XRAIS PILATUS 6M set, split by stage.

Makes ``--n-images`` images of the default resolution set restricted to the PILATUS 6M (XRAIS
Appendix A: 200–300 mm, λ 0.9795 Å, 4e11 photons, 30 µm beam, 25 µm crystal of 0.05–0.15 µm
domains, 0.05–1° mosaic spread in 10 domains, air + water + parasitic background, Poisson noise,
beam stop, hot and dead pixels) with ``xrais.simulate.dataset.simulate_dataset`` into a temporary
folder, after one warm-up image (Numba compile) and after the structure-bank |F| tables of the
timed images are made (a long run makes each of its ``structure_bank_size`` tables once; their
one-time cost is printed apart), and prints the time per image of each stage and the images
per second, beside the rate XRAIS reports (about 0.22 PILATUS 6M images/s per A100
GPU: 200,000 images in 60 min on 256 A100s; a figure from the paper, not measured here).

Usage::

    python benchmarks/bench_simulate.py [--n-images 4] [--backend numba|cuda] [--threads N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import tempfile
import time

import numba
import numpy as np

from _common import cpu_model
from xrais._version import __version__
from xrais.simulate.config import SimulationConfig
from xrais.simulate.dataset import simulate_dataset
from xrais.simulate.sampler import sample_image
from xrais.simulate.structure_bank import structure_bank_for

XRAIS_PAPER_IMAGES_PER_S_PER_A100 = 200_000 / 3600 / 256
TARGET_IMAGES_PER_S = 1.5  # on 2 CPU cores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-images", type=int, default=4)
    ap.add_argument("--backend", default="numba")
    ap.add_argument("--threads", type=int, default=numba.config.NUMBA_NUM_THREADS)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    numba.set_num_threads(args.threads)
    config = SimulationConfig(detector_choices=("pilatus6m",))
    with tempfile.TemporaryDirectory() as warm:
        simulate_dataset(config, 1, warm, seed=args.seed + 1000, backend=args.backend)
    # the structure bank's tables of the timed images, made first: a long run makes each once
    bank = structure_bank_for(config)
    entries = sorted({sample_image(config, args.seed, i).structure_index for i in range(args.n_images)})
    t0 = time.perf_counter()
    for j in entries:
        bank.table(j)
    fft_s = (time.perf_counter() - t0) / max(1, len(entries))
    with tempfile.TemporaryDirectory() as out:
        report = simulate_dataset(config, args.n_images, out, seed=args.seed, backend=args.backend)
    n = len(report.made)
    total = sum(report.seconds.values())
    print(f"{'stage':<22}{'s/image':>10}{'share':>8}")
    for stage, seconds in report.seconds.items():
        print(f"{stage:<22}{seconds / n:>10.3f}{seconds / total:>8.1%}")
    print(f"{'total':<22}{total / n:>10.3f}")
    print(f"\n{'case':<44}{'XRAIS paper (A100)':>20}{'xrais':>10}{'ratio':>8}")
    rate = n / total
    print(f"{'PILATUS 6M labelled images/s, ' + args.backend + f' ×{args.threads}':<44}"
          f"{XRAIS_PAPER_IMAGES_PER_S_PER_A100:>20.3f}{rate:>10.3f}{rate / XRAIS_PAPER_IMAGES_PER_S_PER_A100:>8.2f}")
    verdict = "met" if rate >= TARGET_IMAGES_PER_S else "not met"
    print(f"target ≥ {TARGET_IMAGES_PER_S} labelled PILATUS 6M images/s: {rate:.2f} ({verdict})")
    print(f"structure bank: {fft_s:.3f} s per |F| table (made once per entry: {len(bank)} entries cost "
          f"{fft_s * len(bank):.0f} s per process, {fft_s * len(bank) / 10_000:.4f} s/image over 10,000 images)")
    print(f"CPU {cpu_model()} ({numba.config.NUMBA_NUM_THREADS} threads available); backend {args.backend}; "
          f"xrais {__version__}, numba {numba.__version__}, numpy {np.__version__}, Python {platform.python_version()}; "
          f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; {n} images, seed {args.seed}")


if __name__ == "__main__":
    main()
