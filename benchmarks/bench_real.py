"""Sim-to-real: a model trained only on xrais simulation, scored on every real frame of the shared data.

Method
------
Every frame under ``DATA/real/`` that xrais reads is scored by the model (``--model``, default
the shipped ``resolution`` model): its per-quadrant resolution and the image's best (smallest)
and mean. Beside it, the model-free answer of :func:`xrais.infer.spots.analyze_image` (DIALS's
dispersion spot finder with its defaults): ``n_spots``, ``d_5pct_A`` and ``spot_resolution_A``.

Blank frames: the shared data has no frame without Bragg spots, so ``--blanks`` blanks are made
by ``xrais simulate``'s physics with the crystal removed (``simulate_image(..., bragg=False)``):
the thaumatin series' geometry (PILATUS 6M at 351 mm, λ 0.96859 Å, beam at (1261.6, 1307.0)
px), background scales drawn over the training range, Poisson noise and the detector's
effects, written as miniCBF and read back like a real frame.

Printed figures:

* Spearman rank correlation between the model's 1/d and the spot-based 1/d (1/``d_5pct_A``)
  over the hit frames (real frames with at least ``--min-spots`` spots), and over the four
  thaumatin hits alone (goal ≥ 0.8: the model ranks them in the order of their spot-based
  resolution);
* separation of hits from blanks: the model's worst thaumatin hit against its best blank
  (goal: every thaumatin hit better resolved, i.e. larger 1/d, than every blank).

With ``--plot FILE.png`` it draws the XRAIS Figure 8 view of the thaumatin series: the model's
resolution and the spot-based one against frame number, the spot count below.

Usage::

    python benchmarks/bench_real.py --data ../shared/data [--model resolution] [--blanks 4] [--plot real.png]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import platform
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from xrais._version import __version__

#: Every real frame of the shared data (relative to DATA), in the order of its README.
FRAMES = (
    "real/pilatus6m/thau_3_2_0001.cbf",
    "real/pilatus6m/thau_3_2_0003.cbf.bz2",
    "real/pilatus6m/thau_3_2_0007.cbf.bz2",
    "real/pilatus6m/thau_3_2_0015.cbf",
    "real/pilatus6m/DLS_I03_smargon_0001.cbf.gz",
    "real/eiger16m/dlsnxs2cbf_therm_0001.cbf.gz",
    "real/eiger2_16m_stream/5291452/image000044",
    "real/pilatus12m/DLS_I23_P12M_thau_00001.cbf.gz",
    "real/pilatus2m/l-cyst_01_00001.cbf",
    "real/rayonix340/hit-20181213155134902.cbf",
    "real/cspad/idx-20130301060858401.cbf",
    "real/adsc/adsc.img.bz2",
)
THAUMATIN = {"thau_3_2_0001.cbf": 1, "thau_3_2_0003.cbf.bz2": 3, "thau_3_2_0007.cbf.bz2": 7, "thau_3_2_0015.cbf": 15}
#: Geometry of the thaumatin series (its README), for the blanks.
THAUMATIN_GEOMETRY = dict(distance_mm=351.0, wavelength_A=0.96859, beam_center_fast_px=1261.61,
                          beam_center_slow_px=1306.96)
GOAL_SPEARMAN = 0.8


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's ρ (Pearson of the ranks; ties get their mean rank); NaN for fewer than 3 pairs."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return math.nan
    return float(spearmanr(x[ok], y[ok]).statistic)


def d_of(inv_d: float) -> float:
    """d (Å) of a 1/d (Å⁻¹): inf where the model calls no diffraction (1/d ≤ 0)."""
    return 1.0 / inv_d if inv_d > 0 else math.inf


def _finite_json(value):
    """``value`` with inf and NaN floats written as strings (strict JSON has neither)."""
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def make_blanks(n: int, folder: Path, seed: int) -> list[Path]:
    """``n`` PILATUS 6M frames without a crystal in the thaumatin geometry, as miniCBF files."""
    from xrais.simulate.config import SimulationConfig
    from xrais.simulate.dataset import write_minicbf
    from xrais.simulate.image import simulate_image
    from xrais.simulate.sampler import sample_image

    config = SimulationConfig(detector_choices=("pilatus6m",), wavelength_A=THAUMATIN_GEOMETRY["wavelength_A"],
                              structure_bank_size=1)
    paths = []
    for i in range(n):
        params = replace(sample_image(config, seed, i), **THAUMATIN_GEOMETRY)
        image = simulate_image(config, params, bragg=False)
        paths.append(write_minicbf(folder / f"blank_{i:03d}.cbf", image))
    return paths


def score_frames(model, paths: list[Path], min_spots: int) -> list[dict]:
    """One row per frame: the model's resolution per quadrant and per image, and the spot finder's answer."""
    from xrais.conditioning import read_image
    from xrais.infer.spots import analyze_image
    from xrais.models.predict import predict

    rows = []
    for path in paths:
        row = {"frame": path.name, "path": str(path)}
        try:
            image = read_image(path)
        except Exception as exc:  # a reader that cannot open the file is a row, not a crash
            row["error"] = f"{type(exc).__name__}: {exc}"
            rows.append(row)
            continue
        spots = analyze_image(image)
        pred = predict(model, image)
        inv = pred.inv_resolution_per_A[0]
        row.update(detector=image.detector.name, n_spots=spots.resolution.n_spots,
                   d_5pct_A=spots.resolution.d_5pct_A, spot_resolution_A=spots.resolution.spot_resolution_A,
                   quadrant_d_A=[1.0 / v if v > 0 else math.inf for v in inv],
                   model_inv_d=float(np.max(inv)), model_mean_inv_d=float(np.mean(inv)))
        row["hit"] = row["n_spots"] >= min_spots
        rows.append(row)
    return rows


def draw_figure8(rows: list[dict], out: Path) -> None:
    """Model and spot-based resolution of the thaumatin series against frame number; spots below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = sorted((THAUMATIN[r["frame"]], r) for r in rows if r["frame"] in THAUMATIN and "error" not in r)
    x = [n for n, _ in series]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    top.plot(x, [1.0 / r["model_inv_d"] for _, r in series], "o-", label="model (best quadrant)")
    top.plot(x, [1.0 / r["model_mean_inv_d"] for _, r in series], "s--", label="model (mean of quadrants)")
    top.plot(x, [r["d_5pct_A"] for _, r in series], "^-", label="spots: d 5 %")
    top.plot(x, [r["spot_resolution_A"] for _, r in series], "v:", label="spots: resolution estimate")
    top.set_ylabel("resolution (Å)")
    top.invert_yaxis()
    top.legend(fontsize=8)
    top.set_title("thaumatin grid scan, DLS I24 (PILATUS3 6M)")
    bottom.bar(x, [r["n_spots"] for _, r in series])
    bottom.set_ylabel("spots")
    bottom.set_xlabel("frame")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> None:
    from xrais.models import load_pretrained

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--model", default="resolution", help="checkpoint file, folder or name (default: shipped)")
    ap.add_argument("--blanks", type=int, default=4)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--min-spots", type=int, default=20, help="spots that make a real frame a hit")
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows and figures to this file")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    model = load_pretrained(args.model)
    paths = [args.data / rel for rel in FRAMES if (args.data / rel).exists()]
    rows = score_frames(model, paths, args.min_spots)
    with tempfile.TemporaryDirectory() as tmp:
        blanks = score_frames(model, make_blanks(args.blanks, Path(tmp), args.seed), args.min_spots)

    print(f"# {model.checkpoint_path.name}: {model.config.arch} {model.config.task}; min spots for a hit "
          f"{args.min_spots}")
    print(f"{'frame':<42}{'detector':<16}{'spots':>6}{'d5% Å':>8}{'spot d Å':>9}{'model d Å':>10}"
          f"{'mean d Å':>9}  quadrants d Å")
    for r in rows + blanks:
        if "error" in r:
            print(f"{r['frame']:<42}error: {r['error'][:90]}")
            continue
        quads = " ".join(f"{d:.2f}" for d in r["quadrant_d_A"])
        print(f"{r['frame']:<42}{r['detector'][:15]:<16}{r['n_spots']:>6}{r['d_5pct_A']:>8.2f}"
              f"{r['spot_resolution_A']:>9.2f}{d_of(r['model_inv_d']):>10.2f}{d_of(r['model_mean_inv_d']):>9.2f}  {quads}")

    hits = [r for r in rows if "error" not in r and r["hit"]]
    thau = [r for r in rows if r["frame"] in THAUMATIN and "error" not in r]
    rho_all = spearman([r["model_inv_d"] for r in hits], [1 / r["d_5pct_A"] for r in hits])
    rho_thau = spearman([r["model_inv_d"] for r in thau], [1 / r["d_5pct_A"] for r in thau])
    rho_thau_mean = spearman([r["model_mean_inv_d"] for r in thau], [1 / r["d_5pct_A"] for r in thau])
    worst_hit = min((r["model_inv_d"] for r in thau), default=math.nan)
    best_blank = max((r["model_inv_d"] for r in blanks if "error" not in r), default=math.nan)
    print()
    print(f"Spearman(model 1/d, spot 1/d5%) over {len(hits)} real hits: {rho_all:.3f}")
    print(f"Spearman over the {len(thau)} thaumatin hits: best quadrant {rho_thau:.3f}, mean of quadrants "
          f"{rho_thau_mean:.3f} (goal ≥ {GOAL_SPEARMAN}: {'met' if rho_thau >= GOAL_SPEARMAN else 'not met'})")
    print(f"hits vs blanks: worst thaumatin hit {d_of(worst_hit):.2f} Å, best of {len(blanks)} blanks "
          f"{d_of(best_blank):.2f} Å (goal: every hit better resolved: "
          f"{'met' if worst_hit > best_blank else 'not met'})")
    if args.json is not None:
        summary = {"model": model.checkpoint_path.name, "min_spots": args.min_spots, "frames": rows,
                   "blanks": blanks, "spearman_hits": rho_all, "spearman_thaumatin": rho_thau,
                   "spearman_thaumatin_mean": rho_thau_mean, "worst_thaumatin_hit_d_A": d_of(worst_hit),
                   "best_blank_d_A": d_of(best_blank), "hits_above_blanks": bool(worst_hit > best_blank)}
        args.json.write_text(json.dumps(_finite_json(summary), indent=1, default=str))
        print(f"rows: {args.json}")
    if args.plot is not None:
        draw_figure8(rows, args.plot)
        print(f"figure: {args.plot}")
    print(f"xrais {__version__}, Python {platform.python_version()}; {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} "
          "UTC")


if __name__ == "__main__":
    main()
