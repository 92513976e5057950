"""Beam and detector models, and the detector catalog.

Conventions (the dxtbx / imgCIF laboratory frame, used everywhere in xrais):

* The sample sits at the origin. The X-ray beam travels along **−z**: the unit vector of
  propagation is ``(0, 0, -1)`` and +z points back at the source.
* **+y** points up (away from the floor); **+x** completes the right-handed frame (horizontal).
* Lengths on the detector are in **mm**, wavelengths and d-spacings in **Å**, energies in
  **eV**, angles in **radians** unless a name says ``_deg``.
* A panel is a flat grid of pixels: the lab position of the outer corner of pixel ``[0, 0]``
  is ``origin_mm``; moving one pixel along the fast (column) index adds
  ``pixel_size_mm[0] · fast_axis``, one along the slow (row) index adds
  ``pixel_size_mm[1] · slow_axis``.
* Pixel coordinates are continuous ``(fast, slow)`` pairs (as miniCBF ``Beam_xy`` and dxtbx):
  ``(0.0, 0.0)`` is the outer corner of the first pixel and the centre of pixel ``[s, f]`` is
  ``(f + 0.5, s + 0.5)``. Arrays are indexed ``[slow, fast]``.
* A detector keeps all its panels in one 2-D data array of ``array_shape = (n_slow, n_fast)``;
  each panel occupies the block that starts at ``array_offset_px = (fast, slow)``. Pixels of
  the array that belong to no panel are gaps.

The flat-detector default for a catalog detector follows ``dxtbx.model.DetectorFactory.simple``
with fast ``+x`` and slow ``−y``: origin = ``(−beam_x, +beam_y, −distance)`` mm, where
``(beam_x, beam_y)`` is the beam centre in mm from the corner of pixel ``[0, 0]``.

Examples
--------
>>> det = Detector.from_catalog("pilatus6m", distance_mm=200.0, beam_center_px=(1231.5, 1263.5))
>>> det.array_shape, len(det.panels)
((2527, 2463), 60)
>>> beam = Beam(wavelength_A=1.0)
>>> [round(v, 3) for v in det.beam_center_px(beam)]
[1231.5, 1263.5]
>>> round(float(det.resolution_at_pixel_A(beam, 1231.5, 1263.5 + 200.0 / 0.172)), 4)  # 2θ = 45°: λ / (2 sin 22.5°)
1.3066
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Sequence

import numpy as np

from xrais.errors import ConfigError, GeometryError

__all__ = [
    "HC_EV_A",
    "Beam",
    "Panel",
    "Detector",
    "AssembledImage",
    "DETECTOR_CATALOG",
    "CatalogEntry",
    "list_detectors",
    "catalog_entry_for_shape",
    "rotation_matrix",
    "default_downsample_block",
]

#: h·c in eV·Å: E[eV] = HC_EV_A / λ[Å] (CODATA 2018).
HC_EV_A = 12398.419843320026

Vec3 = tuple[float, float, float]


def _unit(v: Sequence[float], what: str) -> Vec3:
    a = np.asarray(v, dtype=float)
    n = float(np.linalg.norm(a))
    if a.shape != (3,) or not np.all(np.isfinite(a)) or n == 0.0:
        raise GeometryError(f"{what}: expected a finite, non-zero 3-vector, got {tuple(v)!r}")
    return tuple(float(x) for x in a / n)  # type: ignore[return-value]


def rotation_matrix(axis: Sequence[float], angle_deg: float) -> np.ndarray:
    """Right-handed rotation by ``angle_deg`` about ``axis`` (Rodrigues' formula), shape (3, 3).

    Examples
    --------
    >>> np.round(rotation_matrix((0, 0, 1), 90.0) @ (1.0, 0.0, 0.0), 12).tolist()
    [0.0, 1.0, 0.0]
    """
    u = np.asarray(_unit(axis, "rotation axis"))
    a = math.radians(angle_deg)
    k = np.array([[0.0, -u[2], u[1]], [u[2], 0.0, -u[0]], [-u[1], u[0], 0.0]])
    return np.eye(3) + math.sin(a) * k + (1.0 - math.cos(a)) * (k @ k)


def _close(a: Any, b: Any, rtol: float = 1e-6, atol: float = 1e-9) -> bool:
    """Recursive equality of ``to_dict`` values with a tolerance on floats."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], rtol, atol) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y, rtol, atol) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        return math.isclose(float(a), float(b), rel_tol=rtol, abs_tol=atol)
    return a == b


def _to_plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    return value


@dataclass(frozen=True, eq=False)
class Beam:
    """The incident X-ray beam.

    Parameters
    ----------
    wavelength_A : float
        Central wavelength in Å.
    direction : 3-tuple of float
        Unit vector of propagation (source → sample); ``(0, 0, -1)`` in the xrais lab frame.
    polarization_fraction : float
        Fraction of the intensity polarized with its electric vector perpendicular to
        ``polarization_normal`` (dxtbx convention; 0.999 for an undulator, 0.5 unpolarized).
    polarization_normal : 3-tuple of float
        Normal to the polarization plane; ``(0, 1, 0)`` for a horizontally polarized beam.
    flux_photons_per_s : float, optional
        Incident flux in photons per second, when known.
    fluence_photons : float, optional
        Photons per image (pulse or exposure), when known.
    beam_size_um : float, optional
        Full width of the beam at the sample in µm.
    divergence_mrad : float
        Full angular divergence in mrad.
    spectral_dispersion : float
        Fractional bandwidth Δλ/λ (full width).
    spectrum : tuple of (wavelength_A, weight) pairs
        Explicit spectrum; empty for a monochromatic beam at ``wavelength_A``.
    """

    wavelength_A: float
    direction: Vec3 = (0.0, 0.0, -1.0)
    polarization_fraction: float = 0.999
    polarization_normal: Vec3 = (0.0, 1.0, 0.0)
    flux_photons_per_s: float | None = None
    fluence_photons: float | None = None
    beam_size_um: float | None = None
    divergence_mrad: float = 0.0
    spectral_dispersion: float = 0.0
    spectrum: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        w = self.wavelength_A
        if not (isinstance(w, (int, float)) and math.isfinite(w) and 0.01 <= w <= 100.0):
            raise GeometryError(f"beam wavelength: expected 0.01–100 Å, got {w!r}")
        object.__setattr__(self, "wavelength_A", float(w))
        object.__setattr__(self, "direction", _unit(self.direction, "beam direction"))
        object.__setattr__(
            self, "polarization_normal", _unit(self.polarization_normal, "polarization normal")
        )
        if not 0.0 <= self.polarization_fraction <= 1.0:
            raise GeometryError(
                f"beam polarization fraction: expected 0–1, got {self.polarization_fraction!r}"
            )
        for name in ("divergence_mrad", "spectral_dispersion"):
            if not getattr(self, name) >= 0.0:
                raise GeometryError(f"beam {name}: expected ≥ 0, got {getattr(self, name)!r}")
        object.__setattr__(
            self, "spectrum", tuple((float(w), float(p)) for w, p in self.spectrum)
        )

    @classmethod
    def from_energy_eV(cls, energy_eV: float, **kwargs: Any) -> "Beam":
        """A beam of photon energy ``energy_eV`` (λ = hc / E)."""
        if not energy_eV > 0:
            raise GeometryError(f"beam energy: expected > 0 eV, got {energy_eV!r}")
        return cls(wavelength_A=HC_EV_A / energy_eV, **kwargs)

    @property
    def energy_eV(self) -> float:
        """Photon energy in eV."""
        return HC_EV_A / self.wavelength_A

    @property
    def s0_per_A(self) -> np.ndarray:
        """Incident wave vector ŝ₀/λ in Å⁻¹, shape (3,)."""
        return np.asarray(self.direction) / self.wavelength_A

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON representation (lists for vectors)."""
        return _to_plain(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Beam":
        """Inverse of :meth:`to_dict`."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise GeometryError(f"beam dict: unknown keys {sorted(unknown)}")
        kw = dict(d)
        for k in ("direction", "polarization_normal"):
            if k in kw:
                kw[k] = tuple(kw[k])
        if "spectrum" in kw:
            kw["spectrum"] = tuple(tuple(p) for p in kw["spectrum"])
        return cls(**kw)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Beam) and _close(self.to_dict(), other.to_dict())

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, eq=False)
class Panel:
    """One flat sensor: a grid of pixels with its place in the lab and in the data array.

    Parameters
    ----------
    name : str
        Panel name (module or ASIC id).
    image_size : (int, int)
        Pixels along (fast, slow).
    pixel_size_mm : (float, float)
        Pixel pitch along (fast, slow) in mm.
    fast_axis, slow_axis : 3-tuple of float
        Unit vectors in the lab frame; normalised on construction.
    origin_mm : 3-tuple of float
        Lab position of the outer corner of pixel ``[0, 0]`` in mm.
    array_offset_px : (int, int)
        (fast, slow) index of this panel's pixel ``[0, 0]`` in the detector's 2-D array.
    trusted_range : (float, float)
        Valid counts (inclusive); values outside are masked (gaps, bad pixels, overloads).
    thickness_mm : float
        Sensor thickness in mm (0 when unknown).
    material : str
        Sensor material ("Si", "CdTe", …; empty when unknown).
    """

    name: str
    image_size: tuple[int, int]
    pixel_size_mm: tuple[float, float]
    fast_axis: Vec3
    slow_axis: Vec3
    origin_mm: Vec3
    array_offset_px: tuple[int, int] = (0, 0)
    trusted_range: tuple[float, float] = (0.0, 65535.0)
    thickness_mm: float = 0.0
    material: str = ""

    def __post_init__(self) -> None:
        nf, ns = (int(v) for v in self.image_size)
        if nf <= 0 or ns <= 0:
            raise GeometryError(f"panel {self.name!r}: expected a positive image size, got {self.image_size}")
        object.__setattr__(self, "image_size", (nf, ns))
        pf, ps = (float(v) for v in self.pixel_size_mm)
        if not (pf > 0 and ps > 0 and math.isfinite(pf) and math.isfinite(ps)):
            raise GeometryError(
                f"panel {self.name!r}: expected positive pixel sizes in mm, got {self.pixel_size_mm}"
            )
        object.__setattr__(self, "pixel_size_mm", (pf, ps))
        fast = _unit(self.fast_axis, f"panel {self.name!r} fast axis")
        slow = _unit(self.slow_axis, f"panel {self.name!r} slow axis")
        if abs(float(np.dot(fast, slow))) > 1e-3:
            raise GeometryError(f"panel {self.name!r}: fast and slow axes are not perpendicular")
        object.__setattr__(self, "fast_axis", fast)
        object.__setattr__(self, "slow_axis", slow)
        origin = np.asarray(self.origin_mm, dtype=float)
        if origin.shape != (3,) or not np.all(np.isfinite(origin)):
            raise GeometryError(f"panel {self.name!r}: expected a finite 3-vector origin, got {self.origin_mm!r}")
        object.__setattr__(self, "origin_mm", tuple(float(v) for v in origin))
        object.__setattr__(self, "array_offset_px", tuple(int(v) for v in self.array_offset_px))
        lo, hi = (float(v) for v in self.trusted_range)
        if not lo <= hi:
            raise GeometryError(f"panel {self.name!r}: trusted range {self.trusted_range} is empty")
        object.__setattr__(self, "trusted_range", (lo, hi))

    @property
    def normal(self) -> np.ndarray:
        """Unit normal fast × slow, shape (3,)."""
        n = np.cross(self.fast_axis, self.slow_axis)
        return n / np.linalg.norm(n)

    @property
    def distance_mm(self) -> float:
        """Perpendicular distance from the sample to the panel plane in mm."""
        return abs(float(np.dot(self.origin_mm, self.normal)))

    def pixel_lab_coord_mm(self, fast_px: Any, slow_px: Any) -> np.ndarray:
        """Lab position (mm) of continuous pixel coordinates; shape ``broadcast + (3,)``."""
        f = np.asarray(fast_px, dtype=float)[..., None]
        s = np.asarray(slow_px, dtype=float)[..., None]
        return (
            np.asarray(self.origin_mm)
            + f * self.pixel_size_mm[0] * np.asarray(self.fast_axis)
            + s * self.pixel_size_mm[1] * np.asarray(self.slow_axis)
        )

    def ray_intersection_px(self, direction: Sequence[float]) -> tuple[float, float]:
        """(fast, slow) where a ray from the sample along ``direction`` meets the panel plane.

        Raises
        ------
        GeometryError
            If the ray is parallel to the plane or points away from it.
        """
        d = np.asarray(direction, dtype=float)
        n = self.normal
        denom = float(np.dot(d, n))
        t = float(np.dot(self.origin_mm, n)) / denom if denom != 0.0 else -1.0
        if not t > 0:
            raise GeometryError(f"panel {self.name!r}: the ray {tuple(d)} does not meet the panel plane")
        rel = t * d - np.asarray(self.origin_mm)
        return (
            float(np.dot(rel, self.fast_axis)) / self.pixel_size_mm[0],
            float(np.dot(rel, self.slow_axis)) / self.pixel_size_mm[1],
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON representation."""
        return _to_plain(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Panel":
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Panel) and _close(self.to_dict(), other.to_dict())

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class AssembledImage:
    """Panels resampled into one 2-D array for conditioning (see :meth:`Detector.assemble`)."""

    pixels: np.ndarray
    """shape (n_slow, n_fast), float32 — counts; unfilled pixels are 0"""
    mask: np.ndarray
    """shape (n_slow, n_fast), bool — True where no valid panel pixel landed"""
    beam_center_px: tuple[float, float]
    """(fast, slow) position of the direct beam in the assembled array"""
    pixel_size_mm: float
    """pitch of the assembled grid in mm, at distance ``distance_mm``"""
    distance_mm: float


@dataclass(frozen=True, eq=False)
class Detector:
    """A detector: panels sharing one 2-D data array.

    Parameters
    ----------
    panels : tuple of Panel
        The sensors, each with its block of the data array (``array_offset_px``).
    name : str
        Catalog name (``"pilatus6m"``) or a free description.
    array_shape : (int, int)
        (n_slow, n_fast) of the data array; derived from the panels when omitted.
    downsample_block : int
        Default N of the N×N max-pool used in conditioning (PILATUS 2, EIGER/Rayonix/JUNGFRAU 4).
    serial_number : str
        Serial number from the header, when known.
    """

    panels: tuple[Panel, ...]
    name: str = "custom"
    array_shape: tuple[int, int] = (0, 0)
    downsample_block: int = 4
    serial_number: str = ""

    def __post_init__(self) -> None:
        panels = tuple(self.panels)
        if not panels:
            raise GeometryError(f"detector {self.name!r}: needs at least one panel")
        object.__setattr__(self, "panels", panels)
        need_s = max(p.array_offset_px[1] + p.image_size[1] for p in panels)
        need_f = max(p.array_offset_px[0] + p.image_size[0] for p in panels)
        shape = tuple(int(v) for v in self.array_shape)
        if shape == (0, 0):
            shape = (need_s, need_f)
        if shape[0] < need_s or shape[1] < need_f or min(p.array_offset_px[0] for p in panels) < 0 or min(
            p.array_offset_px[1] for p in panels
        ) < 0:
            raise GeometryError(
                f"detector {self.name!r}: panels need an array of at least {need_f}×{need_s} "
                f"(fast×slow), array is {shape[1]}×{shape[0]}"
            )
        object.__setattr__(self, "array_shape", shape)
        if int(self.downsample_block) < 1:
            raise GeometryError(f"detector {self.name!r}: downsample block must be ≥ 1, got {self.downsample_block}")
        object.__setattr__(self, "downsample_block", int(self.downsample_block))

    # --- construction -------------------------------------------------------------------
    @classmethod
    def from_catalog(
        cls,
        name: str,
        *,
        distance_mm: float,
        beam_center_px: tuple[float, float] | None = None,
        serial_number: str = "",
        **overrides: Any,
    ) -> "Detector":
        """A flat detector of catalog ``name`` normal to the beam.

        Parameters
        ----------
        name : str
            A key of :data:`DETECTOR_CATALOG` (see :func:`list_detectors`).
        distance_mm : float
            Sample-to-detector distance along the beam in mm.
        beam_center_px : (float, float), optional
            (fast, slow) beam centre in pixels; the array centre when omitted.
        **overrides
            Replace catalog panel fields: ``trusted_range``, ``thickness_mm``, ``material``,
            ``pixel_size_mm``.

        Raises
        ------
        ConfigError
            For an unknown catalog name or a non-positive distance.
        """
        try:
            entry = DETECTOR_CATALOG[name]
        except KeyError:
            raise ConfigError(
                f"detector {name!r}: not in the catalog; expected one of {', '.join(list_detectors())}"
            ) from None
        return entry.build(distance_mm=distance_mm, beam_center_px=beam_center_px,
                           serial_number=serial_number, **overrides)

    @classmethod
    def flat(
        cls,
        *,
        image_size: tuple[int, int],
        pixel_size_mm: float | tuple[float, float],
        distance_mm: float,
        beam_center_px: tuple[float, float],
        name: str = "custom",
        downsample_block: int | None = None,
        trusted_range: tuple[float, float] = (0.0, 65535.0),
        thickness_mm: float = 0.0,
        material: str = "",
        serial_number: str = "",
    ) -> "Detector":
        """A single flat panel normal to the beam (a user-defined detector).

        ``image_size`` is (n_fast, n_slow); ``beam_center_px`` (fast, slow) in pixels; the
        block defaults to :func:`default_downsample_block` of the pixel size.
        """
        from xrais.detectors import _module_grid, default_downsample_block

        if downsample_block is None:
            downsample_block = default_downsample_block(
                float(pixel_size_mm if np.isscalar(pixel_size_mm) else pixel_size_mm[0]))  # type: ignore[index]
        return _module_grid(
            name=name,
            module_size=image_size,
            n_modules=(1, 1),
            gap_px=((), ()),
            pixel_size_mm=pixel_size_mm,
            distance_mm=distance_mm,
            beam_center_px=beam_center_px,
            downsample_block=downsample_block,
            trusted_range=trusted_range,
            thickness_mm=thickness_mm,
            material=material,
            serial_number=serial_number,
        )

    def rotated(self, axis: Sequence[float], angle_deg: float) -> "Detector":
        """The detector rotated about ``axis`` through the sample by ``angle_deg`` (right-handed).

        A PILATUS ``Detector_2theta`` swing is ``rotated((1, 0, 0), two_theta_deg)`` (dxtbx).
        """
        r = rotation_matrix(axis, angle_deg)
        panels = tuple(
            replace(p, fast_axis=tuple(r @ p.fast_axis), slow_axis=tuple(r @ p.slow_axis),
                    origin_mm=tuple(r @ p.origin_mm))
            for p in self.panels
        )
        return replace(self, panels=panels)

    # --- derived geometry ----------------------------------------------------------------
    @property
    def n_fast(self) -> int:
        return self.array_shape[1]

    @property
    def n_slow(self) -> int:
        return self.array_shape[0]

    @property
    def pixel_size_mm(self) -> tuple[float, float]:
        """(fast, slow) pixel pitch of the first panel, in mm."""
        return self.panels[0].pixel_size_mm

    @property
    def distance_mm(self) -> float:
        """Perpendicular sample-to-plane distance of the first panel, in mm."""
        return self.panels[0].distance_mm

    @property
    def trusted_range(self) -> tuple[float, float]:
        """The range of valid counts shared by all panels (the tightest one)."""
        return (max(p.trusted_range[0] for p in self.panels), min(p.trusted_range[1] for p in self.panels))

    def is_coplanar_grid(self, tol_mm: float = 1e-3) -> bool:
        """True if every panel lies on the grid of the first one (a flat tiled detector).

        Then the whole data array maps linearly to the lab and :meth:`array_lab_coord_mm`
        applies to any array pixel, gaps included. The answer is kept with the detector (it is
        frozen), so asking again for every frame costs nothing.
        """
        cache = self.__dict__.setdefault("_coplanar", {})
        if tol_mm not in cache:
            cache[tol_mm] = self._panels_on_one_grid(tol_mm)
        return cache[tol_mm]

    def _panels_on_one_grid(self, tol_mm: float) -> bool:
        p0 = self.panels[0]
        origin0 = np.asarray(p0.origin_mm) - (
            p0.array_offset_px[0] * p0.pixel_size_mm[0] * np.asarray(p0.fast_axis)
            + p0.array_offset_px[1] * p0.pixel_size_mm[1] * np.asarray(p0.slow_axis)
        )
        for p in self.panels[1:]:
            if not (
                np.allclose(p.fast_axis, p0.fast_axis, atol=1e-6)
                and np.allclose(p.slow_axis, p0.slow_axis, atol=1e-6)
                and np.allclose(p.pixel_size_mm, p0.pixel_size_mm, rtol=1e-6)
            ):
                return False
            expect = origin0 + (
                p.array_offset_px[0] * p0.pixel_size_mm[0] * np.asarray(p0.fast_axis)
                + p.array_offset_px[1] * p0.pixel_size_mm[1] * np.asarray(p0.slow_axis)
            )
            if not np.allclose(p.origin_mm, expect, atol=tol_mm):
                return False
        return True

    def _array_panel(self) -> Panel:
        """The first panel extended to the whole data array (valid for a coplanar grid)."""
        if "_array_panel_cache" not in self.__dict__:
            self.__dict__["_array_panel_cache"] = self._make_array_panel()
        return self.__dict__["_array_panel_cache"]

    def _make_array_panel(self) -> Panel:
        if not self.is_coplanar_grid():
            raise GeometryError(
                f"detector {self.name!r}: panels are not on one flat grid; assemble() them first"
            )
        p0 = self.panels[0]
        origin = np.asarray(p0.origin_mm) - (
            p0.array_offset_px[0] * p0.pixel_size_mm[0] * np.asarray(p0.fast_axis)
            + p0.array_offset_px[1] * p0.pixel_size_mm[1] * np.asarray(p0.slow_axis)
        )
        return replace(p0, name="array", image_size=(self.n_fast, self.n_slow),
                       origin_mm=tuple(origin), array_offset_px=(0, 0))

    def array_lab_coord_mm(self, fast_px: Any, slow_px: Any) -> np.ndarray:
        """Lab position (mm) of continuous data-array coordinates (coplanar detectors)."""
        return self._array_panel().pixel_lab_coord_mm(fast_px, slow_px)

    def beam_center_px(self, beam: Beam) -> tuple[float, float]:
        """(fast, slow) data-array coordinates where the direct beam meets the detector plane.

        Raises
        ------
        GeometryError
            If the panels are not one flat grid or the beam misses the plane.
        """
        return self._array_panel().ray_intersection_px(beam.direction)

    def tilt_deg(self, beam: Beam) -> float:
        """Largest angle (degrees) between a panel's normal and the beam: 0 when every panel is
        perpendicular to the beam; the swing of a detector on a 2θ arm (PILATUS ``Detector_2theta``).

        Examples
        --------
        >>> det = Detector.from_catalog("pilatus2m", distance_mm=160.0)
        >>> det.tilt_deg(Beam(wavelength_A=1.0)), round(det.rotated((1, 0, 0), 30.0).tilt_deg(Beam(wavelength_A=1.0)), 6)
        (0.0, 30.0)
        """
        direction = np.asarray(beam.direction)
        cos_min = min(abs(float(np.dot(p.normal, direction))) for p in self.panels)
        return math.degrees(math.acos(min(1.0, cos_min)))

    def two_theta_rad(self, beam: Beam, fast_px: Any, slow_px: Any) -> np.ndarray:
        """Scattering angle 2θ (rad) at continuous data-array coordinates."""
        xyz = self.array_lab_coord_mm(fast_px, slow_px)
        s1 = xyz / np.linalg.norm(xyz, axis=-1, keepdims=True)
        cos2t = np.clip(s1 @ np.asarray(beam.direction), -1.0, 1.0)
        return np.arccos(cos2t)

    def resolution_at_pixel_A(self, beam: Beam, fast_px: Any, slow_px: Any) -> np.ndarray:
        """d-spacing (Å) at continuous data-array coordinates: d = λ / (2 sin θ); inf at the beam."""
        theta = self.two_theta_rad(beam, fast_px, slow_px) / 2.0
        with np.errstate(divide="ignore"):
            return beam.wavelength_A / (2.0 * np.sin(theta))

    def gap_mask(self) -> np.ndarray:
        """shape (n_slow, n_fast), bool — True for array pixels that belong to no panel."""
        covered = np.zeros(self.array_shape, dtype=bool)
        for p in self.panels:
            f0, s0 = p.array_offset_px
            covered[s0 : s0 + p.image_size[1], f0 : f0 + p.image_size[0]] = True
        return ~covered

    def assemble(
        self,
        panel_pixels: Sequence[np.ndarray],
        beam: Beam,
        *,
        pixel_size_mm: float | None = None,
        panel_masks: Sequence[np.ndarray] | None = None,
    ) -> AssembledImage:
        """Resample non-coplanar panels onto one flat grid normal to the beam.

        Each panel pixel centre is projected along its ray from the sample onto the plane
        normal to the beam at the mean panel distance, and its value lands in the nearest
        cell of a grid with pitch ``pixel_size_mm`` (the first panel's by default). Where two
        pixels land in one cell the larger value is kept (as the max-pool would). The direct
        beam position on that grid is returned with the image. Cells no pixel reaches are
        masked.

        Parameters
        ----------
        panel_pixels : sequence of ndarray
            One (n_slow, n_fast) array per panel, in panel order.
        beam : Beam
            Defines the projection direction.
        pixel_size_mm : float, optional
            Pitch of the output grid.
        panel_masks : sequence of ndarray of bool, optional
            True for invalid pixels of each panel.
        """
        if len(panel_pixels) != len(self.panels):
            raise GeometryError(
                f"detector {self.name!r}: expected {len(self.panels)} panel arrays, got {len(panel_pixels)}"
            )
        bdir = np.asarray(beam.direction)
        # Plane basis: ex, ey perpendicular to the beam, with ex ≈ +x and ey ≈ +y.
        ex = np.cross((0.0, 1.0, 0.0), -bdir)
        if np.linalg.norm(ex) < 1e-9:
            ex = np.array([1.0, 0.0, 0.0])
        ex /= np.linalg.norm(ex)
        ey = np.cross(-bdir, ex)
        dist = float(np.mean([np.dot(p.origin_mm, bdir) for p in self.panels]))
        if not dist > 0:
            raise GeometryError(f"detector {self.name!r}: panels are not downstream of the sample")
        pitch = float(pixel_size_mm or self.panels[0].pixel_size_mm[0])
        xs, ys, vals, bad = [], [], [], []
        for i, (p, data) in enumerate(zip(self.panels, panel_pixels)):
            nf, ns = p.image_size
            if data.shape != (ns, nf):
                raise GeometryError(
                    f"detector {self.name!r} panel {p.name!r}: expected {nf}×{ns} pixels, got "
                    f"{data.shape[1]}×{data.shape[0]}"
                )
            s, f = np.mgrid[0:ns, 0:nf]
            xyz = p.pixel_lab_coord_mm(f + 0.5, s + 0.5)
            along = xyz @ bdir
            xyz = xyz * (dist / along)[..., None]
            xs.append((xyz @ ex).ravel())
            ys.append((xyz @ ey).ravel())
            vals.append(np.asarray(data, dtype=np.float32).ravel())
            m = panel_masks[i].ravel() if panel_masks is not None else np.zeros(nf * ns, bool)
            bad.append(m)
        x, y = np.concatenate(xs), np.concatenate(ys)
        v, m = np.concatenate(vals), np.concatenate(bad)
        x0, y1 = x.min() - pitch / 2, y.max() + pitch / 2
        fi = np.floor((x - x0) / pitch).astype(np.int64)
        si = np.floor((y1 - y) / pitch).astype(np.int64)
        shape = (int(si.max()) + 1, int(fi.max()) + 1)
        out = np.full(shape, -np.inf, dtype=np.float32)
        good = ~m
        np.maximum.at(out, (si[good], fi[good]), v[good])
        mask = ~np.isfinite(out)
        out[mask] = 0.0
        return AssembledImage(
            pixels=out,
            mask=mask,
            beam_center_px=(float(-x0 / pitch), float(y1 / pitch)),
            pixel_size_mm=pitch,
            distance_mm=dist,
        )

    # --- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON representation."""
        return {
            "name": self.name,
            "array_shape": list(self.array_shape),
            "downsample_block": self.downsample_block,
            "serial_number": self.serial_number,
            "panels": [p.to_dict() for p in self.panels],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Detector":
        """Inverse of :meth:`to_dict`."""
        return cls(
            panels=tuple(Panel.from_dict(p) for p in d["panels"]),
            name=d.get("name", "custom"),
            array_shape=tuple(d.get("array_shape", (0, 0))),
            downsample_block=d.get("downsample_block", 4),
            serial_number=d.get("serial_number", ""),
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Detector) and _close(self.to_dict(), other.to_dict())

    __hash__ = None  # type: ignore[assignment]


# The catalog lives in its own module; its names stay importable from here.
from xrais.detectors import (  # noqa: E402  (after the models it builds on)
    DETECTOR_CATALOG,
    CatalogEntry,
    catalog_entry_for_shape,
    default_downsample_block,
    list_detectors,
)
