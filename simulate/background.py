"""Amorphous (non-Bragg) background images from radial scattering curves F(sin θ/λ).

A sample environment of flat layers (air path, water or buffer, a parasitic scatterer such as
glycerol, tape or ice) scatters diffusely. Each layer of a material holds
n = t · a² · ρ · N_A / M scattering units in the beam (a slab of thickness t with the beam's
square cross-section of side a; density ρ, molar mass M of one unit), and adds to a pixel

    photons = r_e² · fluence · n · F(stol)² · Ω · P

at the pixel centre, where stol = sin θ / λ (Å⁻¹), F the scattering factor of one unit
(electrons), Ω = p_f·p_s/R² · (close distance)/R the pixel's solid angle and
P = ½(1 + cos²2θ − K·cos 2ψ·sin²2θ) the polarization factor with Kahn factor K = 2f − 1,
both by the formulas of :func:`xrais.simulate.pixel_maps.pixel_omega_polar_stol`. This is
nanoBragg's water term scaled physically (linear in the fluence, not divided by a step count).

Curves (``simulate/data``, see its README):

* ``water``, ``air`` — the nanoBragg tables, electrons per molecule, as shipped.
* ``ice`` (hexagonal ice, powder rings as sticks on a 0.002 Å⁻¹ grid) and ``nanoice``
  (broadened rings) — the nanoBragg tables are on arbitrary scales (their ∫F²s²ds over
  0–0.5 Å⁻¹ are 17× and 1/1100× water's), so F is rescaled so that this integral equals
  water's: the same molecules scatter the same total, redistributed into rings.
  The abscissa of ``nanoice.stol`` is 4·sin θ/λ (its peaks at 0.545, 0.889, 1.039, 1.373
  are the cubic-ice rings d = 3.67, 2.25, 1.92, 1.46 Å only so), so it is divided by 4.
  Ice rings are therefore added as a ``BackgroundLayer("ice", t)`` (or ``"nanoice"``);
  :func:`ice_ring_d_spacings_A` gives the ring positions for labels and masks.
* ``glycerol``, ``sucrose``, ``peg``, ``paper``, ``kapton`` — independent-atom curves
  F = √(Σ_i f_i(stol)²) from IT92 coefficients (via gemmi): no Compton scattering, no
  molecular or liquid structure (a smooth halo, no ring). Regenerate their tables with
  ``python -m xrais.simulate.background``.

Curves are interpolated linearly and held at their end values outside the table.

Evaluation: :func:`background_image` tabulates Σ n·F(stol)² of all its layers once per call, exactly,
as one piecewise function on the union of the curves' breakpoints (each curve's own linear piece per
interval, so every F is the value ``np.interp`` gives), and then makes the image in one parallel Numba
pass over the panel rows that computes Ω·P and stol of each pixel centre (float64) and looks its stol
up in that table.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

import gemmi
import numba
import numpy as np

import xrais.numba_cache  # noqa: F401  (kernel caches follow every kernel source)
from xrais.errors import ConfigError, DatasetError
from xrais.geometry import Beam, Detector
from xrais.simulate.pixel_maps import beam_geometry, panel_row_maps, panel_rows
from xrais.simulate.render import R_E2_M2

__all__ = [
    "ScatteringCurve",
    "read_stol",
    "load_curve",
    "independent_atom_curve",
    "formula_mass_g_per_mol",
    "Material",
    "MATERIALS",
    "BackgroundLayer",
    "background_image",
    "ice_ring_d_spacings_A",
    "ICE_IH_CELL_A",
    "AVOGADRO",
]

#: Avogadro constant, mol⁻¹ (CODATA 2018, exact).
AVOGADRO = 6.02214076e23
#: Hexagonal ice Ih cell (a, c) in Å near 100 K (space group P 6₃/m m c).
ICE_IH_CELL_A = (4.497, 7.322)
_NORM_RANGE = (0.0, 0.5)  # stol range (Å⁻¹) common to water, ice and nanoice tables
_BUCKETS_PER_KNOT = 32  # lookup buckets per breakpoint of the intensity table (the walk rarely steps)


@dataclass(frozen=True, eq=False)
class ScatteringCurve:
    """A radial scattering curve: F (electrons per scattering unit) against stol = sin θ/λ.

    Parameters
    ----------
    stol_per_A : ndarray
        Non-decreasing sin θ/λ values, Å⁻¹, at least two, all ≥ 0.
    F : ndarray
        Scattering factor of one unit (electrons) at each stol; the intensity per unit is F².
    source : str
        Where the table comes from.

    Examples
    --------
    >>> c = ScatteringCurve(np.array([0.0, 0.5]), np.array([2.0, 4.0]), "example")
    >>> float(c(0.25)), float(c(1.0))  # linear inside, end value held outside
    (3.0, 4.0)
    """

    stol_per_A: np.ndarray
    F: np.ndarray
    source: str = ""

    def __post_init__(self) -> None:
        s = np.array(self.stol_per_A, dtype=np.float64).ravel()
        f = np.array(self.F, dtype=np.float64).ravel()
        where = f"scattering curve {self.source!r}" if self.source else "scattering curve"
        if s.size != f.size or s.size < 2:
            raise ConfigError(f"{where}: expected ≥ 2 (stol, F) pairs of equal length, got {s.size} and {f.size}")
        if not (np.all(np.isfinite(s)) and np.all(np.isfinite(f))):
            raise ConfigError(f"{where}: expected finite stol and F values")
        if s[0] < 0 or np.any(np.diff(s) < 0):
            raise ConfigError(f"{where}: expected non-decreasing stol ≥ 0 Å⁻¹")
        s.flags.writeable = f.flags.writeable = False
        object.__setattr__(self, "stol_per_A", s)
        object.__setattr__(self, "F", f)

    def __call__(self, stol: np.ndarray | float) -> np.ndarray:
        """F at ``stol`` (Å⁻¹): linear interpolation, the first/last F outside the table."""
        return np.interp(stol, self.stol_per_A, self.F)

    def scaled(self, *, stol_factor: float = 1.0, F_factor: float = 1.0, note: str = "") -> "ScatteringCurve":
        """The curve with its abscissa times ``stol_factor`` and F times ``F_factor``."""
        source = f"{self.source}; {note}" if note else self.source
        return ScatteringCurve(self.stol_per_A * stol_factor, self.F * F_factor, source)

    def mean_square_moment(self, lo: float = _NORM_RANGE[0], hi: float = _NORM_RANGE[1]) -> float:
        """∫ F(s)² s² ds over ``lo`` ≤ s ≤ ``hi`` (Å⁻¹), on a 10⁻⁵ Å⁻¹ grid (Å⁻³ e²)."""
        s = np.linspace(lo, hi, int(round((hi - lo) / 1e-5)) + 1)
        return float(np.trapezoid(self(s) ** 2 * s * s, s))


def read_stol(path: str | Path) -> ScatteringCurve:
    """Read a ``.stol`` table: lines ``stol F`` (Å⁻¹, electrons).

    Blank lines and lines starting with ``#`` are skipped; fields after the first two (such as
    the point-type column of ``nanoice.stol``) are ignored. The first comment line, if any,
    becomes part of :attr:`ScatteringCurve.source`.

    Raises
    ------
    DatasetError
        If the file is missing or unreadable, a line does not start with two numbers, or the
        table is not a valid curve; the message names the file (and line).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{p}: cannot read scattering curve ({exc})") from exc
    rows: list[tuple[float, float]] = []
    header = ""
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            header = header or stripped.lstrip("#").strip()
            continue
        fields = stripped.split()
        try:
            rows.append((float(fields[0]), float(fields[1])))
        except (IndexError, ValueError):
            raise DatasetError(f"{p}:{number}: expected 'stol F' (two numbers), got {stripped[:60]!r}") from None
    source = f"{p.name}: {header}" if header else p.name
    try:
        return ScatteringCurve(np.array([r[0] for r in rows]), np.array([r[1] for r in rows]), source)
    except ConfigError as exc:
        raise DatasetError(f"{p}: {exc}") from None


def _data_path(name: str) -> Path:
    return Path(str(resources.files("xrais.simulate").joinpath("data", name)))


@functools.cache
def load_curve(name: str) -> ScatteringCurve:
    """The packaged table ``simulate/data/<name>.stol`` as shipped (e.g. ``"water"``, ``"unity"``)."""
    path = _data_path(f"{name}.stol")
    if not path.is_file():
        known = sorted(p.name[:-5] for p in path.parent.glob("*.stol"))
        raise ConfigError(f"scattering curve {name!r}: no packaged table; known: {', '.join(known)}")
    return read_stol(path)


_FORMULA = re.compile(r"([A-Z][a-z]?)(\d*)")


def _parse_formula(formula: str) -> list[tuple[str, int]]:
    parts = _FORMULA.findall(formula)
    if not parts or "".join(e + n for e, n in parts) != formula:
        raise ConfigError(f"chemical formula {formula!r}: expected element symbols with counts, e.g. 'C3H8O3'")
    out = []
    for symbol, count in parts:
        if gemmi.Element(symbol).atomic_number == 0:
            raise ConfigError(f"chemical formula {formula!r}: unknown element {symbol!r}")
        out.append((symbol, int(count) if count else 1))
    return out


def formula_mass_g_per_mol(formula: str) -> float:
    """Molar mass (g/mol) of ``formula`` from gemmi's standard atomic weights."""
    return float(sum(n * gemmi.Element(e).weight for e, n in _parse_formula(formula)))


def independent_atom_curve(formula: str, stol_per_A: np.ndarray) -> np.ndarray:
    """F = √(Σ_i n_i f_i(stol)²) of one ``formula`` unit, electrons.

    Independent-atom approximation: atomic scattering factors f_i from the IT92 four-Gaussian
    coefficients (via gemmi, valid to stol = 2 Å⁻¹), no interference between atoms, no Compton
    scattering.
    """
    s2 = np.asarray(stol_per_A, dtype=np.float64) ** 2
    total = np.zeros_like(s2)
    for symbol, n in _parse_formula(formula):
        coef = gemmi.Element(symbol).it92
        f = coef.c + sum(a * np.exp(-b * s2) for a, b in zip(coef.a, coef.b))
        total += n * f * f
    return np.sqrt(total)


@dataclass(frozen=True)
class Material:
    """An amorphous scatterer.

    Parameters
    ----------
    name : str
        Key in :data:`MATERIALS`.
    curve : ScatteringCurve or callable
        The curve, or a function of no arguments that returns it (loaded on first use).
    molar_mass_g_per_mol : float
        Mass of one scattering unit, g/mol.
    density_g_per_cm3 : float
        Bulk density, g/cm³.
    unit : str
        What one scattering unit is ("H2O molecule").
    """

    name: str
    curve: ScatteringCurve | Callable[[], ScatteringCurve]
    molar_mass_g_per_mol: float
    density_g_per_cm3: float
    unit: str = ""

    def __post_init__(self) -> None:
        for key in ("molar_mass_g_per_mol", "density_g_per_cm3"):
            v = getattr(self, key)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ConfigError(f"material {self.name!r}: expected {key} > 0, got {v!r}")

    def scattering_curve(self) -> ScatteringCurve:
        """The material's :class:`ScatteringCurve`."""
        return self.curve if isinstance(self.curve, ScatteringCurve) else self.curve()

    @property
    def units_per_m3(self) -> float:
        """Scattering units per m³: ρ · N_A / M."""
        return self.density_g_per_cm3 * 1e6 * AVOGADRO / self.molar_mass_g_per_mol


@functools.cache
def _normalised_to_water(name: str, stol_factor: float) -> ScatteringCurve:
    raw = load_curve(name).scaled(stol_factor=stol_factor)
    k = math.sqrt(load_curve("water").mean_square_moment() / raw.mean_square_moment())
    return raw.scaled(F_factor=k, note=f"stol × {stol_factor:g}, F × {k:.5g} (∫F²s²ds over 0–0.5 Å⁻¹ as water)")


#: Independent-atom materials: formula of one unit, density (g/cm³), unit description.
_ATOMIC = {
    "glycerol": ("C3H8O3", 1.261, "C3H8O3 molecule"),
    "sucrose": ("C12H22O11", 1.587, "C12H22O11 molecule (solid density)"),
    "peg": ("C2H4O", 1.128, "C2H4O monomer of PEG 400 (end groups ignored)"),
    "paper": ("C6H10O5", 0.8, "C6H10O5 cellulose unit (sheet density, pores included)"),
    "kapton": ("C22H10N2O5", 1.42, "C22H10N2O5 polyimide repeat unit"),
}
_WATER_M = formula_mass_g_per_mol("H2O")

#: Known materials by name.
MATERIALS: dict[str, Material] = {
    "water": Material("water", functools.partial(load_curve, "water"), _WATER_M, 1.0, "H2O molecule"),
    "air": Material("air", functools.partial(load_curve, "air"), 28.96, 1.204e-3,
                    "air molecule (dry air, 20 °C, 101.325 kPa)"),
    "ice": Material("ice", functools.partial(_normalised_to_water, "ice", 1.0), _WATER_M, 0.93,
                    "H2O molecule (ice Ih near 100 K)"),
    "nanoice": Material("nanoice", functools.partial(_normalised_to_water, "nanoice", 0.25), _WATER_M, 0.93,
                        "H2O molecule (nanocrystalline ice)"),
    **{name: Material(name, functools.partial(load_curve, name), formula_mass_g_per_mol(formula), rho, unit)
       for name, (formula, rho, unit) in _ATOMIC.items()},
}


def _material(material: str | Material) -> Material:
    if isinstance(material, Material):
        return material
    if isinstance(material, str) and material in MATERIALS:
        return MATERIALS[material]
    raise ConfigError(f"unknown material {material!r}; known: {', '.join(sorted(MATERIALS))}")


@dataclass(frozen=True)
class BackgroundLayer:
    """A slab of ``material`` (a name in :data:`MATERIALS` or a :class:`Material`) crossed by the beam.

    ``thickness_um`` is the path length in µm (an air path of 100 mm is 100000 µm).
    """

    material: str | Material
    thickness_um: float

    def __post_init__(self) -> None:
        _material(self.material)
        t = self.thickness_um
        if not (isinstance(t, (int, float)) and math.isfinite(t) and t >= 0):
            raise ConfigError(f"background layer {self.material!r}: expected a thickness ≥ 0 µm, got {t!r}")


def _positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ConfigError(f"background_image: expected {name} {'≥ 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def background_image(
    beam: Beam,
    detector: Detector,
    layers: Sequence[BackgroundLayer] | BackgroundLayer,
    *,
    fluence_per_m2: float,
    beam_size_um: float,
    scale: float = 1.0,
    polarization: bool = True,
) -> np.ndarray:
    """Expected background photons per pixel from amorphous layers in the beam.

    Parameters
    ----------
    beam : Beam
        Wavelength, direction, polarization fraction f (Kahn factor 2f − 1) and normal.
    detector : Detector
        Panels in the lab frame; pixels of the data array that belong to no panel stay 0.
    layers : sequence of BackgroundLayer
        The scatterers; their contributions add.
    fluence_per_m2 : float
        Incident photons per m² of beam cross-section.
    beam_size_um : float
        Side of the square beam cross-section, µm (sets the illuminated volume).
    scale : float
        Overall factor (the sampled background scale).
    polarization : bool
        Apply the polarization factor (False: P = 1).

    Returns
    -------
    ndarray
        float32, shape ``detector.array_shape`` (n_slow, n_fast): photons per pixel.

    Notes
    -----
    Σ n·F(stol)² of the layers is tabulated exactly (not sampled on a grid) on the union of the
    curves' breakpoints, each curve keeping its own linear piece per interval, and kept for the
    last few layer mixes; one parallel Numba pass then computes Ω·P and stol of each pixel centre
    in float64 and evaluates the table there. Against the float64 formula the result differs by
    the float32 rounding of the output only.
    """
    if isinstance(layers, BackgroundLayer):
        layers = [layers]
    if not all(isinstance(layer, BackgroundLayer) for layer in layers):
        raise ConfigError("background_image: expected a sequence of BackgroundLayer")
    fluence = _positive("fluence_per_m2", fluence_per_m2)
    size_m = _positive("beam_size_um", beam_size_um) * 1e-6
    scale = _positive("scale", scale, allow_zero=True)
    out = np.zeros(detector.array_shape, dtype=np.float32)
    terms = [(m.scattering_curve(), layer.thickness_um * 1e-6 * size_m * size_m * m.units_per_m3)
             for layer in layers for m in [_material(layer.material)]]
    terms = [(c, n) for c, n in terms if n > 0]
    if not terms or scale == 0.0:
        return out
    table = _intensity_table(tuple(terms))
    panels, rows = panel_rows(detector)
    _background_kernel(out, panels, rows, beam_geometry(beam), bool(polarization), R_E2_M2 * fluence * scale, *table)
    return out


@functools.lru_cache(maxsize=8)
def _intensity_table(terms: tuple[tuple[ScatteringCurve, float], ...]) -> tuple:
    """Σ n·F(stol)² of ``terms`` as one exact piecewise table on the union of the curves' breakpoints.

    Kept for the last few ``terms`` (curves compare by identity): a training set has a handful of
    layer mixes.

    Segment j holds the stol with exactly j knots ≤ stol (segment 0 lies below the first knot, the
    last above the last knot). On each segment every curve is one linear piece of its own table (or
    held at an end value), stored as that piece's start stol, start F and slope, so that the kernel's
    F = slope·(stol − stol_start) + F_start is the very expression ``np.interp`` evaluates.

    Returns
    -------
    knots : ndarray, shape (n_knots + 1,)
        Sorted distinct breakpoints, Å⁻¹, then +inf (a sentinel for the search).
    coef : ndarray, shape (n_knots + 1, 3 · n_terms)
        Per segment and term: start stol (Å⁻¹), start F (electrons), slope (electrons·Å).
    n_units : ndarray, shape (n_terms,)
        Scattering units of each term.
    bucket_start : ndarray of int32
        For a uniform grid of buckets over [knots[0], last knot], the segment just below each
        bucket's lower edge, where the kernel's walk up starts (0–1 steps for most pixels).
    inv_bucket_width : float
        Buckets per Å⁻¹ (0 for a single knot).
    """
    knots = np.unique(np.concatenate([c.stol_per_A for c, _ in terms]))
    coef = np.zeros((knots.size + 1, len(terms), 3))
    for k, (curve, _) in enumerate(terms):
        xp, fp = curve.stol_per_A, curve.F
        piece = np.searchsorted(xp, knots, side="right") - 1  # piece of segment j + 1 (from knots[j] on)
        linear = (piece >= 0) & (piece < xp.size - 1)
        i = piece[linear]
        seg = coef[1:, k]
        seg[linear] = np.stack([xp[i], fp[i], (fp[i + 1] - fp[i]) / (xp[i + 1] - xp[i])], axis=1)
        seg[~linear, 1] = np.where(piece[~linear] < 0, fp[0], fp[-1])  # held end values, slope 0
        coef[0, k, 1] = fp[0]
    n_units = np.array([n for _, n in terms], dtype=np.float64)
    span = float(knots[-1] - knots[0])
    n_buckets = min(_BUCKETS_PER_KNOT * knots.size, 1 << 20) if span > 0 else 1
    width = span / n_buckets
    edges = knots[0] + np.arange(n_buckets) * width
    margin = 1e-9 * max(span, 1.0)  # the kernel's bucket of a stol may round up to the next one
    bucket_start = np.searchsorted(knots, edges - margin, side="right").astype(np.int32)
    bucket_start[0] = 1  # a stol ≥ knots[0] has at least one knot below it
    arrays = (np.append(knots, np.inf), coef.reshape(knots.size + 1, -1), n_units, bucket_start)
    for a in arrays:
        a.flags.writeable = False
    return (*arrays, n_buckets / span if span > 0 else 0.0)


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _background_kernel(out, panels, rows, beam, polarization, prefactor, knots, coef, n_units, bucket_start,
                       inv_bucket_width):
    """out[pixel] = prefactor · Ω·P · Σ n·F(stol)² at every panel pixel centre, one task per panel row.

    Per row, :func:`~xrais.simulate.pixel_maps.panel_row_maps` computes Ω·P and stol of the pixel
    centres, then a loop looks the stol up in the intensity table of :func:`_intensity_table`. (The lookup is written out: an
    array handed to a called function costs reference counting per call.)
    """
    n_terms = n_units.shape[0]
    k0, last_bucket = knots[0], bucket_start.shape[0] - 1
    for t in numba.prange(rows.shape[0]):
        p, r, s_out = rows[t, 0], rows[t, 1], rows[t, 2]
        nf, f0 = int(panels[p, 12]), int(panels[p, 13])
        weight = np.empty(nf)
        stol = np.empty(nf)
        panel_row_maps(panels, p, r, beam, polarization, weight, stol)
        row = out[s_out]
        for f in range(nf):
            s = stol[f]
            j = 0  # segment: the number of knots ≤ s, from the bucket of s by a short walk up
            if s >= k0:
                j = bucket_start[min(int((s - k0) * inv_bucket_width), last_bucket)]
                while knots[j] <= s:  # knots[-1] = +inf ends the walk
                    j += 1
            total = 0.0
            for k in range(n_terms):
                F = coef[j, 3 * k + 2] * (s - coef[j, 3 * k]) + coef[j, 3 * k + 1]
                total += n_units[k] * (F * F)
            row[f0 + f] = prefactor * weight[f] * total


def ice_ring_d_spacings_A(d_min_A: float = 1.7, cell_A: tuple[float, float] = ICE_IH_CELL_A) -> np.ndarray:
    """d-spacings (Å, descending) of the powder rings of hexagonal ice Ih down to ``d_min_A``.

    Every reflection of the cell (a, a, c, 90°, 90°, 120°) allowed by P 6₃/m m c (00l with l
    odd and hhl with l odd are absent) gives a ring; reflections with equal d share one.

    Examples
    --------
    >>> np.round(ice_ring_d_spacings_A(2.2), 3).tolist()
    [3.895, 3.661, 3.438, 2.667, 2.248]
    """
    if not (isinstance(d_min_A, (int, float)) and d_min_A > 0):
        raise ConfigError(f"ice_ring_d_spacings_A: expected d_min_A > 0, got {d_min_A!r}")
    a, c = cell_A
    cell = gemmi.UnitCell(a, a, c, 90.0, 90.0, 120.0)
    ops = gemmi.SpaceGroup("P 63/m m c").operations()
    hmax, lmax = int(2 * a / d_min_A) + 1, int(c / d_min_A) + 1
    d = {round(cell.calculate_d([h, k, l]), 6)
         for h in range(-hmax, hmax + 1) for k in range(-hmax, hmax + 1) for l in range(0, lmax + 1)
         if (h, k, l) != (0, 0, 0) and not ops.is_systematically_absent([h, k, l])}
    return np.array(sorted((x for x in d if x >= d_min_A), reverse=True))


def _regenerate_atomic_tables(directory: Path | None = None) -> list[Path]:
    """Write the independent-atom ``.stol`` tables (stol 0–2 Å⁻¹, step 0.005) into ``directory``."""
    directory = directory or _data_path("")
    stol = np.round(np.arange(401) * 0.005, 6)
    paths = []
    for name, (formula, _, unit) in _ATOMIC.items():
        path = Path(directory) / f"{name}.stol"
        header = [f"{name} {formula}: F per {unit}, independent-atom approximation, IT92 coefficients via gemmi "
                  f"{gemmi.__version__}",
                  "F = sqrt(sum_i f_i(stol)^2); no Compton scattering, no molecular or liquid structure",
                  "columns: sin(theta)/lambda (1/A)  F (electrons)"]
        rows = [f"{s:.6g} {f:.6g}" for s, f in zip(stol, independent_atom_curve(formula, stol))]
        path.write_text("\n".join([f"# {h}" for h in header] + rows) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in _regenerate_atomic_tables():
        print(written)
