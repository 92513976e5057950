"""Model-free image analysis: spots by DIALS's dispersion threshold, per-image resolution, hit calls.

The conventional reference beside the models (xrais.txt §3, Figure 8): it needs no model, it
labels real frames so that models can be checked on them, and it shows where a model and the
classical estimate disagree.

* :func:`find_spots` — the "dispersion" threshold of DIALS's spot finder (its default): a
  valid pixel is strong when, over the valid pixels of its (2k+1)×(2k+1) neighbourhood (n
  pixels, mean μ, variance σ²), the index of dispersion σ²/μ exceeds
  ``gain·(1 + sigma_background·√(2/(n−1)))`` and the pixel exceeds ``μ + sigma_strong·√(gain·μ)``;
  strong pixels are joined 8-connected and components of ``min_spot_size`` to
  ``max_spot_size`` pixels are spots. Masked pixels (gaps, bad, overloaded) never count,
  neither as strong pixels nor in a neighbourhood. Arrays in, arrays out.
* :func:`spot_d_spacings_A` — each spot's d from the image's own geometry (every panel,
  tilted detectors, assembled multi-panel images).
* :func:`estimate_resolution` — ``d_5pct_A`` and the DISTL "method 2" limit from spot counts
  in shells of equal reciprocal volume.
* :func:`call_hit` and :func:`analyze_image` — the per-frame answer: spots, resolution and hit.

Example
-------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> pixels = rng.poisson(2.0, size=(64, 64)).astype(np.int32)
>>> pixels[30:33, 40:43] += np.array([[20, 60, 20], [60, 200, 60], [20, 60, 20]])
>>> spots = find_spots(pixels)
>>> len(spots), [round(float(v), 1) for v in (spots.fast_px[0], spots.slow_px[0])]
(1, [41.5, 31.5])
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Sequence

import numpy as np

from xrais.errors import ConfigError, GeometryError

__all__ = [
    "SpotFinderParams",
    "Spots",
    "find_spots",
    "spot_d_spacings_A",
    "ResolutionEstimate",
    "estimate_resolution",
    "ice_ring_d_spacings_A",
    "on_ice_rings",
    "HitParams",
    "call_hit",
    "SpotAnalysis",
    "analyze_image",
    "SPOT_COLUMNS",
]

log = logging.getLogger(__name__)

#: The per-frame columns that spot analysis adds to a results row (``xrais infer``, ``xrais spots``).
SPOT_COLUMNS: tuple[str, ...] = ("n_spots", "n_spots_no_ice", "d_5pct_A", "spot_resolution_A", "hit")


@dataclass(frozen=True)
class SpotFinderParams:
    """Settings of the dispersion spot finder, named and defaulted as DIALS names them.

    Attributes
    ----------
    gain : float
        Detector gain (counts per photon); 1 for photon-counting detectors.
    kernel_size : int or (int, int)
        Half-size k of the local area, (fast, slow) when a pair: the area is (2k+1)² px
        (DIALS ``kernel_size = 3 3``: 7×7).
    sigma_background : float
        Standard deviations of the index of dispersion below which a pixel is background.
    sigma_strong : float
        Standard deviations above the local mean above which a pixel is strong.
    min_local : int
        Valid pixels needed in the local area; 0 or less needs the whole area.
    global_threshold : float
        A strong pixel must also exceed this count.
    min_spot_size, max_spot_size : int
        Pixels of a spot, inclusive.
    """

    gain: float = 1.0
    kernel_size: int | tuple[int, int] = 3
    sigma_background: float = 6.0
    sigma_strong: float = 3.0
    min_local: int = 2
    global_threshold: float = 0.0
    min_spot_size: int = 3
    max_spot_size: int = 1000

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> ConfigError:
            return ConfigError(f"spot finding: {name} must be {expected}, got {getattr(self, name)!r}")

        for name in ("gain", "sigma_background", "sigma_strong", "global_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise bad(name, "a finite number")
        if not self.gain > 0:
            raise bad("gain", "> 0")
        for name in ("sigma_background", "sigma_strong"):
            if getattr(self, name) < 0:
                raise bad(name, "≥ 0")
        k = self.kernel_size
        pair = (k, k) if isinstance(k, (int, np.integer)) and not isinstance(k, bool) else tuple(k) \
            if isinstance(k, (tuple, list)) else ()
        if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1
                                     for v in pair):
            raise bad("kernel_size", "an integer ≥ 1 or a pair of them (the half-size: 3 is 7×7)")
        object.__setattr__(self, "kernel_size", (int(pair[0]), int(pair[1])))
        area = (2 * pair[0] + 1) * (2 * pair[1] + 1)
        if not isinstance(self.min_local, (int, np.integer)) or isinstance(self.min_local, bool) \
                or self.min_local == 1 or self.min_local > area:
            raise bad("min_local", f"0 or less (the whole area), or 2 to {area} for this kernel_size")
        for name in ("min_spot_size", "max_spot_size"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise bad(name, "an integer ≥ 1")
        if self.max_spot_size < self.min_spot_size:
            raise bad("max_spot_size", f"≥ min_spot_size ({self.min_spot_size})")

    @property
    def min_count(self) -> int:
        """Valid pixels a local area needs (``min_local``, or the whole area when ≤ 0)."""
        kf, ks = self.kernel_size  # type: ignore[misc]
        return int(self.min_local) if self.min_local > 0 else (2 * kf + 1) * (2 * ks + 1)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}


@dataclass(frozen=True)
class Spots:
    """The spots of one image, one entry per spot (arrays of equal length).

    Attributes
    ----------
    fast_px, slow_px : ndarray of float
        Centroid in continuous pixel coordinates (pixel ``[s, f]`` spans ``[f, f+1) × [s, s+1)``),
        weighted by the counts above the local mean.
    intensity : ndarray of float
        Summed counts above the local mean.
    n_pixels : ndarray of int
    peak : ndarray of float
        Largest pixel value.
    bbox : ndarray of int, shape (n, 4)
        ``slow0, slow1, fast0, fast1`` (ends exclusive).
    d_A : ndarray of float
        d-spacing of the centroid (NaN until :func:`spot_d_spacings_A` fills it, or without geometry).
    n_strong_pixels : int
        Strong pixels before the spot-size filter.
    """

    fast_px: np.ndarray
    slow_px: np.ndarray
    intensity: np.ndarray
    n_pixels: np.ndarray
    peak: np.ndarray
    bbox: np.ndarray
    d_A: np.ndarray
    n_strong_pixels: int = 0

    def __len__(self) -> int:
        return int(self.fast_px.shape[0])

    def select(self, keep: np.ndarray) -> "Spots":
        """The spots where ``keep`` (bool array or indices) selects."""
        return replace(self, **{name: getattr(self, name)[keep] for name in _ARRAYS})

    def with_d(self, d_A: np.ndarray) -> "Spots":
        return replace(self, d_A=np.asarray(d_A, dtype=np.float64))

    def to_frame(self) -> Any:
        """A pandas DataFrame, one row per spot."""
        import pandas as pd

        return pd.DataFrame({"fast_px": self.fast_px, "slow_px": self.slow_px, "intensity": self.intensity,
                             "n_pixels": self.n_pixels, "peak": self.peak, "d_A": self.d_A,
                             "slow0": self.bbox[:, 0], "slow1": self.bbox[:, 1], "fast0": self.bbox[:, 2],
                             "fast1": self.bbox[:, 3]})


_ARRAYS = ("fast_px", "slow_px", "intensity", "n_pixels", "peak", "bbox", "d_A")


def _threads(n_threads: int | None) -> int:
    import numba

    return max(1, min(int(n_threads or numba.get_num_threads()), numba.config.NUMBA_NUM_THREADS))


def find_spots(pixels: np.ndarray, mask: np.ndarray | None = None, params: SpotFinderParams | None = None, *,
               n_threads: int | None = None, **settings: Any) -> Spots:
    """Find the spots of one image by the dispersion threshold.

    Parameters
    ----------
    pixels : ndarray, shape (n_slow, n_fast)
        Raw counts (any real dtype; not modified).
    mask : ndarray of bool, optional
        True for pixels that must not be used (gaps, bad, overloaded). NaN and ±inf pixels are
        masked too.
    params : SpotFinderParams, optional
        The settings; keyword ``settings`` (``sigma_strong=4``) change single ones.
    n_threads : int, optional
        Threads of the kernel (default: Numba's thread count).

    Returns
    -------
    Spots
        Without d-spacings (see :func:`spot_d_spacings_A`).

    Raises
    ------
    ConfigError
        A setting is out of range, or the kernel is larger than the image.
    ValueError
        ``pixels`` is not 2-D, or ``mask`` has another shape.
    """
    from xrais.infer import spot_kernel as kernel

    params = replace(params or SpotFinderParams(), **settings) if settings else (params or SpotFinderParams())
    image = np.asarray(pixels)
    if image.ndim != 2 or image.dtype.kind not in "uif":
        raise ValueError(f"find_spots: expected a 2-D array of counts, got shape {image.shape} dtype {image.dtype}")
    kf, ks = params.kernel_size  # type: ignore[misc]
    n_slow, n_fast = image.shape
    if 2 * kf + 1 > n_fast or 2 * ks + 1 > n_slow:
        raise ConfigError(f"spot finding: kernel_size {params.kernel_size} ({2 * kf + 1}×{2 * ks + 1} px) is larger "
                          f"than the image ({n_fast}×{n_slow} px)")
    invalid = np.zeros(image.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if invalid.shape != image.shape:
        raise ValueError(f"find_spots: mask shape {invalid.shape} differs from the image's {image.shape}")
    if image.dtype.kind == "f":
        finite = np.isfinite(image)
        if not finite.all():
            invalid = invalid | ~finite
    if image.dtype == np.float16 or image.dtype.kind == "u" and image.dtype.itemsize == 8:
        image = image.astype(np.float64)
    image = np.ascontiguousarray(image)
    invalid = np.ascontiguousarray(invalid)
    threads = _threads(n_threads)
    strong = np.empty(image.shape, dtype=np.uint8)
    row_counts = np.empty(n_slow, dtype=np.int64)
    with _numba_threads(threads):
        kernel.strong_pixels(image, invalid, kf, ks, float(params.gain), float(params.sigma_background),
                             float(params.sigma_strong), int(params.min_count), float(params.global_threshold),
                             min(n_slow, 4 * threads), strong, row_counts)
        row_start = np.zeros(n_slow + 1, dtype=np.int64)
        np.cumsum(row_counts, out=row_start[1:])
        n = int(row_start[-1])
        rows = np.empty(n, dtype=np.int64)
        cols = np.empty(n, dtype=np.int64)
        values = np.empty(n, dtype=np.float64)
        means = np.empty(n, dtype=np.float64)
        kernel.strong_pixel_list(image, invalid, kf, ks, strong, row_start, rows, cols, values, means)
    labels, n_components = kernel.label_spots(rows, cols, row_start)
    fast, slow, intensity, n_pixels, peak, bbox = kernel.spot_properties(labels, n_components, rows, cols,
                                                                        values, means)
    keep = (n_pixels >= params.min_spot_size) & (n_pixels <= params.max_spot_size)
    return Spots(fast_px=fast[keep], slow_px=slow[keep], intensity=intensity[keep], n_pixels=n_pixels[keep],
                 peak=peak[keep], bbox=bbox[keep], d_A=np.full(int(keep.sum()), np.nan), n_strong_pixels=n)


class _numba_threads:
    """Run Numba's parallel kernels on ``n`` threads inside the block."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self) -> None:
        import numba

        self.before = numba.get_num_threads()
        numba.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        import numba

        numba.set_num_threads(self.before)


# --- geometry ---------------------------------------------------------------------------------

def missing_geometry(image: Any) -> list[str]:
    """The header fields a d-spacing needs that ``image`` lacks (empty when its geometry is known)."""
    if bool(image.header.get("geometry_from_header", True)):
        return []
    known = image.header
    return [name for name in ("distance_mm", "wavelength_A") if name not in known] or ["distance_mm",
                                                                                       "wavelength_A"]


def spot_d_spacings_A(image: Any, fast_px: np.ndarray, slow_px: np.ndarray) -> np.ndarray:
    """d-spacing (Å) at continuous pixel coordinates of ``image.pixels``, from the image's geometry.

    A detector whose panels lie on one flat grid (every single-panel detector, tilted ones
    included, and the modules of a PILATUS, EIGER or JUNGFRAU) is used as it is; panels
    resampled onto one grid normal to the beam (CSPAD and other assembled images) use that
    grid: its pitch, its distance and the beam centre of the image.

    Parameters
    ----------
    image : DiffractionImage
    fast_px, slow_px : ndarray

    Returns
    -------
    ndarray of float
        NaN everywhere when the header gives no geometry (see :func:`missing_geometry`).
    """
    fast_px = np.asarray(fast_px, dtype=np.float64)
    slow_px = np.asarray(slow_px, dtype=np.float64)
    if missing_geometry(image):
        return np.full(fast_px.shape, np.nan)
    detector, beam = image.detector, image.beam
    if tuple(detector.array_shape) == tuple(image.pixels.shape) and detector.is_coplanar_grid():
        return np.asarray(detector.resolution_at_pixel_A(beam, fast_px, slow_px), dtype=np.float64)
    pitch = float(image.header.get("assembled_pixel_size_mm") or detector.pixel_size_mm[0])
    distance = float(image.header.get("distance_mm") or detector.distance_mm)
    bf, bs = image.beam_center_px
    radius = pitch * np.hypot(fast_px - bf, slow_px - bs)
    theta = 0.5 * np.arctan2(radius, distance)
    with np.errstate(divide="ignore"):
        return beam.wavelength_A / (2.0 * np.sin(theta))


# --- ice rings --------------------------------------------------------------------------------

#: Hexagonal ice Ih, as DIALS's ice-ring filter takes it: cell (Å, °) and space group.
ICE_CELL = (4.498, 4.498, 7.338, 90.0, 90.0, 120.0)
ICE_SPACE_GROUP = "P 63/m m c"
#: Half-width of an ice-ring band in d*² (Å⁻²), as DIALS's ``ice_rings.width``.
ICE_RING_WIDTH_D_STAR_SQ = 0.002


@functools.lru_cache(maxsize=4)
def ice_ring_d_spacings_A(d_min_A: float = 1.0) -> tuple[float, ...]:
    """d-spacings (Å) of the allowed reflections of ice Ih down to ``d_min_A``, unique, descending."""
    import gemmi

    cell = gemmi.UnitCell(*ICE_CELL)
    ops = gemmi.SpaceGroup(ICE_SPACE_GROUP).operations()
    top = int(math.ceil(max(ICE_CELL[:3]) / d_min_A)) + 1
    d = set()
    for h in range(-top, top + 1):
        for k in range(-top, top + 1):
            for l in range(-top, top + 1):
                if (h, k, l) == (0, 0, 0) or ops.is_systematically_absent([h, k, l]):
                    continue
                dh = cell.calculate_d([h, k, l])
                if dh >= d_min_A:
                    d.add(round(dh, 4))
    return tuple(sorted(d, reverse=True))


def on_ice_rings(d_A: np.ndarray, width_d_star_sq: float = ICE_RING_WIDTH_D_STAR_SQ) -> np.ndarray:
    """True for d-spacings within ``width_d_star_sq`` (in d*², Å⁻²) of an ice Ih ring."""
    d = np.asarray(d_A, dtype=np.float64)
    out = np.zeros(d.shape, dtype=bool)
    finite = np.isfinite(d) & (d > 0)
    if not finite.any():
        return out
    rings = 1.0 / np.square(np.asarray(ice_ring_d_spacings_A(max(0.5, float(np.min(d[finite])) * 0.95))))
    if rings.size == 0:  # every spot at lower resolution than the first ring
        return out
    ds2 = 1.0 / np.square(d[finite])
    near = np.abs(ds2[:, None] - rings[None, :]).min(axis=1) <= width_d_star_sq
    out[finite] = near
    return out


# --- resolution -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ResolutionEstimate:
    """Per-image resolution from spot positions.

    Attributes
    ----------
    d_5pct_A : float
        The d-spacing that 5 % of the spots exceed in resolution (the 5th percentile of d).
    spot_resolution_A : float
        The DISTL method-2 limit (see :func:`estimate_resolution`); NaN with too few spots.
    n_spots : int
        Spots the estimate used.
    shells : list of (d_max_A, d_min_A, count)
        The shells of method 2.
    """

    d_5pct_A: float
    spot_resolution_A: float
    n_spots: int
    shells: list[tuple[float, float, int]] = field(default_factory=list)


#: Spots below which method 2 gives no limit (its shells would be nearly empty).
MIN_SPOTS_FOR_LIMIT = 20


def estimate_resolution(d_A: np.ndarray, *, exclude: np.ndarray | None = None, mu: float = 0.15,
                        min_spots: int = MIN_SPOTS_FOR_LIMIT) -> ResolutionEstimate:
    """Resolution of one image from the d-spacings of its spots.

    ``d_5pct_A`` is the 5th percentile of the spots' d. ``spot_resolution_A`` is method 2 of
    DISTL (Zhang, Sauter, van den Bedem, Snell & Deacon, J. Appl. Cryst. 39 (2006) 112–119,
    §2.4.4), as ``dials.spot_counts_per_image`` reports it (``d_min_distl_method_2``): the
    spots are counted in shells of equal reciprocal volume (equal steps of d*³), the lowest
    shell holding max(25, 5 %) of the spots (at most 25 %) and 20 to 40 shells in all; with t₀
    the mean count of the first two shells, the limit is the high-resolution edge of the first
    shell that, with the next, holds fewer than ``mu``·t₀ spots (μ = 0.15); with no such pair
    it is the edge of the last shell but one.

    Parameters
    ----------
    d_A : ndarray
        d-spacings of the spots (NaN and inf are left out).
    exclude : ndarray of bool, optional
        Spots to leave out (those on ice rings, say).
    mu : float
    min_spots : int
        With fewer usable spots, ``spot_resolution_A`` is NaN.
    """
    d = np.asarray(d_A, dtype=np.float64)
    use = np.isfinite(d) & (d > 0)
    if exclude is not None:
        use &= ~np.asarray(exclude, dtype=bool)
    d = d[use]
    if d.size == 0:
        return ResolutionEstimate(math.nan, math.nan, 0)
    d_5pct = float(np.percentile(d, 5.0))
    if d.size < min_spots:
        return ResolutionEstimate(d_5pct, math.nan, int(d.size))
    shells = _equal_volume_shells(d)
    counts = [c for _, _, c in shells]
    t0 = 0.5 * (counts[0] + counts[1])
    limit_index = len(shells) - 2
    for i in range(len(shells) - 1):
        if counts[i] < mu * t0 and counts[i + 1] < mu * t0:
            limit_index = i
            break
    return ResolutionEstimate(d_5pct, float(shells[limit_index][1]), int(d.size), shells)


def _equal_volume_shells(d: np.ndarray, target_low: int = 25, min_shells: int = 20,
                         max_shells: int = 40) -> list[tuple[float, float, int]]:
    """Shells of equal d*³ steps from the lowest- to the highest-resolution spot: (d_max, d_min, count)."""
    unique = np.unique(d)[::-1]                  # descending d, ascending d*³
    ds3 = 1.0 / unique ** 3
    low = int(math.ceil(min(max(target_low, 0.05 * unique.size), 0.25 * unique.size)))
    low = min(max(low, 1), unique.size - 1)
    span = ds3[-1] - ds3[0]
    step = ds3[low] - ds3[0]
    n_shells = int(math.ceil(span / step)) if step > 0 else min_shells
    n_shells = min(max(n_shells, min_shells), max_shells)
    edges = ds3[0] + span * np.arange(n_shells + 1) / n_shells
    all_ds3 = 1.0 / d ** 3
    idx = np.clip(np.searchsorted(edges, all_ds3, side="right") - 1, 0, n_shells - 1)
    counts = np.bincount(idx, minlength=n_shells)
    d_edges = edges ** (-1.0 / 3.0)
    return [(float(d_edges[i]), float(d_edges[i + 1]), int(counts[i])) for i in range(n_shells)]


# --- hits -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HitParams:
    """When a frame is a hit.

    Attributes
    ----------
    min_spots : int
        Spots a hit needs (CrystFEL's ``--min-peaks`` and Cheetah's hit finder count peaks
        the same way).
    exclude_ice_rings : bool
        Leave spots on ice rings out of the count (and of the resolution estimate).
    d_max_A : float or None
        Leave out spots at lower resolution than this (a beamstop shadow's edge, say).
    """

    min_spots: int = 20
    exclude_ice_rings: bool = True
    d_max_A: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.min_spots, (int, np.integer)) or isinstance(self.min_spots, bool) \
                or self.min_spots < 1:
            raise ConfigError(f"hit finding: min_spots must be an integer ≥ 1, got {self.min_spots!r}")
        if self.d_max_A is not None and not (isinstance(self.d_max_A, (int, float)) and self.d_max_A > 0):
            raise ConfigError(f"hit finding: d_max_A must be > 0 Å, got {self.d_max_A!r}")


def call_hit(n_spots: int, params: HitParams | None = None) -> bool:
    """A frame is a hit when at least ``params.min_spots`` spots count."""
    return int(n_spots) >= (params or HitParams()).min_spots


@dataclass(frozen=True)
class SpotAnalysis:
    """The model-free answer for one frame.

    Attributes
    ----------
    spots : Spots
        With d-spacings where the geometry is known.
    ice : ndarray of bool
        Spots on ice rings.
    counted : ndarray of bool
        Spots that count for the hit call and the resolution (not on ice when excluded,
        inside ``d_max_A``).
    resolution : ResolutionEstimate
    hit : bool
    missing_geometry : list of str
        Header fields that were missing (d columns are then NaN).
    seconds : float
    """

    spots: Spots
    ice: np.ndarray
    counted: np.ndarray
    resolution: ResolutionEstimate
    hit: bool
    missing_geometry: list[str]
    seconds: float = 0.0

    def row(self) -> dict[str, Any]:
        """The :data:`SPOT_COLUMNS` of a results row."""
        return {"n_spots": len(self.spots), "n_spots_no_ice": int((~self.ice).sum()),
                "d_5pct_A": self.resolution.d_5pct_A, "spot_resolution_A": self.resolution.spot_resolution_A,
                "hit": int(self.hit)}


def analyze_image(image: Any, params: SpotFinderParams | None = None, hit: HitParams | None = None, *,
                  n_threads: int | None = None) -> SpotAnalysis:
    """Spots, their d-spacings, the resolution and the hit call of one frame.

    Parameters
    ----------
    image : DiffractionImage
        Its mask is obeyed; its geometry gives the d-spacings. Without geometry in the header
        the spots are still found, the d columns are NaN and a warning names the missing fields.
    params : SpotFinderParams, optional
    hit : HitParams, optional
    n_threads : int, optional
    """
    import time

    t0 = time.perf_counter()
    hit = hit or HitParams()
    spots = find_spots(image.pixels, image.mask, params, n_threads=n_threads)
    missing = missing_geometry(image)
    if missing:
        log.warning("%s: the header gives no %s; spots are found but their d-spacings are left empty",
                    image.label, " or ".join(missing))
    else:
        try:
            spots = spots.with_d(spot_d_spacings_A(image, spots.fast_px, spots.slow_px))
        except GeometryError as exc:
            log.warning("%s: no d-spacings for the spots (%s)", image.label, exc)
            missing = ["usable geometry"]
    ice = on_ice_rings(spots.d_A)
    counted = ~ice if hit.exclude_ice_rings else np.ones(len(spots), dtype=bool)
    if hit.d_max_A is not None:
        counted &= ~(spots.d_A > hit.d_max_A)
    resolution = estimate_resolution(spots.d_A, exclude=~counted)
    return SpotAnalysis(spots=spots, ice=ice, counted=counted, resolution=resolution,
                        hit=call_hit(int(counted.sum()), hit), missing_geometry=missing,
                        seconds=time.perf_counter() - t0)


def parse_settings(pairs: Sequence[str]) -> dict[str, Any]:
    """``name=value`` strings (from a command line) as SpotFinderParams/HitParams settings."""
    out: dict[str, Any] = {}
    names = {f.name: f for f in fields(SpotFinderParams)} | {f.name: f for f in fields(HitParams)}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in names:
            from xrais.config_files import unknown_name_message

            raise ConfigError(unknown_name_message("spot-finding setting", name, sorted(names))
                              if sep else f"spot-finding setting {pair!r}: expected NAME=VALUE")
        out[name] = _parse_value(name, text.strip())
    return out


def split_settings(settings: dict[str, Any]) -> tuple[SpotFinderParams, HitParams]:
    """(SpotFinderParams, HitParams) from one dict of settings by name.

    Raises
    ------
    ConfigError
        An unknown name (with the nearest valid one) or a value out of range.
    """
    finder = {f.name for f in fields(SpotFinderParams)}
    hit = {f.name for f in fields(HitParams)}
    for name in settings:
        if name not in finder | hit:
            from xrais.config_files import unknown_name_message

            raise ConfigError(unknown_name_message("spot-finding setting", name, sorted(finder | hit)))
    try:
        return (SpotFinderParams(**{k: v for k, v in settings.items() if k in finder}),
                HitParams(**{k: v for k, v in settings.items() if k in hit}))
    except TypeError as exc:
        raise ConfigError(f"spot-finding settings: {exc}") from None


def _parse_value(name: str, text: str) -> Any:
    try:
        if name == "kernel_size":
            parts = [int(v) for v in text.replace(",", " ").split()]
            return parts[0] if len(parts) == 1 else tuple(parts)
        if name == "exclude_ice_rings":
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        if name == "d_max_A":
            return None if text.lower() in ("none", "") else float(text)
        if name in ("min_local", "min_spot_size", "max_spot_size", "min_spots"):
            return int(text)
        return float(text)
    except ValueError:
        raise ConfigError(f"spot-finding setting {name}: cannot read the value {text!r}") from None
