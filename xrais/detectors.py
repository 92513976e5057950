"""The detector catalog: real models with their pixel grids, module layouts and gaps.

Each :class:`CatalogEntry` builds a flat :class:`~xrais.geometry.Detector` of modules normal to
the beam (dxtbx convention: fast +x, slow −y); dimensions follow the manufacturers'
specifications and reproduce the array sizes and gap-pixel counts of real frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from xrais.errors import ConfigError
from xrais.geometry import Detector, Panel

__all__ = ["CatalogEntry", "DETECTOR_CATALOG", "list_detectors", "catalog_entry_for_shape", "default_downsample_block"]


def _module_grid(
    *,
    name: str,
    module_size: tuple[int, int],
    n_modules: tuple[int, int],
    gap_px: tuple[Sequence[int], Sequence[int]],
    pixel_size_mm: float | tuple[float, float],
    distance_mm: float,
    beam_center_px: tuple[float, float] | None,
    downsample_block: int,
    trusted_range: tuple[float, float],
    thickness_mm: float,
    material: str,
    serial_number: str = "",
) -> Detector:
    """A flat detector of ``n_modules`` (fast, slow) modules separated by gaps, normal to −z."""
    if not (isinstance(distance_mm, (int, float)) and math.isfinite(distance_mm) and distance_mm > 0):
        raise ConfigError(f"detector {name!r}: expected a positive distance in mm, got {distance_mm!r}")
    px = (float(pixel_size_mm), float(pixel_size_mm)) if np.isscalar(pixel_size_mm) else tuple(
        float(v) for v in pixel_size_mm  # type: ignore[union-attr]
    )
    mf, ms = module_size
    gaps_f, gaps_s = list(gap_px[0]), list(gap_px[1])
    starts_f = [i * mf + sum(gaps_f[:i]) for i in range(n_modules[0])]
    starts_s = [i * ms + sum(gaps_s[:i]) for i in range(n_modules[1])]
    n_fast = starts_f[-1] + mf
    n_slow = starts_s[-1] + ms
    if beam_center_px is None:
        beam_center_px = (n_fast / 2.0, n_slow / 2.0)
    bx_mm, by_mm = beam_center_px[0] * px[0], beam_center_px[1] * px[1]
    fast, slow = np.array([1.0, 0.0, 0.0]), np.array([0.0, -1.0, 0.0])
    origin = np.array([-bx_mm, by_mm, -float(distance_mm)])
    panels = []
    for j, s0 in enumerate(starts_s):
        for i, f0 in enumerate(starts_f):
            o = origin + f0 * px[0] * fast + s0 * px[1] * slow
            panels.append(
                Panel(
                    name=f"{name}_m{j:02d}_{i:02d}" if len(starts_f) * len(starts_s) > 1 else name,
                    image_size=(mf, ms),
                    pixel_size_mm=px,  # type: ignore[arg-type]
                    fast_axis=tuple(fast),  # type: ignore[arg-type]
                    slow_axis=tuple(slow),  # type: ignore[arg-type]
                    origin_mm=tuple(o),  # type: ignore[arg-type]
                    array_offset_px=(f0, s0),
                    trusted_range=trusted_range,
                    thickness_mm=thickness_mm,
                    material=material,
                )
            )
    return Detector(panels=tuple(panels), name=name, array_shape=(n_slow, n_fast),
                    downsample_block=downsample_block, serial_number=serial_number)


@dataclass(frozen=True)
class CatalogEntry:
    """A detector model: pixel grid, module layout and defaults.

    ``module_size`` and ``n_modules`` are (fast, slow); ``gap_px`` holds the gaps between
    successive module columns and rows in pixels.
    """

    name: str
    description: str
    module_size: tuple[int, int]
    n_modules: tuple[int, int]
    gap_px: tuple[tuple[int, ...], tuple[int, ...]]
    pixel_size_mm: float
    downsample_block: int
    trusted_range: tuple[float, float]
    thickness_mm: float
    material: str
    notes: str = ""
    aliases: tuple[str, ...] = field(default=())

    @property
    def image_size(self) -> tuple[int, int]:
        """(n_fast, n_slow) of the whole array."""
        nf = self.n_modules[0] * self.module_size[0] + sum(self.gap_px[0])
        ns = self.n_modules[1] * self.module_size[1] + sum(self.gap_px[1])
        return nf, ns

    def build(self, *, distance_mm: float, beam_center_px: tuple[float, float] | None = None,
              serial_number: str = "", **overrides: Any) -> Detector:
        allowed = {"trusted_range", "thickness_mm", "material", "pixel_size_mm"}
        bad = set(overrides) - allowed
        if bad:
            raise ConfigError(f"detector {self.name!r}: cannot override {sorted(bad)}; allowed {sorted(allowed)}")
        kw = {
            "trusted_range": self.trusted_range,
            "thickness_mm": self.thickness_mm,
            "material": self.material,
            "pixel_size_mm": self.pixel_size_mm,
        }
        kw.update(overrides)
        return _module_grid(
            name=self.name,
            module_size=self.module_size,
            n_modules=self.n_modules,
            gap_px=self.gap_px,
            distance_mm=distance_mm,
            beam_center_px=beam_center_px,
            downsample_block=self.downsample_block,
            serial_number=serial_number,
            **kw,
        )


def _uniform(n: int, gap: int) -> tuple[int, ...]:
    return (gap,) * (n - 1)


_PILATUS_MODULE = (487, 195)  # pixels (fast, slow) of one PILATUS module; gaps 7 and 17 px
_EIGER_MODULE = (1030, 514)  # EIGER (1) module with its inter-chip pixels; gaps 10 and 37 px
_EIGER2_MODULE = (1028, 512)  # EIGER2 module; gaps 12 and 38 px


def _pilatus(name: str, nf: int, ns: int, desc: str, thickness_mm: float, cutoff: float) -> CatalogEntry:
    return CatalogEntry(name, desc, _PILATUS_MODULE, (nf, ns), (_uniform(nf, 7), _uniform(ns, 17)),
                        0.172, 2, (0.0, cutoff), thickness_mm, "Si")


def _eiger2(name: str, nf: int, ns: int, desc: str, block: int = 4) -> CatalogEntry:
    return CatalogEntry(name, desc, _EIGER2_MODULE, (nf, ns), (_uniform(nf, 12), _uniform(ns, 38)),
                        0.075, block, (0.0, 65534.0), 0.45, "Si")


#: Detector models by name. Dimensions follow the manufacturers' specifications; the
#: module/gap arithmetic reproduces each real file's array size and gap-pixel count.
DETECTOR_CATALOG: dict[str, CatalogEntry] = {
    e.name: e
    for e in [
        _pilatus("pilatus6m", 5, 12, "DECTRIS PILATUS 6M: 5×12 modules of 487×195 px, 172 µm",
                 0.45, 1048575.0),
        _pilatus("pilatus2m", 3, 8, "DECTRIS PILATUS 2M: 3×8 modules of 487×195 px, 172 µm",
                 0.32, 1048575.0),
        _pilatus("pilatus12m", 5, 24, "DECTRIS PILATUS 12M (DLS I23) as its flat 5×24-module array",
                 0.32, 1048575.0),
        CatalogEntry("eiger16m", "DECTRIS EIGER X 16M: 4×8 modules of 1030×514 px, 75 µm",
                     _EIGER_MODULE, (4, 8), (_uniform(4, 10), _uniform(8, 37)), 0.075, 4,
                     (0.0, 65534.0), 0.45, "Si"),
        _eiger2("eiger2_16m", 4, 8, "DECTRIS EIGER2 X 16M: 4×8 modules of 1028×512 px, 75 µm"),
        _eiger2("eiger2_4m", 2, 4, "DECTRIS EIGER2 X 4M (or a 16M in 4M ROI mode): 2×4 modules"),
        CatalogEntry("rayonix_mx340", "Rayonix MX340-HS, 2×2 binned: 3840×3840 px of 88.54 µm, 340 mm square",
                     (3840, 3840), (1, 1), ((), ()), 340.0 / 3840, 4, (0.0, 65535.0), 0.0, "",
                     notes="tiled CCD without gaps; native 7680×7680 px of 44.27 µm"),
        CatalogEntry("rayonix_mx340_4x4", "Rayonix MX340-HS, 4×4 binned: 1920×1920 px of 177.08 µm",
                     (1920, 1920), (1, 1), ((), ()), 340.0 / 1920, 2, (0.0, 65535.0), 0.0, ""),
        CatalogEntry("jungfrau16m", "PSI JUNGFRAU 16M assembled: 32 modules of 1030×514 px, 75 µm",
                     (1030, 514), (4, 8), ((33, 32, 33), _uniform(8, 46)), 0.075, 4,
                     (-1e9, 1e9), 0.32, "Si",
                     notes="a regular 4×8 module grid of the assembled 4218×4434 array; real "
                           "installations place modules by their geometry file"),
    ]
}


def default_downsample_block(pixel_size_mm: float) -> int:
    """Max-pool block for a detector outside the catalog, from its pixel pitch.

    XRAIS pools PILATUS-like coarse pixels (> 0.1 mm) in 2×2 blocks and EIGER-, Rayonix- and
    JUNGFRAU-like fine pixels in 4×4 blocks.

    Examples
    --------
    >>> default_downsample_block(0.172), default_downsample_block(0.075)
    (2, 4)
    """
    return 2 if pixel_size_mm > 0.1 else 4


def list_detectors() -> list[str]:
    """Names of the catalog detectors."""
    return sorted(DETECTOR_CATALOG)


def catalog_entry_for_shape(n_fast: int, n_slow: int, pixel_size_mm: float) -> CatalogEntry | None:
    """The catalog entry whose array size and pixel pitch match, or ``None``."""
    for e in DETECTOR_CATALOG.values():
        if e.image_size == (n_fast, n_slow) and math.isclose(e.pixel_size_mm, pixel_size_mm, rel_tol=2e-3):
            return e
    return None
