"""The simulation configuration: what is fixed and how each random parameter is drawn.

Defaults are the XRAIS training sets (xrais.txt §2.1 and Appendix A): the ``resolution`` preset
(PILATUS 6M or EIGER 16M at 200–300 mm, λ 0.9795 Å, 4e11 photons in a 30 µm beam with 0.02
mrad divergence, a 25 µm crystal of 0.05/0.10/0.15 µm mosaic domains, mosaic spread
0.05–1°) and the ``multilattice`` preset (Rayonix MX340 at 240 mm, spread 0.001–0.01°, 1, 2
or 3 lattices in the ratio 50/25/25 turned by Gaussian angles of σ 0.1°, 1° or 10°).
Sampled ranges are ``(low, high)`` tuples named ``…_range``; discrete choices ``…_choices``.
A configuration is a TOML or YAML file with any subset of the fields; unknown keys are errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from xrais.config_files import config_error, read_config_file, toml_value, unknown_name_message
from xrais.errors import ConfigError
from xrais.geometry import DETECTOR_CATALOG
from xrais.simulate.detector_effects import DetectorEffectsConfig

__all__ = ["BackgroundConfig", "SimulationConfig", "PRESETS", "load_config", "XRAIS_SPACE_GROUPS"]

#: The space groups of the XRAIS crystal set (Appendix A1.1).
XRAIS_SPACE_GROUPS = (
    "P 3", "P 31 1 2", "R 3:H", "P 6", "P 41 21 2", "P 32 2 1", "P 3 2 1", "P 4 21 2", "C 1 2 1", "P 41",
    "P 42 21 2", "P 31 2 1", "C 2 2 21", "R 3 2:H", "P 41 3 2", "P 21 21 21", "P 61 2 2", "I 2 2 2", "P 43 21 2",
    "P 61", "P 1", "P 65 2 2", "I 21 21 21", "P 32", "P 21 21 2", "P 1 21 1", "F 4 3 2", "P 21 3", "I 2 3",
)


def _ordered(name: str, value: tuple[float, float]) -> tuple[float, float]:
    low, high = value
    if not low <= high:
        raise ValueError(f"{name}: low {low} must not exceed high {high}")
    return value


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackgroundConfig(_Frozen):
    """Amorphous background (Appendix A1.4): air, water and one parasitic scatterer, scaled at random."""

    air_mm: float = Field(5.0, ge=0, le=10000, description="air path in the beam")
    water_um: float = Field(25.0, ge=0, le=10000, description="water / buffer thickness")
    parasitic_um: float = Field(25.0, ge=0, le=10000, description="thickness of the parasitic scatterer")
    parasitic_choices: tuple[str, ...] = Field(("glycerol", "sucrose", "peg", "paper", "kapton", "ice"),
                                               description="materials the parasitic scatterer is drawn from")
    scale_range: tuple[float, float] = Field((0.0125, 1.25), description="random overall background scale")

    @field_validator("scale_range")
    @classmethod
    def _scale(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] < 0:
            raise ValueError("scale_range: expected ≥ 0")
        return _ordered("scale_range", v)


class SimulationConfig(_Frozen):
    """Every fixed value and sampling rule of a simulated training set."""

    task: Literal["resolution", "multilattice"] = Field("resolution", description="which labels the set is for")
    detector_choices: tuple[str, ...] = Field(("pilatus6m", "eiger16m"), description="catalog detectors")
    distance_mm_range: tuple[float, float] = Field((200.0, 300.0), description="sample-to-detector distance")
    beam_center_offset_mm: float = Field(2.0, ge=0, le=100, description="largest shift of the beam from the detector centre, per axis")
    wavelength_A: float = Field(0.9795, gt=0.1, le=20, description="X-ray wavelength")
    photons_per_image: float = Field(4e11, gt=0, le=1e16, description="photons in the beam per image")
    photons_per_image_range: tuple[float, float] | None = Field(
        None, description="photons per image drawn log-uniformly from this range (label photons_per_image); "
        "None: photons_per_image for every image")
    blank_fraction: float = Field(0.0, ge=0, lt=1, description="odds that an image has no crystal in the beam: "
                                  "background, noise and detector effects only (label bragg 0, target 1/d = 0)")
    beam_size_um: float = Field(30.0, gt=0, le=10000, description="full width of the (square) beam")
    divergence_mrad: float = Field(0.02, ge=0, le=100, description="full beam divergence")
    divergence_steps: int = Field(1, ge=1, le=20, description="divergence samples per direction")
    polarization_fraction: float = Field(0.999, ge=0, le=1, description="dxtbx polarization fraction")
    crystal_size_um: float = Field(25.0, gt=0, le=10000, description="crystal edge; intensity ∝ (crystal/domain)³")
    domain_size_um_choices: tuple[float, ...] = Field((0.05, 0.10, 0.15), description="mosaic domain edge")
    mosaic_spread_deg_range: tuple[float, float] = Field((0.05, 1.0), description="mosaic spread")
    mosaic_domains: int = Field(10, ge=1, le=1000, description="mosaic domains rendered per lattice")
    resolution_A_range: tuple[float, float] = Field((1.2, 5.0), description="resolution label d; B = 4·d² + 12")
    lattice_weights: tuple[float, float, float] = Field((1.0, 0.0, 0.0), description="odds of 1, 2, 3 lattices")
    lattice_sigma_deg_choices: tuple[float, ...] = Field((0.1, 1.0, 10.0), description="σ of extra lattices' angles")
    structures_dir: str | None = Field(None, description="folder of PDB/mmCIF files; None: random-atom crystals")
    structure_bank_size: int = Field(120, ge=0, le=100_000, description="random-atom crystals in the structure bank "
                                     "(XRAIS drew from ~120); 0: a new crystal for every image")
    structure_bank_seed: int = Field(0, ge=0, description="fixes the bank's crystals, whatever the seed of the set")
    cell_jitter_fraction: float = Field(0.01, ge=0, le=0.2, description="σ of each image's relative change of a bank "
                                        "crystal's cell edges (the crystal system is kept)")
    structure_cache_dir: str | None = Field(None, description="folder where bank |F| tables are kept between runs, "
                                            "named by their content; None: in memory only")
    structure_cache_mb: float = Field(2048.0, gt=0, le=1e7, description="memory for bank |F| tables per process")
    space_group_choices: tuple[str, ...] = Field(XRAIS_SPACE_GROUPS, description="space groups of random crystals")
    cell_volume_A3_range: tuple[float, float] = Field((5e4, 5e7), description="random cells, log-uniform")
    max_structure_factor_cells: int = Field(20_000_000, ge=1000, description="largest |F| grid (coarsens d_min)")
    shape: Literal["square", "round", "gauss", "tophat", "gauss_2022", "tophat_2022"] = Field(
        "gauss_2022", description="lattice-transform shape; gauss_2022 falls off as exp(−Σ(Δh·N)²/0.63), so its width "
        "follows the domain size (nanoBragg's 2023 gauss narrows as (N_aN_bN_c)² and suits small domains only)")
    oversample: int = Field(1, ge=1, le=16, description="sub-pixels per pixel side")
    render_method: Literal["auto", "brute", "spots"] = Field(
        "auto", description="brute force, only near Bragg spots (faster for large domains, slower for small), or "
        "auto: spots whenever its windows make it the faster")
    render_tolerance: float = Field(1e-3, gt=0, lt=1, description="spots: lattice-transform cut-off relative to the peak")
    background: BackgroundConfig = Field(default_factory=BackgroundConfig)
    detector_effects: DetectorEffectsConfig = Field(default_factory=DetectorEffectsConfig,
                                                    description="noise, beam stop, hot/dead pixels, gaps")
    quadrants: Literal[1, 4] = Field(1, description="conditioned quadrants stored per image (XRAIS trains on 1)")
    shard_size: int = Field(64, ge=1, le=100_000, description="images per HDF5 shard")

    @field_validator("distance_mm_range", "mosaic_spread_deg_range", "resolution_A_range", "cell_volume_A3_range")
    @classmethod
    def _range(cls, v: tuple[float, float], info: Any) -> tuple[float, float]:
        if v[0] <= 0:
            raise ValueError(f"{info.field_name}: expected positive values")
        return _ordered(info.field_name, v)

    @field_validator("photons_per_image_range")
    @classmethod
    def _fluence_range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not (0 < v[0] and v[1] <= 1e16):
            raise ValueError("photons_per_image_range: expected photons between 0 and 1e16")
        return None if v is None else _ordered("photons_per_image_range", v)

    @field_validator("detector_choices")
    @classmethod
    def _detectors(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [d for d in v if d not in DETECTOR_CATALOG]
        if unknown or not v:
            raise ValueError(f"detector_choices: unknown {unknown}; expected some of {sorted(DETECTOR_CATALOG)}")
        return v

    @field_validator("lattice_weights")
    @classmethod
    def _weights(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(v) < 0 or sum(v) <= 0:
            raise ValueError("lattice_weights: expected three non-negative odds, not all zero")
        return v

    def to_json(self) -> str:
        """The full configuration as JSON (stored with every shard)."""
        return self.model_dump_json(indent=None)

    def to_toml(self) -> str:
        """The full configuration as a TOML file that :func:`load_config` reads back.

        Examples
        --------
        >>> import tomllib
        >>> SimulationConfig(**tomllib.loads(SimulationConfig().to_toml())) == SimulationConfig()
        True
        """
        data = self.model_dump(mode="json")
        tables = {k: data.pop(k) for k in list(data) if isinstance(data[k], dict)}
        lines = [f"{k} = {toml_value(v)}" for k, v in data.items() if v is not None]
        for name, table in tables.items():
            lines += ["", f"[{name}]"] + [f"{k} = {toml_value(v)}" for k, v in table.items() if v is not None]
        return "\n".join(lines) + "\n"


#: Named starting points: XRAIS's resolution and multi-lattice training sets.
PRESETS: dict[str, dict[str, Any]] = {
    "resolution": {},
    "multilattice": {
        "task": "multilattice",
        "detector_choices": ("rayonix_mx340",),
        "distance_mm_range": (240.0, 240.0),
        "mosaic_spread_deg_range": (0.001, 0.01),
        "lattice_weights": (0.5, 0.25, 0.25),
        "resolution_A_range": (1.5, 3.0),
    },
}


def load_config(path: str | Path | None = None, *, preset: str = "resolution", **overrides: Any) -> SimulationConfig:
    """A validated configuration: a preset, then the file's values, then ``overrides``.

    A ``preset`` key in the file replaces the ``preset`` argument.

    Raises
    ------
    ConfigError
        Naming the file and the first bad key or value: an unknown preset or key is named
        with the nearest valid one (``unknown key 'mosaic_sprad_deg_range'; did you mean
        'mosaic_spread_deg_range'?``).
    """
    if preset not in PRESETS:
        raise ConfigError(unknown_name_message("preset", str(preset), PRESETS))
    values: dict[str, Any] = dict(PRESETS[preset])
    where = f"preset {preset}"
    if path is not None:
        p = Path(path)
        data = read_config_file(p)
        if "preset" in data:
            name = data.pop("preset")
            if name not in PRESETS:
                raise ConfigError(f"{p.name}: " + unknown_name_message("preset", str(name), PRESETS))
            values = dict(PRESETS[name])
        values.update(data)
        where = p.name
    values.update(overrides)
    try:
        return SimulationConfig(**values)
    except ValidationError as exc:
        raise config_error(exc, SimulationConfig, where) from None
