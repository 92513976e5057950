"""``xrais info`` and ``xrais condition``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional, Tuple

import typer

__all__ = ["register"]


def _fmt(value: float, digits: int = 2) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def info(
    images: List[Path] = typer.Argument(..., help="Detector image files.", show_default=False),
    frame: int = typer.Option(0, "--frame", help="Frame of multi-frame files to describe."),
) -> None:
    """Describe images: format, detector, shape, geometry from the header, counts."""
    from rich.table import Table

    from xrais.cli import console, err_console
    from xrais.conditioning.readers.registry import open_image
    from xrais.errors import XraisError

    table = Table(title="xrais info", header_style="bold")
    rows = 0
    for col in ("file", "format", "detector", "frames", "fast×slow", "dtype", "pixel mm", "distance mm",
                "λ Å", "beam centre px (f, s)", "block", "min", "median", "max", "masked %"):
        table.add_column(col, justify="right" if col not in ("file", "format", "detector") else "left",
                         overflow="fold")
    failed = 0
    for path in images:
        try:
            with open_image(path) as reader:
                n = reader.n_frames
                im = reader.read_frame(frame)
        except (XraisError, OSError) as exc:
            failed += 1
            err_console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
            continue
        except Exception as exc:  # a damaged file is one error line, and the other files are still described
            failed += 1
            reason = " ".join(str(exc).split()) or "no reason given"
            err_console.print(f"[red]error:[/] {path.name}: cannot be read ({type(exc).__name__}: {reason})",
                              highlight=False, soft_wrap=True)
            continue
        rows += 1
        st = im.statistics()
        det = im.detector
        table.add_row(
            path.name, im.format, det.name, str(n), f"{im.shape[1]}×{im.shape[0]}", str(im.pixels.dtype),
            _fmt(det.pixel_size_mm[0], 4), _fmt(det.distance_mm), _fmt(im.beam.wavelength_A, 5),
            f"({_fmt(im.beam_center_px[0])}, {_fmt(im.beam_center_px[1])})", str(im.downsample_block),
            _fmt(st["min"], 0), _fmt(st["median"], 0), _fmt(st["max"], 0), _fmt(100 * st["masked_fraction"], 1),
        )
    if rows:
        console.print(table)
    if failed:
        raise typer.Exit(1)


def condition(
    images: List[Path] = typer.Argument(..., help="Image files or folders of them.", show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for conditioned_NNNNN.h5 shards."),
    quadrants: int = typer.Option(4, "--quadrants", "-q", help="4 quadrants, or 1 (the upper-left one)."),
    downsample: Optional[int] = typer.Option(None, "--downsample", "-n",
                                             help="Max-pool block N (default: the detector's own)."),
    png: bool = typer.Option(False, "--png", help="Also write a PNG per frame for a person to look at."),
    shard_size: int = typer.Option(64, "--shard-size", min=1, help="Frames per HDF5 shard."),
    beam_center: Optional[Tuple[float, float]] = typer.Option(
        None, "--beam-center", metavar="FAST SLOW",
        help="Beam centre in pixels for every image, replacing the header's."),
    flush_every: int = typer.Option(8, "--flush-every", min=1,
                                    help="Write finished frames to disk every N frames at most …"),
    flush_s: float = typer.Option(30.0, "--flush-s", min=0.001, help="… and every S seconds at most."),
) -> None:
    """Condition images into 512×512 uint8 quadrants (max-pool, sqrt) with the beam at [0, 0].

    Bad files are reported and skipped. Finished frames reach OUT every --flush-every frames or
    --flush-s seconds; SIGTERM or SIGINT stops after the current frame with everything written
    (exit 128+N). Running the same command again skips the frames already in OUT. Exit status:
    0 when every input succeeded, 1 when some failed, 2 for a usage error or an OUT in use.
    """
    import signal

    from pydantic import ValidationError
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table

    from xrais.cli import console, err_console
    from xrais.conditioning.condition import ConditioningConfig
    from xrais.conditioning.run import condition_files, expand_paths
    from xrais.errors import ConfigError, RunInterrupted
    from xrais.runs import RunLock, check_out_dir, exit_status, stop_on_signals

    try:
        config = ConditioningConfig(block=downsample, quadrants=quadrants)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"--{first['loc'][0] if first['loc'][0] != 'block' else 'downsample'}: "
                          f"{first['msg']} (got {first['input']!r})") from None
    out = check_out_dir(out, "--out")
    paths = expand_paths(images)
    progress = Progress(TextColumn("[bold]conditioning"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[name]}"), TimeRemainingColumn(), console=err_console,
                        disable=len(paths) < 4 or not err_console.is_terminal, transient=True)
    with RunLock(out, "xrais condition"), stop_on_signals() as stop, progress:
        task = progress.add_task("condition", total=len(paths), name="")
        seen: set[Path] = set()

        def on_result(r) -> None:  # one tick per file, whatever its frame count
            if r.path not in seen:
                seen.add(r.path)
                progress.update(task, advance=1, name=r.path.name)
            if r.error:
                err_console.print(f"[red]error:[/] {r.error}", highlight=False, soft_wrap=True)

        report = condition_files(paths, out, config, png=png, shard_size=shard_size,
                                 beam_center_px=beam_center, on_result=on_result,
                                 flush_every_frames=flush_every, flush_every_s=flush_s, stop=stop)
    table = Table(title=f"conditioned → {out}", header_style="bold")
    for col in ("file", "frame", "detector", "fast×slow", "block", "beam centre px (f, s)", "max √counts",
                "non-zero %", "ms", "status"):
        table.add_column(col, justify="left" if col in ("file", "detector", "status") else "right",
                         overflow="fold")
    for r in report.results:
        status = "[red]failed[/]" if r.error else ("skipped (done)" if r.skipped else "ok")
        table.add_row(r.path.name, str(r.frame) if r.frame >= 0 else "—", r.detector or "—",
                      f"{r.shape[1]}×{r.shape[0]}" if r.shape[0] else "—", str(r.block or "—"),
                      f"({_fmt(r.beam_center_px[0])}, {_fmt(r.beam_center_px[1])})",
                      str(r.max_value) if r.ok and not r.skipped else "—",
                      _fmt(100 * r.nonzero_fraction, 1) if r.ok and not r.skipped else "—",
                      _fmt(1000 * r.seconds, 1) if r.ok and not r.skipped else "—", status)
    console.print(table)
    n_ok = sum(1 for r in report.results if r.ok and not r.skipped)
    console.print(f"{n_ok} frame(s) conditioned, {sum(r.skipped for r in report.results)} already done, "
                  f"{len(report.failed)} failed; shards: {', '.join(p.name for p in report.shards) or 'none new'}")
    if report.stopped:
        raise RunInterrupted(stop.signum or signal.SIGTERM, "xrais condition")
    code = exit_status(len(report.failed), stop)
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add ``info`` and ``condition`` to the ``xrais`` app."""
    app.command("info")(info)
    app.command("condition")(condition)
