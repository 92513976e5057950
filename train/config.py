"""The training configuration, :class:`TrainConfig`, and which of its fields a resume must keep.

Defaults are XRAIS's (xrais.txt §2.3.2, Table 2): SGD with momentum; for resolution lr 6e-3,
momentum 0.9, no weight decay and the mean absolute error of 1/d (Å⁻¹); for multi-lattice
lr 1.04e-3, momentum 0.9983, weight decay 2.5e-4, binary cross-entropy and FC1 dropout.
Fields left ``None`` take the task's default when the config is built, so a stored config
always holds the values that were used.

``batch_size`` is the *global* batch: under ``torchrun`` with W processes each takes
``batch_size / W`` images per step, so a run gives the same updates whatever W is.

A run trains either on shards (``data``) or on images simulated as it goes (``simulate``: a
simulation config file or preset, :mod:`xrais.train.sim_data`); the ``sim_*`` fields and
``images_per_epoch`` belong to the second and are ``None`` for the first. Left ``None`` under
``simulate`` they take their defaults (``sim_seed`` = ``seed``, :data:`SIMULATION_DEFAULTS`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


__all__ = ["TrainConfig", "TASK_DEFAULTS", "SIMULATION_DEFAULTS", "RESUME_FIELDS", "make_train_config",
           "config_differences"]

#: Optimiser and loss defaults per task (Table 2).
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "resolution": {"lr": 6e-3, "momentum": 0.9, "weight_decay": 0.0, "loss": "mae"},
    "multilattice": {"lr": 1.04e-3, "momentum": 0.9983, "weight_decay": 2.5e-4, "loss": "bce"},
}
_LOSSES = {"resolution": ("mae", "mse"), "multilattice": ("bce",)}
#: Defaults of the simulate-while-training fields (used only with ``simulate``).
SIMULATION_DEFAULTS: dict[str, int] = {"images_per_epoch": 1024, "sim_val_images": 32}
_SIMULATION_FIELDS = ("sim_seed", "images_per_epoch", "sim_val_images")

#: Fields that must be the same when a run is resumed: they change the model, the data or the
#: optimisation. ``epochs`` joins them under the cosine schedule (it sets the schedule's length).
RESUME_FIELDS: tuple[str, ...] = (
    "task", "arch", "heads", "dropout", "loss", "lr", "momentum", "weight_decay", "batch_size",
    "val_fraction", "seed", "augment", "gain_range", "lr_schedule", "init_output", "stats_images",
    "simulate", "sim_seed", "images_per_epoch", "sim_val_images", "init_weights",
)


class TrainConfig(BaseModel):
    """Everything ``xrais train`` needs, with units in the names where there are units.

    Examples
    --------
    >>> cfg = TrainConfig(data=("set/",), out="run/", task="multilattice")
    >>> cfg.lr, cfg.momentum, cfg.loss
    (0.00104, 0.9983, 'bce')
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: tuple[str, ...] = Field((), description="manifest.json files, shard .h5 files or folders (or simulate)")
    out: str = Field(description="output folder: checkpoints, training state, metrics, plot")
    task: Literal["resolution", "multilattice"] = Field("resolution", description="what the model learns")
    arch: str = Field("resnet50", description="torchvision ResNet depth (resnet18 … resnet152)")
    epochs: int = Field(30, ge=1, le=100_000, description="passes through the training images")
    batch_size: int = Field(32, ge=1, le=65_536, description="global batch (all processes together)")
    lr: float = Field(None, gt=0, le=1e6, description="SGD learning rate; default by task (Table 2)")
    momentum: float = Field(None, ge=0, lt=1, description="SGD momentum; default by task")
    weight_decay: float = Field(None, ge=0, le=1, description="SGD weight decay; default by task")
    loss: Literal["mae", "mse", "bce"] = Field(None, description="mae/mse of 1/d (resolution), bce (multilattice)")
    heads: tuple[str, ...] = Field((), description="extra regression heads, each a labels/<name> column")
    dropout: float | None = Field(None, ge=0, lt=1, description="FC1 dropout; None: the model's task default")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="fraction of images (all their quadrants) held out")
    workers: int = Field(2, ge=0, le=256, description="DataLoader worker processes per training process")
    seed: int = Field(0, ge=0, description="seed of the split, the initial weights, the order and augmentation")
    amp: bool | None = Field(None, description="mixed precision; None: on for CUDA (float16), off on CPU")
    channels_last: bool | None = Field(None, description="channels-last memory format; None: on for CUDA")
    compile: bool = Field(False, description="torch.compile the model")
    augment: bool = Field(False, description="random photon gain per image (see gain_range)")
    gain_range: tuple[float, float] = Field((0.5, 2.0), description="log-uniform photon gain of the augmentation")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when present")
    sync_batchnorm: bool = Field(True, description="BatchNorm statistics over the global batch under torchrun")
    lr_schedule: Literal["constant", "cosine"] = Field("constant",
                                                       description="constant, or cosine decay to 0 over all steps")
    init_output: bool = Field(True, description="start the output layers at the training labels' median and spread")
    init_weights: str | None = Field(None, min_length=1,
                                     description="fine-tune: start from this checkpoint's weights (a file, folder "
                                     "or model name, as load_pretrained), input normalisation included; its "
                                     "arch, task and heads must be the run's")
    stats_images: int = Field(64, ge=1, le=100_000, description="training images sampled for input mean/std")
    allow_outside_manifest: bool = Field(False, description="read shards a manifest names outside its own folder")
    checkpoint_every_s: float = Field(600.0, gt=0, le=1e7,
                                      description="seconds between training states saved within an epoch")
    simulate: str | None = Field(None, min_length=1,
                                 description="simulate the training images as the run goes: a simulation config "
                                 "file (TOML/YAML/JSON) or preset name, instead of data")
    sim_seed: int | None = Field(None, ge=0, description="seed of the simulated training set; default: seed; "
                                 "its validation images come from sim_seed + 1")
    images_per_epoch: int | None = Field(None, ge=1, le=10**12,
                                         description="simulated training images per epoch (default 1024); "
                                         "epoch e trains on images [e·N, (e+1)·N)")
    sim_val_images: int | None = Field(None, ge=0, le=1_000_000,
                                       description="simulated validation images, kept in memory (default 32)")

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            defaults = TASK_DEFAULTS.get(data.get("task", "resolution"), {})
            for key, value in defaults.items():
                if data.get(key) is None:
                    data[key] = value
            if data.get("simulate") is not None:
                if data.get("sim_seed") is None:
                    data["sim_seed"] = data.get("seed", 0)
                for key, value in SIMULATION_DEFAULTS.items():
                    if data.get(key) is None:
                        data[key] = value
        return data

    @field_validator("arch")
    @classmethod
    def _arch(cls, v: str) -> str:
        from xrais.models.resnet import ARCHITECTURES

        if v not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {v!r}; expected one of {', '.join(ARCHITECTURES)}")
        return v

    @field_validator("heads", mode="before")
    @classmethod
    def _heads(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = (v,)
        return tuple(h[len("labels/"):] if isinstance(h, str) and h.startswith("labels/") else h for h in v)

    @field_validator("gain_range")
    @classmethod
    def _gain(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"gain_range: expected 0 < low ≤ high, got {v}")
        return v

    @model_validator(mode="after")
    def _data_or_simulation(self) -> "TrainConfig":
        if self.simulate is None:
            if not self.data:
                raise ValueError("give the data (shards, manifests or folders) or simulate (a simulation config)")
            given = [name for name in _SIMULATION_FIELDS if getattr(self, name) is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: only with simulate (a simulation config)")
        elif self.data:
            raise ValueError("give the data or simulate, not both")
        return self

    @model_validator(mode="after")
    def _loss_fits_task(self) -> "TrainConfig":
        if self.loss not in _LOSSES[self.task]:
            raise ValueError(f"loss {self.loss!r} does not fit task {self.task!r}; expected one of "
                             f"{', '.join(_LOSSES[self.task])}")
        return self

    @property
    def out_dir(self) -> Path:
        """The output folder as a Path."""
        return Path(self.out)


def make_train_config(**fields: Any) -> TrainConfig:
    """Build a :class:`TrainConfig`, turning validation errors into one-line :class:`ConfigError`.

    Raises
    ------
    ConfigError
        Naming the first bad field, what it expects and the value given; an unknown field with
        the nearest valid one.
    """
    from xrais.config_files import config_error

    try:
        return TrainConfig(**fields)
    except ValidationError as exc:
        raise config_error(exc, TrainConfig, "xrais train") from None


def config_differences(saved: TrainConfig, new: TrainConfig) -> list[str]:
    """Fields whose change would make a resumed run a different run, as ``"name: saved → new"``."""
    fields = list(RESUME_FIELDS) + (["epochs"] if "cosine" in (saved.lr_schedule, new.lr_schedule) else [])
    return [f"{name}: {getattr(saved, name)!r} → {getattr(new, name)!r}"
            for name in fields if getattr(saved, name) != getattr(new, name)]
