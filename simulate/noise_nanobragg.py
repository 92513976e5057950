"""Poisson noise exactly as nanoBragg draws it: ``poidev`` on the ``ran1`` generator.

nanoBragg's ``-noisefile`` (PHYSICS.md §8) replaces every pixel of the noiseless image, in
file order (slow-major) and only inside the ROI, by a Poisson deviate of its value, adds the
ADC offset, clips at 65535 and truncates to uint16. The deviates are Numerical Recipes'
``poidev``:

* mean < 12: multiply uniform deviates until the product falls to exp(−mean) or below;
* 12 ≤ mean ≤ 10⁶: rejection from a Lorentzian comparison function, with ``gammln``;
* mean > 10⁶: mean + √mean·``gaussdev`` (Box–Muller, polar form, one spare deviate kept).

The C routines work in float32 with double-precision library calls (``exp``, ``log``,
``tan``, ``sqrt``); every rounding to float32 of the C code is repeated here, so the same
seed gives the same image bit for bit. One generator state (:mod:`xrais.simulate.ran1`)
runs through the whole image.

Examples
--------
>>> import numpy as np
>>> img = np.array([[0.0, 3.5], [20.0, 2e6]], dtype=np.float32)
>>> noisy, photons, overloads = nanobragg_noise(img, seed=12345)
>>> noisy.dtype, noisy.shape, overloads
(dtype('uint16'), (2, 2), 1)
"""

from __future__ import annotations

import math

import numba
import numpy as np

import xrais.numba_cache  # noqa: F401  (kernel caches follow every kernel source)
from xrais.errors import ConfigError
from xrais.simulate.ran1 import ran1, ran1_state

__all__ = ["poidev", "gaussdev", "gammln", "nanobragg_noise"]

_F32 = np.float32
_GAMMLN_COF = (76.18009172947146, -86.50532032941677, 24.01409824083091, -1.231739572450155,
               0.1208650973866179e-2, -0.5395239384953e-5)


@numba.njit(cache=True)
def gammln(xx: np.float32) -> np.float32:
    """ln Γ(xx) by Lanczos' series (Numerical Recipes ``gammln``), in double, returned as float32."""
    x = np.float64(xx)
    y = x
    tmp = x + 5.5
    tmp -= (x + 0.5) * math.log(tmp)
    ser = 1.000000000190015
    for j in range(6):
        y += 1.0
        ser += _GAMMLN_COF[j] / y
    return _F32(-tmp + math.log(2.5066282746310005 * ser / x))


@numba.njit(cache=True)
def gaussdev(state: np.ndarray, spare: np.ndarray) -> np.float32:
    """Unit normal deviate (nanoBragg ``gaussdev``); ``spare`` = [has_spare, value] carries the pair."""
    if spare[0] == 0.0:
        while True:
            v1 = _F32(2.0 * np.float64(ran1(state)) - 1.0)
            v2 = _F32(2.0 * np.float64(ran1(state)) - 1.0)
            rsq = _F32(v1 * v1) + _F32(v2 * v2)
            if not (rsq >= 1.0 or rsq == 0.0):
                break
        fac = _F32(math.sqrt(-2.0 * math.log(np.float64(rsq)) / np.float64(rsq)))
        spare[1] = np.float64(_F32(v1 * fac))
        spare[0] = 1.0
        return _F32(v2 * fac)
    spare[0] = 0.0
    return _F32(spare[1])


@numba.njit(cache=True)
def poidev(xm: np.float32, state: np.ndarray, spare: np.ndarray) -> np.float32:
    """Poisson deviate of mean ``xm`` (float32), as nanoBragg's ``poidev`` (Numerical Recipes).

    Parameters
    ----------
    xm : float32
        Mean (photons).
    state : ndarray of int64
        :func:`~xrais.simulate.ran1.ran1_state` generator state, advanced in place.
    spare : ndarray, shape (2,), float64
        :func:`gaussdev`'s spare deviate (used only for means above 10⁶).
    """
    if xm > 1.0e6:
        return _F32(np.float64(xm) + math.sqrt(np.float64(xm)) * np.float64(gaussdev(state, spare)))
    if xm < 12.0:
        g = _F32(math.exp(-np.float64(xm)))
        em = _F32(-1.0)
        t = _F32(1.0)
        while True:
            em = _F32(em + _F32(1.0))
            t = _F32(t * ran1(state))
            if not t > g:
                break
        return em
    sq = _F32(math.sqrt(2.0 * np.float64(xm)))
    alxm = _F32(math.log(np.float64(xm)))
    g = _F32(_F32(xm * alxm) - gammln(_F32(np.float64(xm) + 1.0)))
    while True:
        while True:
            y = _F32(math.tan(math.pi * np.float64(ran1(state))))
            em = _F32(_F32(sq * y) + xm)
            if not em < 0.0:
                break
        em = _F32(math.floor(np.float64(em)))
        expo = _F32(_F32(_F32(em * alxm) - gammln(_F32(np.float64(em) + 1.0))) - g)
        t = _F32(0.9 * (1.0 + np.float64(_F32(y * y))) * math.exp(np.float64(expo)))
        if not ran1(state) > t:
            break
    return em


@numba.njit(cache=True)
def _noise_rows(image, out, f_lo, f_hi, s_lo, s_hi, adc, state, spare):
    photons = 0.0
    overloads = 0
    for s in range(s_lo, s_hi + 1):
        for f in range(f_lo, f_hi + 1):
            test = np.float64(poidev(image[s, f], state, spare))
            photons += test
            test += adc
            if test > 65535.0:
                test = 65535.0
                overloads += 1
            out[s, f] = np.uint16(test)
    return photons, overloads


def nanobragg_noise(image: np.ndarray, seed: int, *, adc: float = 40.0,
                    roi: tuple[int, int, int, int] | None = None) -> tuple[np.ndarray, float, int]:
    """nanoBragg's ``-noisefile`` pixels: Poisson deviates + ADC offset, as uint16.

    Parameters
    ----------
    image : ndarray, shape (n_slow, n_fast), float32
        Noiseless image in photons (nanoBragg's float image).
    seed : int
        ``-seed`` value (≥ 0; nanoBragg passes −seed to ``ran1``, which restarts the generator).
    adc : float
        ADC offset added to every deviate (nanoBragg ``-adc``, default 40).
    roi : (fast_min, fast_max, slow_min, slow_max), optional
        Inclusive pixel ranges to fill (nanoBragg ``-roi``); pixels outside stay 0.

    Returns
    -------
    noise : ndarray, shape (n_slow, n_fast), uint16
        trunc(min(deviate + adc, 65535)) inside the ROI, 0 outside.
    photons : float
        Sum of the deviates (without the offset).
    overloads : int
        Pixels clipped at 65535.

    Raises
    ------
    ConfigError
        A negative seed, or an image that is not 2-D.
    """
    if int(seed) < 0:
        raise ConfigError(f"noise seed {seed}: expected an integer ≥ 0")
    img = np.ascontiguousarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ConfigError(f"noise image of shape {img.shape}: expected a 2-D (slow, fast) array")
    n_slow, n_fast = img.shape
    f_lo, f_hi, s_lo, s_hi = roi if roi is not None else (0, n_fast - 1, 0, n_slow - 1)
    f_lo, s_lo = max(0, int(f_lo)), max(0, int(s_lo))
    f_hi, s_hi = min(n_fast - 1, int(f_hi)), min(n_slow - 1, int(s_hi))
    out = np.zeros(img.shape, dtype=np.uint16)
    state = ran1_state(-int(seed))
    spare = np.zeros(2, dtype=np.float64)
    photons, overloads = _noise_rows(img, out, f_lo, f_hi, s_lo, s_hi, float(adc), state, spare)
    return out, float(photons), int(overloads)
