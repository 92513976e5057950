"""Training images per second of the ResNet-50 resolution model at 512×512, by device and option.

Writes a small synthetic training set (``--rows`` conditioned quadrants of Poisson-like speckle
with PILATUS 6M geometry; the speed of a training step does not depend on what the pixels show)
and runs ``xrais.train.loop.train`` on it for two epochs per case: fp32; mixed precision
(bfloat16 autocast on the CPU, float16 with a gradient scaler on CUDA); channels-last; and
``torch.compile``. The rate is that of the second epoch (so compilation and warm-up are left
out): training images through forward, backward and the SGD step, HDF5 reading and decoding
included, divided by the epoch's training seconds. Validation is off.

The reference column is XRAIS's own single-GPU figure (xrais.txt §2.3.2: 43,000 images per
epoch in 11.5 min on one V100, i.e. 62 images/s, ResNet-50 assumed); it is quoted from the
paper, not measured here.

Usage::

    python benchmarks/bench_train.py [--rows 16] [--batch-size 8] [--device cpu|cuda|all]
        [--threads N] [--no-compile]
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from _common import cpu_model
from xrais._version import __version__
from xrais.io import write_shard
from xrais.train.config import make_train_config
from xrais.train.loop import train

XRAIS_V100_IMAGES_PER_S = 43_000 / (11.5 * 60)


def write_synthetic_set(folder: Path, rows: int) -> Path:
    """One shard of ``rows`` speckle quadrants with resolution labels and PILATUS 6M geometry."""
    rng = np.random.default_rng(0)
    images = np.floor(np.sqrt(rng.poisson(4.0, size=(rows, 512, 512)))).astype(np.uint8)
    n = rows
    columns = {
        "labels/inv_resolution_per_A": rng.uniform(0.2, 0.8, n), "labels/n_lattices": np.ones(n, dtype=np.int64),
        "geometry/distance_mm": rng.uniform(200, 300, n), "geometry/pixel_mm": np.full(n, 0.172),
        "geometry/downsample": np.full(n, 2), "geometry/wavelength_A": np.full(n, 0.9795),
        "source/index": np.arange(n), "source/quadrant": np.zeros(n, dtype=np.int64),
    }
    folder.mkdir(parents=True, exist_ok=True)
    return write_shard(folder / "bench_00000.h5", images, columns)


def images_per_s(shard: Path, out: Path, device: str, *, amp: bool, channels_last: bool, compile: bool,
                 batch_size: int, workers: int) -> float:
    cfg = make_train_config(data=(str(shard),), out=str(out), arch="resnet50", epochs=2, batch_size=batch_size,
                            val_fraction=0.0, workers=workers, device=device, amp=amp, channels_last=channels_last,
                            compile=compile, stats_images=4)
    result = train(cfg)
    return float(result.history[-1]["images_per_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=16, help="training quadrants per epoch (CPU)")
    ap.add_argument("--gpu-rows", type=int, default=512, help="training quadrants per epoch (CUDA)")
    ap.add_argument("--batch-size", type=int, default=8, help="batch on the CPU")
    ap.add_argument("--gpu-batch-size", type=int, default=64, help="batch on CUDA")
    ap.add_argument("--device", default="all", help="cpu, cuda or all (CUDA when present)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers on the CPU")
    ap.add_argument("--gpu-workers", type=int, default=8, help="DataLoader workers with CUDA")
    ap.add_argument("--no-compile", action="store_true", help="leave out the torch.compile cases")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    options = [("fp32", False, False, False), ("AMP", True, False, False), ("channels-last", False, True, False),
               ("AMP + channels-last", True, True, False), ("AMP + channels-last + compile", True, True, True)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for device in devices:
            n = args.rows if device == "cpu" else args.gpu_rows
            batch = args.batch_size if device == "cpu" else args.gpu_batch_size
            shard = write_synthetic_set(Path(tmp) / f"set_{device}", n)
            base = None
            for name, amp, cl, comp in options:
                if comp and args.no_compile:
                    continue
                rate = images_per_s(shard, Path(tmp) / f"run_{device}_{len(rows)}", device, amp=amp, channels_last=cl,
                                    compile=comp, batch_size=batch,
                                    workers=args.workers if device == "cpu" else args.gpu_workers)
                base = base or rate
                rows.append((f"{device}: {name}, batch {batch}", rate, rate / base))
                print(f"  {rows[-1][0]}: {rate:.2f} images/s", flush=True)
    print(f"\n{'case':<52}{'XRAIS V100':>12}{'xrais':>10}{'ratio':>8}{'vs fp32':>9}   (training images/s)")
    for name, rate, rel in rows:
        print(f"{name:<52}{XRAIS_V100_IMAGES_PER_S:>12.1f}{rate:>10.2f}{rate / XRAIS_V100_IMAGES_PER_S:>8.3f}"
              f"{rel:>9.2f}")
    gpu = (f"; GPU {torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}, driver "
           f"{_driver()}" if torch.cuda.is_available() else "; no GPU")
    print(f"CPU {cpu_model()} ({args.threads} torch threads){gpu}; xrais {__version__}, torch {torch.__version__}, "
          f"numpy {np.__version__}, Python {platform.python_version()}; "
          f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; ResNet-50 resolution model, 512×512 quadrants, "
          f"SGD lr 6e-3 momentum 0.9, L1 loss; rate of the 2nd epoch")


def _driver() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


if __name__ == "__main__":
    main()
