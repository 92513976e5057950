"""``xrais merge`` (scale and merge reflection files) and ``xrais pipeline`` (images → merge, under MPI).

``mpirun -n R xrais pipeline --config C --out DIR`` runs the pipeline on R ranks (rank 0 merges,
the others make images); ``xrais pipeline`` alone runs it on one process. Both resume a killed
run found in DIR.

Both are long runs (:mod:`xrais.runs`): the output is checked and locked first (``merge`` locks
``.NAME.xrais.lock`` beside ``--out NAME``), SIGTERM or SIGINT stops them after the current
epoch (``merge``) or image/epoch (``pipeline``) with the state saved and exit status 128 + N,
and the same command started again goes on from there. ``merge`` keeps its training state in
``NAME_merge_state.pt`` beside the output until the merged MTZ is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

__all__ = ["register", "merge", "pipeline"]


def _parse_cell(text: Optional[str]) -> Optional[tuple[float, ...]]:
    from xrais.errors import ConfigError

    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        values = ()
    if len(values) != 6:
        raise ConfigError(f"--cell {text!r}: expected six numbers a,b,c,α,β,γ (Å, degrees)")
    return values


def _read_config(path: Optional[Path]) -> dict:
    if path is None:
        return {}
    from xrais.config_files import read_config_file

    return read_config_file(path, "merge config")


def _reference_truth(path: Path, unique: object) -> object:
    """True |F| per unique reflection from a merged MTZ (F or FP; F(+)/F(−) for anomalous lists)."""
    import gemmi
    import numpy as np

    from xrais.errors import DatasetError
    from xrais.models.variational.wilson import reduce_to_asu_array

    mtz = gemmi.read_mtz_file(str(path))
    labels = [c.label for c in mtz.columns]
    f_label = next((lab for lab in ("F", "FP", "F_TRUE") if lab in labels), None)
    if f_label is None:
        raise DatasetError(f"{path}: reference needs an F, FP or F_TRUE column; columns are {', '.join(labels)}")
    data = np.array(mtz, copy=False)
    hkl = data[:, :3].astype(np.int32)
    asu, _ = reduce_to_asu_array(hkl, unique.space_group)
    truth = np.full(len(unique), np.nan)
    plus = data[:, labels.index("F(+)")] if "F(+)" in labels else data[:, labels.index(f_label)]
    minus = data[:, labels.index("F(-)")] if "F(-)" in labels else data[:, labels.index(f_label)]
    for sign, values in ((1, plus), (-1, minus)):
        rows = unique.lookup(asu, np.full(len(asu), sign))
        ok = (rows >= 0) & np.isfinite(values)
        if not unique.anomalous and sign < 0:
            continue
        truth[rows[ok]] = values[ok]
    return truth


def merge(
    reflections: List[Path] = typer.Argument(..., help="Unmerged reflection files (.mtz, .h5, .stream).",
                                             show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="Merged MTZ to write."),
    stats: Optional[Path] = typer.Option(None, "--stats", help="Statistics CSV (default: OUT with _statistics.csv)."),
    config: Optional[Path] = typer.Option(None, "--config", help="MergeConfig as JSON/TOML (options below override)."),
    anomalous: Optional[bool] = typer.Option(None, "--anomalous/--no-anomalous", help="Merge Friedel mates apart."),
    d_min_A: Optional[float] = typer.Option(None, "--d-min-A", help="High-resolution limit, Å."),
    space_group: Optional[str] = typer.Option(None, "--space-group", help="Override the files' space group."),
    cell: Optional[str] = typer.Option(None, "--cell", help="Override the cell: 'a,b,c,α,β,γ'."),
    intensity_column: Optional[str] = typer.Option(None, "--intensity-column", help="MTZ intensity column (I)."),
    sigma_column: Optional[str] = typer.Option(None, "--sigma-column", help="MTZ σ column (SIGI)."),
    metadata: Optional[str] = typer.Option(None, "--metadata", help="Scale-model inputs, comma-separated "
                                                                     "(default INV_D2,XDET,YDET,BATCH,WAVELENGTH)."),
    likelihood: Optional[str] = typer.Option(None, "--likelihood", help="normal or student_t."),
    student_t_dof: Optional[float] = typer.Option(None, "--student-t-dof", help="Degrees of freedom (Student-t)."),
    posterior: Optional[str] = typer.Option(None, "--posterior", help="truncated_normal or folded_normal."),
    images_per_step: Optional[int] = typer.Option(None, "--images-per-step", help="Images per gradient step."),
    max_epochs: Optional[int] = typer.Option(None, "--max-epochs", help="Most passes over the images."),
    test_fraction: Optional[float] = typer.Option(None, "--test-fraction", help="Images held out for CCpred."),
    half_dataset_steps: Optional[int] = typer.Option(None, "--half-dataset-steps", help="Steps of each CC½ model "
                                                                                         "(0: no CC½)."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="MTZ of true F for CC to the truth."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu or cuda."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the split, shuffles and weights."),
    threads: int = typer.Option(1, "--threads", help="torch CPU threads (the per-step work is small: 1 is fastest)."),
) -> None:
    """Scale and merge unmerged reflections with the variational scaler; write MTZ and statistics."""
    import torch

    from pydantic import ValidationError

    from xrais.infer.merge import MergeConfig
    from xrais.runs import check_out_file, stop_on_signals

    torch.set_num_threads(max(1, threads))
    values = _read_config(config)
    overrides = {"anomalous": anomalous, "d_min_A": d_min_A, "max_epochs": max_epochs, "test_fraction": test_fraction,
                 "half_dataset_steps": half_dataset_steps, "device": device, "seed": seed,
                 "metadata_columns": tuple(m.strip() for m in metadata.split(",") if m.strip()) if metadata else None}
    values.update({k: v for k, v in overrides.items() if v is not None})
    scaler = dict(values.pop("scaler", {}) or {})
    scaler.update({k: v for k, v in {"likelihood": likelihood, "student_t_dof": student_t_dof, "posterior": posterior,
                                     "images_per_step": images_per_step, "seed": seed}.items() if v is not None})
    try:
        cfg = MergeConfig.model_validate({**values, "scaler": scaler})
    except ValidationError as exc:
        from xrais.config_files import config_error

        raise config_error(exc, MergeConfig, config.name if config is not None else "merge options") from None
    check_out_file(out)
    stats_path = stats or out.with_name(out.stem + "_statistics.csv")
    check_out_file(stats_path, "--stats")
    with _output_lock(out, "xrais merge"), stop_on_signals() as stop:
        _merge_locked(reflections, out, stats_path, cfg, space_group=space_group, cell=cell,
                      d_min_A=d_min_A, intensity_column=intensity_column, sigma_column=sigma_column,
                      reference=reference, stop=stop)


def _output_lock(out: Path, command: str) -> object:
    """The lock of one output file: ``.NAME.xrais.lock`` in its folder (other outputs there stay free)."""
    from xrais.runs import RunLock

    return RunLock(out.parent, command, name=f".{out.name}.xrais.lock")


def _merge_locked(reflections: List[Path], out: Path, stats_path: Path, cfg: object, *, space_group: Optional[str],
                  cell: Optional[str], d_min_A: Optional[float], intensity_column: Optional[str],
                  sigma_column: Optional[str], reference: Optional[Path], stop: object) -> None:
    import time

    from rich.table import Table

    from xrais.cli import console
    from xrais.infer.merge import merge_table, write_merged_mtz, write_statistics_csv
    from xrais.infer.reflections import read_reflections
    from xrais.models.variational.wilson import UniqueReflections

    t0 = time.perf_counter()
    table = read_reflections(reflections, space_group=space_group, cell=_parse_cell(cell), d_min_A=d_min_A,
                             intensity_column=intensity_column, sigma_column=sigma_column)
    truth = "auto"
    if reference is not None:
        d_min = cfg.d_min_A or float(table["DHKL"].min()) * (1 - 1e-6)
        truth = _reference_truth(reference, UniqueReflections(table.cell, table.spacegroup, d_min, cfg.anomalous))
    state_path = out.with_name(out.stem + "_merge_state.pt")
    if state_path.exists():
        console.print(f"resuming the merge saved in {state_path}", highlight=False)
    result = merge_table(table, cfg, truth_F=truth, stop=stop, state_path=state_path)
    wavelength = float(table["WAVELENGTH"].median())
    write_merged_mtz(result.merged, out, wavelength_A=wavelength,
                     history=[f"xrais merge {' '.join(p.name for p in reflections)}"])
    write_statistics_csv(result.statistics, stats_path)
    write_statistics_csv(result.history, out.with_name(out.stem + "_history.csv"))
    state_path.unlink(missing_ok=True)
    overall = result.statistics[result.statistics["shell"] == "overall"].iloc[0]
    summary = Table(title=f"xrais merge → {out}", show_header=False)
    summary.add_column("what", style="bold")
    summary.add_column("value")
    summary.add_row("observations", f"{len(result.observations)} on {len(result.observations.images)} images")
    summary.add_row("merged reflections", f"{len(result.merged)} (d ≥ {overall['d_min_A']:.2f} Å)")
    summary.add_row("training", f"{int(result.history['epoch'].iloc[-1])} epochs, "
                                f"{int(result.history['steps'].iloc[-1])} steps, {time.perf_counter() - t0:.1f} s")
    for name in ("completeness", "multiplicity", "CC_half", "CC_pred_test", "CC_true", "CC_anom_true"):
        if name in overall.index:
            summary.add_row(name, f"{overall[name]:.4f}")
    summary.add_row("statistics", str(stats_path))
    console.print(summary)


def pipeline(
    config: Path = typer.Option(..., "--config", "-c", help="Pipeline config (TOML or JSON)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (resumed when it holds a run)."),
    threads: int = typer.Option(1, "--threads", help="torch CPU threads per rank (1 is fastest for this work)."),
) -> None:
    """Simulate or read images, integrate them and merge online; `mpirun -n R xrais pipeline …` for R ranks."""
    import torch

    from xrais.cli import console
    from xrais.infer.pipeline import load_pipeline_config, run_pipeline
    from xrais.parallel import mpi_world
    from xrais.runs import exit_status, stop_on_signals

    comm = mpi_world()
    torch.set_num_threads(max(1, threads))
    cfg = load_pipeline_config(config)
    with stop_on_signals() as stop:
        report = run_pipeline(cfg, out, comm=comm, stop=stop)
    if comm is None or comm.Get_rank() == 0:
        from rich.table import Table

        summary = Table(title=f"xrais pipeline → {out}", show_header=False)
        summary.add_column("what", style="bold")
        summary.add_column("value")
        summary.add_row("ranks", str(1 if comm is None else comm.Get_size()))
        summary.add_row("images", f"{report['images']} ({report['resumed_from_images']} from an earlier run, "
                                  f"{report['errors']} errors)")
        summary.add_row("gradient steps", str(report["steps"]))
        summary.add_row("seconds", f"{report['seconds']:.1f}")
        for name in ("completeness", "multiplicity", "CC_half", "CC_pred_test", "CC_true", "CC_anom_true"):
            if name in report:
                summary.add_row(name, f"{report[name]:.4f}")
        if report.get("stopped"):
            summary.add_row("stopped", f"in phase {report['phase']}: finished work is saved, run the same "
                                       "command again to resume")
        for path in report.get("files", []):
            summary.add_row("file (so far)" if report.get("stopped") else "file", str(path))
        console.print(summary)
    code = exit_status(report.get("errors", 0), stop)
    if report.get("stopped") and code == 0:      # stopped without a signal of its own (another rank's)
        code = 1
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add ``merge`` and ``pipeline`` to the ``xrais`` command."""
    app.command("merge")(merge)
    app.command("pipeline")(pipeline)
