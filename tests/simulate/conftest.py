"""Fixtures of the simulator tests."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Callable

import numpy as np
import pytest


@pytest.fixture
def run_under_cudasim(tmp_path) -> Callable[[str], np.lib.npyio.NpzFile]:
    """Run a script under the numba-cuda simulator in a child process; return the arrays it saved.

    The simulator must be chosen before numba-cuda is imported, hence the child process. The
    script gets the output path as ``sys.argv[1]`` and saves its arrays there with ``np.savez``.
    """
    pytest.importorskip("numba.cuda")

    def run(script: str) -> np.lib.npyio.NpzFile:
        result = tmp_path / "images.npz"
        env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
        proc = subprocess.run([sys.executable, "-c", script, str(result)], env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return np.load(result)

    return run
