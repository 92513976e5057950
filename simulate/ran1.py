"""nanoBragg's uniform random numbers: Park–Miller "minimal standard" with a Bays–Durham shuffle.

This is the generator of Numerical Recipes' ``ran1`` as nanoBragg uses it (PHYSICS.md §5):
multiplier 16807, modulus 2³¹ − 1 (Schrage's method), a 32-entry shuffle table, results
rounded to float32 and capped at 1 − 1.2·10⁻⁷. A seed ≤ 0 (re)starts the sequence; nanoBragg
stores its seeds negated (``-mosaic_seed N`` → −N). The whole state is one int64 array so the
generator runs inside Numba kernels and can be saved with a result.

Examples
--------
>>> state = ran1_state(-12345678)
>>> [round(float(ran1(state)), 6) for _ in range(3)] == [round(float(v), 6) for v in ran1_sequence(-12345678, 3)]
True
"""

from __future__ import annotations

import numba
import numpy as np

import xrais.numba_cache  # noqa: F401  (kernel caches follow every kernel source)

__all__ = ["ran1_state", "ran1", "ran1_sequence"]

_IA, _IM, _IQ, _IR = 16807, 2147483647, 127773, 2836
_NTAB = 32
_NDIV = 1 + (_IM - 1) // _NTAB
_AM = 1.0 / _IM  # double, as in C: AM·iy is formed in double and then rounded to float
_RNMX = 1.0 - 1.2e-7


@numba.njit(cache=True)
def _step(idum: int) -> int:
    k = idum // _IQ
    idum = _IA * (idum - k * _IQ) - _IR * k
    if idum < 0:
        idum += _IM
    return idum


def ran1_state(seed: int) -> np.ndarray:
    """A fresh generator state for ``seed`` (int64 array: idum, iy, then the 32-entry table).

    ``seed ≤ 0`` as nanoBragg passes it; a positive seed is used as −seed.
    """
    state = np.zeros(2 + _NTAB, dtype=np.int64)
    state[0] = -abs(int(seed)) if seed else 0
    return state


@numba.njit(cache=True)
def ran1(state: np.ndarray) -> np.float32:
    """Next uniform deviate in (0, 1), float32; advances ``state`` in place."""
    idum = state[0]
    if idum <= 0 or state[1] == 0:
        idum = 1 if -idum < 1 else -idum
        for j in range(_NTAB + 7, -1, -1):
            idum = _step(idum)
            if j < _NTAB:
                state[2 + j] = idum
        state[1] = state[2]
    idum = _step(idum)
    state[0] = idum
    j = state[1] // _NDIV
    state[1] = state[2 + j]
    state[2 + j] = idum
    temp = np.float32(_AM * state[1])
    return np.float32(_RNMX) if temp > _RNMX else temp


def ran1_sequence(seed: int, n: int) -> np.ndarray:
    """The first ``n`` deviates from ``seed`` (float32)."""
    state = ran1_state(seed)
    return np.array([ran1(state) for _ in range(n)], dtype=np.float32)
