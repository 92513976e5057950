"""Training on images simulated as the run goes: no shards, and no image is seen twice.

Conventions
-----------
* The *simulated set* of a run is fixed by its simulation config and ``sim_seed``: image ``i``
  is ``make_example(config, sample_image(config, sim_seed, i))`` (:mod:`xrais.simulate`),
  simulated with the CPU (Numba) backend, so it is the same whichever process, DataLoader
  worker or rank makes it, and however many Numba threads it uses.
* Item ``i`` of a :class:`SimulatedDataset` is image ``i`` with all its ``config.quadrants``
  quadrants; :func:`collate_quadrants` puts the quadrants of a batch's images in one row
  each, as shard rows are (so with 4 quadrants a batch of B images is 4·B rows).
* Epoch ``e`` (0-based) trains on images ``[e·N, e·N + ⌊N/B⌋·B)``, N = ``images_per_epoch``,
  B the global batch, in index order, shared between processes as the shard path shares its
  global batches (:func:`~xrais.train.data.share_global_batches`): see
  :class:`SimulatedBatchSampler`.
* An image whose simulation fails (an :class:`~xrais.errors.XraisError`, ``ValueError``,
  ``OSError`` or ``RuntimeError`` of the simulator) is replaced, with a warning, by image
  ``substitute_index(i, k)`` of the same set, k = 0, 1, …: indices above :data:`SUBSTITUTE_BASE`,
  which no epoch reaches, so a substitute is never another item's image.
* Validation images come from seed ``sim_seed + 1`` (indices 0…V−1) and the input statistics
  from the first training images; both are simulated once per process start and kept in
  memory as an :class:`InMemoryDataset`, which reads like a :class:`~xrais.train.data.ShardDataset`.
* Simulating DataLoader workers are forked, or spawned once this process has itself run
  Numba's threads (:func:`worker_start_method`), and run :data:`SIMULATION_BACKEND` with
  :func:`numba_threads_per_worker` threads each.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from xrais.errors import ConfigError, DatasetError, XraisError
from xrais.train.ddp import DistInfo, all_gather_object
from xrais.train.data import (DataTable, ShardDataset, apply_photon_gain, draw_photon_gain, make_row_arrays,
                              share_global_batches)

__all__ = ["SimulatedTrainingData", "SimulatedDataset", "SimulatedBatchSampler", "InMemoryDataset",
           "collate_quadrants", "load_simulation_config", "simulation_training_geometry", "simulate_into_memory", "substitute_index",
           "numba_threads_per_worker", "set_numba_threads", "worker_start_method", "stats_image_count",
           "SUBSTITUTE_BASE", "MAX_SUBSTITUTES", "SIMULATION_BACKEND"]

log = logging.getLogger(__name__)

#: Substitutes of image i are images SUBSTITUTE_BASE + i·MAX_SUBSTITUTES + k of the same set.
SUBSTITUTE_BASE = 2**60
#: Substitutes tried for one image before its item fails.
MAX_SUBSTITUTES = 8
#: Backend the training images are simulated with (in DataLoader workers: the CPU).
SIMULATION_BACKEND = "numba"
#: Exceptions of the simulator that replace an image rather than stop the run (as ``xrais simulate``).
_IMAGE_FAILURES = (XraisError, OSError, RuntimeError, ValueError)


def substitute_index(index: int, attempt: int) -> int:
    """The image that stands in for image ``index`` after ``attempt`` + 1 failures.

    Examples
    --------
    >>> substitute_index(5, 0) - SUBSTITUTE_BASE
    40
    """
    if not 0 <= attempt < MAX_SUBSTITUTES:
        raise ValueError(f"attempt {attempt}: expected 0 ≤ attempt < {MAX_SUBSTITUTES}")
    return SUBSTITUTE_BASE + int(index) * MAX_SUBSTITUTES + attempt


def load_simulation_config(source: str) -> Any:
    """The :class:`~xrais.simulate.config.SimulationConfig` that ``--simulate SOURCE`` names.

    ``source`` is a simulation config file (as ``xrais simulate --config`` reads) or a preset
    name (``resolution``, ``multilattice``); an existing file wins over a preset of its name.

    Raises
    ------
    ConfigError
        A file that does not parse or holds a bad value (the message names the file), or a
        name that is neither a file nor a preset.
    """
    from xrais.simulate.config import PRESETS, load_config

    path = Path(source)
    if path.is_file():
        return load_config(path)
    if source in PRESETS:
        return load_config(preset=source)
    raise ConfigError(f"--simulate {source}: no such simulation config file, and not a preset "
                      f"(one of {', '.join(PRESETS)})")


def numba_threads_per_worker(workers: int, processes_on_node: int = 1) -> int | None:
    """Numba threads for each DataLoader worker that simulates: 1 with several workers.

    With one worker it gets the CPUs of this process's share of the node; with none
    (simulation in the training process) Numba's setting is left alone (``None``).
    """
    if workers <= 0:
        return None
    if workers > 1:
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // max(1, processes_on_node))


def set_numba_threads(threads: int | None) -> None:
    """Let Numba's parallel kernels use ``threads`` threads in this process (None: unchanged)."""
    if threads is None:
        return
    import numba

    numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))


def worker_start_method() -> str | None:
    """How to start DataLoader workers that simulate: ``None`` (fork) or ``"spawn"``.

    Forking is safe, and cheapest, while this process has run no parallel Numba kernel. Once
    it has (e.g. it simulated with ``workers = 0``, or a notebook did), a forked child of the
    GNU OpenMP threading layer is killed at its first parallel kernel, so workers are spawned.
    """
    import numba

    try:
        layer = numba.threading_layer()
    except ValueError:  # no threading layer started in this process yet
        return None
    return None if layer in ("tbb", "workqueue") else "spawn"


def collate_quadrants(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A batch of :class:`SimulatedDataset` items with one row per quadrant (images concatenated)."""
    return {key: torch.cat([item[key] for item in items]) for key in items[0]}


class SimulatedDataset(torch.utils.data.Dataset):
    """Image ``i`` of the simulated set ``(config, seed)`` as training rows, simulated on demand.

    ``dataset[i]`` is a dict of tensors with one row per quadrant (q = ``config.quadrants``):
    ``image`` (q, 1, 512, 512) uint8 in conditioned units, ``geometry`` (q, 3) float32,
    ``target`` (q,) float32, ``heads`` (q, H) float32, ``index`` (q,) int64 (``i``),
    ``source_index`` (q,) int64 (the image simulated: ``i``, or a substitute when ``i`` failed),
    ``quadrant`` (q,) int64 and ``replaced`` (q,) float32 (1 on the first row of a replaced
    image). Targets, geometry and heads come from the image's shard columns through
    :func:`~xrais.train.data.make_row_arrays`, exactly as from a shard. With ``augment`` each
    quadrant gets a photon gain from ``numpy.random.default_rng([augment_seed, i, quadrant])``.

    Parameters
    ----------
    config : SimulationConfig
    seed : int
        Seed of the simulated set.
    task : {"resolution", "multilattice"}
    heads : sequence of str
    source : str
        How messages name the set (the ``--simulate`` argument).
    augment, gain_range, augment_seed
        As :class:`~xrais.train.data.ShardDataset`.
    """

    def __init__(self, config: Any, seed: int, task: str, heads: Sequence[str] = (), *, source: str = "simulation",
                 augment: bool = False, gain_range: tuple[float, float] = (0.5, 2.0), augment_seed: int = 0) -> None:
        from xrais.simulate.sampler import list_structures

        self.config, self.seed, self.task, self.heads = config, int(seed), task, tuple(heads)
        self.source = source
        self.augment, self.gain_range, self.augment_seed = augment, gain_range, augment_seed
        self.structures = list_structures(config.structures_dir)
        self.epoch = 0  # unused: the index alone fixes an item (kept for the loop's interface)

    def __len__(self) -> int:
        return SUBSTITUTE_BASE

    def simulate(self, index: int) -> tuple[int, np.ndarray, dict[str, list[Any]]]:
        """Quadrants and shard columns of image ``index`` or, when it fails, of its first working substitute.

        Returns
        -------
        source_index : int
            The image made (``index`` unless it failed).
        quadrants : ndarray, shape (q, 512, 512), uint8
        columns : dict of lists
            Shard columns, one value per quadrant.

        Raises
        ------
        DatasetError
            The image and all its :data:`MAX_SUBSTITUTES` substitutes failed.
        """
        from xrais.simulate.dataset import make_example
        from xrais.simulate.sampler import sample_image

        candidates = [int(index)] + [substitute_index(index, k) for k in range(MAX_SUBSTITUTES)]
        last = ""
        for candidate in candidates:
            try:
                params = sample_image(self.config, self.seed, candidate, self.structures)
                _, quads, columns = make_example(self.config, params, backend=SIMULATION_BACKEND)
            except _IMAGE_FAILURES as exc:
                last = f"{type(exc).__name__}: {exc}".replace("\n", " ")
                log.warning("%s: simulated image %d (seed %d) skipped (%s); %s", self.source, candidate, self.seed,
                            last, "a substitute takes its place" if candidate != candidates[-1]
                            else "no substitute left")
                continue
            quads = np.asarray(quads)
            if quads.dtype != np.uint8:  # conditioned values are whole numbers 0…255
                quads = np.clip(np.rint(quads), 0, 255).astype(np.uint8)
            return candidate, quads, columns
        raise DatasetError(f"{self.source}: simulated image {index} (seed {self.seed}) and its {MAX_SUBSTITUTES} "
                           f"substitutes failed; last: {last}")

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        source_index, quads, columns = self.simulate(index)
        cols = {k: np.asarray(v) for k, v in columns.items()}
        target, geometry, heads = make_row_arrays(cols, self.task, self.heads,
                                                  where=f"{self.source} (image {source_index}, seed {self.seed})",
                                                  what="the simulated columns")
        q = quads.shape[0]
        quadrant = cols["source/quadrant"].astype(np.int64) if "source/quadrant" in cols else np.arange(q)
        if self.augment:
            quads = quads.copy()
            for k in range(q):
                rng = np.random.default_rng([self.augment_seed, index, int(quadrant[k])])
                quads[k] = apply_photon_gain(quads[k], draw_photon_gain(self.gain_range, rng), rng)
        replaced = np.zeros(q, dtype=np.float32)
        replaced[0] = float(source_index != index)
        return {"image": torch.from_numpy(np.ascontiguousarray(quads))[:, None],
                "geometry": torch.from_numpy(geometry.astype(np.float32)),
                "target": torch.from_numpy(target.astype(np.float32)),
                "heads": torch.from_numpy(heads.astype(np.float32)),
                "index": torch.full((q,), index, dtype=torch.int64),
                "source_index": torch.full((q,), source_index, dtype=torch.int64),
                "quadrant": torch.from_numpy(quadrant), "replaced": torch.from_numpy(replaced)}

    def close(self) -> None:
        """Nothing to close (the loop's interface)."""


class InMemoryDataset(ShardDataset):
    """Rows held in memory (simulated once), read as the rows of a :class:`ShardDataset` are.

    Parameters
    ----------
    images : ndarray, shape (N, 512, 512), uint8
    table : DataTable
        Its ``files`` empty, ``image_id`` the simulated image index of each row.
    """

    def __init__(self, images: np.ndarray, table: DataTable) -> None:
        super().__init__(table)
        self.images = images

    def read_image(self, index: int) -> np.ndarray:
        """Row ``index``, shape (512, 512), uint8."""
        return self.images[int(index)]

    def close(self) -> None:
        """Nothing to close."""

    @classmethod
    def from_batches(cls, batches: Sequence[dict[str, Any]], head_names: Sequence[str]) -> "InMemoryDataset":
        """The rows of :func:`collate_quadrants` batches, in the order given."""
        if not batches:
            table = DataTable(files=[], file_id=np.zeros(0, np.int64), row=np.zeros(0, np.int64),
                              image_id=np.zeros(0, np.int64), quadrant=np.zeros(0, np.int64),
                              target=np.zeros(0, np.float32), geometry=np.zeros((0, 3), np.float32),
                              heads=np.zeros((0, len(head_names)), np.float32), head_names=tuple(head_names))
            return cls(np.zeros((0, 512, 512), np.uint8), table)
        cat = {k: torch.cat([b[k] for b in batches]).numpy() for k in batches[0]}
        n = len(cat["target"])
        table = DataTable(files=[], file_id=np.zeros(n, np.int64), row=np.arange(n, dtype=np.int64),
                          image_id=cat["source_index"].astype(np.int64), quadrant=cat["quadrant"].astype(np.int64),
                          target=cat["target"].astype(np.float32), geometry=cat["geometry"].astype(np.float32),
                          heads=cat["heads"].astype(np.float32), head_names=tuple(head_names))
        return cls(np.ascontiguousarray(cat["image"][:, 0]), table)


def simulate_into_memory(dataset: SimulatedDataset, indices: Sequence[int], *, workers: int = 0,
                         worker_init_fn: Any = None) -> tuple[InMemoryDataset, list[dict[str, Any]]]:
    """Simulate images ``indices`` of ``dataset`` (in ``workers`` DataLoader processes) and keep them.

    Returns
    -------
    InMemoryDataset
        The images' rows in the order of ``indices``.
    batches : list of dict
        The same rows as :func:`collate_quadrants` batches (one per image), e.g. to gather
        between processes.
    """
    indices = [int(i) for i in indices]
    if not indices:
        return InMemoryDataset.from_batches([], dataset.heads), []
    workers = min(workers, len(indices))
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, sampler=indices, collate_fn=collate_quadrants,
                                         num_workers=workers, worker_init_fn=worker_init_fn if workers else None,
                                         multiprocessing_context=worker_start_method() if workers else None)
    batches = list(loader)
    return InMemoryDataset.from_batches(batches, dataset.heads), batches


class SimulatedBatchSampler(Sampler[int]):
    """Image indices of each epoch of a simulated run, in whole global batches, shared between processes.

    Epoch ``e`` (:meth:`set_epoch`) takes images ``[e·N, e·N + n_batches·B)`` with
    ``n_batches = ⌊N / B⌋``, in index order (the images are independent draws, so there is
    nothing to shuffle); process r of W takes positions r, r + W, … of each global batch, as
    :class:`~xrais.train.data.GlobalBatchSampler` does. :attr:`start_batch` skips the epoch's
    first global batches (a state saved within an epoch).

    Parameters
    ----------
    images_per_epoch, batch_size : int
        N and the global batch B (a multiple of ``num_replicas``, at most N).
    num_replicas, rank : int
    """

    def __init__(self, images_per_epoch: int, batch_size: int, *, num_replicas: int = 1, rank: int = 0) -> None:
        if batch_size > images_per_epoch:
            raise ConfigError(f"--images-per-epoch {images_per_epoch}: fewer than one global batch of {batch_size}")
        self.images_per_epoch, self.batch_size = int(images_per_epoch), int(batch_size)
        self.num_replicas, self.rank = num_replicas, rank
        self.n_batches = self.images_per_epoch // self.batch_size
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int) -> None:
        """Take epoch ``epoch`` (0-based) next."""
        self.epoch = int(epoch)

    def epoch_range(self, epoch: int) -> tuple[int, int]:
        """``(start, stop)``: epoch ``epoch`` trains on images ``range(start, stop)``."""
        start = int(epoch) * self.images_per_epoch
        return start, start + self.n_batches * self.batch_size

    def images_seen(self, epochs_done: int, batches: int = 0) -> int:
        """Training images (all processes) after ``epochs_done`` epochs and ``batches`` batches of the next."""
        return (int(epochs_done) * self.n_batches + int(batches)) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        start, stop = self.epoch_range(self.epoch)
        order = share_global_batches(np.arange(start, stop, dtype=np.int64), self.n_batches, self.batch_size,
                                     self.start_batch, self.rank, self.num_replicas)
        return iter(order.tolist())

    def __len__(self) -> int:
        return (self.n_batches - self.start_batch) * self.batch_size // self.num_replicas


def stats_image_count(stats_images: int, quadrants: int, images_per_epoch: int) -> int:
    """Training images simulated for the input statistics: enough for ``stats_images`` rows, within epoch 1."""
    return max(1, min(math.ceil(stats_images / quadrants), images_per_epoch))


def simulation_training_geometry(config: Any) -> dict[str, Any]:
    """The geometry a simulation config covers, as a checkpoint's ``training_geometry`` records it."""
    from xrais.geometry import DETECTOR_CATALOG

    return {"detectors": sorted(config.detector_choices),
            "pixel_mm": sorted({round(float(DETECTOR_CATALOG[d].pixel_size_mm), 6) for d in config.detector_choices}),
            "distance_mm": [float(v) for v in config.distance_mm_range],
            "wavelength_A": [float(config.wavelength_A)] * 2, "untilted": True}


class SimulatedTrainingData:
    """The simulated data of one run, as :class:`~xrais.train.loop.Trainer` uses it.

    Holds the training items (:attr:`dataset`), their order (:attr:`sampler`), and makes the
    validation images (this process's share) and the images of the input statistics (all of
    them, on every process) when first asked.

    Parameters
    ----------
    config : TrainConfig
        With ``simulate`` set.
    info : DistInfo

    Raises
    ------
    ConfigError
        A simulation config that cannot be read, of another task than ``config.task``, or
        ``images_per_epoch`` below one global batch.
    """

    def __init__(self, config: Any, info: DistInfo) -> None:
        self.config, self.info = config, info
        self.sim_config = load_simulation_config(config.simulate)
        if self.sim_config.task != config.task:
            raise ConfigError(f"--simulate {config.simulate}: simulates a {self.sim_config.task} set, the run is "
                              f"--task {config.task} (set task = \"{config.task}\" in the file, or another --task)")
        self.dataset = SimulatedDataset(self.sim_config, config.sim_seed, config.task, config.heads,
                                        source=config.simulate, augment=config.augment, gain_range=config.gain_range,
                                        augment_seed=config.seed)
        self.sampler = SimulatedBatchSampler(config.images_per_epoch, config.batch_size,
                                             num_replicas=info.world_size, rank=info.rank)
        self.val_seed = config.sim_seed + 1
        self.numba_threads = numba_threads_per_worker(config.workers, info.local_world_size)
        self.n_stats = stats_image_count(config.stats_images, self.sim_config.quadrants, config.images_per_epoch)
        self._val: InMemoryDataset | None = None
        self._stats: InMemoryDataset | None = None

    def record(self) -> dict[str, Any]:
        """What the run simulates (saved with its state and checkpoints; a resume must match ``config``)."""
        import json

        return {"source": self.config.simulate, "config": json.loads(self.sim_config.to_json()),
                "seed": self.config.sim_seed, "val_seed": self.val_seed, "backend": SIMULATION_BACKEND,
                "images_per_epoch": self.config.images_per_epoch, "val_images": self.config.sim_val_images,
                "stats_images": [0, self.n_stats]}

    def split(self) -> dict[str, int]:
        """Split sizes as the shard path records them: per epoch for training, in all for validation."""
        q = self.sim_config.quadrants
        per_epoch = self.sampler.n_batches * self.sampler.batch_size
        return {"train_rows": per_epoch * q, "val_rows": self.config.sim_val_images * q,
                "train_images": per_epoch, "val_images": self.config.sim_val_images}

    def val_set(self, worker_init_fn: Any = None) -> InMemoryDataset:
        """This process's validation images (``range(V)[rank::W]`` of seed ``sim_seed + 1``), made once."""
        if self._val is None:
            val = SimulatedDataset(self.sim_config, self.val_seed, self.config.task, self.config.heads,
                                   source=f"{self.config.simulate} (validation)")
            mine = range(self.config.sim_val_images)[self.info.rank::self.info.world_size]
            self._val, _ = simulate_into_memory(val, mine, workers=self.config.workers, worker_init_fn=worker_init_fn)
        return self._val

    def stats_set(self, worker_init_fn: Any = None) -> InMemoryDataset:
        """The first training images (:attr:`n_stats`), the same on every process; each makes its share."""
        if self._stats is None:
            plain = SimulatedDataset(self.sim_config, self.config.sim_seed, self.config.task, self.config.heads,
                                     source=self.config.simulate)
            mine = range(self.n_stats)[self.info.rank::self.info.world_size]
            _, batches = simulate_into_memory(plain, mine, workers=self.config.workers, worker_init_fn=worker_init_fn)
            gathered = [b for part in all_gather_object(batches, self.info) for b in part]
            gathered.sort(key=lambda b: int(b["index"][0]))
            self._stats = InMemoryDataset.from_batches(gathered, self.config.heads)
        return self._stats
