"""Training data: shard discovery and checks, the split by image, the dataset and its samplers.

Conventions
-----------
* Rows are conditioned 512×512 uint8 quadrants (:mod:`xrais.io`); a row's *image* is the
  diffraction image it came from: ``(set folder, source/index)`` for simulated shards,
  ``(source/path, source/frame)`` for conditioned real images. The 1–4 quadrants of an
  image are always on the same side of the train/validation split.
* Targets: resolution learns ``labels/inv_resolution_per_A`` (1/d, Å⁻¹); multi-lattice learns
  ``labels/n_lattices > 1`` (1.0 or 0.0). Extra heads learn ``labels/<head>``.
* Geometry rows are ``(distance_mm, pooled_pixel_mm, wavelength_A)`` with
  ``pooled_pixel_mm = pixel_mm × downsample``, the model's geometry input.
* HDF5 files are opened lazily, per process: a handle opened before a fork is never used by
  the child (DataLoader workers open their own), and a pickled dataset carries no handle.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from xrais.errors import DatasetError

__all__ = ["DataTable", "resolve_data", "scan_shards", "split_by_image", "ShardDataset", "GlobalBatchSampler",
           "apply_photon_gain", "compute_input_stats", "make_row_arrays", "make_item", "draw_photon_gain",
           "share_global_batches", "GEOMETRY_COLUMNS", "QUADRANT_SHAPE"]

QUADRANT_SHAPE = (512, 512)
#: Shard columns behind the geometry input, in the order the model wants them after pooling.
GEOMETRY_COLUMNS = ("geometry/distance_mm", "geometry/pixel_mm", "geometry/downsample", "geometry/wavelength_A")


@dataclass
class DataTable:
    """Every row of a set of shards, without the images.

    Attributes
    ----------
    files : list of Path
        The shards, in order.
    file_id : ndarray, shape (N,), int64
        Shard of each row (index into ``files``).
    row : ndarray, shape (N,), int64
        Row within its shard.
    image_id : ndarray, shape (N,), int64
        Diffraction image of each row (quadrants of one image share it).
    quadrant : ndarray, shape (N,), int64
        ``source/quadrant`` (−1 where the shard has no such column).
    target : ndarray, shape (N,), float32
        1/d in Å⁻¹ (resolution) or 0/1 (multi-lattice).
    geometry : ndarray, shape (N, 3), float32
        ``(distance_mm, pooled_pixel_mm, wavelength_A)``; zeros where a multi-lattice set has none.
    heads : ndarray, shape (N, H), float32
        Extra head labels, columns in ``head_names`` order.
    head_names : tuple of str
    """

    files: list[Path]
    file_id: np.ndarray
    row: np.ndarray
    image_id: np.ndarray
    quadrant: np.ndarray
    target: np.ndarray
    geometry: np.ndarray
    heads: np.ndarray
    head_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.row)


def _manifest_shards(manifest: Path, allow_outside: bool = False) -> list[Path]:
    try:
        data = json.loads(manifest.read_text())
        entries = [e["file"] if isinstance(e, dict) else e for e in data["shards"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{manifest}: expected an xrais manifest with a 'shards' list of {{'file': …}}, "
                           f"could not read one ({type(exc).__name__}: {exc})") from None
    shards = [manifest.parent / str(e) for e in entries]
    if not allow_outside:
        folder = os.path.normpath(os.path.abspath(manifest.parent))
        for entry, shard in zip(entries, shards):
            if os.path.commonpath([folder, os.path.normpath(os.path.abspath(shard))]) != folder:
                raise DatasetError(f"{manifest}: names {str(entry)!r}, outside the manifest's folder; a manifest "
                                   "lists shards in its own folder (give --allow-outside-manifest to read it)")
    missing = [p.name for p in shards if not p.is_file()]
    if missing:
        raise DatasetError(f"{manifest}: lists shards that do not exist: {', '.join(missing[:5])}")
    return shards


def resolve_data(paths: Sequence[str | os.PathLike[str]], *, allow_outside_manifest: bool = False) -> list[Path]:
    """The shard files meant by manifests, shards and folders, absolute, in order, without repeats.

    A folder stands for its ``manifest.json`` when it has one, else for its ``*.h5`` files.
    A manifest names shards in its own folder (or below it); one that names a file elsewhere
    (an absolute path, ``../``) is refused unless ``allow_outside_manifest``, so a data set
    handed on cannot make a run read files it did not bring.

    Raises
    ------
    DatasetError
        A path that does not exist, a bad manifest (or one naming files outside its folder),
        or nothing found at all.
    """
    found: list[Path] = []
    for item in paths:
        p = Path(item)
        if p.is_dir():
            if (p / "manifest.json").is_file():
                found += _manifest_shards(p / "manifest.json", allow_outside_manifest)
            else:
                shards = sorted(q for q in p.glob("*.h5") if not q.name.startswith("."))
                if not shards:
                    raise DatasetError(f"{p}: expected a manifest.json or .h5 shards in the folder, found neither")
                found += shards
        elif p.is_file():
            found += _manifest_shards(p, allow_outside_manifest) if p.suffix.lower() == ".json" else [p]
        else:
            raise DatasetError(f"{p}: no such file or folder; expected a manifest.json, an .h5 shard or a folder")
    unique = list(dict.fromkeys(q.resolve() for q in found))
    if not unique:
        raise DatasetError(f"{', '.join(map(str, paths)) or '(none)'}: expected at least one shard, found none")
    return unique


def _required_columns(task: str, heads: Sequence[str]) -> list[str]:
    cols = ["labels/inv_resolution_per_A", *GEOMETRY_COLUMNS] if task == "resolution" else ["labels/n_lattices"]
    return cols + [f"labels/{h}" for h in heads]


def _read_columns(path: Path, task: str, heads: Sequence[str]) -> tuple[int, dict[str, np.ndarray]]:
    import h5py

    from xrais.io import SHARD_FORMAT

    wanted = _required_columns(task, heads)
    optional = ["source/index", "source/path", "source/frame", "source/quadrant", *GEOMETRY_COLUMNS]
    try:
        with h5py.File(path, "r") as f:
            fmt = f.attrs.get("format")
            fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
            if fmt != SHARD_FORMAT:
                raise DatasetError(f"{path}: expected an xrais shard (format {SHARD_FORMAT!r}), found format {fmt!r}")
            images = f.get("images")
            if not (isinstance(images, h5py.Dataset) and images.shape[1:] == QUADRANT_SHAPE and images.ndim == 3
                    and images.dtype == np.uint8):
                found = "no 'images' dataset" if images is None else f"{images.dtype} {images.shape}"
                raise DatasetError(f"{path}: expected 'images' of shape (N, 512, 512) uint8, found {found}")
            n = images.shape[0]
            missing = [c for c in wanted if c not in f]
            if missing:
                raise DatasetError(f"{path}: expected column(s) {', '.join(missing)} for task {task!r}, "
                                   "not in the shard")
            cols: dict[str, np.ndarray] = {}
            for name in dict.fromkeys(wanted + [c for c in optional if c in f]):
                data = f[name][()]
                if getattr(data, "shape", None) != (n,):
                    raise DatasetError(f"{path}: expected column {name} of {n} values, found shape "
                                       f"{getattr(data, 'shape', None)}")
                if data.dtype.kind in "OS":
                    data = np.asarray([v.decode() if isinstance(v, bytes) else str(v) for v in data], dtype=object)
                cols[name] = data
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the shard ({exc})") from None
    return n, cols


def make_row_arrays(cols: Mapping[str, np.ndarray], task: str, heads: Sequence[str] = (), *, where: str = "",
                    what: str = "the shard") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Target, geometry input and head labels of rows, from their shard columns.

    The one place where label and geometry columns become what the model learns from; shard
    rows (:func:`scan_shards`) and simulated images (:mod:`xrais.train.sim_data`) both use it.

    Parameters
    ----------
    cols : mapping of str to ndarray, each shape (n,)
        Columns as a shard holds them (``labels/…``, ``geometry/…``, …).
    task : {"resolution", "multilattice"}
    heads : sequence of str
        Extra label names (``labels/<name>`` columns).
    where, what : str
        How messages name the rows' origin ("set/sim_r0000_00000.h5") and the columns ("the shard").

    Returns
    -------
    target : ndarray, shape (n,), float64
        1/d in Å⁻¹ (resolution) or ``n_lattices > 1`` as 0/1 (multi-lattice).
    geometry : ndarray, shape (n, 3), float64
        ``(distance_mm, pixel_mm × downsample, wavelength_A)``; zeros without geometry columns.
    heads : ndarray, shape (n, H), float64

    Raises
    ------
    DatasetError
        A column the task or a head needs is missing or not finite; non-positive geometry.
    """
    missing = [c for c in _required_columns(task, heads) if c not in cols]
    if missing:
        raise DatasetError(f"{where}: expected column(s) {', '.join(missing)} for task {task!r}, not in {what}")
    for name in _required_columns(task, heads):
        if cols[name].dtype.kind not in "biuf" or not np.all(np.isfinite(cols[name].astype(np.float64))):
            raise DatasetError(f"{where}: expected finite numbers in column {name}, found "
                               f"{cols[name].dtype} values with NaN, inf or text")
    n = len(cols[_required_columns(task, heads)[0]])
    if task == "resolution":
        target = cols["labels/inv_resolution_per_A"].astype(np.float64)
    else:
        target = (cols["labels/n_lattices"].astype(np.float64) > 1).astype(np.float64)
    if all(c in cols for c in GEOMETRY_COLUMNS):
        geometry = np.stack([cols["geometry/distance_mm"], cols["geometry/pixel_mm"] * cols["geometry/downsample"],
                             cols["geometry/wavelength_A"]], axis=1).astype(np.float64)
        if task == "resolution" and not (np.all(geometry > 0)):
            raise DatasetError(f"{where}: expected positive distance, pixel size, downsample and wavelength "
                               "in the geometry columns, found values ≤ 0")
    else:
        geometry = np.zeros((n, 3))
    head_values = (np.stack([cols[f"labels/{h}"].astype(np.float64) for h in heads], axis=1) if heads
                   else np.zeros((n, 0)))
    return target, geometry, head_values


def shards_training_geometry(files: Sequence[Path]) -> dict[str, Any]:
    """The geometry the rows of ``files`` cover, as a checkpoint's ``training_geometry`` records it.

    Returns
    -------
    dict
        ``detectors`` (``labels/detector`` names), ``pixel_mm`` (distinct raw pixel sizes),
        ``distance_mm`` and ``wavelength_A`` as (low, high), and ``untilted``: True when every
        row is a simulated image (xrais simulates detectors perpendicular to the beam). Fields
        without columns are left out (see :class:`xrais.models.training_geometry.TrainingGeometry`).
    """
    import h5py

    values: dict[str, list[Any]] = {k: [] for k in ("labels/detector", "geometry/pixel_mm", "geometry/distance_mm",
                                                    "geometry/wavelength_A")}
    simulated = True
    for path in files:
        with h5py.File(path, "r") as f:
            simulated &= "source/seed" in f and "source/path" not in f
            for name, found in values.items():
                if name in f:
                    data = f[name][()]
                    found.extend(v.decode() if isinstance(v, bytes) else v for v in data)
    out: dict[str, Any] = {}
    if values["labels/detector"]:
        out["detectors"] = sorted({str(v) for v in values["labels/detector"]})
    if values["geometry/pixel_mm"]:
        out["pixel_mm"] = sorted({round(float(v), 6) for v in values["geometry/pixel_mm"]})
    for key, name in (("distance_mm", "geometry/distance_mm"), ("wavelength_A", "geometry/wavelength_A")):
        if values[name]:
            column = np.asarray(values[name], dtype=float)
            out[key] = [float(column.min()), float(column.max())]
    out["untilted"] = bool(simulated and files)
    return out


def scan_shards(files: Sequence[Path], task: str, heads: Sequence[str] = ()) -> DataTable:
    """Read and check the label and geometry columns of every shard (no images).

    Parameters
    ----------
    files : sequence of Path
        Shards, e.g. from :func:`resolve_data`.
    task : {"resolution", "multilattice"}
    heads : sequence of str
        Extra label names; each must be a ``labels/<name>`` column of every shard.

    Returns
    -------
    DataTable

    Raises
    ------
    DatasetError
        A shard that is not an xrais shard, lacks a column the task or a head needs, has
        non-finite labels, or no rows in all the files together.
    """
    parts: dict[str, list[Any]] = {k: [] for k in ("file_id", "row", "key", "quadrant", "target", "geometry", "heads")}
    for fid, path in enumerate(files):
        n, cols = _read_columns(Path(path), task, heads)
        if n == 0:
            continue
        if "source/index" in cols:
            key = [f"{Path(path).parent}#{int(i)}" for i in cols["source/index"]]
        elif "source/path" in cols:
            frames = cols.get("source/frame", np.zeros(n, dtype=np.int64))
            key = [f"{p}#{int(fr)}" for p, fr in zip(cols["source/path"], frames)]
        else:
            key = [f"{path}@{r}" for r in range(n)]
        target, geometry, head_values = make_row_arrays(cols, task, heads, where=str(path))
        parts["file_id"].append(np.full(n, fid, dtype=np.int64))
        parts["row"].append(np.arange(n, dtype=np.int64))
        parts["key"] += key
        parts["quadrant"].append(cols["source/quadrant"].astype(np.int64) if "source/quadrant" in cols
                                 else np.full(n, -1, dtype=np.int64))
        parts["target"].append(target)
        parts["geometry"].append(geometry)
        parts["heads"].append(head_values)
    if not parts["row"]:
        names = ", ".join(Path(p).name for p in files[:5]) + (", …" if len(files) > 5 else "")
        raise DatasetError(f"{names}: expected at least one image, the shards hold none")
    _, image_id = np.unique(np.asarray(parts["key"], dtype=object).astype(str), return_inverse=True)
    return DataTable(
        files=[Path(p) for p in files],
        file_id=np.concatenate(parts["file_id"]), row=np.concatenate(parts["row"]),
        image_id=image_id.astype(np.int64), quadrant=np.concatenate(parts["quadrant"]),
        target=np.concatenate(parts["target"]).astype(np.float32),
        geometry=np.concatenate(parts["geometry"]).astype(np.float32),
        heads=np.concatenate(parts["heads"]).astype(np.float32), head_names=tuple(heads),
    )


def split_by_image(table: DataTable, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the training and validation sets; all quadrants of an image go together.

    ``round(val_fraction × images)`` images, at least one when the fraction is positive and
    there are two or more images, are drawn with ``numpy.random.default_rng(seed)``: the same
    data and seed always give the same split.

    Returns
    -------
    train, val : ndarray of int64
        Sorted row indices.
    """
    images = np.unique(table.image_id)
    n_val = int(round(val_fraction * len(images)))
    if val_fraction > 0 and len(images) > 1:
        n_val = min(max(n_val, 1), len(images) - 1)
    held = np.random.default_rng(seed).permutation(images)[:n_val]
    is_val = np.isin(table.image_id, held)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def apply_photon_gain(image: np.ndarray, gain: float, rng: np.random.Generator) -> np.ndarray:
    """The conditioned image of the same exposure with ``gain`` times the photons.

    A conditioned value v = ⌊√P⌋ stands for a block maximum of P photons with v² ≤ P < (v + 1)²;
    P is drawn uniformly among those integers, multiplied by ``gain`` and conditioned again
    (⌊√(gain·P)⌋, clipped at 255). Zeros (no photons, masked pixels, gaps) stay zero, and the
    beam centre stays at [0, 0]: nothing moves.

    Parameters
    ----------
    image : ndarray, shape (512, 512), uint8
    gain : float
        Photon gain (> 0).
    rng : numpy Generator

    Returns
    -------
    ndarray, shape (512, 512), uint8
    """
    v = image.astype(np.float64)
    photons = v * v + np.floor(rng.random(image.shape) * (2.0 * v + 1.0))
    out = np.floor(np.sqrt(gain * photons))
    out[image == 0] = 0
    return np.clip(out, 0, 255).astype(np.uint8)


def draw_photon_gain(gain_range: tuple[float, float], rng: np.random.Generator) -> float:
    """A photon gain drawn log-uniformly in ``gain_range`` (the ``--augment`` gain)."""
    lo, hi = np.log(gain_range[0]), np.log(gain_range[1])
    return float(np.exp(rng.uniform(lo, hi)))


def make_item(image: np.ndarray, geometry: np.ndarray, target: Any, heads: np.ndarray, index: int) -> dict[str, Any]:
    """One row as the training loop takes it (see :class:`ShardDataset`).

    Parameters
    ----------
    image : ndarray, shape (512, 512), uint8
    geometry : ndarray, shape (3,), float32
    target : float32 scalar
    heads : ndarray, shape (H,), float32
    index : int
    """
    return {"image": torch.from_numpy(np.ascontiguousarray(image))[None],
            "geometry": torch.from_numpy(np.ascontiguousarray(geometry, dtype=np.float32)),
            "target": torch.tensor(np.float32(target)),
            "heads": torch.from_numpy(np.ascontiguousarray(heads, dtype=np.float32)), "index": index}


class ShardDataset(Dataset):
    """Rows of a :class:`DataTable` as tensors, read lazily from their shards.

    ``dataset[i]`` is a dict: ``image`` (1, 512, 512) uint8 in conditioned units, ``geometry`` (3,)
    float32, ``target`` () float32, ``heads`` (H,) float32 and ``index`` (the row index ``i``).
    With ``augment`` each image gets a photon gain drawn log-uniformly in ``gain_range`` from
    ``numpy.random.default_rng([seed, epoch, i])``: the same for a given epoch and row whatever
    process or worker reads it. Set :attr:`epoch` before each epoch's loader is iterated.
    """

    def __init__(self, table: DataTable, *, augment: bool = False, gain_range: tuple[float, float] = (0.5, 2.0),
                 seed: int = 0) -> None:
        self.table = table
        self.augment = augment
        self.gain_range = gain_range
        self.seed = seed
        self.epoch = 0
        self._handles: dict[int, Any] = {}
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.table)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"], state["_pid"] = {}, None
        return state

    def _file(self, fid: int) -> Any:
        import h5py

        if self._pid != os.getpid():  # a forked child never touches its parent's HDF5 handles
            self._handles, self._pid = {}, os.getpid()
        handle = self._handles.get(fid)
        if handle is None:
            path = self.table.files[fid]
            try:
                handle = self._handles[fid] = h5py.File(path, "r")
            except OSError as exc:
                raise DatasetError(f"{path}: cannot open the shard ({exc})") from None
        return handle

    def read_image(self, index: int) -> np.ndarray:
        """The stored quadrant of row ``index``, shape (512, 512), uint8."""
        fid, row = int(self.table.file_id[index]), int(self.table.row[index])
        try:
            return self._file(fid)["images"][row]
        except (OSError, KeyError) as exc:
            raise DatasetError(f"{self.table.files[fid]}: cannot read image row {row} ({exc})") from None

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        image = self.read_image(index)
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            image = apply_photon_gain(image, draw_photon_gain(self.gain_range, rng), rng)
        t = self.table
        return make_item(image, t.geometry[index], t.target[index], t.heads[index], index)

    def close(self) -> None:
        """Close this process's HDF5 handles (before forking workers, or when done)."""
        if self._pid == os.getpid():
            for handle in self._handles.values():
                handle.close()
        self._handles, self._pid = {}, None


class GlobalBatchSampler(DistributedSampler):
    """Training order in whole global batches, shared out between processes.

    Each epoch the training rows are shuffled with a generator seeded ``seed + epoch`` (as
    :class:`~torch.utils.data.DistributedSampler` does) and cut to ``⌊n / batch_size⌋`` global
    batches; the rest waits for another epoch's shuffle. Process r of W takes positions
    r, r + W, r + 2W, …, so its k-th batch of ``batch_size / W`` rows and the other processes'
    k-th batches together are exactly global batch k: one process, or W, see the same batches.
    :attr:`start_batch` (set before iterating) skips the epoch's first global batches, to go on
    from a state saved within an epoch.

    Parameters
    ----------
    indices : sequence of int
        Training rows of the dataset.
    batch_size : int
        Global batch; a multiple of ``num_replicas``.
    num_replicas, rank : int
    seed : int
    """

    def __init__(self, indices: Sequence[int], batch_size: int, *, num_replicas: int = 1, rank: int = 0,
                 seed: int = 0) -> None:
        super().__init__(list(indices), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size = batch_size
        self.n_batches = len(self.indices) // batch_size
        self.start_batch = 0

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.indices), generator=g).numpy()
        order = share_global_batches(order, self.n_batches, self.batch_size, self.start_batch, self.rank,
                                     self.num_replicas)
        return iter(self.indices[order].tolist())

    def __len__(self) -> int:
        return (self.n_batches - self.start_batch) * self.batch_size // self.num_replicas


def share_global_batches(order: np.ndarray, n_batches: int, batch_size: int, start_batch: int, rank: int,
                         num_replicas: int) -> np.ndarray:
    """This process's part of an epoch's order of whole global batches.

    The first ``n_batches × batch_size`` entries of ``order`` are the epoch's global batches;
    the first ``start_batch`` of them are skipped, and process ``rank`` of ``num_replicas``
    takes positions rank, rank + W, … of the rest, so the processes' k-th batches together are
    global batch k.

    Examples
    --------
    >>> share_global_batches(np.arange(10), 2, 4, 0, 1, 2).tolist()
    [1, 3, 5, 7]
    """
    order = np.asarray(order)[: n_batches * batch_size]
    return order[start_batch * batch_size:][rank::num_replicas]


def compute_input_stats(dataset: ShardDataset, indices: Sequence[int], n_images: int, seed: int) -> tuple[float, float]:
    """Mean and standard deviation of the pixels of up to ``n_images`` rows (conditioned units).

    The rows are drawn without replacement with ``numpy.random.default_rng(seed)`` and read
    without augmentation; the file handles are closed afterwards.

    Returns
    -------
    (mean, std) : tuple of float
        ``std`` is 1.0 when every sampled pixel has the same value.
    """
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(np.asarray(indices), size=min(n_images, len(indices)), replace=False))
    total = total_sq = 0.0
    count = 0
    try:
        for i in rows:
            img = dataset.read_image(int(i)).astype(np.float64)
            total += img.sum()
            total_sq += np.square(img).sum()
            count += img.size
    finally:
        dataset.close()
    mean = total / count
    std = float(np.sqrt(max(total_sq / count - mean * mean, 0.0)))
    return float(mean), std if std > 1e-6 else 1.0
