"""``render``: a crystal, a beam and a detector in, an image in photons per pixel out.

The physics is nanoBragg's (PHYSICS.md); where the reference program has a quirk this API
does the physically right thing (the ``xrais nanobragg`` command keeps the program's
behaviour through :func:`render_plan` switches):

* Ω and polarization are evaluated for every sub-pixel and source, not once per pixel;
* water background is r_e²·fluence·F_w²·n_molecules·Ω·P — proportional to the fluence and not
  divided by the number of sub-steps (nanoBragg multiplies it by r_e²·fluence twice and
  divides it by the step count);
* a spindle angle of exactly 0 is a rotation like any other.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from xrais.errors import ConfigError
from xrais.geometry import Beam, Detector
from xrais.simulate.crystal import SHAPE_CODES, Crystal
from xrais.simulate.kernel import (
    FLAG_NO_POLAR,
    FLAG_POINT_PIXEL,
    Backend,
    KernelPlan,
    panel_table,
    pixel_rows,
    run_plan,
)
from xrais.simulate.mosaic import mosaic_rotations, orientation_matrices, phi_angles_deg
from xrais.simulate.sources import beam_sources, polarization_axis

__all__ = ["render", "render_plan", "fluence_photons_per_m2", "water_molecules", "R_E2_M2",
           "NANOBRAGG_DEFAULT_FLUENCE", "F_WATER"]

#: Classical electron radius squared, m² (nanoBragg's value).
R_E2_M2 = 7.94079248018965e-30
#: nanoBragg's default fluence (photons/m²): r_e²·fluence = 1.
NANOBRAGG_DEFAULT_FLUENCE = 1.25932015286227e29
#: Forward scattering factor of a water molecule (nanoBragg).
F_WATER = 2.57
_AVOGADRO = 6.02214179e23
_WATER_G_PER_M3 = 1e6
_WATER_G_PER_MOL = 18.0


def fluence_photons_per_m2(beam: Beam, exposure_s: float = 1.0) -> float:
    """Photons per m² on the sample: ``fluence_photons`` (or flux × exposure) over the beam area.

    The beam is taken as a square of side ``beam_size_um`` (as nanoBragg's ``-beamsize``);
    without photon numbers the nanoBragg default (r_e²·fluence = 1) is returned.
    """
    photons = beam.fluence_photons
    if photons is None and beam.flux_photons_per_s is not None:
        photons = beam.flux_photons_per_s * exposure_s
    if photons is None:
        return NANOBRAGG_DEFAULT_FLUENCE
    size_m = (beam.beam_size_um if beam.beam_size_um else 100.0) * 1e-6
    return photons / (size_m * size_m)


def water_molecules(thickness_um: float) -> float:
    """Water molecules in nanoBragg's water sample: a cube of side ``thickness_um``."""
    t = thickness_um * 1e-6
    return t**3 * _WATER_G_PER_M3 * _AVOGADRO / _WATER_G_PER_MOL


def _check_geometry(beam: Beam, detector: Detector) -> None:
    if not 0.1 <= beam.wavelength_A <= 20.0:
        raise ConfigError(f"wavelength {beam.wavelength_A} Å: expected 0.1–20 Å for X-ray diffraction")
    d = detector.distance_mm
    if not 1.0 <= d <= 100_000.0:
        raise ConfigError(f"detector distance {d} mm: expected 1–100000 mm")


def _check_reflections_reach(crystal: Crystal, beam: Beam, detector: Detector, panels: np.ndarray,
                             d_min_A: float | None) -> None:
    """Refuse a set-up in which no reflection can reach the detector (largest |S| seen too small).

    ``panels`` is the detector's :func:`~xrais.simulate.kernel.panel_table`; the corners and
    centre of every panel are tried.
    """
    size = np.array([p.image_size for p in detector.panels], dtype=np.float64).reshape(-1, 2)
    frac = np.array([(0, 0), (1, 0), (0, 1), (1, 1), (0.5, 0.5)])
    f = frac[None, :, 0] * size[:, None, 0] * panels[:, None, 9]  # mm along fast, (panels, 5)
    s = frac[None, :, 1] * size[:, None, 1] * panels[:, None, 10]
    d = (panels[:, None, 0:3] + f[..., None] * panels[:, None, 3:6] + s[..., None] * panels[:, None, 6:9]).reshape(-1, 3)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    s_max = float(np.max(np.linalg.norm(d - np.asarray(beam.direction), axis=1))) / beam.wavelength_A
    if d_min_A:
        s_max = min(s_max, 1.0 / d_min_A)
    hkl = np.array([(h, k, l) for h in (-1, 0, 1) for k in (-1, 0, 1) for l in (-1, 0, 1) if (h, k, l) != (0, 0, 0)])
    s_min = float(np.min(np.linalg.norm(hkl @ crystal.A.T, axis=1)))
    if s_max < s_min:
        raise ConfigError(
            f"detector sees only d ≥ {1.0 / s_max:.1f} Å but the cell's largest d-spacing is {1.0 / s_min:.1f} Å: "
            "no reflection can reach it (expected a detector closer or larger, a longer wavelength, or a lower d_min)"
        )


def render_plan(
    crystal: Crystal,
    beam: Beam,
    detector: Detector,
    *,
    oversample: int = 1,
    fluence_per_m2: float | None = None,
    phi_start_deg: float = 0.0,
    osc_deg: float = 0.0,
    phi_steps: int = 1,
    divergence_steps: int = 1,
    dispersion_steps: int = 1,
    hdivergence_mrad: float | None = None,
    vdivergence_mrad: float | None = None,
    square_divergence: bool = False,
    polarization: bool = True,
    point_pixel: bool = False,
    water_um: float = 0.0,
    d_min_A: float | None = None,
    roi: tuple[int, int, int, int] | None = None,
    seed: int | None = None,
    fudge: float = 1.0,
    flags: int = 0,
    background: float | None = None,
    check_reflections: bool = True,
) -> KernelPlan:
    """Build the :class:`~xrais.simulate.kernel.KernelPlan` of a render (see :func:`render`).

    ``flags`` and ``background`` override the physical defaults (nanoBragg compatibility);
    ``check_reflections=False`` renders even a set-up where no reflection can reach the
    detector (only the tails of the direct-beam reflection), as nanoBragg does.
    """
    _check_geometry(beam, detector)
    if not 1 <= int(oversample) <= 64:
        raise ConfigError(f"oversample {oversample!r}: expected 1–64 sub-pixels per pixel side")
    if d_min_A is not None and not d_min_A > 0:
        raise ConfigError(f"d_min {d_min_A!r} Å: expected > 0")
    if water_um < 0:
        raise ConfigError(f"water thickness {water_um!r} µm: expected ≥ 0")
    fluence = fluence_photons_per_m2(beam) if fluence_per_m2 is None else float(fluence_per_m2)
    if not fluence > 0:
        raise ConfigError(f"fluence {fluence!r} photons/m²: expected > 0")
    sources = beam_sources(beam, divergence_steps=divergence_steps, dispersion_steps=dispersion_steps,
                           square_divergence=square_divergence, hdivergence_mrad=hdivergence_mrad,
                           vdivergence_mrad=vdivergence_mrad)
    domains = mosaic_rotations(crystal.mosaic_spread_deg, int(crystal.mosaic_domains),
                               crystal.mosaic_seed if seed is None else seed)
    orientations = orientation_matrices(crystal.real_space_matrix, phi_angles_deg(phi_start_deg, osc_deg, phi_steps),
                                        domains)
    sf = crystal.structure_factors
    grid = np.ascontiguousarray(sf.amplitudes, dtype=np.float32)
    hkl_min = tuple(int(v) for v in sf.hkl_min)
    if grid.size == 0:  # constant |F|: a one-cell grid holding the same value
        grid, hkl_min = np.full((1, 1, 1), sf.default_F, dtype=np.float32), (0, 0, 0)
    scale = R_E2_M2 * fluence
    bits = flags | (FLAG_POINT_PIXEL if point_pixel else 0) | (0 if polarization else FLAG_NO_POLAR)
    if background is None:
        background = F_WATER**2 * water_molecules(water_um)
    panels = panel_table(detector)
    if background == 0.0 and check_reflections:
        _check_reflections_reach(crystal, beam, detector, panels, d_min_A)
    return KernelPlan(
        image_shape=detector.array_shape,
        rows=pixel_rows(detector, roi),
        panels=panels,
        sources=sources,
        orientations=orientations,
        a0=np.ascontiguousarray(crystal.A),
        shape_code=SHAPE_CODES[crystal.shape],
        n_cells=tuple(float(n) for n in crystal.n_cells),  # type: ignore[arg-type]
        fudge=fudge,
        grid=grid,
        hkl_min=hkl_min,  # type: ignore[arg-type]
        default_f=float(sf.default_F),
        inv_dmin=1.0 / d_min_A if d_min_A else 0.0,
        oversample=int(oversample),
        kahn=2.0 * beam.polarization_fraction - 1.0,
        polarization_axis=tuple(polarization_axis(beam)),  # type: ignore[arg-type]
        flags=bits,
        scale=scale,
        background=float(background),
    )


def render(
    crystal: Crystal,
    beam: Beam,
    detector: Detector,
    *,
    oversample: int = 1,
    backend: Backend = "auto",
    seed: int | None = None,
    method: str = "brute",
    tolerance: float = 1e-3,
    **options: Any,
) -> np.ndarray:
    """Simulate a still (or an oscillation) image in photons per pixel.

    Parameters
    ----------
    crystal : Crystal
        Cell, orientation, domain size, shape, mosaicity and |F|.
    beam : Beam
        Wavelength, direction, polarization (Kahn factor 2·fraction − 1), divergence,
        dispersion, and the photons: ``fluence_photons`` (or ``flux_photons_per_s`` for 1 s)
        over a square beam of ``beam_size_um``; without photon numbers r_e²·fluence = 1.
    detector : Detector
        Any panels; pixels outside every panel (gaps) stay 0.
    oversample : int
        Sub-pixels per pixel side.
    backend : {"auto", "numba", "cuda"}
        Where to compute; the same physics and the same numbers to float32 tolerance.
    seed : int, optional
        Mosaic-domain seed, replacing ``crystal.mosaic_seed``.
    method : {"brute", "spots", "auto"}
        ``brute``: every pixel with every orientation and source. ``spots``: the same
        per-pixel physics, each orientation and source evaluated only on the pixels near its
        Bragg spots, where F_latt² ≥ ``tolerance`` × its peak (the background term on every
        pixel); much faster for large domains and detectors. ``auto``: ``spots`` when its
        windows hold few enough of the brute-force terms to be faster, else ``brute``.
    tolerance : float
        Relative lattice-transform level below which ``method="spots"`` neglects a term.
    **options
        ``phi_start_deg``, ``osc_deg``, ``phi_steps`` (spindle rotation), ``divergence_steps``,
        ``dispersion_steps``, ``square_divergence``, ``polarization`` (False: factor 1),
        ``point_pixel``, ``water_um`` (water background thickness), ``d_min_A``, ``roi``
        (fast_min, fast_max, slow_min, slow_max), ``fluence_per_m2``, ``fudge``.

    Returns
    -------
    ndarray, shape detector.array_shape = (n_slow, n_fast), float32 — photons (noiseless)

    Examples
    --------
    >>> from xrais.geometry import Beam, Detector
    >>> det = Detector.flat(image_size=(64, 64), pixel_size_mm=0.172, distance_mm=100, beam_center_px=(32.5, 32.5))
    >>> img = render(Crystal(cell=(79.1, 79.1, 38.4, 90, 90, 90)), Beam(wavelength_A=1.0), det, backend="numba")
    >>> img.shape, img.dtype, bool(img[32, 32] == img.max())
    ((64, 64), dtype('float32'), True)
    """
    plan = render_plan(crystal, beam, detector, oversample=oversample, seed=seed, **options)
    if math.prod(plan.image_shape) == 0:
        return np.zeros(plan.image_shape, np.float32)
    return run_plan(plan, backend, method=method, tolerance=tolerance)
