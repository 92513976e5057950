"""The training loop: one code path for a single process and for W processes under torchrun.

:func:`train` sets up the process group (:mod:`xrais.train.ddp`), and a :class:`Trainer` runs
the epochs: SGD over whole global batches (:class:`~xrais.train.data.GlobalBatchSampler`),
validation on the held-out images, then, on rank 0, ``last.safetensors`` (every epoch),
``best.safetensors`` (lowest held-out loss; training loss without held-out images), the
training state ``state/last.pt``, ``metrics.csv``, ``training.png`` and TensorBoard scalars.
Run again with the same arguments after a kill, it goes on from the epoch after the last
saved one and ends with the same weights as a run never stopped.

Randomness: initial weights from ``seed``; data order from ``seed + epoch``; augmentation
from ``(seed, epoch, row)``; dropout from a generator seeded by ``(seed, epoch, rank)`` at the
start of each epoch, inside :func:`torch.random.fork_rng` so the caller's global state is
left alone. Each epoch is thus fixed by the seed, whether the run was resumed or not.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from xrais.errors import CheckpointError, ConfigError, DatasetError
from xrais.train.config import TrainConfig
from xrais.train.data import (DataTable, GlobalBatchSampler, ShardDataset, compute_input_stats, resolve_data,
                              scan_shards, split_by_image)
from xrais.train.ddp import (DistInfo, all_reduce_sum, barrier, broadcast_object, convert_batchnorm,
                             setup_distributed, teardown_distributed, wrap_model)
from xrais.train.metrics import METRIC_COLUMNS, TensorBoardLog, count_correct, plot_history, write_metrics_csv
from xrais.train.state import (capture_rng, check_resume, load_training_state, restore_rng, save_training_state,
                               state_path)

__all__ = ["train", "Trainer", "TrainResult", "initialise_outputs", "INITIAL_SPREAD"]


@dataclass
class TrainResult:
    """What a call of :func:`train` did (the same on every rank)."""

    out_dir: Path
    epochs_done: int
    start_epoch: int
    best_epoch: int | None
    best_value: float | None
    history: list[dict[str, Any]] = field(default_factory=list)
    world_size: int = 1


#: Initial spread of a regression output as a fraction of its labels' spread (see :func:`initialise_outputs`).
INITIAL_SPREAD = 0.1


def _label_values(task: str, table: DataTable, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Training labels in the units of each output layer's raw output, by layer name."""
    from xrais.models import inv_resolution_to_radius

    t = table.target[rows].astype(np.float64)
    if task == "resolution":  # FC2 gives a radius in pooled pixels: D·tan(2·asin(λ/2d))/p
        main = inv_resolution_to_radius(torch.from_numpy(t), torch.from_numpy(table.geometry[rows]).double()).numpy()
    else:
        main = t
    values = {"fc2": main}
    values.update({f"heads.{name}": table.heads[rows, j].astype(np.float64) for j, name in enumerate(table.head_names)})
    return values


@torch.no_grad()
def initialise_outputs(model: torch.nn.Module, dataset: ShardDataset, rows: np.ndarray, task: str,
                       seed: int, n_images: int = 16) -> dict[str, dict[str, float]]:
    """Start each output layer at its training labels (in place): a data-dependent initialisation.

    Regression outputs (the resolution model's FC2, whose output is a radius in pooled pixels,
    and every extra head): the bias becomes the labels' median and the weights are scaled so
    that, over ``n_images`` training images, the output spreads by :data:`INITIAL_SPREAD` of
    the labels' standard deviation. Without this a fresh network's output varies by ~0.03 px
    where the labels vary by ~150 px, and SGD at Table 2's learning rates hardly moves it.
    The optimiser gives such a layer the learning rate × s² (see ``Trainer._parameter_groups``),
    as if its output were written in units of s. The multi-lattice logit starts at the log-odds
    of the multi-lattice fraction.
    The BatchNorm running statistics are left as they were.

    Returns
    -------
    dict
        ``{layer: {"bias": b, "weight_scale": s}}``.
    """
    labels = _label_values(task, dataset.table, rows)
    sample = np.sort(np.random.default_rng(seed).choice(rows, size=min(n_images, len(rows)), replace=False))
    images = torch.stack([torch.from_numpy(dataset.read_image(int(i))) for i in sample])[:, None].float()
    dataset.close()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    was_training = model.training
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        features = model.features(images)
    for name, value in buffers.items():
        model.get_buffer(name).copy_(value)
    model.train(was_training)
    record: dict[str, dict[str, float]] = {}
    for name, y in labels.items():
        layer = model.get_submodule(name)
        if name == "fc2" and task == "multilattice":
            p = float(np.clip(y.mean(), 1e-3, 1 - 1e-3))
            layer.bias.fill_(math.log(p / (1 - p)))
            record[name] = {"bias": float(layer.bias), "weight_scale": 1.0}
            continue
        spread = float((features @ layer.weight.T)[:, 0].std()) if len(sample) > 1 else 0.0
        scale = INITIAL_SPREAD * float(np.std(y)) / spread if spread > 0 and np.std(y) > 0 else 1.0
        layer.weight.mul_(scale)
        layer.bias.fill_(float(np.median(y)))
        record[name] = {"bias": float(layer.bias), "weight_scale": scale}
    return record


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


class Trainer:
    """Data, model, optimiser and state of one run; :meth:`fit` runs the remaining epochs."""

    def __init__(self, config: TrainConfig, info: DistInfo) -> None:
        self.config, self.info = config, info
        self.out = config.out_dir
        self.state_file = state_path(self.out)
        self.cuda = info.device.type == "cuda"
        self.amp = config.amp if config.amp is not None else self.cuda
        self.amp_dtype = torch.float16 if self.cuda else torch.bfloat16
        self.channels_last = config.channels_last if config.channels_last is not None else self.cuda
        self._prepare_data()
        state = load_training_state(self.state_file) if self.state_file.exists() else None
        if state is not None:
            check_resume(state, config, self.files, self.state_file)
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
        self.files = resolve_data(cfg.data)
        self.table = scan_shards(self.files, cfg.task, cfg.heads)
        self.train_rows, self.val_rows = split_by_image(self.table, cfg.val_fraction, cfg.seed)
        if len(self.train_rows) < cfg.batch_size:
            raise DatasetError(f"{self.files[0].parent}: {len(self.train_rows)} training quadrants in "
                               f"{len(self.files)} shard(s), fewer than one global batch of {cfg.batch_size} "
                               "(lower --batch-size, lower --val-fraction or add data)")
        self.dataset = ShardDataset(self.table, augment=cfg.augment, gain_range=cfg.gain_range, seed=cfg.seed)
        self.sampler = GlobalBatchSampler(self.train_rows, cfg.batch_size, num_replicas=info.world_size,
                                          rank=info.rank, seed=cfg.seed)

    def _describe_data(self) -> dict[str, Any]:
        """Files, split sizes, input statistics and head weights of a new run (saved with its state)."""
        cfg, t, train = self.config, self.table, self.train_rows
        mean, std = compute_input_stats(self.dataset, train, cfg.stats_images, cfg.seed)
        # a head's error counts in units of its label's spread, times the main label's (resolution)
        main_std = float(np.std(t.target[train])) if cfg.task == "resolution" else 1.0
        head_scale = [float(s) / (main_std or 1.0) if s > 0 else 1.0 for s in np.std(t.heads[train], axis=0)]
        return {"files": [str(p) for p in self.files], "train_rows": int(len(train)),
                "val_rows": int(len(self.val_rows)), "train_images": int(len(np.unique(t.image_id[train]))),
                "val_images": int(len(np.unique(t.image_id[self.val_rows]))),
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
        elif cfg.init_output:
            self.data_info["output_init"] = broadcast_object(
                initialise_outputs(model, self.dataset, self.train_rows, cfg.task, cfg.seed), self.info)
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

    def _loader(self, sampler: Any) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            self.dataset, batch_size=self.config.batch_size // self.info.world_size, sampler=sampler,
            num_workers=self.config.workers, pin_memory=self.cuda, generator=torch.Generator().manual_seed(0))

    # -- one epoch ---------------------------------------------------------------------------------
    def _run_epoch(self, epoch: int) -> dict[str, float]:
        self.dataset.epoch = epoch
        self.sampler.set_epoch(epoch)
        self.dataset.close()
        self.model.train()
        sums = torch.zeros(3, dtype=torch.float64, device=self.info.device)
        t0 = time.perf_counter()
        for batch in self._loader(self.sampler):
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
            sums += torch.stack([loss.detach().sum().double(), count_correct(self.config.task, main, target).double(),
                                 torch.tensor(float(len(target)), dtype=torch.float64, device=self.info.device)])
        sums = all_reduce_sum(sums, self.info)
        seconds = time.perf_counter() - t0
        n = float(sums[2])
        return {"train_loss": float(sums[0]) / n, "train_accuracy": float(sums[1]) / n,
                "images_per_s": n / seconds if seconds > 0 else math.nan}

    @torch.no_grad()
    def _validate(self) -> dict[str, float | None]:
        if len(self.val_rows) == 0:
            return {"val_loss": None, "val_accuracy": None}
        self.bare.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=self.info.device)
        mine = self.val_rows[self.info.rank::self.info.world_size].tolist()
        for batch in self._loader(mine):
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
        save_checkpoint(self.bare, self.out / "last.safetensors", **provenance)
        if improved:
            save_checkpoint(self.bare, self.out / "best.safetensors", **provenance)
        save_training_state(self.state_file, model=self.bare, optimizer=self.optimizer, scheduler=self.scheduler,
                            scaler=self.scaler, epoch=row["epoch"], config=self.config,
                            model_config=self.model_config, data=self.data_info, history=self.history,
                            best=self.best, resumed_at=self.resumed_at, rng=capture_rng(self.info.device))
        self._write_reports()

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
        try:
            for epoch in range(self.start_epoch, cfg.epochs):
                t0 = time.perf_counter()
                lr = self.optimizer.param_groups[0]["lr"]
                with torch.random.fork_rng(**fork):
                    torch.manual_seed(_epoch_seed(cfg.seed, epoch, info.rank))
                    row: dict[str, Any] = {"epoch": epoch + 1, **self._run_epoch(epoch)}
                row.update(self._validate())
                row.update(lr=lr, seconds=time.perf_counter() - t0)
                row = {k: row.get(k) for k in METRIC_COLUMNS}
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
                if on_epoch is not None:
                    on_epoch(row)
        finally:
            self.dataset.close()
            if tb is not None:
                tb.close()
        return TrainResult(out_dir=self.out, epochs_done=len(self.history), start_epoch=self.start_epoch,
                           best_epoch=self.best["epoch"], best_value=self.best["value"], history=self.history,
                           world_size=info.world_size)


def train(config: TrainConfig, *, on_epoch: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train a model as ``config`` says, in this process or as one rank of a torchrun job.

    Parameters
    ----------
    config : TrainConfig
    on_epoch : callable, optional
        Called on every rank with each epoch's metrics row (dict of :data:`METRIC_COLUMNS`).

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
        A resume whose settings or data differ from the saved run; an impossible setting.
    """
    import torch.distributed as dist

    joined = dist.is_available() and dist.is_initialized()
    info = setup_distributed(config.device)
    try:
        return Trainer(config, info).fit(on_epoch)
    finally:
        if not joined:
            teardown_distributed()
