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
not depend on the noise settings. Pixel coordinates are continuous ``(fast, slow)`` pairs with
the centre of pixel ``[s, f]`` at ``(f + 0.5, s + 0.5)``; lengths are in mm, counts in ADU.

Examples
--------
>>> import numpy as np
>>> from xrais.geometry import Detector
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

import math
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from xrais.errors import ConfigError
from xrais.geometry import Detector

__all__ = ["DetectorEffectsConfig", "EffectsRecord", "apply_detector_effects", "beamstop_mask"]

#: Poisson means at or above this many photons are drawn from N(λ, λ) instead.
POISSON_GAUSSIAN_THRESHOLD = 1e7
_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
_INT32 = np.iinfo(np.int32)


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


def _poisson(means: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson deviates of float64 ``means``; from 10⁷ up, N(λ, λ) (avoids int64 overflow)."""
    big = means >= POISSON_GAUSSIAN_THRESHOLD
    counts = np.empty_like(means)
    if big.any():
        counts[~big] = rng.poisson(means[~big])
        lam = means[big]
        counts[big] = np.maximum(0.0, np.rint(rng.normal(lam, np.sqrt(lam))))
    else:
        counts[...] = rng.poisson(means)
    return counts


def _pick_pixels(valid_flat: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` distinct flat indices among ``valid_flat`` (uniform, without replacement)."""
    k = min(k, valid_flat.size)
    if k == 0:
        return np.empty(0, dtype=np.int64)
    return np.asarray(valid_flat[rng.choice(valid_flat.size, size=k, replace=False)], dtype=np.int64)


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
    """
    image = np.asarray(photons, dtype=np.float64)
    shape = tuple(detector.array_shape)
    if image.shape != shape:
        raise ConfigError(
            f"photons: expected shape {shape} (n_slow, n_fast) for detector {detector.name!r}, got {image.shape}")
    if not np.all(np.isfinite(image)) or (image.size and image.min() < 0.0):
        raise ConfigError("photons: expected finite counts ≥ 0")
    bf, bs = (float(v) for v in beam_center_px)
    gaps = detector.gap_mask()
    trusted_lo, trusted_hi = detector.trusted_range
    overload = float(trusted_hi) + 1.0 if config.overload_value is None else float(config.overload_value)

    # --- random choices of this image, drawn first and in a fixed order --------------------
    g_flicker = float(rng.standard_normal())
    flicker = max(0.0, 1.0 + config.flicker_noise * g_flicker)
    radius_mm, arm_deg = 0.0, float("nan")
    if config.beamstop_radius_mm_range is not None:
        radius_mm = float(rng.uniform(*config.beamstop_radius_mm_range))
        if config.beamstop_arm:
            arm_deg = float(rng.uniform(0.0, 360.0))
    n_hot = int(rng.integers(config.hot_pixels_range[0], config.hot_pixels_range[1], endpoint=True))
    n_dead = int(rng.integers(config.dead_pixels_range[0], config.dead_pixels_range[1], endpoint=True))
    picked = _pick_pixels(np.flatnonzero(~gaps), n_hot + n_dead, rng)
    hot_flat, dead_flat = picked[: min(n_hot, picked.size)], picked[min(n_hot, picked.size):]

    # --- photons ---------------------------------------------------------------------------
    if flicker != 1.0:
        image = image * flicker
    if config.calibration_noise > 0.0:
        g_cal = np.random.default_rng(config.calibration_seed).standard_normal(shape)
        image = image * np.maximum(0.0, 1.0 + config.calibration_noise * g_cal)
    if radius_mm > 0.0 or not math.isnan(arm_deg):
        pf, ps = detector.pixel_size_mm
        shadow = beamstop_mask(shape, (bf, bs), (radius_mm / pf, radius_mm / ps),
                               None if math.isnan(arm_deg) else arm_deg)
        image = np.where(shadow, image * config.beamstop_transmission, image)
    if config.psf_fwhm_px > 0.0:
        image = _gaussian_blur(image, config.psf_fwhm_px)
    counts = _poisson(image, rng) if config.poisson else image

    # --- electronics -----------------------------------------------------------------------
    adu = counts * config.gain_adu_per_photon + config.adc_offset_adu
    if config.read_noise_adu > 0.0:
        adu += rng.normal(0.0, config.read_noise_adu, size=shape)
    n_saturated = int(np.count_nonzero((adu >= overload) & ~gaps))
    np.minimum(adu, overload, out=adu)
    np.maximum(adu, trusted_lo, out=adu)
    adu.flat[hot_flat] = config.hot_pixel_value
    adu.flat[dead_flat] = 0.0
    adu[gaps] = config.gap_value

    if config.integer_output:
        frame = np.clip(np.rint(adu), _INT32.min, _INT32.max).astype(np.int32)
    else:
        frame = adu.astype(np.float32)
    n_fast = shape[1]
    record = EffectsRecord(
        beamstop_radius_mm=radius_mm,
        beamstop_center_px=(bf, bs),
        beamstop_arm_angle_deg=arm_deg,
        hot_pixels=np.stack([hot_flat % n_fast, hot_flat // n_fast], axis=1).astype(np.int64),
        dead_pixels=np.stack([dead_flat % n_fast, dead_flat // n_fast], axis=1).astype(np.int64),
        flicker_factor=flicker,
        n_saturated=n_saturated,
    )
    return frame, record
