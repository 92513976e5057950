"""nanoBragg's own conventions, for ``xrais nanobragg`` and the parity tests.

nanoBragg works in the MOSFLM frame (beam +x, detector fast +z, slow −y; PHYSICS.md §1);
:data:`~xrais.simulate.mosaic.NANOBRAGG_TO_LAB` carries its vectors into the xrais frame.
Its crystal set-up (PHYSICS.md §2) builds the reciprocal vectors with a c* whose z component
is only right for cells with α = β = 90° (c*·V/(abc·sin γ*) where c*·V*/(a*b*c*·sin γ*)
is meant), then rescales the real vectors to the exact edge lengths: a triclinic cell comes
out with slightly different angles (78.35° instead of 78.3° …). The xrais API builds the exact
cell; these helpers reproduce the program, as an equivalent exact cell plus an orientation.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from xrais.geometry import Detector, rotation_matrix
from xrais.simulate.crystal import Crystal, misset_matrix, reciprocal_matrix_B, reciprocal_parameters, validate_cell
from xrais.simulate.mosaic import NANOBRAGG_TO_LAB

__all__ = ["nanobragg_real_space", "nanobragg_crystal", "nanobragg_detector", "cell_of_real_space",
           "nanobragg_shape_basis"]


def nanobragg_real_space(cell: Sequence[float], misset_deg: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """Real-space rows a, b, c (Å) exactly as nanoBragg sets them up, in its own frame."""
    a, b, c = validate_cell(cell)[:3]
    volume, a_s, b_s, c_s, cos_al_s, cos_be_s, cos_ga_s = reciprocal_parameters(cell)
    sin_ga_s = math.sqrt(1.0 - cos_ga_s**2)
    recip = np.array([
        [a_s, 0.0, 0.0],
        [b_s * cos_ga_s, b_s * sin_ga_s, 0.0],
        [c_s * cos_be_s, c_s * (cos_al_s - cos_be_s * cos_ga_s) / sin_ga_s, c_s * volume / (a * b * c * sin_ga_s)],
    ])
    recip = recip @ misset_matrix(misset_deg).T  # each row turned by the misset rotation
    a_v, b_v, c_v = np.cross(recip[1], recip[2]), np.cross(recip[2], recip[0]), np.cross(recip[0], recip[1])
    return np.array([v / np.linalg.norm(v) * length for v, length in zip((a_v, b_v, c_v), (a, b, c))])


def nanobragg_shape_basis(cell: Sequence[float], misset_deg: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """The reciprocal basis nanoBragg measures GAUSS/TOPHAT spot radii with (xrais frame, columns, Å⁻¹).

    nanoBragg regenerates a* = (b × c)/V with V the volume of the *input* cell rather than of
    its (slightly different) real vectors, so for triclinic cells these vectors are scaled by
    V'/V from the exact inverse. Pass it as the plan's ``a0`` to reproduce the program.
    """
    a, b, c = nanobragg_real_space(cell, misset_deg)
    volume = reciprocal_parameters(cell)[0]
    basis = np.column_stack([np.cross(b, c), np.cross(c, a), np.cross(a, b)]) / volume
    return np.ascontiguousarray(NANOBRAGG_TO_LAB @ basis)


def cell_of_real_space(real: np.ndarray) -> tuple[float, float, float, float, float, float]:
    """(a, b, c, α, β, γ) of real-space rows."""
    a, b, c = real

    def angle(u: np.ndarray, v: np.ndarray) -> float:
        return math.degrees(math.acos(float(u @ v) / float(np.linalg.norm(u) * np.linalg.norm(v))))

    return (float(np.linalg.norm(a)), float(np.linalg.norm(b)), float(np.linalg.norm(c)),
            angle(b, c), angle(a, c), angle(a, b))


def nanobragg_crystal(cell: Sequence[float], misset_deg: Sequence[float] = (0.0, 0.0, 0.0), **kwargs: Any) -> Crystal:
    """The :class:`Crystal` (xrais frame) whose vectors are nanoBragg's for ``-cell`` and ``-misset``."""
    real_nb = nanobragg_real_space(cell, misset_deg)
    eff = cell_of_real_space(real_nb)
    a_lab = NANOBRAGG_TO_LAB @ np.linalg.inv(real_nb)  # reciprocal columns in the xrais frame
    u = a_lab @ np.linalg.inv(reciprocal_matrix_B(eff))
    w, _, vt = np.linalg.svd(u)  # remove rounding so U is a rotation to machine precision
    return Crystal(cell=eff, U=w @ vt, **kwargs)


def nanobragg_detector(*, pixel_mm: float, n_fast: int, n_slow: int, distance_mm: float, xbeam_mm: float | None = None,
                       ybeam_mm: float | None = None, rot_deg: Sequence[float] = (0.0, 0.0, 0.0),
                       twotheta_deg: float = 0.0, name: str = "nanobragg") -> Detector:
    """nanoBragg's MOSFLM-convention detector (BEAM pivot) in the xrais frame.

    ``-Xbeam`` is along the slow axis and ``-Ybeam`` along the fast axis (mm); the beam lands on
    continuous pixel coordinate ((Ybeam + p/2)/p, (Xbeam + p/2)/p) (fast, slow), counted from the
    corner of the first pixel. Missing values put it at n/2 + ½ pixel centres (nanoBragg's default).
    The detector is turned about lab x, y, z (nanoBragg frame) and then about the two-theta axis
    (−z there) keeping the beam centre fixed.
    """
    size_f, size_s = n_fast * pixel_mm, n_slow * pixel_mm
    xbeam = (size_s + pixel_mm) / 2.0 if xbeam_mm is None else xbeam_mm
    ybeam = (size_f + pixel_mm) / 2.0 if ybeam_mm is None else ybeam_mm
    f_beam, s_beam = ybeam + pixel_mm / 2.0, xbeam + pixel_mm / 2.0
    det = Detector.flat(image_size=(n_fast, n_slow), pixel_size_mm=pixel_mm, distance_mm=distance_mm,
                        beam_center_px=(f_beam / pixel_mm, s_beam / pixel_mm), name=name)
    t = NANOBRAGG_TO_LAB
    r = np.eye(3)
    for axis, angle in zip(np.eye(3), rot_deg):  # about x, then y, then z (nanoBragg frame)
        if angle:
            r = rotation_matrix(t @ axis, angle) @ r
    if twotheta_deg:
        r = rotation_matrix(t @ np.array([0.0, 0.0, -1.0]), twotheta_deg) @ r
    if np.allclose(r, np.eye(3)):
        return det
    # BEAM pivot: rotate the axes, then put the origin back so the beam centre stays put.
    from dataclasses import replace

    p = det.panels[0]
    fast, slow = r @ np.asarray(p.fast_axis), r @ np.asarray(p.slow_axis)
    beam_dir = t @ np.array([1.0, 0.0, 0.0])
    origin = distance_mm * beam_dir - f_beam * fast - s_beam * slow
    return replace(det, panels=(replace(p, fast_axis=tuple(fast), slow_axis=tuple(slow), origin_mm=tuple(origin)),))
