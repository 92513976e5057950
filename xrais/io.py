"""The xrais HDF5 shard: conditioned 512×512 images with per-row columns.

Layout of one shard file::

    images                 (N, 512, 512) uint8, chunk = one image, gzip + shuffle
    <group>/<column>       (N,) one dataset per column, e.g. labels/d_A, geometry/distance_mm,
                           source/path (UTF-8 strings), source/frame, source/quadrant
    attrs: xrais_version, format ("xrais-shard-1"), config (JSON), created (ISO 8601 UTC),
           plus any the writer is given (seed, …)

A shard is written whole to a temporary file in its folder and renamed into place
(``os.replace``), so a killed run never leaves a truncated shard: every shard on disk is
complete, and a resumed run skips what they already hold. :class:`ShardWriter` buffers rows
and writes a shard every ``shard_size`` rows; :meth:`ShardWriter.flush` puts the rows buffered
so far on disk early, in the shard being filled: the first flush writes it, later ones append
to a copy of it that replaces it (:func:`append_shard`), so the file on disk is always whole.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

import h5py
import numpy as np

from xrais._version import __version__
from xrais.errors import DatasetError

__all__ = ["SHARD_FORMAT", "write_shard", "append_shard", "read_shard", "ShardWriter", "list_shards"]

SHARD_FORMAT = "xrais-shard-1"
_STR = h5py.string_dtype("utf-8")
_COLUMN_CHUNK = 256  # rows per chunk of a column of a shard that can grow


def _column_array(name: str, values: Any, n: int) -> np.ndarray:
    arr = np.asarray(values)
    if arr.shape[:1] != (n,):
        raise DatasetError(f"column {name!r}: expected {n} values, got shape {arr.shape}")
    if arr.dtype.kind in "UO":
        return np.asarray([str(v) for v in arr], dtype=object)
    return arr


def write_shard(
    path: str | Path,
    images: np.ndarray,
    columns: Mapping[str, Any],
    attrs: Mapping[str, Any] | None = None,
    *,
    growable: bool = False,
) -> Path:
    """Write one complete shard atomically (temporary file, then rename).

    Parameters
    ----------
    path : str or Path
        Destination ``.h5`` file; replaced if it exists.
    images : ndarray, shape (N, 512, 512), uint8
        Conditioned quadrants.
    columns : mapping of str to array-like of length N
        Per-row values; names may contain ``/`` to form groups (``"labels/d_A"``).
    attrs : mapping, optional
        File attributes; dicts are stored as JSON strings.
    growable : bool
        Make every dataset extensible along its first axis, so that :func:`append_shard`
        can add rows later.

    Returns
    -------
    Path
        The written file.
    """
    path = Path(path)
    images = np.asarray(images)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DatasetError(f"{path.name}: images must be (N, H, W) uint8, got {images.dtype} {images.shape}")
    n = images.shape[0]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset(
                "images", data=images, chunks=(1, *images.shape[1:]) if n or growable else None,
                compression="gzip", compression_opts=4, shuffle=True,
                maxshape=(None, *images.shape[1:]) if growable else None,
            )
            for name, values in columns.items():
                arr = _column_array(name, values, n)
                extra = ({"maxshape": (None, *arr.shape[1:]), "chunks": (_COLUMN_CHUNK, *arr.shape[1:])}
                         if growable else {})
                f.create_dataset(name, data=arr, dtype=_STR if arr.dtype == object else arr.dtype, **extra)
            f.attrs["format"] = SHARD_FORMAT
            f.attrs["xrais_version"] = __version__
            f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            for key, value in (attrs or {}).items():
                f.attrs[key] = json.dumps(value) if isinstance(value, (dict, list)) else value
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def append_shard(path: str | Path, images: np.ndarray, columns: Mapping[str, Any]) -> Path:
    """Add rows to a shard written with ``growable=True``, atomically (a copy grows, then replaces it).

    Parameters
    ----------
    path : str or Path
        An existing growable shard.
    images : ndarray, shape (k, H, W), uint8
        Rows to add, with the shard's image shape.
    columns : mapping of str to array-like of length k
        The same column names as the shard's. A numeric column widens (int to float) when the
        new values need it.

    Returns
    -------
    Path

    Raises
    ------
    DatasetError
        If the shard cannot be read or grown, or the new rows do not match it.
    """
    path = Path(path)
    images = np.asarray(images)
    k = images.shape[0] if images.ndim == 3 else -1
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(path, tmp)
        with h5py.File(tmp, "a") as f:
            have = sorted(name for name, obj in _datasets(f) if name != "images")
            if sorted(columns) != have:
                raise DatasetError(f"{path.name}: columns {sorted(columns)} differ from the shard's {have}")
            stored = f["images"]
            if k < 0 or images.dtype != np.uint8 or images.shape[1:] != stored.shape[1:]:
                raise DatasetError(f"{path.name}: rows to add must be (k, {stored.shape[1]}, {stored.shape[2]}) uint8, "
                                   f"got {images.dtype} {images.shape}")
            if stored.maxshape[0] is not None:
                raise DatasetError(f"{path.name}: the shard was not written to grow (growable=False)")
            n0 = stored.shape[0]
            stored.resize(n0 + k, axis=0)
            stored[n0:] = images
            for name, values in columns.items():
                arr = _column_array(name, values, k)
                ds = f[name]
                if arr.dtype != object and ds.dtype.kind in "biuf" and arr.dtype.kind in "biuf":
                    wide = np.result_type(ds.dtype, arr.dtype)
                    if wide != ds.dtype:  # e.g. a column that held only integers so far
                        old = ds[()].astype(wide)
                        del f[name]
                        ds = f.create_dataset(name, data=old, maxshape=(None, *old.shape[1:]),
                                              chunks=(_COLUMN_CHUNK, *old.shape[1:]))
                ds.resize(n0 + k, axis=0)
                ds[n0:] = arr
        os.replace(tmp, path)
    except OSError as exc:
        raise DatasetError(f"{path.name}: cannot add rows to the shard ({exc})") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _datasets(f: h5py.File) -> list[tuple[str, h5py.Dataset]]:
    found: list[tuple[str, h5py.Dataset]] = []
    f.visititems(lambda name, obj: found.append((name, obj)) if isinstance(obj, h5py.Dataset) else None)
    return found


def read_shard(path: str | Path, *, images: bool = True) -> tuple[np.ndarray | None, dict[str, np.ndarray], dict[str, Any]]:
    """Read a shard: (images or None, columns by name, attributes).

    Raises
    ------
    DatasetError
        If the file is not an xrais shard or cannot be read.
    """
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != SHARD_FORMAT:
                raise DatasetError(f"{path.name}: not an xrais shard (format attribute {f.attrs.get('format')!r})")
            columns: dict[str, np.ndarray] = {}

            def visit(name: str, obj: Any) -> None:
                if isinstance(obj, h5py.Dataset) and name != "images":
                    data = obj[()]
                    if obj.dtype.kind == "O":
                        data = np.asarray([v.decode() if isinstance(v, bytes) else v for v in data], dtype=object)
                    columns[name] = data

            f.visititems(visit)
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
            imgs = f["images"][()] if images else None
    except OSError as exc:
        raise DatasetError(f"{path.name}: cannot read shard ({exc})") from None
    return imgs, columns, attrs


def list_shards(folder: str | Path, prefix: str) -> list[Path]:
    """Complete shards ``<prefix>_NNNNN.h5`` in ``folder``, in order."""
    pattern = re.compile(rf"{re.escape(prefix)}_(\d{{5}})\.h5$")
    return sorted(p for p in Path(folder).glob(f"{prefix}_*.h5") if pattern.match(p.name))


def _remove_stale_temporaries(folder: Path, prefix: str) -> None:
    """Remove ``.<prefix>_NNNNN.h5.<pid>.tmp`` files left by a killed writer (its pid gone)."""
    pattern = re.compile(rf"\.{re.escape(prefix)}_\d{{5}}\.h5\.(\d+)\.tmp$")
    for tmp in folder.glob(f".{prefix}_*.tmp"):
        match = pattern.match(tmp.name)
        if match is None:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
            alive = pid != os.getpid()
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
        if not alive:
            tmp.unlink(missing_ok=True)


class ShardWriter:
    """Buffer rows and write numbered shards ``<prefix>_00000.h5``, … of ``shard_size`` rows.

    New shards are numbered after those already in ``folder``, so a resumed run adds to,
    and never overwrites, the work of a killed one. :meth:`flush` puts the buffered rows on
    disk now, in the shard being filled (which then grows on later writes until it holds
    ``shard_size`` rows); every shard on disk is complete at every moment.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     w = ShardWriter(d, "demo", shard_size=4)
    ...     w.add(np.zeros((3, 8, 8), np.uint8), {"source/frame": [0, 1, 2]})
    ...     w.flush()  # the three rows are on disk now
    ...     w.add(np.zeros((3, 8, 8), np.uint8), {"source/frame": [3, 4, 5]})
    ...     w.close()
    ...     [len(read_shard(p, images=False)[1]["source/frame"]) for p in list_shards(d, "demo")]
    3
    [4, 2]
    """

    def __init__(self, folder: str | Path, prefix: str, *, shard_size: int = 256,
                 attrs: Mapping[str, Any] | None = None) -> None:
        if shard_size < 1:
            raise DatasetError(f"shard size: expected ≥ 1, got {shard_size}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.shard_size = shard_size
        self.attrs = dict(attrs or {})
        _remove_stale_temporaries(self.folder, prefix)
        existing = list_shards(self.folder, prefix)
        self._next = int(existing[-1].stem.rsplit("_", 1)[1]) + 1 if existing else 0
        self._on_disk = 0  # rows of shard ``_next`` already in its file
        self._images: list[np.ndarray] = []
        self._columns: dict[str, list[Any]] = {}
        self.written: list[Path] = []

    @property
    def pending(self) -> int:
        """Rows added but not yet on disk."""
        return len(self._images)

    def add(self, images: np.ndarray, columns: Mapping[str, Iterable[Any]]) -> None:
        """Add rows (images of shape (k, 512, 512) with k values per column)."""
        images = np.asarray(images)
        k = images.shape[0]
        if self._columns and set(columns) != set(self._columns):
            raise DatasetError(f"columns {sorted(columns)} differ from earlier rows {sorted(self._columns)}")
        for name, values in columns.items():
            vals = list(values)
            if len(vals) != k:
                raise DatasetError(f"column {name!r}: expected {k} values, got {len(vals)}")
            self._columns.setdefault(name, []).extend(vals)
        self._images.extend(images)
        while self._on_disk + len(self._images) >= self.shard_size:
            self._write(self.shard_size - self._on_disk, growable=False)

    def _write(self, n: int, growable: bool) -> None:
        path = self.folder / f"{self.prefix}_{self._next:05d}.h5"
        images = np.stack(self._images[:n])
        columns = {k: v[:n] for k, v in self._columns.items()}
        if self._on_disk:
            append_shard(path, images, columns)
        else:
            write_shard(path, images, columns, self.attrs, growable=growable and n < self.shard_size)
        self._images = self._images[n:]
        self._columns = {k: v[n:] for k, v in self._columns.items()}
        self._on_disk += n
        if path not in self.written:
            self.written.append(path)
        if self._on_disk >= self.shard_size:
            self._next += 1
            self._on_disk = 0

    def flush(self) -> int:
        """Put every buffered row on disk now, in a shard that can grow; the number of rows written."""
        n = len(self._images)
        if n:
            self._write(n, growable=True)
        return n

    def close(self) -> None:
        """Write the remaining rows (the last shard may be smaller)."""
        if self._images:
            self._write(len(self._images), growable=False)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
