"""Helpers of the training tests: child-process commands and environment."""

from __future__ import annotations

import os
import subprocess
import sys

__all__ = ["SMALL_RUN", "child_env", "xrais_command", "torchrun_command", "run_checked"]

#: Arguments shared by the small runs that are compared with one another (one shard: 8 images).
SMALL_RUN = ["--task", "resolution", "--arch", "resnet18", "--epochs", "2", "--batch-size", "8",
             "--val-fraction", "0.25", "--workers", "1", "--seed", "3", "--device", "cpu"]


def child_env() -> dict[str, str]:
    """Environment of a training child process: one thread, no stray rendezvous variables."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def xrais_command(*args: str) -> list[str]:
    """``python -m xrais.cli ARGS`` with this interpreter."""
    return [sys.executable, "-m", "xrais.cli", *args]


def torchrun_command(nproc: int, *args: str) -> list[str]:
    """``torchrun --standalone --nproc_per_node N -m xrais.cli ARGS``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "xrais.cli", *args]


def run_checked(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc
