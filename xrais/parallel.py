"""MPI and GPU placement shared by the stages that run under ``mpirun``.

A stage asks :func:`mpi_world` for the communicator; it is None for a plain single process, so
MPI (mpi4py and an MPI library) is needed only when the command is started by
``mpirun``/``mpiexec`` with more than one rank. :func:`local_rank` and :func:`gpu_for_rank` put
the ranks of one node on its GPUs in turn, so several ranks may share a GPU;
:func:`torch_device` turns a ``--device`` choice into the torch device a process or rank uses.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["mpi_world", "local_rank", "gpu_for_rank", "torch_device"]

_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS")


def mpi_world() -> Any:
    """The MPI world communicator when started by mpirun/mpiexec with more than one rank, else None."""
    size = next((int(os.environ[v]) for v in _SIZE_VARIABLES if os.environ.get(v)), 1)
    if size <= 1:
        return None
    from mpi4py import MPI

    return MPI.COMM_WORLD


def local_rank(comm: Any) -> int:
    """This rank's index among the ranks on its node (0 without MPI)."""
    if comm is None:
        return 0
    return comm.Split_type(split_type=1).Get_rank()  # MPI.COMM_TYPE_SHARED: ranks on this node


def gpu_for_rank(comm: Any, n_gpus: int) -> int:
    """The GPU index this rank uses: its local rank modulo the node's GPU count (−1 without GPUs)."""
    if n_gpus <= 0:
        return -1
    return local_rank(comm) % n_gpus


def torch_device(choice: str = "auto", local_rank: int = 0) -> Any:
    """The torch device for a ``--device`` choice: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    ``auto`` is a GPU when torch finds one, else the CPU. ``auto`` and ``cuda`` put the ranks
    of a node on its GPUs in turn (``local_rank`` modulo the GPU count), so several ranks may
    share a GPU; ``cuda:N`` is taken as given.

    Raises
    ------
    ConfigError
        An unknown choice, or CUDA asked for on a machine where torch finds no GPU.
    """
    import torch

    from xrais.errors import ConfigError

    if choice not in ("auto", "cpu", "cuda") and not (choice.startswith("cuda:") and choice[5:].isdigit()):
        raise ConfigError(f"device {choice!r}: expected auto, cpu, cuda or cuda:N")
    has_cuda = torch.cuda.is_available()
    if choice == "cpu" or (choice == "auto" and not has_cuda):
        return torch.device("cpu")
    if not has_cuda:
        raise ConfigError(f"device {choice!r}: no CUDA device is available; use 'cpu' or 'auto'")
    if choice.startswith("cuda:"):
        return torch.device(choice)
    return torch.device("cuda", local_rank % torch.cuda.device_count())
