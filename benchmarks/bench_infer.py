"""Inference speed: read → condition → score per image, and images/s end to end, against XRAIS Table 4.

The model is a ResNet-50 resolution model (random weights: speed does not depend on them),
scoring 1 or 4 quadrants of real PILATUS 6M and EIGER 16M frames. Two tables:

1. Per-stage milliseconds per image on one rank with one thread (medians over the images of a
   run, the first work item left out), for the CPU settings tried: plain fp32, channels-last
   weights, bf16 autocast, both, and both with several images per forward pass.
2. Images/s end to end through ``run_inference`` (one process) and ``mpiexec -n R+1 xrais
   infer`` (R workers), baseline (fp32, one image per pass) and tuned settings, per core used,
   next to XRAIS Table 4's CPU rate (1010–1084 ms of inference and 22–61 ms of downsampling per
   image, each of 24 cores working in parallel: under 1 image/s per core).

The steady rate counts, for each rank, the rows after its first work item over the time from
that item's end to its last row (summed over ranks); the wall rate includes start-up (imports,
model load). Because a shared machine's other processes slow wall-clock figures down, both
tables also give images per CPU-second: the stage table from the scoring thread's own CPU time
(one thread), the end-to-end table from the CPU time of all the run's processes, start-up
included, which makes it a lower bound of the rate per core.

Usage::

    python benchmarks/bench_infer.py --data ../shared/data [--images 8] [--device cuda]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np
import torch

from _common import cpu_model
from xrais._version import __version__
from xrais.infer import InferConfig, WorkItem, describe_models, read_results, run_inference
from xrais.infer.scoring import Scorer
from xrais.infer.work import FrameRef
from xrais.models import build_model, save_checkpoint

FRAMES = {
    "PILATUS 6M": "real/pilatus6m/thau_3_2_0001.cbf",
    "EIGER 16M": "real/eiger16m/dlsnxs2cbf_therm_0001.cbf.gz",
}
#: XRAIS Table 4, CPU only, 24 cores in parallel, 1 quadrant: (downsample ms, inference ms) per image.
XRAIS_CPU_MS = {"PILATUS 6M": (22.0, 1084.0), "EIGER 16M": (61.0, 1010.0)}
VARIANTS = {  # name: (precision, channels_last, images per forward pass)
    "fp32": ("fp32", False, 1),
    "fp32 + channels-last": ("fp32", True, 1),
    "bf16": ("bf16", False, 1),
    "bf16 + channels-last": ("bf16", True, 1),
    "bf16 + channels-last, 4 images/pass": ("bf16", True, 4),
}


def series(folder: Path, frame: Path, n: int) -> list[Path]:
    """``n`` names for one real frame (symbolic links), as a data set of ``n`` images."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = "".join(frame.suffixes)
    out = []
    for i in range(n):
        link = folder / f"img_{i + 1:04d}{suffix}"
        if not link.exists():
            link.symlink_to(frame)
        out.append(link)
    return out


def config_for(model: Path, quadrants: int, variant: str, device: str, threads: int | None) -> InferConfig:
    precision, channels_last, images = VARIANTS[variant]
    return InferConfig(models=(str(model),), quadrants=quadrants, batch_size=quadrants * images, device=device,
                       precision=precision, channels_last=channels_last, threads=threads, chunk_frames=4,
                       formats=("csv",))


def stage_ms(model: Path, paths: list[Path], quadrants: int, variant: str, device: str) -> dict[str, float]:
    """Median read/condition/score wall ms per image, and the CPU ms per image of the whole item
    (this thread's CPU time: with one thread, unaffected by other processes on the machine)."""
    cfg = config_for(model, quadrants, variant, device, None)
    scorer = Scorer(cfg, describe_models(cfg.models), device=device)
    scorer.score_item(WorkItem(tuple(FrameRef(str(p)) for p in paths[: VARIANTS[variant][2]])))  # warm-up
    cpu0 = time.thread_time()
    rows = scorer.score_item(WorkItem(tuple(FrameRef(str(p)) for p in paths)))
    cpu_ms = 1e3 * (time.thread_time() - cpu0) / len(rows)
    assert all(not r["error"] for r in rows), rows[0]["error"]
    ms = {k: 1e3 * statistics.median(r[k] for r in rows) for k in ("read_s", "condition_s", "score_s")}
    return dict(ms, cpu=cpu_ms)


def steady_rate(out: Path) -> float:
    """Images/s once running: for each rank, its rows after its first work item over the time
    from that item's end to its last row; summed over the ranks, which work side by side."""
    rows = read_results(out)
    t = np.array([dt.datetime.fromisoformat(s).timestamp() for s in rows["finished_at"]])
    total = 0.0
    for rank in set(rows["rank"]):
        tr = np.sort(t[rows["rank"].to_numpy() == rank])
        later = tr[tr > tr[0] + 1e-3]
        if len(later) == 0 or later[-1] <= tr[0]:
            return float("nan")
        total += len(later) / (later[-1] - tr[0])
    return total


def end_to_end(model: Path, paths: list[Path], quadrants: int, variant: str, device: str, ranks: int,
               threads: int, work: Path) -> tuple[float, float, float]:
    """(steady img/s, wall img/s, images per CPU-second of all its processes) of one run."""
    out = work / f"run_{time.monotonic_ns()}"
    cfg = config_for(model, quadrants, variant, device, threads)
    if ranks == 1:
        t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        report = run_inference(cfg, [str(p) for p in paths], out)
        wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
        assert report.errors == 0, report.first_errors
    else:
        mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
        precision, channels_last, images = VARIANTS[variant]
        cmd = [mpiexec, "-n", str(ranks + 1), sys.executable, "-m", "xrais.cli", "infer", *map(str, paths),
               "--model", str(model), "--out", str(out), "-q", str(quadrants), "--batch-size",
               str(quadrants * images), "--device", device, "--precision", precision, "--threads", str(threads),
               "--chunk-frames", "4", "--format", "csv", "--channels-last" if channels_last else "--no-channels-last"]
        t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
        wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
        assert proc.returncode == 0, proc.stderr[-2000:]
    cpu_s = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    return steady_rate(out), len(paths) / wall, len(paths) / cpu_s


def machine(device: str) -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"CPU {cpu_model()} ({len(os.sched_getaffinity(0))} cores available); GPU {gpu} (device {device}); "
            f"xrais {__version__}, torch {torch.__version__}, numpy {np.__version__}, Python "
            f"{platform.python_version()}; {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--images", type=int, default=16, help="images per end-to-end run (8 for the stage table)")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda to time the GPU path")
    ap.add_argument("--quadrants", type=int, nargs="*", default=[1, 4])
    ap.add_argument("--ranks", type=int, nargs="*", default=[1, 2], help="worker ranks for the end-to-end table")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    work = Path(tempfile.mkdtemp(prefix="bench_infer_"))
    try:
        torch.manual_seed(0)
        model = save_checkpoint(build_model("resnet50", "resolution", input_std=64.0), work / "resnet50.safetensors")
        print(f"{'detector':<11}{'Q':>2}  {'settings (1 rank, 1 thread)':<37}{'read ms':>9}{'condition ms':>14}"
              f"{'score ms':>10}{'total ms':>10}{'CPU ms':>9}{'img/CPU-s':>11}")
        torch.set_num_threads(1)
        numba.set_num_threads(1)
        for name, rel in FRAMES.items():
            paths = series(work / name.replace(" ", "_"), args.data / rel, args.images)[:8]
            for q in args.quadrants:
                for variant in VARIANTS:
                    ms = stage_ms(model, paths, q, variant, args.device)
                    total = ms["read_s"] + ms["condition_s"] + ms["score_s"]
                    print(f"{name:<11}{q:>2}  {variant:<37}{ms['read_s']:>9.1f}{ms['condition_s']:>14.1f}"
                          f"{ms['score_s']:>10.1f}{total:>10.1f}{ms['cpu']:>9.1f}{1e3 / ms['cpu']:>11.2f}", flush=True)
        print()
        print(f"{'detector':<11}{'Q':>2}  {'settings':<37}{'ranks×threads':>14}{'steady img/s':>13}{'wall img/s':>11}"
              f"{'img/CPU-s':>10}{'XRAIS img/s/core':>17}{'ratio':>7}")
        for name, rel in FRAMES.items():
            paths = series(work / name.replace(" ", "_"), args.data / rel, args.images)
            xrais_rate = 1e3 / sum(XRAIS_CPU_MS[name])
            for q in args.quadrants:
                runs = [("fp32", 1, 1), ("bf16 + channels-last, 4 images/pass", 1, 1),
                        ("bf16 + channels-last, 4 images/pass", 1, cores)]
                runs += [("bf16 + channels-last, 4 images/pass", r, max(1, cores // r)) for r in args.ranks if r > 1]
                for variant, ranks, threads in runs:
                    steady, wall, per_cpu = end_to_end(model, paths, q, variant, args.device, ranks, threads, work)
                    ref = xrais_rate if q == 1 else float("nan")
                    print(f"{name:<11}{q:>2}  {variant:<37}{f'{ranks}×{threads}':>14}{steady:>13.2f}{wall:>11.2f}"
                          f"{per_cpu:>10.2f}{ref:>17.2f}{per_cpu / ref:>7.2f}", flush=True)
        print(machine(args.device))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
