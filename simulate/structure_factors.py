"""Structure-factor amplitudes |F| on a dense Miller-index grid, for the kinematic simulator.

The simulator looks up |F(h₀)| at the nearest integer index h₀ of every sampled scattering
vector, millions of times per image, on the CPU and the GPU. A dense 3-D ``float32`` box with
an offset makes that one bounds check and one array read. Conventions:

* ``amplitudes[i, j, m]`` is |F| in electrons at ``(h, k, l) = hkl_min + (i, j, m)``;
  indices outside the box read ``default_F`` (nanoBragg ``-default_F``, PHYSICS.md §3).
* Cells are ``(a, b, c, α, β, γ)`` in Å and degrees, or a ``gemmi.UnitCell``. Space groups
  are Hermann–Mauguin symbols (``"P 43 21 2"``, ``"P43212"``), numbers, or ``gemmi.SpaceGroup``.
* s = 1/d (Å⁻¹). An overall B factor scales |F| by exp(−B·s²/4), so |F|² by exp(−B·s²/2).
* Grids from a model or MTZ hold every reflection of P1 (symmetry-expanded, with Friedel
  mates); nanoBragg ``h k l F`` tables are taken as they are, with no symmetry at all.

Symmetry, cells, scattering factors and the model → F transform are gemmi's
(``DensityCalculatorX`` + ``transform_map_to_f_phi``).

Examples
--------
>>> sf = StructureFactors.constant(100.0)
>>> sf.lookup([0, 5], [0, -3], [1, 2]).tolist()
[100.0, 100.0]
>>> sf = StructureFactors.random_wilson((40, 40, 40, 90, 90, 90), "P 21 21 21", d_min_A=4.0, seed=1)
>>> sf.hkl_min, sf.amplitudes.shape
((-10, -10, -10), (21, 21, 21))
>>> float(sf.lookup(0, 0, 3))   # 0 0 l with l odd is a systematic absence of P 21 21 21
0.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import gemmi
import numpy as np

from xrais.errors import ConfigError, DatasetError

__all__ = [
    "StructureFactors",
    "MAX_GRID_CELLS",
    "make_cell",
    "make_space_group",
    "make_miller_grid",
    "compute_d_A",
]

CellLike = Union[gemmi.UnitCell, Sequence[float]]
SpaceGroupLike = Union[gemmi.SpaceGroup, str, int]

MAX_GRID_CELLS = 200_000_000
"""Largest dense grid (number of Miller indices) a table may span: 0.8 GB of float32."""

# Protein-like element mix (by atom count) for the random-atom structure.
_RANDOM_ELEMENTS = ("C", "N", "O", "S")
_RANDOM_FRACTIONS = (0.63, 0.17, 0.19, 0.01)
_VOLUME_PER_ATOM_A3 = 20.0
_MAX_RANDOM_ATOMS = 50_000
_MIN_RANDOM_ATOMS = 50


def make_cell(cell: CellLike) -> gemmi.UnitCell:
    """Check a unit cell can exist and return it as a ``gemmi.UnitCell``.

    Parameters
    ----------
    cell : gemmi.UnitCell or sequence of 6 floats
        ``(a, b, c, α, β, γ)``: lengths in Å, angles in degrees.

    Raises
    ------
    ConfigError
        Not six finite numbers, a length ≤ 0, an angle outside (0°, 180°), or angles that
        cannot close a parallelepiped (need each angle < the sum of the other two and the sum < 360°).
    """
    if isinstance(cell, gemmi.UnitCell):
        values: tuple[float, ...] = tuple(cell.parameters)
    else:
        try:
            values = tuple(float(v) for v in cell)
        except (TypeError, ValueError):
            raise ConfigError(f"cell {cell!r}: expected six numbers (a, b, c in Å; α, β, γ in degrees)") from None
    if len(values) != 6 or not all(math.isfinite(v) for v in values):
        raise ConfigError(f"cell {values}: expected six finite numbers (a, b, c in Å; α, β, γ in degrees)")
    a, b, c, alpha, beta, gamma = values
    if min(a, b, c) <= 0:
        raise ConfigError(f"cell {values}: lengths a, b, c must be > 0 Å")
    if not all(0 < x < 180 for x in (alpha, beta, gamma)):
        raise ConfigError(f"cell {values}: angles must lie strictly between 0 and 180°")
    ca, cb, cg = (math.cos(math.radians(x)) for x in (alpha, beta, gamma))
    if 1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg <= 1e-9:
        raise ConfigError(f"cell {values}: the angles cannot close a cell "
                          "(need each angle < the sum of the other two and α+β+γ < 360°)")
    return gemmi.UnitCell(a, b, c, alpha, beta, gamma)


def make_space_group(space_group: SpaceGroupLike, cell: CellLike | None = None) -> gemmi.SpaceGroup:
    """Parse a space group (symbol or number) with gemmi, optionally checking it fits a cell.

    Raises
    ------
    ConfigError
        An unknown symbol or number, or a cell whose metric the group's symmetry does not allow.
    """
    if isinstance(space_group, gemmi.SpaceGroup):
        sg = space_group
    else:
        text = str(space_group).strip()
        sg = gemmi.find_spacegroup_by_number(int(text)) if text.isdigit() else gemmi.find_spacegroup_by_name(text)
        if sg is None:
            raise ConfigError(f"space group {space_group!r}: not a Hermann–Mauguin symbol or number 1–230 gemmi knows")
    if cell is not None:
        uc = make_cell(cell)
        if not uc.is_compatible_with_spacegroup(sg):
            raise ConfigError(f"space group {sg.hm!r} ({sg.crystal_system_str()}) does not fit cell "
                              f"{tuple(round(p, 4) for p in uc.parameters)}")
    return sg


def compute_d_A(cell: CellLike, h: Any, k: Any, l: Any) -> np.ndarray:
    """Interplanar spacing d of Miller indices (broadcast), from the reciprocal metric tensor.

    Returns
    -------
    d : ndarray of float64, the broadcast shape of h, k, l — Å (``inf`` at 0 0 0)
    """
    with np.errstate(divide="ignore"):
        return 1.0 / np.sqrt(_one_over_d2(_reciprocal_metric(make_cell(cell)), h, k, l))


def make_miller_grid(cell: CellLike, d_min_A: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The index ranges of the smallest box holding every reflection with d ≥ d_min.

    |h| ≤ a/d_min (h = a·S and |S| ≤ 1/d_min), likewise k with b and l with c.

    Returns
    -------
    h, k, l : 1-D int64 arrays ``arange(-h_max, h_max + 1)`` (and for k, l)

    Raises
    ------
    ConfigError
        d_min_A not > 0, or a box over :data:`MAX_GRID_CELLS` indices (the message gives the
        smallest d_min this cell allows).
    """
    uc = make_cell(cell)
    d_min_A = float(d_min_A)

    def limits(d: float) -> tuple[int, int, int]:
        return tuple(int(math.floor(x / d + 1e-9)) for x in (uc.a, uc.b, uc.c))  # type: ignore[return-value]

    def n_cells(d: float) -> float:
        return math.prod(2.0 * m + 1 for m in limits(d))

    if not (math.isfinite(d_min_A) and d_min_A > 0):
        raise ConfigError(f"d_min_A={d_min_A}: expected a resolution limit > 0 Å")
    if n_cells(d_min_A) > MAX_GRID_CELLS:
        lo, hi = d_min_A, max(uc.a, uc.b, uc.c)
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if n_cells(mid) > MAX_GRID_CELLS else (lo, mid)
        raise ConfigError(f"d_min_A={d_min_A} Å: the Miller box for cell {tuple(round(p, 3) for p in uc.parameters)} "
                          f"would hold {n_cells(d_min_A):.3g} indices, over the {MAX_GRID_CELLS:.0e} limit; "
                          f"allowed: d_min_A ≥ {hi:.3g} Å")
    return tuple(np.arange(-m, m + 1, dtype=np.int64) for m in limits(d_min_A))  # type: ignore[return-value]


@dataclass(frozen=True, eq=False)
class StructureFactors:
    """|F| on a dense Miller-index box, with a default for every index outside it.

    Parameters
    ----------
    amplitudes : ndarray, shape (nh, nk, nl), float32 — |F| in electrons at
        ``(h_min + i, k_min + j, l_min + m)``; treat as read-only.
    hkl_min : (int, int, int)
        Index of ``amplitudes[0, 0, 0]``.
    default_F : float
        |F| (electrons) of every index outside the box (nanoBragg ``-default_F``).
    source : str
        Provenance text (file name, "constant", "random-atom P 43 21 2 …").
    """

    amplitudes: np.ndarray
    hkl_min: tuple[int, int, int]
    default_F: float = 0.0
    source: str = ""

    def __post_init__(self) -> None:
        amplitudes = np.ascontiguousarray(self.amplitudes, dtype=np.float32)
        if amplitudes.ndim != 3:
            raise ConfigError(f"amplitudes: expected a 3-D (nh, nk, nl) array, got shape {amplitudes.shape}")
        try:
            hkl_min = tuple(int(v) for v in self.hkl_min)
        except (TypeError, ValueError):
            hkl_min = ()
        if len(hkl_min) != 3:
            raise ConfigError(f"hkl_min {self.hkl_min!r}: expected three integers (h_min, k_min, l_min)")
        if not math.isfinite(float(self.default_F)):
            raise ConfigError(f"default_F={self.default_F}: expected a finite |F|")
        object.__setattr__(self, "amplitudes", amplitudes)
        object.__setattr__(self, "hkl_min", hkl_min)
        object.__setattr__(self, "default_F", float(self.default_F))

    @property
    def hkl_max(self) -> tuple[int, int, int]:
        """Largest (h, k, l) inside the box (``hkl_min − 1`` along an empty axis)."""
        return tuple(m + n - 1 for m, n in zip(self.hkl_min, self.amplitudes.shape))  # type: ignore[return-value]

    def lookup(self, h: Any, k: Any, l: Any) -> np.ndarray:
        """|F| at Miller indices (vectorised, broadcast); ``default_F`` outside the box.

        Parameters
        ----------
        h, k, l : int or array_like of int
            Miller indices. Float input is rounded to the nearest index as nanoBragg does,
            h₀ = ceil(h − ½).

        Returns
        -------
        ndarray of float32, the broadcast shape of h, k, l — |F| in electrons
        """
        idx = np.broadcast_arrays(*(_as_index(x) for x in (h, k, l)))
        out = np.full(idx[0].shape, self.default_F, dtype=np.float32)
        if self.amplitudes.size == 0:
            return out
        offset = [x - m for x, m in zip(idx, self.hkl_min)]
        inside = np.ones(out.shape, dtype=bool)
        for o, n in zip(offset, self.amplitudes.shape):
            inside &= (o >= 0) & (o < n)
        out[inside] = self.amplitudes[offset[0][inside], offset[1][inside], offset[2][inside]]
        return out

    def with_b_factor(self, b_factor_A2: float, cell: CellLike) -> "StructureFactors":
        """A copy with |F|·exp(−B·s²/4) (so |F|² gets exp(−B·s²/2)), s = 1/d from ``cell``.

        ``default_F`` is left unchanged, as nanoBragg applies no B to it.

        Parameters
        ----------
        b_factor_A2 : float
            Overall B in Å² (negative sharpens).
        cell : (a, b, c, α, β, γ) in Å and degrees, or gemmi.UnitCell
        """
        b = float(b_factor_A2)
        if not math.isfinite(b):
            raise ConfigError(f"b_factor_A2={b_factor_A2}: expected a finite B factor in Å²")
        metric = _reciprocal_metric(make_cell(cell))
        out = np.empty_like(self.amplitudes)
        h, k, l = (m + np.arange(n) for m, n in zip(self.hkl_min, self.amplitudes.shape))
        for i, hi in enumerate(h):
            out[i] = self.amplitudes[i] * np.exp(-0.25 * b * _one_over_d2(metric, hi, k[:, None], l[None, :]))
        return StructureFactors(out, self.hkl_min, self.default_F, f"{self.source}; overall B {b:+g} Å²")

    @classmethod
    def constant(cls, F: float) -> "StructureFactors":
        """Every reflection has |F| = ``F`` electrons (nanoBragg ``-default_F``); an empty grid."""
        if not (math.isfinite(float(F)) and float(F) >= 0):
            raise ConfigError(f"F={F}: expected a finite |F| ≥ 0 electrons")
        return cls(np.zeros((0, 0, 0), np.float32), (0, 0, 0), float(F), f"constant |F| = {float(F):g}")

    @classmethod
    def from_hkl_file(cls, path: str | Path, default_F: float = 0.0) -> "StructureFactors":
        """Read a nanoBragg ``-hkl`` table: one ``h k l F`` line per reflection.

        As nanoBragg (PHYSICS.md §3): the box spans the listed indices; unlisted indices inside
        it and every index outside it get ``default_F`` (0 by default); a later line for the
        same index wins; no symmetry is applied, not even Friedel's law.

        Raises
        ------
        ConfigError
            The file does not exist.
        DatasetError
            A non-blank line that is not four numbers with integral h, k, l, or no reflections.
        """
        path = _existing_file(path, "nanoBragg h k l F table")
        rows = []
        with open(path, encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, start=1):
                fields = line.split()
                if not fields:
                    continue
                try:
                    values = [float(v) for v in fields]
                except ValueError:
                    values = []
                if len(values) != 4 or not all(math.isfinite(v) for v in values) or any(v != round(v) for v in values[:3]):
                    raise DatasetError(f"{path.name}, line {number}: expected 'h k l F' (integers h k l), got {line.strip()!r}")
                rows.append(values)
        if not rows:
            raise DatasetError(f"{path.name}: no 'h k l F' lines found")
        table = np.asarray(rows)
        return _dense_from_list(table[:, :3].astype(np.int64), table[:, 3], default_F, f"{path.name} (nanoBragg hkl)")

    @classmethod
    def from_mtz(cls, path: str | Path, *, column: str | None = None, d_min_A: float | None = None,
                 expand_to_p1: bool = True) -> "StructureFactors":
        """Read |F| from an MTZ file (gemmi), expanded to P1 with the file's space group.

        Parameters
        ----------
        column : str, optional
            An F-type (amplitude) or J-type (intensity) column; by default the first F-type
            column, else the first J-type. Intensities become sqrt(max(I, 0)).
        d_min_A : float, optional
            Drop reflections with d < d_min (Å).
        expand_to_p1 : bool
            Fill every symmetry equivalent and Friedel mate; ``False`` keeps the listed indices only.

        Unmerged files (an ``M/ISYM`` or ``BATCH`` column) are merged first: symmetry-equivalent
        observations of I (and I(−h)) are averaged with weights 1/σ² by ``gemmi.Intensities``;
        observations with σ ≤ 0 are dropped. Unmeasured indices inside the box read 0.

        Raises
        ------
        ConfigError
            Missing file, a column that is absent or of the wrong type, or a bad d_min_A.
        DatasetError
            A file gemmi cannot read, or one with no space group or no usable reflections.
        """
        path = _existing_file(path, "MTZ file")
        try:
            mtz = gemmi.read_mtz_file(str(path))
        except (RuntimeError, ValueError) as exc:
            raise DatasetError(f"{path.name}: not a readable MTZ file ({exc})") from None
        if mtz.spacegroup is None:
            raise DatasetError(f"{path.name}: the MTZ header names no space group")
        labels = list(mtz.column_labels())
        types = {c.label: c.type for c in mtz.columns}
        unmerged = "M/ISYM" in labels or "BATCH" in labels or len(mtz.batches) > 0
        if column is None:
            candidates = ["I"] if unmerged and "I" in labels else [c for t in "FJ" for c in labels if types[c] == t]
            if not candidates:
                raise ConfigError(f"{path.name}: no F-type or J-type column among {labels}")
            column = candidates[0]
        if column not in labels:
            raise ConfigError(f"{path.name}: no column {column!r}; columns are {labels}")
        if types[column] not in "FJ" or (unmerged and types[column] != "J"):
            allowed = "J (intensity)" if unmerged else "F (amplitude) or J (intensity)"
            raise ConfigError(f"{path.name}: column {column!r} has MTZ type {types[column]!r}; expected {allowed}")
        data = mtz.array
        hkl = data[:, :3].astype(np.int32)
        values = data[:, labels.index(column)].astype(np.float64)
        note = ""
        if unmerged:
            sigma_label = "SIG" + column
            if sigma_label not in labels:
                raise ConfigError(f"{path.name}: unmerged column {column!r} needs its sigma column {sigma_label!r}")
            sigmas = data[:, labels.index(sigma_label)].astype(np.float64)
            keep = np.isfinite(values) & np.isfinite(sigmas) & (sigmas > 0)
            intensities = gemmi.Intensities()
            intensities.set_data(mtz.cell, mtz.spacegroup, np.ascontiguousarray(hkl[keep]), values[keep], sigmas[keep])
            intensities.type = gemmi.DataType.Unmerged
            intensities.merge_in_place(gemmi.DataType.Mean)
            hkl, values = np.asarray(intensities.miller_array), np.asarray(intensities.value_array)
            note = f", {int(keep.sum())} unmerged observations averaged (1/σ² weights)"
        keep = np.isfinite(values)
        if d_min_A is not None:
            if not (math.isfinite(float(d_min_A)) and float(d_min_A) > 0):
                raise ConfigError(f"d_min_A={d_min_A}: expected a resolution limit > 0 Å")
            keep &= mtz.cell.calculate_d_array(hkl) >= float(d_min_A)
        hkl, values = hkl[keep].astype(np.int64), values[keep]
        if not len(values):
            raise DatasetError(f"{path.name}: no reflections with a value in column {column!r}")
        if types[column] == "J":
            values, note = np.sqrt(np.maximum(values, 0.0)), note + f", |F| = sqrt(max({column}, 0))"
        if expand_to_p1:
            hkl, values = _expand_to_p1(hkl, values, mtz.spacegroup.operations())
        return _dense_from_list(hkl, values, 0.0, f"{path.name} column {column} ({mtz.spacegroup.hm}{note})",
                                fill=0.0)

    @classmethod
    def from_structure(cls, structure: str | Path | gemmi.Structure, *, d_min_A: float,
                       b_factor_A2: float | None = None) -> "StructureFactors":
        """|F| of an atomic model for every P1 index with d ≥ d_min (0 beyond it).

        gemmi puts the model's density (IT92 form factors, the model's B factors, all symmetry
        copies of the structure's own space group) on a grid of the full unit cell and
        Fourier-transforms it (``DensityCalculatorX``, rate 1.5, Refmac-compatible blur, removed
        afterwards); this matches a direct sum (``StructureFactorCalculatorX``) to ~1e-4.
        Systematic absences and F(000) (the direct beam, absent from any measured table) are
        set to exactly 0. Only the first model is used.

        Parameters
        ----------
        structure : path to PDB/mmCIF, or gemmi.Structure
        d_min_A : float
            Resolution limit (Å).
        b_factor_A2 : float, optional
            Set every atom's B to this value (Å², isotropic); ``None`` keeps the model's own.
            To add an overall B on top of the model's, use :meth:`with_b_factor`.

        Raises
        ------
        ConfigError
            Missing file, bad d_min_A or B, or a space group that does not fit the cell.
        DatasetError
            A file gemmi cannot read, or one without a crystal cell, space group or atoms.
        """
        if isinstance(structure, gemmi.Structure):
            st, name = structure.clone(), structure.name or "structure"
        else:
            path = _existing_file(structure, "PDB or mmCIF file")
            try:
                st = gemmi.read_structure(str(path))
            except (RuntimeError, ValueError) as exc:
                raise DatasetError(f"{path.name}: not a readable PDB/mmCIF file ({exc})") from None
            name = path.name
        if not st.cell.is_crystal():
            raise DatasetError(f"{name}: no crystal unit cell (CRYST1 / _cell) in the model")
        sg = st.find_spacegroup()
        if sg is None:
            raise DatasetError(f"{name}: space group {st.spacegroup_hm!r} not recognised")
        make_space_group(sg, st.cell)
        if len(st) == 0 or st[0].count_atom_sites() == 0:
            raise DatasetError(f"{name}: the model holds no atoms")
        while len(st) > 1:
            del st[len(st) - 1]
        note = ""
        if b_factor_A2 is not None:
            b = float(b_factor_A2)
            if not (math.isfinite(b) and b >= 0):
                raise ConfigError(f"b_factor_A2={b_factor_A2}: expected a B factor ≥ 0 Å²")
            for residue in (r for chain in st[0] for r in chain):
                for atom in residue:
                    atom.b_iso, atom.aniso = b, gemmi.SMat33f(0, 0, 0, 0, 0, 0)
            note = f", all atoms B = {b:g} Å²"
        amplitudes, hkl_min = _model_amplitudes(st, sg, d_min_A)
        return cls(amplitudes, hkl_min, 0.0, f"{name} ({sg.xhm()}, d_min {float(d_min_A):g} Å{note})")

    @classmethod
    def random_wilson(cls, cell: CellLike, space_group: SpaceGroupLike, *, d_min_A: float,
                      n_atoms: int | None = None, seed: int = 0) -> "StructureFactors":
        """|F| of a random-atom structure: the default that needs no file.

        ``n_atoms`` atoms per asymmetric unit (63 % C, 17 % N, 19 % O, 1 % S by count, B = 0,
        occupancy 1) sit at uniform random fractional positions; gemmi adds their symmetry
        copies, so |F| obeys the space group's symmetry and absences, and for many atoms
        follows Wilson statistics: <|F|²> = ε·Σ_cell f_j²(s). Apply a B with :meth:`with_b_factor`.

        Parameters
        ----------
        cell : (a, b, c, α, β, γ) in Å and degrees, or gemmi.UnitCell
        space_group : Hermann–Mauguin symbol, number, or gemmi.SpaceGroup
        d_min_A : float
            Resolution limit (Å).
        n_atoms : int, optional
            Atoms per asymmetric unit; default one per 20 Å³ of it, clipped to 50–50 000.
        seed : int
            Seed of ``numpy.random.default_rng``; the same seed gives the same table.
        """
        uc = make_cell(cell)
        sg = make_space_group(space_group, uc)
        n_ops = len(sg.operations())
        if n_atoms is None:
            n_atoms = int(np.clip(round(uc.volume / n_ops / _VOLUME_PER_ATOM_A3), _MIN_RANDOM_ATOMS, _MAX_RANDOM_ATOMS))
        if not (isinstance(n_atoms, (int, np.integer)) and 1 <= n_atoms <= 10 * _MAX_RANDOM_ATOMS):
            raise ConfigError(f"n_atoms={n_atoms!r}: expected an integer of 1–{10 * _MAX_RANDOM_ATOMS} atoms")
        make_miller_grid(uc, d_min_A)  # validate before the expensive part
        rng = np.random.default_rng(seed)
        fractional = rng.random((int(n_atoms), 3))
        elements = rng.choice(len(_RANDOM_ELEMENTS), size=int(n_atoms), p=_RANDOM_FRACTIONS)
        st = _make_random_structure(uc, sg, fractional, [_RANDOM_ELEMENTS[e] for e in elements])
        amplitudes, hkl_min = _model_amplitudes(st, sg, d_min_A)
        return cls(amplitudes, hkl_min, 0.0,
                   f"random-atom {sg.xhm()}, {int(n_atoms)} atoms/ASU, seed {seed}, d_min {float(d_min_A):g} Å")


def _make_random_structure(cell: gemmi.UnitCell, space_group: gemmi.SpaceGroup, fractional: np.ndarray,
                           elements: Sequence[str]) -> gemmi.Structure:
    """A one-model gemmi.Structure with an atom (B = 0, occupancy 1) at each row of ``fractional`` (n, 3)."""
    st = gemmi.Structure()
    st.name, st.cell, st.spacegroup_hm = "random", cell, space_group.xhm()
    residue = gemmi.Residue()
    residue.name, residue.seqid = "UNK", gemmi.SeqId(1, " ")
    orth = np.array(cell.orth.mat.tolist())
    for i, (xyz, element) in enumerate(zip(fractional @ orth.T, elements)):
        atom = gemmi.Atom()
        atom.name, atom.element, atom.pos = element, gemmi.Element(element), gemmi.Position(*xyz)
        atom.occ, atom.b_iso, atom.serial = 1.0, 0.0, i + 1
        residue.add_atom(atom)
    chain = gemmi.Chain("A")
    chain.add_residue(residue)
    model = gemmi.Model(1)
    model.add_chain(chain)
    st.add_model(model)
    st.setup_cell_images()
    return st


def _model_amplitudes(st: gemmi.Structure, sg: gemmi.SpaceGroup, d_min_A: float) -> tuple[np.ndarray, tuple[int, int, int]]:
    """|F| on the full d ≥ d_min box of a model, by FFT of its symmetrised density."""
    h, k, l = make_miller_grid(st.cell, d_min_A)
    calc = gemmi.DensityCalculatorX()
    calc.d_min, calc.rate = float(d_min_A), 1.5
    calc.set_refmac_compatible_blur(st[0])
    calc.grid.setup_from(st)
    calc.grid.spacegroup = sg
    calc.put_model_density_on_grid(st[0])
    fft = gemmi.transform_map_to_f_phi(calc.grid, half_l=True).array  # l ≥ 0 half; F(−h) = F(h)*
    nu, nv, nw = fft.shape
    if 2 * h[-1] + 1 > nu or 2 * k[-1] + 1 > nv or l[-1] >= nw:
        raise RuntimeError(f"density grid {fft.shape} too small for the Miller box up to {h[-1]}, {k[-1]}, {l[-1]}")
    metric = _reciprocal_metric(st.cell)
    ops = sg.operations()
    pos, neg = l >= 0, l < 0
    out = np.empty((h.size, k.size, l.size), np.float32)
    for i, hi in enumerate(h):
        plane = np.empty((k.size, l.size), np.float64)
        plane[:, pos] = np.abs(fft[hi % nu][np.ix_(k % nv, l[pos])])
        plane[:, neg] = np.abs(fft[-hi % nu][np.ix_(-k % nv, -l[neg])])
        s2 = _one_over_d2(metric, hi, k[:, None], l[None, :])
        plane *= np.exp(0.25 * calc.blur * s2)
        plane[s2 > 1.0 / float(d_min_A) ** 2 * (1 + 1e-12)] = 0.0
        miller = np.stack(np.broadcast_arrays(hi, k[:, None], l[None, :]), axis=-1).reshape(-1, 3).astype(np.int32)
        plane.reshape(-1)[ops.systematic_absences(miller)] = 0.0
        out[i] = plane
    out[-h[0], -k[0], -l[0]] = 0.0  # F(000): the direct beam, never a Bragg spot to draw
    return out, (int(h[0]), int(k[0]), int(l[0]))


def _expand_to_p1(hkl: np.ndarray, values: np.ndarray, ops: gemmi.GroupOps) -> tuple[np.ndarray, np.ndarray]:
    """Every symmetry equivalent (h·R for each rotation R) and its Friedel mate, with the same value."""
    rotations = np.array([op.rot for op in ops.sym_ops], dtype=np.int64) // gemmi.Op.DEN
    equivalents = np.einsum("ni,oij->onj", hkl, rotations)
    equivalents = np.concatenate([equivalents, -equivalents]).reshape(-1, 3)
    return equivalents, np.tile(values, 2 * len(rotations))


def _dense_from_list(hkl: np.ndarray, values: np.ndarray, default_F: float, source: str,
                     fill: float | None = None) -> StructureFactors:
    """The box spanning listed indices; unlisted inside read ``fill`` (``default_F`` if None)."""
    hkl_min, hkl_max = hkl.min(axis=0), hkl.max(axis=0)
    shape = tuple(int(n) for n in hkl_max - hkl_min + 1)
    if math.prod(shape) > MAX_GRID_CELLS:
        raise DatasetError(f"{source}: indices {tuple(hkl_min)}…{tuple(hkl_max)} span {math.prod(shape):.3g} "
                           f"grid cells, over the {MAX_GRID_CELLS:.0e} limit")
    grid = np.full(shape, default_F if fill is None else fill, dtype=np.float32)
    flat = np.ravel_multi_index(tuple((hkl - hkl_min).T), shape)
    _, first_from_end = np.unique(flat[::-1], return_index=True)  # a repeated index: the last line wins
    last = len(flat) - 1 - first_from_end
    grid.reshape(-1)[flat[last]] = np.asarray(values)[last]
    return StructureFactors(grid, tuple(int(v) for v in hkl_min), default_F, source)  # type: ignore[arg-type]


def _reciprocal_metric(cell: gemmi.UnitCell) -> np.ndarray:
    """G* (3×3, Å⁻²) with 1/d² = hᵀ·G*·h; from gemmi's fractionalisation matrix M: G* = M·Mᵀ."""
    m = np.array(cell.frac.mat.tolist())
    return m @ m.T


def _one_over_d2(metric: np.ndarray, h: Any, k: Any, l: Any) -> np.ndarray:
    """1/d² (Å⁻²) of broadcast Miller indices."""
    h, k, l = (np.asarray(x, dtype=np.float64) for x in (h, k, l))
    g = metric
    return (g[0, 0] * h * h + g[1, 1] * k * k + g[2, 2] * l * l
            + 2 * (g[0, 1] * h * k + g[0, 2] * h * l + g[1, 2] * k * l))


def _as_index(x: Any) -> np.ndarray:
    """Integer Miller indices as int64; floats rounded as nanoBragg does, ceil(x − ½)."""
    arr = np.asarray(x)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "f":
        return np.ceil(arr - 0.5).astype(np.int64)
    raise ConfigError(f"Miller indices of dtype {arr.dtype}: expected integers (or floats to round)")


def _existing_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file (expected a {what})")
    return path

