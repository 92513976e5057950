"""The training loop: one code path for a single process and for W processes under torchrun.

:func:`train` sets up the process group (:mod:`xrais.train.ddp`), and a :class:`Trainer` runs
the epochs: SGD over whole global batches (:class:`~xrais.train.data.GlobalBatchSampler`),
validation on the held-out images, then, on rank 0, ``last.safetensors`` (every epoch),
``best.safetensors`` (lowest held-out loss; training loss without held-out images), the
training state ``state/last.pt``, ``metrics.csv``, ``training.png`` and TensorBoard scalars.

Stopping and resuming: the training state is also saved within an epoch, every
``checkpoint_every_s`` seconds and when a stop is asked (SIGTERM/SIGINT through a
:class:`~xrais.runs.StopRequest`: the current batch is finished, the state saved, and
:func:`train` returns with ``stopped_at`` set). Under torchrun the processes agree on both
(an all-reduce of the request every few batches), so they save and stop after the same batch.
Run again with the same arguments after a kill or a stop, it goes on from the last saved
batch and ends with the same weights as a run never stopped. One run at a time holds the
output folder (:class:`~xrais.runs.RunLock`, taken by rank 0).

Simulating while training (``TrainConfig.simulate``, :mod:`xrais.train.sim_data`): epoch e
trains on images [e·N, e·N + ⌊N/B⌋·B) of the simulated set, made by the DataLoader workers
(kept for the whole run); validation images (another seed) and the images of the input
statistics are simulated once and held in memory. The state and ``metrics.csv`` record the
images seen and each epoch's index range, so a resumed run goes on at the next unseen image.

Randomness: initial weights from ``seed``; data order from ``seed + epoch``; augmentation
from ``(seed, epoch, row)`` (simulated: ``(seed, image, quadrant)``); dropout from a generator
seeded by ``(seed, epoch, rank, batch)`` before each batch, inside :func:`torch.random.fork_rng` so the caller's global state is left
alone. Each batch is thus fixed by the seed, whether the run was resumed or not.
"""

from __future__ import annotations

import functools
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from xrais.errors import CheckpointError, ConfigError, DatasetError
from xrais.runs import FlushSchedule, StopRequest
from xrais.train.config import TrainConfig
from xrais.train.data import (GlobalBatchSampler, ShardDataset, compute_input_stats, resolve_data,
                              scan_shards, split_by_image)
from xrais.train.ddp import (DistInfo, all_reduce_max, all_reduce_sum, barrier, broadcast_object, convert_batchnorm,
                             hold_out_dir, setup_distributed, teardown_distributed, wrap_model)
from xrais.train.metrics import METRIC_COLUMNS, TensorBoardLog, count_correct, plot_history, write_metrics_csv
from xrais.train.output_init import INITIAL_SPREAD, initialise_outputs
from xrais.train.state import (capture_rng, check_resume, load_training_state, restore_rng, save_training_state,
                               state_path)

__all__ = ["train", "Trainer", "TrainResult", "initialise_outputs", "INITIAL_SPREAD"]


@dataclass
class TrainResult:
    """What a call of :func:`train` did (the same on every rank).

    ``stopped_at`` is ``(epoch, batches)`` when a stop request ended the run early: the state
    saved in ``OUT/state/last.pt`` holds ``batches`` batches of epoch ``epoch`` (1-based; 0
    batches: the stop came at the end of the epoch before). ``start_batch`` is the batch the
    run started from within epoch ``start_epoch + 1`` (0: its beginning).
    """

    out_dir: Path
    epochs_done: int
    start_epoch: int
    best_epoch: int | None
    best_value: float | None
    history: list[dict[str, Any]] = field(default_factory=list)
    world_size: int = 1
    start_batch: int = 0
    stopped_at: tuple[int, int] | None = None
    images_seen: int | None = None
    """simulated runs: training images seen so far (all processes, this and earlier calls)"""


def _batch_seed(seed: int, epoch: int, rank: int, batch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank, batch]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _quiet_worker(worker_id: int) -> None:
    """DataLoader workers leave SIGINT and SIGTERM to the main process, which stops the run in order."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _simulating_worker(worker_id: int, numba_threads: int | None) -> None:
    """A worker that simulates images: quiet as :func:`_quiet_worker`, with its share of Numba threads."""
    from xrais.train.sim_data import set_numba_threads

    _quiet_worker(worker_id)
    set_numba_threads(numba_threads)


#: Batches between the processes' agreement on stopping or saving under torchrun (one process: every batch).
POLL_BATCHES = 4
_GO_ON, _SAVE, _STOP = 0, 1, 2


class Trainer:
    """Data, model, optimiser and state of one run; :meth:`fit` runs the remaining epochs.

    ``stop``: a :class:`~xrais.runs.StopRequest` (or any :class:`threading.Event`) that, once
    set, ends the run after the current batch with the state saved.
    """

    def __init__(self, config: TrainConfig, info: DistInfo, stop: Any = None) -> None:
        self.config, self.info = config, info
        self.stop = stop
        self.out = config.out_dir
        self.state_file = state_path(self.out)
        self.cuda = info.device.type == "cuda"
        self.amp = config.amp if config.amp is not None else self.cuda
        self.amp_dtype = torch.float16 if self.cuda else torch.bfloat16
        self.channels_last = config.channels_last if config.channels_last is not None else self.cuda
        self._prepare_data()
        state = load_training_state(self.state_file) if self.state_file.exists() else None
        if state is not None:
            check_resume(state, config, self.files, self.state_file,
                         simulation=self.sim.record() if self.sim is not None else None)
            self.data_info = state["data"]
        else:  # every rank computes them; rank 0's values are used everywhere
            self.data_info = broadcast_object(self._describe_data(), info)
        self._build_model(state)
        self._build_optimiser(state)

    def _prepare_data(self) -> None:
        cfg, info = self.config, self.info
        if cfg.batch_size % info.world_size:
            raise ConfigError(f"--batch-size {cfg.batch_size}: the global batch must be a multiple of the "
                              f"{info.world_size} processes")
        self.sim = None
        self._train_loader: torch.utils.data.DataLoader | None = None
        if cfg.simulate is not None:
            from xrais.train.sim_data import SimulatedTrainingData

            self.sim = SimulatedTrainingData(cfg, info)
            self.files, self.table, self.train_rows, self.val_rows = [], None, None, None
            self.dataset, self.sampler = self.sim.dataset, self.sim.sampler
            return
        self.files = resolve_data(cfg.data, allow_outside_manifest=cfg.allow_outside_manifest)
        self.table = scan_shards(self.files, cfg.task, cfg.heads)
        self.train_rows, self.val_rows = split_by_image(self.table, cfg.val_fraction, cfg.seed)
        if len(self.train_rows) < cfg.batch_size:
            raise DatasetError(f"{self.files[0].parent}: {len(self.train_rows)} training quadrants in "
                               f"{len(self.files)} shard(s), fewer than one global batch of {cfg.batch_size} "
                               "(lower --batch-size, lower --val-fraction or add data)")
        self.dataset = ShardDataset(self.table, augment=cfg.augment, gain_range=cfg.gain_range, seed=cfg.seed)
        self.sampler = GlobalBatchSampler(self.train_rows, cfg.batch_size, num_replicas=info.world_size,
                                          rank=info.rank, seed=cfg.seed)

    def _worker_init(self) -> Callable[[int], None]:
        if self.sim is None:
            return _quiet_worker
        return functools.partial(_simulating_worker, numba_threads=self.sim.numba_threads)

    def _label_sample(self) -> tuple[ShardDataset, np.ndarray]:
        """The training rows that input statistics, head weights and output layers start from."""
        if self.sim is None:
            return self.dataset, self.train_rows
        stats = self.sim.stats_set(self._worker_init())
        return stats, np.arange(len(stats))

    def _describe_data(self) -> dict[str, Any]:
        """Files, split sizes, input statistics and head weights of a new run (saved with its state)."""
        cfg = self.config
        dataset, train = self._label_sample()
        t = dataset.table
        mean, std = compute_input_stats(dataset, train, cfg.stats_images, cfg.seed)
        # a head's error counts in units of its label's spread, times the main label's (resolution)
        main_std = float(np.std(t.target[train])) if cfg.task == "resolution" else 1.0
        head_scale = [float(s) / (main_std or 1.0) if s > 0 else 1.0 for s in np.std(t.heads[train], axis=0)]
        if self.sim is not None:
            split: dict[str, Any] = {**self.sim.split(), "simulation": self.sim.record()}
        else:
            split = {"train_rows": int(len(train)), "val_rows": int(len(self.val_rows)),
                     "train_images": int(len(np.unique(t.image_id[train]))),
                     "val_images": int(len(np.unique(t.image_id[self.val_rows])))}
        return {"files": [str(p) for p in self.files], **split,
                "input_mean": mean, "input_std": std, "head_scale": head_scale}

    def _build_model(self, state: dict[str, Any] | None) -> None:
        from xrais.models import build_model

        cfg = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = build_model(cfg.arch, cfg.task, heads=cfg.heads, dropout=cfg.dropout,
                                input_mean=self.data_info["input_mean"], input_std=self.data_info["input_std"])
        if state is not None:
            try:
                model.load_state_dict(state["model"], strict=True)
            except RuntimeError as exc:
                raise CheckpointError(f"{self.state_file}: weights do not fit a {cfg.task} {cfg.arch} model "
                                      f"({str(exc).splitlines()[0]})") from None
        elif cfg.init_weights is not None:
            self.data_info["init_weights"] = broadcast_object(self._load_init_weights(model), self.info)
        elif cfg.init_output:
            self.data_info["output_init"] = broadcast_object(
                initialise_outputs(model, *self._label_sample(), cfg.task, cfg.seed), self.info)
        self.model_config = model.config
        model = model.to(self.info.device,
                         memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        if cfg.sync_batchnorm:
            model = convert_batchnorm(model, self.info)
        self.bare = model
        self.model = wrap_model(model, self.info)
        if cfg.compile:
            self.model = torch.compile(self.model)
        self.head_weight = torch.tensor([1.0 / s if cfg.loss != "mse" else 1.0 / (s * s)
                                         for s in self.data_info["head_scale"]], device=self.info.device)

    def _load_init_weights(self, model: torch.nn.Module) -> dict[str, Any]:
        """Copy ``init_weights``'s weights into ``model``; the record names the checkpoint."""
        from xrais.models import load_pretrained
        from xrais.models.checkpoint import compute_sha256

        cfg = self.config
        start = load_pretrained(cfg.init_weights, arch=cfg.arch, task=cfg.task)
        if tuple(start.config.heads) != tuple(cfg.heads):
            raise CheckpointError(f"init weights {cfg.init_weights}: expected heads {list(cfg.heads)}, the "
                                  f"checkpoint has {list(start.config.heads)}")
        model.load_state_dict(start.state_dict(), strict=True)
        return {"checkpoint": str(start.checkpoint_path), "sha256": compute_sha256(start.checkpoint_path)}

    def _parameter_groups(self) -> list[dict[str, Any]]:
        """All parameters at the base rate, but each rescaled output layer in a group of its own.

        An output layer whose initial weights were multiplied by s (:func:`initialise_outputs`)
        gets the learning rate × s² and the weight decay / s²: SGD then moves it exactly as it
        would move the same layer written as s·(w′·h + b′) with w′ at its usual scale, so its
        steps are in proportion to the labels whatever unit the output has.
        """
        cfg = self.config
        groups, taken = [], set()
        for name, record in self.data_info.get("output_init", {}).items():
            s = float(record["weight_scale"])
            if s != 1.0:
                params = list(self.bare.get_submodule(name).parameters())
                taken.update(id(p) for p in params)
                groups.append({"params": params, "lr": cfg.lr * s * s, "weight_decay": cfg.weight_decay / (s * s)})
        rest = [p for p in self.bare.parameters() if id(p) not in taken]
        return [{"params": rest}] + groups

    def _build_optimiser(self, state: dict[str, Any] | None) -> None:
        cfg = self.config
        self.optimizer = torch.optim.SGD(self._parameter_groups(), lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)
        steps = cfg.epochs * self.sampler.n_batches  # the cosine schedule steps once per batch
        self.scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=steps)
                          if cfg.lr_schedule == "cosine" else None)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.cuda)
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"epoch": None, "value": None}
        self.resumed_at: list[int] = []
        self.start_epoch = 0
        self.start_batch = 0
        self.n_sums = 3 if self.sim is None else 4  # loss, correct, rows (and replaced images, simulating)
        self.partial_sums: list[float] = [0.0] * self.n_sums
        self.epoch_lr = float(self.optimizer.param_groups[0]["lr"])
        if state is None:
            return
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"] is not None and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        restore_rng(state["rng"], self.info.device)
        self.history, self.best = state["history"], state["best"]
        self.start_epoch = int(state["epoch"])
        self.start_batch = int(state.get("batch", 0))
        if not 0 <= self.start_batch < self.sampler.n_batches:
            raise CheckpointError(f"{self.state_file}: saved within epoch {self.start_epoch + 1} after batch "
                                  f"{self.start_batch}, but an epoch has {self.sampler.n_batches} batches")
        self.partial_sums = [float(v) for v in state.get("partial_sums") or [0.0] * self.n_sums]
        self.epoch_lr = float(state.get("epoch_lr") or self.optimizer.param_groups[0]["lr"])
        self.resumed_at = list(state["resumed_at"]) + ([self.start_epoch] if self.start_epoch < cfg.epochs else [])

    # -- one batch ---------------------------------------------------------------------------------
    def _loss(self, out: dict[str, Tensor], target: Tensor, heads: Tensor) -> tuple[Tensor, Tensor]:
        """Per-image loss, shape (B,) float32, and the main prediction (B,)."""
        main = out[self.model_config.output_name].float()
        if self.config.loss == "bce":
            loss = F.binary_cross_entropy_with_logits(main, target, reduction="none")
        elif self.config.loss == "mse":
            loss = F.mse_loss(main, target, reduction="none")
        else:
            loss = F.l1_loss(main, target, reduction="none")
        square = self.config.loss == "mse"
        for j, name in enumerate(self.model_config.heads):
            diff = out[name].float() - heads[:, j]
            loss = loss + self.head_weight[j] * (diff.square() if square else diff.abs())
        return loss, main

    def _to_device(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        dev, nb = self.info.device, self.cuda
        images = batch["image"].to(dev, non_blocking=nb).float()
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return (images, batch["geometry"].to(dev, non_blocking=nb), batch["target"].to(dev, non_blocking=nb),
                batch["heads"].to(dev, non_blocking=nb))

    def _loader(self, sampler: Any, dataset: Any = None) -> torch.utils.data.DataLoader:
        workers = self.config.workers
        return torch.utils.data.DataLoader(
            self.dataset if dataset is None else dataset, batch_size=self.config.batch_size // self.info.world_size,
            sampler=sampler, num_workers=workers, pin_memory=self.cuda, generator=torch.Generator().manual_seed(0),
            worker_init_fn=_quiet_worker if workers else None)

    def _training_loader(self) -> torch.utils.data.DataLoader:
        """The loader of the training batches: a new one per epoch, or one for the run when simulating.

        Simulating workers stay for the whole run (``persistent_workers``): what they built (the
        structure bank's |F| tables, compiled kernels) serves every epoch.
        """
        if self.sim is None:
            return self._loader(self.sampler)
        if self._train_loader is None:
            from xrais.train.sim_data import collate_quadrants, worker_start_method

            workers = self.config.workers
            self._train_loader = torch.utils.data.DataLoader(
                self.dataset, batch_size=self.config.batch_size // self.info.world_size, sampler=self.sampler,
                num_workers=workers, pin_memory=self.cuda, collate_fn=collate_quadrants,
                worker_init_fn=self._worker_init() if workers else None, persistent_workers=workers > 0,
                multiprocessing_context=worker_start_method() if workers else None)
        return self._train_loader

    # -- stopping and saving within an epoch -------------------------------------------------------
    def _poll(self, batch: int, last: bool) -> int:
        """What to do after this batch: go on, save the state, or save and stop (the same on every rank)."""
        if self.info.distributed and (batch + 1) % POLL_BATCHES and not last:
            return _GO_ON
        stop = self.stop is not None and self.stop.is_set()
        due = not last and self.checkpoints.add(1)  # the end of an epoch saves anyway
        want = _STOP if stop else (_SAVE if due else _GO_ON)
        return all_reduce_max(want, self.info) if self.info.distributed else want

    def _save_within_epoch(self, epoch: int, batches: int, sums: Tensor) -> None:
        """The state after ``batches`` batches of epoch ``epoch`` (0-based), metrics so far included."""
        total = all_reduce_sum(sums, self.info)
        if self.info.is_main:
            self._save_state(epoch, batch=batches, partial_sums=[float(v) for v in total], epoch_lr=self.epoch_lr)
        barrier(self.info)
        self.checkpoints.flushed()

    def _save_state(self, epochs_done: int, batch: int = 0, partial_sums: list[float] | None = None,
                    epoch_lr: float | None = None) -> None:
        save_training_state(self.state_file, model=self.bare, optimizer=self.optimizer, scheduler=self.scheduler,
                            scaler=self.scaler, epoch=epochs_done, config=self.config,
                            model_config=self.model_config, data=self.data_info, history=self.history,
                            best=self.best, resumed_at=self.resumed_at, rng=capture_rng(self.info.device),
                            batch=batch, partial_sums=partial_sums, epoch_lr=epoch_lr,
                            images_seen=self._images_seen(epochs_done, batch))

    def _images_seen(self, epochs_done: int, batch: int = 0) -> int | None:
        """Simulated runs: training images seen after ``epochs_done`` epochs and ``batch`` batches."""
        return self.sim.sampler.images_seen(epochs_done, batch) if self.sim is not None else None

    # -- one epoch ---------------------------------------------------------------------------------
    def _run_epoch(self, epoch: int, start_batch: int = 0,
                   partial_sums: list[float] | None = None) -> dict[str, float] | None:
        """Train one epoch from batch ``start_batch``; None when a stop ended it (its state is saved)."""
        cfg, info = self.config, self.info
        self.dataset.epoch = epoch
        self.sampler.set_epoch(epoch)
        self.sampler.start_batch = start_batch
        self.dataset.close()
        self.model.train()
        sums = torch.zeros(self.n_sums, dtype=torch.float64, device=info.device)
        if partial_sums is not None and info.is_main:  # what the saved batches contributed (all ranks together)
            sums += torch.tensor(partial_sums, dtype=torch.float64, device=info.device)
        counted_before = partial_sums[2] if partial_sums is not None else 0.0
        t0 = time.perf_counter()
        for b, batch in enumerate(self._training_loader(), start=start_batch):
            torch.manual_seed(_batch_seed(cfg.seed, epoch, info.rank, b))
            images, geometry, target, heads = self._to_device(batch)
            with torch.autocast(self.info.device.type, dtype=self.amp_dtype, enabled=self.amp):
                out = self.model(images, geometry)
            loss, main = self._loss(out, target, heads)
            mean_loss = loss.mean()
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(mean_loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.scheduler is not None:
                self.scheduler.step()
            counts = [loss.detach().sum().double(), count_correct(self.config.task, main, target).double(),
                      torch.tensor(float(len(target)), dtype=torch.float64, device=self.info.device)]
            if self.sim is not None:
                counts.append(batch["replaced"].sum().double().to(self.info.device))
            sums += torch.stack(counts)
            action = self._poll(b, last=b + 1 == self.sampler.n_batches)
            if action != _GO_ON and b + 1 < self.sampler.n_batches:
                self._save_within_epoch(epoch, b + 1, sums)
            if action == _STOP:
                self.stopped_at = (epoch + 1, b + 1)
                if b + 1 < self.sampler.n_batches:
                    return None
        sums = all_reduce_sum(sums, self.info)
        seconds = time.perf_counter() - t0
        n = float(sums[2])
        new = n - counted_before
        done = {"train_loss": float(sums[0]) / n, "train_accuracy": float(sums[1]) / n,
                "images_per_s": new / seconds if seconds > 0 else math.nan}
        if self.sim is not None:
            done["images_replaced"] = int(sums[3])
        return done

    def _validation_rows(self) -> tuple[Any, list[int]] | None:
        """This process's held-out rows and their dataset, or None without held-out images."""
        if self.sim is not None:
            if not self.config.sim_val_images:
                return None
            val = self.sim.val_set(self._worker_init())  # this process's share, made once
            return val, list(range(len(val)))
        if len(self.val_rows) == 0:
            return None
        return self.dataset, self.val_rows[self.info.rank::self.info.world_size].tolist()

    @torch.no_grad()
    def _validate(self) -> dict[str, float | None]:
        held_out = self._validation_rows()
        if held_out is None:
            return {"val_loss": None, "val_accuracy": None}
        dataset, mine = held_out
        self.bare.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=self.info.device)
        for batch in self._loader(mine, dataset):
            images, geometry, target, heads = self._to_device(batch)
            with torch.autocast(self.info.device.type, dtype=self.amp_dtype, enabled=self.amp):
                out = self.bare(images, geometry)
            loss, main = self._loss(out, target, heads)
            sums += torch.stack([loss.sum().double(), count_correct(self.config.task, main, target).double(),
                                 torch.tensor(float(len(target)), dtype=torch.float64, device=self.info.device)])
        self.dataset.close()
        sums = all_reduce_sum(sums, self.info)
        return {"val_loss": float(sums[0] / sums[2]), "val_accuracy": float(sums[1] / sums[2])}

    # -- outputs -------------------------------------------------------------------------------------
    def _write_outputs(self, row: dict[str, Any], improved: bool) -> None:
        from xrais.models import save_checkpoint

        provenance = {"train_config": self.config, "data_files": self.data_info["files"], "epoch": row["epoch"],
                      "metrics": row, "split": {k: self.data_info[k] for k in
                                                ("train_rows", "val_rows", "train_images", "val_images")},
                      "world_size": self.info.world_size}
        if "simulation" in self.data_info:
            provenance["simulation"] = self.data_info["simulation"]
        if "init_weights" in self.data_info:
            provenance["init_weights"] = self.data_info["init_weights"]
        provenance["training_geometry"] = self._training_geometry()
        save_checkpoint(self.bare, self.out / "last.safetensors", **provenance)
        if improved:
            save_checkpoint(self.bare, self.out / "best.safetensors", **provenance)
        self._save_state(row["epoch"])
        self._write_reports()

    def _training_geometry(self) -> dict[str, Any]:
        """What the model is trained on, for the checkpoint (a frame outside it gets a warning at inference)."""
        if "training_geometry" not in self.data_info:
            if self.sim is not None:
                from xrais.train.sim_data import simulation_training_geometry

                found = simulation_training_geometry(self.sim.sim_config)
            else:
                from xrais.train.data import shards_training_geometry

                found = shards_training_geometry(self.files)
            self.data_info["training_geometry"] = found
        return self.data_info["training_geometry"]

    def _write_reports(self) -> None:
        if self.history:
            write_metrics_csv(self.history, self.out / "metrics.csv")
            plot_history(self.history, self.out / "training.png", task=self.config.task,
                         best_epoch=self.best["epoch"], resumed_at=self.resumed_at)

    def fit(self, on_epoch: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
        """Run epochs ``start_epoch + 1 … epochs``; ``on_epoch`` gets each metrics row (every rank)."""
        cfg, info = self.config, self.info
        if info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self._write_reports()
        tb = TensorBoardLog(self.out / "tensorboard", purge_step=self.start_epoch + 1) if info.is_main else None
        fork = {"devices": [info.device.index], "device_type": "cuda"} if self.cuda else {"devices": []}
        self.checkpoints = FlushSchedule(every_items=2**62, every_s=cfg.checkpoint_every_s)
        self.stopped_at: tuple[int, int] | None = None
        try:
            for epoch in range(self.start_epoch, cfg.epochs):
                if epoch > self.start_epoch and self._stop_agreed():
                    self.stopped_at = (epoch + 1, 0)
                    break
                t0 = time.perf_counter()
                first = epoch == self.start_epoch
                resumed_within = first and self.start_batch > 0
                lr = self.epoch_lr if resumed_within else self.optimizer.param_groups[0]["lr"]
                self.epoch_lr = lr
                with torch.random.fork_rng(**fork):
                    done = self._run_epoch(epoch, self.start_batch if first else 0,
                                           self.partial_sums if first and self.start_batch else None)
                if done is None:
                    break
                row: dict[str, Any] = {"epoch": epoch + 1, **done}
                row.update(self._validate())
                row.update(lr=lr, seconds=time.perf_counter() - t0)
                extra = {}
                if self.sim is not None:
                    start, stop = self.sim.sampler.epoch_range(epoch)
                    extra = {"image_start": start, "image_stop": stop, "images_seen": self._images_seen(epoch + 1),
                             "images_replaced": done["images_replaced"]}
                row = {**{k: row.get(k) for k in METRIC_COLUMNS}, **extra}
                value = row["val_loss"] if row["val_loss"] is not None else row["train_loss"]
                improved = self.best["value"] is None or value < self.best["value"]
                if improved:
                    self.best = {"epoch": epoch + 1, "value": value}
                self.history.append(row)
                if info.is_main:
                    self._write_outputs(row, improved)
                    if tb is not None:
                        tb.log(row)
                barrier(info)
                self.checkpoints.flushed()
                if on_epoch is not None:
                    on_epoch(row)
            if len(self.history) >= cfg.epochs:  # a stop asked during the last batch came too late to matter
                self.stopped_at = None
        finally:
            self.dataset.close()
            self._train_loader = None  # its simulating workers end with it
            if tb is not None:
                tb.close()
        seen = None
        if self.sim is not None:
            within = self.stopped_at is not None and self.stopped_at[1] > 0
            seen = (self._images_seen(self.stopped_at[0] - 1, self.stopped_at[1]) if within
                    else self._images_seen(len(self.history)))
        return TrainResult(out_dir=self.out, epochs_done=len(self.history), start_epoch=self.start_epoch,
                           best_epoch=self.best["epoch"], best_value=self.best["value"], history=self.history,
                           world_size=info.world_size, start_batch=self.start_batch, stopped_at=self.stopped_at,
                           images_seen=seen)

    def _stop_agreed(self) -> bool:
        """True when any process was asked to stop (checked between epochs)."""
        want = _STOP if self.stop is not None and self.stop.is_set() else _GO_ON
        return (all_reduce_max(want, self.info) if self.info.distributed else want) == _STOP


def train(config: TrainConfig, *, on_epoch: Callable[[dict[str, Any]], None] | None = None,
          stop: StopRequest | Any = None) -> TrainResult:
    """Train a model as ``config`` says, in this process or as one rank of a torchrun job.

    Parameters
    ----------
    config : TrainConfig
    on_epoch : callable, optional
        Called on every rank with each epoch's metrics row (dict of :data:`METRIC_COLUMNS`).
    stop : StopRequest or threading.Event, optional
        Once set (e.g. by :func:`xrais.runs.stop_on_signals`), the run finishes the current
        batch, saves its state and returns with ``stopped_at`` set; run again to resume.

    Returns
    -------
    TrainResult

    Raises
    ------
    DatasetError
        Missing, malformed or empty data; too few training images for one batch.
    CheckpointError
        ``OUT/state/last.pt`` unreadable, or of another task or architecture.
    ConfigError
        A resume whose settings or data differ from the saved run; an impossible setting; an
        output folder that is a file or cannot be written.
    RunLockedError
        Another live run holds the output folder.
    """
    import torch.distributed as dist

    joined = dist.is_available() and dist.is_initialized()
    info = setup_distributed(config.device)
    try:
        with hold_out_dir(config.out_dir, info, "xrais train"):
            return Trainer(config, info, stop=stop).fit(on_epoch)
    finally:
        if not joined:
            teardown_distributed()
