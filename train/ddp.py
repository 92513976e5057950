"""Process-group set-up and tear-down, and BatchNorm over the global batch.

``xrais train`` runs as one process, or as W processes under ``torchrun`` (which sets
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and the rendezvous variables). Only this module
knows the difference: the loop asks it for the device, wraps the model with :func:`wrap_model`
and sums metrics with :func:`all_reduce_sum`. NCCL is used with CUDA, gloo on the CPU.

BatchNorm: each process sees ``batch_size / W`` images, so plain BatchNorm would normalise
with smaller batches than a single process does. :func:`convert_batchnorm` makes the
statistics those of the global batch: :class:`torch.nn.SyncBatchNorm` on CUDA, and on the CPU
(where SyncBatchNorm refuses CPU tensors) :class:`CrossProcessBatchNorm2d`, which sums the
statistics with autograd-aware all-reduces. With it, W processes reproduce one process's
updates to float rounding.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn

from xrais.parallel import torch_device

__all__ = ["DistInfo", "setup_distributed", "teardown_distributed", "all_reduce_sum", "all_reduce_max",
           "broadcast_object", "all_gather_object", "barrier", "hold_out_dir",
           "wrap_model",
           "convert_batchnorm", "CrossProcessBatchNorm2d", "pick_device"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands.

    Attributes
    ----------
    rank, local_rank, world_size : int
        Global rank, rank on this node, number of processes (1 without torchrun).
    device : torch.device
    local_world_size : int
        Processes on this node (torchrun's ``LOCAL_WORLD_SIZE``; 1 without torchrun).
    """

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    local_world_size: int = 1

    @property
    def distributed(self) -> bool:
        """True when more than one process trains."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes files."""
        return self.rank == 0


def pick_device(choice: str, local_rank: int = 0) -> torch.device:
    """``cuda:<local_rank>`` or ``cpu`` for ``choice`` in auto/cpu/cuda, made this process's current device.

    Raises
    ------
    ConfigError
        ``cuda`` asked for on a machine without a CUDA device.
    """
    device = torch_device(choice, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def setup_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group when started by torchrun; otherwise describe the single process.

    Parameters
    ----------
    device : {"auto", "cpu", "cuda"}
    timeout_s : float
        Collective timeout in seconds.

    Returns
    -------
    DistInfo
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
        log.info("rank %d/%d on %s (%s)", rank, world, dev, backend)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world, device=dev, local_world_size=local_world)


def teardown_distributed() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: Tensor, info: DistInfo) -> Tensor:
    """Element-wise sum of ``values`` over all processes (returned unchanged for one process)."""
    if info.distributed:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_reduce_max(value: int, info: DistInfo) -> int:
    """The largest of every process's ``value`` (a small integer flag; unchanged for one process)."""
    if not info.distributed:
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` (picklable) on every process, so that values computed on each rank agree bit for bit."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj: Any, info: DistInfo) -> list[Any]:
    """Every process's ``obj`` (picklable), in rank order (``[obj]`` for one process)."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


@contextlib.contextmanager
def hold_out_dir(out: str | os.PathLike[str], info: DistInfo, command: str) -> Iterator[Any]:
    """The output folder, checked and locked by rank 0; every rank raises the same error when it is refused.

    Raises
    ------
    ConfigError
        The folder is a file, lies under one, or cannot be written.
    RunLockedError
        Another live run holds it.
    """
    from xrais.errors import ConfigError, RunLockedError, XraisError
    from xrais.runs import RunLock, check_out_dir

    lock = RunLock(out, command)
    refusal: tuple[str, str] | None = None
    if info.is_main:
        try:
            check_out_dir(out, "--out")
            lock.acquire()
        except XraisError as exc:
            refusal = (type(exc).__name__, str(exc))
    refusal = broadcast_object(refusal, info)
    if refusal is not None:
        raise (RunLockedError if refusal[0] == "RunLockedError" else ConfigError)(refusal[1])
    try:
        yield lock
    finally:
        lock.release()


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op for one process)."""
    if info.distributed:
        dist.barrier()


class _GlobalSum(torch.autograd.Function):
    """Sum over processes whose gradient is the sum of the processes' gradients.

    Process r's tensor feeds every process's output, so its gradient is the sum of all the
    processes' output gradients: the backward pass is an all-reduce too.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any) -> Tensor:
        ctx.group = group
        out = x.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


def _global_sum(x: Tensor, group: Any) -> Tensor:
    return _GlobalSum.apply(x, group)


class CrossProcessBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the batch of every process together.

    Two-pass: the channel sums give the global mean, then the sums of squared deviations give
    the (biased) variance used to normalise; running statistics take the unbiased variance,
    as :class:`torch.nn.BatchNorm2d` does. The all-reduces are differentiable, so each
    process's input gradient includes what its images contribute to the other processes' loss
    through the shared mean and variance. Outside training, or without a process group, it is
    plain BatchNorm2d. The state dict is that of BatchNorm2d.
    """

    group: Any = None

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        dtype = x.dtype
        x = x.float()  # statistics in float32 also under autocast
        c = x.shape[1]
        count = torch.tensor([x.numel() / c], dtype=x.dtype, device=x.device)
        n = _global_sum(count, self.group)
        mean = _global_sum(x.sum(dim=(0, 2, 3)), self.group) / n
        centred = x - mean.view(1, c, 1, 1)
        var = _global_sum(centred.square().sum(dim=(0, 2, 3)), self.group) / n
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)).clamp(min=1), alpha=m)
        y = centred * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y.to(dtype)


def _swap_batchnorm(module: nn.Module, group: Any) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, CrossProcessBatchNorm2d):
        new = CrossProcessBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                      module.track_running_stats, device=module.weight.device)
        new.load_state_dict(module.state_dict())
        new.group = group
        new.train(module.training)
        return new
    for name, child in module.named_children():
        new_child = _swap_batchnorm(child, group)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


def convert_batchnorm(model: nn.Module, info: DistInfo) -> nn.Module:
    """Make BatchNorm use global-batch statistics when several processes train (in place).

    :class:`torch.nn.SyncBatchNorm` on CUDA; :class:`CrossProcessBatchNorm2d` on the CPU, on
    a process group of its own so its all-reduces never interleave with DDP's gradient buckets.
    Parameters and buffers keep their names, so checkpoints are unchanged.
    """
    if not info.distributed:
        return model
    if info.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _swap_batchnorm(model, dist.new_group(backend="gloo"))


def wrap_model(model: nn.Module, info: DistInfo) -> nn.Module:
    """The model wrapped in DistributedDataParallel when several processes train."""
    if not info.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)
