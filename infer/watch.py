"""Sources of frames to score: a fixed list, a folder an experiment is writing into, or stdin.

Each source has ``poll() -> list[FrameRef]`` (what is new since the last call) and
``exhausted`` (nothing more will come). The runner polls its source and hands the frames to
the ranks; it stops when the source is exhausted and everything is scored, when the idle
timeout passes with nothing new, or when it is interrupted.

Following a folder (:class:`FolderWatcher`):

* A file (other than HDF5) is scored once its size and time stamp have stayed the same for
  ``settle_s`` seconds (files already old when first seen count as settled), so a file still
  being copied or written is not read half-way.
* An HDF5 file is opened whenever it changes and its new frames are scored as they appear;
  while the file keeps changing its newest frame is held back (the writer may be filling it)
  until a newer frame arrives or the file settles. EIGER master files are left to their data
  files, which arrive one by one while the master's links point to files not yet written.

:class:`RunStats` keeps the running summary shown while following (images, rate, last values).
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, TextIO

from xrais.errors import ConfigError
from xrais.infer.config import WatchConfig
from xrais.infer.work import (DoneIndex, FrameRef, absolute, count_frames, expand_inputs, is_eiger_data_file, is_hdf5,
                              iter_stdin_paths, list_folder, plan_refs)

__all__ = ["StaticSource", "FolderWatcher", "StdinFollower", "ChainSource", "RunStats", "make_source"]


class StaticSource:
    """Frames known in advance: all of them at the first poll, then exhausted."""

    def __init__(self, refs: Sequence[FrameRef]) -> None:
        self._refs = list(refs)
        self.exhausted = False

    def poll(self) -> list[FrameRef]:
        refs, self._refs = self._refs, []
        self.exhausted = True
        return refs

    def close(self) -> None:
        """Nothing to release."""


@dataclass
class _FileState:
    signature: tuple[int, int]
    since: float
    hdf5: bool | None = None
    emitted: bool = False
    frames_emitted: int = 0
    counted: tuple[tuple[int, int], bool] | None = None  # (signature, settled) of the last count


def _is_master_with_data(path: Path) -> bool:
    name = path.name
    stem, _, ext = name.rpartition("_master")
    return bool(stem) and ext.startswith(".") and any(path.parent.glob(f"{stem}_data_*{ext}"))


class FolderWatcher:
    """New files and new frames in a folder.

    Parameters
    ----------
    folder : str or Path
    pattern : str
        File-name glob.
    recursive : bool
        Also look in sub-folders.
    settle_s : float
        Seconds a file's size and time stamp must stay the same before it is scored.
    clock, wall_clock : callable
        Monotonic time and wall time in seconds (replaceable in tests).
    """

    def __init__(self, folder: str | Path, *, pattern: str = "*", recursive: bool = False, settle_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time) -> None:
        self.folder = absolute(folder)
        self.pattern, self.recursive, self.settle_s = pattern, recursive, settle_s
        self._clock, self._wall = clock, wall_clock
        self._files: dict[str, _FileState] = {}
        self.exhausted = False

    def poll(self) -> list[FrameRef]:
        """Frames that became ready since the last poll, in file-name order."""
        now, wall = self._clock(), self._wall()
        refs: list[FrameRef] = []
        for path in list_folder(self.folder, self.pattern, self.recursive):
            try:
                st = path.stat()
            except OSError:  # removed between listing and looking
                continue
            key, signature = str(path), (st.st_size, st.st_mtime_ns)
            state = self._files.get(key)
            if state is None:
                old = wall - st.st_mtime >= self.settle_s
                state = _FileState(signature, since=now - (self.settle_s if old else 0.0))
                self._files[key] = state
            elif signature != state.signature:
                state.signature, state.since = signature, now
            settled = now - state.since >= self.settle_s
            if state.hdf5 is None and st.st_size >= 8:
                state.hdf5 = is_hdf5(path)
            if state.hdf5:
                refs.extend(self._hdf5_frames(path, state, settled))
            elif settled and not state.emitted and st.st_size > 0:
                state.emitted = True
                refs.append(FrameRef(key, None))
        return refs

    def _hdf5_frames(self, path: Path, state: _FileState, settled: bool) -> list[FrameRef]:
        if not is_eiger_data_file(path) and _is_master_with_data(path):
            return []
        if state.counted == (state.signature, settled):
            return []
        n = count_frames(path)
        if n is None:  # not readable yet (being written, locked): try again when it changes or settles
            if settled and state.frames_emitted == 0 and not state.emitted:
                state.emitted, state.counted = True, (state.signature, settled)
                return [FrameRef(str(path), None)]  # still unreadable once settled: its error row
            return []
        state.counted = (state.signature, settled)
        ready = n if settled else n - 1
        start, state.frames_emitted = state.frames_emitted, max(state.frames_emitted, ready)
        return [FrameRef(str(path), i) for i in range(start, ready)]

    def close(self) -> None:
        """Nothing to release."""


class StdinFollower:
    """File paths read from a text stream (one per line) as a producer writes them.

    The files are taken as complete when named. The stream is read by a daemon thread, so a
    blocked read never stops the run; the source is exhausted at the end of the stream.
    """

    def __init__(self, stream: TextIO) -> None:
        self._queue: queue.Queue[Path | None] = queue.Queue()
        self._ended = False
        self.exhausted = False
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True, name="xrais-stdin")
        self._thread.start()

    def _read(self, stream: Iterable[str]) -> None:
        try:
            for path in iter_stdin_paths(stream):
                self._queue.put(path)
        finally:
            self._queue.put(None)

    def poll(self) -> list[FrameRef]:
        refs: list[FrameRef] = []
        while True:
            try:
                path = self._queue.get_nowait()
            except queue.Empty:
                break
            if path is None:
                self._ended = True
                continue
            n = count_frames(path) if is_hdf5(path) else None
            refs.extend([FrameRef(str(path), None)] if n is None else [FrameRef(str(path), i) for i in range(n)])
        self.exhausted = self._ended and self._queue.empty()
        return refs

    def close(self) -> None:
        """The reading thread is a daemon and ends with the process."""


@dataclass
class RunStats:
    """Running totals of the rows of a run, for the live summary.

    Attributes
    ----------
    scored, errors : int
        Rows without and with an error.
    last : dict
        The last row without an error.
    window_s : float
        Span of the rate estimate, seconds.
    """

    window_s: float = 30.0
    scored: int = 0
    errors: int = 0
    last: dict[str, Any] = field(default_factory=dict)
    last_error: str = ""
    started: float = field(default_factory=time.monotonic)
    _times: deque = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def update(self, rows: Iterable[Mapping[str, Any]], now: float | None = None) -> None:
        """Count ``rows`` (called on the manager as rows are written)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._add(rows, now)

    def _add(self, rows: Iterable[Mapping[str, Any]], now: float) -> None:
        for row in rows:
            if row.get("error"):
                self.errors += 1
                self.last_error = str(row["error"])
            else:
                self.scored += 1
                self.last = dict(row)
            self._times.append(now)
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()

    def rate_hz(self, now: float | None = None) -> float:
        """Rows per second over the last ``window_s`` (or since the start, if shorter)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._times and now - self._times[0] > self.window_s:
                self._times.popleft()
            span = min(self.window_s, max(now - self.started, 1e-9))
            return len(self._times) / span


def make_source(inputs: Sequence[str | Path], watch: WatchConfig | None, done: DoneIndex,
                stdin: TextIO | None = None, *, recursive: bool = False) -> Any:
    """The source of a run: the named inputs (``"-"``: paths read from ``stdin``), then the
    followed folder or stdin when ``watch`` is given.

    ``recursive`` also takes the files in sub-folders of named folders and of folders matched
    by globs (see :func:`~xrais.infer.work.expand_inputs`).

    Raises
    ------
    ConfigError
        Nothing named and nothing followed, or a followed folder that does not exist.
    """
    named = [i for i in inputs if str(i) != "-"]
    paths = expand_inputs(named, recursive=recursive) if named else []
    if any(str(i) == "-" for i in inputs):
        paths.extend(iter_stdin_paths(stdin if stdin is not None else sys.stdin))
    if watch is None:
        if not paths:
            raise ConfigError("xrais infer: no images given (name files, folders or globs, '-' for stdin, or --watch)")
        return StaticSource(plan_refs(paths, done))
    if watch.folder == "-":
        follower: Any = StdinFollower(stdin if stdin is not None else sys.stdin)
    else:
        folder = Path(watch.folder).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"--watch {watch.folder}: no such folder")
        follower = FolderWatcher(folder, pattern=watch.pattern, recursive=watch.recursive, settle_s=watch.settle_s)
    return ChainSource([StaticSource(plan_refs(paths, done)), follower]) if paths else follower


class ChainSource:
    """Sources one after another (named files first, then the followed folder)."""

    def __init__(self, sources: Sequence[Any]) -> None:
        self.sources = list(sources)

    @property
    def exhausted(self) -> bool:
        return all(s.exhausted for s in self.sources)

    def poll(self) -> list[FrameRef]:
        out: list[FrameRef] = []
        for s in self.sources:
            if not s.exhausted:
                out.extend(s.poll())
        return out

    def close(self) -> None:
        for s in self.sources:
            s.close()
