"""The shoebox data objects: :class:`ShoeboxConfig` (what to simulate) and :class:`ShoeboxSet` (the result).

Voxels are indexed ``[frame, slow, fast]``; see :mod:`xrais.simulate.shoeboxes` for the
conventions and the meaning of the true intensity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from xrais.errors import DatasetError

__all__ = ["ShoeboxConfig", "ShoeboxSet", "REFLECTION_COLUMNS", "SHOEBOX_ARRAYS"]

#: Per-reflection metadata columns of a :class:`ShoeboxSet` (shape, dtype, meaning).
REFLECTION_COLUMNS = {
    "miller_index": ("(n, 3) int32", "h, k, l as indexed (not reduced to the asymmetric unit)"),
    "image": ("(n,) int32", "0-based image holding the centroid (BATCH − 1)"),
    "frame_first": ("(n,) int32", "image of the shoebox's first frame"),
    "corner_px": ("(n, 2) int32", "(fast, slow) data-array pixel of voxel [:, 0, 0]"),
    "xyz_px": ("(n, 3) float64", "predicted centroid: fast, slow (pixels), z (frames)"),
    "phi_deg": ("(n,) float64", "spindle angle of the centroid (stills: the image's angle, 0)"),
    "panel": ("(n,) int32", "detector panel of the centroid"),
    "d_A": ("(n,) float64", "resolution d from the cell"),
    "wavelength_A": ("(n,) float64", "wavelength"),
    "ewald_offset_per_A": ("(n,) float64", "excitation error |s₀+S| − 1/λ at the centroid image's mid-angle"),
    "partiality": ("(n,) float64", "rotation: fraction of the reflection recorded in the scan; "
                   "still: Π(ε)/Π(0) averaged over domains"),
    "lorentz": ("(n,) float64", "Lorentz factor 1/|ê·(ŝ₀×ŝ₁)| (rotation), 1 for stills"),
    "polarization": ("(n,) float64", "polarization factor P at the centroid"),
    "solid_angle_sr": ("(n,) float64", "solid angle Ω of the centroid pixel"),
    "scale": ("(n,) float64", "per-image scale applied to the Bragg signal of the centroid image"),
    "F_true": ("(n,) float64", "|F| (electrons) of the reflection in the structure-factor table"),
    "intensity_true": ("(n,) float64", "photons the reflection records over the scan (its image, for a still)"),
    "tail_fraction": ("(n,) float64", "part of intensity_true in frames outside the shoebox"),
}
#: The voxel arrays of a :class:`ShoeboxSet`.
SHOEBOX_ARRAYS = ("counts", "signal", "background", "mask")


class ShoeboxConfig(BaseModel):
    """How shoeboxes are simulated: the scan, the shoebox, background, scales and noise."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["rotation", "stills"] = Field("rotation", description="a rotation series or independent stills")
    n_images: int = Field(10, ge=1, le=100_000, description="frames of the series, or number of stills")
    shoebox_shape: tuple[int, int, int] = Field((3, 21, 21),
                                                description="(frames, height, width) voxels; stills use 1 frame")
    phi_start_deg: float = Field(0.0, description="spindle angle at the start of the first frame")
    osc_deg: float = Field(0.5, gt=0, le=30, description="rotation per frame")
    phi_steps: int = Field(4, ge=1, le=100, description="sub-steps averaged per frame")
    d_min_A: float = Field(2.0, gt=0.3, le=100, description="resolution limit of the predicted reflections")
    oversample: int = Field(1, ge=1, le=16, description="sub-pixels per pixel side")
    min_partiality: float = Field(0.05, ge=0, le=1, description="stills: drop reflections less in diffraction")
    image_scale_sigma: float = Field(0.1, ge=0, le=3, description="σ of the log-normal per-image scale (mean 1)")
    crystal_scale: float = Field(1.0, gt=0, description="Bragg signal multiplier: mosaic domains in the crystal")
    air_mm: float = Field(5.0, ge=0, le=10000, description="air path in the beam")
    water_um: float = Field(25.0, ge=0, le=10000, description="water / buffer thickness")
    background_scale: float = Field(1.0, ge=0, description="overall background factor")

    @field_validator("shoebox_shape")
    @classmethod
    def _shape(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if not all(1 <= int(n) <= 255 for n in v):
            raise ValueError("shoebox_shape: expected three sizes of 1–255 voxels")
        return tuple(int(n) for n in v)  # type: ignore[return-value]

    def effective_shape(self) -> tuple[int, int, int]:
        """The shoebox shape actually used: one frame for stills."""
        f, h, w = self.shoebox_shape
        return (1, h, w) if self.mode == "stills" else (f, h, w)


@dataclass(frozen=True, eq=False)
class ShoeboxSet:
    """Shoeboxes with their truth and metadata; every array has one row per reflection.

    Attributes
    ----------
    counts : ndarray, shape (n, F, H, W), int32 — photons counted (0 where masked)
    signal : ndarray, shape (n, F, H, W), float32 — the reflection's own noiseless photons
    background : ndarray, shape (n, F, H, W), float32 — noiseless background photons
    mask : ndarray, shape (n, F, H, W), bool — True where a pixel of a frame of the scan was measured
    reflections : dict of str to ndarray — :data:`REFLECTION_COLUMNS`
    attrs : dict — provenance (config JSON, seed, geometry), stored as file attributes
    """

    counts: np.ndarray
    signal: np.ndarray
    background: np.ndarray
    mask: np.ndarray
    reflections: dict[str, np.ndarray]
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.counts.shape[0]
        for name in SHOEBOX_ARRAYS:
            arr = getattr(self, name)
            if arr.shape != self.counts.shape:
                raise DatasetError(f"shoeboxes: {name} has shape {arr.shape}, expected {self.counts.shape}")
        for name, col in self.reflections.items():
            if len(col) != n:
                raise DatasetError(f"shoeboxes: column {name!r} has {len(col)} rows, expected {n}")

    def __len__(self) -> int:
        return int(self.counts.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """(frames, height, width) of one shoebox."""
        return tuple(self.counts.shape[1:])  # type: ignore[return-value]

    def subset(self, index: Any) -> "ShoeboxSet":
        """The rows ``index`` (an integer array or a boolean mask)."""
        return ShoeboxSet(self.counts[index], self.signal[index], self.background[index], self.mask[index],
                          {k: v[index] for k, v in self.reflections.items()}, dict(self.attrs))

    @staticmethod
    def concatenate(sets: Sequence["ShoeboxSet"]) -> "ShoeboxSet":
        """Rows of several sets of the same shoebox shape and columns, in order."""
        if not sets:
            raise DatasetError("shoeboxes: nothing to concatenate")
        shapes = {s.shape for s in sets}
        if len(shapes) != 1:
            raise DatasetError(f"shoeboxes: cannot join sets of shapes {sorted(shapes)}")
        cols = set(sets[0].reflections)
        return ShoeboxSet(*(np.concatenate([getattr(s, a) for s in sets]) for a in SHOEBOX_ARRAYS),
                          {k: np.concatenate([s.reflections[k] for s in sets]) for k in sorted(cols)},
                          dict(sets[0].attrs))

    def signal_sum(self) -> np.ndarray:
        """(n,) float64 — the reflection's noiseless photons inside the shoebox (all voxels)."""
        return self.signal.reshape(len(self), -1).sum(axis=1, dtype=np.float64)
