"""Helpers of the tests that kill or stop a real command while it runs (importable from every test folder)."""

from __future__ import annotations

import subprocess
import time
from typing import Callable, Mapping, Sequence


def signal_when(cmd: Sequence[str], ready: Callable[[], bool], signum: int, *, delay_s: float = 0.0,
                env: Mapping[str, str] | None = None, while_running: Callable[[subprocess.Popen], None] | None = None,
                ready_timeout_s: float = 300.0, end_timeout_s: float = 300.0) -> tuple[int, str, str]:
    """Start ``cmd``, wait until ``ready()``, wait ``delay_s`` more, send ``signum``; the status and the output.

    ``while_running(process)`` runs just before the signal (a second run refused while the first
    lives, say). The test fails when the command ends before the signal could be sent, with its
    output; the process never outlives the call.

    Returns
    -------
    (returncode, stdout, stderr)
        ``returncode`` is ``-signum`` when the signal killed it.
    """
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(env) if env is not None else None)
    try:
        deadline = time.monotonic() + ready_timeout_s
        while not ready():
            if proc.poll() is not None:
                out, err = proc.communicate()
                raise AssertionError(f"the run ended (status {proc.returncode}) before it could be signalled:\n"
                                     + out[-2000:] + err[-2000:])
            assert time.monotonic() < deadline, f"not ready after {ready_timeout_s} s: {' '.join(cmd)}"
            time.sleep(0.01)
        if while_running is not None:
            while_running(proc)
        time.sleep(delay_s)
        assert proc.poll() is None, "the run ended before it could be signalled"
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=end_timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, stdout, stderr
