"""The conditioning API: detector images (or arrays) in, 512×512 uint8 quadrants out."""

from __future__ import annotations

from typing import Any, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from xrais.conditioning.image import DiffractionImage
from xrais.conditioning.transform import QUADRANT_SIZE, condition_pixels
from xrais.errors import ConfigError, GeometryError

__all__ = ["ConditioningConfig", "condition", "condition_batch", "resolve_block"]


class ConditioningConfig(BaseModel):
    """How images are conditioned (stored with every conditioned file and checkpoint)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    block: int | None = Field(None, ge=1, le=64, description="max-pool block N; None: the detector's own")
    quadrants: Literal[1, 4] = Field(4, description="4 quadrants, or only the upper-left one")
    quadrant_size: Literal[512] = Field(QUADRANT_SIZE, description="side of a quadrant in pooled pixels")
    transform: Literal["maxpool_sqrt_floor_clip255"] = "maxpool_sqrt_floor_clip255"


def resolve_block(image: DiffractionImage, block: int | None) -> int:
    """The block N to use: ``block`` if given, else the image's detector default."""
    return int(block) if block is not None else int(image.downsample_block)


def condition(
    image: DiffractionImage | np.ndarray | Any,
    beam_center_px: tuple[float, float] | None = None,
    block: int | None = None,
    quadrants: int = 4,
    *,
    mask: np.ndarray | None = None,
    device: Any | None = None,
) -> Any:
    """Condition one image into ``quadrants`` 512×512 uint8 arrays with the beam at [0, 0].

    Parameters
    ----------
    image : DiffractionImage, ndarray or torch.Tensor
        A read image (centre, block and mask come from it unless given), or raw pixels of
        shape (n_slow, n_fast).
    beam_center_px : (float, float), optional
        (fast, slow) beam centre; required for a bare array.
    block : int, optional
        Max-pool block N; required for a bare array.
    quadrants : {4, 1}
        4 quadrants, or the upper-left one.
    mask : ndarray of bool, optional
        Invalid pixels of a bare array (an image brings its own).
    device : str or torch.device, optional
        Compute with PyTorch on this device (e.g. ``"cuda"``); the result is then a tensor.
        A tensor input also selects the PyTorch path.

    Returns
    -------
    ndarray or torch.Tensor, shape (quadrants, 512, 512), uint8

    Raises
    ------
    ConfigError
        Bad shape, dtype, block or quadrant count; all-NaN pixels.
    GeometryError
        A beam centre off the detector.

    Examples
    --------
    >>> import numpy as np
    >>> px = np.zeros((100, 120), dtype=np.int32); px[50, 60] = 400
    >>> q = condition(px, beam_center_px=(40.0, 40.0), block=2)
    >>> q.shape, q.dtype, int(q[2].max()), int(q[2][5, 10])
    ((4, 512, 512), dtype('uint8'), 20, 20)
    """
    if isinstance(image, DiffractionImage):
        pixels = image.pixels
        mask = image.mask if mask is None else mask
        beam_center_px = image.beam_center_px if beam_center_px is None else beam_center_px
        block = resolve_block(image, block)
        name = image.label
    else:
        pixels = image
        name = "pixels"
        if beam_center_px is None or block is None:
            raise ConfigError(f"{name}: a bare pixel array needs beam_center_px and block")
    try:
        if device is not None or type(pixels).__module__.startswith("torch"):
            from xrais.conditioning.transform_torch import condition_torch

            return condition_torch(pixels, beam_center_px, block, quadrants, mask, device=device)
        return condition_pixels(pixels, beam_center_px, block, quadrants, mask)
    except (ConfigError, GeometryError) as exc:
        if isinstance(image, DiffractionImage):
            raise type(exc)(f"{name}: {exc}") from None
        raise


def condition_batch(
    images: Sequence[DiffractionImage],
    *,
    block: int | None = None,
    quadrants: int = 4,
    device: Any | None = None,
) -> Any:
    """Condition many images into one array of shape (n, quadrants, 512, 512), uint8.

    With ``device`` set the work runs in PyTorch there and a tensor is returned.
    """
    if device is not None:
        import torch

        return torch.stack([condition(im, block=block, quadrants=quadrants, device=device) for im in images])
    out = np.empty((len(images), quadrants, QUADRANT_SIZE, QUADRANT_SIZE), dtype=np.uint8)
    for i, im in enumerate(images):
        condition_pixels(im.pixels, im.beam_center_px, resolve_block(im, block), quadrants, im.mask, out=out[i])
    return out
