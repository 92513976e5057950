"""``xrais simulate``: a labelled training set written as HDF5 shards, resumable, over MPI ranks.

Image ``i`` is made by rank ``i mod R`` from its own seed (:func:`xrais.simulate.sampler.image_seed`),
conditioned (max-pool, sqrt, quadrants) and written with its labels to the rank's shards
``sim_rRRRR_NNNNN.h5`` (see :mod:`xrais.io`). Finished images reach disk every
``flush_every_images`` images or ``flush_every_s`` seconds (the shard being filled grows, always
whole on disk), so a killed run loses at most those; run again with the same arguments it makes
only the missing images, bit-identical to an uninterrupted run (any number of ranks). SIGTERM and
SIGINT (a ``stop`` event) finish the current image, write what is done and return. The folder
is held by one run at a time (:class:`xrais.runs.RunLock`). Rank 0 writes ``manifest.json`` at
the end. A crystal file that cannot be read is skipped with a warning and recorded in
``failures_rRRRR.tsv``; the run goes on. A set-up error (a bad argument, a backend that cannot
run here, a busy or unusable folder) stops the run before its first image.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from xrais._version import __version__
from xrais.conditioning.transform import condition_pixels
from xrais.config_files import claim_run_file
from xrais.errors import ConfigError, XraisError
from xrais.io import ShardWriter, read_shard
from xrais.runs import FlushSchedule, RunLock, check_out_dir
from xrais.simulate.config import SimulationConfig
from xrais.simulate.image import SimulatedImage, simulate_image
from xrais.simulate.sampler import ImageParameters, list_structures, sample_image

__all__ = ["SimulationReport", "simulate_dataset", "make_example", "write_minicbf", "write_nxmx", "done_indices", "check_disk_space",
           "RUN_FILE", "FLUSH_EVERY_IMAGES", "FLUSH_EVERY_S"]

log = logging.getLogger(__name__)

#: The run description every rank checks before adding to a folder.
RUN_FILE = "simulation.json"
#: Default flush cadence: finished images reach disk at least this often.
FLUSH_EVERY_IMAGES = 4
FLUSH_EVERY_S = 30.0


@dataclass
class SimulationReport:
    """What one rank did."""

    rank: int
    made: list[int] = field(default_factory=list)
    skipped_done: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)
    shards: list[Path] = field(default_factory=list)
    stopped: bool = False
    """True when a stop request ended the run before its share was done"""
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("structure_factors", "render", "background", "detector_effects", "condition", "write"), 0.0))


def done_indices(out_dir: Path) -> set[int]:
    """Image indices already in complete shards of ``out_dir``."""
    done: set[int] = set()
    for shard in sorted(out_dir.glob("sim_r*_*.h5")):
        _, cols, _ = read_shard(shard, images=False)
        done.update(int(v) for v in cols["source/index"])
    return done


def write_minicbf(path: Path, image: SimulatedImage) -> Path:
    """The raw frame as a PILATUS-style miniCBF (fabio) that fabio, DIALS and xrais read."""
    from fabio.cbfimage import CbfImage

    det, beam = image.detector, image.beam
    px = det.pixel_size_mm[0]
    cutoff = int(det.trusted_range[1]) + 1
    text = "\r\n".join([
        f"# Detector: {det.name} (simulated by xrais {__version__}), S/N 0",
        f"# Pixel_size {px * 1e-3:.6g} m x {det.pixel_size_mm[1] * 1e-3:.6g} m",
        f"# Silicon sensor, thickness {det.panels[0].thickness_mm * 1e-3:.6f} m",
        "# Exposure_time 1.0 s",
        f"# Count_cutoff {cutoff} counts",
        f"# Wavelength {beam.wavelength_A:.6f} A",
        f"# Detector_distance {det.distance_mm * 1e-3:.6f} m",
        f"# Beam_xy ({image.beam_center_px[0]:.3f}, {image.beam_center_px[1]:.3f}) pixels",
        f"# Polarization {beam.polarization_fraction:.3f}",
        "",
    ])
    header = {"_array_data.header_convention": "PILATUS_1.2", "_array_data.header_contents": text}
    tmp = path.with_name(f".{path.name}.tmp")
    CbfImage(data=np.asarray(image.raw, dtype=np.int32), header=header).write(str(tmp))
    tmp.replace(path)
    return path


def write_nxmx(path: Path, image: SimulatedImage) -> Path:
    """The raw frame as a single-file NXmx HDF5 (bitshuffle-LZ4 via hdf5plugin) that xrais and DIALS read."""
    import h5py
    import hdf5plugin

    det, beam = image.detector, image.beam
    tmp = path.with_name(f".{path.name}.tmp")
    with h5py.File(tmp, "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry["definition"] = "NXmx"
        data = entry.create_group("data")
        data.attrs["NX_class"] = "NXdata"
        data.create_dataset("data", data=np.asarray(image.raw, dtype=np.int32)[None], chunks=(1, *image.raw.shape),
                            **hdf5plugin.Bitshuffle(nelems=0, cname="lz4"))
        instrument = entry.create_group("instrument")
        instrument.attrs["NX_class"] = "NXinstrument"
        b = instrument.create_group("beam")
        b.attrs["NX_class"] = "NXbeam"
        b.create_dataset("incident_wavelength", data=beam.wavelength_A).attrs["units"] = "angstrom"
        d = instrument.create_group("detector")
        d.attrs["NX_class"] = "NXdetector"
        d["description"] = f"{det.name} (simulated by xrais {__version__})"
        d.create_dataset("detector_distance", data=det.distance_mm * 1e-3).attrs["units"] = "m"
        d.create_dataset("beam_center_x", data=image.beam_center_px[0]).attrs["units"] = "pixel"
        d.create_dataset("beam_center_y", data=image.beam_center_px[1]).attrs["units"] = "pixel"
        d.create_dataset("x_pixel_size", data=det.pixel_size_mm[0] * 1e-3).attrs["units"] = "m"
        d.create_dataset("y_pixel_size", data=det.pixel_size_mm[1] * 1e-3).attrs["units"] = "m"
        d.create_dataset("saturation_value", data=int(det.trusted_range[1]))
        d.create_dataset("pixel_mask", data=det.gap_mask().astype(np.uint32))
    tmp.replace(path)
    return path


def check_disk_space(out: Path, n_images: int, config: SimulationConfig, save_raw: str | None) -> None:
    """Refuse to start when the folder's disk cannot hold the set (a rough upper estimate).

    Raises
    ------
    ConfigError
        Naming the folder, the space needed and the space free.
    """
    import shutil

    per_image = config.quadrants * 512 * 512 * 0.5 + 20_000  # compressed quadrants + label columns, bytes
    if save_raw:
        from xrais.geometry import DETECTOR_CATALOG

        per_image += max(math.prod(DETECTOR_CATALOG[d].image_size) for d in config.detector_choices) * 1.5
    need = per_image * n_images
    free = shutil.disk_usage(out).free
    if need > free:
        raise ConfigError(f"{out}: the set needs about {need / 1e9:.2f} GB and the disk has {free / 1e9:.2f} GB free")


def _columns(image: SimulatedImage, quadrants: int) -> dict[str, list[Any]]:
    cols: dict[str, list[Any]] = {f"labels/{k}": [v] * quadrants for k, v in image.labels.items()}
    det = image.detector
    cols.update({
        "source/index": [image.parameters.index] * quadrants,
        "source/seed": [image.parameters.seed] * quadrants,
        "source/quadrant": list(range(quadrants)),
        "geometry/distance_mm": [det.distance_mm] * quadrants,
        "geometry/wavelength_A": [image.beam.wavelength_A] * quadrants,
        "geometry/pixel_mm": [det.pixel_size_mm[0]] * quadrants,
        "geometry/downsample": [det.downsample_block] * quadrants,
        "geometry/beam_center_fast_px": [image.beam_center_px[0]] * quadrants,
        "geometry/beam_center_slow_px": [image.beam_center_px[1]] * quadrants,
    })
    return cols


def make_example(config: SimulationConfig, params: ImageParameters, *, backend: str = "auto"
                 ) -> tuple[SimulatedImage, np.ndarray, dict[str, list[Any]]]:
    """One training example: the image of ``params`` simulated and conditioned, with its label columns.

    Parameters
    ----------
    config : SimulationConfig
    params : ImageParameters
        From :func:`xrais.simulate.sampler.sample_image` (image ``index`` of a set with ``seed``).
    backend : {"auto", "numba", "cuda"}

    Returns
    -------
    image : SimulatedImage
        Its ``seconds`` include ``condition``.
    quadrants : ndarray of float32, shape (config.quadrants, 512, 512)
        Max-pooled, square-rooted quadrants, beam centre at the corner (gaps masked).
    columns : dict of lists
        The shard columns (``labels/…``, ``source/…``, ``geometry/…``), one value per quadrant.
    """
    image = simulate_image(config, params, backend=backend)
    t0 = time.perf_counter()
    quads = condition_pixels(image.raw, image.beam_center_px, image.detector.downsample_block, config.quadrants,
                             image.raw < 0)
    image.seconds["condition"] = time.perf_counter() - t0
    return image, quads, _columns(image, config.quadrants)


def simulate_dataset(
    config: SimulationConfig,
    n_images: int,
    out_dir: str | Path,
    *,
    seed: int = 0,
    backend: str = "auto",
    comm: Any = None,
    save_raw: str | None = None,
    on_image: Callable[[int, str], None] | None = None,
    stop: threading.Event | None = None,
    flush_every_images: int = FLUSH_EVERY_IMAGES,
    flush_every_s: float = FLUSH_EVERY_S,
) -> SimulationReport:
    """Make images 0 … n_images−1 (this rank's share) into ``out_dir``.

    Parameters
    ----------
    config : SimulationConfig
    n_images : int
        Size of the whole set (all ranks).
    out_dir : path
        Output folder; resuming needs the same seed and configuration.
    seed : int
        Seed of the set.
    backend : {"auto", "numba", "cuda"}
    comm : mpi4py communicator, optional
        Splits the images between ranks; None: this process makes them all.
    save_raw : {"cbf", "nxs"}, optional
        Also write each raw frame to ``out_dir/raw/``.
    on_image : callable, optional
        Called with (index, "ok" | "failed: …") after each image (progress display).
    stop : threading.Event, optional
        Set (e.g. by :func:`xrais.runs.stop_on_signals`) to stop after the current image; what
        is finished is written and ``report.stopped`` is True.
    flush_every_images, flush_every_s : int, float
        Finished images reach disk at least every this many images or seconds.

    Returns
    -------
    SimulationReport

    Raises
    ------
    ConfigError
        Before any image: bad arguments, an unusable ``out_dir``, a backend that cannot run
        here, or a folder that holds a different set.
    RunLockedError
        Another live run holds ``out_dir``.
    """
    from xrais.simulate.kernel import choose_backend

    if n_images < 1:
        raise ConfigError(f"--n-images {n_images}: expected ≥ 1")
    if save_raw not in (None, "cbf", "nxs"):
        raise ConfigError(f"--save-raw {save_raw!r}: expected 'cbf' or 'nxs'")
    schedule = FlushSchedule(flush_every_images, flush_every_s)
    backend = choose_backend(backend)  # a GPU asked for and missing stops here, before any image
    rank, size = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    structures = list_structures(config.structures_dir)
    if config.structures_dir is not None and not structures:
        raise ConfigError(f"structures_dir {config.structures_dir}: no PDB/mmCIF files found")
    out = check_out_dir(out_dir, "--out")
    with RunLock(out, "xrais simulate", comm=comm):
        return _simulate_share(config, n_images, out, seed=seed, backend=backend, comm=comm, save_raw=save_raw,
                               on_image=on_image, stop=stop, schedule=schedule, structures=structures,
                               rank=rank, size=size)


def _simulate_share(config: SimulationConfig, n_images: int, out: Path, *, seed: int, backend: str, comm: Any,
                    save_raw: str | None, on_image: Callable[[int, str], None] | None,
                    stop: threading.Event | None, schedule: FlushSchedule, structures: list[Path],
                    rank: int, size: int) -> SimulationReport:
    """The body of :func:`simulate_dataset` once the folder is held."""
    check_disk_space(out, n_images, config, save_raw)
    description = {"seed": int(seed), "config": json.loads(config.to_json()), "xrais_version": __version__}
    claim_run_file(out / RUN_FILE, description, ("seed", "config"), rank, comm, what="a set")
    done = done_indices(out)
    report = SimulationReport(rank=rank)
    mine = [i for i in range(rank, n_images, size)]
    report.skipped_done = sum(i in done for i in mine)
    if save_raw:
        (out / "raw").mkdir(exist_ok=True)
    attrs = {"config": description["config"], "seed": int(seed), "rank": rank}
    writer = ShardWriter(out, f"sim_r{rank:04d}", shard_size=config.shard_size * config.quadrants, attrs=attrs)
    failures = out / f"failures_r{rank:04d}.tsv"
    try:
        for i in mine:
            if i in done:
                continue
            if stop is not None and stop.is_set():
                report.stopped = True
                break
            params = sample_image(config, seed, i, structures)
            try:
                image, quads, columns = make_example(config, params, backend=backend)
            except (XraisError, OSError, RuntimeError, ValueError) as exc:
                message = f"{type(exc).__name__}: {exc}".replace("\t", " ").replace("\n", " ")
                log.warning("image %d (%s) skipped: %s", i, params.structure, message)
                with failures.open("a") as fh:
                    fh.write(f"{i}\t{params.structure}\t{message}\n")
                report.failed.append((i, message))
                if on_image:
                    on_image(i, f"failed: {message}")
                continue
            t2 = time.perf_counter()
            # the raw frame first: an image counts as done once its rows are in a shard
            if save_raw == "cbf":
                write_minicbf(out / "raw" / f"sim_{i:07d}.cbf", image)
            elif save_raw == "nxs":
                write_nxmx(out / "raw" / f"sim_{i:07d}.nxs", image)
            writer.add(quads, columns)
            if schedule.add():
                writer.flush()
            t3 = time.perf_counter()
            for stage, value in image.seconds.items():
                if stage != "condition":
                    report.seconds[stage] += value
            report.seconds["condition"] += image.seconds.get("condition", 0.0)
            report.seconds["write"] += t3 - t2
            report.made.append(i)
            if on_image:
                on_image(i, "ok")
    finally:
        writer.close()
        report.shards = writer.written
    if comm is not None:
        comm.Barrier()
    if rank == 0 and not report.stopped:
        _write_manifest(out, n_images)
    return report


def _write_manifest(out: Path, n_images: int) -> None:
    shards = sorted(out.glob("sim_r*_*.h5"))
    entries, total = [], 0
    for shard in shards:
        _, cols, _ = read_shard(shard, images=False)
        rows = len(cols["source/index"])
        total += rows
        entries.append({"file": shard.name, "rows": rows})
    manifest = {"n_images_requested": n_images, "rows": total, "shards": entries, "xrais_version": __version__}
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(out / "manifest.json")
