"""Wilson priors on structure-factor amplitudes, and the symmetry bookkeeping they need.

Wilson (1949; Acta Cryst. 2, 318): atoms placed at random make the complex structure factor a
sum of many random phasors, so |F| follows a Rayleigh density for acentric reflections and a
half-normal density for centric ones. With ε the statistical weight (the number of point-group
operations that leave h unchanged, centring left out) and Σ the mean intensity ⟨|F|²⟩/ε at the
reflection's resolution:

* acentric: p(F) = 2F/(εΣ) · exp(−F²/(εΣ))
* centric:  p(F) = √(2/(π εΣ)) · exp(−F²/(2εΣ))

In normalised amplitudes E = F/√(εΣ) these are p(E) = 2E·e^(−E²) and √(2/π)·e^(−E²/2).
Centric flags and ε come from gemmi (``GroupOps.centric_flag_array``,
``epsilon_factor_without_centering_array``). Σ is either 1 (a flat prior, for data already
normalised) or a per-shell mean intensity estimated from the data (:func:`fit_wilson_shells`).

Symmetry: :func:`reduce_to_asu_array` maps Miller indices to gemmi's reciprocal asymmetric unit
with the MTZ ``M/ISYM`` convention (odd ISYM: h is an image of the ASU index, I(+); even: of
its Friedel mate, I(−)). :class:`UniqueReflections` lists every ASU reflection to a resolution
limit (both Friedel mates of acentric ones when anomalous) and looks indices up in it.

Examples
--------
>>> import torch
>>> prior = WilsonPrior(centric=torch.tensor([False, True]), epsilon=torch.tensor([1.0, 1.0]))
>>> [round(v, 4) for v in prior.log_prob(torch.tensor([1.0, 1.0])).exp().tolist()]
[0.7358, 0.4839]
>>> compute_centric_flag_array([[1, 2, 3], [0, 0, 4]], "P 43 21 2").tolist()
[False, True]
>>> compute_epsilon_array([[1, 2, 3], [0, 0, 4]], "P 43 21 2").tolist()
[1, 4]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import gemmi
import numpy as np
import torch

from xrais.errors import ConfigError

__all__ = [
    "UniqueReflections",
    "WilsonPrior",
    "WilsonShells",
    "reduce_to_asu_array",
    "compute_centric_flag_array",
    "compute_epsilon_array",
    "fit_wilson_shells",
    "make_space_group",
    "make_mtz_batch",
]

_TINY = 1e-12


def make_space_group(space_group: gemmi.SpaceGroup | str | int) -> gemmi.SpaceGroup:
    """A ``gemmi.SpaceGroup`` from a Hermann–Mauguin symbol, a number or a SpaceGroup.

    Raises
    ------
    ConfigError
        gemmi does not know the symbol or number.
    """
    if isinstance(space_group, gemmi.SpaceGroup):
        return space_group
    text = str(space_group).strip()
    try:
        found = gemmi.find_spacegroup_by_number(int(text)) if text.isdigit() else gemmi.find_spacegroup_by_name(text)
    except (ValueError, RuntimeError):
        found = None
    if found is None:
        raise ConfigError(f"space group {space_group!r}: expected a Hermann–Mauguin symbol or number gemmi knows")
    return found


def _hkl_array(hkl: Any) -> np.ndarray:
    arr = np.ascontiguousarray(np.asarray(hkl, dtype=np.int32).reshape(-1, 3))
    return arr


def compute_centric_flag_array(hkl: Any, space_group: gemmi.SpaceGroup | str | int) -> np.ndarray:
    """Whether each reflection is centric in the space group.

    Parameters
    ----------
    hkl : array-like, shape (n, 3), int
        Miller indices (any setting of the reflection; symmetry mates give the same answer).
    space_group : gemmi.SpaceGroup, str or int

    Returns
    -------
    ndarray, shape (n,), bool
    """
    ops = make_space_group(space_group).operations()
    return np.asarray(ops.centric_flag_array(_hkl_array(hkl)), dtype=bool)


def compute_epsilon_array(hkl: Any, space_group: gemmi.SpaceGroup | str | int) -> np.ndarray:
    """The statistical weight ε of each reflection (point-group operations fixing h, centring left out).

    Parameters
    ----------
    hkl : array-like, shape (n, 3), int
    space_group : gemmi.SpaceGroup, str or int

    Returns
    -------
    ndarray, shape (n,), int32 — 1 for a general reflection, larger on symmetry axes.
    """
    ops = make_space_group(space_group).operations()
    return np.asarray(ops.epsilon_factor_without_centering_array(_hkl_array(hkl)), dtype=np.int32)


def make_mtz_batch(number: int, cell: gemmi.UnitCell | Sequence[float], wavelength_A: float, *,
                   dataset_id: int = 1, phi_range_deg: tuple[float, float] | None = None,
                   title: str = "") -> gemmi.Mtz.Batch:
    """An MTZ batch header (orientation block) for one image, as DIALS and aimless expect.

    Sets the batch number, cell, wavelength and dataset, one crystal, a 3-D data type, one
    goniostat axis along x (the scan axis) with laboratory axes as e1, e2, e3, the beam
    (lab frame of :mod:`xrais.geometry`: along −z), an identity orientation matrix (the
    orientation is not known per batch) and, when given, the spindle range (start, end) in
    degrees.

    Examples
    --------
    >>> b = make_mtz_batch(3, (79.1, 79.1, 38.0, 90, 90, 90), 0.98, phi_range_deg=(1.0, 1.5))
    >>> b.number, round(b.wavelength, 3), round(b.cell.a, 1), list(b.floats)[36:38]
    (3, 0.98, 79.1, [1.0, 1.5])
    """
    uc = cell if isinstance(cell, gemmi.UnitCell) else gemmi.UnitCell(*[float(v) for v in cell])
    b = gemmi.Mtz.Batch()
    b.number = int(number)
    b.title = title or f"batch {int(number)}"
    b.dataset_id = int(dataset_id)
    b.cell = uc
    b.wavelength = float(wavelength_A)
    b.axes = ["PHI"]
    for index, value in ((12, 1), (14, 3), (17, 1), (19, 1)):   # ncryst, ldtype (3-D), ngonax, ndet
        b.ints[index] = value
    floats = {**dict(enumerate([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0], start=6)),     # umat
              **dict(enumerate([1.0, 0.0, 0.0], start=38)),                                    # scanax
              **dict(enumerate([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0], start=59)),    # e1, e2, e3
              **dict(enumerate([0.0, 0.0, 1.0], start=80)),          # source: sample → source (beam along −z)
              **dict(enumerate([0.0, 0.0, -1.0 / float(wavelength_A)] if wavelength_A > 0 else [0.0, 0.0, 0.0],
                               start=83))}                                               # so: s0, Å⁻¹
    if phi_range_deg is not None:
        floats.update({36: float(phi_range_deg[0]), 37: float(phi_range_deg[1]),           # phistt, phiend
                       47: float(phi_range_deg[1] - phi_range_deg[0])})                     # phirange
    for index, value in floats.items():
        b.floats[index] = value
    return b


def reduce_to_asu_array(hkl: Any, space_group: gemmi.SpaceGroup | str | int) -> tuple[np.ndarray, np.ndarray]:
    """Map Miller indices to gemmi's reciprocal-space asymmetric unit.

    Parameters
    ----------
    hkl : array-like, shape (n, 3), int
    space_group : gemmi.SpaceGroup, str or int

    Returns
    -------
    hkl_asu : ndarray, shape (n, 3), int32
    isym : ndarray, shape (n,), int32 — MTZ ``M/ISYM``: 2·op − 1 for I(+), 2·op for I(−).

    Examples
    --------
    >>> h, isym = reduce_to_asu_array([[1, 2, 3], [-1, -2, -3]], "P 43 21 2")
    >>> h.tolist(), isym.tolist()
    ([[2, 1, 3], [2, 1, 3]], [12, 11])
    """
    sg = make_space_group(space_group)
    arr = _hkl_array(hkl)
    if arr.shape[0] == 0:
        return arr.copy(), np.zeros(0, dtype=np.int32)
    unique, inverse = np.unique(arr, axis=0, return_inverse=True)
    asu = gemmi.ReciprocalAsu(sg)
    ops = sg.operations()
    out = np.empty_like(unique)
    isym = np.empty(len(unique), dtype=np.int32)
    for i, h in enumerate(unique.tolist()):
        mapped, isym[i] = asu.to_asu(h, ops)
        out[i] = mapped
    inverse = inverse.reshape(-1)
    return out[inverse], isym[inverse]


class UniqueReflections:
    """Every unique reflection of a space group to a resolution limit, with lookup by index.

    Parameters
    ----------
    cell : gemmi.UnitCell
    space_group : gemmi.SpaceGroup
    d_min_A : float — high-resolution limit, Å.
    anomalous : bool — list I(+) and I(−) of acentric reflections separately.

    Attributes
    ----------
    hkl : ndarray, shape (n, 3), int32 — ASU indices (systematic absences left out).
    friedel : ndarray, shape (n,), int8 — +1 for F(+) (and every centric or non-anomalous entry), −1 for F(−).
    centric : ndarray, shape (n,), bool
    epsilon : ndarray, shape (n,), int32
    d_A : ndarray, shape (n,), float64 — resolution, Å.
    """

    def __init__(self, cell: gemmi.UnitCell, space_group: gemmi.SpaceGroup, d_min_A: float,
                 anomalous: bool = False) -> None:
        if not d_min_A > 0:
            raise ConfigError(f"d_min_A = {d_min_A}: expected a resolution limit > 0 Å")
        self.cell = cell
        self.space_group = make_space_group(space_group)
        self.d_min_A = float(d_min_A)
        self.anomalous = bool(anomalous)
        ops = self.space_group.operations()
        hkl = np.asarray(gemmi.make_miller_array(cell, self.space_group, self.d_min_A), dtype=np.int32)
        hkl = hkl[~np.asarray(ops.systematic_absences(hkl), dtype=bool)]
        centric = compute_centric_flag_array(hkl, self.space_group)
        friedel = np.ones(len(hkl), dtype=np.int8)
        if self.anomalous:
            minus = ~centric
            hkl = np.concatenate([hkl, hkl[minus]])
            centric = np.concatenate([centric, centric[minus]])
            friedel = np.concatenate([friedel, -np.ones(int(minus.sum()), dtype=np.int8)])
        self.hkl = hkl
        self.friedel = friedel
        self.centric = centric
        self.epsilon = compute_epsilon_array(hkl, self.space_group)
        self.d_A = np.asarray(cell.calculate_d_array(hkl), dtype=np.float64)
        keys = self._keys(hkl, friedel)
        self._order = np.argsort(keys)
        self._sorted_keys = keys[self._order]

    def __len__(self) -> int:
        return len(self.hkl)

    @staticmethod
    def _keys(hkl: np.ndarray, friedel: np.ndarray) -> np.ndarray:
        h = hkl.astype(np.int64) + 1024
        return ((h[:, 0] * 2048 + h[:, 1]) * 2048 + h[:, 2]) * 2 + (np.asarray(friedel) < 0)

    def lookup(self, hkl_asu: Any, friedel: Any = None) -> np.ndarray:
        """Row of each ASU index (and Friedel sign, ignored unless anomalous) in the list; −1 where absent.

        Parameters
        ----------
        hkl_asu : array-like, shape (n, 3), int — indices already in the ASU.
        friedel : array-like, shape (n,), optional — +1 / −1; centric reflections are looked up as +1.
        """
        hkl = _hkl_array(hkl_asu)
        if self.anomalous and friedel is not None:
            sign = np.where(compute_centric_flag_array(hkl, self.space_group), 1, np.asarray(friedel))
        else:
            sign = np.ones(len(hkl), dtype=np.int8)
        keys = self._keys(hkl, sign)
        pos = np.searchsorted(self._sorted_keys, keys)
        pos = np.clip(pos, 0, max(len(self._sorted_keys) - 1, 0))
        found = (len(self._sorted_keys) > 0) & (self._sorted_keys[pos] == keys)
        return np.where(found, self._order[pos], -1).astype(np.int64)


@dataclass(frozen=True)
class WilsonShells:
    """Mean intensity Σ as a function of resolution, from binned observations.

    Attributes
    ----------
    inv_d2_per_A2 : ndarray, shape (n_shells,)
        Shell centres in 1/d² (Å⁻²), increasing.
    sigma : ndarray, shape (n_shells,)
        Mean of I/ε in each shell (the units of the intensities given to :func:`fit_wilson_shells`).
    """

    inv_d2_per_A2: np.ndarray
    sigma: np.ndarray

    def __call__(self, inv_d2_per_A2: Any) -> np.ndarray:
        """Σ at each 1/d² (Å⁻²), interpolated linearly in log Σ and held constant past the end shells."""
        x = np.asarray(inv_d2_per_A2, dtype=np.float64)
        return np.exp(np.interp(x, self.inv_d2_per_A2, np.log(self.sigma)))

    def to_dict(self) -> dict[str, list[float]]:
        return {"inv_d2_per_A2": self.inv_d2_per_A2.tolist(), "sigma": self.sigma.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, list[float]]) -> "WilsonShells":
        return cls(np.asarray(data["inv_d2_per_A2"], dtype=np.float64), np.asarray(data["sigma"], dtype=np.float64))

    @classmethod
    def flat(cls) -> "WilsonShells":
        """Σ = 1 at every resolution (careless' default prior)."""
        return cls(np.array([0.0, 1.0]), np.array([1.0, 1.0]))


def fit_wilson_shells(inv_d2_per_A2: Any, intensity: Any, epsilon: Any, n_shells: int = 20) -> WilsonShells:
    """Estimate Σ(1/d²) = ⟨I/ε⟩ in shells of equal numbers of observations (a Wilson plot).

    Parameters
    ----------
    inv_d2_per_A2 : array-like, shape (n,)
        1/d² of each observation, Å⁻².
    intensity : array-like, shape (n,)
        Observed intensities (any consistent units).
    epsilon : array-like, shape (n,)
        Statistical weight of each observation's reflection.
    n_shells : int
        Number of shells (fewer when there are few observations: at least 50 per shell).

    Returns
    -------
    WilsonShells

    Raises
    ------
    ConfigError
        No observations, or a mean intensity that is not positive overall.
    """
    s2 = np.asarray(inv_d2_per_A2, dtype=np.float64)
    y = np.asarray(intensity, dtype=np.float64) / np.asarray(epsilon, dtype=np.float64)
    keep = np.isfinite(s2) & np.isfinite(y)
    s2, y = s2[keep], y[keep]
    if s2.size == 0 or not np.mean(y) > 0:
        raise ConfigError("Wilson shells: expected observations with a positive mean intensity, "
                          f"found {s2.size} observations")
    n = int(max(1, min(n_shells, s2.size // 50)))
    order = np.argsort(s2)
    groups = np.array_split(order, n)
    floor = 1e-3 * float(np.mean(y))
    centres = np.array([s2[g].mean() for g in groups])
    sigma = np.array([max(float(y[g].mean()), floor) for g in groups])
    return WilsonShells(centres, sigma)


class WilsonPrior(torch.nn.Module):
    """Wilson's acentric/centric prior on |F| for a fixed list of unique reflections.

    Parameters
    ----------
    centric : Tensor, shape (n,), bool
    epsilon : Tensor, shape (n,), float — statistical weights ε.
    sigma : Tensor, shape (n,) or scalar, float — mean intensity Σ at each reflection's resolution
        (default 1).

    ``log_prob(F, index)`` evaluates reflections ``index`` (all when None); F must broadcast
    against them (samples on leading dimensions).
    """

    def __init__(self, centric: torch.Tensor, epsilon: torch.Tensor, sigma: torch.Tensor | float = 1.0) -> None:
        super().__init__()
        centric = torch.as_tensor(centric, dtype=torch.bool)
        epsilon = torch.as_tensor(epsilon, dtype=torch.float32)
        sigma_t = torch.as_tensor(sigma, dtype=torch.float32).expand_as(epsilon).clone()
        if centric.shape != epsilon.shape:
            raise ConfigError(f"WilsonPrior: centric {tuple(centric.shape)} and epsilon {tuple(epsilon.shape)} differ")
        if not bool((epsilon > 0).all()) or not bool((sigma_t > 0).all()):
            raise ConfigError("WilsonPrior: expected ε > 0 and Σ > 0 for every reflection")
        self.register_buffer("centric", centric)
        self.register_buffer("epsilon", epsilon)
        self.register_buffer("sigma", sigma_t)

    def _select(self, index: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if index is None:
            return self.centric, self.epsilon * self.sigma
        return self.centric[index], (self.epsilon * self.sigma)[index]

    def log_prob(self, F: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """log p(F) for amplitudes F ≥ 0 (F = 0 is clamped to a tiny value so gradients stay finite)."""
        centric, var = self._select(index)
        F = F.clamp_min(_TINY)
        acentric_lp = math.log(2.0) + torch.log(F) - torch.log(var) - F * F / var
        centric_lp = 0.5 * math.log(2.0 / math.pi) - 0.5 * torch.log(var) - 0.5 * F * F / var
        return torch.where(centric, centric_lp, acentric_lp)

    def mean(self, index: torch.Tensor | None = None) -> torch.Tensor:
        """E[F]: √(πεΣ)/2 (acentric) or √(2εΣ/π) (centric)."""
        centric, var = self._select(index)
        return torch.where(centric, torch.sqrt(2.0 * var / math.pi), 0.5 * torch.sqrt(math.pi * var))

    def stddev(self, index: torch.Tensor | None = None) -> torch.Tensor:
        """SD[F]: √(εΣ(1 − π/4)) (acentric) or √(εΣ(1 − 2/π)) (centric)."""
        centric, var = self._select(index)
        return torch.where(centric, torch.sqrt(var * (1.0 - 2.0 / math.pi)), torch.sqrt(var * (1.0 - math.pi / 4.0)))
