"""Shoebox files and runs: the experiment description, the HDF5 schema and the (MPI) dataset runner.

Layout of one shoebox file (``xrais-shoeboxes-1``)::

    shoeboxes/counts        (n, F, H, W) int32, chunks of up to 256 shoeboxes, gzip + shuffle
    shoeboxes/signal        (n, F, H, W) float32 — the reflection's own noiseless photons
    shoeboxes/background    (n, F, H, W) float32 — noiseless background photons
    shoeboxes/mask          (n, F, H, W) uint8 — 1 where measured
    reflections/<column>    one dataset per column (see :data:`~xrais.simulate.shoeboxes.REFLECTION_COLUMNS`)
    attrs: format, xrais_version, created (ISO 8601 UTC), config (JSON), seed, plus the set's own
           provenance (shoebox_config, beam, detector, crystal, scales: JSON)

Files are written whole to a temporary file beside the target and renamed (``os.replace``),
as image shards are (:mod:`xrais.io`), so a killed run never leaves a truncated file.
Under ``mpirun -n R`` rank r simulates the reflections whose centroids lie on its wedge of
images and writes ``shoeboxes_rRRRR.h5``; rank 0 writes ``manifest.json``. A wedge longer than
``flush_every_images`` is made in parts of that many images, each written to
``parts_rRRRR/images_AAAAAA_BBBBBB.h5`` as it is finished and joined into the rank's file at
the end (the shoeboxes of a part do not depend on how the scan is cut, so the joined file is the
one an uncut run writes). A run asked again with the same arguments keeps the complete files
and parts it finds; SIGTERM/SIGINT (a ``stop`` event) ends the run after the current part.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import shutil
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from xrais._version import __version__
from xrais.config_files import claim_run_file, config_error, read_config_file, toml_value
from xrais.errors import ConfigError, DatasetError
from xrais.runs import RunLock, check_out_dir
from xrais.simulate.shoeboxes import SHOEBOX_ARRAYS, ShoeboxConfig, ShoeboxSet

__all__ = ["SHOEBOX_FORMAT", "ShoeboxExperiment", "build_experiment", "crystal_scale_of", "load_experiment",
           "write_shoeboxes",
           "read_shoeboxes", "read_shoebox_files", "simulate_shoebox_dataset", "experiment_to_toml", "RUN_FILE",
           "FLUSH_EVERY_IMAGES"]

SHOEBOX_FORMAT = "xrais-shoeboxes-1"
#: The run description every rank checks before adding to a folder.
RUN_FILE = "shoeboxes.json"
#: Images per part of a rank's wedge: each part reaches disk when it is finished.
FLUSH_EVERY_IMAGES = 16
#: Attributes a :class:`ShoeboxSet` carries from the simulation (kept when parts are joined).
_SET_ATTRS = ("shoebox_config", "seed", "beam", "detector", "crystal", "scales")
_PART = re.compile(r"images_(\d{6})_(\d{6})\.h5$")
_STR_ATTRS_AS_JSON = ("config", "shoebox_config", "beam", "detector", "crystal", "scales", "synthetic")


class ShoeboxExperiment(BaseModel):
    """A whole shoebox simulation: crystal, beam, detector and the shoebox settings.

    The defaults are hen egg-white lysozyme (P 4₃2₁2, 79.1 × 79.1 × 38.4 Å; random-atom |F|
    unless ``structure`` names a PDB/mmCIF file) in a 0.5° rotation series on a PILATUS 6M at
    200 mm, with photons and background chosen so that reflections run from I/σ < 1 to
    several hundred.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    structure: str | None = Field(None, description="PDB/mmCIF file; None: a random-atom structure of the cell")
    cell: tuple[float, float, float, float, float, float] = Field((79.1, 79.1, 38.4, 90.0, 90.0, 90.0),
                                                                  description="cell (Å, degrees) without a structure file")
    space_group: str = Field("P 43 21 2", description="space group without a structure file")
    b_factor_A2: float = Field(20.0, ge=-50, le=500, description="overall B added to |F|²")
    domain_size_um: float = Field(0.03, gt=0, le=10, description="mosaic domain edge (spot size)")
    crystal_size_um: float = Field(8.0, gt=0, le=10000, description="crystal edge: Bragg ∝ (crystal/domain)³")
    mosaic_spread_deg: float = Field(0.05, ge=0, le=10, description="mosaic spread")
    mosaic_domains: int = Field(5, ge=1, le=1000, description="mosaic domains rendered")
    shape: Literal["gauss_2022", "gauss"] = Field("gauss_2022", description="lattice-transform shape")
    detector: str = Field("pilatus6m", description="catalog detector, or 'flat' for one panel of image_size_px")
    image_size_px: tuple[int, int] = Field((512, 512), description="flat detector: (fast, slow) pixels")
    pixel_size_mm: float = Field(0.172, gt=0, le=10, description="flat detector: pixel pitch")
    distance_mm: float = Field(200.0, gt=1, le=10000, description="sample-to-detector distance")
    wavelength_A: float = Field(0.9795, gt=0.1, le=20, description="X-ray wavelength")
    photons_per_image: float = Field(1e11, gt=0, le=1e16, description="photons in the beam per image")
    beam_size_um: float = Field(30.0, gt=0, le=10000, description="full width of the (square) beam")
    polarization_fraction: float = Field(0.999, ge=0, le=1, description="dxtbx polarization fraction")
    shoeboxes: ShoeboxConfig = Field(default_factory=lambda: ShoeboxConfig(background_scale=0.05))

    def to_json(self) -> str:
        """The full description as JSON (stored in every file)."""
        return self.model_dump_json()


def build_experiment(experiment: ShoeboxExperiment, seed: int = 0):
    """The (crystal, beam, detector) of an experiment; the orientation comes from ``seed``.

    Returns
    -------
    (Crystal, Beam, Detector)
    """
    from xrais.geometry import Beam, Detector
    from xrais.simulate.crystal import Crystal
    from xrais.simulate.sampler import random_rotation
    from xrais.simulate.structure_factors import StructureFactors

    d_min = experiment.shoeboxes.d_min_A * 0.98
    if experiment.structure:
        import gemmi

        st = gemmi.read_structure(str(experiment.structure)) if Path(experiment.structure).is_file() else None
        if st is None:
            raise ConfigError(f"structure {experiment.structure}: no such PDB/mmCIF file")
        cell = (st.cell.a, st.cell.b, st.cell.c, st.cell.alpha, st.cell.beta, st.cell.gamma)
        space_group = st.spacegroup_hm
        sf = StructureFactors.from_structure(st, d_min_A=d_min)
    else:
        cell, space_group = experiment.cell, experiment.space_group
        sf = StructureFactors.random_wilson(cell, space_group, d_min_A=d_min, seed=int(seed) % 2**32)
    if experiment.b_factor_A2:
        sf = sf.with_b_factor(experiment.b_factor_A2, cell)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x0121])
    crystal = Crystal.from_domain_size(cell, experiment.domain_size_um, space_group=space_group, structure_factors=sf,
                                       U=random_rotation(rng), shape=experiment.shape,
                                       mosaic_spread_deg=experiment.mosaic_spread_deg,
                                       mosaic_domains=experiment.mosaic_domains if experiment.mosaic_spread_deg > 0 else 1,
                                       mosaic_seed=int(seed) % 2**31 or 1)
    beam = Beam(wavelength_A=experiment.wavelength_A, fluence_photons=experiment.photons_per_image,
                beam_size_um=experiment.beam_size_um, polarization_fraction=experiment.polarization_fraction)
    if experiment.detector == "flat":
        nf, ns = experiment.image_size_px
        detector = Detector.flat(image_size=(nf, ns), pixel_size_mm=experiment.pixel_size_mm,
                                 distance_mm=experiment.distance_mm, beam_center_px=(nf / 2.0, ns / 2.0))
    else:
        detector = Detector.from_catalog(experiment.detector, distance_mm=experiment.distance_mm)
    return crystal, beam, detector


def crystal_scale_of(experiment: ShoeboxExperiment, crystal: Any) -> float:
    """Mosaic domains in the crystal: (crystal edge)³ / (domain volume), the Bragg multiplier."""
    domain_volume = math.prod(crystal.n_cells) * abs(float(np.linalg.det(crystal.real_space_matrix)))
    return (experiment.crystal_size_um * 1e4) ** 3 / domain_volume


def load_experiment(path: str | Path | None = None, **overrides: Any) -> ShoeboxExperiment:
    """An experiment from a TOML/JSON file (any subset of the fields), then ``overrides``.

    Raises
    ------
    ConfigError
        Naming the file and the first bad key or value.
    """
    values: dict[str, Any] = {}
    where = "shoebox experiment"
    if path is not None:
        values = read_config_file(path, "shoebox experiment file")
        where = Path(path).name
    sb = dict(values.pop("shoeboxes", {}) or {})
    sb.update(overrides.pop("shoeboxes", {}) or {})
    values.update(overrides)
    if sb:
        values["shoeboxes"] = {"background_scale": 0.05, **sb}
    try:
        return ShoeboxExperiment(**values)
    except ValidationError as exc:
        raise config_error(exc, ShoeboxExperiment, where) from None


def experiment_to_toml(experiment: ShoeboxExperiment) -> str:
    """The experiment as a TOML file that :func:`load_experiment` reads back."""
    data = experiment.model_dump(mode="json")
    table = data.pop("shoeboxes")
    lines = [f"{k} = {toml_value(v)}" for k, v in data.items() if v is not None]
    lines += ["", "[shoeboxes]"] + [f"{k} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- HDF5
def write_shoeboxes(path: str | Path, shoeboxes: ShoeboxSet, attrs: Mapping[str, Any] | None = None) -> Path:
    """Write a :class:`ShoeboxSet` to one HDF5 file atomically (temporary file, then rename).

    Parameters
    ----------
    path : str or Path
        Destination ``.h5``; replaced if it exists.
    shoeboxes : ShoeboxSet
    attrs : mapping, optional
        Extra file attributes (``config``, ``seed``, …); dicts and lists become JSON.

    Returns
    -------
    Path
    """
    import h5py

    path = Path(path)
    n = len(shoeboxes)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    chunk = (max(1, min(n, 256)), *shoeboxes.shape)
    try:
        with h5py.File(tmp, "w") as f:
            for name in SHOEBOX_ARRAYS:
                data = getattr(shoeboxes, name)
                if name == "mask":
                    data = data.astype(np.uint8)
                f.create_dataset(f"shoeboxes/{name}", data=data, chunks=chunk if n else None,
                                 compression="gzip" if n else None, compression_opts=4 if n else None,
                                 shuffle=bool(n))
            for name, values in shoeboxes.reflections.items():
                f.create_dataset(f"reflections/{name}", data=np.asarray(values))
            f.attrs["format"] = SHOEBOX_FORMAT
            f.attrs["xrais_version"] = __version__
            f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            f.attrs["shoebox_shape"] = np.asarray(shoeboxes.shape, dtype=np.int64)
            for key, value in {**shoeboxes.attrs, **(attrs or {})}.items():
                f.attrs[key] = json.dumps(value) if isinstance(value, (dict, list, tuple)) else value
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_shoeboxes(path: str | Path) -> ShoeboxSet:
    """Read a shoebox file written by :func:`write_shoeboxes`.

    Raises
    ------
    DatasetError
        If the file is missing, unreadable or not an xrais shoebox file.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such shoebox file")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != SHOEBOX_FORMAT:
                raise DatasetError(f"{path.name}: not an xrais shoebox file (format attribute "
                                   f"{f.attrs.get('format')!r}, expected {SHOEBOX_FORMAT!r})")
            arrays = {name: f[f"shoeboxes/{name}"][()] for name in SHOEBOX_ARRAYS}
            cols = {name: f[f"reflections/{name}"][()] for name in f["reflections"]}
            attrs: dict[str, Any] = {}
            for key, value in f.attrs.items():
                value = value.decode() if isinstance(value, bytes) else value
                if key in _STR_ATTRS_AS_JSON and isinstance(value, str):
                    value = json.loads(value)
                attrs[key] = value.tolist() if isinstance(value, np.ndarray) else value
    except OSError as exc:
        raise DatasetError(f"{path.name}: cannot read shoebox file ({exc})") from None
    except KeyError as exc:
        raise DatasetError(f"{path.name}: shoebox file lacks {exc}") from None
    arrays["mask"] = arrays["mask"].astype(bool)
    return ShoeboxSet(arrays["counts"], arrays["signal"], arrays["background"], arrays["mask"], cols, attrs)


def read_shoebox_files(paths: Sequence[str | Path]) -> ShoeboxSet:
    """Read and join several shoebox files (a folder stands for its ``*.h5`` files)."""
    files: list[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(p.glob("*.h5")) if p.is_dir() else [p])
    if not files:
        raise DatasetError(f"{', '.join(map(str, paths))}: no shoebox files")
    sets = [read_shoeboxes(p) for p in files]
    joined = ShoeboxSet.concatenate(sets) if len(sets) > 1 else sets[0]
    joined.attrs["files"] = [str(p) for p in files]
    return joined


# --------------------------------------------------------------------------- runs
def simulate_shoebox_dataset(experiment: ShoeboxExperiment, out_dir: str | Path, *, seed: int = 0,
                             backend: str = "auto", comm: Any = None, stop: threading.Event | None = None,
                             flush_every_images: int = FLUSH_EVERY_IMAGES) -> dict[str, Any]:
    """Simulate an experiment's shoeboxes into ``out_dir`` (this rank's wedge of images).

    Parameters
    ----------
    experiment : ShoeboxExperiment
    out_dir : path
        Output folder (one run at a time); resuming needs the same seed, experiment and ranks.
    seed : int
    backend : {"auto", "numba", "cuda"}
    comm : mpi4py communicator, optional
    stop : threading.Event, optional
        Set (e.g. by :func:`xrais.runs.stop_on_signals`) to stop after the current part.
    flush_every_images : int
        Images per part: finished parts are on disk, a killed run loses at most one part.

    Returns
    -------
    dict
        ``rank``, ``file`` (Path), ``images`` (first, stop), ``reflections`` (int; of the parts
        done when stopped), ``skipped`` (True when the file was already complete), ``parts``
        (parts made now), ``stopped`` (True when a stop request ended the run early), ``seconds``.

    Raises
    ------
    ConfigError
        An unusable ``out_dir``, a backend that cannot run here, a folder holding another set.
    RunLockedError
        Another live run holds ``out_dir``.
    """
    from xrais.simulate.kernel import choose_backend

    if flush_every_images < 1:
        raise ConfigError(f"--flush-every-images {flush_every_images}: expected ≥ 1")
    backend = choose_backend(backend)  # a GPU asked for and missing stops here
    out = check_out_dir(out_dir, "--out")
    with RunLock(out, "xrais simulate --shoeboxes", comm=comm):
        return _simulate_shoebox_share(experiment, out, seed=seed, backend=backend, comm=comm, stop=stop,
                                       part_images=int(flush_every_images))


def _parts_on_disk(folder: Path) -> dict[tuple[int, int], Path]:
    """Finished parts of a wedge: (first image, stop) → file."""
    if not folder.is_dir():
        return {}
    found = {}
    for p in folder.glob("images_*.h5"):
        m = _PART.match(p.name)
        if m:
            found[(int(m.group(1)), int(m.group(2)))] = p
    return found


def _cut_into_parts(images: Sequence[int], part_images: int) -> list[range]:
    """Runs of consecutive images, each cut into ranges of at most ``part_images``."""
    runs: list[range] = []
    start = prev = None
    for i in list(images) + [None]:
        if i is not None and prev is not None and i == prev + 1:
            prev = i
            continue
        if start is not None:
            runs.extend(range(a, min(a + part_images, prev + 1)) for a in range(start, prev + 1, part_images))
        start = prev = i
    return runs


def _simulate_shoebox_share(experiment: ShoeboxExperiment, out: Path, *, seed: int, backend: str, comm: Any,
                            stop: threading.Event | None, part_images: int) -> dict[str, Any]:
    """The body of :func:`simulate_shoebox_dataset` once the folder is held."""
    import time

    from xrais.simulate.shoeboxes import simulate_shoeboxes

    rank, size = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    config = json.loads(experiment.to_json())
    claim_run_file(out / RUN_FILE, {"seed": int(seed), "config": config, "ranks": size, "xrais_version": __version__},
                   ("seed", "config", "ranks"), rank, comm, what="shoeboxes")
    n = experiment.shoeboxes.n_images
    wedge = range(rank * n // size, (rank + 1) * n // size)
    path = out / f"shoeboxes_r{rank:04d}.h5"
    parts_dir = out / f"parts_r{rank:04d}"
    t0 = time.perf_counter()
    report: dict[str, Any] = {"rank": rank, "file": path, "images": (wedge.start, wedge.stop), "skipped": path.exists(),
                              "parts": 0, "stopped": False}
    attrs = {"config": config, "seed": int(seed), "rank": rank, "ranks": size}
    if path.exists():
        report["reflections"] = len(read_shoeboxes(path))
    else:
        crystal, beam, detector = build_experiment(experiment, seed)
        cfg = experiment.shoeboxes.model_copy(update={"crystal_scale": crystal_scale_of(experiment, crystal)})
        if len(wedge) <= part_images and not _parts_on_disk(parts_dir):  # one part: the file itself
            sb = simulate_shoeboxes(crystal, beam, detector, cfg, seed=seed, images=wedge, backend=backend)
            write_shoeboxes(path, sb, {**attrs, "images": [wedge.start, wedge.stop]})
            report["reflections"], report["parts"] = len(sb), 1
        else:
            done = _parts_on_disk(parts_dir)
            covered = {i for a, b in done for i in range(a, b)}
            parts_dir.mkdir(exist_ok=True)
            for part in _cut_into_parts([i for i in wedge if i not in covered], part_images):
                if stop is not None and stop.is_set():
                    report["stopped"] = True
                    break
                sb = simulate_shoeboxes(crystal, beam, detector, cfg, seed=seed, images=part, backend=backend)
                done[(part.start, part.stop)] = write_shoeboxes(
                    parts_dir / f"images_{part.start:06d}_{part.stop:06d}.h5", sb,
                    {**attrs, "images": [part.start, part.stop]})
                report["parts"] += 1
            sets = [read_shoeboxes(done[key]) for key in sorted(done)]
            if report["stopped"]:
                report["reflections"] = sum(len(s) for s in sets)
            else:
                joined = replace(ShoeboxSet.concatenate(sets) if len(sets) > 1 else sets[0],
                                 attrs={k: v for k, v in sets[0].attrs.items() if k in _SET_ATTRS})
                write_shoeboxes(path, joined, {**attrs, "images": [wedge.start, wedge.stop]})
                shutil.rmtree(parts_dir)
                report["reflections"] = len(joined)
    report["seconds"] = time.perf_counter() - t0
    if comm is not None:
        comm.Barrier()
    if rank == 0 and not report["stopped"]:
        entries = []
        for r in range(size):
            p = out / f"shoeboxes_r{r:04d}.h5"
            if p.exists():
                import h5py

                with h5py.File(p, "r") as f:
                    entries.append({"file": p.name, "rows": int(f["shoeboxes/counts"].shape[0])})
        manifest = {"seed": int(seed), "rows": sum(e["rows"] for e in entries), "files": entries,
                    "xrais_version": __version__}
        tmp = out / "manifest.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=1))
        tmp.replace(out / "manifest.json")
    return report
