"""The shoebox pipeline: images → integrated reflections → online variational merge, under MPI.

``mpirun -n R xrais pipeline --config C --out DIR`` (or ``xrais pipeline`` on one process):
rank 0 is the scaler; ranks 1 … R − 1 ask it for image numbers one at a time, make each image's
integrated reflections with a per-image *source* and send them back. The scaler takes a
gradient step for every ``images_per_step`` training images as they arrive, and at every
checkpoint (each ``checkpoint_every_images`` images) it writes the observations it received
(``observations/chunk_NNNNNN.npz``), its state (``checkpoint.pt``), the merged MTZ
(``merged.mtz``) and the statistics (``statistics.csv``). When every image is in, it runs
epochs over all stored observations until the loss settles (a checkpoint after each), then
writes the final files. A killed run started again with the same config and folder goes on
from its last checkpoint: images already stored are not made again. With one process the same
loop makes the images itself.

Sources (``source`` in the config):

* ``"reflections"`` — :class:`~xrais.infer.reflections.ReflectionSimulator`: integrated
  reflections of simulated stills of a structure (known F, scales and noise);
* ``"shoeboxes"`` — the shoebox simulator (:func:`xrais.simulate.shoeboxes.simulate_shoeboxes`)
  integrated by a trained variational integrator (:func:`xrais.train.integrate.integrate_shoeboxes`);
* ``"module:function"`` — any importable callable ``f(image) -> DataFrame`` of H, K, L (as
  observed), I, SIGI and metadata columns, with ``cell``, ``space_group``, ``n_images`` and
  ``d_min_A`` given in the ``custom`` section.

Files in DIR: pipeline.json (config and progress), checkpoint.pt, observations/, merged.mtz,
statistics.csv, history.csv, and ``.xrais.lock`` while a run holds the folder.

Checkpoints are transparent: the images waiting for their gradient step are recorded, not
stepped early, so a run stopped (SIGTERM, SIGINT: after the current image or epoch) or killed
and started again gives the same merged MTZ as a run never stopped. ``checkpoint.pt`` holds
only tensors, numbers, strings, lists and dicts and is read with ``torch.load(weights_only=True)``;
the observation chunks are read with ``np.load(allow_pickle=False)``: no file in DIR can run code.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gemmi
import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from xrais._version import __version__
from xrais.config_files import read_config_file
from xrais.errors import CheckpointError, ConfigError, DatasetError
from xrais.infer.merge import (
    MergeConfig,
    Observations,
    OnlineMerger,
    compute_merge_statistics,
    fit_half_datasets,
    make_merged_dataset,
    prepare_observations,
    split_images,
    train_epochs,
    write_merged_mtz,
    write_statistics_csv,
)
from xrais.infer.reflections import ReflectionSimulationConfig, ReflectionSimulator, frame_to_table
from xrais.models.checkpoint import load_torch_state, save_torch_state
from xrais.models.variational.wilson import UniqueReflections, make_space_group
from xrais.runs import FlushSchedule, RunLock, check_out_dir_collectively

__all__ = ["PipelineConfig", "CustomSourceConfig", "ImageSource", "make_image_source", "run_pipeline",
           "load_pipeline_config"]

log = logging.getLogger(__name__)

_TAG_WORK = 11
_TAG_RESULT = 12


class CustomSourceConfig(BaseModel):
    """What the scaler must know about a custom per-image source."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cell: tuple[float, float, float, float, float, float] = Field(description="unit cell, Å and degrees")
    space_group: str = Field(description="space group symbol or number")
    n_images: int = Field(ge=1, description="number of images")
    d_min_A: float = Field(gt=0, description="high-resolution limit")
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the callable's factory")


class PipelineConfig(BaseModel):
    """A whole pipeline run: the per-image source, the merge and the checkpoint cadence."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field("reflections", description="'reflections', 'shoeboxes' or 'module:function'")
    reflections: ReflectionSimulationConfig | None = Field(None, description="source 'reflections'")
    experiment: dict[str, Any] | None = Field(None, description="source 'shoeboxes': ShoeboxExperiment fields")
    integrator: str | None = Field(None, description="source 'shoeboxes': trained integrator checkpoint")
    seed: int = Field(0, ge=0, description="source 'shoeboxes': simulation seed")
    custom: CustomSourceConfig | None = Field(None, description="source 'module:function'")
    merge: MergeConfig = Field(default_factory=MergeConfig, description="the scaler and its schedule")
    checkpoint_every_images: int = Field(100, ge=1, description="images between checkpoints")
    checkpoint_every_s: float | None = Field(None, gt=0, description="also checkpoint when this many seconds "
                                                                     "have passed since the last one")
    statistics_at_checkpoints: bool = Field(True, description="write merged MTZ and statistics at each checkpoint")


def load_pipeline_config(path: str | Path) -> PipelineConfig:
    """Read a pipeline config from TOML or JSON.

    Raises
    ------
    ConfigError
        Naming the file and the first bad key.
    """
    p = Path(path)
    values = read_config_file(p, "pipeline config")
    try:
        return PipelineConfig.model_validate(values)
    except ValidationError as exc:
        from xrais.config_files import config_error

        raise config_error(exc, PipelineConfig, p.name) from None


# --- per-image sources --------------------------------------------------------------------------

@dataclass
class ImageSource:
    """A per-image callable and what the scaler must know about its data."""

    make_image: Callable[[int], pd.DataFrame]
    cell: Any
    space_group: Any
    n_images: int
    d_min_A: float


def make_image_source(config: PipelineConfig) -> ImageSource:
    """Build the configured source (on every rank).

    Raises
    ------
    ConfigError
        A source without its section, or a callable that cannot be imported.
    """
    if config.source == "reflections":
        if config.reflections is None:
            raise ConfigError("pipeline source 'reflections' needs a [reflections] section")
        sim = ReflectionSimulator(config.reflections)
        return ImageSource(sim.image, sim.cell, sim.space_group, config.reflections.n_images, config.reflections.d_min_A)
    if config.source == "shoeboxes":
        return _shoebox_source(config)
    if ":" in config.source:
        if config.custom is None:
            raise ConfigError(f"pipeline source {config.source!r} needs a [custom] section (cell, space_group, …)")
        module_name, _, attr = config.source.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"pipeline source {config.source!r}: cannot import ({exc})") from None
        make = fn(**config.custom.options) if config.custom.options else fn
        c = config.custom
        return ImageSource(make, c.cell, c.space_group, c.n_images, c.d_min_A)
    raise ConfigError(f"pipeline source {config.source!r}: expected 'reflections', 'shoeboxes' or 'module:function'")


def _shoebox_source(config: PipelineConfig) -> ImageSource:
    """Simulate an image's shoeboxes and integrate them with the trained variational integrator."""
    from xrais.models.variational.integrator import load_integrator
    from xrais.simulate.shoebox_io import build_experiment, crystal_scale_of, load_experiment
    from xrais.simulate.shoeboxes import simulate_shoeboxes
    from xrais.train.integrate import integrate_shoeboxes

    if config.integrator is None:
        raise ConfigError("pipeline source 'shoeboxes' needs 'integrator' (a trained integrator checkpoint)")
    experiment = load_experiment(None, **(config.experiment or {}))
    crystal, beam, detector = build_experiment(experiment, config.seed)
    shoebox_config = experiment.shoeboxes.model_copy(update={"crystal_scale": crystal_scale_of(experiment, crystal)})
    model = load_integrator(config.integrator)

    def make_image(index: int) -> pd.DataFrame:
        sb = simulate_shoeboxes(crystal, beam, detector, shoebox_config, seed=config.seed, images=[index])
        table, _ = integrate_shoeboxes(model, sb, device="auto")
        keep = [c for c in table.columns if c not in ("DHKL",)]
        return table[keep].reset_index(drop=True)

    cell = crystal.cell if hasattr(crystal, "cell") else experiment.cell
    space_group = getattr(crystal, "space_group", experiment.space_group)
    return ImageSource(make_image, tuple(cell), space_group, shoebox_config.n_images, shoebox_config.d_min_A)


def _image_observations(source: ImageSource, unique: UniqueReflections, metadata_columns: tuple[str, ...],
                        index: int) -> dict[str, np.ndarray]:
    """Make one image and map it onto the unique list: arrays for the store (refl_id, I, σ, metadata, F_TRUE)."""
    frame = source.make_image(index)
    if len(frame) == 0:
        return _empty_payload(len(metadata_columns))
    frame = frame.copy()
    frame["BATCH"] = index + 1
    table = frame_to_table(frame, unique.cell, unique.space_group)
    table["IMAGE"] = index
    obs = prepare_observations(table, unique, metadata_columns)
    keep = unique.lookup(table[["H", "K", "L"]].to_numpy(np.int32),
                         np.where(table["M/ISYM"].to_numpy() % 2 == 1, 1, -1)) >= 0
    f_true = table["F_TRUE"].to_numpy(np.float64)[keep] if "F_TRUE" in table else np.full(len(obs), np.nan)
    return {"refl_id": obs.refl_id, "image": obs.image, "intensity": obs.intensity, "sigma": obs.sigma,
            "metadata": obs.metadata, "f_true": f_true}


def _empty_payload(m: int) -> dict[str, np.ndarray]:
    return {"refl_id": np.zeros(0, np.int64), "image": np.zeros(0, np.int64), "intensity": np.zeros(0),
            "sigma": np.zeros(0), "metadata": np.zeros((0, m)), "f_true": np.zeros(0)}


def _as_observations(payloads: list[dict[str, np.ndarray]]) -> Observations:
    return Observations(*(np.concatenate([p[k] for p in payloads]) for k in
                          ("refl_id", "image", "intensity", "sigma", "metadata")))


# --- the scaler rank ----------------------------------------------------------------------------

def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text)
    os.replace(tmp, path)


class _Scaler:
    """Rank 0: receives images, trains online, checkpoints and writes the outputs."""

    def __init__(self, config: PipelineConfig, out: Path, source: ImageSource, unique: UniqueReflections) -> None:
        self.config, self.out, self.source, self.unique = config, out, source, unique
        self.merge = config.merge
        self.store = out / "observations"
        self.store.mkdir(parents=True, exist_ok=True)
        self.train_images, self.test_images = split_images(np.arange(source.n_images), self.merge.test_fraction,
                                                           self.merge.seed)
        self.is_train = np.zeros(source.n_images, dtype=bool)
        self.is_train[self.train_images] = True
        self.merger = OnlineMerger(unique, self.merge, len(self.merge.metadata_columns))
        self.chunks: list[str] = []
        self.done: set[int] = set()
        self.errors: dict[int, str] = {}
        self.phase = "stream"
        self.stream_history: list[dict[str, float]] = []
        self.refine_history: list[dict[str, float]] = []
        self.unflushed: list[dict[str, np.ndarray]] = []
        self.unflushed_images: list[int] = []
        self.warmup: list[dict[str, np.ndarray]] = []
        self.queue: list[dict[str, np.ndarray]] = []
        self.losses: list[float] = []
        self.flush = FlushSchedule(config.checkpoint_every_images, config.checkpoint_every_s or float("inf"))
        self.t0 = time.perf_counter()
        self.seconds_before = 0.0
        self.resumed_images = 0

    # state ----------------------------------------------------------------------------------------
    def resume(self) -> None:
        """Go on from ``checkpoint.pt`` when the folder holds one.

        Raises
        ------
        CheckpointError
            The file is not a pipeline checkpoint of this run (unreadable, foreign objects,
            missing fields, or naming observation chunks that are not there).
        """
        path = self.out / "checkpoint.pt"
        if not path.exists():
            return
        state = load_torch_state(path, "a pipeline checkpoint")
        _check_state(state, path, self.source.n_images, self.store)
        self.chunks = list(state["chunks"])
        self.done = set(int(i) for i in state["done"])
        self.phase = state["phase"]
        self.stream_history = list(state["stream_history"])
        self.refine_history = list(state["refine_history"])
        self.seconds_before = float(state.get("seconds", 0.0))
        self.errors = {int(i): str(e) for i, e in state.get("errors", [])}
        try:
            self.merger.load_state_dict(state["merger"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: the scaler state does not fit this run's reflections "
                                  f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        waiting = [int(i) for i in state.get("queue", [])]
        if not self.merger.ready or waiting:
            by_image = {int(p["image"][0]): p for name in self.chunks for p in _split_by_image(self._load_chunk(name))}
            if not self.merger.ready:
                self.warmup = [by_image[i] for i in by_image if self.is_train[i]]
            self.queue = [by_image[i] for i in waiting if i in by_image]
        for stale in self.store.glob("chunk_*.npz"):
            if stale.name not in self.chunks:
                stale.unlink()
        self.resumed_images = len(self.done)
        log.info("resuming %s: %d images done, phase %s", self.out, len(self.done), self.phase)

    def _load_chunk(self, name: str) -> dict[str, np.ndarray]:
        path = self.store / name
        try:
            with np.load(path, allow_pickle=False) as z:
                chunk = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError) as exc:
            raise DatasetError(f"{path}: expected an observation chunk of plain arrays, could not read it "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        missing = [k for k in _PAYLOAD_KEYS if k not in chunk]
        if missing:
            raise DatasetError(f"{path}: observation chunk without {', '.join(missing)}")
        return chunk

    def checkpoint(self, *, outputs: bool) -> None:
        """Store new observations and save the state (the step queue too); optionally write outputs."""
        if self.unflushed:
            name = f"chunk_{len(self.chunks):06d}.npz"
            joined = {k: np.concatenate([p[k] for p in self.unflushed]) for k in self.unflushed[0]}
            tmp = self.store / (name + ".part.npz")
            np.savez(tmp, **joined)
            os.replace(tmp, self.store / name)
            self.chunks.append(name)
        self.done.update(self.unflushed_images)
        self.unflushed, self.unflushed_images = [], []
        if self.phase == "stream" and self.losses:
            self.stream_history.append({"phase": "stream", "images": len(self.done), "steps": self._steps(),
                                        "loss": float(np.mean(self.losses)), "seconds": self._seconds()})
            self.losses = []
        state = {"format": STATE_FORMAT, "merger": self.merger.state_dict(), "chunks": self.chunks,
                 "done": sorted(self.done), "queue": [int(p["image"][0]) for p in self.queue],
                 "phase": self.phase, "stream_history": self.stream_history,
                 "refine_history": self.refine_history, "seconds": self._seconds(),
                 "errors": [[int(i), str(e)] for i, e in sorted(self.errors.items())],
                 "config": json.dumps(self.config.model_dump(mode="json")), "xrais_version": __version__}
        save_torch_state(state, self.out / "checkpoint.pt")
        self._write_status()
        if outputs and self.merger.ready:
            self.write_outputs(halves=self.config.statistics_at_checkpoints)
        self.flush.flushed()

    def _steps(self) -> int:
        return self.merger.trainer.steps if self.merger.trainer else 0

    def _seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.t0

    def _write_status(self) -> None:
        status = {"xrais_version": __version__, "phase": self.phase, "images_done": len(self.done),
                  "n_images": self.source.n_images, "steps": self._steps(), "seconds": round(self._seconds(), 3),
                  "resumed_from_images": self.resumed_images,
                  "errors": [{"image": i, "error": e} for i, e in sorted(self.errors.items())],
                  "config": self.config.model_dump(mode="json")}
        _atomic_write_text(self.out / "pipeline.json", json.dumps(status, indent=1))

    # data -----------------------------------------------------------------------------------------
    def receive(self, index: int, payload: dict[str, np.ndarray]) -> None:
        """Take one image's observations: store them and train on them."""
        self.unflushed.append(payload)
        self.unflushed_images.append(index)
        self.errors.pop(index, None)            # an image that failed in an earlier run and now worked
        if self.is_train[index] and len(payload["refl_id"]):
            if self.merger.ready:
                self.queue.append(payload)
            else:
                self.warmup.append(payload)
                if len(self.warmup) >= self.merge.warmup_images:
                    self._initialize()
        per_step = self.merge.scaler.images_per_step
        while len(self.queue) >= per_step:
            self._step(self.queue[:per_step])
            self.queue = self.queue[per_step:]
        if self.flush.add():
            self.checkpoint(outputs=True)

    def _initialize(self) -> None:
        self.merger.initialize(_as_observations(self.warmup))
        self.queue.extend(self.warmup)
        self.warmup = []

    def _step(self, payloads: list[dict[str, np.ndarray]]) -> None:
        obs = _as_observations(payloads)
        self.losses.append(self.merger.step(obs, obs.images)["loss"])

    def _drain_queue(self) -> None:
        if self.queue and self.merger.ready:
            self._step(self.queue)
        self.queue = []

    def all_observations(self) -> tuple[Observations, np.ndarray]:
        payloads = [self._load_chunk(n) for n in self.chunks]
        payloads = [p for p in payloads if len(p["refl_id"])]
        if not payloads:
            raise DatasetError(f"{self.out}: no observation was received from any image")
        obs = _as_observations(payloads)
        f_true = np.concatenate([p["f_true"] for p in payloads])
        order = np.argsort(np.concatenate([p["image"] for p in payloads]), kind="stable")
        return obs, f_true[order]

    def truth(self, obs: Observations, f_true: np.ndarray) -> np.ndarray | None:
        ok = np.isfinite(f_true)
        if not ok.any():
            return None
        total = np.bincount(obs.refl_id[ok], weights=f_true[ok] ** 2, minlength=len(self.unique))
        count = np.bincount(obs.refl_id[ok], minlength=len(self.unique))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, np.sqrt(total / count), np.nan)

    # phases ---------------------------------------------------------------------------------------
    def refine(self, stop: threading.Event | None = None) -> bool:
        """Epochs over every stored observation until the loss settles (checkpoint after each).

        Returns False when ``stop`` was set (after the current epoch and its checkpoint), True
        once the final files are written.
        """
        self._drain_queue()
        self.phase = "refine"
        obs, f_true = self.all_observations()
        train = obs.subset(self.train_images)
        if not self.merger.ready:
            self.merger.initialize(train)
        truth = self.truth(obs, f_true)

        def after_epoch(record: dict[str, float]) -> None:
            self.refine_history.append({"phase": "refine", **record})
            self.checkpoint(outputs=False)

        history = [{k: v for k, v in r.items() if k != "phase"} for r in self.refine_history]
        train_epochs(self.merger, train, self.merge, history=history, truth_F=truth, progress=after_epoch,
                     stop=stop)
        if stop is not None and stop.is_set():
            self.checkpoint(outputs=False)
            return False
        self.write_outputs(halves=True)
        self.phase = "done"                 # only once the final files are written
        self.checkpoint(outputs=False)
        return True

    def output_files(self) -> list[Path]:
        """The output files that exist now."""
        names = ("merged.mtz", "statistics.csv", "history.csv", "pipeline.json")
        return [self.out / n for n in names if (self.out / n).is_file()]

    def write_outputs(self, *, halves: bool) -> None:
        obs, f_true = self.all_observations()
        present = np.isin(self.train_images, obs.images)
        train_images = self.train_images[present]
        test_images = self.test_images[np.isin(self.test_images, obs.images)]
        train = obs.subset(train_images)
        half = fit_half_datasets(self.merger, train, steps=self.merge.half_dataset_steps, seed=self.merge.seed) \
            if halves and self.merge.half_dataset_steps > 0 and len(train_images) >= 2 else None
        stats = compute_merge_statistics(self.merger, obs, train_images, test_images, halves=half,
                                         truth_F=self.truth(obs, f_true))
        stats.insert(0, "images", len(self.done))
        merged = make_merged_dataset(self.unique, self.merger.moments(),
                                     np.bincount(train.refl_id, minlength=len(self.unique)))
        write_merged_mtz(merged, self.out / "merged.mtz",
                         history=[f"pipeline {self.phase}: {len(self.done)} images, {self._steps()} steps"])
        write_statistics_csv(stats, self.out / "statistics.csv")
        history = pd.DataFrame(self.stream_history + self.refine_history)
        write_statistics_csv(history, self.out / "history.csv")


STATE_FORMAT = "xrais-pipeline-1"
_PAYLOAD_KEYS = ("refl_id", "image", "intensity", "sigma", "metadata", "f_true")
_CHUNK_NAME = re.compile(r"chunk_\d{6}\.npz")


def _split_by_image(p: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """One payload per image, in the order the images first appear."""
    if len(p["image"]) == 0:
        return []
    _, first = np.unique(p["image"], return_index=True)
    out = []
    for image in p["image"][np.sort(first)]:
        keep = p["image"] == image
        out.append({k: v[keep] for k, v in p.items()})
    return out


def _check_state(state: Any, path: Path, n_images: int, store: Path) -> None:
    """Refuse a checkpoint that is not a pipeline state of this run, with one line."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a pipeline checkpoint (a dict), found {type(state).__name__}")
    kinds = {"merger": dict, "chunks": list, "done": list, "phase": str, "stream_history": list,
             "refine_history": list}
    for key, kind in kinds.items():
        if not isinstance(state.get(key), kind):
            raise CheckpointError(f"{path}: pipeline checkpoint without a valid {key!r} "
                                  f"(expected {kind.__name__}, found {type(state.get(key)).__name__})")
    if state["phase"] not in ("stream", "refine", "done"):
        raise CheckpointError(f"{path}: unknown phase {state['phase']!r} (expected stream, refine or done)")
    bad = [c for c in state["chunks"] if not isinstance(c, str) or not _CHUNK_NAME.fullmatch(c)]
    if bad:
        raise CheckpointError(f"{path}: observation chunk names must look like chunk_000000.npz, found {bad[0]!r}")
    missing = [c for c in state["chunks"] if not (store / c).is_file()]
    if missing:
        raise CheckpointError(f"{path}: names {len(missing)} observation chunk(s) that are gone "
                              f"(first {store / missing[0]}); start again with a new --out")
    errors = state.get("errors", [])
    if not isinstance(errors, list) or not all(isinstance(e, list) and len(e) == 2 and isinstance(e[0], int)
                                               and isinstance(e[1], str) for e in errors):
        raise CheckpointError(f"{path}: pipeline checkpoint with invalid 'errors' (expected [image, message] pairs)")
    queue = state.get("queue", [])
    if not isinstance(queue, list):
        raise CheckpointError(f"{path}: pipeline checkpoint with invalid 'queue' (expected a list of images)")
    images = [*state["done"], *queue, *(e[0] for e in errors)]
    if not all(isinstance(i, int) and 0 <= i < n_images for i in images):
        raise CheckpointError(f"{path}: image numbers outside 0…{n_images - 1}; not a checkpoint of this run")
    if state["phase"] != "stream" and not state["done"]:
        raise CheckpointError(f"{path}: phase {state['phase']!r} with no image done; start again with a new --out")


def _check_out_dir(out: Path, config: PipelineConfig) -> None:
    status = out / "pipeline.json"
    if status.exists():
        try:
            previous = json.loads(status.read_text()).get("config")
        except ValueError:
            previous = None
        if previous is not None and previous != config.model_dump(mode="json"):
            raise ConfigError(f"{out}: holds a pipeline run with a different config; "
                              "resume with the same config or use a new --out folder")


def run_pipeline(config: PipelineConfig, out_dir: str | Path, *, comm: Any = None,
                 stop: threading.Event | None = None) -> dict[str, Any]:
    """Run (or resume) the pipeline; every rank of ``comm`` calls this.

    The output folder is checked and locked first (one run per folder, see :mod:`xrais.runs`).
    When ``stop`` is set (by a signal handler, say), rank 0 hands out no more images, takes
    the ones in progress, checkpoints and returns with ``stopped`` true; in the refine phase it
    stops after the current epoch. Started again, the run goes on from there.

    Returns
    -------
    dict — on rank 0: ``out``, ``images``, ``steps``, ``seconds``, ``resumed_from_images``, ``errors``,
    ``phase``, ``stopped``, ``files`` (the output files that exist) and the overall statistics row
    (when statistics exist); on other ranks: ``rank`` and ``images`` (how many it made).

    Raises
    ------
    ConfigError
        An unusable ``out_dir``, or one that holds a run of another config.
    RunLockedError
        Another live run holds ``out_dir``.
    CheckpointError, DatasetError
        A checkpoint that is not this run's, or no image gave any observation.
    """
    out = Path(out_dir)
    rank, size = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    source = make_image_source(config)
    cell = source.cell
    uc = cell if isinstance(cell, gemmi.UnitCell) else gemmi.UnitCell(*[float(v) for v in cell])
    unique = UniqueReflections(uc, make_space_group(source.space_group), source.d_min_A,
                               anomalous=config.merge.anomalous)
    columns = tuple(config.merge.metadata_columns)
    check_out_dir_collectively(out, comm if size > 1 else None)
    with RunLock(out, "xrais pipeline", comm=comm if size > 1 else None):
        if rank != 0:
            return _worker(comm, source, unique, columns)
        try:
            _check_out_dir(out, config)
            return _run_scaler(config, out, source, unique, columns, comm, size, stop)
        except BaseException as exc:
            if size > 1:                        # the workers wait on this rank: take them down too
                log.error("pipeline stopped on rank 0: %s", exc)
                comm.Abort(1)
            raise


def _run_scaler(config: PipelineConfig, out: Path, source: ImageSource, unique: UniqueReflections,
                columns: tuple[str, ...], comm: Any, size: int, stop: threading.Event | None) -> dict[str, Any]:
    scaler = _Scaler(config, out, source, unique)
    scaler.resume()
    pending = [i for i in range(source.n_images) if i not in scaler.done] if scaler.phase == "stream" else []
    pending.reverse()                                   # pop() hands out images in order

    def stopped() -> bool:
        return stop is not None and stop.is_set()

    def make(index: int) -> None:
        try:
            payload = _image_observations(source, unique, columns, index)
        except Exception as exc:  # a bad image is recorded and skipped, never fatal
            log.warning("image %d failed: %s", index, exc)
            scaler.errors[index] = f"{type(exc).__name__}: {exc}"
            return
        scaler.receive(index, payload)

    if size == 1:
        while pending and not stopped():
            make(pending.pop())
    else:
        _serve(comm, scaler, pending, size, stop)
    finished = False
    if scaler.phase == "stream":
        scaler.checkpoint(outputs=False)
        if not stopped():
            if not scaler.done:
                raise DatasetError(f"{out}: none of the {source.n_images} images gave observations "
                                   f"({len(scaler.errors)} failed)" + _first_error(scaler.errors))
            finished = scaler.refine(stop)
    elif scaler.phase == "refine":
        finished = scaler.refine(stop)
    else:                                               # done: the final files must be there
        finished = True
        if not all((out / n).is_file() for n in ("merged.mtz", "statistics.csv")):
            log.warning("%s: the run is done but its merged MTZ or statistics are missing: writing them again", out)
            scaler.write_outputs(halves=True)
    stats = pd.read_csv(out / "statistics.csv") if finished and (out / "statistics.csv").exists() else None
    overall = stats[stats["shell"] == "overall"].iloc[0].to_dict() if stats is not None else {}
    return {"out": out, "images": len(scaler.done), "steps": scaler._steps(), "seconds": scaler._seconds(),
            "resumed_from_images": scaler.resumed_images, "errors": len(scaler.errors), "phase": scaler.phase,
            "stopped": not finished, "files": scaler.output_files(), **overall}


def _first_error(errors: dict[int, str]) -> str:
    if not errors:
        return ""
    index = min(errors)
    return f"; first: image {index}: {errors[index]}"


def _serve(comm: Any, scaler: _Scaler, pending: list[int], size: int, stop: threading.Event | None = None) -> None:
    """Rank 0's loop: hand out images one at a time, take results and train between messages.

    Once ``stop`` is set, workers get no more images; the ones they are making are still taken.
    """
    from mpi4py import MPI

    active = size - 1
    status = MPI.Status()
    while active > 0:
        kind, index, payload = comm.recv(source=MPI.ANY_SOURCE, tag=_TAG_RESULT, status=status)
        if kind == "stopped":
            active -= 1
            continue
        # reply first, so the worker makes its next image while this rank trains
        more = pending and not (stop is not None and stop.is_set())
        comm.send(pending.pop() if more else None, dest=status.Get_source(), tag=_TAG_WORK)
        if kind == "result":
            scaler.receive(index, payload)
        elif kind == "error":
            log.warning("image %d failed on rank %d: %s", index, status.Get_source(), payload)
            scaler.errors[index] = str(payload)


def _worker(comm: Any, source: ImageSource, unique: UniqueReflections, columns: tuple[str, ...]) -> dict[str, Any]:
    made = 0
    comm.send(("ready", -1, None), dest=0, tag=_TAG_RESULT)
    while True:
        index = comm.recv(source=0, tag=_TAG_WORK)
        if index is None:
            comm.send(("stopped", -1, None), dest=0, tag=_TAG_RESULT)
            break
        try:
            payload = _image_observations(source, unique, columns, int(index))
            comm.send(("result", int(index), payload), dest=0, tag=_TAG_RESULT)
            made += 1
        except Exception as exc:  # reported to rank 0 as an error row
            comm.send(("error", int(index), f"{type(exc).__name__}: {exc}"), dest=0, tag=_TAG_RESULT)
    return {"rank": comm.Get_rank(), "images": made}
