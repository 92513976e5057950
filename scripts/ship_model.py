"""Put a trained checkpoint into the package: float16 weights, model card, index entry and reference outputs.

What it does, in order:

1. loads CHECKPOINT (float32, as training wrote it) and stores it again with float16 weights
   under ``models/pretrained/NAME.safetensors``, its provenance kept and a ``model_card`` added
   (the card's text, the held-out error table by resolution bin, the real-frame results);
2. checks that the float16 model's 1/d equals the float32 model's to ``--tolerance`` Å⁻¹ on
   every frame given with ``--frame`` (the issue's bar: 1e-3 Å⁻¹), and stops if not;
3. writes the model's per-quadrant 1/d on the first ``--frame`` into ``index.json`` with the
   file's SHA-256, so that ``tests/models/test_shipped_models.py`` checks them in every run.

Usage::

    python scripts/ship_model.py RUN/best.safetensors --name resolution \\
        --description "resolution (1/d), resnet18, PILATUS 6M + EIGER 16M" \\
        --card docs/model_cards/resolution.md --errors EVAL/errors.csv --real REAL.json \\
        --data ../shared/data --frame real/pilatus6m/thau_3_2_0001.cbf --frame real/pilatus6m/thau_3_2_0015.cbf
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PRETRAINED = ROOT / "models" / "pretrained"


def inv_d_on(model, frame: Path) -> np.ndarray:
    """The model's per-quadrant 1/d (Å⁻¹) on one frame."""
    from xrais.conditioning import read_image
    from xrais.models.predict import predict

    return np.asarray(predict(model, read_image(frame)).inv_resolution_per_A[0], dtype=np.float64)


def read_table(path: Path | None) -> list[dict[str, str]]:
    """Rows of a CSV file (empty without one)."""
    if path is None:
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def real_results(path: Path | None) -> dict:
    """The figures and per-frame rows of a ``bench_real.py --json`` file, without local paths."""
    if path is None:
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    keep = ("frame", "detector", "n_spots", "d_5pct_A", "spot_resolution_A", "quadrant_d_A", "hit", "error")
    for key in ("frames", "blanks"):
        data[key] = [{k: r[k] for k in keep if k in r} for r in data.get(key, [])]
    return data


def main() -> int:
    from xrais.models import load_pretrained, save_checkpoint
    from xrais.models.checkpoint import compute_sha256

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--name", required=True, help="name it loads by: load_pretrained(NAME)")
    ap.add_argument("--description", required=True, help="one line for xrais models list")
    ap.add_argument("--card", type=Path, required=True, help="the model card (Markdown), stored in the metadata")
    ap.add_argument("--errors", type=Path, default=None, help="errors.csv of xrais evaluate on held-out images")
    ap.add_argument("--real", type=Path, default=None, help="JSON written by benchmarks/bench_real.py --json")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--frame", action="append", default=[], help="real frame (relative to --data); first: reference")
    ap.add_argument("--tolerance", type=float, default=1e-3, help="largest float16 − float32 |Δ(1/d)|, Å⁻¹")
    args = ap.parse_args()

    full = load_pretrained(args.checkpoint)
    out = PRETRAINED / f"{args.name}.safetensors"
    card = {"text": args.card.read_text(encoding="utf-8"), "evaluation_by_bin": read_table(args.errors),
            "real_frames": real_results(args.real), "source_checkpoint_sha256": compute_sha256(args.checkpoint)}
    provenance = dict(full.provenance)
    provenance.pop("model_card", None)
    save_checkpoint(full, out, weights_dtype="float16", **provenance, model_card=card)
    half = load_pretrained(out)

    frames = [args.data / f for f in args.frame]
    worst = 0.0
    for frame in frames:
        diff = float(np.max(np.abs(inv_d_on(half, frame) - inv_d_on(full, frame))))
        print(f"{frame.name}: float16 − float32 |Δ(1/d)| ≤ {diff:.2e} Å⁻¹")
        worst = max(worst, diff)
    if worst > args.tolerance:
        out.unlink()
        print(f"float16 weights change 1/d by {worst:.2e} Å⁻¹ > {args.tolerance:g}: not shipped", file=sys.stderr)
        return 1
    card["float16_max_abs_diff_inv_d_per_A"] = worst
    save_checkpoint(full, out, weights_dtype="float16", **provenance, model_card=card)

    index_file = PRETRAINED / "index.json"
    index = json.loads(index_file.read_text(encoding="utf-8")) if index_file.exists() else {}
    entry = {"file": out.name, "sha256": compute_sha256(out), "description": args.description,
             "card": str(args.card.resolve().relative_to(ROOT))}
    if frames:
        entry["reference"] = {"frame": args.frame[0],
                              "inv_resolution_per_A": [round(float(v), 7) for v in inv_d_on(load_pretrained(out),
                                                                                          frames[0])]}
    index[args.name] = entry
    index_file.write_text(json.dumps(index, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"{out.relative_to(ROOT)}: {out.stat().st_size / 1e6:.1f} MB, sha256 {entry['sha256']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
