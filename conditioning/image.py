"""The in-memory diffraction image: pixels, validity mask and the geometry they came with."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xrais.geometry import Beam, Detector

__all__ = ["DiffractionImage", "trusted_mask"]


def trusted_mask(
    pixels: np.ndarray,
    trusted_range: tuple[float, float],
    undefined_values: tuple[float, ...] = (),
    gap_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Invalid pixels: outside ``trusted_range`` (inclusive), equal to an undefined value, or gaps.

    Parameters
    ----------
    pixels : ndarray, shape (n_slow, n_fast)
        Raw counts.
    trusted_range : (float, float)
        Lowest and highest valid count.
    undefined_values : tuple of float
        Values the format uses for "no data" (e.g. -1 gap, -2 bad for PILATUS).
    gap_mask : ndarray of bool, optional
        True for pixels that belong to no module.

    Returns
    -------
    ndarray of bool, shape (n_slow, n_fast)
        True where the pixel must not be used.
    """
    lo, hi = trusted_range
    mask = (pixels < lo) | (pixels > hi)
    if np.issubdtype(pixels.dtype, np.floating):
        mask |= ~np.isfinite(pixels)
    for v in undefined_values:
        mask |= pixels == v
    if gap_mask is not None:
        mask |= gap_mask
    return mask


@dataclass(frozen=True, eq=False)
class DiffractionImage:
    """One frame of a detector, with its geometry.

    Attributes
    ----------
    pixels : ndarray, shape (n_slow, n_fast)
        Counts as stored by the detector (native dtype; multi-panel detectors assembled).
    mask : ndarray of bool, shape (n_slow, n_fast)
        True for gap, bad, overloaded and undefined pixels.
    detector : Detector
        The detector model (for multi-panel detectors, the real panels).
    beam : Beam
        The incident beam.
    beam_center_px : (float, float)
        (fast, slow) position of the direct beam in ``pixels``, continuous pixel coordinates.
    path : Path or None
        The file the frame came from.
    frame : int
        Index of the frame within the file (0 for single-frame files).
    format : str
        Name of the reader that produced it.
    header : dict
        Further facts from the header (date, exposure, serial number, …).
    downsample_block : int
        Conditioning max-pool block N for this image (from the detector or the assembly).
    """

    pixels: np.ndarray
    mask: np.ndarray
    detector: Detector
    beam: Beam
    beam_center_px: tuple[float, float]
    path: Path | None = None
    frame: int = 0
    format: str = ""
    header: dict[str, Any] = field(default_factory=dict)
    downsample_block: int = 0

    def __post_init__(self) -> None:
        if self.pixels.ndim != 2:
            raise ValueError(f"{self.label}: expected 2-D pixels, got shape {self.pixels.shape}")
        if self.mask.shape != self.pixels.shape:
            raise ValueError(f"{self.label}: mask shape {self.mask.shape} != pixels {self.pixels.shape}")
        if not self.downsample_block:
            object.__setattr__(self, "downsample_block", self.detector.downsample_block)
        object.__setattr__(self, "beam_center_px", tuple(float(v) for v in self.beam_center_px))

    @property
    def label(self) -> str:
        """``file`` or ``file:frame`` for messages and tables."""
        name = self.path.name if self.path is not None else "<array>"
        return name if self.frame == 0 else f"{name}:{self.frame}"

    @property
    def shape(self) -> tuple[int, int]:
        """(n_slow, n_fast)."""
        return self.pixels.shape  # type: ignore[return-value]

    def valid_pixels(self) -> np.ndarray:
        """1-D array of the counts of all valid pixels."""
        return self.pixels[~self.mask]

    def statistics(self) -> dict[str, float]:
        """min, median, max and mean of the valid counts and the masked fraction."""
        v = self.valid_pixels()
        if v.size == 0:
            return {"min": float("nan"), "median": float("nan"), "max": float("nan"),
                    "mean": float("nan"), "masked_fraction": 1.0}
        return {
            "min": float(v.min()),
            "median": float(np.median(v)),
            "max": float(v.max()),
            "mean": float(v.mean(dtype=np.float64)),
            "masked_fraction": float(self.mask.mean()),
        }
