"""``xrais spots``: the model-free answer for many frames, one CSV row per frame, resumable.

Rows have the same ``file``/``frame`` keys and spot columns as ``xrais infer`` (which gives
them too, in the same pass as its models). Each row is appended to the CSV as its frame is
done; a run killed and started again with the same arguments skips the frames already in the
CSV. The settings are kept beside it (``spots.csv.json``): a CSV made with other settings is
refused rather than mixed. One run at a time per CSV (``.spots.csv.xrais.lock``).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from xrais._version import __version__
from xrais.errors import ConfigError
from xrais.infer.config import InferConfig
from xrais.infer.results import _csv_value, _read_journal, _repair_journal
from xrais.infer.scoring import Scorer, result_columns
from xrais.infer.work import DoneIndex, expand_inputs, make_items, plan_refs

__all__ = ["SPOTS_ONLY_COLUMNS", "SpotRunReport", "find_spots_in_files"]

log = logging.getLogger(__name__)

_NOT_FOR_SPOTS = {"models", "condition_s", "score_s", "rank"}
#: The columns of ``xrais spots`` rows: ``xrais infer``'s without the model and scoring ones.
SPOTS_ONLY_COLUMNS: tuple[str, ...] = tuple(c for c in result_columns([], 1, True) if c not in _NOT_FOR_SPOTS)


@dataclass
class SpotRunReport:
    """What a run did: rows written (errors among them), rows already there, and the first errors."""

    csv_path: Path
    rows_written: int = 0
    errors: int = 0
    rows_before: int = 0
    hits: int = 0
    first_errors: list[str] = field(default_factory=list)
    pngs: int = 0


def _settings_record(config: InferConfig) -> dict[str, Any]:
    return {"fingerprint": config.fingerprint(), "columns": list(SPOTS_ONLY_COLUMNS)}


def _open_journal(path: Path, config: InferConfig) -> list[dict[str, Any]]:
    """The rows already in ``path`` (after checking its settings file); writes the settings file when new."""
    sidecar = path.with_name(path.name + ".json")
    record = _settings_record(config)
    if sidecar.exists():
        try:
            old = json.loads(sidecar.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{sidecar}: cannot read the settings of the existing {path.name} ({exc}); "
                              "remove both to start over") from None
        if old.get("fingerprint") != record["fingerprint"] or old.get("columns") != record["columns"]:
            raise ConfigError(f"{path}: holds spots found with other settings (see {sidecar.name}); give another "
                              "--out, or remove both files to start over")
    elif path.exists() and path.stat().st_size > 0:
        raise ConfigError(f"{path}: exists without {sidecar.name}, so its settings are unknown; give another --out")
    else:
        tmp = sidecar.with_name(sidecar.name + ".part")
        tmp.write_text(json.dumps({**record, "xrais_version": __version__}, indent=1))
        os.replace(tmp, sidecar)
    if not path.exists():
        return []
    _repair_journal(path)
    return _read_journal(path, SPOTS_ONLY_COLUMNS)


def find_spots_in_files(inputs: Sequence[str | Path], out_csv: str | Path, config: InferConfig, *,
                        png_dir: str | Path | None = None, recursive: bool = False,
                        stop: threading.Event | None = None,
                        on_row: Callable[[dict[str, Any]], None] | None = None) -> SpotRunReport:
    """Find the spots of every frame of ``inputs`` and append one row per frame to ``out_csv``.

    Parameters
    ----------
    inputs : sequence of str or Path
        Files, folders and globs (as ``xrais infer`` takes them).
    out_csv : str or Path
        The CSV (resumed when it exists with the same settings).
    config : InferConfig
        Spot settings and geometry overrides (``models`` must be empty).
    png_dir : str or Path, optional
        Write a PNG per frame there, the spots circled (``<file stem>[_<frame>].png``).
    recursive : bool
        Include sub-folders of folders.
    stop : threading.Event, optional
        Set it to stop after the current frame.
    on_row : callable, optional
        Called with each row as it is written.

    Raises
    ------
    ConfigError
        Models given, nothing found in ``inputs``, or a CSV of other settings.
    """
    if config.models or not config.spots:
        raise ConfigError("xrais spots: finds spots only (no --model); use xrais infer for models")
    path = Path(out_csv)
    journal = _open_journal(path, config)
    done = DoneIndex.from_rows(journal, retry_errors=config.retry_errors)
    report = SpotRunReport(csv_path=path, rows_before=len(journal))
    png_folder = Path(png_dir) if png_dir is not None else None

    def draw(image: Any, analysis: Any, row: dict[str, Any]) -> None:
        from xrais.infer.spot_plot import draw_spots

        stem = Path(str(row["file"])).name.split(".")[0]
        name = f"{stem}.png" if int(row["n_frames"]) <= 1 else f"{stem}_{int(row['frame']):05d}.png"
        draw_spots(image, analysis, png_folder / name)
        report.pngs += 1

    scorer = Scorer(config, [], on_spots=draw if png_folder is not None else None)
    refs = plan_refs(expand_inputs(inputs, recursive=recursive), done)
    header_needed = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        if header_needed:
            writer.writerow(SPOTS_ONLY_COLUMNS)
            fh.flush()
        for item in make_items(refs, 1):
            if stop is not None and stop.is_set():
                break
            for row in scorer.score_item(item):
                if (str(row["file"]), int(row["frame"])) in done:
                    continue
                writer.writerow([_csv_value(row.get(c, "")) for c in SPOTS_ONLY_COLUMNS])
                fh.flush()
                report.rows_written += 1
                if row.get("error"):
                    report.errors += 1
                    if len(report.first_errors) < 10:
                        report.first_errors.append(str(row["error"]))
                elif int(row.get("hit", 0) or 0) == 1 and not math.isnan(float(row.get("n_spots", math.nan))):
                    report.hits += 1
                if on_row is not None:
                    on_row(row)
    return report
