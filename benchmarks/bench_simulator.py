"""Simulator speed: xrais ``render`` against the nanoBragg C program, on the same inputs.

Method
------
The reference is nanoBragg itself, built from the copy in ``<shared>/tools/nanobragg`` with its
own ``build.sh`` (``gcc -O2 -fopenmp``) into a temporary folder, and run as a subprocess with
``OMP_NUM_THREADS=T``. xrais runs its Numba kernel in this process with
``numba.set_num_threads(T)``. Both compute the same image, and the benchmark checks this:
the Pearson r of the two images must be at least 0.999 (it is 1 to float32 rounding), or
the run fails. Each time is the median of ``--repeat`` runs.

Two cases:

``evaluations``
    A 512×512 detector of 0.172 mm pixels at 100 mm, the lysozyme-like cell 79.1 79.1 38.4 Å,
    5×5×5 cells (square shape), F = 100, λ = 1 Å, 3×3 sub-pixels, mosaic spread 0.5° in
    10 domains (fixed seed): 512²·9·10 = 23.6 million lattice evaluations (pixel ×
    sub-pixel × domain). xrais is called with nanoBragg's once-per-pixel Ω and polarization
    (``FLAG_OMEGA_ONCE | FLAG_POLAR_ONCE``), so the two programs do the same work and give the
    same numbers. The table gives millions of evaluations per second.
``PILATUS 6M, XRAIS Appendix A``
    The training-image set-up of the XRAIS paper (Appendix A): a full PILATUS 6M at 250 mm,
    λ = 0.9795 Å, 4·10¹¹ photons on a 30 µm beam, 0.02 mrad divergence sampled with one step
    (the central ray), 0.1 µm mosaic domains of the lysozyme-like cell (13×13×27 cells),
    mosaic spread 0.5° in 10 domains (nanoBragg's default count), one sample per pixel. Two
    kinds of |F|: constant (F = 100, which is all nanoBragg can take without an hkl file)
    for the comparison with C, and ``StructureFactors.random_wilson`` in P 4₃2₁2 to the
    resolution of the detector corner, as a training image would use. The table gives seconds
    per image; with ``--backend cuda`` it adds images per second on the GPU.

The ratio column is always the speed of xrais over the speed of nanoBragg (> 1: xrais faster),
so it is xrais/C for rates and C/xrais for times.

Notes
-----
* The C times are the wall clock of the whole subprocess: process start-up, set-up and
  writing the float and SMV files are included. The benchmark measures that overhead with
  the same arguments and a one-pixel ``-roi`` and prints it under the table; it is small next
  to the runs.
* The xrais times are those of :func:`xrais.simulate.render.render`, plan building included,
  after a first call that compiles the kernel.
* nanoBragg computes every pixel of its 2463×2527 array; xrais computes the 60 PILATUS
  modules only (the gap pixels stay 0), 8.5 % fewer pixels. The per-evaluation ratio, which
  corrects for this, is printed under the table. The images are compared on module pixels.
* nanoBragg forces at least two divergence steps when a divergence range is given, so the C
  run gets no ``-divergence``: one source along the beam, the same as xrais with one step.
* nanoBragg's polarization default is unpolarized (Kahn factor 0); xrais is given
  ``polarization_fraction=0.5`` to match. The 25 µm crystal size of Appendix A is left out:
  both programs give the diffraction of one mosaic domain, and the number of domains in the
  crystal would only scale the image, not change the work.
* The XRAIS paper reports 200,000 PILATUS 6M images in about 60 minutes on 256 A100 GPUs
  (Appendix A1.5), about 0.22 images/s per GPU, with background and noise included.

Usage::

    python benchmarks/bench_simulator.py [--shared ../shared] [--repeat 3] [--threads 1 2]
                                         [--backend cuda] [--quick]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.util
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numba
import numpy as np

from _common import cpu_model, median_s
from xrais._version import __version__
from xrais.geometry import Beam, Detector
from xrais.simulate.crystal import Crystal
from xrais.simulate.kernel import FLAG_OMEGA_ONCE, FLAG_POLAR_ONCE
from xrais.simulate.kernel_cuda import cuda_available, simulator_active
from xrais.simulate.nanobragg import nanobragg_crystal, nanobragg_detector
from xrais.simulate.render import render, render_plan
from xrais.simulate.structure_factors import StructureFactors

CELL = (79.1, 79.1, 38.4, 90.0, 90.0, 90.0)  # lysozyme-like, P 43 21 2
SPACE_GROUP = "P 43 21 2"
MOSAIC_SEED = 12345678
PIXEL_MM = 0.172
MIN_R = 0.999


# --------------------------------------------------------------------------------------------
# nanoBragg side


def build_nanobragg(shared: Path, out: Path) -> tuple[Path | None, str]:
    """Build nanoBragg into ``out``; (path, "") or (None, why it was skipped)."""
    script = shared / "tools" / "nanobragg" / "build.sh"
    if not script.is_file():
        return None, f"nanoBragg sources not found ({script})"
    if shutil.which("gcc") is None:
        return None, "gcc not found"
    done = subprocess.run(["bash", str(script), str(out)], capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return None, f"build.sh failed (gcc with OpenMP needed): {last}"
    return out / "nanoBragg", ""


def nanobragg_args(*, n_cells, wavelength_A, distance_mm, n_fast, n_slow, xbeam_mm, ybeam_mm, oversample,
                   mosaic_deg, domains, extra=()) -> list[str]:
    """nanoBragg's command line for a square-shaped crystal of :data:`CELL` with constant F = 100."""
    return ["-cell", *map(str, CELL), "-default_F", "100",
            "-Na", str(n_cells[0]), "-Nb", str(n_cells[1]), "-Nc", str(n_cells[2]),
            "-lambda", str(wavelength_A), "-distance", str(distance_mm), "-pixel", str(PIXEL_MM),
            "-detpixels_f", str(n_fast), "-detpixels_s", str(n_slow),
            "-Xbeam", f"{xbeam_mm:.6f}", "-Ybeam", f"{ybeam_mm:.6f}", "-oversample", str(oversample),
            "-square_xtal", "-mosaic", str(mosaic_deg), "-mosaic_dom", str(domains), "-mosaic_seed", str(MOSAIC_SEED),
            *extra, "-nopgm", "-noprogress", "-nonoise"]


def run_nanobragg(exe: Path, args: list[str], threads: int, workdir: Path) -> tuple[float, np.ndarray]:
    """Run nanoBragg in an empty folder; (wall-clock seconds, float image (slow, fast))."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)  # empty: nanoBragg would read a stale ./Fdump.bin
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [str(exe), *args, "-floatfile", "image.bin", "-intfile", "image.img"]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=workdir, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - t0
    n_fast = int(args[args.index("-detpixels_f") + 1])
    n_slow = int(args[args.index("-detpixels_s") + 1])
    return seconds, np.fromfile(workdir / "image.bin", dtype="<f4").reshape(n_slow, n_fast)


def overhead_s(exe: Path, args: list[str], tmp: Path) -> float:
    """Seconds of a nanoBragg run that computes one pixel: start-up, set-up and writing the files."""
    return statistics.median(run_nanobragg(exe, args + ["-roi", "0", "0", "0", "0"], 1, tmp / "roi")[0]
                             for _ in range(3))


def time_nanobragg(exe: Path, args: list[str], threads: int, workdir: Path, repeat: int) -> tuple[float, np.ndarray]:
    """Median wall-clock seconds of ``repeat`` runs, and the image of the last."""
    times = []
    for _ in range(repeat):
        seconds, image = run_nanobragg(exe, args, threads, workdir)
        times.append(seconds)
    return statistics.median(times), image


# --------------------------------------------------------------------------------------------
# xrais side




def pearson_r(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(np.float64).ravel(), b.astype(np.float64).ravel())[0, 1])


def gpu_usable() -> bool:
    """A real CUDA device (not the numba-cuda simulator) and CuPy."""
    if simulator_active() or not cuda_available():
        return False
    return importlib.util.find_spec("cupy") is not None


# --------------------------------------------------------------------------------------------
# cases


def case_evaluations(exe, tmp: Path, threads: list[int], repeat: int, n_px: int, rows: list, notes: list) -> None:
    oversample, domains, mosaic = 3, 10, 0.5
    xbeam, ybeam = round(0.48 * n_px * PIXEL_MM, 3), round(0.52 * n_px * PIXEL_MM, 3)
    det = nanobragg_detector(pixel_mm=PIXEL_MM, n_fast=n_px, n_slow=n_px, distance_mm=100.0, xbeam_mm=xbeam,
                             ybeam_mm=ybeam)
    crystal = nanobragg_crystal(CELL, (0, 0, 0), structure_factors=StructureFactors.constant(100.0), n_cells=(5, 5, 5),
                                shape="square", mosaic_spread_deg=mosaic, mosaic_domains=domains,
                                mosaic_seed=MOSAIC_SEED)
    beam = Beam(wavelength_A=1.0, polarization_fraction=0.5)
    options = dict(oversample=oversample, backend="numba", flags=FLAG_OMEGA_ONCE | FLAG_POLAR_ONCE)
    evaluations = render_plan(crystal, beam, det, oversample=oversample).evaluations
    name = f"evaluations {n_px}×{n_px}, {oversample}×{oversample} sub-px, {domains} domains"

    t0 = time.perf_counter()
    ours = render(crystal, beam, det, **options)  # compiles the kernel
    notes.append(f"xrais first call (Numba compile + one run): {time.perf_counter() - t0:.1f} s")
    args = nanobragg_args(n_cells=(5, 5, 5), wavelength_A=1.0, distance_mm=100, n_fast=n_px, n_slow=n_px,
                          xbeam_mm=xbeam, ybeam_mm=ybeam, oversample=oversample, mosaic_deg=mosaic, domains=domains)
    for t in threads:
        numba.set_num_threads(t)
        mine, _ = median_s(lambda: render(crystal, beam, det, **options), repeat)
        c_rate, r = float("nan"), float("nan")
        if exe is not None:
            c_s, ref = time_nanobragg(exe, args, t, tmp / "eval", repeat)
            c_rate, r = evaluations / c_s / 1e6, pearson_r(ref, ours)
        rows.append((name, f"cpu×{t}", c_rate, evaluations / mine / 1e6, "Meval/s", r))
    if exe is not None:
        notes.append(f"nanoBragg start-up, set-up and file output, included in its times: "
                     f"{overhead_s(exe, args, tmp):.3f} s per {n_px}×{n_px} run (same arguments, 1-pixel -roi)")


def case_pilatus(exe, tmp: Path, threads: list[int], repeat: int, backend: str, rows: list, notes: list) -> None:
    distance, wavelength, domains, mosaic = 250.0, 0.9795, 10, 0.5
    center_fs = (1231.5, 1263.5)  # (fast, slow) px, the array centre
    det = Detector.from_catalog("pilatus6m", distance_mm=distance, beam_center_px=center_fs)
    beam = Beam(wavelength_A=wavelength, polarization_fraction=0.5, fluence_photons=4e11, beam_size_um=30.0,
                divergence_mrad=0.02)
    n_slow, n_fast = det.array_shape
    # resolution at the farthest array corner: the |F| table reaches every pixel
    corners_f, corners_s = np.array([0, n_fast, 0, n_fast]), np.array([0, 0, n_slow, n_slow])
    d_min = float(np.floor(10 * det.resolution_at_pixel_A(beam, corners_f, corners_s).min()) / 10)
    u = nanobragg_crystal(CELL).U  # nanoBragg's default orientation
    common = dict(U=u, space_group=SPACE_GROUP, shape="square", mosaic_spread_deg=mosaic, mosaic_domains=domains,
                  mosaic_seed=MOSAIC_SEED)
    t0 = time.perf_counter()
    wilson = StructureFactors.random_wilson(CELL, SPACE_GROUP, d_min_A=d_min)
    notes.append(f"random-Wilson |F| table ({wilson.source}): {time.perf_counter() - t0:.2f} s, not in the times")
    crystals = {
        "const F": Crystal.from_domain_size(CELL, 0.1, structure_factors=StructureFactors.constant(100.0), **common),
        "random-Wilson F": Crystal.from_domain_size(CELL, 0.1, structure_factors=wilson, **common),
    }
    n_cells = crystals["const F"].n_cells
    evaluations = render_plan(crystals["const F"], beam, det).evaluations
    c_evaluations = n_fast * n_slow * domains
    modules = ~det.gap_mask()
    args = nanobragg_args(n_cells=n_cells, wavelength_A=wavelength, distance_mm=distance, n_fast=n_fast,
                          n_slow=n_slow, xbeam_mm=center_fs[1] * PIXEL_MM - PIXEL_MM / 2,
                          ybeam_mm=center_fs[0] * PIXEL_MM - PIXEL_MM / 2, oversample=1, mosaic_deg=mosaic,
                          domains=domains, extra=["-flux", "4e11", "-exposure", "1", "-beamsize", "0.03"])
    name = f"PILATUS 6M, XRAIS App. A, N={n_cells[0]}×{n_cells[1]}×{n_cells[2]}"
    images = {}
    per_eval = []
    for kind, crystal in crystals.items():
        for t in threads:
            numba.set_num_threads(t)
            mine, images[kind] = median_s(
                lambda: render(crystal, beam, det, oversample=1, backend="numba", divergence_steps=1), repeat)
            c_s, r = float("nan"), float("nan")
            if exe is not None and kind == "const F":
                c_s, ref = time_nanobragg(exe, args, t, tmp / "pilatus", repeat)
                r = pearson_r(ref[modules], images[kind][modules])
                per_eval.append(f"cpu×{t} {(evaluations / mine) / (c_evaluations / c_s):.2f}")
            rows.append((f"{name}, {kind}", f"cpu×{t}", c_s, mine, "s/image", r))
    if exe is not None:
        notes.append(f"nanoBragg start-up, set-up and file output, included in its times: "
                     f"{overhead_s(exe, args, tmp):.3f} s per PILATUS run (same arguments, 1-pixel -roi)")
    if per_eval:
        notes.append(f"PILATUS: nanoBragg computes {n_fast * n_slow:,} pixels (gaps included), xrais "
                     f"{int(modules.sum()):,} (modules only); per evaluation xrais/C = " + ", ".join(per_eval))
    if backend == "cuda":
        if not gpu_usable():
            notes.append("--backend cuda: no CUDA device with numba-cuda and CuPy here; no GPU row")
            return
        from numba import cuda

        for kind, crystal in crystals.items():
            gpu_image = render(crystal, beam, det, oversample=1, backend="cuda", divergence_steps=1)  # compiles
            cuda.synchronize()
            seconds, _ = median_s(
                lambda: render(crystal, beam, det, oversample=1, backend="cuda", divergence_steps=1), max(repeat, 5))
            r = pearson_r(gpu_image[modules], images[kind][modules])
            rows.append((f"{name}, {kind}", "cuda", float("nan"), 1.0 / seconds, "images/s", r))
        notes.append("cuda rows: images/s with plan building, host→device copy of the plan and the copy of the "
                     "image back; r is GPU against the CPU image")


# --------------------------------------------------------------------------------------------
# report


def machine(nanobragg_src: Path) -> str:
    cpu = cpu_model()
    gpu = "none"
    if gpu_usable():
        from numba import cuda

        name = cuda.get_current_device().name
        gpu = name.decode() if isinstance(name, bytes) else str(name)
    try:
        gcc = subprocess.run(["gcc", "-dumpfullversion"], capture_output=True, text=True).stdout.strip() or "?"
    except OSError:
        gcc = "none"
    try:
        src = hashlib.sha256(nanobragg_src.read_bytes()).hexdigest()[:12]
    except OSError:
        src = "absent"
    try:
        import gemmi

        gemmi_version = gemmi.__version__
    except ImportError:
        gemmi_version = "absent"
    return (f"CPU {cpu} ({numba.config.NUMBA_NUM_THREADS} threads available); GPU {gpu}; "
            f"xrais {__version__}, numba {numba.__version__}, numpy {np.__version__}, gemmi {gemmi_version}, "
            f"nanoBragg.c sha256 {src} built with gcc {gcc} -O2 -fopenmp, Python {platform.python_version()}; "
            f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC")


def print_table(rows: list) -> None:
    width = max(len(r[0]) for r in rows) + 2
    print(f"{'case':<{width}}{'threads':<9}{'nanoBragg C':>12}{'xrais':>10}{'ratio':>8}  {'units':<10}"
          f"{'Pearson r':>13}")
    for case, where, ref, mine, units, r in rows:
        if units == "s/image":
            ratio = ref / mine
        elif units == "images/s":
            ratio = float("nan")
        else:
            ratio = mine / ref
        ref_s = "—" if np.isnan(ref) else f"{ref:.3g}" if units == "s/image" else f"{ref:.2f}"
        mine_s = f"{mine:.3g}" if units == "s/image" else f"{mine:.2f}"
        ratio_s = "—" if np.isnan(ratio) else f"{ratio:.2f}"
        r_s = "—" if np.isnan(r) else f"{r:.9f}"
        print(f"{case:<{width}}{where:<9}{ref_s:>12}{mine_s:>10}{ratio_s:>8}  {units:<10}{r_s:>13}")
    print("ratio = xrais speed / nanoBragg speed (> 1: xrais faster); Pearson r of the nanoBragg and xrais images "
          f"(≥ {MIN_R} required)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared",
                    help="folder holding tools/nanobragg (default: <repo>/../shared)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per entry; the median is reported")
    ap.add_argument("--threads", type=int, nargs="*", default=[1, numba.config.NUMBA_NUM_THREADS])
    ap.add_argument("--backend", choices=["numba", "cuda"], default="numba",
                    help="cuda: also time the PILATUS case on the GPU")
    ap.add_argument("--quick", action="store_true",
                    help="a 256×256 evaluation case, one run per entry, PILATUS with all threads only")
    args = ap.parse_args()
    repeat = 1 if args.quick else max(1, args.repeat)
    threads = sorted(set(args.threads))
    rows: list = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench_simulator_") as tmp_name:
        tmp = Path(tmp_name)
        exe, why = build_nanobragg(args.shared, tmp / "bin")
        if exe is None:
            notes.append(f"nanoBragg C skipped: {why}")
        case_evaluations(exe, tmp, threads, repeat, 256 if args.quick else 512, rows, notes)
        case_pilatus(exe, tmp, threads[-1:] if args.quick else threads, repeat, args.backend, rows, notes)
    print_table(rows)
    for note in notes:
        print(f"note: {note}")
    print(machine(args.shared / "tools" / "nanobragg" / "nanoBragg.c"))
    bad = [(case, where, r) for case, where, _, _, _, r in rows if not np.isnan(r) and r < MIN_R]
    if bad:
        raise SystemExit(f"images disagree (Pearson r < {MIN_R}), the timings do not compare the same work: {bad}")


if __name__ == "__main__":
    main()
