"""Variational integration against summation and profile fitting, side by side on the same shoeboxes.

Method
------
One run simulates a rotation series with :func:`xrais.simulate.shoeboxes.simulate_shoeboxes`
(the default :class:`~xrais.simulate.shoebox_io.ShoeboxExperiment`: lysozyme cell and space
group with random-atom |F| and B = 20 Å², 0.03 µm domains, 0.05° mosaic spread in 5 domains,
PILATUS 6M at 200 mm, λ 0.9795 Å, 10¹¹ photons per 0.5° frame, 3×21×21 shoeboxes to 2 Å), then
on the same shoeboxes:

* xrais-variational: FC encoder, MVN profile, Gamma surrogates, Table 1 priors, batch 128,
  lr 10⁻³, trained for ``--epochs`` on all shoeboxes (the ELBO needs no truth), then applied;
* summation with a local background plane, peak = 99 % of the learned average profile;
* profile fitting with average profiles learned per 3×3 detector region from I/σ ≥ 10.

Speeds are shoeboxes per second of training (per epoch, after the first) and of inference
(one pass, batch 1024) on the chosen device, and of the two baselines (numpy, one thread of
work per array operation). Quality is the Pearson CC of each estimate with the true photons of
the reflection in its shoebox (``I_TRUE_BOX``), overall and by true I/σ bin (σ of summation, so
the bins hold the same reflections for every method), and the standard deviation of
z = (I − I_true)/σ.

Usage::

    python benchmarks/bench_integrate.py [--images 12] [--epochs 10] [--device auto] [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time

import numba
import numpy as np
import torch

from _common import cpu_model
from xrais import __version__
from xrais.models.variational.integrator import IntegratorConfig
from xrais.simulate.shoebox_io import build_experiment, crystal_scale_of, load_experiment
from xrais.simulate.shoeboxes import simulate_shoeboxes
from xrais.train.integrate import (
    IntegrateTrainConfig,
    add_baselines,
    choose_device,
    integrate_shoeboxes,
    integration_metrics,
    train_integrator,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=12, help="frames of the rotation series")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    device = choose_device(args.device)

    experiment = load_experiment(None, shoeboxes={"n_images": args.images})
    crystal, beam, detector = build_experiment(experiment, args.seed)
    cfg = experiment.shoeboxes.model_copy(update={"crystal_scale": crystal_scale_of(experiment, crystal)})
    t0 = time.perf_counter()
    sb = simulate_shoeboxes(crystal, beam, detector, cfg, seed=args.seed, backend="numba")
    t_sim = time.perf_counter() - t0

    model, history = train_integrator(sb, IntegratorConfig(), IntegrateTrainConfig(
        epochs=args.epochs, batch_size=128, learning_rate=1e-3, seed=args.seed, device=device.type))
    train_rate = float(np.median([h["shoeboxes_per_s"] for h in history[1:]] or [history[0]["shoeboxes_per_s"]]))
    integrate_shoeboxes(model, sb.subset(np.arange(min(len(sb), 256))), device=device.type)  # warm-up
    t0 = time.perf_counter()
    table, rejected = integrate_shoeboxes(model, sb, device=device.type)
    t_inf = time.perf_counter() - t0
    t0 = time.perf_counter()
    table = add_baselines(table, sb)
    t_base = time.perf_counter() - t0
    m = integration_metrics(table)

    print(f"# {len(sb)} shoeboxes of {sb.shape} from {args.images} frames (simulated in {t_sim:.1f} s, "
          f"{len(sb) / t_sim:.0f} shoeboxes/s with the first call's compile); {len(rejected)} rejected; "
          f"{m['n_weak']} weak (I_true/σ_sum < 2)")
    print()
    print("| case | summation | profile fitting | xrais-variational | ratio (xrais / summation) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print(f"| training, shoeboxes/s ({device.type}) | — | — | {train_rate:.0f} | — |")
    print(f"| inference, shoeboxes/s ({device.type}; baselines: both together, numpy) | {len(sb) / t_base:.0f} | "
          f"{len(sb) / t_base:.0f} | {len(sb) / t_inf:.0f} | {t_base / t_inf:.2f} |")
    names = ("I_SUM", "IPR", "I")
    print(f"| CC to truth, all ({m['n']}) | " + " | ".join(f"{m[k]['cc']:.5f}" for k in names)
          + f" | {m['I']['cc'] / m['I_SUM']['cc']:.4f} |")
    print(f"| CC to truth, weak ({m['n_weak']}) | " + " | ".join(f"{m[k]['cc_weak']:.4f}" for k in names)
          + f" | {m['I']['cc_weak'] / m['I_SUM']['cc_weak']:.3f} |")
    edges = m["bin_edges"]
    for b in range(len(edges) - 1):
        n = m["I"]["n_bins"][b]
        if n < 3:
            continue
        label = f"CC, true I/σ {edges[b]:g}–{edges[b + 1]:g} ({n})"
        ratio = m["I"]["cc_bins"][b] / m["I_SUM"]["cc_bins"][b]
        print(f"| {label} | " + " | ".join(f"{m[k]['cc_bins'][b]:.4f}" for k in names) + f" | {ratio:.3f} |")
    print("| std of (I − I_true)/σ | " + " | ".join(f"{m[k]['z_std']:.3f}" for k in names) + " | — |")
    print()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    print(f"Machine: {cpu_model()}, {args.threads} thread(s), {gpu}; xrais {__version__}, torch {torch.__version__}, "
          f"numba {numba.__version__}, numpy {np.__version__}, Python {platform.python_version()}; "
          f"{datetime.date.today().isoformat()}")


if __name__ == "__main__":
    main()
