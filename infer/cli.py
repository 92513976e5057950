"""``xrais infer`` (score images, or follow an experiment) and ``xrais plot`` (the strip chart)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, List, Optional, Tuple

import typer

__all__ = ["register", "infer", "spots", "plot", "DEFAULT_MODEL"]

#: The shipped model ``xrais infer`` scores with when no ``--model`` is given.
DEFAULT_MODEL = "resolution"


def _summary_table(stats: Any, title: str) -> Any:
    from rich.table import Table

    last = stats.last
    table = Table(title=title, show_header=False, header_style="bold")
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("images scored", str(stats.scored))
    table.add_row("rate", f"{stats.rate_hz():.2f} images/s (last {stats.window_s:.0f} s)")
    table.add_row("errors", f"[red]{stats.errors}[/]" if stats.errors else "0")
    if last:
        name = Path(str(last.get("file", ""))).name
        frame = last.get("frame", 0)
        table.add_row("last image", f"{name}" + (f" frame {frame}" if frame else ""))
        if "min_resolution_A" in last:
            table.add_row("last resolution", f"{last['min_resolution_A']:.2f} Å min, {last['mean_resolution_A']:.2f} Å mean")
        if "n_spots" in last:
            d = last.get("spot_resolution_A")
            table.add_row("last spots", f"{last['n_spots']} ({'hit' if last.get('hit') else 'no hit'})"
                          + (f", {d:.2f} Å" if isinstance(d, float) and d == d else ""))
        if "multilattice_probability" in last:
            table.add_row("last multi-lattice P", f"{last['multilattice_probability']:.3f}")
        warnings = [str(v) for k, v in last.items() if k.endswith("model_warning") and v]
        if warnings:
            table.add_row("last model warning", f"[yellow]{'; '.join(warnings)}[/]")
    if stats.last_error:
        table.add_row("last error", f"[red]{stats.last_error}[/]")
    return table


def _report_table(report: Any, out: Path) -> Any:
    from rich.table import Table

    ok = report.rows_written - report.errors
    table = Table(title=f"xrais infer → {out}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("rows written", f"{report.rows_written} ({ok} scored, {report.errors} errors)")
    table.add_row("already done", str(report.rows_before))
    table.add_row("ranks", str(report.ranks))
    table.add_row("wall time", f"{report.seconds:.1f} s ({report.images_per_s:.2f} images/s)")
    if ok:
        per = {k: 1000.0 * v / ok for k, v in report.stage_s.items()}
        parts = [f"{label} {per[key]:.1f} ms" for key, label in
                 (("read_s", "read"), ("spots_s", "spots"), ("condition_s", "condition"), ("score_s", "score"))
                 if per.get(key)]
        table.add_row("per image (one rank)", ", ".join(parts))
    if report.interrupted:
        table.add_row("stopped", "interrupted; run the same command again to go on")
    return table


def _choose_models(model: List[str], no_model: bool) -> tuple[tuple[str, ...], str | None]:
    """The models to score with, and a line saying where a default one came from (None: not a default).

    Without ``--model`` (and without ``--no-model``) the shipped model :data:`DEFAULT_MODEL` is
    used when xrais ships one; else the rows hold the spot columns alone, as before.
    """
    from xrais.errors import CheckpointError, ConfigError
    from xrais.models.checkpoint import shipped_checkpoints

    if no_model and model:
        raise ConfigError(f"xrais infer: --no-model and --model {model[0]} exclude each other")
    if model or no_model:
        return tuple(model), None
    shipped = shipped_checkpoints().get(DEFAULT_MODEL)
    if shipped is None:
        return (), None
    if not shipped.path.is_file():
        raise CheckpointError(f"model {DEFAULT_MODEL!r}: the shipped index lists {shipped.path.name}, which does "
                              f"not exist in {shipped.path.parent} (give --model, or --no-model for spots only)")
    return (str(shipped.path),), (f"model: {DEFAULT_MODEL}, shipped with xrais ({shipped.path}); "
                                  "--model M for another, --no-model for the spot columns alone")


def infer(
    images: Optional[List[str]] = typer.Argument(
        None, help="Image files, folders or globs; '-' reads file paths from stdin.", show_default=False),
    model: List[str] = typer.Option([], "--model", "-m", show_default=False,
                                    help="Checkpoint file, folder or name (repeat for more). Default: the "
                                         f"'{DEFAULT_MODEL}' model shipped with xrais, when there is one."),
    no_model: bool = typer.Option(False, "--no-model",
                                  help="Score with no model: the spot columns alone (n_spots, …, hit)."),
    out: Path = typer.Option(..., "--out", "-o", help="Results folder (resumed if it exists)."),
    quadrants: int = typer.Option(4, "--quadrants", "-q", help="Score 4 quadrants, or 1 (quadrant 0)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Quadrants per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto (GPU when present), cpu, cuda or cuda:N."),
    formats: str = typer.Option("csv,h5", "--format", help="Tables to write: csv plus h5 or parquet."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, or bf16 (faster on CPUs with bf16 units)."),
    channels_last: bool = typer.Option(True, "--channels-last/--no-channels-last", help="Channels-last weights."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Torch threads per rank (default: cores shared)."),
    chunk_frames: int = typer.Option(8, "--chunk-frames", help="Frames per work item handed to a rank."),
    downsample: Optional[int] = typer.Option(None, "--downsample", "-n", help="Max-pool block N (default: model's)."),
    distance_mm: Optional[float] = typer.Option(None, "--distance-mm", help="Detector distance, replacing headers."),
    wavelength_A: Optional[float] = typer.Option(None, "--wavelength-A", help="Wavelength in Å, replacing headers."),
    beam_center: Optional[Tuple[float, float]] = typer.Option(
        None, "--beam-center", metavar="FAST SLOW", help="Beam centre in pixels, replacing headers."),
    spots: bool = typer.Option(True, "--spots/--no-spots",
                               help="Find spots in the same pass (n_spots, d_5pct_A, spot_resolution_A, hit)."),
    spot: List[str] = typer.Option([], "--spot", metavar="NAME=VALUE", show_default=False,
                                   help="A spot-finder or hit setting, DIALS names (sigma_strong=4, min_spots=30)."),
    retry_errors: bool = typer.Option(False, "--retry-errors", help="Score again images whose rows hold an error."),
    flush_rows: int = typer.Option(64, "--flush-rows", help="Append to results.h5/.parquet every N rows at most."),
    flush_s: float = typer.Option(30.0, "--flush-s", help="… and every S seconds at most while rows wait."),
    watch: Optional[str] = typer.Option(None, "--watch", help="Follow this folder ('-': paths on stdin) until stopped."),
    pattern: str = typer.Option("*", "--pattern", help="With --watch: file-name glob."),
    recursive: bool = typer.Option(False, "--recursive",
                                   help="Include sub-folders of folders (named, matched by a glob, or --watch)."),
    settle_s: float = typer.Option(1.0, "--settle-s", help="With --watch: seconds a new file must stay unchanged."),
    poll_s: float = typer.Option(0.5, "--poll-s", help="With --watch: seconds between looks at the folder."),
    idle_timeout: Optional[float] = typer.Option(None, "--idle-timeout", help="With --watch: stop after S s idle."),
) -> None:
    """Score diffraction images with resolution / multi-lattice models and find their spots, one row per image.

    Without --model the resolution model shipped with xrais is used, when
    this xrais ships one (`xrais models list`; a line says so); with
    --no-model, or when none is shipped, the rows hold the model-free answer
    alone: spots found by DIALS's dispersion threshold, d_5pct_A, the DISTL
    resolution limit and the hit call (see `xrais spots`). The spot columns
    are in the rows with models too (--no-spots leaves them out). A model
    that records the geometry it was trained on adds a model_warning column:
    empty, or what of the image's pixel size, distance, wavelength or
    detector tilt lies outside that geometry (the values are kept).

    Rows go to OUT/results.csv as they come (and results.h5 or
    results.parquet); a killed run started again with the same arguments
    skips what is done. Under `mpirun -n R xrais infer …` rank 0 hands out
    work and ranks 1…R−1 score. With --watch it follows a running experiment
    until Ctrl-C (or --idle-timeout). SIGTERM or Ctrl-C finishes the images
    being scored, writes them and exits 128+N. One run at a time per OUT.

    Exit status: 0 when every image of this run was scored; 1 when some rows
    hold an error (the rest were scored) or the run could not finish; 2 for
    usage errors (a bad option, an unusable or busy --out); 128+N when
    stopped by signal N.
    """
    from rich.live import Live

    from xrais.cli import console, err_console
    from xrais.errors import ConfigError
    from xrais.infer.config import InferConfig, WatchConfig, make_config
    from xrais.infer.runner import run_inference
    from xrais.infer.spots import parse_settings
    from xrais.infer.watch import RunStats
    from xrais.parallel import mpi_world
    from xrais.runs import RunLock, check_out_dir_collectively, exit_status, stop_on_signals

    models, default_note = _choose_models(model, no_model)
    config = make_config(
        InferConfig, models=models, spots=spots, spot_settings=parse_settings(spot), quadrants=quadrants,
        block=downsample, batch_size=batch_size,
        device=device, precision=precision, channels_last=channels_last, threads=threads,
        formats=tuple(f.strip() for f in formats.split(",") if f.strip()), chunk_frames=chunk_frames,
        flush_rows=flush_rows, flush_s=flush_s, distance_mm=distance_mm, wavelength_A=wavelength_A,
        beam_center_px=beam_center, retry_errors=retry_errors)
    watch_cfg = None
    if watch is not None:
        watch_cfg = make_config(WatchConfig, folder=watch, pattern=pattern, recursive=recursive, settle_s=settle_s,
                                poll_s=poll_s, idle_timeout_s=idle_timeout)
    elif not images:
        raise ConfigError("xrais infer: give image files, folders or globs ('-' for stdin), or --watch DIR")
    comm = mpi_world()
    rank = comm.Get_rank() if comm is not None else 0
    check_out_dir_collectively(out, comm)
    if default_note is not None and rank == 0:
        console.print(default_note, highlight=False, soft_wrap=True)
    stats = RunStats()
    live = rank == 0 and err_console.is_terminal
    last_line = [time.monotonic()]

    def on_rows(rows: list[dict[str, Any]]) -> None:
        stats.update(rows)
        if live or watch_cfg is None:
            return
        for row in rows:  # following an experiment into a log: errors at once, a summary every 10 s
            if row.get("error"):
                err_console.print(f"[red]error:[/] {row['error']}", highlight=False, soft_wrap=True)
        if time.monotonic() - last_line[0] >= 10.0:
            last_line[0] = time.monotonic()
            err_console.print(f"{stats.scored} scored, {stats.errors} errors, {stats.rate_hz():.2f} images/s",
                              highlight=False)

    with RunLock(out, "xrais infer", comm=comm), stop_on_signals() as stop:
        kwargs = dict(watch=watch_cfg, comm=comm, on_rows=on_rows, stop=stop, recursive=recursive)
        if live:
            title = f"xrais infer → {out}" + (f" (following {watch})" if watch else "")
            with Live(get_renderable=lambda: _summary_table(stats, title), console=err_console,
                      refresh_per_second=2, transient=True):
                report = run_inference(config, images or [], out, **kwargs)
        else:
            report = run_inference(config, images or [], out, **kwargs)
    if report is None:  # a worker rank: the manager reports and sets the exit status
        return
    console.print(_report_table(report, out))
    for text in report.first_errors[:5]:
        err_console.print(f"[red]error:[/] {text}", highlight=False, soft_wrap=True)
    if report.errors > 5:
        err_console.print(f"… {report.errors - 5} more error rows in {out / 'results.csv'}", highlight=False)
    stop.check(f"xrais infer → {out}")  # stopped by a signal: exits 128 + N, saying the rows are saved
    if report.interrupted:
        raise KeyboardInterrupt  # a second Ctrl-C: exits 130
    code = exit_status(report.errors, stop)
    if code:
        raise typer.Exit(code)


def plot(
    results: Path = typer.Argument(..., help="Results folder, results.csv, results.h5 or Parquet.", show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="PNG file to write."),
    max_datasets: int = typer.Option(24, "--max-datasets", help="Draw at most this many data sets."),
) -> None:
    """Draw the strip chart of inference results: resolution, per-quadrant spread and
    multi-lattice probability against image number, one row of panels per data set."""
    from xrais.cli import console
    from xrais.infer.plot import plot_results
    from xrais.runs import check_out_file

    check_out_file(out)
    drawn = plot_results(results, out, max_datasets=max_datasets)
    console.print(f"wrote {drawn['path']}: {len(drawn['datasets'])} data set(s), {drawn['images']} images, "
                  f"panels {', '.join(drawn['panels'])}", highlight=False)


def spots(
    images: List[str] = typer.Argument(..., help="Image files, folders or globs.", show_default=False),
    out: Path = typer.Option(Path("spots.csv"), "--out", "-o", help="CSV of one row per frame (resumed if it exists)."),
    png: Optional[Path] = typer.Option(None, "--png", help="Write a PNG per frame here, the spots circled."),
    spot: List[str] = typer.Option([], "--spot", metavar="NAME=VALUE", show_default=False,
                                   help="A spot-finder or hit setting, DIALS names (sigma_strong=4, gain=8, "
                                        "min_spots=30, exclude_ice_rings=true)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Threads of the spot finder (default: all cores)."),
    distance_mm: Optional[float] = typer.Option(None, "--distance-mm", help="Detector distance, replacing headers."),
    wavelength_A: Optional[float] = typer.Option(None, "--wavelength-A", help="Wavelength in Å, replacing headers."),
    beam_center: Optional[Tuple[float, float]] = typer.Option(
        None, "--beam-center", metavar="FAST SLOW", help="Beam centre in pixels, replacing headers."),
    recursive: bool = typer.Option(False, "--recursive", help="Include sub-folders of folders."),
    retry_errors: bool = typer.Option(False, "--retry-errors", help="Do again frames whose rows hold an error."),
) -> None:
    """Find the spots of every frame without a model: DIALS's dispersion threshold, per-frame resolution and hit call.

    One row per frame (file, frame, geometry, n_spots, n_spots_no_ice,
    d_5pct_A, spot_resolution_A (DISTL method 2), hit) is appended to
    --out as each frame is done; the same command again skips frames done.
    Settings take DIALS's names and defaults (gain 1, kernel_size 3 (7×7),
    sigma_background 6, sigma_strong 3, min_local 2, min_spot_size 3,
    max_spot_size 1000) and the hit call min_spots 20. Analogue detectors
    (CSPAD, CCDs) need their gain in counts per photon: --spot gain=N.

    Exit status: 0 when every frame was done; 1 when some rows hold an
    error; 2 for usage errors; 128+N when stopped by signal N.
    """
    from rich.table import Table

    from xrais.cli import console, err_console
    from xrais.infer.config import InferConfig, make_config
    from xrais.infer.spots import parse_settings
    from xrais.infer.spots_run import find_spots_in_files
    from xrais.runs import RunLock, check_out_dir, check_out_file, exit_status, stop_on_signals

    config = make_config(InferConfig, models=(), spots=True, spot_settings=parse_settings(spot), threads=threads,
                         distance_mm=distance_mm, wavelength_A=wavelength_A, beam_center_px=beam_center,
                         retry_errors=retry_errors)
    check_out_file(out)
    if png is not None:
        check_out_dir(png, "--png")
    with RunLock(out.parent, "xrais spots", name=f".{out.name}.xrais.lock"), stop_on_signals() as stop:
        report = find_spots_in_files(images, out, config, png_dir=png, recursive=recursive, stop=stop)
    table = Table(title=f"xrais spots → {out}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("rows written", f"{report.rows_written} ({report.rows_written - report.errors} frames, "
                                  f"{report.errors} errors)")
    table.add_row("hits", str(report.hits))
    table.add_row("already done", str(report.rows_before))
    if png is not None:
        table.add_row("pictures", f"{report.pngs} in {png}")
    console.print(table)
    for text in report.first_errors[:5]:
        err_console.print(f"[red]error:[/] {text}", highlight=False, soft_wrap=True)
    stop.check(f"xrais spots → {out}")
    code = exit_status(report.errors, stop)
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add ``infer``, ``spots`` and ``plot`` to the ``xrais`` app."""
    app.command("infer")(infer)
    app.command("spots")(spots)
    app.command("plot")(plot)
