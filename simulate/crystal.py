"""The crystal model: cell, space group, orientation, domain size, mosaicity, shape, |F|.

Orientation follows dxtbx: the reciprocal basis is ``A = U·B`` (columns a*, b*, c* in Å⁻¹, in
the xrais lab frame of :mod:`xrais.geometry`), where ``B`` is the Busing–Levy matrix (a* along
x, b* in the x–y plane) and ``U`` a rotation. The real-space vectors a, b, c (Å) are the rows of
``A⁻¹``, so the fractional Miller index of a scattering vector S (Å⁻¹) is ``h = A⁻¹·S``.

Mosaic domains are drawn exactly as nanoBragg draws them (same seed → same rotations), see
:func:`xrais.simulate.mosaic.mosaic_rotations`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Sequence

import numpy as np

from xrais.errors import ConfigError
from xrais.geometry import rotation_matrix
from xrais.simulate.structure_factors import StructureFactors

__all__ = ["Crystal", "CrystalShape", "reciprocal_matrix_B", "reciprocal_parameters", "misset_matrix", "validate_cell"]

#: Lattice-transform shapes (nanoBragg -square_xtal, -round_xtal, -gauss_xtal, -tophat_spots;
#: the ``_2022`` forms are the pre-2023 GAUSS/TOPHAT that cctbx simtbx keeps).
CrystalShape = Literal["square", "round", "gauss", "tophat", "gauss_2022", "tophat_2022"]
SHAPE_CODES = {"square": 0, "round": 1, "gauss": 2, "tophat": 3, "gauss_2022": 4, "tophat_2022": 5}


def validate_cell(cell: Sequence[float]) -> tuple[float, float, float, float, float, float]:
    """Check a cell ``(a, b, c, α, β, γ)`` (Å, degrees) can exist; returns it as floats.

    Raises
    ------
    ConfigError
        Naming the cell and the rule it breaks.
    """
    try:
        a, b, c, al, be, ga = (float(v) for v in cell)
    except (TypeError, ValueError):
        raise ConfigError(f"cell {cell!r}: expected six numbers (a, b, c in Å; α, β, γ in degrees)") from None
    if not all(math.isfinite(v) for v in (a, b, c, al, be, ga)):
        raise ConfigError(f"cell {tuple(cell)}: expected finite values")
    if not (0.5 <= min(a, b, c) and max(a, b, c) <= 10000.0):
        raise ConfigError(f"cell {tuple(cell)}: lengths must lie in 0.5–10000 Å")
    if not all(0.0 < v < 180.0 for v in (al, be, ga)):
        raise ConfigError(f"cell {tuple(cell)}: angles must lie strictly between 0 and 180°")
    s = (al + be + ga) / 2.0
    term = math.sin(math.radians(s)) * math.sin(math.radians(s - al)) * math.sin(math.radians(s - be)) * math.sin(
        math.radians(s - ga))
    if not term > 1e-12:
        raise ConfigError(
            f"cell {tuple(cell)}: the angles cannot close a cell (need α+β+γ < 360° and each angle "
            "smaller than the sum of the other two)"
        )
    return a, b, c, al, be, ga


def reciprocal_parameters(cell: Sequence[float]) -> tuple[float, float, float, float, float, float, float]:
    """(V, a*, b*, c*, cos α*, cos β*, cos γ*) of a cell: volume in Å³, lengths in Å⁻¹.

    V = 2abc·√|sin σ sin(σ−α) sin(σ−β) sin(σ−γ)| with σ = (α+β+γ)/2; a* = bc·sin α/V;
    cos α* = (cos β cos γ − cos α)/(sin β sin γ), and cyclically.
    """
    a, b, c, al, be, ga = validate_cell(cell)
    al, be, ga = (math.radians(v) for v in (al, be, ga))
    s = (al + be + ga) / 2.0
    volume = 2.0 * a * b * c * math.sqrt(abs(math.sin(s) * math.sin(s - al) * math.sin(s - be) * math.sin(s - ga)))
    return (volume, b * c * math.sin(al) / volume, c * a * math.sin(be) / volume, a * b * math.sin(ga) / volume,
            (math.cos(be) * math.cos(ga) - math.cos(al)) / (math.sin(be) * math.sin(ga)),
            (math.cos(ga) * math.cos(al) - math.cos(be)) / (math.sin(ga) * math.sin(al)),
            (math.cos(al) * math.cos(be) - math.cos(ga)) / (math.sin(al) * math.sin(be)))


def reciprocal_matrix_B(cell: Sequence[float]) -> np.ndarray:
    """Busing–Levy B: columns a*, b*, c* (Å⁻¹) with a* along x and b* in the x–y plane.

    B = [[a*, b*·cos γ*, c*·cos β*], [0, b*·sin γ*, −c*·sin β*·cos α], [0, 0, 1/c]]; the rows of
    B⁻¹ are the real vectors with exactly the cell's lengths and angles. (nanoBragg's default
    orientation is this B in its own frame; its triclinic c* differs slightly, see
    :func:`xrais.simulate.nanobragg.nanobragg_reciprocal_matrix`.)

    Examples
    --------
    >>> m = np.linalg.inv(reciprocal_matrix_B((61.2, 72.5, 84.3, 78.3, 86.1, 101.7)))
    >>> np.round(np.linalg.norm(m, axis=1), 9).tolist()
    [61.2, 72.5, 84.3]
    """
    _, _, c, alpha_deg, _, _ = validate_cell(cell)
    al = math.radians(alpha_deg)
    _, a_s, b_s, c_s, _, cos_be_s, cos_ga_s = reciprocal_parameters(cell)
    sin_be_s = math.sqrt(max(0.0, 1.0 - cos_be_s**2))
    sin_ga_s = math.sqrt(max(0.0, 1.0 - cos_ga_s**2))
    return np.array([
        [a_s, b_s * cos_ga_s, c_s * cos_be_s],
        [0.0, b_s * sin_ga_s, -c_s * sin_be_s * math.cos(al)],
        [0.0, 0.0, 1.0 / c],
    ])


def misset_matrix(misset_deg: Sequence[float]) -> np.ndarray:
    """Rotation about x, then y, then z (fixed axes) by ``misset_deg`` — nanoBragg ``-misset``."""
    rx, ry, rz = (float(v) for v in misset_deg)
    return rotation_matrix((0, 0, 1), rz) @ rotation_matrix((0, 1, 0), ry) @ rotation_matrix((1, 0, 0), rx)


def _rotation(u: Any) -> np.ndarray:
    m = np.asarray(u, dtype=float)
    if m.shape != (3, 3) or not np.allclose(m @ m.T, np.eye(3), atol=1e-6) or not np.isclose(np.linalg.det(m), 1.0,
                                                                                           atol=1e-6):
        raise ConfigError(f"crystal orientation U: expected a 3×3 rotation matrix, got {m.tolist()}")
    return m


@dataclass(frozen=True, eq=False)
class Crystal:
    """A mosaic crystal for the kinematic simulator.

    Parameters
    ----------
    cell : (a, b, c, α, β, γ)
        Unit cell in Å and degrees.
    structure_factors : StructureFactors
        |F| on a dense Miller-index grid (see :mod:`xrais.simulate.structure_factors`).
    space_group : str
        Hermann–Mauguin symbol; checked against the cell.
    U : 3×3 array
        Orientation (rotation) in the lab frame; ``A = U·B``.
    n_cells : (int, int, int)
        Unit cells per mosaic domain along a, b, c (values below 1 become 1, as in nanoBragg).
    shape : CrystalShape
        Lattice-transform shape of a domain.
    mosaic_spread_deg : float
        Largest mosaic rotation (nanoBragg's spread: the angles are ≤ it, median 0.91·spread).
    mosaic_domains : int
        Number of domains (the first is unrotated).
    mosaic_seed : int
        Seed of the domain rotations (nanoBragg's default is 12345678).
    """

    cell: tuple[float, float, float, float, float, float]
    structure_factors: StructureFactors = field(default_factory=lambda: StructureFactors.constant(100.0))
    space_group: str = "P 1"
    U: np.ndarray = field(default_factory=lambda: np.eye(3))
    n_cells: tuple[int, int, int] = (5, 5, 5)
    shape: CrystalShape = "square"
    mosaic_spread_deg: float = 0.0
    mosaic_domains: int = 1
    mosaic_seed: int = 12345678

    def __post_init__(self) -> None:
        object.__setattr__(self, "cell", validate_cell(self.cell))
        object.__setattr__(self, "U", _rotation(self.U))
        try:
            n = tuple(max(1, int(v)) for v in self.n_cells)
        except (TypeError, ValueError):
            raise ConfigError(f"n_cells {self.n_cells!r}: expected three integers") from None
        if len(n) != 3 or max(n) > 100000:
            raise ConfigError(f"n_cells {self.n_cells!r}: expected three integers of 1–100000 cells")
        object.__setattr__(self, "n_cells", n)
        if self.shape not in SHAPE_CODES:
            raise ConfigError(f"crystal shape {self.shape!r}: expected one of {', '.join(SHAPE_CODES)}")
        if not 0.0 <= self.mosaic_spread_deg <= 90.0:
            raise ConfigError(f"mosaic spread {self.mosaic_spread_deg!r}°: expected 0–90°")
        if not 1 <= int(self.mosaic_domains) <= 100000:
            raise ConfigError(f"mosaic domains {self.mosaic_domains!r}: expected 1–100000")
        object.__setattr__(self, "space_group", _check_space_group(self.space_group, self.cell))

    @classmethod
    def from_domain_size(cls, cell: Sequence[float], domain_size_um: float | Sequence[float], **kwargs: Any) -> "Crystal":
        """A crystal whose domains are ``domain_size_um`` across: N = ceil(size / edge) per axis."""
        sizes = [float(domain_size_um)] * 3 if np.isscalar(domain_size_um) else [float(v) for v in domain_size_um]
        if not all(s > 0 for s in sizes):
            raise ConfigError(f"domain size {domain_size_um!r} µm: expected > 0")
        cell = validate_cell(cell)
        n = tuple(math.ceil(s * 1e4 / edge) for s, edge in zip(sizes, cell[:3]))
        return cls(cell=cell, n_cells=n, **kwargs)  # type: ignore[arg-type]

    @property
    def B(self) -> np.ndarray:
        """Busing–Levy B matrix (Å⁻¹), columns a*, b*, c*."""
        return reciprocal_matrix_B(self.cell)

    @property
    def A(self) -> np.ndarray:
        """Oriented reciprocal basis U·B (Å⁻¹), columns a*, b*, c* in the lab frame."""
        return self.U @ self.B

    @property
    def real_space_matrix(self) -> np.ndarray:
        """Rows a, b, c (Å) in the lab frame: ``A⁻¹``, so that ``(h, k, l) = A⁻¹·S``."""
        return np.linalg.inv(self.A)

    def rotated(self, axis: Sequence[float], angle_deg: float) -> "Crystal":
        """The crystal turned about ``axis`` (lab frame) by ``angle_deg``."""
        return replace(self, U=rotation_matrix(axis, angle_deg) @ self.U)

    def to_dict(self) -> dict[str, Any]:
        """Parameters as plain JSON (structure factors by their provenance text only)."""
        return {"cell": list(self.cell), "space_group": self.space_group, "U": self.U.tolist(),
                "n_cells": list(self.n_cells), "shape": self.shape, "mosaic_spread_deg": self.mosaic_spread_deg,
                "mosaic_domains": int(self.mosaic_domains), "mosaic_seed": int(self.mosaic_seed),
                "structure_factors": self.structure_factors.source}


def _check_space_group(name: str, cell: tuple[float, ...]) -> str:
    import gemmi

    sg = gemmi.find_spacegroup_by_name(str(name))
    if sg is None:
        raise ConfigError(f"space group {name!r}: not a space-group symbol gemmi knows (e.g. 'P 43 21 2')")
    if not gemmi.UnitCell(*cell).is_compatible_with_spacegroup(sg, 1e-3):
        raise ConfigError(
            f"space group {sg.hm} ({sg.crystal_system_str()}) does not fit the cell {tuple(round(v, 4) for v in cell)}"
        )
    return sg.hm
