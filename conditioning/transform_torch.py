"""The conditioning transform in PyTorch, for any device (the GPU path).

Same output as :func:`xrais.conditioning.transform.condition_pixels`, bit for bit: the
window around the beam centre is cut (zero-padded), max-pooled with ``max_pool2d`` in
float32 (exact, since counts are first clipped to 0–65536), and the square root is taken in
float64 before the floor, so values a hair under a perfect square round the same way as on
the CPU.
"""

from __future__ import annotations

from typing import Any

from xrais.conditioning.transform import (
    QUADRANT_REGIONS,
    QUADRANT_ROTATIONS,
    QUADRANT_SIZE,
    _check_block,
    _check_quadrants,
    check_image_fits,
    quadrant_corner_px,
)
from xrais.errors import ConfigError

__all__ = ["condition_torch"]


def condition_torch(
    pixels: Any,
    beam_center_px: tuple[float, float],
    block: int,
    quadrants: int = 4,
    mask: Any | None = None,
    *,
    device: Any | None = None,
) -> Any:
    """Condition a 2-D tensor (or array) on ``device``; returns a uint8 tensor (q, 512, 512).

    Parameters
    ----------
    pixels : torch.Tensor or ndarray, shape (n_slow, n_fast)
        Raw counts; moved to ``device`` when one is given.
    beam_center_px : (float, float)
        (fast, slow) beam centre in pixels.
    block : int
        Max-pool block N.
    quadrants : {4, 1}
    mask : torch.Tensor or ndarray of bool, optional
        True for invalid pixels.
    device : torch.device or str, optional
        Where to compute (default: where ``pixels`` already is).
    """
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(pixels, device=device)
    if x.ndim != 2 or 0 in x.shape:
        raise ConfigError(f"pixels: expected a 2-D (slow, fast) tensor, got shape {tuple(x.shape)}")
    block = _check_block(block)
    quadrants = _check_quadrants(quadrants)
    corner_f, corner_s = quadrant_corner_px(beam_center_px, tuple(x.shape))
    check_image_fits((corner_f, corner_s), tuple(x.shape), block, quadrants)
    if x.is_floating_point():
        if not torch.isfinite(x).any():
            raise ConfigError("pixels: every pixel is NaN or infinite; expected counts")
        x = torch.nan_to_num(x, nan=0.0, posinf=65536.0, neginf=0.0)
    elif x.dtype not in (torch.int32, torch.int64):
        x = x.to(torch.int64)  # unsigned and small integer types lack clamp on some devices
    x = x.clamp(0, 65536).to(torch.float32)
    if mask is not None:
        x = x.masked_fill(torch.as_tensor(mask, device=x.device, dtype=torch.bool), 0.0)
    half = QUADRANT_SIZE * block
    n_slow, n_fast = x.shape
    window = torch.zeros((2 * half, 2 * half), dtype=torch.float32, device=x.device)
    s_lo, s_hi = max(corner_s - half, 0), min(corner_s + half, n_slow)
    f_lo, f_hi = max(corner_f - half, 0), min(corner_f + half, n_fast)
    window[s_lo - (corner_s - half) : s_hi - (corner_s - half), f_lo - (corner_f - half) : f_hi - (corner_f - half)] = (
        x[s_lo:s_hi, f_lo:f_hi]
    )
    pooled = F.max_pool2d(window[None, None], kernel_size=block, stride=block)[0, 0]
    cond = torch.floor(torch.sqrt(pooled.to(torch.float64))).clamp_(max=255).to(torch.uint8)
    return torch.stack([torch.rot90(cond[r], k) for r, k in zip(QUADRANT_REGIONS, QUADRANT_ROTATIONS)][:quadrants])
