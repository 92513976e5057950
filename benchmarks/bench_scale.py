"""Variational scaling and merging: xrais against careless and abismal on the same simulated data.

One run makes serial still data of lysozyme (RTSAD model, gemmi F to ``--d-min-A``; random
orientation, scale and B factor per image, detector absorption, Poisson and read noise), writes
it as an unmerged MTZ, and merges it with

* xrais (``merge_table``: one image batch of ``--images-per-step`` images per gradient step),
* careless ``mono`` (full data set per gradient step, metadata XDET,YDET,BATCH,dHKL),
* abismal (``--batch-size`` images per step, defaults otherwise),

the two references run from their own virtual environment (``--reference-python``, e.g. a
throwaway ``/tmp`` venv with ``pip install careless abismal``): they need TensorFlow, which
xrais does not. Each tool uses its own defaults apart from the step counts given here. The
table gives seconds per gradient step, steps run, seconds to convergence (the time at which
the tool's own training loss has made 99 % of its total decrease), total training seconds,
and CC of the merged F to the true F overall and in the highest-resolution shell. A tool that
cannot be run is reported with the reason.

Usage::

    python benchmarks/bench_scale.py --data ../shared/data --reference-python /tmp/refvenv/bin/python \\
        [--images 300] [--d-min-A 3.0] [--careless-iterations 4000] [--abismal-epochs 30] [--device cpu]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import reciprocalspaceship as rs
import torch

from _common import cpu_model
from xrais._version import __version__
from xrais.infer import merge_stats as ms
from xrais.infer.merge import MergeConfig, merge_table
from xrais.infer.reflections import ReflectionSimulationConfig, ReflectionSimulator, write_unmerged_mtz
from xrais.models.variational.scaler import ScalerConfig
from xrais.models.variational.wilson import reduce_to_asu_array


def converged_at(seconds: np.ndarray, loss: np.ndarray, fraction: float = 0.99) -> float:
    """Seconds at which the loss first made ``fraction`` of its total decrease (first → last value)."""
    loss = np.asarray(loss, dtype=np.float64)
    ok = np.isfinite(loss)
    seconds, loss = np.asarray(seconds)[ok], loss[ok]
    if len(loss) < 2 or loss[0] <= loss[-1]:
        return float("nan")
    target = loss[0] - fraction * (loss[0] - loss[-1])
    return float(seconds[np.argmax(loss <= target)])


def cc_to_truth(path: Path, truth: pd.DataFrame, f_label: str = "F") -> tuple[float, float, float]:
    """CC of a merged MTZ's F to the true F: overall, in the highest-resolution of 10 shells, and the
    mean of the 10 shells' CCs (blind to an overall resolution falloff that the scales took up)."""
    ds = rs.read_mtz(str(path)).reset_index()
    asu, _ = reduce_to_asu_array(ds[["H", "K", "L"]].to_numpy(), ds.spacegroup)
    ds[["H", "K", "L"]] = asu
    joined = ds[["H", "K", "L", f_label]].merge(truth, on=["H", "K", "L"], suffixes=("", "_true"))
    edges = ms.make_shell_edges(truth["DHKL"], 10)
    shell = ms.assign_shells(joined["DHKL"], edges)
    per_shell = ms.compute_pearson_by_shell(joined[f_label], joined["F_true"], shell, 10)
    return (float(np.corrcoef(joined[f_label], joined["F_true"])[0, 1]), float(per_shell[-1]),
            float(np.nanmean(per_shell)))


def run_xrais(table, truth: pd.DataFrame, out: Path, args) -> dict:
    torch.set_num_threads(args.threads)
    config = MergeConfig(max_epochs=args.xrais_epochs, half_dataset_steps=0, test_fraction=0.0, device=args.device,
                         scaler=ScalerConfig(images_per_step=args.images_per_step))
    t0 = time.perf_counter()
    result = merge_table(table, config, truth_F=None)
    total = time.perf_counter() - t0
    from xrais.infer.merge import write_merged_mtz

    path = write_merged_mtz(result.merged, out / "xrais.mtz")
    h = result.history
    cc, cc_last, cc_shells = cc_to_truth(path, truth)
    train_s = float(h["seconds"].iloc[-1])
    return {"s_per_step": train_s / int(h["steps"].iloc[-1]), "steps": int(h["steps"].iloc[-1]),
            "s_to_converge": converged_at(h["seconds"].to_numpy(), h["loss"].to_numpy()),
            "train_s": train_s, "total_s": total, "cc": cc, "cc_last_shell": cc_last, "cc_shells": cc_shells,
            "batch": f"{args.images_per_step} images"}


def _reference_versions(python: str) -> str:
    code = ("import importlib.metadata as m; print(', '.join(f'{p} {m.version(p)}' for p in "
            "('careless', 'abismal', 'tensorflow', 'tensorflow-probability')))")
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300)
    return proc.stdout.strip() if proc.returncode == 0 else f"unavailable ({proc.stderr.strip()[-200:]})"


def run_careless(mtz: Path, truth: pd.DataFrame, out: Path, args) -> dict:
    exe = Path(args.reference_python).parent / "careless"
    if not exe.exists():
        return {"error": f"careless not found beside {args.reference_python}"}
    folder = out / "careless"
    folder.mkdir(exist_ok=True)
    cmd = [str(exe), "mono", "--iterations", str(args.careless_iterations), "--seed", "0", "-d", str(args.d_min_A),
           "XDET,YDET,BATCH,dHKL", str(mtz), str(folder / "hewl")]
    if args.device == "cpu":
        cmd.insert(2, "--disable-gpu")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout_s, env=_env(args))
    total = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": f"careless failed: {proc.stderr.strip().splitlines()[-1][-300:]}"}
    bars = re.findall(r"(\d+)/(\d+) \[(?:(\d+):)?(\d+):(\d+)<", proc.stderr.replace("\r", "\n"))
    done, _, hh, mm, ss = bars[-1]
    train_s = 3600 * int(hh or 0) + 60 * int(mm) + int(ss)
    steps = int(done)
    history = pd.read_csv(folder / "hewl_history.csv")
    per_step = train_s / steps
    cc, cc_last, cc_shells = cc_to_truth(folder / "hewl_0.mtz", truth)
    return {"s_per_step": per_step, "steps": steps,
            "s_to_converge": converged_at((history["step"].to_numpy() + 1) * per_step, history["loss"].to_numpy()),
            "train_s": float(train_s), "total_s": total, "cc": cc, "cc_last_shell": cc_last, "cc_shells": cc_shells, "batch": "all images"}


def run_abismal(mtz: Path, truth: pd.DataFrame, out: Path, args) -> dict:
    exe = Path(args.reference_python).parent / "abismal"
    if not exe.exists():
        return {"error": f"abismal not found beside {args.reference_python}"}
    folder = out / "abismal"
    cmd = [str(exe), "-d", str(args.d_min_A), "--epochs", str(args.abismal_epochs), "--batch-size",
           str(args.images_per_step), "--disable-index-disambiguation", "--keras-verbosity", "2", "-o", str(folder),
           str(mtz)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout_s, env=_env(args))
    total = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:]
        return {"error": f"abismal failed: {tail[0][-300:] if tail else 'no output'}"}
    history = pd.read_csv(folder / "history.csv").dropna(subset=["loss"])
    steps_per_epoch = [int(a) for a, b in re.findall(r"^(\d+)/(\d+) - ", proc.stdout + proc.stderr, re.M)]
    ms_per_step = [float(v) for v in re.findall(r"(\d+(?:\.\d+)?)ms/step", proc.stdout + proc.stderr)]
    steps = int(sum(steps_per_epoch)) if steps_per_epoch else len(history)
    train_s = float(history["Time (s)"].iloc[-1] - history["Time (s)"].iloc[0]) if len(history) > 1 else float("nan")
    per_step = float(np.median(ms_per_step)) / 1000 if ms_per_step else train_s / max(steps, 1)
    last = max(int(e) for e in history["Epoch"])
    cc, cc_last, cc_shells = cc_to_truth(folder / f"asu_0_epoch_{last}.mtz", truth)
    return {"s_per_step": per_step, "steps": steps,
            "s_to_converge": converged_at(history["Time (s)"].to_numpy(), history["loss"].to_numpy()),
            "train_s": train_s, "total_s": total, "cc": cc, "cc_last_shell": cc_last, "cc_shells": cc_shells,
            "batch": f"{args.images_per_step} images"}


def _env(args) -> dict:
    import os

    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(args.threads), TF_CPP_MIN_LOG_LEVEL="2")
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--reference-python", default="/tmp/refvenv/bin/python",
                        help="Python of a venv with careless and abismal installed")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--d-min-A", type=float, default=3.0)
    parser.add_argument("--images-per-step", type=int, default=4)
    parser.add_argument("--xrais-epochs", type=int, default=30)
    parser.add_argument("--careless-iterations", type=int, default=4000)
    parser.add_argument("--abismal-epochs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--timeout-s", type=int, default=3600)
    parser.add_argument("--out", type=Path, default=Path("bench_scale_out"))
    parser.add_argument("--skip", nargs="*", default=(), choices=("careless", "abismal"))
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    sim = ReflectionSimulator(ReflectionSimulationConfig(
        structure_path=str(args.data / "structures" / "RTSAD_HEWL_refine_25.pdb"), n_images=args.images,
        d_min_A=args.d_min_A, seed=0))
    table = sim.table()
    truth = sim.truth().rename(columns={"F": "F_true"})[["H", "K", "L", "F_true", "DHKL"]]
    mtz = write_unmerged_mtz(table, args.out / "simulated_unmerged.mtz")
    print(f"data: {args.images} images, {len(table)} observations, {len(truth)} unique reflections to "
          f"{args.d_min_A} Å, multiplicity {len(table) / len(truth):.1f}", flush=True)

    results = {"xrais": run_xrais(table, truth, args.out, args)}
    print("xrais", json.dumps(results["xrais"]), flush=True)
    for name, fn in (("careless", run_careless), ("abismal", run_abismal)):
        if name in args.skip:
            results[name] = {"error": "skipped (--skip)"}
            continue
        try:
            results[name] = fn(mtz, truth, args.out, args)
        except (subprocess.TimeoutExpired, OSError, ValueError, KeyError, IndexError) as exc:
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(name, json.dumps(results[name]), flush=True)

    rows = [("seconds per gradient step", "s_per_step", "{:.4f}"), ("data per step", "batch", "{}"),
            ("gradient steps", "steps", "{:d}"), ("seconds to convergence (99 % of loss decrease)", "s_to_converge",
                                                   "{:.1f}"),
            ("training seconds", "train_s", "{:.1f}"), ("wall seconds incl. start-up", "total_s", "{:.1f}"),
            ("CC to true F, overall", "cc", "{:.4f}"), ("CC to true F, mean of 10 shells", "cc_shells", "{:.4f}"),
            ("CC to true F, last shell", "cc_last_shell", "{:.4f}")]
    names = ("careless", "abismal", "xrais")
    print()
    print("| case | careless | abismal | xrais | careless/xrais | abismal/xrais |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for label, key, fmt in rows:
        cells = []
        for n in names:
            v = results[n].get(key)
            cells.append("—" if v is None or (isinstance(v, float) and not np.isfinite(v)) else fmt.format(v))
        ratios = []
        for n in ("careless", "abismal"):
            a, b = results[n].get(key), results["xrais"].get(key)
            ok = isinstance(a, (int, float)) and isinstance(b, (int, float)) and b and np.isfinite(a) and key != "steps"
            ratios.append(f"{a / b:.2f}" if ok else "—")
        print(f"| {label} | " + " | ".join(cells + ratios) + " |")
    for n in names:
        if "error" in results[n]:
            print(f"{n}: {results[n]['error']}")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    print(f"\nMachine: {cpu_model()}, {args.threads} thread(s), {gpu}, device {args.device}; Python "
          f"{platform.python_version()}, xrais {__version__}, torch {torch.__version__}, "
          f"reciprocalspaceship {rs.__version__}; references: {_reference_versions(args.reference_python)}; "
          f"{dt.date.today().isoformat()}")
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    sys.exit(main())
