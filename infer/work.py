"""Work items: image files and frames, found from the command line and handed to the ranks.

Inputs are files, folders (their files, sorted by name with numbers in numeric order) and
globs. Each file becomes :class:`FrameRef` entries: one per frame for HDF5 files (the frames
are counted here from the HDF5 metadata, which is cheap), and one "every frame" entry for the
other formats, whose readers count frames only when the file is opened by the rank that
scores it. Consecutive entries are packed into :class:`WorkItem` chunks; a rank asks for the
next chunk when it has scored the last, so one slow file delays only its own chunk.

Rows already in the results (:class:`DoneIndex`) are left out, which is how a killed run
resumes. :class:`WorkJournal` records which item each rank holds, so that after a rank dies
the next run can say which frames it took down with it (:func:`describe_unfinished`).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from xrais.errors import ConfigError

__all__ = [
    "FrameRef",
    "WorkItem",
    "DoneIndex",
    "expand_inputs",
    "list_folder",
    "plan_refs",
    "make_items",
    "is_hdf5",
    "count_frames",
    "natural_key",
    "is_eiger_data_file",
    "iter_stdin_paths",
    "absolute",
    "WorkJournal",
    "describe_unfinished",
    "WORK_JOURNAL_NAME",
]

log = logging.getLogger(__name__)

#: Files in a folder that are never detector images.
IGNORED_SUFFIXES = frozenset({
    ".json", ".txt", ".log", ".md", ".csv", ".tsv", ".png", ".jpg", ".jpeg", ".pdf", ".sha256", ".py",
    ".lst", ".tmp", ".part", ".lock", ".pickle", ".pkl", ".expt", ".refl", ".mtz", ".pdb", ".cif", ".toml", ".yaml",
})
#: File names that are never images (the DECTRIS stream's series header beside its frames).
IGNORED_NAMES = frozenset({"header"})
_GLOB_CHARS = re.compile(r"[*?\[]")
_EIGER_DATA = re.compile(r"(?P<prefix>.+)_data_\d+(?P<ext>\.[A-Za-z0-9]+)")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: The work journal of a results folder (:class:`WorkJournal`).
WORK_JOURNAL_NAME = "work.jsonl"


@dataclass(frozen=True)
class FrameRef:
    """One frame of a file, or every frame of it not yet done.

    Attributes
    ----------
    path : str
        Absolute path of the file.
    frame : int or None
        0-based frame index; None for every frame of the file except those in ``skip``.
    skip : frozenset of int
        With ``frame`` None: frames already done.
    """

    path: str
    frame: int | None = None
    skip: frozenset[int] = frozenset()


@dataclass(frozen=True)
class WorkItem:
    """A chunk of frames handed to one rank at a time."""

    refs: tuple[FrameRef, ...]

    def __len__(self) -> int:
        return len(self.refs)


@dataclass
class DoneIndex:
    """The (file, frame) pairs already in the results, and what is known of each file.

    A row with frame −1 is an error about the whole file (it could not be opened); rows also
    carry the file's frame count, so a file is done when all its frames are.
    """

    frames: dict[str, set[int]] = field(default_factory=dict)
    n_frames: dict[str, int] = field(default_factory=dict)
    whole_file: set[str] = field(default_factory=set)

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, object]], *, retry_errors: bool = False) -> "DoneIndex":
        """Index rows with ``file``, ``frame``, ``n_frames`` and ``error``; error rows are skipped
        with ``retry_errors``."""
        done = cls()
        for row in rows:
            if retry_errors and row.get("error"):
                continue
            done.add(str(row["file"]), int(row["frame"]), row.get("n_frames"))
        return done

    def add(self, path: str, frame: int, n_frames: object = None) -> None:
        """Record one row."""
        if frame < 0:
            self.whole_file.add(path)
            return
        self.frames.setdefault(path, set()).add(frame)
        try:
            n = int(n_frames)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return
        if n > 0:
            self.n_frames[path] = n

    def __contains__(self, key: tuple[str, int]) -> bool:
        path, frame = key
        return path in self.whole_file or frame in self.frames.get(path, ())

    def file_done(self, path: str) -> bool:
        """True when the file's error row or every one of its frames is recorded."""
        if path in self.whole_file:
            return True
        n = self.n_frames.get(path)
        return n is not None and len(self.frames.get(path, ())) >= n

    def __len__(self) -> int:
        return len(self.whole_file) + sum(len(v) for v in self.frames.values())


def natural_key(text: str) -> list[object]:
    """Sort key putting ``img_2`` before ``img_10``.

    Examples
    --------
    >>> sorted(["a_10.cbf", "a_2.cbf", "a_1.cbf"], key=natural_key)
    ['a_1.cbf', 'a_2.cbf', 'a_10.cbf']
    """
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def is_eiger_data_file(path: Path) -> bool:
    """``<prefix>_data_NNNNNN.h5``, an EIGER data file (its frames are also reachable from the master)."""
    return _EIGER_DATA.fullmatch(path.name) is not None


def _eiger_master(path: Path) -> Path | None:
    m = _EIGER_DATA.fullmatch(path.name)
    return path.with_name(f"{m['prefix']}_master{m['ext']}") if m else None


def _wanted(path: Path) -> bool:
    name = path.name
    return (not name.startswith(".") and name not in IGNORED_NAMES
            and path.suffix.lower() not in IGNORED_SUFFIXES and path.is_file())


def list_folder(folder: Path, pattern: str = "*", recursive: bool = False) -> list[Path]:
    """Image-like files of ``folder`` matching ``pattern``, in natural order.

    Hidden files, files with a non-image suffix (``.json``, ``.txt``, …) and DECTRIS stream
    ``header`` files are left out.
    """
    found = folder.rglob(pattern) if recursive else folder.glob(pattern)
    return sorted((p for p in found if _wanted(p)), key=lambda p: natural_key(str(p)))


def _sub_folders(folder: Path) -> bool:
    try:
        return any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir())
    except OSError:
        return False


def expand_inputs(inputs: Iterable[str | Path], *, recursive: bool = False) -> list[Path]:
    """Files named by paths, folders and globs, absolute (symbolic links kept), in order, without repeats.

    A file named directly is kept even if it does not exist (scoring it gives an error row).
    A folder gives its image files (and, with ``recursive``, those of its sub-folders). A
    folder matched by a glob gives its files (and sub-folders') with ``recursive``; without, it
    is left out with a warning naming it. EIGER data files are dropped when their master file
    is also an input.

    Raises
    ------
    ConfigError
        If nothing at all is found.
    """
    out: list[Path] = []
    for item in inputs:
        text = str(item)
        p = Path(text).expanduser()
        if p.is_dir():
            files = list_folder(p, recursive=recursive)
            if not files:
                log.warning("%s: no image files in this folder%s", text,
                            "" if recursive or not _sub_folders(p) else " (it has sub-folders: give --recursive)")
            out.extend(files)
        elif not p.exists() and _GLOB_CHARS.search(text):
            matches = sorted((Path(m) for m in glob.glob(str(p), recursive=True)), key=lambda m: natural_key(str(m)))
            folders = [m for m in matches if m.is_dir()]
            files = [m for m in matches if _wanted(m)]
            if folders and recursive:
                files = sorted([*files, *(f for d in folders for f in list_folder(d, recursive=True))],
                               key=lambda m: natural_key(str(m)))
            elif folders:
                shown = ", ".join(str(d) for d in folders[:5])
                if len(folders) > 5:
                    shown += f" and {len(folders) - 5} more"
                log.warning("%s: matches %d folder(s), left out (give --recursive to score the files in them): %s",
                            text, len(folders), shown)
            if not files and not folders:
                log.warning("%s: no file matches", text)
            out.extend(files)
        else:
            out.append(p)
    unique = list(dict.fromkeys(absolute(p) for p in out))
    present = set(unique)
    unique = [p for p in unique if not (is_eiger_data_file(p) and _eiger_master(p) in present)]
    if not unique:
        raise ConfigError(f"{', '.join(map(str, inputs)) or 'no inputs'}: no image files found")
    return unique


def absolute(path: str | Path) -> Path:
    """The absolute, normalised path, keeping symbolic links as named (rows name files as the user does)."""
    return Path(os.path.abspath(os.path.expanduser(str(path))))


def is_hdf5(path: str | Path) -> bool:
    """True if the file starts with the HDF5 signature (never raises)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(8) == _HDF5_SIGNATURE
    except OSError:
        return False


def count_frames(path: str | Path) -> int | None:
    """Frames in an image file, or None if it cannot be opened now (the error is left to the
    rank that scores it)."""
    from xrais.conditioning import open_image

    try:
        with open_image(path) as reader:
            return int(reader.n_frames)
    except Exception as exc:  # any failure becomes that file's error row later
        log.debug("%s: cannot count frames (%s)", path, exc)
        return None


def plan_refs(paths: Sequence[str | Path], done: DoneIndex | None = None) -> list[FrameRef]:
    """The frames of ``paths`` still to score.

    HDF5 files are opened here to count their frames, and get one entry per frame not done;
    other files get one entry for all their frames (minus those done), or none when done.
    """
    done = done if done is not None else DoneIndex()
    refs: list[FrameRef] = []
    for raw in paths:
        path = str(raw)
        if done.file_done(path):
            continue
        n = count_frames(path) if is_hdf5(path) else None
        if n is None:
            refs.append(FrameRef(path, None, frozenset(done.frames.get(path, ()))))
        else:
            refs.extend(FrameRef(path, i) for i in range(n) if (path, i) not in done)
    return refs


def make_items(refs: Sequence[FrameRef], chunk_frames: int) -> list[WorkItem]:
    """Pack ``refs`` into work items of at most ``chunk_frames`` entries, in order.

    Examples
    --------
    >>> [len(w) for w in make_items([FrameRef("a", i) for i in range(5)], 2)]
    [2, 2, 1]
    """
    if chunk_frames < 1:
        raise ConfigError(f"chunk_frames must be ≥ 1, got {chunk_frames}")
    return [WorkItem(tuple(refs[i : i + chunk_frames])) for i in range(0, len(refs), chunk_frames)]


def iter_stdin_paths(lines: Iterable[str]) -> Iterator[Path]:
    """Absolute paths from lines of text (blank lines and ``#`` comments skipped)."""
    for line in lines:
        text = line.strip()
        if text and not text.startswith("#"):
            yield absolute(Path(text).expanduser())


class WorkJournal:
    """``work.jsonl``: which work items were handed to which rank and not yet returned.

    The manager calls :meth:`handed` as it sends an item and :meth:`returned` once the item's
    rows are in the results; each is one short line, flushed. Every ``compact_lines`` lines the
    file is rewritten with only the items still out, so following an experiment for days keeps
    it small. A run that ends cleanly removes the file (:meth:`close`), so a journal found when
    a run starts means the last one did not (a rank died, the job was killed);
    :meth:`read_unfinished` then tells what each rank held.

    Parameters
    ----------
    folder : str or Path
        The results folder.
    ranks : int
        Ranks of this run (recorded in its first line).
    compact_lines : int
        Lines between rewrites.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     j = WorkJournal(d)
    ...     j.handed(1, WorkItem((FrameRef("/x/a.h5", 0), FrameRef("/x/a.h5", 1))))
    ...     j.handed(2, WorkItem((FrameRef("/x/b.cbf"),)))
    ...     j.returned(1)
    ...     WorkJournal.read_unfinished(d)
    {2: [FrameRef(path='/x/b.cbf', frame=None, skip=frozenset())]}
    """

    def __init__(self, folder: str | Path, ranks: int = 1, *, compact_lines: int = 10_000) -> None:
        self.path = Path(folder) / WORK_JOURNAL_NAME
        self.compact_lines = max(2, int(compact_lines))
        self._head = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "pid": os.getpid(), "ranks": ranks}
        self._out: dict[int, list[list[Any]]] = {}
        self._fh = open(self.path, "w", encoding="utf-8")
        self._lines = 0
        self._line(self._head)

    @staticmethod
    def _text(record: Mapping[str, Any]) -> str:
        return json.dumps(record, separators=(",", ":")) + "\n"

    def _line(self, record: Mapping[str, Any]) -> None:
        self._fh.write(self._text(record))
        self._fh.flush()
        self._lines += 1
        if self._lines >= self.compact_lines:
            self._compact()

    def _compact(self) -> None:
        """Rewrite the file with the items still out (written whole, then renamed over it)."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        records = [self._head, *({"rank": r, "out": refs} for r, refs in sorted(self._out.items()))]
        tmp.write_text("".join(self._text(r) for r in records), encoding="utf-8")
        os.replace(tmp, self.path)
        self._fh.close()
        self._fh = open(self.path, "a", encoding="utf-8")
        self._lines = len(records)

    def handed(self, rank: int, item: WorkItem) -> None:
        """Note that ``item`` went to ``rank``."""
        refs = [[r.path, r.frame] for r in item.refs]
        self._out[rank] = refs
        self._line({"rank": rank, "out": refs})

    def returned(self, rank: int) -> None:
        """Note that the rows of ``rank``'s item are in the results."""
        self._out.pop(rank, None)
        self._line({"rank": rank, "back": True})

    def close(self, *, clean: bool = True) -> None:
        """Close the journal; a clean end removes it."""
        if self._fh.closed:
            return
        self._fh.close()
        if clean:
            self.path.unlink(missing_ok=True)

    @staticmethod
    def read_unfinished(folder: str | Path) -> dict[int, list[FrameRef]] | None:
        """The frames each rank held when the last run stopped; None when it ended cleanly.

        A line cut by the kill is ignored.
        """
        path = Path(folder) / WORK_JOURNAL_NAME
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("%s: cannot read (%s)", path, exc.strerror or exc)
            return None
        held: dict[int, list[FrameRef]] = {}
        for line in text.splitlines():
            try:
                record = json.loads(line)
                rank = int(record["rank"])
            except (ValueError, KeyError, TypeError):
                continue
            if "out" in record:
                held[rank] = [FrameRef(str(f), None if i is None else int(i)) for f, i in record["out"]]
            else:
                held.pop(rank, None)
        return held


def describe_unfinished(held: Mapping[int, Sequence[FrameRef]], done: DoneIndex, *, max_frames: int = 8) -> str:
    """One line naming the ranks whose work items have no rows, and those frames ("" if none).

    Examples
    --------
    >>> describe_unfinished({2: [FrameRef("/x/s.h5", 3), FrameRef("/x/s.h5", 4)], 1: [FrameRef("/x/a.cbf")]},
    ...                     DoneIndex())
    'rank 1 held a.cbf; rank 2 held s.h5 frames 3, 4'
    """
    parts = []
    for rank in sorted(held):
        missing: dict[str, list[int]] = {}
        for ref in held[rank]:
            if ref.frame is None and not done.file_done(ref.path):
                missing.setdefault(ref.path, [])
            elif ref.frame is not None and (ref.path, ref.frame) not in done:
                missing.setdefault(ref.path, []).append(ref.frame)
        if not missing:
            continue
        files = []
        for path, frames in missing.items():
            name = Path(path).name
            if not frames:
                files.append(name)
                continue
            shown = ", ".join(map(str, frames[:max_frames]))
            if len(frames) > max_frames:
                shown += f" … ({len(frames)} frames)"
            files.append(f"{name} frame{'s' if len(frames) > 1 else ''} {shown}")
        parts.append(f"rank {rank} held {', '.join(files)}")
    return "; ".join(parts)
