"""Condition many image files into HDF5 shards (and optional PNGs), resumably.

Each frame of each file becomes ``quadrants`` rows of ``images`` with its source, geometry
and conditioning settings as columns (see :mod:`xrais.io`). A bad file is reported and
skipped; the rest are finished. Finished frames reach disk every ``flush_every_frames`` frames
or ``flush_every_s`` seconds (a shard file is always whole on disk, see :mod:`xrais.io`), so a
killed run loses at most the frames since the last flush; a ``stop`` event (SIGTERM, SIGINT)
ends the run after the current frame, with everything written. Running the same command again
skips the frames already in any shard.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from xrais.conditioning.condition import ConditioningConfig, condition, resolve_block
from xrais.conditioning.image import DiffractionImage
from xrais.conditioning.readers.registry import open_image
from xrais.errors import XraisError
from xrais.io import ShardWriter, list_shards, read_shard
from xrais.runs import FlushSchedule, check_out_dir

__all__ = ["FrameResult", "ConditionReport", "condition_files", "write_quadrant_png", "expand_paths",
           "FLUSH_EVERY_FRAMES", "FLUSH_EVERY_S"]

log = logging.getLogger(__name__)

SHARD_PREFIX = "conditioned"
#: Default flush cadence: finished frames reach disk after this many frames …
FLUSH_EVERY_FRAMES = 8
#: … or this many seconds, whichever comes first.
FLUSH_EVERY_S = 30.0


@dataclass
class FrameResult:
    """What happened to one frame (or to a file that could not be opened: frame −1)."""

    path: Path
    frame: int
    detector: str = ""
    shape: tuple[int, int] = (0, 0)
    block: int = 0
    beam_center_px: tuple[float, float] = (float("nan"), float("nan"))
    max_value: int = 0
    nonzero_fraction: float = 0.0
    seconds: float = 0.0
    error: str = ""
    skipped: bool = False

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass
class ConditionReport:
    """All frame results of a run and the shards it wrote."""

    results: list[FrameResult] = field(default_factory=list)
    shards: list[Path] = field(default_factory=list)
    stopped: bool = False

    @property
    def failed(self) -> list[FrameResult]:
        return [r for r in self.results if not r.ok]


def _done_frames(out_dir: Path) -> set[tuple[str, int]]:
    done: set[tuple[str, int]] = set()
    for shard in list_shards(out_dir, SHARD_PREFIX):
        _, cols, _ = read_shard(shard, images=False)
        done.update(zip(cols["source/path"], (int(v) for v in cols["source/frame"])))
    return done


def _unexpected(path: Path, exc: Exception) -> str:
    """The one-line error of a failure no reader foresaw (the traceback goes to the debug log)."""
    log.debug("%s: unexpected failure", path, exc_info=exc)
    return f"{path.name}: cannot be read ({type(exc).__name__}: {' '.join(str(exc).split()) or 'no reason given'})"


def _frames(path: Path, stop: threading.Event | None = None) -> Iterator[DiffractionImage | FrameResult]:
    """Each frame of ``path``, or a FrameResult carrying the error that stopped it.

    Stops before reading the next frame once ``stop`` is set.
    """
    try:
        reader = open_image(path)
        n = reader.n_frames
    except (XraisError, OSError) as exc:
        yield FrameResult(path=path, frame=-1, error=str(exc))
        return
    except Exception as exc:  # a damaged file must be one error, never the end of the run
        yield FrameResult(path=path, frame=-1, error=_unexpected(path, exc))
        return
    with reader:
        for i in range(n):
            if stop is not None and stop.is_set():
                return
            try:
                yield reader.read_frame(i)
            except (XraisError, OSError) as exc:
                yield FrameResult(path=path, frame=i, error=str(exc))
            except Exception as exc:
                yield FrameResult(path=path, frame=i, error=_unexpected(path, exc))


def write_quadrant_png(quadrants: np.ndarray, path: str | Path) -> Path:
    """Save quadrants side by side as one greyscale PNG for a person to look at.

    Each quadrant is shown as the model sees it (beam centre top left). The display is
    inverted (spots dark on white) and stretched so that the 99.9th percentile of the
    non-zero values is black; the stored HDF5 data are not changed.
    """
    from PIL import Image

    q = np.asarray(quadrants, dtype=np.float32)
    nz = q[q > 0]
    top = max(float(np.percentile(nz, 99.9)) if nz.size else 1.0, 1.0)
    shown = 255 - np.clip(q * (255.0 / top), 0, 255).astype(np.uint8)
    gap = 8
    n, h, w = shown.shape
    canvas = np.full((h, n * w + (n - 1) * gap), 128, dtype=np.uint8)
    for i in range(n):
        canvas[:, i * (w + gap) : i * (w + gap) + w] = shown[i]
    path = Path(path)
    Image.fromarray(canvas, mode="L").save(path)
    return path


def condition_files(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    config: ConditioningConfig = ConditioningConfig(),
    *,
    png: bool = False,
    shard_size: int = 64,
    beam_center_px: tuple[float, float] | None = None,
    on_result: Callable[[FrameResult], None] | None = None,
    flush_every_frames: int = FLUSH_EVERY_FRAMES,
    flush_every_s: float = FLUSH_EVERY_S,
    stop: threading.Event | None = None,
) -> ConditionReport:
    """Condition every frame of ``paths`` into shards ``out_dir/conditioned_NNNNN.h5``.

    Parameters
    ----------
    paths : sequence of path
        Image files (any format :func:`~xrais.conditioning.read_image` reads).
    out_dir : path
        Output folder (created). Frames already in its shards are skipped.
    config : ConditioningConfig
        Block (None: each detector's own) and number of quadrants.
    png : bool
        Also write ``out_dir/png/<file>_f<frame>.png`` per frame.
    shard_size : int
        Frames per shard.
    beam_center_px : (float, float), optional
        (fast, slow) beam centre in pixels for every frame, replacing the headers' (for formats
        without one, or headers known to be wrong).
    on_result : callable, optional
        Called with each :class:`FrameResult` as it completes (progress display).
    flush_every_frames, flush_every_s : int, float
        Put the finished frames on disk after this many frames or seconds, whichever comes first.
    stop : threading.Event, optional
        When set (by a signal handler, see :func:`xrais.runs.stop_on_signals`), the run ends
        after the frame in hand; ``report.stopped`` is then True and every finished frame is
        on disk.

    Returns
    -------
    ConditionReport

    Raises
    ------
    ConfigError
        If ``out_dir`` cannot be a folder, or the flush interval is not positive.
    """
    out = check_out_dir(out_dir, "out_dir")
    schedule = FlushSchedule(flush_every_frames, flush_every_s)
    if png:
        (out / "png").mkdir(exist_ok=True)
    done = _done_frames(out)
    report = ConditionReport()
    writer = ShardWriter(out, SHARD_PREFIX, shard_size=shard_size * config.quadrants,
                         attrs={"config": config.model_dump(mode="json")})
    try:
        for raw in paths:
            if stop is not None and stop.is_set():
                break
            path = Path(raw)
            for item in _frames(path, stop):
                if isinstance(item, FrameResult):
                    result = item
                elif (str(path.resolve()), item.frame) in done:
                    result = FrameResult(path=path, frame=item.frame, detector=item.detector.name,
                                         shape=item.shape, skipped=True)
                else:
                    if beam_center_px is not None:
                        item = replace(item, beam_center_px=beam_center_px)
                    result = _condition_one(item, path, config, writer, out if png else None)
                    if result.ok and schedule.add():
                        writer.flush()
                report.results.append(result)
                if on_result is not None:
                    on_result(result)
    finally:
        writer.close()
        report.shards = writer.written
    report.stopped = stop is not None and stop.is_set()
    return report


def _condition_one(image: DiffractionImage, path: Path, config: ConditioningConfig,
                   writer: ShardWriter, png_dir: Path | None) -> FrameResult:
    t0 = time.perf_counter()
    result = FrameResult(path=path, frame=image.frame, detector=image.detector.name, shape=image.shape,
                         beam_center_px=image.beam_center_px)
    try:
        block = resolve_block(image, config.block)
        quads = condition(image, block=block, quadrants=config.quadrants)
    except XraisError as exc:
        result.error = str(exc)
        return result
    except (ValueError, ArithmeticError, IndexError) as exc:  # pixels or geometry no check foresaw
        result.error = _unexpected(path, exc)
        return result
    result.block = block
    result.seconds = time.perf_counter() - t0
    result.max_value = int(quads.max())
    result.nonzero_fraction = float(np.count_nonzero(quads) / quads.size)
    q = config.quadrants
    pixel_mm = float(image.detector.pixel_size_mm[0])
    # formats without geometry in their header get placeholders from the reader: store NaN
    known = bool(image.header.get("geometry_from_header", True))
    distance_mm = float(image.detector.distance_mm) if known else float("nan")
    wavelength_A = image.beam.wavelength_A if known else float("nan")
    writer.add(quads, {
        "source/path": [str(path.resolve())] * q,
        "source/frame": [image.frame] * q,
        "source/quadrant": list(range(q)),
        "geometry/distance_mm": [distance_mm] * q,
        "geometry/wavelength_A": [wavelength_A] * q,
        "geometry/pixel_mm": [pixel_mm] * q,
        "geometry/downsample": [block] * q,
        "geometry/beam_center_fast_px": [image.beam_center_px[0]] * q,
        "geometry/beam_center_slow_px": [image.beam_center_px[1]] * q,
    })
    if png_dir is not None:
        write_quadrant_png(quads, png_dir / "png" / f"{path.name}_f{image.frame:05d}.png")
    return result


def expand_paths(items: Iterable[str | Path]) -> list[Path]:
    """Files named directly, plus the files inside named folders (sorted)."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        out.extend(sorted(q for q in p.iterdir() if q.is_file()) if p.is_dir() else [p])
    return out
