"""nanoBragg's command line → :class:`NanoBraggArgs` → the xrais crystal, beam, detector and render options.

``xrais nanobragg`` accepts nanoBragg's options with nanoBragg's units (mm, Å, degrees, mrad,
µm of water, percent dispersion, eV) and its defaults, sampling rules and quirks
(PHYSICS.md; the C ``main`` of nanoBragg.c):

* ``-N`` sets N_a = N_b = N_c; N ≤ 1 becomes 1; ``-xtalsize``/``-xtal_*`` (mm, clipped to the
  beam size in y and z) override N with ceil(size/edge).
* Without ``-oversample``: ceil(3·largest crystal edge/(λ·distance/pixel)).
* ``-osc O`` alone gives 2 phi steps of O/2; ``-phisteps n`` alone gives 1° in n steps.
* Divergence and dispersion: a range alone gives 2 samples; ``-hdivsteps n`` alone gives a
  range of 1 rad; ``-dispsteps n`` with no dispersion gives one wavelength.
* ``-mosaic`` > 0 without ``-mosaic_domains`` gives 10 domains; the default mosaic seed is 12345678.
* Default fluence 1.25932015286227e29 photons/m² (r_e²·fluence = 1), or flux·exposure/beamsize².
* Without ``-Xbeam``/``-Ybeam`` the beam is at (detector size + pixel)/2 on each axis.

Differences from the C program, on purpose: options match **exactly** (nanoBragg matches by
substring, so that e.g. ``-mosaic_seed`` also sets the noise ``-seed`` and ``-misset_seed``
also sets ``-misset``); an unknown option, a missing value or a stray argument is an error
instead of being ignored; ``./Fdump.bin`` is neither read nor written; ``-misset random``,
``-interpolate``, ``-mat`` and other options listed in :data:`UNSUPPORTED` are refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from xrais.errors import ConfigError
from xrais.geometry import Beam, Detector, rotation_matrix
from xrais.simulate.crystal import Crystal
from xrais.simulate.mosaic import NANOBRAGG_TO_LAB
from xrais.simulate.nanobragg import nanobragg_crystal, nanobragg_detector, nanobragg_shape_basis
from xrais.simulate.kernel import FLAG_NANOBRAGG_BACKGROUND, FLAG_OMEGA_ONCE, FLAG_POLAR_ONCE
from xrais.simulate.sources import sample_sources
from xrais.simulate.render import F_WATER, NANOBRAGG_DEFAULT_FLUENCE, R_E2_M2, water_molecules
from xrais.simulate.structure_factors import StructureFactors

__all__ = ["NanoBraggArgs", "NanoBraggRun", "parse_nanobragg_args", "resolve_nanobragg", "render_nanobragg",
           "nanobragg_sampling", "nanobragg_sources", "SUPPORTED_OPTIONS", "UNSUPPORTED"]

_F = float


def _int(text: str) -> int:
    return int(float(text))  # atoi-like: "5", "5.0" and "5.7" give 5


class NanoBraggArgs(BaseModel):
    """nanoBragg options as given (units of the command line); None where not given."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    cell: Optional[tuple[float, ...]] = None
    misset_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    hkl: Optional[str] = None
    default_F: float = 0.0
    Na: int = 1
    Nb: int = 1
    Nc: int = 1
    xtal_x_mm: float = 0.0
    xtal_y_mm: float = 0.0
    xtal_z_mm: float = 0.0
    shape: Literal["square", "round", "gauss", "tophat"] = "square"
    nanobragg_2022: bool = False
    mosaic_deg: Optional[float] = None
    mosaic_domains: Optional[int] = None
    mosaic_seed: int = 12345678
    seed: Optional[int] = None
    oversample: Optional[int] = None
    lambda_A: float = 1.0
    dispersion_percent: float = 0.0
    dispsteps: Optional[int] = None
    hdivrange_mrad: Optional[float] = None
    vdivrange_mrad: Optional[float] = None
    hdivstep_mrad: Optional[float] = None
    vdivstep_mrad: Optional[float] = None
    hdivsteps: Optional[int] = None
    vdivsteps: Optional[int] = None
    round_div: bool = True
    distance_mm: float = 100.0
    pixel_mm: float = 0.1
    detpixels_f: Optional[int] = None
    detpixels_s: Optional[int] = None
    detsize_f_mm: float = 102.4
    detsize_s_mm: float = 102.4
    xbeam_mm: Optional[float] = None
    ybeam_mm: Optional[float] = None
    detector_rotx_deg: float = 0.0
    detector_roty_deg: float = 0.0
    detector_rotz_deg: float = 0.0
    twotheta_deg: float = 0.0
    phi_deg: float = 0.0
    osc_deg: Optional[float] = None
    phistep_deg: Optional[float] = None
    phisteps: Optional[int] = None
    kahn: float = 0.0
    nopolar: bool = False
    point_pixel: bool = False
    fluence: float = NANOBRAGG_DEFAULT_FLUENCE
    flux: float = 0.0
    exposure_s: float = 1.0
    beamsize_mm: float = 0.1
    water_um: float = 0.0
    dmin_A: float = 0.0
    fudge: float = 1.0
    roi: Optional[tuple[int, int, int, int]] = None
    floatfile: str = "floatimage.bin"
    intfile: str = "intimage.img"
    pgmfile: str = "image.pgm"
    noisefile: str = "noiseimage.img"
    write_pgm: bool = True
    write_noise: bool = True
    scale: float = 0.0
    pgmscale: float = 0.0
    adc: float = 40.0
    progress: bool = True
    nointerpolate: bool = False
    backend: Literal["auto", "numba", "cuda"] = "auto"


# name → (number of values, converter, {field: value or None (= the converted value)})
_Spec = tuple[int, Callable[[str], Any], dict[str, Any]]


def _opt(n: int, conv: Callable[[str], Any], *fields: str, **consts: Any) -> _Spec:
    return n, conv, {**{f: None for f in fields}, **consts}


_OPTIONS: dict[str, _Spec] = {
    "-hkl": _opt(1, str, "hkl"), "-default_F": _opt(1, _F, "default_F"),
    "-N": _opt(1, _int, "Na", "Nb", "Nc"), "-Na": _opt(1, _int, "Na"), "-Nb": _opt(1, _int, "Nb"),
    "-Nc": _opt(1, _int, "Nc"),
    "-xtalsize": _opt(1, _F, "xtal_x_mm", "xtal_y_mm", "xtal_z_mm"),
    "-xtal_size": _opt(1, _F, "xtal_x_mm", "xtal_y_mm", "xtal_z_mm"),
    "-xtal_thick": _opt(1, _F, "xtal_x_mm"), "-xtal_x": _opt(1, _F, "xtal_x_mm"),
    "-xtal_width": _opt(1, _F, "xtal_y_mm"), "-xtal_y": _opt(1, _F, "xtal_y_mm"),
    "-xtal_height": _opt(1, _F, "xtal_z_mm"), "-xtal_z": _opt(1, _F, "xtal_z_mm"),
    "-square_xtal": _opt(0, str, shape="square"), "-round_xtal": _opt(0, str, shape="round"),
    "-gauss_xtal": _opt(0, str, shape="gauss"), "-tophat_spots": _opt(0, str, shape="tophat"),
    "-binary_spots": _opt(0, str, shape="tophat"), "--nanobragg-2022": _opt(0, str, nanobragg_2022=True),
    "-mosaic": _opt(1, _F, "mosaic_deg"), "-mosaic_spread": _opt(1, _F, "mosaic_deg"),
    "-mosaic_domains": _opt(1, _int, "mosaic_domains"), "-mosaic_seed": _opt(1, _int, "mosaic_seed"),
    "-seed": _opt(1, _int, "seed"), "-oversample": _opt(1, _int, "oversample"),
    "-lambda": _opt(1, _F, "lambda_A"), "-wave": _opt(1, _F, "lambda_A"), "-wavelength": _opt(1, _F, "lambda_A"),
    "-energy": _opt(1, lambda s: 12398.42 / float(s), "lambda_A"),
    "-dispersion": _opt(1, _F, "dispersion_percent"), "-dispsteps": _opt(1, _int, "dispsteps"),
    "-divergence": _opt(1, _F, "hdivrange_mrad", "vdivrange_mrad"),
    "-hdivrange": _opt(1, _F, "hdivrange_mrad"), "-vdivrange": _opt(1, _F, "vdivrange_mrad"),
    "-hdivstep": _opt(1, _F, "hdivstep_mrad"), "-vdivstep": _opt(1, _F, "vdivstep_mrad"),
    "-hdivsteps": _opt(1, _int, "hdivsteps"), "-vdivsteps": _opt(1, _int, "vdivsteps"),
    "-divsteps": _opt(1, _int, "hdivsteps", "vdivsteps"),
    "-round_div": _opt(0, str, round_div=True), "-square_div": _opt(0, str, round_div=False),
    "-distance": _opt(1, _F, "distance_mm"), "-pixel": _opt(1, _F, "pixel_mm"),
    "-detpixels": _opt(1, _int, "detpixels_f", "detpixels_s"),
    "-detpixels_f": _opt(1, _int, "detpixels_f"), "-detpixels_x": _opt(1, _int, "detpixels_f"),
    "-detpixels_s": _opt(1, _int, "detpixels_s"), "-detpixels_y": _opt(1, _int, "detpixels_s"),
    "-detsize": _opt(1, _F, "detsize_f_mm", "detsize_s_mm"), "-detsize_f": _opt(1, _F, "detsize_f_mm"),
    "-detsize_s": _opt(1, _F, "detsize_s_mm"),
    "-Xbeam": _opt(1, _F, "xbeam_mm"), "-Ybeam": _opt(1, _F, "ybeam_mm"),
    "-detector_rotx": _opt(1, _F, "detector_rotx_deg"), "-detector_roty": _opt(1, _F, "detector_roty_deg"),
    "-detector_rotz": _opt(1, _F, "detector_rotz_deg"), "-twotheta": _opt(1, _F, "twotheta_deg"),
    "-mosflm": _opt(0, str),
    "-phi": _opt(1, _F, "phi_deg"), "-osc": _opt(1, _F, "osc_deg"), "-phistep": _opt(1, _F, "phistep_deg"),
    "-phisteps": _opt(1, _int, "phisteps"),
    "-polar": _opt(1, _F, "kahn", nopolar=False), "-nopolar": _opt(0, str, nopolar=True),
    "-point_pixel": _opt(0, str, point_pixel=True),
    "-fluence": _opt(1, _F, "fluence"), "-flux": _opt(1, _F, "flux"), "-exposure": _opt(1, _F, "exposure_s"),
    "-beamsize": _opt(1, _F, "beamsize_mm"), "-water": _opt(1, _F, "water_um"),
    "-dmin": _opt(1, _F, "dmin_A"), "-fudge": _opt(1, _F, "fudge"),
    "-floatfile": _opt(1, str, "floatfile"), "-floatimage": _opt(1, str, "floatfile"),
    "-intfile": _opt(1, str, "intfile"), "-intimage": _opt(1, str, "intfile"),
    "-pgmfile": _opt(1, str, "pgmfile", write_pgm=True), "-pgmimage": _opt(1, str, "pgmfile", write_pgm=True),
    "-noisefile": _opt(1, str, "noisefile", write_noise=True),
    "-noiseimage": _opt(1, str, "noisefile", write_noise=True),
    "-nonoise": _opt(0, str, write_noise=False), "-nopgm": _opt(0, str, write_pgm=False),
    "-scale": _opt(1, _F, "scale"), "-pgmscale": _opt(1, _F, "pgmscale", write_pgm=True),
    "-adc": _opt(1, _F, "adc"),
    "-noprogress": _opt(0, str, progress=False), "-progress": _opt(0, str, progress=True),
    "-nointerpolate": _opt(0, str, nointerpolate=True),
    "-backend": _opt(1, str, "backend"), "--backend": _opt(1, str, "backend"),
}
#: Every option the command accepts (``-cell`` takes 1–6 values, ``-misset`` 3, ``-roi`` 4).
SUPPORTED_OPTIONS: tuple[str, ...] = ("-cell", "-misset", "-roi", *_OPTIONS)
#: nanoBragg options that xrais refuses, with the reason.
UNSUPPORTED: dict[str, str] = {
    **{o: "only the default MOSFLM convention is supported" for o in (
        "-xds", "-dials", "-adxv", "-denzo", "-fdet_vector", "-sdet_vector", "-odet_vector", "-beam_vector",
        "-polar_vector", "-spindle_axis", "-twotheta_axis", "-pix0_vector", "-pivot", "-ORGX", "-ORGY", "-Xclose",
        "-Yclose", "-close_distance")},
    **{o: "thick or curved detectors are not simulated" for o in (
        "-detector_thick", "-detector_absorb", "-detector_thicksteps", "-thicksteps", "-curved_det",
        "-oversample_thick")},
    "-oversample_omega": "per-sub-pixel Ω is the xrais render API (xrais.simulate.render)",
    "-oversample_polar": "per-sub-pixel polarization is the xrais render API (xrais.simulate.render)",
    "-interpolate": "xrais does not interpolate structure factors between Miller indices",
    "-mat": "give the cell with -cell and the orientation with -misset",
    **{o: "input images and masks are not read" for o in ("-img", "-mask")},
    **{o: "amorphous scattering tables do not enter nanoBragg's pixel sum"
       for o in ("-stol", "-4stol", "-Q", "-stolout")},
    "-sourcefile": "source files are not read; use -divergence/-dispersion",
    "-dump": "the Fdump.bin cache is not used", "-coherent": "coherent addition is not simulated",
    "-misset_seed": "-misset random is not supported",
    "-printout": "use the float image", "-printout_pixel": "use the float image",
}


def parse_nanobragg_args(argv: Sequence[str]) -> NanoBraggArgs:
    """Parse nanoBragg command-line arguments (without the program name).

    Options are matched exactly; when an option is repeated the last one wins, as in nanoBragg.

    Raises
    ------
    ConfigError
        An unknown or unsupported option, a missing or malformed value, or a stray argument.

    Examples
    --------
    >>> a = parse_nanobragg_args(["-cell", "79.1", "79.1", "38.4", "90", "90", "90", "-N", "5", "-energy", "12398.42"])
    >>> a.Na, a.Nc, a.lambda_A, a.mosaic_seed
    (5, 5, 1.0, 12345678)
    """
    values: dict[str, Any] = {}
    argv = list(argv)
    i = 0
    while i < len(argv):
        name = argv[i]
        if name == "-cell":
            cell = []
            while i + 1 < len(argv) and len(cell) < 6 and not argv[i + 1].startswith("-"):
                cell.append(_convert(name, argv[i + 1], _F))
                i += 1
            if not cell:
                raise ConfigError("option -cell: expected a b c [α β γ] (Å, degrees)")
            values["cell"] = tuple(cell)
        elif name in ("-misset", "-roi"):
            if name == "-misset" and i + 1 < len(argv) and argv[i + 1].startswith("rand"):
                raise ConfigError("-misset random: not supported (give the angles: -misset rx ry rz, degrees)")
            vals = _take(argv, i, 3 if name == "-misset" else 4, _F if name == "-misset" else _int)
            values["misset_deg" if name == "-misset" else "roi"] = tuple(vals)
            i += len(vals)
        elif name in _OPTIONS:
            n, conv, fields = _OPTIONS[name]
            vals = _take(argv, i, n, conv)
            for key, const in fields.items():
                values[key] = vals[0] if const is None else const
            i += n
        elif name in UNSUPPORTED:
            raise ConfigError(f"nanoBragg option {name} is not supported by xrais nanobragg: {UNSUPPORTED[name]}")
        elif name.startswith("-") and not _is_number(name):
            raise ConfigError(f"unknown option {name!r} (options are matched exactly); supported: "
                              + " ".join(sorted(SUPPORTED_OPTIONS, key=str.lower)))
        else:
            raise ConfigError(f"unexpected argument {name!r}: not the value of any option")
        i += 1
    try:
        return NanoBraggArgs(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"nanoBragg option value {err['loc'][0]}={err.get('input')!r}: {err['msg']}") from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _convert(name: str, text: str, conv: Callable[[str], Any]) -> Any:
    try:
        return conv(text)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"option {name}: cannot read the value {text!r}") from None


def _take(argv: list[str], i: int, n: int, conv: Callable[[str], Any]) -> list[Any]:
    if i + n >= len(argv):
        raise ConfigError(f"option {argv[i]}: expected {n} value{'s' if n > 1 else ''}, got {len(argv) - i - 1}")
    return [_convert(argv[i], argv[i + 1 + k], conv) for k in range(n)] or [None]


def nanobragg_sampling(range_: float, step: float, steps: int, full_range: float = 1.0) -> tuple[float, float, int]:
    """nanoBragg's rule for one sampled range (divergence, dispersion): (range, step, steps).

    Negative values mean "not given". A range alone gives 2 samples one range apart; steps
    alone give ``full_range`` (1 rad or 100 %) in that many steps; range and steps give
    range/(steps − 1); a zero range gives one sample.

    Examples
    --------
    >>> nanobragg_sampling(0.0004, -1.0, 3)
    (0.0004, 0.0002, 3)
    >>> nanobragg_sampling(0.005, -1.0, -1)
    (0.005, 0.005, 2)
    """
    if steps <= 0:
        if range_ < 0:
            range_, step, steps = (step, step, 2) if step > 0 else (0.0, 0.0, 1)
        elif step <= 0:
            step, steps = range_, 2
        else:
            steps = math.ceil(range_ / step)
    elif range_ < 0:
        range_, step, steps = (full_range, full_range / steps, steps) if step <= 0 else (step, step, 2)
    elif step <= 0:
        steps = max(steps, 2)
        step = range_ / (steps - 1)
    if range_ <= 0 or step <= 0 or steps <= 0:
        return 0.0, 0.0, 1
    return range_, step, steps


def nanobragg_sources(lambda_A: float, hdiv: tuple[float, float, int], vdiv: tuple[float, float, int],
                      disp: tuple[float, float, int], round_div: bool = True) -> np.ndarray:
    """nanoBragg's source list in the xrais lab frame, shape (n, 4): incident unit vector, λ (Å).

    ``hdiv``/``vdiv`` = (range, step, steps) in radians, ``disp`` = (Δλ/λ, step, steps) from
    :func:`nanobragg_sampling`; the beam (+x) and E-vector (+z) of nanoBragg's frame.
    """
    return sample_sources(NANOBRAGG_TO_LAB @ np.array([1.0, 0.0, 0.0]), NANOBRAGG_TO_LAB @ np.array([0.0, 0.0, 1.0]),
                          lambda_A, hdiv, vdiv, disp, elliptical=round_div)


@dataclass(frozen=True)
class NanoBraggRun:
    """A nanoBragg command line resolved into xrais objects, with nanoBragg's derived values.

    ``render_options`` are keyword arguments of :func:`xrais.simulate.render.render_plan`
    (nanoBragg flags: Ω and polarization once per pixel, water ∝ fluence² and ÷ steps);
    ``sources`` replace the plan's sources (nanoBragg's grid, :func:`nanobragg_sources`) and
    ``shape_basis`` its GAUSS/TOPHAT reciprocal basis (:func:`~xrais.simulate.nanobragg.nanobragg_shape_basis`).
    ``beam_normal_ratio`` is beam · detector normal before the two-theta swing: nanoBragg
    divides the perpendicular distance by it for the header's DISTANCE and beam centres and
    for the automatic oversampling (so with ``-twotheta`` those use a shortened distance).
    """

    args: NanoBraggArgs
    crystal: Crystal
    beam: Beam
    detector: Detector
    sources: np.ndarray
    render_options: dict[str, Any]
    shape_basis: np.ndarray
    fluence: float
    phi_deg: float
    osc_deg: float
    phisteps: int
    oversample: int
    detsize_mm: tuple[float, float]
    beam_mm: tuple[float, float]
    beam_normal_ratio: float
    noise_seed: int
    warnings: tuple[str, ...] = field(default=())


def _phi_sampling(osc: float, step: float, steps: int) -> tuple[float, float, int]:
    """nanoBragg's phi rule (degrees; negative = not given): (osc, step, steps)."""
    if steps < 0:
        if osc < 0:
            return (0.0, 0.0, 1) if step <= 0 else (step, step, 2)
        return (osc, osc / 2.0, 2) if step <= 0 else (osc, step, math.ceil(osc / step))
    steps = max(steps, 1)
    if osc < 0:
        return (1.0, 1.0 / steps, steps) if step <= 0 else (step, step, 2)
    return (osc, osc / steps if step < 0 else step, steps)


def _mosaic(spread: Optional[float], domains: Optional[int]) -> tuple[float, int, list[str]]:
    spread_v = -1.0 if spread is None else spread
    n = -1 if domains is None else domains
    if n <= 0:
        if spread_v <= 0:
            return 0.0, 1, []
        return spread_v, 10, ["finite mosaicity without -mosaic_domains: using 10 mosaic domains (as nanoBragg)"]
    if spread_v <= 0:
        return 0.0, 1, [f"no mosaic spread given: using 1 mosaic domain, not {n} (as nanoBragg)"]
    return spread_v, n, []


def _neg(v: Optional[float], scale: float = 1.0) -> float:
    return -1.0 if v is None else v * scale


def resolve_nanobragg(args: NanoBraggArgs, *, now_seed: Optional[int] = None) -> NanoBraggRun:
    """Apply nanoBragg's defaults and sampling rules; build the crystal, beam, detector and sources.

    ``now_seed`` is the noise seed used when ``-seed`` is absent (nanoBragg uses the time).

    Raises
    ------
    ConfigError
        No cell, no structure factors, impossible values (propagated from the xrais models).
    """
    notes: list[str] = []
    if args.cell is None:
        raise ConfigError("no unit cell: give -cell a b c α β γ (Å, degrees); nanoBragg's -mat is not supported")
    cell = list(args.cell) + [0.0] * (6 - len(args.cell))
    cell = [cell[0], *(v if v > 0 else cell[0] for v in cell[1:3]), *(v if v > 0 else 90.0 for v in cell[3:])]
    if args.hkl is not None:
        sf = StructureFactors.from_hkl_file(args.hkl, default_F=args.default_F)
        if min(args.Na, args.Nb, args.Nc) <= 2 and not args.nointerpolate:
            notes.append("nanoBragg would interpolate F between Miller indices here (a crystal ≤ 2 cells wide); "
                         "xrais does not interpolate (add -nointerpolate to silence this)")
    elif args.default_F != 0.0:
        sf = StructureFactors.constant(args.default_F)
    else:
        raise ConfigError("no structure factors: give -hkl FILE or -default_F F "
                          "(xrais does not read nanoBragg's ./Fdump.bin cache)")
    # Crystal size: -xtalsize etc. (mm) override N; the beam clips the sample in y and z.
    beamsize_m = args.beamsize_mm / 1000.0
    sizes_m = [args.xtal_x_mm / 1000.0, args.xtal_y_mm / 1000.0, args.xtal_z_mm / 1000.0]
    for k in (1, 2):
        if beamsize_m >= 0 and beamsize_m < sizes_m[k]:
            notes.append(f"clipping the sample ({sizes_m[k]:g} m) to the beam size ({beamsize_m:g} m), as nanoBragg")
            sizes_m[k] = beamsize_m
    n_cells = [float(n) for n in (args.Na, args.Nb, args.Nc)]
    for k in range(3):
        if sizes_m[k] > 0:
            n_cells[k] = math.ceil(sizes_m[k] / (cell[k] * 1e-10))
    n_cells = [int(max(n, 1.0)) for n in n_cells]
    # Fluence from flux, exposure and beam size.
    fluence = args.fluence
    if args.flux != 0.0 and args.exposure_s > 0.0 and beamsize_m >= 0:
        if beamsize_m == 0:
            raise ConfigError("-flux with -beamsize 0: the fluence would be infinite")
        fluence = args.flux * args.exposure_s / beamsize_m / beamsize_m
    # Detector.
    px = args.pixel_mm
    if not px > 0:
        raise ConfigError(f"-pixel {px}: expected a pixel size > 0 mm")
    size_f = px * args.detpixels_f if args.detpixels_f else args.detsize_f_mm
    size_s = px * args.detpixels_s if args.detpixels_s else args.detsize_s_mm
    n_fast, n_slow = math.ceil(size_f / px - 0.5), math.ceil(size_s / px - 0.5)
    if n_fast <= 0 or n_slow <= 0:
        raise ConfigError(f"detector of {n_fast}×{n_slow} pixels: expected at least 1×1 (check -detpixels/-detsize)")
    xbeam = (size_s + px) / 2.0 if args.xbeam_mm is None else args.xbeam_mm
    ybeam = (size_f + px) / 2.0 if args.ybeam_mm is None else args.ybeam_mm
    detector = nanobragg_detector(pixel_mm=px, n_fast=n_fast, n_slow=n_slow, distance_mm=args.distance_mm,
                                  xbeam_mm=xbeam, ybeam_mm=ybeam, twotheta_deg=args.twotheta_deg,
                                  rot_deg=(args.detector_rotx_deg, args.detector_roty_deg, args.detector_rotz_deg))
    rot = np.eye(3)
    for axis, angle in zip(np.eye(3), (args.detector_rotx_deg, args.detector_roty_deg, args.detector_rotz_deg)):
        rot = rotation_matrix(axis, angle) @ rot
    ratio = float(rot[0, 0]) or float(np.finfo(float).tiny)  # beam (+x) · normal, nanoBragg frame
    panel = detector.panels[0]
    distance_nb = float(np.dot(panel.origin_mm, panel.normal)) / ratio
    # Sampling: phi, divergence, dispersion, mosaic domains, oversampling.
    osc, phistep, phisteps = _phi_sampling(_neg(args.osc_deg), _neg(args.phistep_deg),
                                           -1 if args.phisteps is None else args.phisteps)
    hdiv = nanobragg_sampling(_neg(args.hdivrange_mrad, 1e-3), _neg(args.hdivstep_mrad, 1e-3),
                              -1 if args.hdivsteps is None else args.hdivsteps)
    vdiv = nanobragg_sampling(_neg(args.vdivrange_mrad, 1e-3), _neg(args.vdivstep_mrad, 1e-3),
                              -1 if args.vdivsteps is None else args.vdivsteps)
    disp = nanobragg_sampling(args.dispersion_percent / 100.0, -1.0, -1 if args.dispsteps is None else args.dispsteps)
    sources = nanobragg_sources(args.lambda_A, hdiv, vdiv, disp, args.round_div)
    spread, domains, mosaic_notes = _mosaic(args.mosaic_deg, args.mosaic_domains)
    notes += mosaic_notes
    edge_m = max(cell[k] * 1e-10 * n_cells[k] for k in range(3))
    recommended = max(1, math.ceil(3.0 * edge_m / (args.lambda_A * 1e-10 * distance_nb / px)))
    oversample = recommended if args.oversample is None or args.oversample <= 0 else args.oversample
    if oversample < recommended:
        notes.append(f"oversample {oversample} is below the {recommended} nanoBragg recommends for this crystal "
                     "(intensity may vary across a pixel)")
    if not -1.0 <= args.kahn <= 1.0:
        raise ConfigError(f"-polar {args.kahn}: expected a Kahn polarization factor in [-1, 1]")
    for name, seed in (("-seed", args.seed), ("-mosaic_seed", args.mosaic_seed)):
        if seed is not None and seed < 0:
            raise ConfigError(f"{name} {seed}: expected an integer ≥ 0")
    shape = args.shape + ("_2022" if args.nanobragg_2022 and args.shape in ("gauss", "tophat") else "")
    crystal = nanobragg_crystal(cell, args.misset_deg, structure_factors=sf, n_cells=tuple(n_cells), shape=shape,
                                mosaic_spread_deg=spread, mosaic_domains=domains, mosaic_seed=max(args.mosaic_seed, 1))
    beam = Beam(wavelength_A=args.lambda_A, polarization_fraction=(args.kahn + 1.0) / 2.0)
    roi = None
    if args.roi is not None:
        x0, x1, y0, y1 = args.roi
        roi = (max(x0, 0), n_fast if x1 < 0 else x1, max(y0, 0), n_slow if y1 < 0 else y1)
    options = dict(oversample=oversample, fluence_per_m2=fluence, phi_start_deg=args.phi_deg,
                   osc_deg=phistep * phisteps, phi_steps=phisteps, polarization=not args.nopolar,
                   point_pixel=args.point_pixel, d_min_A=args.dmin_A if args.dmin_A > 0 else None, roi=roi,
                   fudge=args.fudge, flags=FLAG_OMEGA_ONCE | FLAG_POLAR_ONCE | FLAG_NANOBRAGG_BACKGROUND,
                   background=F_WATER**2 * R_E2_M2 * fluence * water_molecules(args.water_um),
                   check_reflections=False)
    noise_seed = args.seed if args.seed is not None else (now_seed if now_seed is not None else 0)
    return NanoBraggRun(args=args, crystal=crystal, beam=beam, detector=detector, sources=sources,
                        render_options=options, shape_basis=nanobragg_shape_basis(cell, args.misset_deg),
                        fluence=fluence, phi_deg=args.phi_deg, osc_deg=osc, phisteps=phisteps,
                        oversample=oversample, detsize_mm=(size_f, size_s), beam_mm=(xbeam, ybeam),
                        beam_normal_ratio=ratio,
                        noise_seed=int(noise_seed), warnings=tuple(notes))


def render_nanobragg(run: NanoBraggRun, backend: str | None = None) -> tuple[np.ndarray, int]:
    """Render a resolved run with nanoBragg's sources and switches.

    Parameters
    ----------
    run : NanoBraggRun
        From :func:`resolve_nanobragg`.
    backend : {"auto", "numba", "cuda"}, optional
        Replaces ``-backend``.

    Returns
    -------
    image : ndarray, shape (n_slow, n_fast), float32 — photons per pixel (nanoBragg's float image)
    steps : int
        Sources × mosaic domains × phi steps × oversample² (nanoBragg's divisor).
    """
    from dataclasses import replace

    from xrais.simulate.kernel import run_plan
    from xrais.simulate.render import render_plan

    plan = replace(render_plan(run.crystal, run.beam, run.detector, **run.render_options), sources=run.sources,
                   a0=run.shape_basis)
    if plan.rows.size == 0:
        return np.zeros(plan.image_shape, np.float32), plan.steps
    return run_plan(plan, backend or run.args.backend), plan.steps  # type: ignore[arg-type]
