"""Spot-centric against brute-force rendering, side by side on the same XRAIS training images.

Method
------
Both methods render the same image through :func:`xrais.simulate.render` with the same backend
(``--backend numba``: the CPU, ``numba.set_num_threads(T)``; ``cuda``: the GPU, the image copied
back to the host): ``method="brute"`` evaluates every pixel with every orientation,
``method="spots"`` (default tolerance 1e-3) the same per-pixel physics only near each
orientation's Bragg spots. Each time is the median of ``--repeat`` runs after a first call that
compiles the kernels; plan building, the window search and the image allocation are included.
The table also gives the Pearson r of the two images and their total-photon ratio.

Cases: the XRAIS Appendix A set-up (λ 0.9795 Å, 250 mm, 4·10¹¹ photons on a 30 µm beam, one
sample per pixel, one source), the lysozyme-like cell 79.1 79.1 38.4 Å in P 4₃2₁2 with domains
of ``--domains-um`` (XRAIS draws 0.05, 0.1 or 0.15 µm; N from ``Crystal.from_domain_size``),
0.5° mosaic spread in 10 domains, random-Wilson |F| to the detector corner and the
``gauss_2022`` shape, on a full PILATUS 6M (every domain size) and a full EIGER 16M (0.1 µm).

Usage::

    python benchmarks/bench_spots.py [--repeat 3] [--threads 2] [--only pilatus6m] [--backend cuda]
        [--domains-um 0.05 0.1 0.15]
"""

from __future__ import annotations

import argparse

import numba
import numpy as np

from _common import cpu_model, median_s
from xrais.geometry import Beam, Detector
from xrais.simulate.crystal import Crystal
from xrais.simulate.nanobragg import nanobragg_crystal
from xrais.simulate.render import render
from xrais.simulate.structure_factors import StructureFactors

CELL = (79.1, 79.1, 38.4, 90.0, 90.0, 90.0)
SPACE_GROUP = "P 43 21 2"
DETECTORS = ("pilatus6m", "eiger16m")




def scene(name: str, domain_um: float = 0.1):
    det = Detector.from_catalog(name, distance_mm=250.0)
    beam = Beam(wavelength_A=0.9795, polarization_fraction=0.5, fluence_photons=4e11, beam_size_um=30.0)
    n_slow, n_fast = det.array_shape
    corners = det.resolution_at_pixel_A(beam, np.array([0, n_fast, 0, n_fast]), np.array([0, 0, n_slow, n_slow]))
    d_min = float(np.floor(10 * corners.min()) / 10)
    sf = StructureFactors.random_wilson(CELL, SPACE_GROUP, d_min_A=d_min, seed=1)
    crystal = Crystal.from_domain_size(CELL, domain_um, structure_factors=sf, U=nanobragg_crystal(CELL).U,
                                       space_group=SPACE_GROUP, shape="gauss_2022", mosaic_spread_deg=0.5,
                                       mosaic_domains=10)
    return crystal, beam, det


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=numba.config.NUMBA_NUM_THREADS)
    ap.add_argument("--only", choices=DETECTORS, action="append")
    ap.add_argument("--backend", choices=("numba", "cuda"), default="numba")
    ap.add_argument("--domains-um", type=float, nargs="+", default=[0.05, 0.1, 0.15],
                    help="domain sizes rendered on the PILATUS 6M (the EIGER 16M: 0.1 µm)")
    args = ap.parse_args()
    numba.set_num_threads(args.threads)
    where = f"CPU {cpu_model()}, {args.threads} thread(s)" if args.backend == "numba" else "GPU (cuda backend)"
    print(f"# brute vs spots, {where}, median of {args.repeat}")
    rows = []
    for name in args.only or DETECTORS:
        for domain_um in args.domains_um if name == "pilatus6m" else [0.1]:
            crystal, beam, det = scene(name, domain_um)
            kw = dict(oversample=1, backend=args.backend)
            for method in ("brute", "spots"):  # compile
                render(crystal, beam, det, method=method, **kw)
            brute_s, brute = median_s(lambda: render(crystal, beam, det, method="brute", **kw), args.repeat)
            spots_s, spots = median_s(lambda: render(crystal, beam, det, method="spots", **kw), args.repeat)
            r = float(np.corrcoef(brute.ravel().astype(np.float64), spots.ravel().astype(np.float64))[0, 1])
            ratio = spots.sum(dtype=np.float64) / brute.sum(dtype=np.float64)
            n = crystal.n_cells
            rows.append((f"{name} {domain_um:g} µm N={n[0]}×{n[1]}×{n[2]}", brute_s, spots_s, brute_s / spots_s, r,
                         ratio))
    print(f"| {'image':<32} | {'brute s/image':>13} | {'spots s/image':>13} | {'speed-up':>8} | "
          f"{'spots images/s':>14} | {'Pearson r':>9} | {'sum ratio':>9} |")
    print(f"|{'-' * 34}|{'-' * 15}|{'-' * 15}|{'-' * 10}|{'-' * 16}|{'-' * 11}|{'-' * 11}|")
    for name, b, s, x, r, ratio in rows:
        print(f"| {name:<32} | {b:>13.3f} | {s:>13.4f} | {x:>7.1f}× | {1 / s:>14.1f} | {r:>9.6f} | {ratio:>9.5f} |")

if __name__ == "__main__":
    main()
