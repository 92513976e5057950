"""Export a model to TorchScript or ONNX for serving without xrais.

Both formats take float32 images of shape (B, 1, 512, 512) in conditioned units (B is
dynamic) and, for a resolution model, geometry of shape (B, 3) =
``(distance_mm, pooled_pixel_mm, wavelength_A)``. Outputs are the model's outputs in the
order of ``config.output_names``: ``inv_resolution_per_A`` (Å⁻¹) or ``multilattice_logit``
(apply a sigmoid for the probability), then the extra heads, each of shape (B,).

The model's :class:`~xrais.models.ModelConfig` travels with the file: as the TorchScript extra
file ``xrais_config.json``, and as the ONNX metadata property ``xrais_config``.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from xrais.errors import ConfigError

__all__ = ["EXPORT_FORMATS", "export_torchscript", "export_onnx", "export_model", "example_inputs"]

EXPORT_FORMATS: tuple[str, ...] = ("onnx", "torchscript")


def _plain(model: Any) -> Any:
    from xrais.models.checkpoint import unwrap_model
    from xrais.models.resnet import XraisResNet

    inner = unwrap_model(model)
    if not isinstance(inner, XraisResNet):
        raise ConfigError(f"export: expected an XraisResNet, got {type(inner).__name__}")
    return inner


@contextmanager
def _exporting(model: Any, path: str | os.PathLike[str]) -> Iterator[tuple[Any, Path]]:
    """The plain model in eval mode on the CPU, and a temporary file beside ``path``.

    On success the temporary file is renamed to ``path``; in every case the model goes back
    to its device and mode and no temporary file is left.
    """
    model = _plain(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    device = next(model.parameters()).device
    model.eval().to("cpu")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield model, tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
        model.to(device).train(was_training)


def example_inputs(model: Any, batch: int = 2) -> tuple[Any, ...]:
    """Example inputs for tracing: ``(images,)`` or ``(images, geometry)``.

    Returns
    -------
    tuple of Tensor
        images (batch, 1, 512, 512) float32 in 0–255; geometry (batch, 3) float32 of a
        PILATUS 6M at 200 mm, block 2 (0.344 mm pooled pixels), 1 Å.
    """
    import torch

    side = model.config.conditioning.quadrant_size
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 1, side, side), generator=gen).float()
    if model.config.task != "resolution":
        return (images,)
    geometry = torch.tensor([[200.0, 0.344, 1.0]]).repeat(batch, 1)
    return images, geometry


class _TupleOutputs:
    """Builds an nn.Module that returns the model's outputs as a tuple in a fixed order."""

    @staticmethod
    def wrap(model: Any) -> Any:
        from torch import nn

        names = tuple(model.config.output_names)

        if model.config.task == "resolution":
            class Resolution(nn.Module):
                def __init__(self) -> None:
                    super().__init__()
                    self.model = model

                def forward(self, images: Any, geometry: Any) -> tuple[Any, ...]:
                    out = self.model(images, geometry)
                    return tuple(out[k] for k in names)

            return Resolution()

        class Multilattice(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, images: Any) -> tuple[Any, ...]:
                out = self.model(images)
                return tuple(out[k] for k in names)

        return Multilattice()


def export_torchscript(model: Any, path: str | os.PathLike[str]) -> Path:
    """Script ``model`` (eval mode, CPU) and save it with its config as ``xrais_config.json``.

    Parameters
    ----------
    model : XraisResNet
    path : str or Path
        Destination ``.pt`` file.

    Returns
    -------
    Path
        The written file. ``torch.jit.load(path)(images[, geometry])`` returns a dict of
        (B,) tensors, as the model does.
    """
    import torch

    with _exporting(model, path) as (model, tmp), warnings.catch_warnings():
        warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning, UserWarning))
        scripted = torch.jit.script(model)
        torch.jit.save(scripted, str(tmp), _extra_files={"xrais_config.json": model.config.model_dump_json()})
    return Path(path)


def export_onnx(model: Any, path: str | os.PathLike[str], *, opset: int | None = None) -> Path:
    """Export ``model`` (eval mode, CPU) to one ONNX file with a dynamic batch dimension.

    Parameters
    ----------
    model : XraisResNet
    path : str or Path
        Destination ``.onnx`` file (weights inside the file, not beside it).
    opset : int, optional
        ONNX opset; default: the exporter's.

    Returns
    -------
    Path
        The written file. Inputs are named ``images`` (and ``geometry``), outputs by
        ``config.output_names``.
    """
    import onnx
    import torch

    with _exporting(model, path) as (model, tmp):
        wrapper = _TupleOutputs.wrap(model)
        inputs = example_inputs(model)
        input_names = ["images", "geometry"][: len(inputs)]
        batch = torch.export.Dim("batch", min=1)
        shapes = {"images": {0: batch}} if len(inputs) == 1 else {"images": {0: batch}, "geometry": {0: batch}}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(wrapper, inputs, dynamo=True, input_names=input_names,
                                        output_names=list(model.config.output_names), opset_version=opset,
                                        dynamic_shapes=shapes, external_data=False, verbose=False)
        proto = program.model_proto
        onnx.helper.set_model_props(proto, {"xrais_config": model.config.model_dump_json()})
        onnx.save_model(proto, str(tmp))
    return Path(path)


def export_model(model: Any, path: str | os.PathLike[str], *, format: str, opset: int | None = None) -> Path:
    """Export to ``format`` (``"onnx"`` or ``"torchscript"``); see :func:`export_onnx`, :func:`export_torchscript`."""
    if format == "onnx":
        return export_onnx(model, path, opset=opset)
    if format == "torchscript":
        return export_torchscript(model, path)
    raise ConfigError(f"export format {format!r}: expected one of {', '.join(EXPORT_FORMATS)}")
