"""ResNet regressor of resolution and classifier of multi-lattice scattering (xrais.txt §2.3, Table 2).

The network is a torchvision ResNet (18/34/50/101/152, random weights) whose first convolution
reads one channel, followed by its own 1000-way ``fc``, then FC1 (1000 → 100), ReLU, optional
dropout and FC2 (100 → 1) (Figure 5A). Extra regression heads, one ``Linear(100 → 1)`` each,
may read the FC1 features too.

Conventions
-----------
* Input images are conditioned quadrants, shape (B, 1, 512, 512), in conditioned units
  (0–255 as stored in shards; uint8 is accepted and cast), beam centre at pixel [0, 0].
  They are normalised inside the model as ``(x − input_mean) / input_std``.
* Geometry rows are ``(distance_mm, pooled_pixel_mm, wavelength_A)`` where
  ``pooled_pixel_mm = pixel_mm × downsample`` is the size of one conditioned pixel.
* The resolution model's FC2 output ``y`` is a distance from the beam centre in pooled
  pixels; it becomes inverse resolution through the geometry (Figure 5B):
  ``2θ = atan(y·p / D)`` and ``1/d = 2 sin θ / λ`` (Bragg's law).
* The multi-lattice model returns a logit; the sigmoid of Figure 5C is applied by the loss
  (``BCEWithLogitsLoss``) in training and by :func:`~xrais.models.predict.predict`.

Examples
--------
>>> model = build_model("resnet50", "resolution")
>>> sum(p.numel() for p in model.parameters())
25650961
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

from xrais.conditioning.condition import ConditioningConfig
from xrais.errors import ConfigError
from xrais.models.config import ARCHITECTURES, DEFAULT_LABELS, OUTPUT_NAMES, TASKS, ModelConfig
from xrais.models.registry import register_model

__all__ = [
    "ARCHITECTURES",
    "TASKS",
    "DEFAULT_LABELS",
    "OUTPUT_NAMES",
    "ModelConfig",
    "XraisResNet",
    "build_model",
    "radius_to_inv_resolution",
    "inv_resolution_to_radius",
    "resolution_resnet18",
    "resolution_resnet34",
    "resolution_resnet50",
    "resolution_resnet101",
    "resolution_resnet152",
    "multilattice_resnet18",
    "multilattice_resnet34",
    "multilattice_resnet50",
    "multilattice_resnet101",
    "multilattice_resnet152",
]

def radius_to_inv_resolution(radius_px: Tensor, geometry: Tensor) -> Tensor:
    """Inverse resolution (Å⁻¹) of a distance from the beam centre on a flat, normal detector.

    Figure 5B of xrais.txt: ``2θ = atan(r·p / D)``, then Bragg's law ``1/d = 2 sin θ / λ``.

    Parameters
    ----------
    radius_px : Tensor, shape (B,)
        Distance from the beam centre in pooled (conditioned) pixels.
    geometry : Tensor, shape (B, 3)
        Columns ``(distance_mm, pooled_pixel_mm, wavelength_A)``.

    Returns
    -------
    Tensor, shape (B,), float32 or wider — 1/d in Å⁻¹.

    Examples
    --------
    >>> g = torch.tensor([[100.0, 0.4, 1.0]])          # r·p = D → 2θ = 45°
    >>> round(float(radius_to_inv_resolution(torch.tensor([250.0]), g)[0]), 5)  # 2 sin 22.5° / 1 Å
    0.76537
    """
    dtype = torch.promote_types(radius_px.dtype, torch.float32)
    g = geometry.to(dtype)
    two_theta = torch.atan(radius_px.to(dtype) * g[:, 1] / g[:, 0])
    return 2.0 * torch.sin(0.5 * two_theta) / g[:, 2]


def inv_resolution_to_radius(inv_d_per_A: Tensor, geometry: Tensor) -> Tensor:
    """Distance from the beam centre (pooled pixels) at which 1/d lies: the inverse of
    :func:`radius_to_inv_resolution`, ``r = D·tan(2·asin(λ/(2d))) / p``.

    Parameters
    ----------
    inv_d_per_A : Tensor, shape (B,)
        Inverse resolution in Å⁻¹ (λ/(2d) ≤ 1/√2, i.e. 2θ < 90°).
    geometry : Tensor, shape (B, 3)
        Columns ``(distance_mm, pooled_pixel_mm, wavelength_A)``.

    Returns
    -------
    Tensor, shape (B,) — radius in pooled pixels.
    """
    dtype = torch.promote_types(inv_d_per_A.dtype, torch.float32)
    g = geometry.to(dtype)
    theta = torch.asin(0.5 * inv_d_per_A.to(dtype) * g[:, 2])
    return g[:, 0] * torch.tan(2.0 * theta) / g[:, 1]


_NO_GEOMETRY = "resolution model: geometry (B, 3) = (distance_mm, pooled_pixel_mm, wavelength_A) is required"


class XraisResNet(nn.Module):
    """One-channel ResNet with the FC1/FC2 output stage of Figure 5A.

    Parameters
    ----------
    config : ModelConfig
        Architecture, task, heads, dropout, input normalisation and conditioning.

    Attributes
    ----------
    config : ModelConfig
    provenance : dict
        Training provenance of loaded weights (empty for a new model).
    backbone : torchvision.models.ResNet
        ``conv1`` replaced by ``Conv2d(1, 64, 7, stride 2, padding 3, bias=False)``; its
        1000-way ``fc`` is kept.
    fc1, fc2 : nn.Linear
        1000 → 100 and 100 → 1.
    heads : nn.ModuleDict
        One ``Linear(100, 1)`` per extra head, keyed by its label name.
    """

    __jit_ignored_attributes__ = ["config", "provenance"]

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        import torchvision

        self.config = config
        backbone = getattr(torchvision.models, config.arch)(weights=None)
        old = backbone.conv1
        backbone.conv1 = nn.Conv2d(1, old.out_channels, kernel_size=old.kernel_size, stride=old.stride,
                                   padding=old.padding, bias=False)
        self.backbone = backbone
        self.fc1 = nn.Linear(backbone.fc.out_features, 100)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.fc2 = nn.Linear(100, 1)
        self.heads = nn.ModuleDict({name: nn.Linear(100, 1) for name in config.heads})
        # Normalisation lives in the config; the buffers follow .to(device) but stay out of the state dict.
        self.register_buffer("input_mean", torch.tensor(float(config.input_mean)), persistent=False)
        self.register_buffer("input_std", torch.tensor(float(config.input_std)), persistent=False)
        self.is_resolution: bool = config.task == "resolution"
        self.output_name: str = config.output_name
        self.provenance = {}

    def features(self, images: Tensor) -> Tensor:
        """FC1 features after ReLU and dropout, shape (B, 100)."""
        x = images
        if not x.is_floating_point():
            x = x.to(self.fc1.weight.dtype)
        x = (x - self.input_mean.to(x.dtype)) / self.input_std.to(x.dtype)
        return self.dropout(self.relu(self.fc1(self.backbone(x))))

    def forward(self, images: Tensor, geometry: Optional[Tensor] = None) -> dict[str, Tensor]:
        """Score a batch of quadrants.

        Parameters
        ----------
        images : Tensor, shape (B, 1, 512, 512), float or uint8
            Conditioned quadrants in conditioned units (0–255).
        geometry : Tensor, shape (B, 3), optional
            ``(distance_mm, pooled_pixel_mm, wavelength_A)`` per quadrant; required for the
            resolution task, ignored for multi-lattice.

        Returns
        -------
        dict of str to Tensor, each shape (B,)
            ``inv_resolution_per_A`` (Å⁻¹) or ``multilattice_logit``, plus one entry per
            extra head under its label name.

        Raises
        ------
        ConfigError
            A resolution model called without ``geometry`` (``ValueError`` under TorchScript).
        """
        if self.is_resolution and geometry is None:  # fail before the expensive part
            if not torch.jit.is_scripting():
                raise ConfigError(_NO_GEOMETRY)
            raise ValueError("resolution model: geometry (B, 3) is required")
        h = self.features(images)
        y = self.fc2(h)[:, 0]
        out: dict[str, Tensor] = {}
        if geometry is not None and self.is_resolution:
            out[self.output_name] = radius_to_inv_resolution(y, geometry)
        else:
            out[self.output_name] = y
        for name, head in self.heads.items():
            out[name] = head(h)[:, 0]
        return out

    def predict(self, inputs: Any, geometry: Any = None, *, batch_size: int = 32, device: Any = None) -> Any:
        """Score images or conditioned quadrants; see :func:`xrais.models.predict.predict`.

        Returns
        -------
        Prediction
            Arrays of shape (N images, Q quadrants).
        """
        from xrais.models.predict import predict

        return predict(self, inputs, geometry, batch_size=batch_size, device=device)

    def num_params(self) -> int:
        """Number of parameters (the Table 2 "Total parameters")."""
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        return f"arch={self.config.arch!r}, task={self.config.task!r}, heads={self.config.heads!r}"


def build_model(
    arch: str = "resnet50",
    task: str = "resolution",
    *,
    heads: Sequence[str] = (),
    dropout: float | None = None,
    input_mean: float = 0.0,
    input_std: float = 1.0,
    conditioning: ConditioningConfig | None = None,
    label: str | None = None,
) -> XraisResNet:
    """Build a model with random weights.

    Parameters
    ----------
    arch : str
        One of :data:`ARCHITECTURES`.
    task : str
        One of :data:`TASKS`.
    heads : sequence of str
        Extra regression heads, named by shard label columns (e.g. ``"b_factor_A2"``).
    dropout : float, optional
        FC1 dropout; default 0.0 for resolution, 0.5 for multi-lattice (Table 2).
    input_mean, input_std : float
        Input normalisation, in conditioned units.
    conditioning : ConditioningConfig, optional
        How inputs are conditioned; default ``ConditioningConfig()``.
    label : str, optional
        Label column of the main output; default by task.

    Returns
    -------
    XraisResNet
        In training mode, on the CPU.

    Raises
    ------
    ConfigError
        Unknown ``arch`` or ``task`` (the message lists the valid ones), or another bad value.
    """
    from pydantic import ValidationError

    if arch not in ARCHITECTURES:
        raise ConfigError(f"model architecture {arch!r}: expected one of {', '.join(ARCHITECTURES)}")
    if task not in TASKS:
        raise ConfigError(f"model task {task!r}: expected one of {', '.join(TASKS)}")
    fields: dict[str, Any] = dict(arch=arch, task=task, heads=tuple(heads), dropout=dropout,
                                  input_mean=input_mean, input_std=input_std, label=label)
    if conditioning is not None:
        fields["conditioning"] = conditioning
    try:
        config = ModelConfig(**fields)
    except ValidationError as exc:
        raise ConfigError(f"model {task}_{arch}: {_first_error(exc)}") from None
    if not math.isfinite(config.input_mean) or not math.isfinite(config.input_std):
        raise ConfigError(f"model {task}_{arch}: input_mean and input_std must be finite")
    return XraisResNet(config)


def _first_error(exc: Any) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "config"
    return f"{where}: {err.get('msg', exc)}"


def _build(task: str, arch: str, weights: Any, progress: bool, **kwargs: Any) -> XraisResNet:
    """Build ``task``/``arch``; with ``weights`` (a checkpoint path or name) load them.

    Keyword options that contradict the checkpoint's config raise :class:`ConfigError`, as
    the checkpoint decides the heads and normalisation.
    """
    del progress  # checkpoints are local files; kept for the torchvision builder signature
    if weights is None:
        return build_model(arch, task, **kwargs)
    from xrais.models.checkpoint import load_pretrained

    model = load_pretrained(weights, arch=arch, task=task)
    for key, value in kwargs.items():
        have = getattr(model.config, key, None)
        if key == "heads":
            value = tuple(value)
        if have != value:
            raise ConfigError(f"{task}_{arch}: {key}={value!r} contradicts the weights, which have {key}={have!r}")
    return model


_BUILDER_DOC = """

    Parameters
    ----------
    weights : str or Path, optional
        A checkpoint file, folder or registered name (see :func:`~xrais.models.load_pretrained`);
        None builds random weights.
    progress : bool
        Accepted for torchvision compatibility; checkpoints are local files.
    **kwargs
        Passed to :func:`build_model` (``heads``, ``dropout``, ``input_mean``, ``input_std``,
        ``conditioning``); with ``weights`` they must agree with the checkpoint.

    Returns
    -------
    XraisResNet
    """


def _doc(summary: str) -> Any:
    def attach(fn: Any) -> Any:
        fn.__doc__ = summary + _BUILDER_DOC
        return fn
    return attach


@register_model()
@_doc("ResNet-18 regressor of 1/d (Å⁻¹) from one 512×512 conditioned quadrant.")
def resolution_resnet18(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> XraisResNet:
    return _build("resolution", "resnet18", weights, progress, **kwargs)


@register_model()
@_doc("ResNet-34 regressor of 1/d (Å⁻¹) from one 512×512 conditioned quadrant.")
def resolution_resnet34(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> XraisResNet:
    return _build("resolution", "resnet34", weights, progress, **kwargs)


@register_model()
@_doc("ResNet-50 regressor of 1/d (Å⁻¹) from one 512×512 conditioned quadrant (Table 2: 25,650,961 parameters).")
def resolution_resnet50(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> XraisResNet:
    return _build("resolution", "resnet50", weights, progress, **kwargs)


@register_model()
@_doc("ResNet-101 regressor of 1/d (Å⁻¹) from one 512×512 conditioned quadrant.")
def resolution_resnet101(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> XraisResNet:
    return _build("resolution", "resnet101", weights, progress, **kwargs)


@register_model()
@_doc("ResNet-152 regressor of 1/d (Å⁻¹) from one 512×512 conditioned quadrant.")
def resolution_resnet152(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> XraisResNet:
    return _build("resolution", "resnet152", weights, progress, **kwargs)


@register_model()
@_doc("ResNet-18 classifier of multi-lattice scattering from one 512×512 conditioned quadrant.")
def multilattice_resnet18(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> XraisResNet:
    return _build("multilattice", "resnet18", weights, progress, **kwargs)


@register_model()
@_doc("ResNet-34 classifier of multi-lattice scattering from one 512×512 conditioned quadrant (Table 2: 21,891,601 parameters).")
def multilattice_resnet34(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> XraisResNet:
    return _build("multilattice", "resnet34", weights, progress, **kwargs)


@register_model()
@_doc("ResNet-50 classifier of multi-lattice scattering from one 512×512 conditioned quadrant.")
def multilattice_resnet50(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> XraisResNet:
    return _build("multilattice", "resnet50", weights, progress, **kwargs)


@register_model()
@_doc("ResNet-101 classifier of multi-lattice scattering from one 512×512 conditioned quadrant.")
def multilattice_resnet101(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> XraisResNet:
    return _build("multilattice", "resnet101", weights, progress, **kwargs)


@register_model()
@_doc("ResNet-152 classifier of multi-lattice scattering from one 512×512 conditioned quadrant.")
def multilattice_resnet152(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> XraisResNet:
    return _build("multilattice", "resnet152", weights, progress, **kwargs)
