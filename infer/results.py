"""Result files of an inference run: rows written as they come, and what a resumed run skips.

A results folder holds::

    provenance.json    xrais version, models (file, SHA-256, task, architecture), the full
                       InferConfig, the columns, and one entry per run (start, end, ranks, rows)
    results.csv        the journal: one row per frame, written and flushed as rows arrive
    results.h5         (format h5) the same rows as 1-D datasets under /rows, appended every
                       ``flush_rows`` rows; or
    results.parquet/   (format parquet, needs pyarrow) part-NNNNNN.parquet files, one per append
    work.jsonl         while a run goes: the work items handed to each rank and not yet
                       returned (removed when the run ends cleanly)
    .xrais.lock        while a run goes: who holds the folder (:class:`xrais.runs.RunLock`)

A killed run leaves a complete journal except perhaps a cut last line, which is dropped when
the folder is opened again. The HDF5 and Parquet tables hold a prefix of the journal's rows;
they are appended every ``flush_rows`` rows or ``flush_s`` seconds, and each append also
records the run's row count in ``provenance.json``, so a killed run's entry tells how far it
got. Opening the folder appends the rows the tables lack (an HDF5 file damaged by the kill is
rebuilt from the journal). A folder made with other models or settings (see
:meth:`InferConfig.fingerprint`) is refused rather than mixed. When a run did not end cleanly
(a rank died, the job was killed), ``work.jsonl`` tells which ranks held which frames; the
next run names those whose rows are missing (:class:`~xrais.infer.work.WorkJournal`) and
scores them.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import math
import os
import socket
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from xrais._version import __version__
from xrais.errors import ConfigError, DatasetError
from xrais.infer.config import InferConfig
from xrais.infer.scoring import ModelInfo, column_kind
from xrais.infer.work import WORK_JOURNAL_NAME, DoneIndex
from xrais.runs import FlushSchedule, check_out_dir

__all__ = ["ResultsWriter", "read_results", "make_provenance", "read_provenance", "CSV_NAME", "H5_NAME",
           "PARQUET_DIR", "PROVENANCE_NAME", "WORK_JOURNAL_NAME"]

log = logging.getLogger(__name__)

CSV_NAME = "results.csv"
H5_NAME = "results.h5"
PARQUET_DIR = "results.parquet"
PROVENANCE_NAME = "provenance.json"
_FORMAT = "xrais-infer-1"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def make_provenance(config: InferConfig, infos: Sequence[ModelInfo], columns: Sequence[str]) -> dict[str, Any]:
    """The provenance record of a results folder (before any run is added)."""
    fingerprint = dict(config.fingerprint(), models=[{"sha256": i.sha256, "task": i.task, "arch": i.arch}
                                                     for i in infos])
    return {"format": _FORMAT, "xrais_version": __version__, "created": _now(), "fingerprint": fingerprint,
            "models": [i.to_dict() for i in infos], "config": config.model_dump(mode="json"),
            "columns": list(columns), "runs": []}


def read_provenance(folder: str | Path) -> dict[str, Any]:
    """The ``provenance.json`` of a results folder.

    Raises
    ------
    DatasetError
        Missing or not an xrais inference record.
    """
    path = Path(folder) / PROVENANCE_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: expected an xrais inference provenance record ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise DatasetError(f"{path}: expected format {_FORMAT!r}, found {data.get('format') if isinstance(data, dict) else data!r}")
    return data


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if key == "models":
            a = ", ".join(f"{m['task']} {m['sha256'][:12]}" for m in a or [])
            b = ", ".join(f"{m['task']} {m['sha256'][:12]}" for m in b or [])
        out.append(f"{key}: {a} there, {b} now")
    return out


def _parse(column: str, text: str | None) -> Any:
    kind = column_kind(column)
    if kind == "str":
        return text or ""
    if text in (None, ""):
        return -1 if kind == "int" else math.nan
    return int(text) if kind == "int" else float(text)


def _csv_value(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return value.replace("\r", " ").replace("\n", " ")
    return str(value)


def _repair_journal(path: Path) -> None:
    """Drop a last line cut by a kill (rows never contain newlines)."""
    size = path.stat().st_size
    if size == 0:
        return
    with open(path, "rb+") as fh:
        fh.seek(max(0, size - 1))
        if fh.read(1) == b"\n":
            return
        block = min(size, 1 << 20)
        fh.seek(size - block)
        tail = fh.read(block)
        cut = tail.rfind(b"\n")
        keep = size - block + cut + 1 if cut >= 0 else 0
        fh.truncate(keep)
    log.warning("%s: dropped a partly written last row", path)


def _read_journal(path: Path, columns: Sequence[str]) -> list[dict[str, Any]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            return []
        if header != list(columns):
            raise ConfigError(f"{path}: its columns differ from this run's ({len(header)} against {len(columns)}); "
                              "give another --out folder")
        rows = []
        for n, values in enumerate(reader, start=2):
            if len(values) != len(columns):
                log.warning("%s: line %d has %d fields, expected %d; ignored", path, n, len(values), len(columns))
                continue
            rows.append({c: _parse(c, v) for c, v in zip(columns, values)})
        return rows


class _H5Table:
    """Rows as resizable 1-D datasets ``/rows/<column>``; opened for each append."""

    def __init__(self, path: Path, columns: Sequence[str], attrs: Mapping[str, str]) -> None:
        self.path, self.columns, self.attrs = path, list(columns), dict(attrs)

    def _rows_held(self) -> int | None:
        import h5py

        try:
            with h5py.File(self.path, "r") as f:
                g = f["rows"]
                lengths = {len(g[c]) for c in self.columns}
        except Exception:  # missing, damaged by a kill, or of other columns: rebuilt from the journal
            return None
        return lengths.pop() if len(lengths) == 1 else None

    def sync(self, journal: list[dict[str, Any]]) -> None:
        """Make the table hold exactly the journal's rows (appending or rebuilding)."""
        held = self._rows_held() if self.path.exists() else None
        if held is None or held > len(journal):
            if self.path.exists():
                log.warning("%s: rebuilding from the journal", self.path)
                self.path.unlink()
            held = 0
        self.append(journal[held:])

    def append(self, rows: Sequence[Mapping[str, Any]]) -> None:
        import h5py
        import numpy as np

        if not rows and self.path.exists():
            return
        with h5py.File(self.path, "a") as f:
            g = f.require_group("rows")
            for key, value in self.attrs.items():
                f.attrs[key] = value
            f.attrs["columns"] = json.dumps(self.columns)
            for c in self.columns:
                kind = column_kind(c)
                if kind == "str":
                    values = np.array([str(r[c]) for r in rows], dtype=object)
                    dtype: Any = h5py.string_dtype("utf-8")
                else:
                    dtype = np.int64 if kind == "int" else np.float64
                    values = np.array([r[c] for r in rows], dtype=dtype)
                if c not in g:
                    g.create_dataset(c, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(4096,),
                                     compression="gzip", compression_opts=1)
                ds = g[c]
                n = ds.shape[0]
                ds.resize((n + len(rows),))
                if rows:
                    ds[n:] = values


class _ParquetParts:
    """Rows as a folder of Parquet files, one per append, each written whole then renamed."""

    def __init__(self, folder: Path, columns: Sequence[str]) -> None:
        import importlib.util

        if importlib.util.find_spec("pyarrow") is None:
            raise ConfigError("--format parquet needs pyarrow (pip install pyarrow); use --format csv,h5")
        self.folder, self.columns = folder, list(columns)
        folder.mkdir(exist_ok=True)

    def _parts(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.parquet"))

    def sync(self, journal: list[dict[str, Any]]) -> None:
        import pyarrow.parquet as pq

        held = 0
        for part in self._parts():
            try:
                held += pq.ParquetFile(part).metadata.num_rows
            except Exception:
                held = len(journal) + 1
                break
        if held > len(journal):
            log.warning("%s: rebuilding from the journal", self.folder)
            for part in self._parts():
                part.unlink()
            held = 0
        self.append(journal[held:])

    def append(self, rows: Sequence[Mapping[str, Any]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not rows:
            return
        types = {"str": pa.string(), "int": pa.int64(), "float": pa.float64()}
        table = pa.table({c: pa.array([r[c] for r in rows], type=types[column_kind(c)]) for c in self.columns})
        parts = self._parts()
        index = int(parts[-1].stem.split("-")[1]) + 1 if parts else 0
        final = self.folder / f"part-{index:06d}.parquet"
        tmp = self.folder / f".{final.name}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, final)


class ResultsWriter:
    """Opens (or creates) a results folder, tells what is done, and appends rows.

    Parameters
    ----------
    out_dir : str or Path
        The results folder (created).
    config : InferConfig
    infos : sequence of ModelInfo
    columns : sequence of str
        Row columns (:func:`~xrais.infer.scoring.result_columns`).
    ranks : int
        Number of MPI ranks of this run (recorded).

    Raises
    ------
    ConfigError
        The folder holds results of other models or settings, its journal has other columns,
        or it cannot be a folder (an existing file, under a file, not writable).
    """

    def __init__(self, out_dir: str | Path, config: InferConfig, infos: Sequence[ModelInfo],
                 columns: Sequence[str], *, ranks: int = 1) -> None:
        self.out = check_out_dir(out_dir)
        self.config, self.columns = config, list(columns)
        self.csv_path = self.out / CSV_NAME
        new = make_provenance(config, infos, columns)
        prov_path = self.out / PROVENANCE_NAME
        if prov_path.exists():
            self.provenance = read_provenance(self.out)
            diff = _differences(self.provenance.get("fingerprint", {}), new["fingerprint"])
            if diff:
                raise ConfigError(f"{self.out}: holds results made with other models or settings "
                                  f"({'; '.join(diff)}); give another --out folder, or remove this one to start over")
        elif self.csv_path.exists() and self.csv_path.stat().st_size > 0:
            raise ConfigError(f"{self.out}: has {CSV_NAME} but no {PROVENANCE_NAME}, so its settings are unknown; "
                              "give another --out folder")
        else:
            self.provenance = new
        journal: list[dict[str, Any]] = []
        if self.csv_path.exists():
            _repair_journal(self.csv_path)
            journal = _read_journal(self.csv_path, self.columns)
        self.done = DoneIndex.from_rows(journal, retry_errors=config.retry_errors)
        self.rows_before = len(journal)
        self.tables: list[Any] = []
        attrs = {"xrais_version": __version__, "provenance": json.dumps({k: new[k] for k in ("fingerprint", "models")})}
        if "h5" in config.formats:
            self.tables.append(_H5Table(self.out / H5_NAME, self.columns, attrs))
        if "parquet" in config.formats:
            self.tables.append(_ParquetParts(self.out / PARQUET_DIR, self.columns))
        for table in self.tables:
            table.sync(journal)
        self.run = {"started": _now(), "updated": None, "finished": None, "host": socket.gethostname(),
                    "pid": os.getpid(), "ranks": ranks, "rows_written": 0, "errors": 0,
                    "config": config.model_dump(mode="json")}
        self.provenance.setdefault("runs", []).append(self.run)
        _write_json(prov_path, self.provenance)
        header_needed = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
        self._fh = open(self.csv_path, "a", newline="", encoding="utf-8")
        self._csv = csv.writer(self._fh)
        if header_needed:
            self._csv.writerow(self.columns)
            self._fh.flush()
        self._buffer: list[dict[str, Any]] = []
        self.schedule = FlushSchedule(config.flush_rows, config.flush_s)
        self.closed = False

    def write(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Append rows to the journal (flushed at once) and, every ``flush_rows`` rows or
        ``flush_s`` seconds, to the tables and the run's row count in ``provenance.json``.

        ``write([])`` only flushes when the time is due (a run calls it while it waits).
        """
        rows = [dict(r) for r in rows]
        if not rows:
            if self._buffer and self.schedule.add(0):
                self.flush()
            return
        for r in rows:
            self._csv.writerow([_csv_value(r.get(c, "")) for c in self.columns])
            self.run["rows_written"] += 1
            self.run["errors"] += bool(r.get("error"))
            self.done.add(str(r["file"]), int(r["frame"]), r.get("n_frames"))
        self._fh.flush()
        self._buffer.extend(rows)
        if self.schedule.add(len(rows)):
            self.flush()

    def flush(self) -> None:
        """Append the buffered rows to the HDF5/Parquet tables and record the row count so far."""
        buffer, self._buffer = self._buffer, []
        self.schedule.flushed()
        for table in self.tables:
            table.append(buffer)
        if buffer:
            self.run["updated"] = _now()
            _write_json(self.out / PROVENANCE_NAME, self.provenance)

    def close(self) -> None:
        """Flush everything and record the end of the run in ``provenance.json``."""
        if self.closed:
            return
        self.closed = True
        try:
            self.flush()
        finally:
            self._fh.close()
            self.run["finished"] = _now()
            _write_json(self.out / PROVENANCE_NAME, self.provenance)

    def __enter__(self) -> "ResultsWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _results_file(folder: Path) -> Path:
    """The table to read in a results folder: the journal, else the HDF5 table, else Parquet."""
    for name in (CSV_NAME, H5_NAME, PARQUET_DIR):
        if (folder / name).exists():
            return folder / name
    if any(folder.glob("part-*.parquet")):
        return folder
    raise DatasetError(f"{folder}: no {CSV_NAME}/{H5_NAME} in this folder "
                       "(expected the --out folder of xrais infer)")


def read_results(path: str | Path) -> Any:
    """Rows of a results folder or file as a pandas DataFrame.

    Parameters
    ----------
    path : str or Path
        A results folder (its ``results.csv``), a ``results.csv``, a ``results.h5`` or a
        Parquet file or folder.

    Raises
    ------
    DatasetError
        Nothing readable there.
    """
    import pandas as pd

    p = Path(path)
    if not p.exists():
        raise DatasetError(f"{p}: no such file or folder (expected xrais inference results)")
    if p.is_dir() and p.suffix != ".parquet":
        p = _results_file(p)
    try:
        if p.suffix == ".csv":
            header = pd.read_csv(p, nrows=0).columns
            text = [c for c in header if column_kind(c) == "str"]  # model_warning columns too
            df = pd.read_csv(p, keep_default_na=False, na_values=["nan", ""], dtype={c: str for c in text})
            for c in text:
                if c in df:
                    df[c] = df[c].fillna("")
            return df
        if p.suffix in (".h5", ".hdf5"):
            import h5py

            with h5py.File(p, "r") as f:
                g = f["rows"]
                order = json.loads(f.attrs.get("columns", "[]")) or list(g)
                data = {c: g[c][()] for c in order}
            data = {c: [v.decode() if isinstance(v, bytes) else v for v in a] if a.dtype == object else a
                    for c, a in data.items()}
            return pd.DataFrame(data)
        if p.suffix == ".parquet" or p.is_dir():
            import importlib.util

            if importlib.util.find_spec("pyarrow") is None:
                raise DatasetError(f"{p}: reading Parquet results needs pyarrow (pip install pyarrow); "
                                   f"read the {CSV_NAME} beside it instead")
            return pd.read_parquet(p)
    except DatasetError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise DatasetError(f"{p}: expected xrais inference results, could not read them ({exc})") from None
    raise DatasetError(f"{p}: expected a results folder, results.csv, results.h5 or Parquet results")
