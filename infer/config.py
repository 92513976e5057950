"""Settings of an inference run (:class:`InferConfig`) and of following an experiment (:class:`WatchConfig`).

Both are frozen pydantic models that forbid unknown fields; they are stored, as JSON, in the
``provenance.json`` beside the results. Units are in the field names: seconds (``_s``), mm, Å,
pixels (``_px``, (fast, slow) pairs).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


__all__ = ["InferConfig", "WatchConfig", "TABLE_FORMATS", "make_config"]

#: Result formats: the CSV journal, an HDF5 table, a folder of Parquet parts (needs pyarrow).
TABLE_FORMATS: tuple[str, ...] = ("csv", "h5", "parquet")
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


class InferConfig(BaseModel):
    """How images are scored and where the rows go.

    The settings that change the values in a row (models, quadrants, block, precision and the
    geometry overrides) make the run's fingerprint: a results folder is resumed only by a run
    with the same fingerprint. The others (batch size, device, threads, chunk size, formats)
    may differ between a run and its resumption.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: tuple[str, ...] = Field((), description="checkpoint files, folders or registered names (empty: spots "
                                                    "only; `xrais infer` without --model puts the shipped "
                                                    "resolution model here when there is one)")
    spots: bool = Field(True, description="find spots (DIALS's dispersion threshold) in the same pass: n_spots, "
                                          "d_5pct_A, spot_resolution_A and the hit call, with or without models")
    spot_settings: dict[str, Any] = Field(default_factory=dict,
                                          description="spot-finder and hit settings by name (SpotFinderParams, "
                                                      "HitParams: sigma_strong, min_spots, …)")
    quadrants: Literal[1, 4] = Field(4, description="score 4 quadrants, or only quadrant 0 (the one XRAIS trains on)")
    block: int | None = Field(None, ge=1, le=64,
                              description="max-pool block N; None: each model's preset, else the detector's own")
    batch_size: int = Field(16, ge=1, le=4096, description="quadrants per forward pass")
    device: str = Field("auto", description="auto (a GPU when present), cpu, cuda or cuda:N")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16: autocast the forward pass to bfloat16")
    channels_last: bool = Field(True, description="keep the model's weights in channels-last memory layout")
    threads: int | None = Field(None, ge=1, le=1024,
                                description="torch threads per rank; None: the node's cores shared by its ranks")
    formats: tuple[Literal["csv", "h5", "parquet"], ...] = Field(
        ("csv", "h5"), min_length=1, description="result tables; the CSV journal is always written")
    chunk_frames: int = Field(8, ge=1, le=100_000, description="frames (or single-frame files) per work item")
    flush_rows: int = Field(64, ge=1, le=1_000_000,
                            description="at most this many rows between appends to the HDF5/Parquet tables "
                                        "(and updates of the run's row count in provenance.json)")
    flush_s: float = Field(30.0, gt=0.0, le=86_400.0,
                           description="at most this many seconds between those appends while rows are waiting")
    distance_mm: float | None = Field(None, gt=0, description="detector distance for every image, replacing headers")
    wavelength_A: float | None = Field(None, gt=0, description="wavelength for every image, replacing headers")
    beam_center_px: tuple[float, float] | None = Field(
        None, description="(fast, slow) beam centre in pixels for every image, replacing headers")
    retry_errors: bool = Field(False, description="on resume, score again the images whose rows hold an error")

    @field_validator("spot_settings")
    @classmethod
    def _check_spot_settings(cls, v: dict[str, Any]) -> dict[str, Any]:
        from xrais.infer.spots import split_settings

        split_settings(v)  # raises ConfigError naming a bad or unknown setting
        return dict(sorted(v.items()))

    @model_validator(mode="after")
    def _something_to_do(self) -> "InferConfig":
        if not self.models and not self.spots:
            raise ValueError("nothing to do: give a model (--model) or leave spot finding on")
        return self

    def spot_params(self) -> tuple[Any, Any]:
        """The (SpotFinderParams, HitParams) of ``spot_settings``."""
        from xrais.infer.spots import split_settings

        return split_settings(self.spot_settings)

    @field_validator("device")
    @classmethod
    def _check_device(cls, v: str) -> str:
        if not _DEVICE.fullmatch(v):
            raise ValueError(f"expected auto, cpu, cuda or cuda:N, got {v!r}")
        return v

    @field_validator("formats")
    @classmethod
    def _check_formats(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if "h5" in v and "parquet" in v:
            raise ValueError("choose one large-run table: h5 or parquet, not both")
        return tuple(dict.fromkeys(("csv", *v)))

    def fingerprint(self) -> dict[str, Any]:
        """The settings that change the values in a row (models are added by their SHA-256)."""
        return {
            "quadrants": self.quadrants,
            "block": self.block,
            "precision": self.precision,
            "distance_mm": self.distance_mm,
            "wavelength_A": self.wavelength_A,
            "beam_center_px": list(self.beam_center_px) if self.beam_center_px is not None else None,
            "spots": self.spots,
            "spot_settings": {k: list(v) if isinstance(v, tuple) else v for k, v in self.spot_settings.items()},
        }


class WatchConfig(BaseModel):
    """How a running experiment is followed (``xrais infer --watch``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    folder: str = Field(description="folder to follow, or '-' for a list of file paths on stdin")
    pattern: str = Field("*", description="file-name glob of the files to score")
    recursive: bool = Field(False, description="also follow sub-folders")
    settle_s: float = Field(1.0, ge=0.0, le=3600.0,
                            description="a new file is scored once its size and time stamp stay the same this long")
    poll_s: float = Field(0.5, gt=0.0, le=60.0, description="seconds between looks at the folder")
    idle_timeout_s: float | None = Field(None, gt=0.0,
                                         description="stop after this long with nothing new and nothing left to do")


def make_config(cls: type[BaseModel], **fields: Any) -> Any:
    """Build ``cls(**fields)``, turning a validation error into a one-line :class:`ConfigError`.

    Examples
    --------
    >>> make_config(InferConfig, models=("m.safetensors",), quadrants=1).quadrants
    1
    >>> make_config(InferConfig, models=("m",), quadrants=2)
    Traceback (most recent call last):
    ...
    xrais.errors.ConfigError: quadrants: Input should be 1 or 4 (got 2)
    >>> make_config(InferConfig, models=("m",), batchsize=8)
    Traceback (most recent call last):
    ...
    xrais.errors.ConfigError: unknown key 'batchsize'; did you mean 'batch_size'?
    """
    from xrais.config_files import config_error

    try:
        return cls(**fields)
    except ValidationError as exc:
        raise config_error(exc, cls) from None
