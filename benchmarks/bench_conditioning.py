"""Conditioning speed: xrais kernels against a plain torch max_pool2d + sqrt baseline.

The baseline is what XRAIS does: the whole frame goes through ``torch.nn.functional.max_pool2d``,
then ``sqrt`` and a cast, and the quadrants are cut around the beam centre with ``rot90``. Both
run on the same real frames in one process; the table gives milliseconds per frame (median of
``--repeat`` runs) with the read excluded and included, and the baseline/xrais ratio.

Usage::

    python benchmarks/bench_conditioning.py --data ../shared/data [--threads 1] [--device cuda]
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import time
from pathlib import Path

import numba
import numpy as np
import torch
import torch.nn.functional as F

from _common import cpu_model
from xrais._version import __version__
from xrais.conditioning import condition, read_image
from xrais.conditioning.transform import QUADRANT_ROTATIONS, quadrant_corner_px

FRAMES = {
    "PILATUS 6M": "real/pilatus6m/thau_3_2_0001.cbf",
    "EIGER 16M": "real/eiger16m/dlsnxs2cbf_therm_0001.cbf.gz",
}


def torch_baseline(pixels: torch.Tensor, mask: torch.Tensor, beam_center_px, block: int) -> torch.Tensor:
    """XRAIS-style conditioning: pool the whole frame, sqrt, cut 4 quadrants with rot90.

    The frame is first shifted so that the block grid meets the beam-centre corner, as the
    xrais definition requires; otherwise this is the plain torch recipe.
    """
    cf, cs = quadrant_corner_px(beam_center_px, tuple(pixels.shape))
    x = pixels.to(torch.float32).masked_fill(mask, 0.0).clamp_(0.0, 65536.0)
    lead_f, lead_s = (-cf) % block, (-cs) % block
    x = F.pad(x, (lead_f, 0, lead_s, 0))
    pooled = F.max_pool2d(x[None, None], kernel_size=block, stride=block, ceil_mode=True)[0, 0]
    cond = torch.sqrt(pooled).clamp_(max=255).to(torch.uint8)
    n = 512
    cf, cs = (cf + lead_f) // block + n, (cs + lead_s) // block + n
    padded = F.pad(cond, (n, n, n, n))
    regions = [padded[cs - n : cs, cf - n : cf], padded[cs - n : cs, cf : cf + n],
               padded[cs : cs + n, cf : cf + n], padded[cs : cs + n, cf - n : cf]]
    return torch.stack([torch.rot90(r, k) for r, k in zip(regions, QUADRANT_ROTATIONS)])


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_ms(fn, repeat: int, device: str = "cpu") -> float:
    fn()  # warm-up (JIT compile, allocator)
    _sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def machine() -> str:
    cpu = cpu_model()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"CPU {cpu} ({numba.config.NUMBA_NUM_THREADS} threads available); GPU {gpu}; "
            f"xrais {__version__}, numba {numba.__version__}, torch {torch.__version__}, numpy {np.__version__}, "
            f"Python {platform.python_version()}; {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--threads", type=int, nargs="*", default=[1, numba.config.NUMBA_NUM_THREADS])
    ap.add_argument("--device", default=None, help="also time the torch path on this device (e.g. cuda)")
    args = ap.parse_args()

    rows = []
    for name, rel in FRAMES.items():
        path = args.data / rel
        image = read_image(path)
        read_ms = median_ms(lambda: read_image(path), max(3, args.repeat // 4))
        px, mask = torch.from_numpy(image.pixels), torch.from_numpy(image.mask)
        block = image.downsample_block
        ref = torch_baseline(px, mask, image.beam_center_px, block).numpy()
        ours = condition(image)
        assert (ref == ours).all(), f"{name}: xrais and the torch baseline disagree"
        for threads in sorted(set(args.threads)):
            numba.set_num_threads(threads)
            torch.set_num_threads(threads)
            base = median_ms(lambda: torch_baseline(px, mask, image.beam_center_px, block), args.repeat)
            mine = median_ms(lambda: condition(image), args.repeat)
            rows.append((f"{name} cpu×{threads}", base, mine, read_ms))
        if args.device:
            dev = args.device
            pxd, mkd = px.to(dev), mask.to(dev)
            base = median_ms(lambda: torch_baseline(pxd, mkd, image.beam_center_px, block), args.repeat, dev)
            mine = median_ms(lambda: condition(pxd, image.beam_center_px, block, mask=mkd), args.repeat, dev)
            h2d = median_ms(lambda: condition(image, device=dev), args.repeat, dev)
            rows.append((f"{name} {dev}", base, mine, read_ms))
            rows.append((f"{name} {dev} incl. host→device", float("nan"), h2d, read_ms))

    print(f"{'case':<34}{'torch baseline ms':>18}{'xrais ms':>10}{'ratio':>8}"
          f"{'read ms':>9}{'baseline+read':>15}{'xrais+read':>12}")
    for case, base, mine, read_ms in rows:
        print(f"{case:<34}{base:>18.2f}{mine:>10.2f}{base / mine:>8.2f}{read_ms:>9.1f}"
              f"{base + read_ms:>15.1f}{mine + read_ms:>12.1f}")
    print(machine())


if __name__ == "__main__":
    main()
