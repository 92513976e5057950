"""What a ResNet model is: architecture, task, heads and input settings (:class:`ModelConfig`).

The config is stored in every checkpoint and is all that is needed, with the weights, to
rebuild the model (:func:`xrais.models.resnet.build_model`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from xrais._version import __version__
from xrais.conditioning.condition import ConditioningConfig

__all__ = ["ARCHITECTURES", "TASKS", "DEFAULT_LABELS", "OUTPUT_NAMES", "ModelConfig"]

#: torchvision ResNet depths a model can be built on.
ARCHITECTURES: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
#: What a model predicts.
TASKS: tuple[str, ...] = ("resolution", "multilattice")
#: The shard label column (``labels/<name>``) each task learns by default.
DEFAULT_LABELS: dict[str, str] = {"resolution": "inv_resolution_per_A", "multilattice": "multilattice"}
#: The key of the main output in the dict that :meth:`XraisResNet.forward` returns.
OUTPUT_NAMES: dict[str, str] = {"resolution": "inv_resolution_per_A", "multilattice": "multilattice_logit"}
#: FC1 dropout per task (Table 2: "FC1 dropout" No for resolution, Yes for splitting).
_DEFAULT_DROPOUT: dict[str, float] = {"resolution": 0.0, "multilattice": 0.5}


class ModelConfig(BaseModel):
    """Everything needed to rebuild a model without its weights (stored in every checkpoint).

    ``dropout`` and ``label`` default by task: 0.0 and ``"inv_resolution_per_A"`` for
    resolution, 0.5 and ``"multilattice"`` for multi-lattice.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: str = Field(description="torchvision ResNet depth, one of ARCHITECTURES")
    task: str = Field(description="'resolution' (regression of 1/d) or 'multilattice' (classification)")
    heads: tuple[str, ...] = Field((), description="extra regression heads, each named by a shard label column")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout probability after FC1 and its ReLU")
    input_mean: float = Field(0.0, description="subtracted from the input, in conditioned units")
    input_std: float = Field(1.0, gt=0.0, description="divides the input after the mean, in conditioned units")
    conditioning: ConditioningConfig = Field(default_factory=ConditioningConfig,
                                             description="how the input quadrants were made")
    label: str = Field("", description="label column / transform of the main output")
    xrais_version: str = Field(__version__, description="xrais version that made the model")

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("task") in TASKS:
            data = dict(data)
            if data.get("dropout") is None:
                data["dropout"] = _DEFAULT_DROPOUT[data["task"]]
            if not data.get("label"):
                data["label"] = DEFAULT_LABELS[data["task"]]
        return data

    @field_validator("arch")
    @classmethod
    def _check_arch(cls, v: str) -> str:
        if v not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {v!r}; expected one of {', '.join(ARCHITECTURES)}")
        return v

    @field_validator("task")
    @classmethod
    def _check_task(cls, v: str) -> str:
        if v not in TASKS:
            raise ValueError(f"unknown task {v!r}; expected one of {', '.join(TASKS)}")
        return v

    @field_validator("heads")
    @classmethod
    def _check_heads(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for name in v:
            if not name or "." in name or not name.replace("_", "a").isalnum():
                raise ValueError(f"head name {name!r}: expected letters, digits and '_' only")
        if len(set(v)) != len(v):
            raise ValueError(f"heads {v!r}: names must be unique")
        clash = set(v) & set(OUTPUT_NAMES.values())
        if clash:
            raise ValueError(f"heads {v!r}: {sorted(clash)} is the name of a main output")
        return v

    @property
    def output_name(self) -> str:
        """Key of the main output: ``inv_resolution_per_A`` or ``multilattice_logit``."""
        return OUTPUT_NAMES[self.task]

    @property
    def output_names(self) -> tuple[str, ...]:
        """All keys of :meth:`XraisResNet.forward`'s result, main output first."""
        return (self.output_name, *self.heads)
