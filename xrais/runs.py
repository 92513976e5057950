"""What every long run shares: its output folder, its lock, stopping on signals, flushing, exit status.

A long run (``simulate``, ``condition``, ``infer``, ``train``, ``integrate``, ``merge``,
``pipeline``) follows the same rules:

* **The output folder is checked first** (:func:`check_out_dir`, :func:`check_out_file`): an
  existing regular file, a path under a file or an unwritable place is one clear
  :class:`~xrais.errors.ConfigError`, never a traceback.
* **One run per folder** (:class:`RunLock`): ``OUT/.xrais.lock`` holds the owner's host, pid,
  process start time and command. A second run is refused with one line naming the first; a
  lock left by a dead process (same host, pid gone or reused) is taken over with a warning.
* **SIGTERM and SIGINT finish the current item** (:func:`stop_on_signals`): the handler only
  sets a :class:`StopRequest`; the run checks it between items, writes what it finished and
  returns; the command then exits with ``128 + signal`` (130 for SIGINT, 143 for SIGTERM). A
  second signal stops at once (finished work is already on disk).
* **Finished work reaches disk every few items or seconds** (:class:`FlushSchedule`).
* **Exit status** (:data:`EXIT_OK`, :data:`EXIT_FAILED`, :data:`EXIT_USAGE`): 0 only when every
  input succeeded; 1 when some failed (the rest are done) or the command could not finish;
  2 for usage errors (bad option, config value, unusable or busy ``--out``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from xrais.errors import ConfigError, RunInterrupted, RunLockedError

__all__ = [
    "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_STATUS_HELP", "exit_status",
    "check_out_dir", "check_out_dir_collectively", "check_out_file", "RunLock", "LOCK_NAME",
    "StopRequest", "stop_on_signals", "FlushSchedule",
]

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_STATUS_HELP = (
    "Exit status: 0 when every input succeeded; 1 when some inputs failed (the rest were done) or the "
    "command could not finish; 2 for usage errors (bad option or config value, an unusable or busy --out); "
    "128+N when stopped by signal N (130 SIGINT, 143 SIGTERM) after saving finished work: run the same "
    "command again to resume."
)
LOCK_NAME = ".xrais.lock"


def exit_status(failed: int, stop: "StopRequest | None" = None) -> int:
    """The exit status of a run: interrupted (128 + signal), some inputs failed (1), or 0.

    Examples
    --------
    >>> exit_status(0), exit_status(3)
    (0, 1)
    """
    if stop is not None and stop.signum is not None:
        return 128 + int(stop.signum)
    return EXIT_FAILED if failed else EXIT_OK


# --- output folders ------------------------------------------------------------------------------

def _first_file_above(path: Path) -> Path | None:
    for parent in [path, *path.parents]:
        if parent.exists():
            return parent if not parent.is_dir() else None
    return None


def check_out_dir(path: str | Path, option: str = "--out") -> Path:
    """Create an output folder (with its parents) and check that files can be written in it.

    Parameters
    ----------
    path : str or Path
    option : str
        How messages name the setting (``--out``, ``out_dir``).

    Returns
    -------
    Path

    Raises
    ------
    ConfigError
        The path is an existing file, lies under a file, or cannot be created or written.
    """
    out = Path(path)
    blocker = _first_file_above(out)
    if blocker is not None:
        what = "is an existing file" if blocker == out else f"lies under {blocker}, which is a file"
        raise ConfigError(f"{out}: {option} must be a folder, but it {what}")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".xrais-write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{out}: {option} folder cannot be created or written ({exc.strerror or exc})") from None
    return out


def check_out_dir_collectively(path: str | Path, comm: Any = None, option: str = "--out") -> Path:
    """:func:`check_out_dir` on rank 0 only; under MPI every rank raises the same one-line error.

    Parameters
    ----------
    path : str or Path
    comm : mpi4py communicator, optional
        None (or one rank): the same as :func:`check_out_dir`.
    option : str
    """
    rank = comm.Get_rank() if comm is not None else 0
    problem = None
    if rank == 0:
        try:
            check_out_dir(path, option)
        except ConfigError as exc:
            problem = str(exc)
    if comm is not None and comm.Get_size() > 1:
        problem = comm.bcast(problem, root=0)
    if problem is not None:
        raise ConfigError(problem)
    return Path(path)


def check_out_file(path: str | Path, option: str = "--out") -> Path:
    """Check that an output file can be written: its folder is created and writable, it is not a folder.

    Raises
    ------
    ConfigError
        The path is a folder, or its folder cannot be created or written.
    """
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"{target}: {option} must be a file name, but it is a folder")
    blocker = _first_file_above(target.parent)
    if blocker is not None:
        raise ConfigError(f"{target}: {option} cannot be written: it lies under {blocker}, which is a file")
    check_out_dir(target.parent, option)
    return target


# --- one run per folder --------------------------------------------------------------------------

def _process_start(pid: int) -> str | None:
    """The start time of a process in clock ticks since boot (Linux ``/proc``), to tell a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An output folder held by one run: ``FOLDER/.xrais.lock`` while the run lives.

    Under MPI only rank 0 takes the lock; every rank raises the same error when it is refused.

    Parameters
    ----------
    folder : str or Path
        The run's output folder (created if missing).
    command : str
        What holds it, for the message a second run gets (``"xrais infer"``).
    comm : mpi4py communicator, optional
    name : str, optional
        The lock file's name; a run whose output is one file locks ``.FILE.xrais.lock`` beside
        it, so other outputs in that folder stay free.

    Raises
    ------
    RunLockedError
        Another live run holds the folder (its host, pid, command and start are named).

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d, RunLock(d, "xrais demo") as lock:
    ...     lock.path.name
    '.xrais.lock'
    """

    def __init__(self, folder: str | Path, command: str, comm: Any = None, name: str = LOCK_NAME) -> None:
        self.folder = Path(folder)
        self.path = self.folder / name
        self.command = command
        self.comm = comm
        self.held = False

    def _record(self) -> dict[str, Any]:
        return {"host": socket.gethostname(), "pid": os.getpid(), "process_start": _process_start(os.getpid()),
                "command": self.command, "argv": sys.argv,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    def _read(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _stale(self, owner: dict[str, Any]) -> bool:
        if not owner:  # unreadable: a lock cut by a crash while it was written
            return True
        if owner.get("host") != socket.gethostname():
            return False
        pid = int(owner.get("pid", -1))
        if pid == os.getpid():
            return False
        if pid <= 0 or not _pid_alive(pid):
            return True
        start = owner.get("process_start")
        return start is not None and _process_start(pid) not in (None, start)

    def _try_acquire(self) -> str | None:
        """Take the lock; None when taken, else the message of the refusal."""
        self.folder.mkdir(parents=True, exist_ok=True)
        mine = self.path.with_name(f"{self.path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
        mine.write_text(json.dumps(self._record()))
        try:
            for _ in range(3):
                try:
                    os.link(mine, self.path)  # atomic: fails when the lock exists
                    self.held = True
                    return None
                except FileExistsError:
                    pass
                owner = self._read()
                if owner is None:
                    continue
                if owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
                    return f"{self.folder}: already held by this process"
                if not self._stale(owner):
                    return (f"{self.folder}: in use by {owner.get('command', 'another xrais run')} "
                            f"(pid {owner.get('pid')} on {owner.get('host')}, since {owner.get('started')}); "
                            f"wait for it to finish or use another --out (remove {self.path} if that run is gone)")
                log.warning("%s: taking over the lock of a run that is gone (%s, pid %s on %s, since %s)",
                            self.folder, owner.get("command"), owner.get("pid"), owner.get("host"),
                            owner.get("started"))
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass
            return f"{self.folder}: could not take {self.path} (another run keeps taking it)"
        finally:
            mine.unlink(missing_ok=True)

    def acquire(self) -> "RunLock":
        """Take the folder (collective under MPI)."""
        rank = self.comm.Get_rank() if self.comm is not None else 0
        refusal = self._try_acquire() if rank == 0 else None
        if self.comm is not None and self.comm.Get_size() > 1:
            refusal = self.comm.bcast(refusal, root=0)
        if refusal is not None:
            raise RunLockedError(refusal)
        return self

    def release(self) -> None:
        """Give the folder back (only a lock this process holds is removed)."""
        if not self.held:
            return
        owner = self._read()
        if owner and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


# --- stopping on signals -------------------------------------------------------------------------

class StopRequest(threading.Event):
    """A request to stop after the current item; ``signum`` is the signal that asked (None: not asked).

    It is a :class:`threading.Event`, so a run that takes a ``stop`` event takes this too.
    """

    signum: int | None = None

    def request(self, signum: int) -> None:
        """Ask the run to stop (as a signal would)."""
        self.signum = int(signum)
        self.set()

    def check(self, where: str = "") -> None:
        """Raise :class:`~xrais.errors.RunInterrupted` when a stop was asked."""
        if self.is_set():
            raise RunInterrupted(self.signum or signal.SIGTERM, where)


@contextmanager
def stop_on_signals(signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT),
                    stop: StopRequest | None = None) -> Iterator[StopRequest]:
    """While inside, SIGTERM and SIGINT set the yielded :class:`StopRequest` instead of killing.

    A second signal restores the default behaviour and raises :class:`KeyboardInterrupt` (or
    dies by SIGTERM), so a user can always stop a run that does not stop by itself. Outside the
    main thread (where signals cannot be caught) nothing is installed.

    Examples
    --------
    >>> import os, signal
    >>> with stop_on_signals() as stop:
    ...     os.kill(os.getpid(), signal.SIGTERM)
    ...     stop.is_set(), stop.signum == signal.SIGTERM
    (True, True)
    """
    stop = stop if stop is not None else StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {s: signal.getsignal(s) for s in signals}

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():  # the second signal: stop now
            for s, h in previous.items():
                signal.signal(s, h)
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)
            return
        log.warning("%s received: finishing the current item, then stopping (send it again to stop now)",
                    signal.Signals(signum).name)
        stop.request(signum)

    for s in signals:
        signal.signal(s, handler)
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# --- flushing cadence ----------------------------------------------------------------------------

class FlushSchedule:
    """When finished work is due on disk: every ``every_items`` items or ``every_s`` seconds.

    Examples
    --------
    >>> f = FlushSchedule(every_items=2, every_s=3600)
    >>> [f.add() for _ in range(4)]
    [False, True, False, True]
    """

    def __init__(self, every_items: int = 8, every_s: float = 30.0) -> None:
        if every_items < 1 or every_s <= 0:
            raise ConfigError(f"flush interval: expected ≥ 1 item and > 0 s, got {every_items} and {every_s}")
        self.every_items, self.every_s = int(every_items), float(every_s)
        self.pending = 0
        self.last = time.monotonic()

    def add(self, n: int = 1) -> bool:
        """Count ``n`` finished items; True when a flush is due (the count then starts again)."""
        self.pending += n
        if self.pending >= self.every_items or (self.pending and time.monotonic() - self.last >= self.every_s):
            self.flushed()
            return True
        return False

    def flushed(self) -> None:
        """Note a flush made for another reason (end of run, stop)."""
        self.pending = 0
        self.last = time.monotonic()
