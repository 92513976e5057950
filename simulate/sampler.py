"""Drawing the physical parameters of one training image, and its labels.

Image ``i`` of a set made with seed ``S`` is drawn from its own generator,
``numpy.random.default_rng(SeedSequence(S, spawn_key=(i,)))``, so any image can be remade
from (S, i) alone, whichever process makes it and in whatever order. Resolution labels come
from the B factor through B = 4·d² + 12 (Holton 2009): d is drawn uniformly in the configured
range and the model target is 1/d.

Lattices are numbered from 1: lattice 1 is the reference (orientation ``U``), lattices 2 and 3
(when ``n_lattices`` says so) are copies of it rotated by ``lattice{k}_angle_deg`` about the
unit axis (``lattice{k}_axis_x``, ``_y``, ``_z``), so lattice k has the orientation
``rotation_matrix(axis_k, angle_k) @ U`` (:func:`lattice_rotations`). Lattice 1's angle is 0;
a lattice the image does not have has angle 0 and axis (0, 0, 0).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from xrais.geometry import DETECTOR_CATALOG, rotation_matrix
from xrais.simulate.config import SimulationConfig

__all__ = ["ImageParameters", "sample_image", "image_seed", "b_factor_from_resolution", "random_cell",
           "random_rotation", "list_structures", "lattice_rotations", "jitter_cell", "MAX_LATTICES"]

#: Lattices an image can hold; each has its label columns whether the image has it or not.
MAX_LATTICES = 3


def b_factor_from_resolution(d_A: float) -> float:
    """B = 4·d² + 12 (Å²): the PDB-derived relation of Holton (2009) that XRAIS uses."""
    return 4.0 * d_A * d_A + 12.0


def image_seed(seed: int, index: int) -> int:
    """The 63-bit seed of image ``index`` in a set made with ``seed``."""
    state = np.random.SeedSequence(int(seed), spawn_key=(int(index),)).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix uniform on SO(3) (from a uniform unit quaternion)."""
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def random_cell(space_group: str, volume_A3: float, rng: np.random.Generator) -> tuple[float, ...]:
    """A cell of the given volume obeying the space group's crystal system (edge ratios within 1:2)."""
    import gemmi

    system = gemmi.SpaceGroup(space_group).crystal_system_str()
    ratios = rng.uniform(0.6, 1.6, size=3)
    al = be = ga = 90.0
    if system == "triclinic":
        al, be, ga = rng.uniform(70.0, 110.0, size=3)
    elif system == "monoclinic":
        be = rng.uniform(90.0, 120.0)
    elif system in ("tetragonal",):
        ratios[1] = ratios[0]
    elif system in ("trigonal", "hexagonal"):
        ratios[1] = ratios[0]
        ga = 120.0
    elif system == "cubic":
        ratios[:] = ratios[0]
    if space_group.endswith(":R"):  # rhombohedral axes
        ratios[:] = ratios[0]
        al = be = ga = rng.uniform(60.0, 100.0)
    cell = gemmi.UnitCell(*ratios, al, be, ga)
    scale = (volume_A3 / cell.volume) ** (1.0 / 3.0)
    return tuple(float(v) for v in (*(ratios * scale), al, be, ga))


def list_structures(folder: str | Path | None) -> list[Path]:
    """PDB and mmCIF files in ``folder`` (sorted), or [] for the random-atom default."""
    if folder is None:
        return []
    suffixes = (".pdb", ".ent", ".cif", ".mmcif", ".pdb.gz", ".cif.gz", ".ent.gz")
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.name.lower().endswith(suffixes))


@dataclass(frozen=True)
class ImageParameters:
    """Everything drawn for one image (each field is also a label column)."""

    index: int
    seed: int
    detector: str
    distance_mm: float
    beam_center_fast_px: float
    beam_center_slow_px: float
    wavelength_A: float
    resolution_A: float
    b_factor_A2: float
    n_lattices: int
    lattice_sigma_deg: float
    lattice_axes: tuple[tuple[float, float, float], ...]
    lattice_angles_deg: tuple[float, ...]
    domain_size_um: float
    mosaic_spread_deg: float
    space_group: str
    cell: tuple[float, ...]
    orientation: tuple[float, ...]
    structure: str
    background_scale: float
    parasitic_material: str
    extra: dict[str, Any] = field(default_factory=dict)
    structure_index: int = -1
    """entry of the structure bank (:mod:`xrais.simulate.structure_bank`); −1: a crystal of its own"""
    cell_jitter: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """factors drawn for the bank crystal's edges a, b, c (see :func:`jitter_cell`)"""
    photons_per_image: float = 0.0
    """photons in the beam; 0: the configuration's ``photons_per_image``"""
    bragg: bool = True
    """False: no crystal in the beam (a blank frame); its 1/d target is 0 and ``resolution_A`` inf"""

    @property
    def U(self) -> np.ndarray:
        """Orientation of the first lattice (3×3)."""
        return np.asarray(self.orientation).reshape(3, 3)

    def lattice_rotations(self) -> list[np.ndarray]:
        """The rotation of each lattice from the reference orientation (see :func:`lattice_rotations`)."""
        return lattice_rotations(self.lattice_axes, self.lattice_angles_deg)

    def labels(self) -> dict[str, Any]:
        """Flat label columns: numbers, and short strings for names."""
        d = asdict(self)
        out: dict[str, Any] = {k: v for k, v in d.items() if not isinstance(v, (tuple, list, dict))}
        out["bragg"] = int(self.bragg)
        out["inv_resolution_per_A"] = 1.0 / self.resolution_A if self.bragg else 0.0
        if not self.bragg:
            out["resolution_A"] = math.inf
        for i, name in enumerate(("cell_a_A", "cell_b_A", "cell_c_A", "cell_alpha_deg", "cell_beta_deg",
                                  "cell_gamma_deg")):
            out[name] = self.cell[i]
        for i in range(9):
            out[f"U_{i // 3}{i % 3}"] = self.orientation[i]
        for name, value in zip(("cell_jitter_a", "cell_jitter_b", "cell_jitter_c"), self.cell_jitter):
            out[name] = float(value)
        out["lattice1_angle_deg"] = 0.0  # the reference lattice
        for k in range(2, MAX_LATTICES + 1):
            has = k - 2 < len(self.lattice_angles_deg)
            axis = self.lattice_axes[k - 2] if has else (0.0, 0.0, 0.0)
            out[f"lattice{k}_angle_deg"] = float(self.lattice_angles_deg[k - 2]) if has else 0.0
            for c, value in zip("xyz", axis):
                out[f"lattice{k}_axis_{c}"] = float(value)
        out.update(self.extra)
        return out


def lattice_rotations(axes: Sequence[Sequence[float]], angles_deg: Sequence[float]) -> list[np.ndarray]:
    """Rotations of lattices 1, 2, …: the identity for the reference, then one per (axis, angle).

    Lattice k's orientation is ``lattice_rotations(...)[k - 1] @ U``.

    Examples
    --------
    >>> [r.round(6).tolist() for r in lattice_rotations([(0, 0, 1)], [90.0])][1][0]
    [0.0, -1.0, 0.0]
    """
    if len(axes) != len(angles_deg):
        raise ValueError(f"lattice rotations: {len(axes)} axes but {len(angles_deg)} angles")
    return [np.eye(3)] + [rotation_matrix(axis, angle) for axis, angle in zip(axes, angles_deg)]


def sample_image(config: SimulationConfig, seed: int, index: int, structures: Sequence[Path] = ()) -> ImageParameters:
    """Draw image ``index`` of the set made with ``seed`` (deterministic).

    The crystal is an entry of the structure bank (:mod:`xrais.simulate.structure_bank`): one
    of ``structures`` (default: the files of ``config.structures_dir``) or of the
    ``structure_bank_size`` random-atom crystals, its cell edges jittered; with no files and a
    bank size of 0, a random-atom crystal of the image's own.
    """
    s = image_seed(seed, index)
    rng = np.random.default_rng(s)
    det_name = str(rng.choice(config.detector_choices))
    entry = DETECTOR_CATALOG[det_name]
    n_fast, n_slow = entry.image_size
    offset_px = config.beam_center_offset_mm / entry.pixel_size_mm
    beam_f = n_fast / 2.0 + rng.uniform(-offset_px, offset_px)
    beam_s = n_slow / 2.0 + rng.uniform(-offset_px, offset_px)
    distance = float(rng.uniform(*config.distance_mm_range))
    d_label = float(rng.uniform(*config.resolution_A_range))
    weights = np.asarray(config.lattice_weights, dtype=float)
    n_lattices = int(rng.choice([1, 2, 3], p=weights / weights.sum()))
    sigma = float(rng.choice(config.lattice_sigma_deg_choices))
    axes, angles = [], []
    for _ in range(n_lattices - 1):
        v = rng.normal(size=3)
        axes.append(tuple(float(x) for x in v / np.linalg.norm(v)))
        angles.append(float(rng.normal(0.0, sigma)))
    domain = float(rng.choice(config.domain_size_um_choices))
    spread = float(rng.uniform(*config.mosaic_spread_deg_range))
    if not structures and config.structures_dir is not None:
        structures = list_structures(config.structures_dir)
    structure_index, jitter = -1, (1.0, 1.0, 1.0)
    if structures or config.structure_bank_size > 0:
        from xrais.simulate.structure_bank import bank_entry

        structure_index = int(rng.integers(len(structures) if structures else config.structure_bank_size))
        entry = bank_entry(config, structure_index, structures)
        structure = entry.path or entry.name
        jitter = tuple(float(v) for v in np.exp(rng.normal(0.0, config.cell_jitter_fraction, size=3)))
        space_group = entry.space_group
        cell = jitter_cell(entry.cell, space_group, jitter) if entry.cell else ()
    else:
        structure = "random-atom"
        space_group = str(rng.choice(config.space_group_choices))
        lo, hi = config.cell_volume_A3_range
        volume = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        cell = random_cell(space_group, volume, rng)
    u = random_rotation(rng)
    bg = config.background
    scale = float(rng.uniform(*bg.scale_range))
    parasitic = str(rng.choice(bg.parasitic_choices)) if bg.parasitic_choices else ""
    return ImageParameters(
        index=int(index), seed=s, detector=det_name, distance_mm=distance, beam_center_fast_px=float(beam_f),
        beam_center_slow_px=float(beam_s), wavelength_A=config.wavelength_A, resolution_A=d_label,
        b_factor_A2=b_factor_from_resolution(d_label), n_lattices=n_lattices, lattice_sigma_deg=sigma,
        lattice_axes=tuple(axes), lattice_angles_deg=tuple(angles), domain_size_um=domain, mosaic_spread_deg=spread,
        space_group=space_group, cell=tuple(cell), orientation=tuple(float(x) for x in u.ravel()),
        structure=structure, background_scale=scale, parasitic_material=parasitic,
        structure_index=structure_index, cell_jitter=jitter,
        # drawn last, so that sets made before these options keep every other value
        photons_per_image=_fluence(config, rng), bragg=bool(rng.uniform() >= config.blank_fraction),
    )


def _fluence(config: SimulationConfig, rng: np.random.Generator) -> float:
    """Photons per image: log-uniform over ``photons_per_image_range``, else the fixed value."""
    if config.photons_per_image_range is None:
        return float(config.photons_per_image)
    lo, hi = config.photons_per_image_range
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def jitter_cell(cell: Sequence[float], space_group: str, factors: Sequence[float]) -> tuple[float, ...]:
    """``cell`` with its edges a, b, c scaled by ``factors``, edges the crystal system ties kept equal.

    Tetragonal, trigonal and hexagonal cells keep a = b (both take a's factor); cubic and
    rhombohedral cells keep a = b = c; angles are unchanged.

    Examples
    --------
    >>> jitter_cell((50, 50, 80, 90, 90, 90), "P 41 21 2", (1.25, 0.5, 1.0))
    (62.5, 62.5, 80.0, 90.0, 90.0, 90.0)
    """
    import gemmi

    f = [float(v) for v in factors]
    system = gemmi.SpaceGroup(space_group).crystal_system_str()
    if system == "cubic" or space_group.endswith(":R"):
        f[1] = f[2] = f[0]
    elif system in ("tetragonal", "trigonal", "hexagonal"):
        f[1] = f[0]
    return tuple(float(v) for v in (*(e * k for e, k in zip(cell[:3], f)), *cell[3:6]))
