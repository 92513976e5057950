"""Unmerged reflection tables: read any supported file into one in-memory table, or simulate one.

The table is a reciprocalspaceship ``DataSet`` (with ``cell`` and ``spacegroup``) holding one row
per observation and these columns; readers map their formats onto them:

=============  ===========================================================================
H, K, L        Miller index reduced to gemmi's reciprocal ASU (int)
M/ISYM         MTZ symmetry code of the observed index: odd for I(+), even for I(−)
BATCH          image (batch) number as in the file (CrystFEL streams: the crystal, from 1)
IMAGE          image number 0 … n − 1 over every file read together
I, SIGI        integrated intensity and its standard error (photons)
DHKL           resolution, Å
XDET, YDET     detector position, pixels (0 when the file has none)
WAVELENGTH     Å
F_TRUE         true |F| of the observed index (simulated data only)
=============  ===========================================================================

Other numeric columns of the file (ROT, BG, LP, …) are kept as they are. Observations with a
non-finite intensity or σ ≤ 0 are dropped.

Formats: unmerged MTZ (gemmi; ``M/ISYM`` or original indices), the variational integrator's
HDF5 output (a ``reflections`` group of 1-D datasets named as the columns above, with ``cell``
and ``space_group`` attributes), and CrystFEL streams (the space group must be given).

:class:`ReflectionSimulator` makes serial data from a structure: gemmi computes F (and, with an
anomalous scatterer, F(+) ≠ F(−) from f''), each image has a random orientation, which decides the
reflections near the Ewald sphere and where they land on a flat detector, a random scale and
B factor, and Poisson plus Gaussian noise. Lab frame as in xrais.geometry (dxtbx): the beam
travels along −z and the detector plane is z = −distance.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import gemmi
import numpy as np
import pandas as pd
import reciprocalspaceship as rs
from pydantic import BaseModel, ConfigDict, Field

from xrais.errors import ConfigError, DatasetError
from xrais.models.variational.wilson import make_mtz_batch, make_space_group, reduce_to_asu_array

__all__ = [
    "STANDARD_COLUMNS",
    "ReflectionSimulationConfig",
    "ReflectionSimulator",
    "make_reflection_table",
    "frame_to_table",
    "read_reflections",
    "read_unmerged_mtz",
    "read_integrated_hdf5",
    "read_crystfel_stream",
    "write_unmerged_mtz",
]

STANDARD_COLUMNS = ("H", "K", "L", "M/ISYM", "BATCH", "IMAGE", "I", "SIGI", "DHKL", "XDET", "YDET", "WAVELENGTH")

_MTZ_TYPES = {"H": "H", "K": "H", "L": "H", "M/ISYM": "Y", "BATCH": "B", "I": "J", "SIGI": "Q"}


def make_reflection_table(hkl: Any, batch: Any, intensity: Any, sigma: Any, *, cell: Any, space_group: Any,
                          metadata: dict[str, Any] | None = None, wavelength_A: float | Any = 1.0,
                          source: str = "reflections") -> rs.DataSet:
    """Build the standard table from arrays of observations.

    Parameters
    ----------
    hkl : array-like, shape (n, 3), int — observed Miller indices (any setting; reduced here).
    batch : array-like, shape (n,), int — image number of each observation.
    intensity, sigma : array-like, shape (n,) — photons.
    cell : gemmi.UnitCell or 6 floats (Å, degrees); space_group : symbol, number or gemmi.SpaceGroup.
    metadata : dict of name → array (n,), optional — extra columns (XDET, YDET, F_TRUE, …).
    wavelength_A : float or array (n,)
    source : str — name used in error messages.

    Returns
    -------
    reciprocalspaceship.DataSet with the columns in the module docstring.

    Raises
    ------
    DatasetError
        Arrays of different lengths, or no usable observation.
    """
    uc = cell if isinstance(cell, gemmi.UnitCell) else gemmi.UnitCell(*[float(v) for v in cell])
    sg = make_space_group(space_group)
    hkl = np.asarray(hkl, dtype=np.int32).reshape(-1, 3)
    n = len(hkl)
    columns = {"batch": batch, "intensity": intensity, "sigma": sigma, **(metadata or {})}
    for name, values in columns.items():
        if np.ndim(values) != 1 or len(values) != n:
            raise DatasetError(f"{source}: column {name!r} has {np.shape(values)} values, expected ({n},)")
    hkl_asu, isym = reduce_to_asu_array(hkl, sg)
    frame = pd.DataFrame({"H": hkl_asu[:, 0], "K": hkl_asu[:, 1], "L": hkl_asu[:, 2], "M/ISYM": isym,
                          "BATCH": np.asarray(batch, dtype=np.int64)})
    frame["I"] = np.asarray(intensity, dtype=np.float64)
    frame["SIGI"] = np.asarray(sigma, dtype=np.float64)
    frame["DHKL"] = np.asarray(uc.calculate_d_array(hkl_asu), dtype=np.float64)
    for name, values in (metadata or {}).items():
        frame[name] = np.asarray(values)
    for name in ("XDET", "YDET"):
        if name not in frame:
            frame[name] = 0.0
    frame["WAVELENGTH"] = np.broadcast_to(np.asarray(wavelength_A, dtype=np.float64), (n,)).copy()
    keep = np.isfinite(frame["I"].to_numpy()) & np.isfinite(frame["SIGI"].to_numpy()) & (frame["SIGI"].to_numpy() > 0)
    keep &= ~np.asarray(sg.operations().systematic_absences(hkl_asu), dtype=bool)
    frame = frame[keep].reset_index(drop=True)
    if len(frame) == 0:
        raise DatasetError(f"{source}: no observation with a finite intensity and σ > 0")
    frame["IMAGE"] = pd.factorize(frame["BATCH"], sort=True)[0].astype(np.int64)
    return rs.DataSet(frame, cell=uc, spacegroup=sg, merged=False)


def _concat(tables: Sequence[rs.DataSet]) -> rs.DataSet:
    if len(tables) == 1:
        return tables[0]
    first = tables[0]
    parts, offset = [], 0
    for t in tables:
        if t.spacegroup.hm != first.spacegroup.hm:
            raise DatasetError(f"space groups differ between inputs: {first.spacegroup.hm} and {t.spacegroup.hm}")
        part = pd.DataFrame(t).copy()
        part["IMAGE"] = part["IMAGE"] + offset
        offset = int(part["IMAGE"].max()) + 1
        parts.append(part)
    frame = pd.concat(parts, ignore_index=True)
    return rs.DataSet(frame, cell=first.cell, spacegroup=first.spacegroup, merged=False)


def read_reflections(paths: str | Path | Iterable[str | Path], *, space_group: Any = None, cell: Any = None,
                     d_min_A: float | None = None, intensity_column: str | None = None,
                     sigma_column: str | None = None) -> rs.DataSet:
    """Read one or more unmerged reflection files into one table (formats chosen by content/suffix).

    Parameters
    ----------
    paths : path or paths — ``.mtz``, ``.h5``/``.hdf5`` (integrator output) or ``.stream`` (CrystFEL).
    space_group, cell : optional — override the file's (a CrystFEL stream needs ``space_group``).
    d_min_A : float, optional — drop observations beyond this resolution.
    intensity_column, sigma_column : str, optional — MTZ columns to use (default ``I``/``SIGI``,
        else the first J/Q columns).

    Raises
    ------
    DatasetError
        A missing or unreadable file, a merged MTZ, or columns that are not there.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    tables = []
    for p in map(Path, paths):
        if not p.exists():
            raise DatasetError(f"{p}: no such reflection file")
        suffix = p.suffix.lower()
        if suffix == ".mtz":
            t = read_unmerged_mtz(p, intensity_column=intensity_column, sigma_column=sigma_column,
                                  space_group=space_group, cell=cell)
        elif suffix in (".h5", ".hdf5", ".nxs"):
            t = read_integrated_hdf5(p, space_group=space_group, cell=cell)
        elif suffix == ".stream":
            t = read_crystfel_stream(p, space_group=space_group, cell=cell)
        else:
            raise DatasetError(f"{p}: unknown reflection format (expected .mtz, .h5/.hdf5 or .stream)")
        tables.append(t)
    table = _concat(tables)
    if d_min_A is not None:
        table = table[table["DHKL"].to_numpy() >= d_min_A].reset_index(drop=True)
        table = rs.DataSet(table, cell=tables[0].cell, spacegroup=tables[0].spacegroup, merged=False)
    if len(table) == 0:
        raise DatasetError(f"{', '.join(map(str, paths))}: no observation left at d ≥ {d_min_A} Å")
    return table


def read_unmerged_mtz(path: str | Path, *, intensity_column: str | None = None, sigma_column: str | None = None,
                      space_group: Any = None, cell: Any = None) -> rs.DataSet:
    """Read an unmerged MTZ (DIALS, XDS via pointless, careless/abismal inputs, our own) with gemmi."""
    path = Path(path)
    try:
        mtz = gemmi.read_mtz_file(str(path))
    except (RuntimeError, OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable MTZ file ({exc})") from exc
    labels = [c.label for c in mtz.columns]
    types = {c.label: c.type for c in mtz.columns}
    if "BATCH" not in labels and not any(t == "B" for t in types.values()):
        raise DatasetError(f"{path}: a merged MTZ (no BATCH column); expected unmerged observations")
    batch_label = "BATCH" if "BATCH" in labels else next(lab for lab, t in types.items() if t == "B")

    def pick(wanted: str | None, default: str, mtz_type: str) -> str:
        if wanted is not None:
            if wanted not in labels:
                raise DatasetError(f"{path}: no column {wanted!r}; columns are {', '.join(labels)}")
            return wanted
        if default in labels:
            return default
        for lab, t in types.items():
            if t == mtz_type:
                return lab
        raise DatasetError(f"{path}: no intensity column of MTZ type {mtz_type!r}; columns are {', '.join(labels)}")

    i_label = pick(intensity_column, "I", "J")
    s_label = pick(sigma_column, "SIG" + i_label if "SIG" + i_label in labels else "SIGI", "Q")
    data = np.array(mtz, copy=True)
    col = {lab: data[:, k] for k, lab in enumerate(labels)}
    hkl = np.stack([col["H"], col["K"], col["L"]], axis=1).astype(np.int32)
    if "M/ISYM" in col:
        hkl = _original_hkl(hkl, col["M/ISYM"].astype(np.int32), mtz.spacegroup)
    wavelength = float(mtz.datasets[-1].wavelength) if len(mtz.datasets) else 0.0
    if "WAVELENGTH" in col:
        wavelength = col["WAVELENGTH"]
    elif len(mtz.batches):
        lookup = {b.number: b.wavelength for b in mtz.batches}
        wavelength = np.array([lookup.get(int(b), wavelength) for b in col[batch_label]])
    skip = {"H", "K", "L", "M/ISYM", batch_label, i_label, s_label, "WAVELENGTH"}
    metadata = {lab: col[lab].astype(np.float64) for lab in labels if lab not in skip}
    if not np.all(np.asarray(wavelength) > 0):
        wavelength = np.where(np.asarray(wavelength) > 0, wavelength, 1.0)
    return make_reflection_table(hkl, col[batch_label].astype(np.int64), col[i_label], col[s_label],
                                 cell=cell if cell is not None else mtz.cell,
                                 space_group=space_group if space_group is not None else mtz.spacegroup,
                                 metadata=metadata, wavelength_A=wavelength, source=str(path))


def _original_hkl(hkl_asu: np.ndarray, isym: np.ndarray, sg: gemmi.SpaceGroup) -> np.ndarray:
    """Undo M/ISYM: the observed index from its ASU index (odd ISYM: op·h; even: −op·h)."""
    ops = list(sg.operations().sym_ops)
    out = np.empty_like(hkl_asu)
    isym = isym % 256                       # the M (partial) flag sits in the high digits
    for code in np.unique(isym):
        sel = isym == code
        if code <= 0:
            out[sel] = hkl_asu[sel]
            continue
        op = ops[(int(code) - 1) // 2]
        rot = np.asarray(op.rot, dtype=np.int64) // op.DEN
        # gemmi applies op to hkl as h' = h·R; the ASU index is h_asu = ±h_obs·R, so h_obs = ±h_asu·R⁻¹.
        inv = np.rint(np.linalg.inv(rot)).astype(np.int64)
        mapped = hkl_asu[sel].astype(np.int64) @ inv
        out[sel] = mapped if code % 2 == 1 else -mapped
    return out


def read_integrated_hdf5(path: str | Path, *, space_group: Any = None, cell: Any = None) -> rs.DataSet:
    """Read the variational integrator's HDF5 output: group ``reflections`` of 1-D datasets
    (H, K, L or M/ISYM-reduced indices, BATCH, I, SIGI, XDET, YDET, …) with ``cell`` (6 floats)
    and ``space_group`` attributes on the group or the file."""
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            group = f["reflections"] if "reflections" in f else f
            attrs = {**dict(f.attrs), **dict(group.attrs)}
            columns = {name: np.asarray(group[name]) for name in group if isinstance(group[name], h5py.Dataset)}
    except (OSError, KeyError) as exc:
        raise DatasetError(f"{path}: not a readable reflection HDF5 file ({exc})") from exc
    missing = [c for c in ("H", "K", "L", "I", "SIGI") if c not in columns]
    if missing:
        raise DatasetError(f"{path}: reflection datasets {missing} missing; found {sorted(columns)}")
    cell = cell if cell is not None else attrs.get("cell")
    space_group = space_group if space_group is not None else attrs.get("space_group")
    if cell is None or space_group is None:
        raise DatasetError(f"{path}: no 'cell'/'space_group' attributes; give them explicitly")
    if isinstance(space_group, bytes):
        space_group = space_group.decode()
    hkl = np.stack([columns.pop("H"), columns.pop("K"), columns.pop("L")], axis=1).astype(np.int32)
    if "M/ISYM" in columns:
        hkl = _original_hkl(hkl, columns.pop("M/ISYM").astype(np.int32), make_space_group(space_group))
    batch = columns.pop("BATCH", columns.pop("IMAGE", np.zeros(len(hkl), dtype=np.int64)))
    columns.pop("IMAGE", None)
    intensity, sigma = columns.pop("I"), columns.pop("SIGI")
    wavelength = columns.pop("WAVELENGTH", attrs.get("wavelength_A", 1.0))
    metadata = {k: v for k, v in columns.items() if v.ndim == 1 and len(v) == len(hkl) and k != "DHKL"}
    return make_reflection_table(hkl, batch, intensity, sigma, cell=cell, space_group=space_group,
                                 metadata=metadata, wavelength_A=wavelength, source=str(path))


def read_crystfel_stream(path: str | Path, *, space_group: Any, cell: Any = None) -> rs.DataSet:
    """Read the indexed reflections of a CrystFEL stream: one image (BATCH) per crystal.

    Reads ``photon_energy_eV`` of each chunk, ``Cell parameters`` (nm, degrees) of each crystal
    and its ``Reflections measured after indexing`` table (h k l I sigma(I) peak background
    fs/px ss/px panel). Every crystal is its own image, so each lattice of a multi-lattice
    hit gets its own scale: BATCH numbers the crystals from 1 in file order (as ``xrais
    integrate`` numbers images), CHUNK is the 0-based chunk (detector event) it came from and
    CRYSTAL its 0-based number within that chunk. The cell is the mean of the crystals' cells
    unless given; the space group must be given (streams do not record it).

    Raises
    ------
    DatasetError
        No space group, an unreadable file, a malformed line, or no indexed reflection.
    """
    path = Path(path)
    if space_group is None:
        raise DatasetError(f"{path}: a CrystFEL stream does not record the space group; give one")
    rows: list[list[float]] = []
    cells: list[list[float]] = []
    wavelength = 1.0
    chunk = -1
    crystal = 0                 # crystals read so far (BATCH of the current one)
    in_chunk = 0                # crystals of the current chunk
    in_table = False
    try:
        text = path.open("r", errors="replace")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot open ({exc})") from exc
    with text:
        for number, line in enumerate(text, start=1):
            try:
                if line.startswith("----- Begin chunk"):
                    chunk += 1
                    in_chunk = 0
                elif line.startswith("photon_energy_eV"):
                    energy = float(line.split("=")[1].split()[0])
                    wavelength = gemmi.hc / energy if energy > 0 else wavelength
                elif line.startswith("Cell parameters"):
                    parts = line.split()
                    cells.append([10 * float(v) for v in parts[2:5]] + [float(v) for v in parts[6:9]])
                elif line.startswith("Reflections measured after indexing"):
                    in_table = True
                    crystal += 1
                    in_chunk += 1
                elif line.startswith("End of reflections"):
                    in_table = False
                elif in_table:
                    parts = line.split()
                    if len(parts) >= 9 and parts[0].lstrip("-").isdigit():
                        rows.append([float(v) for v in parts[:9]]
                                    + [crystal, wavelength, max(chunk, 0), in_chunk - 1])
            except (ValueError, IndexError):
                raise DatasetError(f"{path}: line {number}: cannot read {line.strip()[:60]!r}") from None
    if not rows:
        raise DatasetError(f"{path}: no indexed reflections found in the stream")
    if cell is None and not cells:
        raise DatasetError(f"{path}: no 'Cell parameters' line in the stream; give the cell")
    arr = np.asarray(rows)
    cell = cell if cell is not None else np.mean(np.asarray(cells), axis=0)
    return make_reflection_table(arr[:, :3].astype(np.int32), arr[:, 9].astype(np.int64), arr[:, 3], arr[:, 4],
                                 cell=cell, space_group=space_group,
                                 metadata={"XDET": arr[:, 7], "YDET": arr[:, 8], "BG": arr[:, 6],
                                           "CHUNK": arr[:, 11].astype(np.int64),
                                           "CRYSTAL": arr[:, 12].astype(np.int64)},
                                 wavelength_A=arr[:, 10], source=str(path))


def write_unmerged_mtz(table: rs.DataSet, path: str | Path, *, columns: Sequence[str] | None = None) -> Path:
    """Write the table as an unmerged MTZ (ASU indices with M/ISYM, one batch header per image).

    Parameters
    ----------
    table : the standard table.
    path : output file (written to a temporary name and renamed).
    columns : extra numeric columns to write (default: XDET, YDET, WAVELENGTH and F_TRUE when present).
    """
    import os

    path = Path(path)
    extra = list(columns) if columns is not None else [c for c in ("XDET", "YDET", "WAVELENGTH", "F_TRUE")
                                                        if c in table.columns]
    mtz = gemmi.Mtz(with_base=True)
    mtz.spacegroup = table.spacegroup
    mtz.set_cell_for_all(table.cell)
    wavelength = float(np.median(table["WAVELENGTH"])) if "WAVELENGTH" in table else 1.0
    mtz.datasets[0].wavelength = wavelength
    mtz.add_dataset("xrais").wavelength = wavelength
    labels = ["M/ISYM", "BATCH", "I", "SIGI", *extra]
    for label in labels:
        mtz.add_column(label, _MTZ_TYPES.get(label, "R"))
    batch = table["BATCH"].to_numpy()
    data = np.column_stack([table["H"], table["K"], table["L"]] + [table[c].to_numpy(np.float64) for c in labels])
    mtz.set_data(data.astype(np.float32))
    for number in np.unique(batch):
        mtz.batches.append(make_mtz_batch(int(number), table.cell, wavelength, dataset_id=1))
    mtz.history = ["xrais unmerged reflections"]
    tmp = path.with_name(path.name + ".part")
    mtz.write_to_file(str(tmp))
    os.replace(tmp, path)
    return path


# --- simulated serial data ----------------------------------------------------------------------

class ReflectionSimulationConfig(BaseModel):
    """Serial still images of one structure, reduced to integrated reflections."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    structure_path: str = Field(description="PDB or mmCIF model the structure factors come from")
    d_min_A: float = Field(3.0, gt=0.5, description="high-resolution limit")
    n_images: int = Field(300, ge=1, description="number of still images")
    wavelength_A: float = Field(1.0, gt=0, description="X-ray wavelength")
    distance_mm: float = Field(150.0, gt=0, description="sample-to-detector distance")
    pixel_size_mm: float = Field(0.172, gt=0, description="detector pixel size")
    detector_size_px: int = Field(2048, gt=0, description="square detector side, pixels")
    excitation_tolerance_per_A: float = Field(0.0018, gt=0, description="largest distance of a recorded "
                                                                          "reciprocal-lattice point from the Ewald sphere, Å⁻¹")
    mean_intensity_photons: float = Field(300.0, gt=0, description="mean intensity of a reflection on a scale-1 image")
    scale_log_sd: float = Field(0.4, ge=0, description="SD of log per-image scale")
    b_factor_sd_A2: float = Field(4.0, ge=0, description="SD of the per-image relative B factor")
    absorption: float = Field(0.2, ge=0, lt=1, description="fractional loss at the detector corner (x, y dependence)")
    background_photons: float = Field(20.0, ge=0, description="background photons under a reflection")
    read_noise_photons: float = Field(2.0, ge=0, description="Gaussian noise per reflection")
    anomalous_element: str = Field("S", description="element whose f'' makes F(+) ≠ F(−)")
    fdoubleprime: float | None = Field(None, ge=0, description="f'' of that element, electrons (None: Cromer–Liberman "
                                                               "at the wavelength; 0: no anomalous signal)")
    seed: int = Field(0, ge=0, description="seed; image i uses (seed, i)")


class ReflectionSimulator:
    """Integrated reflections of simulated still images, one image at a time.

    ``image(i)`` returns image i's observations (a DataFrame of H K L as observed, BATCH = i + 1,
    I, SIGI, XDET, YDET, WAVELENGTH, EWALD_OFFSET, F_TRUE); ``table(images)`` the standard table of
    several; ``truth()`` the true F, F(+), F(−) of every ASU reflection.
    """

    def __init__(self, config: ReflectionSimulationConfig) -> None:
        self.config = config
        path = Path(config.structure_path)
        if not path.exists():
            raise ConfigError(f"{path}: structure file not found")
        st = gemmi.read_structure(str(path))
        st.setup_entities()
        st.remove_hydrogens()
        self.cell = st.cell
        self.space_group = make_space_group(st.spacegroup_hm)
        ops = self.space_group.operations()
        hkl = np.asarray(gemmi.make_miller_array(self.cell, self.space_group, config.d_min_A), dtype=np.int32)
        hkl = hkl[~np.asarray(ops.systematic_absences(hkl), dtype=bool)]
        self.hkl_asu = hkl
        f_plus, f_minus = _structure_amplitudes(st, hkl, config)
        self.f_plus, self.f_minus = f_plus, f_minus
        # every index of P1 (both Friedel mates) within d_min, and its ASU row and sign
        p1 = _full_sphere(self.cell, config.d_min_A)
        p1 = p1[~np.asarray(ops.systematic_absences(p1), dtype=bool)]
        asu, isym = reduce_to_asu_array(p1, self.space_group)
        lookup = {tuple(h): k for k, h in enumerate(hkl.tolist())}
        self._p1 = p1
        self._p1_row = np.array([lookup[tuple(h)] for h in asu.tolist()], dtype=np.int64)
        self._p1_plus = (isym % 2) == 1
        self._p1_F = np.where(self._p1_plus, f_plus[self._p1_row], f_minus[self._p1_row])
        self._B = np.asarray(self.cell.frac.mat, dtype=np.float64).T      # q = B·h, Å⁻¹
        self._q = p1.astype(np.float64) @ self._B.T
        self._k0 = config.mean_intensity_photons / float(np.mean(self._p1_F ** 2))

    def truth(self) -> pd.DataFrame:
        """True amplitudes of every ASU reflection: H K L, F (= √(mean of F(+)², F(−)²)), F(+), F(−), DHKL."""
        f = np.sqrt(0.5 * (self.f_plus ** 2 + self.f_minus ** 2))
        return pd.DataFrame({"H": self.hkl_asu[:, 0], "K": self.hkl_asu[:, 1], "L": self.hkl_asu[:, 2],
                             "F": f, "F(+)": self.f_plus, "F(-)": self.f_minus,
                             "DHKL": np.asarray(self.cell.calculate_d_array(self.hkl_asu))})

    def image(self, index: int) -> pd.DataFrame:
        """Observations on image ``index`` (deterministic in (seed, index))."""
        c = self.config
        rng = np.random.default_rng([c.seed, int(index)])
        U = _random_rotation(rng)
        q = self._q @ U.T
        k = 1.0 / c.wavelength_A
        s1 = q + np.array([0.0, 0.0, -k])
        offset = np.linalg.norm(s1, axis=1) - k
        sel = (np.abs(offset) < c.excitation_tolerance_per_A) & (s1[:, 2] < 0)
        s1, offset = s1[sel], offset[sel]
        t = -c.distance_mm / s1[:, 2]
        x_mm, y_mm = t * s1[:, 0], t * s1[:, 1]
        half = 0.5 * c.detector_size_px * c.pixel_size_mm
        on = (np.abs(x_mm) < half) & (np.abs(y_mm) < half)
        idx = np.flatnonzero(sel)[on]
        x_mm, y_mm, offset = x_mm[on], y_mm[on], offset[on]
        s2 = np.sum(self._q[idx] ** 2, axis=1)
        scale = self._k0 * math.exp(rng.normal(0.0, c.scale_log_sd)) if c.scale_log_sd > 0 else self._k0
        b_rel = rng.normal(0.0, c.b_factor_sd_A2)
        r2 = (x_mm ** 2 + y_mm ** 2) / (2 * half * half)
        F = self._p1_F[idx]
        i_true = scale * F ** 2 * np.exp(-0.5 * b_rel * s2) * (1.0 - c.absorption * r2)
        bg = c.background_photons
        counts = rng.poisson(i_true + bg).astype(np.float64)
        i_obs = counts - bg + rng.normal(0.0, c.read_noise_photons, size=counts.shape) if c.read_noise_photons > 0 \
            else counts - bg
        sig = np.sqrt(np.maximum(counts, 1.0) + c.read_noise_photons ** 2)
        h = self._p1[idx]
        return pd.DataFrame({
            "H": h[:, 0], "K": h[:, 1], "L": h[:, 2], "BATCH": np.full(len(idx), index + 1, dtype=np.int64),
            "I": i_obs, "SIGI": sig,
            "XDET": x_mm / c.pixel_size_mm + 0.5 * c.detector_size_px,
            "YDET": y_mm / c.pixel_size_mm + 0.5 * c.detector_size_px,
            "WAVELENGTH": np.full(len(idx), c.wavelength_A), "EWALD_OFFSET": offset, "F_TRUE": F,
        })

    def table(self, images: Iterable[int] | None = None) -> rs.DataSet:
        """The standard table of several images (all of them by default)."""
        images = range(self.config.n_images) if images is None else images
        frame = pd.concat([self.image(i) for i in images], ignore_index=True)
        return frame_to_table(frame, self.cell, self.space_group)


def frame_to_table(frame: pd.DataFrame, cell: gemmi.UnitCell, space_group: gemmi.SpaceGroup) -> rs.DataSet:
    """The standard table from a DataFrame of observed H K L, BATCH, I, SIGI and metadata columns."""
    meta = {c: frame[c].to_numpy() for c in frame.columns if c not in ("H", "K", "L", "BATCH", "I", "SIGI",
                                                                       "WAVELENGTH")}
    wavelength = frame["WAVELENGTH"].to_numpy() if "WAVELENGTH" in frame else 1.0
    return make_reflection_table(frame[["H", "K", "L"]].to_numpy(), frame["BATCH"].to_numpy(),
                                 frame["I"].to_numpy(), frame["SIGI"].to_numpy(), cell=cell,
                                 space_group=space_group, metadata=meta, wavelength_A=wavelength)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix uniform over SO(3) (from a uniform unit quaternion)."""
    w, x, y, z = rng.normal(size=4)
    n = math.sqrt(w * w + x * x + y * y + z * z)
    w, x, y, z = w / n, x / n, y / n, z / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def _full_sphere(cell: gemmi.UnitCell, d_min_A: float) -> np.ndarray:
    """Every Miller index except 0 0 0 with d ≥ d_min (both Friedel mates)."""
    hmax = [int(math.ceil(p / d_min_A)) for p in (cell.a, cell.b, cell.c)]
    grids = np.meshgrid(*[np.arange(-m, m + 1) for m in hmax], indexing="ij")
    hkl = np.stack([g.ravel() for g in grids], axis=1).astype(np.int32)
    hkl = hkl[np.any(hkl != 0, axis=1)]
    d = np.asarray(cell.calculate_d_array(hkl))
    return hkl[d >= d_min_A]


def _structure_amplitudes(st: gemmi.Structure, hkl: np.ndarray,
                          config: ReflectionSimulationConfig) -> tuple[np.ndarray, np.ndarray]:
    """|F(+)| and |F(−)| of ASU indices: gemmi's F of the model (f₀ + f') plus i·f''·G, where G is the
    phase-and-Debye–Waller sum over the anomalous atoms."""
    dc = gemmi.DensityCalculatorX()
    dc.d_min = config.d_min_A
    dc.grid.setup_from(st)
    dc.put_model_density_on_grid(st[0])
    grid = gemmi.transform_map_to_f_phi(dc.grid)
    asu = grid.prepare_asu_data(dmin=config.d_min_A * 0.999, unblur=dc.blur)
    table = {tuple(h): v for h, v in zip(np.asarray(asu.miller_array).tolist(), np.asarray(asu.value_array))}
    A = np.array([table.get(tuple(h), 0j) for h in hkl.tolist()], dtype=np.complex128)
    missing = [tuple(h) for h in hkl.tolist() if tuple(h) not in table]
    if missing:
        calc = gemmi.StructureFactorCalculatorX(st.cell)
        for k, h in enumerate(hkl.tolist()):
            if tuple(h) in table:
                continue
            A[k] = calc.calculate_sf_from_model(st[0], h)
    element = gemmi.Element(config.anomalous_element)
    fpp = config.fdoubleprime
    if fpp is None:
        fpp = gemmi.cromer_liberman(z=element.atomic_number, energy=gemmi.hc / config.wavelength_A)[1]
    if fpp == 0:
        return np.abs(A), np.abs(A)
    anomalous = gemmi.Structure()
    anomalous.cell, anomalous.spacegroup_hm = st.cell, st.spacegroup_hm
    model = gemmi.Model("1")
    chain = gemmi.Chain("A")
    for cra in st[0].all():
        if cra.atom.element == element:
            res = gemmi.Residue()
            res.name, res.seqid = "ANO", gemmi.SeqId(len(chain) + 1, " ")
            res.add_atom(cra.atom)
            chain.add_residue(res)
    model.add_chain(chain)
    anomalous.add_model(model)
    anomalous.setup_cell_images()
    calc = gemmi.StructureFactorCalculatorX(st.cell)
    G = np.empty(len(hkl), dtype=np.complex128)
    for k, h in enumerate(hkl.tolist()):
        stol2 = 0.25 * st.cell.calculate_1_d2(h)
        G[k] = calc.calculate_sf_from_model(anomalous[0], h) / element.it92.calculate_sf(stol2)
    return np.abs(A + 1j * fpp * G), np.abs(A - 1j * fpp * G)
