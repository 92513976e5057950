"""Models: the ResNet resolution regressor and multi-lattice classifier, and their checkpoints.

Typical use::

    from xrais.models import load_pretrained
    model = load_pretrained("resolution.safetensors")   # or a folder, or a name (user's folder, else shipped)
    pred = model.predict(image)                          # DiffractionImage or conditioned arrays
    pred.min_resolution_A

Building and saving::

    from xrais.models import build_model, save_checkpoint
    model = build_model("resnet50", "resolution")        # Table 2: 25,650,961 parameters
    save_checkpoint(model, "out/best.safetensors", epochs=30, metrics={"mae": 0.01})
    save_checkpoint(model, "small.safetensors", weights_dtype="float16")   # half the size, loads as float32
"""

from typing import TYPE_CHECKING

from xrais._lazy import lazy_package

__all__ = [
    "ARCHITECTURES",
    "TASKS",
    "DEFAULT_LABELS",
    "OUTPUT_NAMES",
    "ModelConfig",
    "XraisResNet",
    "build_model",
    "get_model",
    "list_models",
    "register_model",
    "radius_to_inv_resolution",
    "inv_resolution_to_radius",
    "save_checkpoint",
    "load_pretrained",
    "load_checkpoint_meta",
    "resolve_checkpoint",
    "list_checkpoints",
    "shipped_checkpoints",
    "default_models_dir",
    "shipped_models_dir",
    "unwrap_model",
    "CheckpointMeta",
    "ShippedCheckpoint",
    "CHECKPOINT_FORMAT",
    "WEIGHTS_DTYPES",
    "Prediction",
    "predict",
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

# Names are imported from their modules on first use (xrais._lazy): importing the package stays cheap.
lazy_package(__name__, {
    "xrais.models.checkpoint": (
        "CHECKPOINT_FORMAT", "WEIGHTS_DTYPES", "CheckpointMeta", "ShippedCheckpoint", "default_models_dir",
        "list_checkpoints", "load_checkpoint_meta", "load_pretrained", "resolve_checkpoint", "save_checkpoint",
        "shipped_checkpoints", "shipped_models_dir", "unwrap_model",
    ),
    "xrais.models.predict": ("Prediction", "predict"),
    "xrais.models.registry": ("get_model", "list_models", "register_model"),
    "xrais.models.resnet": (
        "ARCHITECTURES", "DEFAULT_LABELS", "OUTPUT_NAMES", "TASKS", "ModelConfig", "XraisResNet", "build_model",
        "inv_resolution_to_radius", "multilattice_resnet18", "multilattice_resnet34", "multilattice_resnet50",
        "multilattice_resnet101", "multilattice_resnet152", "radius_to_inv_resolution", "resolution_resnet18",
        "resolution_resnet34", "resolution_resnet50", "resolution_resnet101", "resolution_resnet152",
    ),
})

if TYPE_CHECKING:  # for type checkers and editors: the same names, imported at once
    from xrais.models.checkpoint import (
        CHECKPOINT_FORMAT,
        WEIGHTS_DTYPES,
        CheckpointMeta,
        ShippedCheckpoint,
        default_models_dir,
        list_checkpoints,
        load_checkpoint_meta,
        load_pretrained,
        resolve_checkpoint,
        save_checkpoint,
        shipped_checkpoints,
        shipped_models_dir,
        unwrap_model,
    )
    from xrais.models.predict import Prediction, predict
    from xrais.models.registry import get_model, list_models, register_model
    from xrais.models.resnet import (
        ARCHITECTURES,
        DEFAULT_LABELS,
        OUTPUT_NAMES,
        TASKS,
        ModelConfig,
        XraisResNet,
        build_model,
        inv_resolution_to_radius,
        multilattice_resnet18,
        multilattice_resnet34,
        multilattice_resnet50,
        multilattice_resnet101,
        multilattice_resnet152,
        radius_to_inv_resolution,
        resolution_resnet18,
        resolution_resnet34,
        resolution_resnet50,
        resolution_resnet101,
        resolution_resnet152,
    )
