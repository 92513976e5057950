"""Detector effects: turn a noiseless photon image into a frame as a real detector writes it.

The input is the simulator's expected photon count per pixel, shape (n_slow, n_fast),
indexed ``[slow, fast]``, with 0 in the module gaps. The steps, in order, are

1. flicker: the whole image × (1 + flicker·g), g ~ N(0, 1) drawn once per image;
2. calibration: each pixel × (1 + calibration·g′[s, f]), where g′ comes from its own
   generator seeded with ``calibration_seed``, so it is the same on every image of a detector;
3. beam-stop shadow: × ``beamstop_transmission`` inside a circle (radius drawn uniformly from
   ``beamstop_radius_mm_range``, XRAIS Appendix A1.2: "< 15 mm") centred on the beam centre,
   plus, optionally, an arm from the circle to the detector edge in a random direction;
4. point spread: a separable Gaussian of full width ``psf_fwhm_px`` pixels;
5. Poisson photon noise (a Gaussian of the same mean and variance from 10⁷ photons up);
6. ADU = photons·gain + ADC offset + read noise (Gaussian, σ in ADU);
7. saturation at the overload value, then counts below the trusted minimum raised to it
   (a counting detector reports no negative counts);
8. 0–5 hot pixels at 2¹⁶ and up to 124 dead pixels at 0 (XRAIS Appendix A1.2), on module pixels;
9. module gaps set to ``gap_value`` (−1 in a PILATUS miniCBF, as the CBF reader expects).

Steps 1, 2, 5 and 6 follow noisify.c of the nanoBragg distribution (PHYSICS.md §8). All
random choices of an image come from the one ``np.random.Generator`` passed in; the
geometric ones (flicker factor, beam stop, hot and dead pixels) are drawn first, so they do
not depend on the noise settings. The per-pixel steps run as one parallel Numba pass whose
noise comes from one SplitMix64 stream per block of rows, each seeded from that generator:
a frame depends on the generator only, not on the number of threads (see
:func:`apply_detector_effects`). Pixel coordinates are continuous ``(fast, slow)`` pairs with
the centre of pixel ``[s, f]`` at ``(f + 0.5, s + 0.5)``; lengths are in mm, counts in ADU.

Examples
--------
>>> import numpy as np
>>> from xrais.geometry import Detector
>>> from xrais.simulate.detector_effects import apply_detector_effects  # (the kernels' module, under pytest too)
>>> det = Detector.flat(image_size=(64, 48), pixel_size_mm=0.172, distance_mm=200.0,
...                     beam_center_px=(32.0, 24.0))
>>> photons = np.full(det.array_shape, 100.0, dtype=np.float32)
>>> frame, record = apply_detector_effects(photons, det, (32.0, 24.0), np.random.default_rng(7))
>>> frame.shape, frame.dtype, int(frame[24, 32])
((48, 64), dtype('int32'), 0)
>>> 1.0 <= record.beamstop_radius_mm <= 15.0 and record.labels()["n_hot_pixels"] <= 5
True
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numba
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

import xrais.numba_cache  # noqa: F401  (kernel caches follow every kernel source)
from xrais.errors import ConfigError
from xrais.geometry import Detector

__all__ = ["DetectorEffectsConfig", "EffectsRecord", "apply_detector_effects", "beamstop_mask"]

#: Poisson means at or above this many photons are drawn from N(λ, λ) instead.
POISSON_GAUSSIAN_THRESHOLD = 1e7
_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
_INT32 = np.iinfo(np.int32)
_NO_PATTERN = np.zeros((1, 1), dtype=np.float32)  # the calibration argument when there is none
_NO_PATTERN.flags.writeable = False  # read-only like a cached pattern: one kernel signature


class DetectorEffectsConfig(BaseModel):
    """What a detector does to the photons (defaults: XRAIS Appendix A1.2, noiseless electronics)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    poisson: bool = Field(True, description="draw Poisson photon counts (False: keep the expected counts)")
    gain_adu_per_photon: float = Field(1.0, gt=0.0, le=1e6, description="ADU per detected photon")
    adc_offset_adu: float = Field(0.0, ge=-1e9, le=1e9, description="constant added to every pixel, ADU")
    read_noise_adu: float = Field(0.0, ge=0.0, le=1e6, description="Gaussian readout noise σ per pixel, ADU")
    calibration_noise: float = Field(
        0.0, ge=0.0, le=1.0, description="fractional σ of a fixed per-pixel gain error (noisify -calibration)")
    calibration_seed: int = Field(
        123456789, ge=0, description="seed of the per-pixel gain errors; fixed per detector (noisify default)")
    flicker_noise: float = Field(
        0.0, ge=0.0, le=1.0, description="fractional σ of a per-image intensity error (noisify -flicker)")
    psf_fwhm_px: float = Field(0.0, ge=0.0, le=50.0, description="Gaussian point spread FWHM in pixels; 0: off")
    beamstop_radius_mm_range: tuple[float, float] | None = Field(
        (1.0, 15.0), description="(low, high) of the uniformly drawn beam-stop radius in mm; None: no beam stop")
    beamstop_arm: bool = Field(False, description="add an arm from the beam stop to the detector edge")
    beamstop_transmission: float = Field(0.0, ge=0.0, le=1.0, description="fraction of photons through the stop")
    hot_pixels_range: tuple[int, int] = Field((0, 5), description="(low, high) of the hot-pixel count")
    hot_pixel_value: float = Field(65536.0, allow_inf_nan=False, description="value of a hot pixel, ADU (2¹⁶)")
    dead_pixels_range: tuple[int, int] = Field((0, 124), description="(low, high) of the dead-pixel count (value 0)")
    overload_value: float | None = Field(
        None, allow_inf_nan=False,
        description="counts above saturate at this value, ADU; None: detector trusted maximum + 1")
    gap_value: float = Field(-1.0, allow_inf_nan=False, description="value written into module gaps (PILATUS −1)")
    integer_output: bool = Field(True, description="round to int32 like a counting detector (False: float32)")

    @model_validator(mode="after")
    def _check_ranges(self) -> "DetectorEffectsConfig":
        r = self.beamstop_radius_mm_range
        if r is not None:
            lo, hi = r
            if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo <= hi <= 50.0):
                raise ValueError(
                    f"beamstop_radius_mm_range: expected 0 ≤ low ≤ high ≤ 50 mm, got {r}")
        elif self.beamstop_arm:
            raise ValueError("beamstop_arm: an arm needs a beam stop (beamstop_radius_mm_range is None)")
        for name in ("hot_pixels_range", "dead_pixels_range"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi <= 1_000_000:
                raise ValueError(f"{name}: expected 0 ≤ low ≤ high ≤ 1000000 pixels, got {(lo, hi)}")
        return self


@dataclass(frozen=True, eq=False)
class EffectsRecord:
    """What :func:`apply_detector_effects` did to one image, for its label columns.

    Attributes
    ----------
    beamstop_radius_mm : float
        Radius of the beam-stop circle in mm (0.0 without a beam stop).
    beamstop_center_px : (float, float)
        (fast, slow) centre of the beam stop: the beam centre.
    beamstop_arm_angle_deg : float
        Direction of the arm in the (fast, slow) plane, degrees from +fast towards +slow; nan without an arm.
    hot_pixels : ndarray, shape (k, 2), int64
        (fast, slow) index of each hot pixel.
    dead_pixels : ndarray, shape (k, 2), int64
        (fast, slow) index of each dead pixel.
    flicker_factor : float
        The factor the whole image was multiplied by (1.0 without flicker).
    n_saturated : int
        Module pixels at or above the overload value before hot pixels were set.
    """

    beamstop_radius_mm: float
    beamstop_center_px: tuple[float, float]
    beamstop_arm_angle_deg: float
    hot_pixels: np.ndarray
    dead_pixels: np.ndarray
    flicker_factor: float
    n_saturated: int

    def labels(self) -> dict[str, float | int]:
        """Flat scalar label columns (positions of hot and dead pixels are not included)."""
        return {
            "beamstop_radius_mm": float(self.beamstop_radius_mm),
            "beamstop_center_fast_px": float(self.beamstop_center_px[0]),
            "beamstop_center_slow_px": float(self.beamstop_center_px[1]),
            "beamstop_arm_angle_deg": float(self.beamstop_arm_angle_deg),
            "n_hot_pixels": int(len(self.hot_pixels)),
            "n_dead_pixels": int(len(self.dead_pixels)),
            "flicker_factor": float(self.flicker_factor),
            "n_saturated": int(self.n_saturated),
        }

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EffectsRecord):
            return NotImplemented
        mine, theirs = self.labels(), other.labels()
        return (
            all(_same(mine[k], theirs[k]) for k in mine)
            and np.array_equal(self.hot_pixels, other.hot_pixels)
            and np.array_equal(self.dead_pixels, other.dead_pixels)
        )

    __hash__ = None  # type: ignore[assignment]


def _same(a: float | int, b: float | int) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def beamstop_mask(
    shape: tuple[int, int],
    beam_center_px: tuple[float, float],
    radius_px: float | tuple[float, float],
    arm_angle_deg: float | None = None,
    arm_width_px: float | None = None,
) -> np.ndarray:
    """Pixels shadowed by a round beam stop centred on the beam, and by its arm.

    Parameters
    ----------
    shape : (int, int)
        (n_slow, n_fast) of the image.
    beam_center_px : (float, float)
        (fast, slow) centre of the stop in continuous pixel coordinates.
    radius_px : float or (float, float)
        Radius in pixels; a (fast, slow) pair for non-square pixels (an ellipse in pixels).
    arm_angle_deg : float, optional
        Direction of the arm, degrees from +fast towards +slow; None: no arm. The arm runs from
        the centre to beyond the edge of the image.
    arm_width_px : float, optional
        Full width of the arm in pixels; the mean radius when omitted.

    Returns
    -------
    ndarray of bool, shape (n_slow, n_fast)
        True where a pixel centre lies inside the circle or the arm.

    Examples
    --------
    >>> m = beamstop_mask((5, 7), (3.5, 2.5), 1.0)
    >>> int(m.sum()), bool(m[2, 3])
    (5, True)
    """
    n_slow, n_fast = (int(v) for v in shape)
    if np.isscalar(radius_px):
        rf = rs = float(radius_px)  # type: ignore[arg-type]
    else:
        rf, rs = (float(v) for v in radius_px)  # type: ignore[union-attr]
    if not (rf >= 0.0 and rs >= 0.0):
        raise ConfigError(f"beam stop: expected a radius ≥ 0 px, got {radius_px!r}")
    bf, bs = (float(v) for v in beam_center_px)
    df = np.arange(n_fast, dtype=np.float64)[None, :] + 0.5 - bf
    ds = np.arange(n_slow, dtype=np.float64)[:, None] + 0.5 - bs
    mask = np.zeros((n_slow, n_fast), dtype=bool)
    if rf > 0.0 and rs > 0.0:
        # only the bounding box of the ellipse needs the distance test
        f0, f1 = max(0, math.floor(bf - rf)), min(n_fast, math.ceil(bf + rf) + 1)
        s0, s1 = max(0, math.floor(bs - rs)), min(n_slow, math.ceil(bs + rs) + 1)
        if f0 < f1 and s0 < s1:
            mask[s0:s1, f0:f1] = (df[:, f0:f1] / rf) ** 2 + (ds[s0:s1, :] / rs) ** 2 <= 1.0
    if arm_angle_deg is not None:
        width = 0.5 * (rf + rs) if arm_width_px is None else float(arm_width_px)
        if not width >= 0.0:
            raise ConfigError(f"beam-stop arm: expected a width ≥ 0 px, got {arm_width_px!r}")
        a = math.radians(float(arm_angle_deg))
        uf, us = math.cos(a), math.sin(a)
        along = df * uf + ds * us
        across = np.abs(ds * uf - df * us)
        mask |= (along >= 0.0) & (across <= 0.5 * width)
    return mask


def _gaussian_blur(image: np.ndarray, fwhm_px: float) -> np.ndarray:
    """Separable Gaussian blur; light spread past the image edge is lost, as off a real sensor."""
    sigma = fwhm_px / _FWHM_PER_SIGMA
    half = max(1, math.ceil(4.0 * sigma))
    x = np.arange(-half, half + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    out = image
    for axis in (1, 0):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (half, half)
        padded = np.pad(out, pad)
        n = out.shape[axis]
        acc = np.zeros_like(out)
        for i, w in enumerate(kernel):  # correlation with a symmetric kernel = convolution
            acc += w * (padded[:, i : i + n] if axis == 1 else padded[i : i + n, :])
        out = acc
    return out


def _gap_mask(detector: Detector) -> tuple[np.ndarray, int]:
    """:meth:`Detector.gap_mask` (read-only) and the number of module pixels, kept per panel layout."""
    layout = tuple((*p.array_offset_px, *p.image_size) for p in detector.panels)
    return _layout_gaps(tuple(detector.array_shape), layout)


@functools.lru_cache(maxsize=4)
def _layout_gaps(shape: tuple[int, int], layout: tuple[tuple[int, int, int, int], ...]) -> tuple[np.ndarray, int]:
    gaps = np.ones(shape, dtype=bool)
    for f0, s0, nf, ns in layout:
        gaps[s0 : s0 + ns, f0 : f0 + nf] = False
    gaps.flags.writeable = False
    return gaps, int(gaps.size - np.count_nonzero(gaps))


@functools.lru_cache(maxsize=2)
def _calibration_pattern(seed: int, shape: tuple[int, int]) -> np.ndarray:
    """The fixed per-pixel g′ ~ N(0, 1) of a detector (float32, read-only), drawn once per (seed, shape)."""
    g = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    g.flags.writeable = False
    return g


def _pick_pixels(gaps: np.ndarray, n_valid: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` distinct flat indices of module pixels (not ``gaps``), uniform without replacement.

    Candidates are drawn uniformly over the whole array; gap pixels and repeats are rejected, so the
    kept ones, in order of first appearance, are a uniform ordered sample of the module pixels. When
    ``k`` is more than half of them, the module pixels are listed and chosen from instead.
    """
    k = min(k, n_valid)
    if k == 0:
        return np.empty(0, dtype=np.int64)
    flat = gaps.reshape(-1)
    if 2 * k > n_valid:
        valid = np.flatnonzero(~flat)
        return np.asarray(valid[rng.choice(valid.size, size=k, replace=False)], dtype=np.int64)
    picked = np.empty(0, dtype=np.int64)
    while picked.size < k:
        batch = int((k - picked.size) * 1.25 * flat.size / n_valid) + 8
        candidates = rng.integers(0, flat.size, size=batch, dtype=np.int64)
        both = np.concatenate([picked, candidates[~flat[candidates]]])
        first = np.sort(np.unique(both, return_index=True)[1])  # the picked ones come first and stay
        picked = both[first][:k]
    return picked


# --- random numbers in the kernel: one SplitMix64 stream per block of rows -------------------
#: Pixels per random-number block; a block is whole rows, so the blocks depend on the image shape only.
_BLOCK_PX = 1 << 15
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S11, _S27, _S30, _S31 = np.uint64(11), np.uint64(27), np.uint64(30), np.uint64(31)
_UNIT = 2.0**-53


@numba.njit(cache=True)
def _uniform(state):
    """SplitMix64 (Steele, Lea & Flood 2014): the next state and a uniform deviate in [0, 1), 53 bits."""
    state = state + _GOLDEN
    z = (state ^ (state >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    z = z ^ (z >> _S31)
    return state, float(z >> _S11) * _UNIT


@numba.njit(cache=True, error_model="numpy")
def _normal(state):
    """The next state and a standard normal deviate (Box–Muller, the cosine of the pair)."""
    state, u1 = _uniform(state)
    state, u2 = _uniform(state)
    return state, math.sqrt(-2.0 * math.log(1.0 - u1)) * math.cos(2.0 * math.pi * u2)


@numba.njit(cache=True, error_model="numpy")
def _poisson_ptrs(lam, state):
    """Poisson deviate for λ ≥ 10 (used from 256): Hörmann's transformed rejection (PTRS), as numpy's."""
    b = 0.931 + 2.53 * math.sqrt(lam)
    a = -0.059 + 0.02483 * b
    vr = 0.9277 - 3.6224 / (b - 2.0)
    while True:
        state, u = _uniform(state)
        state, v = _uniform(state)
        u -= 0.5
        us = 0.5 - abs(u)
        k = np.floor((2.0 * a / us + b) * u + lam + 0.43)
        if us >= 0.07 and v <= vr:
            return state, k
        if k < 0.0 or (us < 0.013 and v > us):
            continue
        inv_alpha = 1.1239 + 1.1328 / (b - 3.4)
        if (math.log(v) + math.log(inv_alpha) - math.log(a / (us * us) + b)
                <= -lam + k * math.log(lam) - math.lgamma(k + 1.0)):
            return state, k


#: Poisson tables (see :func:`_frame_kernel`): means j/8 below 64 (table j), then the integers below 256.
_FINE_END, _FINE_STEPS, _TABLE_END = 64, 8, 256
_TAIL = 2.0**-64  # probability left out at either end of a table


@functools.lru_cache(maxsize=1)
def _poisson_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Alias tables (Walker 1977, Vose 1991) of Poisson(μ) for μ = j/8 below 64, then μ = 64, 65, …, 255.

    Each table covers the k from its first to its last kept value; the values left out at the two
    ends have probability < 2⁻⁶⁴ each, and the rest is renormalised.

    Returns
    -------
    keep : ndarray of float64
        Per table and index i: the probability of keeping i (else its alias) once i is drawn uniformly.
    alias : ndarray of int64
        Per table and index: the index that stands in for it.
    offsets : ndarray, shape (n_tables, 3), int64
        Per table: start of its entries, their number, the k of its index 0.
    """
    means = np.concatenate([np.arange(_FINE_END * _FINE_STEPS) / _FINE_STEPS,
                            np.arange(_FINE_END, _TABLE_END, dtype=np.float64)])
    k_max = int(_TABLE_END + 15 * math.sqrt(_TABLE_END) + 60)
    k = np.arange(k_max + 1, dtype=np.float64)
    log_factorial = np.array([math.lgamma(v + 1.0) for v in k])
    pmfs = []
    offsets = np.zeros((means.size, 3), dtype=np.int64)
    start = 0
    for j, mu in enumerate(means):
        if mu == 0.0:
            pmf, lo = np.ones(1), 0
        else:
            pmf = np.exp(-mu + k * math.log(mu) - log_factorial)
            lo = int(np.searchsorted(np.cumsum(pmf), _TAIL))  # P(X < lo) < 2⁻⁶⁴
            hi = int(np.nonzero(np.cumsum(pmf[::-1])[::-1] >= _TAIL)[0][-1])  # P(X > hi) < 2⁻⁶⁴
            pmf = pmf[lo : hi + 1] / pmf[lo : hi + 1].sum()
        offsets[j] = (start, pmf.size, lo)
        start += pmf.size
        pmfs.append(pmf)
    keep, alias = _alias_tables(np.concatenate(pmfs), offsets)
    return keep, alias, offsets


@numba.njit(cache=True)
def _alias_tables(pmf, offsets):
    """Vose's alias tables of each distribution ``pmf[start : start + n]`` of ``offsets``."""
    keep = np.ones(pmf.size)
    alias = np.zeros(pmf.size, dtype=np.int64)
    for t in range(offsets.shape[0]):
        start, n = offsets[t, 0], offsets[t, 1]
        scaled = pmf[start : start + n] * n
        small = np.empty(n, dtype=np.int64)
        large = np.empty(n, dtype=np.int64)
        n_small = n_large = 0
        for i in range(n):
            if scaled[i] < 1.0:
                small[n_small] = i
                n_small += 1
            else:
                large[n_large] = i
                n_large += 1
        while n_small > 0 and n_large > 0:
            n_small -= 1
            lo = small[n_small]
            hi = large[n_large - 1]
            keep[start + lo] = scaled[lo]
            alias[start + lo] = hi
            scaled[hi] = (scaled[hi] + scaled[lo]) - 1.0
            if scaled[hi] < 1.0:
                n_large -= 1
                small[n_small] = hi
                n_small += 1
        for i in range(n_large):  # what is left has probability 1 up to rounding
            keep[start + large[i]] = 1.0
        for i in range(n_small):
            keep[start + small[i]] = 1.0
    return keep, alias


@numba.njit(cache=True, error_model="numpy")
def _table_split(lam):
    """For 0 ≤ λ < 256: the table of the largest tabulated mean μ ≤ λ, and δ = λ − μ.

    δ < ⅛ below 64, δ < 1 above.
    """
    if lam < _FINE_END:
        j = int(lam * _FINE_STEPS)
        return j, lam - j * (1.0 / _FINE_STEPS)
    i = int(lam)
    return i + (_FINE_STEPS - 1) * _FINE_END, lam - i


@numba.njit(cache=True, error_model="numpy")
def _poisson_inverse(mean, u):
    """The Poisson(m) deviate of the uniform u by inversion, for a mean m < 1 and u ≥ 1 − m.

    (u < 1 − m ≤ e^(−m) = P(X = 0) gives 0, and the caller returns that without a call.) The exp
    is needed only near the cdf steps: P(X = 0) lies in [1 − m, 1 − m + m²/2] and P(X ≤ 1) =
    (1 + m)·e^(−m) in [1 − m²/2, 1], so u between the two intervals gives 1.
    """
    half_m2 = 0.5 * mean * mean
    if 1.0 - mean + half_m2 <= u < 1.0 - half_m2:
        return 1.0
    p = math.exp(-mean)
    cdf = p
    k = 0.0
    while u >= cdf:
        k += 1.0
        p *= mean / k
        if cdf + p == cdf:  # the rest of the tail is below the rounding of the cdf
            break
        cdf += p
    return k


@numba.njit(cache=True, error_model="numpy")
def _in_shadow(f, s, stop):
    """Whether the centre of pixel [s, f] is behind the beam stop: the tests of :func:`beamstop_mask`.

    ``stop`` = (on, centre f, centre s, radius f, radius s, bounding box f0, f1, s0, s1, arm on, arm
    cos, arm sin, arm half width, transmission).
    """
    df = (f + 0.5) - stop[1]
    ds = (s + 0.5) - stop[2]
    if stop[3] > 0.0 and stop[4] > 0.0 and stop[5] <= f < stop[6] and stop[7] <= s < stop[8]:
        if (df / stop[3]) ** 2 + (ds / stop[4]) ** 2 <= 1.0:
            return True
    return stop[9] != 0.0 and df * stop[10] + ds * stop[11] >= 0.0 and abs(ds * stop[10] - df * stop[11]) <= stop[12]


# The kernels below hand no arrays to the functions they call (that costs reference counting per
# call), so the table lookups are written out in the pixel loop.
@numba.njit(parallel=True, cache=True, error_model="numpy")
def _expected_kernel(photons, flicker, calibration_sigma, calibration, stop, out, tallies):
    """Steps 1–3 on every pixel into float64 ``out`` (before a point spread); non-finite or negative
    inputs are counted in ``tallies[:, 1]``."""
    for s in numba.prange(photons.shape[0]):
        for f in range(photons.shape[1]):
            lam = np.float64(photons[s, f])
            if not (0.0 <= lam < np.inf):
                tallies[s, 1] += 1
                lam = 0.0
            lam = lam * flicker
            if calibration_sigma > 0.0:
                lam = lam * max(0.0, 1.0 + calibration_sigma * calibration[s, f])
            if stop[0] != 0.0 and _in_shadow(f, s, stop):
                lam = lam * stop[13]
            out[s, f] = lam


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _frame_kernel(photons, gaps, flicker, calibration_sigma, calibration, stop, poisson, electronics, seeds,
                  rows_per_block, keep, alias, offsets, frame_int, frame_float, tallies):
    """Steps 1–3 and 5–7 and the gap value on every pixel, block by block (one random stream each).

    ``electronics`` = (gain, offset, read-noise σ, overload, trusted minimum, gap value); the frame
    is written to ``frame_int`` (rounded, clipped to int32) when it has pixels, else ``frame_float``.
    ``tallies[b]`` = (saturated module pixels, non-finite or negative inputs) of block b. Poisson
    deviates: below 256, Poisson(μ) from its alias table plus Poisson(δ) by inversion
    (:func:`_table_split`; a sum of independent Poisson deviates is Poisson); up to 10⁷, PTRS;
    beyond, N(λ, λ) rounded.
    """
    gain, offset, read_sigma, overload, lowest, gap_value = electronics
    n_slow, n_fast = photons.shape
    integer = frame_int.shape[0] > 0
    for b in numba.prange(tallies.shape[0]):
        state = seeds[b]
        n_saturated = 0
        n_invalid = 0
        for s in range(b * rows_per_block, min(n_slow, (b + 1) * rows_per_block)):
            for f in range(n_fast):
                lam = np.float64(photons[s, f])
                if not (0.0 <= lam < np.inf):
                    n_invalid += 1
                    lam = 0.0
                adu = gap_value
                if not gaps[s, f]:
                    lam = lam * flicker
                    if calibration_sigma > 0.0:
                        lam = lam * max(0.0, 1.0 + calibration_sigma * calibration[s, f])
                    if stop[0] != 0.0 and (stop[9] != 0.0 or (stop[7] <= s < stop[8] and stop[5] <= f < stop[6])):
                        if _in_shadow(f, s, stop):  # (without an arm, only pixels in the circle's box)
                            lam = lam * stop[13]
                    count = lam
                    if poisson:
                        if lam < _TABLE_END:
                            j, delta = _table_split(lam)
                            count = 0.0
                            if j > 0:  # alias table j: a uniform index, kept or replaced by its alias
                                state, u = _uniform(state)
                                state, v = _uniform(state)
                                start, n = offsets[j, 0], offsets[j, 1]
                                index = min(int(u * n), n - 1)
                                other = alias[start + index]  # both loaded: a select, not a branch
                                kept = 1 if v < keep[start + index] else 0
                                count = float(offsets[j, 2] + other + (index - other) * kept)
                            if delta > 0.0:  # plus Poisson(δ): 0 unless u ≥ 1 − δ (≤ e^(−δ))
                                state, u = _uniform(state)
                                if u >= 1.0 - delta:
                                    count += _poisson_inverse(delta, u)
                        elif lam < POISSON_GAUSSIAN_THRESHOLD:
                            state, count = _poisson_ptrs(lam, state)
                        else:
                            state, z = _normal(state)
                            count = max(0.0, np.rint(lam + math.sqrt(lam) * z))
                    adu = count * gain + offset
                    if read_sigma > 0.0:
                        state, z = _normal(state)
                        adu += read_sigma * z
                    if adu >= overload:
                        n_saturated += 1
                    adu = max(min(adu, overload), lowest)
                if integer:
                    frame_int[s, f] = np.int32(min(max(np.rint(adu), -2147483648.0), 2147483647.0))
                else:
                    frame_float[s, f] = np.float32(adu)
        tallies[b, 0] = n_saturated
        tallies[b, 1] = n_invalid


def _beamstop_args(config: DetectorEffectsConfig, detector: Detector, shape: tuple[int, int],
                   center_px: tuple[float, float], radius_mm: float, arm_deg: float) -> tuple[float, ...]:
    """The ``stop`` tuple of :func:`_in_shadow`: the circle and arm of :func:`beamstop_mask` in pixels."""
    if not (radius_mm > 0.0 or not math.isnan(arm_deg)):
        return (0.0,) * 14
    pf, ps = detector.pixel_size_mm
    rf, rs = radius_mm / pf, radius_mm / ps
    bf, bs = center_px
    n_slow, n_fast = shape
    box = (max(0, math.floor(bf - rf)), min(n_fast, math.ceil(bf + rf) + 1),
           max(0, math.floor(bs - rs)), min(n_slow, math.ceil(bs + rs) + 1))
    arm = (0.0, 0.0, 0.0, 0.0)
    if not math.isnan(arm_deg):
        a = math.radians(arm_deg)
        arm = (1.0, math.cos(a), math.sin(a), 0.5 * (0.5 * (rf + rs)))
    return (1.0, bf, bs, rf, rs, *map(float, box), *arm, float(config.beamstop_transmission))


def _int32_value(value: float) -> int:
    return int(np.clip(np.rint(value), _INT32.min, _INT32.max))


def apply_detector_effects(
    photons: np.ndarray,
    detector: Detector,
    beam_center_px: tuple[float, float],
    rng: np.random.Generator,
    config: DetectorEffectsConfig = DetectorEffectsConfig(),
) -> tuple[np.ndarray, EffectsRecord]:
    """Make a detector frame of a noiseless photon image, reproducibly from ``rng``.

    Parameters
    ----------
    photons : ndarray, shape (n_slow, n_fast), float
        Expected photons per pixel (≥ 0, finite), ``detector.array_shape``; gaps hold 0.
    detector : Detector
        Gives the gaps (:meth:`Detector.gap_mask`), the pixel size (beam stop in mm → px)
        and the trusted range (default overload = maximum + 1; minimum count).
    beam_center_px : (float, float)
        (fast, slow) position of the direct beam, where the beam stop is centred.
    rng : numpy.random.Generator
        The image's generator (``np.random.default_rng(seed)``); the only source of randomness
        besides the fixed calibration pattern.
    config : DetectorEffectsConfig
        What to apply.

    Returns
    -------
    frame : ndarray, shape (n_slow, n_fast), int32 (``integer_output``) or float32
        Counts in ADU; gaps hold ``gap_value``, hot pixels ``hot_pixel_value``, dead pixels 0.
    record : EffectsRecord
        The random choices made (beam stop, hot and dead pixels, flicker) for the labels.

    Raises
    ------
    ConfigError
        ``photons`` of the wrong shape, or with negative or non-finite values.

    Notes
    -----
    All pixels are done in one parallel Numba pass (two with a point spread). Its random numbers
    come from one SplitMix64 stream per block of whole rows (about 32 768 pixels; the blocks
    depend on the image shape only), each seeded by a 64-bit number that ``rng`` draws after the
    geometric choices, so a frame depends on ``rng`` alone, not on the number of threads. The
    Poisson deviates are exact: below λ = 256, Poisson(μ) for the tabulated mean μ ≤ λ just
    below (steps of ⅛ up to 64, then 1) from its alias table, plus Poisson(λ − μ) by inversion;
    above, numpy's PTRS; from 10⁷, N(λ, λ) rounded, as before. Gaussian deviates: Box–Muller.
    The calibration pattern is drawn once per (``calibration_seed``, shape) and kept.
    """
    image = np.asarray(photons)
    if image.dtype not in (np.float32, np.float64):
        image = image.astype(np.float64)
    image = np.ascontiguousarray(image)
    shape = tuple(detector.array_shape)
    if image.shape != shape:
        raise ConfigError(
            f"photons: expected shape {shape} (n_slow, n_fast) for detector {detector.name!r}, got {image.shape}")
    bf, bs = (float(v) for v in beam_center_px)
    gaps, n_module_px = _gap_mask(detector)
    trusted_lo, trusted_hi = detector.trusted_range
    overload = float(trusted_hi) + 1.0 if config.overload_value is None else float(config.overload_value)

    # --- random choices of this image, drawn first and in a fixed order --------------------
    g_flicker = float(rng.standard_normal())
    flicker = flicker_factor = max(0.0, 1.0 + config.flicker_noise * g_flicker)
    radius_mm, arm_deg = 0.0, float("nan")
    if config.beamstop_radius_mm_range is not None:
        radius_mm = float(rng.uniform(*config.beamstop_radius_mm_range))
        if config.beamstop_arm:
            arm_deg = float(rng.uniform(0.0, 360.0))
    n_hot = int(rng.integers(config.hot_pixels_range[0], config.hot_pixels_range[1], endpoint=True))
    n_dead = int(rng.integers(config.dead_pixels_range[0], config.dead_pixels_range[1], endpoint=True))
    picked = _pick_pixels(gaps, n_module_px, n_hot + n_dead, rng)
    hot_flat, dead_flat = picked[: min(n_hot, picked.size)], picked[min(n_hot, picked.size):]
    rows_per_block = max(1, _BLOCK_PX // max(1, shape[1]))
    n_blocks = -(-shape[0] // rows_per_block)
    if config.poisson or config.read_noise_adu > 0.0:
        seeds = rng.integers(0, 2**64, size=n_blocks, dtype=np.uint64)
    else:
        seeds = np.zeros(n_blocks, dtype=np.uint64)

    # --- photons, noise and electronics: one pass over the pixels --------------------------
    cal_sigma = float(config.calibration_noise)
    calibration = _calibration_pattern(config.calibration_seed, shape) if cal_sigma > 0.0 else _NO_PATTERN
    stop = _beamstop_args(config, detector, shape, (bf, bs), radius_mm, arm_deg)
    if config.psf_fwhm_px > 0.0:
        tallies = np.zeros((shape[0], 2), dtype=np.int64)
        expected = np.empty(shape, dtype=np.float64)
        _expected_kernel(image, flicker, cal_sigma, calibration, stop, expected, tallies)
        if tallies[:, 1].any():
            raise ConfigError("photons: expected finite counts ≥ 0")
        image, flicker, cal_sigma, stop = _gaussian_blur(expected, config.psf_fwhm_px), 1.0, 0.0, (0.0,) * 14
    integer = bool(config.integer_output)
    frame = np.empty(shape, dtype=np.int32 if integer else np.float32)
    none_i, none_f = np.empty((0, 0), dtype=np.int32), np.empty((0, 0), dtype=np.float32)
    tallies = np.zeros((n_blocks, 2), dtype=np.int64)
    electronics = (float(config.gain_adu_per_photon), float(config.adc_offset_adu), float(config.read_noise_adu),
                   overload, float(trusted_lo), float(config.gap_value))
    _frame_kernel(image, gaps, flicker, cal_sigma, calibration, stop, bool(config.poisson), electronics, seeds,
                  rows_per_block, *_poisson_tables(), frame if integer else none_i, none_f if integer else frame,
                  tallies)
    if tallies[:, 1].any():
        raise ConfigError("photons: expected finite counts ≥ 0")
    n_saturated = int(tallies[:, 0].sum())

    # --- hot and dead pixels (never on gaps) -----------------------------------------------
    hot_value = _int32_value(config.hot_pixel_value) if integer else config.hot_pixel_value
    frame.flat[hot_flat] = hot_value
    frame.flat[dead_flat] = 0
    n_fast = shape[1]
    record = EffectsRecord(
        beamstop_radius_mm=radius_mm,
        beamstop_center_px=(bf, bs),
        beamstop_arm_angle_deg=arm_deg,
        hot_pixels=np.stack([hot_flat % n_fast, hot_flat // n_fast], axis=1).astype(np.int64),
        dead_pixels=np.stack([dead_flat % n_fast, dead_flat // n_fast], axis=1).astype(np.int64),
        flicker_factor=flicker_factor,
        n_saturated=n_saturated,
    )
    return frame, record
