"""Run inference: one process, or a manager and workers under ``mpirun``.

One process reads, conditions and scores the work items itself. Under ``mpirun -n R`` rank 0
is the manager: it hashes the models, opens the results folder, finds the work (or follows
the experiment) and hands out work items one at a time to whichever worker asks; it writes
the rows as they come back. Ranks 1 … R−1 are workers: each loads the models once, on its
node's GPU (several ranks share one) or on the CPU with the node's cores shared between the
node's workers, and scores what it is given. The messages are small (work items out, rows
back); every rank waits for them by polling with short sleeps, so an idle rank uses no CPU.

Stopping: a fixed list stops when everything is scored; following an experiment stops at the
end of stdin, or after ``idle_timeout_s`` with nothing new and nothing left to do. Setting the
``stop`` event (``xrais infer`` sets it on SIGTERM or SIGINT) stops any run once the work
items being scored are done and their rows written. What was scored is always in the results
folder (see :mod:`xrais.infer.results`).

The manager notes in the folder's work journal which item went to which rank and when its
rows came back (:class:`~xrais.infer.work.WorkJournal`). If a run ends without a clean
stop (a rank died and ``mpiexec`` aborted the job, or the job was killed), the next run names
the ranks whose items have no rows, and scores those frames again with the rest.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

from xrais.errors import XraisError
from xrais.parallel import torch_device
from xrais.infer.config import InferConfig, WatchConfig
from xrais.infer.results import ResultsWriter
from xrais.infer.scoring import Scorer, describe_models, empty_row, error_text, result_columns
from xrais.infer.watch import make_source
from xrais.infer.work import DoneIndex, FrameRef, WorkItem, WorkJournal, describe_unfinished, make_items

__all__ = ["InferReport", "run_inference", "resolve_device"]

log = logging.getLogger(__name__)

TAG_TO_MANAGER = 71
TAG_TO_WORKER = 72
_MESSAGE_POLL_S = 0.002


@dataclass
class InferReport:
    """What a run did (on the manager rank, or the only one).

    Attributes
    ----------
    out_dir : Path
    ranks : int
        MPI ranks (1 without MPI).
    rows_before : int
        Rows already in the results when the run started.
    rows_written, errors : int
        Rows this run wrote, and how many of them hold an error.
    seconds : float
        Wall time of the run.
    stage_s : dict of str to float
        Sums of ``read_s``, ``condition_s`` and ``score_s`` over the rows without error.
    interrupted : bool
        Stopped by the ``stop`` event (a signal) or Ctrl-C before everything was scored.
    first_errors : list of str
        The first few error texts.
    """

    out_dir: Path
    ranks: int = 1
    rows_before: int = 0
    rows_written: int = 0
    errors: int = 0
    seconds: float = 0.0
    stage_s: dict[str, float] = field(default_factory=lambda: {"read_s": 0.0, "spots_s": 0.0, "condition_s": 0.0,
                                                               "score_s": 0.0})
    interrupted: bool = False
    first_errors: list[str] = field(default_factory=list)

    def add(self, rows: Sequence[dict[str, Any]]) -> None:
        for row in rows:
            self.rows_written += 1
            if row.get("error"):
                self.errors += 1
                if len(self.first_errors) < 10:
                    self.first_errors.append(str(row["error"]))
            else:
                for key in self.stage_s:
                    value = float(row.get(key) or 0.0)
                    self.stage_s[key] += value if math.isfinite(value) else 0.0

    @property
    def images_per_s(self) -> float:
        """Rows written per second of wall time."""
        return self.rows_written / self.seconds if self.seconds > 0 else 0.0


def _filter(refs: Sequence[FrameRef], done: DoneIndex, queued: set[tuple[str, int | None]]) -> list[FrameRef]:
    """Drop frames already done or already queued; give "every frame" entries the done frames to skip."""
    out = []
    for r in refs:
        key = (r.path, r.frame)
        if key in queued:
            continue
        if r.frame is None:
            if done.file_done(r.path):
                continue
            r = FrameRef(r.path, None, frozenset(done.frames.get(r.path, ())) | r.skip)
        elif (r.path, r.frame) in done:
            continue
        queued.add(key)
        out.append(r)
    return out


def resolve_device(requested: str, local_rank: int = 0) -> str:
    """The torch device a rank uses, as a string (:func:`xrais.parallel.torch_device`).

    ``auto`` is a GPU when one is present, else the CPU; ranks of a node share its GPUs in turn.

    Raises
    ------
    ConfigError
        CUDA asked for and not available.
    """
    return str(torch_device(requested, local_rank))


def _node_layout(comm: Any) -> tuple[int, int]:
    """(this rank's index on its node, number of worker ranks on its node); collective."""
    if comm is None:
        return 0, 1
    from mpi4py import MPI

    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return local.Get_rank(), local.allreduce(0 if comm.Get_rank() == 0 else 1)
    finally:
        local.Free()


def _set_threads(config: InferConfig, workers_on_node: int, mpi: bool) -> None:
    """Share the node's cores between its workers (torch and the Numba conditioning kernel)."""
    if config.threads is None and not mpi:
        return
    import numba
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = config.threads or max(1, cores // max(1, workers_on_node))
    torch.set_num_threads(threads)
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))


def _item_failed(scorer: Scorer, item: WorkItem, exc: BaseException) -> list[dict[str, Any]]:
    rows = []
    for ref in item.refs:
        row = empty_row(scorer.columns, ref.path, ref.frame if ref.frame is not None else -1)
        row.update(error=error_text(exc), rank=scorer.rank, models=scorer.model_names)
        rows.append(row)
    return rows


def _score(scorer: Scorer, item: WorkItem) -> list[dict[str, Any]]:
    try:
        return scorer.score_item(item)
    except Exception as exc:  # the scorer turns per-frame problems into rows; this is the last guard
        log.exception("work item failed")
        return _item_failed(scorer, item, exc)


def run_inference(
    config: InferConfig,
    inputs: Sequence[str | Path] = (),
    out_dir: str | Path = "results",
    *,
    watch: WatchConfig | None = None,
    comm: Any = None,
    on_rows: Callable[[list[dict[str, Any]]], None] | None = None,
    stop: threading.Event | None = None,
    stdin: TextIO | None = None,
    recursive: bool = False,
) -> InferReport | None:
    """Score images into a results folder, resuming what is there.

    Parameters
    ----------
    config : InferConfig
    inputs : sequence of str or Path
        Files, folders, globs; ``"-"`` reads more paths from ``stdin``.
    out_dir : str or Path
        Results folder (see :mod:`xrais.infer.results`).
    watch : WatchConfig, optional
        Follow a folder (or stdin) after the named inputs.
    comm : mpi4py communicator, optional
        With more than one rank, rank 0 manages and the others score.
    on_rows : callable, optional
        Called on the manager with each batch of rows as they are written.
    stop : threading.Event, optional
        Set it to stop the run: the items being scored are finished and written, no more are
        started (a :class:`xrais.runs.StopRequest` from :func:`xrais.runs.stop_on_signals`).
    stdin : text stream, optional
        Where ``"-"`` reads paths from (default ``sys.stdin``).
    recursive : bool
        Also take the files in sub-folders of named folders and of folders matched by globs.

    Returns
    -------
    InferReport or None
        None on worker ranks.

    Raises
    ------
    ConfigError, CheckpointError
        Bad settings, a results folder of other settings, unusable models (raised on the
        manager; workers then return None).
    """
    size = comm.Get_size() if comm is not None else 1
    rank = comm.Get_rank() if comm is not None else 0
    local_rank, workers_on_node = _node_layout(comm if size > 1 else None)
    if rank != 0 or size == 1:
        _set_threads(config, workers_on_node, size > 1)
    read_retry_s = watch.settle_s if watch is not None else 0.0
    if size > 1 and rank != 0:
        _run_worker(config, comm, local_rank, read_retry_s)
        return None
    t0 = time.perf_counter()
    try:
        infos = describe_models(config.models)
        columns = result_columns(infos, config.quadrants, config.spots)
        writer = ResultsWriter(out_dir, config, infos, columns, ranks=size)
    except BaseException:
        if size > 1:
            comm.bcast(None, root=0)
        raise
    report = InferReport(out_dir=Path(out_dir), ranks=size, rows_before=writer.rows_before)
    source: Any = None
    journal: WorkJournal | None = None
    if size > 1:
        comm.bcast(infos, root=0)

    def record(rows: list[dict[str, Any]]) -> None:
        writer.write(rows)  # no rows: flushes the tables if they have waited flush_s
        report.add(rows)
        if on_rows is not None and rows:
            on_rows(rows)

    loop = None
    clean = False
    try:
        held = WorkJournal.read_unfinished(writer.out)
        unfinished = describe_unfinished(held, writer.done) if held else ""
        if unfinished:
            log.warning("%s: the last run did not end cleanly (a rank died or the job was killed): %s; "
                        "those frames are scored again", writer.out, unfinished)
        journal = WorkJournal(writer.out, ranks=size)
        source = make_source(inputs, watch, writer.done, stdin, recursive=recursive)
        loop = _ManagerLoop(config, watch, source, writer.done, record, stop, journal)
        if size == 1:
            scorer = Scorer(config, infos, device=resolve_device(config.device, local_rank), rank=0,
                            read_retry_s=read_retry_s)
            loop.run_single(scorer)
        else:
            loop.run_mpi(comm)
        clean = True
        report.interrupted = loop.stopped_early
    except KeyboardInterrupt:
        report.interrupted = True
    finally:
        if size > 1 and (loop is None or not loop.workers_stopped):
            for w in range(1, size):  # they wait for work that will not come
                comm.send(None, dest=w, tag=TAG_TO_WORKER)
        if source is not None:
            source.close()
        writer.close()
        if journal is not None:
            journal.close(clean=clean)
        report.seconds = time.perf_counter() - t0
    return report


class _ManagerLoop:
    """Polls the source, hands out work items and records rows (the manager's side)."""

    def __init__(self, config: InferConfig, watch: WatchConfig | None, source: Any, done: DoneIndex,
                 record: Callable[[list[dict[str, Any]]], None], stop: threading.Event | None,
                 journal: WorkJournal | None = None) -> None:
        self.config, self.source, self.done, self.record = config, source, done, record
        self.stop, self.journal = stop, journal
        self.stopped_early = False
        self.poll_s = watch.poll_s if watch is not None else 0.0
        self.idle_timeout_s = watch.idle_timeout_s if watch is not None else None
        self.pending: deque[WorkItem] = deque()
        self.queued: set[tuple[str, int | None]] = set()
        self.last_poll = -float("inf")
        self.last_activity = time.monotonic()
        self.workers_stopped = False

    def _poll(self, limit: int) -> None:
        now = time.monotonic()
        if self.source.exhausted or len(self.pending) >= limit or now - self.last_poll < self.poll_s:
            return
        self.last_poll = now
        refs = _filter(self.source.poll(), self.done, self.queued)
        if refs:
            self.pending.extend(make_items(refs, self.config.chunk_frames))
            self.last_activity = now

    def _stopped(self) -> bool:
        if self.stop is not None and self.stop.is_set():
            self.stopped_early = self.stopped_early or bool(self.pending) or not self.source.exhausted
            return True
        return False

    def _handed(self, rank: int, item: WorkItem) -> None:
        if self.journal is not None:
            self.journal.handed(rank, item)

    def _returned(self, rank: int) -> None:
        if self.journal is not None:
            self.journal.returned(rank)

    def _idle_out(self) -> bool:
        return self.idle_timeout_s is not None and time.monotonic() - self.last_activity >= self.idle_timeout_s

    def _wait(self) -> None:
        self.record([])
        time.sleep(min(max(self.poll_s, _MESSAGE_POLL_S), 0.05))

    def run_single(self, scorer: Scorer) -> None:
        while not self._stopped():
            self._poll(limit=1)
            if self.pending:
                item = self.pending.popleft()
                self._handed(0, item)
                self.record(_score(scorer, item))
                self._returned(0)
                self.last_activity = time.monotonic()
                continue
            if self.source.exhausted or self._idle_out():
                return
            self._wait()

    def run_mpi(self, comm: Any) -> None:
        from mpi4py import MPI

        workers = set(range(1, comm.Get_size()))
        heard: set[int] = set()
        failed: dict[int, str] = {}
        idle: deque[int] = deque()
        busy: dict[int, WorkItem] = {}
        status = MPI.Status()
        try:
            while True:
                got = False
                while comm.Iprobe(source=MPI.ANY_SOURCE, tag=TAG_TO_MANAGER, status=status):
                    src = status.Get_source()
                    kind, payload = comm.recv(source=src, tag=TAG_TO_MANAGER)
                    got = True
                    heard.add(src)
                    if kind == "failed":
                        failed[src] = str(payload)
                        continue
                    returned = busy.pop(src, None)
                    if payload:
                        self.record(payload)
                        self.last_activity = time.monotonic()
                    if returned is not None:
                        self._returned(src)
                    idle.append(src)
                everyone_heard = heard >= workers
                if failed or self._stopped():
                    if not busy and everyone_heard:
                        break
                else:
                    self._poll(limit=2 * len(workers))
                    while idle and self.pending:
                        w = idle.popleft()
                        item = self.pending.popleft()
                        self._handed(w, item)
                        comm.send(item, dest=w, tag=TAG_TO_WORKER)
                        busy[w] = item
                    if not busy and not self.pending and everyone_heard and (self.source.exhausted or self._idle_out()):
                        break
                if not got:
                    self.record([])
                    time.sleep(_MESSAGE_POLL_S if not self.poll_s or busy else min(self.poll_s, 0.05))
        finally:
            self.workers_stopped = True
            for w in sorted(workers):
                comm.send(None, dest=w, tag=TAG_TO_WORKER)
        if failed:
            rank, message = min(failed.items())
            raise XraisError(f"worker rank {rank} could not start: {message}")


def _recv(comm: Any, tag: int) -> Any:
    while not comm.Iprobe(source=0, tag=tag):
        time.sleep(_MESSAGE_POLL_S)
    return comm.recv(source=0, tag=tag)


def _run_worker(config: InferConfig, comm: Any, local_rank: int, read_retry_s: float) -> None:
    infos = comm.bcast(None, root=0)
    if infos is None:  # the manager could not start; it reports why
        return
    rank = comm.Get_rank()
    try:
        scorer = Scorer(config, infos, device=resolve_device(config.device, local_rank), rank=rank,
                        read_retry_s=read_retry_s)
    except Exception as exc:
        comm.send(("failed", error_text(exc)), dest=0, tag=TAG_TO_MANAGER)
        _recv(comm, TAG_TO_WORKER)
        return
    comm.send(("ready", []), dest=0, tag=TAG_TO_MANAGER)
    try:
        while True:
            item = _recv(comm, TAG_TO_WORKER)
            if item is None:
                return
            comm.send(("rows", _score(scorer, item)), dest=0, tag=TAG_TO_MANAGER)
    except KeyboardInterrupt:
        return
