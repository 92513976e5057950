"""Training state: what a killed run needs to go on, in ``OUT/state/last.pt``.

The file is a ``torch.save`` dict that loads with ``torch.load(weights_only=True)``: tensors,
numbers, strings and lists only (configs, data provenance and the metrics history are JSON
strings). Keys::

    format          "xrais-train-state-1"
    xrais_version   str
    epoch           number of epochs completed
    batch           batches of the next epoch completed (0: saved at the end of an epoch)
    partial_sums    within an epoch: [loss sum, correct count, images] of its saved batches, all
                    processes together, or None
    epoch_lr        within an epoch: the learning rate it started with, or None
    model           state dict of the bare model (no DDP or compile prefixes)
    optimizer       SGD state dict (momentum buffers)
    scheduler       LR scheduler state dict, or None
    scaler          GradScaler state dict, or None
    rng             {"torch_cpu": uint8 tensor, "torch_cuda": [uint8 tensor, …]}
    train_config    TrainConfig JSON
    model_config    ModelConfig JSON
    data            JSON: shard files (or, simulating, the simulation: its config, seeds, sizes),
                    split sizes, input mean/std, output-layer initialisation
    images_seen     simulated runs: training images seen (all processes), else None
    history         JSON list of per-epoch metric rows
    best            JSON: epoch and value of the best checkpoint so far
    resumed_at      list of epochs at which the run was resumed

It is written to a temporary file and renamed (``os.replace``), so a kill leaves the previous
complete state. Only rank 0 writes it. A state saved within an epoch (a stop request, or
``checkpoint_every_s``) holds everything needed to go on from the next batch; states written
before ``batch`` existed read as saved at the end of an epoch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from xrais._version import __version__
from xrais.errors import CheckpointError, ConfigError
from xrais.train.config import TrainConfig, config_differences

__all__ = ["STATE_FORMAT", "state_path", "save_training_state", "load_training_state", "check_resume",
           "capture_rng", "restore_rng"]

STATE_FORMAT = "xrais-train-state-1"


def state_path(out_dir: str | os.PathLike[str]) -> Path:
    """``OUT/state/last.pt``."""
    return Path(out_dir) / "state" / "last.pt"


def capture_rng(device: torch.device) -> dict[str, Any]:
    """Torch's CPU (and CUDA, on a CUDA device) generator states."""
    rng: dict[str, Any] = {"torch_cpu": torch.get_rng_state(), "torch_cuda": []}
    if device.type == "cuda":
        rng["torch_cuda"] = [torch.cuda.get_rng_state(device)]
    return rng


def restore_rng(rng: dict[str, Any], device: torch.device) -> None:
    """Put back what :func:`capture_rng` saved (CUDA states only on a CUDA device)."""
    torch.set_rng_state(rng["torch_cpu"])
    if device.type == "cuda" and rng.get("torch_cuda"):
        torch.cuda.set_rng_state(rng["torch_cuda"][0], device)


def save_training_state(
    path: str | os.PathLike[str],
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    epoch: int,
    config: TrainConfig,
    model_config: Any,
    data: dict[str, Any],
    history: list[dict[str, Any]],
    best: dict[str, Any],
    resumed_at: list[int],
    rng: dict[str, Any],
    batch: int = 0,
    partial_sums: list[float] | None = None,
    epoch_lr: float | None = None,
    images_seen: int | None = None,
) -> Path:
    """Write the training state atomically (see the module docstring for the keys).

    Parameters
    ----------
    path : path
        Usually :func:`state_path`; parent folders are created.
    model : nn.Module
        The bare model (unwrapped from DDP / compile).
    epoch : int
        Number of epochs completed.
    batch : int
        Batches of the next epoch completed (0 at the end of an epoch).
    partial_sums : list of float, optional
        Within an epoch: loss sum, correct count and images of its saved batches.
    epoch_lr : float, optional
        Within an epoch: its starting learning rate (the metrics row records it).
    images_seen : int, optional
        Simulated runs: training images seen so far (all processes).

    Returns
    -------
    Path
    """
    path = Path(path)
    payload = {
        "format": STATE_FORMAT,
        "xrais_version": __version__,
        "epoch": int(epoch),
        "batch": int(batch),
        "partial_sums": [float(v) for v in partial_sums] if partial_sums is not None else None,
        "epoch_lr": float(epoch_lr) if epoch_lr is not None else None,
        "images_seen": int(images_seen) if images_seen is not None else None,
        "model": {k: v.detach().to("cpu") for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": rng,
        "train_config": config.model_dump_json(),
        "model_config": model_config.model_dump_json(),
        "data": json.dumps(data),
        "history": json.dumps(history),
        "best": json.dumps(best),
        "resumed_at": [int(e) for e in resumed_at],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_training_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a training state with ``torch.load(weights_only=True)``; JSON fields come back parsed.

    Returns
    -------
    dict
        As saved, with ``train_config`` a :class:`TrainConfig`, ``model_config`` a ``ModelConfig``
        and ``data``, ``history`` and ``best`` as Python objects.

    Raises
    ------
    CheckpointError
        Unreadable, truncated, of another format or with an invalid config.
    """
    from pydantic import ValidationError

    from xrais.models import ModelConfig

    path = Path(path)
    from xrais.models.checkpoint import load_torch_state

    state = load_torch_state(path, "an xrais training state")  # weights_only=True, with our own messages
    fmt = state.get("format") if isinstance(state, dict) else None
    if fmt != STATE_FORMAT:
        raise CheckpointError(f"{path}: expected format {STATE_FORMAT!r}, found {fmt!r}")
    try:
        state["train_config"] = TrainConfig.model_validate_json(state["train_config"])
        state["model_config"] = ModelConfig.model_validate_json(state["model_config"])
        for key in ("data", "history", "best"):
            state[key] = json.loads(state[key])
    except (KeyError, ValueError, ValidationError) as exc:
        raise CheckpointError(f"{path}: training state with missing or invalid fields ({exc})") from None
    return state


def _changed_keys(saved: Any, new: Any, prefix: str = "") -> list[str]:
    """``"key: saved → new"`` for each leaf where two JSON-like dicts differ."""
    if isinstance(saved, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in list(dict.fromkeys([*saved, *new])):
            out += _changed_keys(saved.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if saved == new else [f"{prefix[:-1]}: {saved!r} → {new!r}"]


def check_resume(state: dict[str, Any], config: TrainConfig, files: list[Path], path: Path, *,
                 simulation: dict[str, Any] | None = None) -> None:
    """Refuse to resume a run under a command that would make it a different run.

    Parameters
    ----------
    simulation : dict, optional
        Simulated runs: what the command simulates
        (:meth:`~xrais.train.sim_data.SimulatedTrainingData.record`); its ``config`` must be the
        saved run's, key for key.

    Raises
    ------
    CheckpointError
        The state holds another task or architecture than the command asks for.
    ConfigError
        Another setting that matters (``RESUME_FIELDS``), other data files or another
        simulation config.
    """
    saved: TrainConfig = state["train_config"]
    mc = state["model_config"]
    if (saved.task, saved.arch) != (config.task, config.arch) or (mc.task, mc.arch) != (config.task, config.arch):
        raise CheckpointError(f"{path}: holds a {mc.task} {mc.arch} run; the command asks for a {config.task} "
                              f"{config.arch} run (use the same --task/--arch, or a new --out folder)")
    diffs = config_differences(saved, config)
    if diffs:
        raise ConfigError(f"{path}: the command differs from the saved run in {'; '.join(diffs)} "
                          "(resume with the same arguments, or use a new --out folder)")
    if simulation is not None:
        saved_sim = state["data"].get("simulation") or {}
        changed = _changed_keys(saved_sim.get("config"), simulation["config"])
        if changed:
            raise ConfigError(f"{path}: the run simulated its images with another configuration than "
                              f"{config.simulate} gives: {'; '.join(changed[:5])}"
                              + (f" (and {len(changed) - 5} more)" if len(changed) > 5 else "")
                              + " (resume with the same simulation config, or use a new --out folder)")
    saved_files = state["data"].get("files", [])
    given = [str(p) for p in files]
    if saved_files != given:
        extra = sorted(set(given) - set(saved_files))
        gone = sorted(set(saved_files) - set(given))
        raise ConfigError(f"{path}: the run was trained on {len(saved_files)} shard(s), the command gives "
                          f"{len(given)}" + (f"; new: {', '.join(Path(p).name for p in extra[:3])}" if extra else "")
                          + (f"; missing: {', '.join(Path(p).name for p in gone[:3])}" if gone else "")
                          + " (resume with the same --data, or use a new --out folder)")
