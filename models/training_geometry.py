"""The geometry a model was trained on, and which of a frame's geometry lies outside it.

A checkpoint's provenance may hold ``training_geometry`` (written by whoever trains the
model, see :func:`xrais.models.save_checkpoint`)::

    {"detectors": ["pilatus6m"],         catalog names (informational)
     "pixel_mm": [0.172],                 pixel sizes trained on, mm
     "distance_mm": [200.0, 300.0],       (low, high) detector distance, mm
     "wavelength_A": [0.9, 1.3],          (low, high) wavelength, Å
     "untilted": true}                    trained only on panels perpendicular to the beam

Every field is optional; a missing one is not checked. A frame is inside when its pixel size
is within ±5 % (:data:`PIXEL_SLACK`) of one of ``pixel_mm``, its distance and wavelength lie
in the range widened by 10 % of its ends (:data:`RANGE_SLACK`: ``[0.9·low, 1.1·high]``),
and, for an ``untilted`` model, its panels are within :data:`TILT_TOLERANCE_DEG` of
perpendicular to the beam. The model's prediction is kept in every case: the answer is a
warning text for the row, never a refusal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from xrais.errors import CheckpointError

__all__ = ["TrainingGeometry", "PIXEL_SLACK", "RANGE_SLACK", "TILT_TOLERANCE_DEG"]

#: Relative slack on the trained pixel sizes.
PIXEL_SLACK = 0.05
#: Relative slack below the low end and above the high end of a trained range.
RANGE_SLACK = 0.10
#: A panel within this angle (degrees) of perpendicular to the beam counts as untilted.
TILT_TOLERANCE_DEG = 1.0


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(value)
    return float(value)


def _g(value: float) -> str:
    return f"{value:.4g}"


@dataclass(frozen=True)
class TrainingGeometry:
    """What a model was trained on (see the module docstring for the rules).

    Attributes
    ----------
    detectors : tuple of str
        Catalog names of the detectors simulated (informational; not checked).
    pixel_mm : tuple of float
        Pixel sizes in mm; empty: not checked.
    distance_mm, wavelength_A : (float, float) or None
        (low, high) in mm and Å; None: not checked.
    untilted : bool
        True when every training image had its panels perpendicular to the beam.

    Examples
    --------
    >>> trained = TrainingGeometry.from_dict({"pixel_mm": [0.172], "distance_mm": [200, 300],
    ...                                       "wavelength_A": [0.9, 1.3], "untilted": True})
    >>> trained.warning(pixel_mm=0.172, distance_mm=320.0, wavelength_A=1.0, tilt_deg=0.0)
    ''
    >>> trained.warning(pixel_mm=0.172, distance_mm=850.0, wavelength_A=1.0, tilt_deg=30.0)
    'distance 850 mm outside the trained 200–300 mm; detector tilted 2θ=30°'
    """

    detectors: tuple[str, ...] = ()
    pixel_mm: tuple[float, ...] = ()
    distance_mm: tuple[float, float] | None = None
    wavelength_A: tuple[float, float] | None = None
    untilted: bool = False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "training_geometry") -> "TrainingGeometry":
        """Validate a provenance ``training_geometry`` object.

        Raises
        ------
        CheckpointError
            Not an object, an unknown key, or a field of the wrong shape (the message starts
            with ``where``, e.g. the checkpoint's file name).
        """
        if not isinstance(data, Mapping):
            raise CheckpointError(f"{where}: training_geometry: expected a JSON object, found {type(data).__name__}")
        unknown = sorted(set(data) - {"detectors", "pixel_mm", "distance_mm", "wavelength_A", "untilted"})
        if unknown:
            raise CheckpointError(f"{where}: training_geometry: unknown key {unknown[0]!r} (expected detectors, "
                                  "pixel_mm, distance_mm, wavelength_A, untilted)")
        fields: dict[str, Any] = {}
        key = ""
        try:
            key = "detectors"
            detectors = data.get(key, [])
            if not isinstance(detectors, (list, tuple)) or not all(isinstance(d, str) for d in detectors):
                raise ValueError(detectors)
            fields[key] = tuple(detectors)
            key = "pixel_mm"
            pixels = data.get(key, [])
            if not isinstance(pixels, (list, tuple)):
                pixels = [pixels]
            fields[key] = tuple(_number(v) for v in pixels)
            for key in ("distance_mm", "wavelength_A"):
                span = data.get(key)
                if span is None:
                    continue
                if not isinstance(span, (list, tuple)) or len(span) != 2:
                    raise ValueError(span)
                low, high = _number(span[0]), _number(span[1])
                if low > high:
                    raise ValueError(span)
                fields[key] = (low, high)
            key = "untilted"
            untilted = data.get(key, False)
            if not isinstance(untilted, bool):
                raise ValueError(untilted)
            fields[key] = untilted
        except ValueError:
            expected = {"detectors": "a list of detector names", "pixel_mm": "a list of positive pixel sizes",
                        "untilted": "true or false"}.get(key, "[low, high] with 0 < low ≤ high")
            raise CheckpointError(f"{where}: training_geometry.{key}: expected {expected}, "
                                  f"found {data.get(key)!r}") from None
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (only the fields that are set), as stored in a checkpoint's provenance."""
        out: dict[str, Any] = {}
        if self.detectors:
            out["detectors"] = list(self.detectors)
        if self.pixel_mm:
            out["pixel_mm"] = list(self.pixel_mm)
        if self.distance_mm is not None:
            out["distance_mm"] = list(self.distance_mm)
        if self.wavelength_A is not None:
            out["wavelength_A"] = list(self.wavelength_A)
        if self.untilted:
            out["untilted"] = True
        return out

    def outside(self, *, pixel_mm: float, distance_mm: float, wavelength_A: float, tilt_deg: float,
                flat: bool = True) -> list[str]:
        """One phrase per way a frame's geometry lies outside the trained one (empty: inside).

        Parameters
        ----------
        pixel_mm : float
            The detector's pixel size, mm.
        distance_mm : float
            Sample-to-detector distance, mm.
        wavelength_A : float
            Wavelength, Å.
        tilt_deg : float
            Largest angle between a panel's normal and the beam
            (:meth:`xrais.geometry.Detector.tilt_deg`).
        flat : bool
            The panels form one flat grid (so the tilt is one 2θ swing); else they face
            several ways (a cylindrical detector, say).

        A value that is not a finite number is not compared.
        """
        found = []
        if self.pixel_mm and math.isfinite(pixel_mm):
            if not any(abs(pixel_mm - p) <= PIXEL_SLACK * p for p in self.pixel_mm):
                found.append(f"pixel {_g(pixel_mm)} mm outside the trained {', '.join(map(_g, self.pixel_mm))} mm")
        for what, value, span, unit in (("distance", distance_mm, self.distance_mm, "mm"),
                                        ("wavelength", wavelength_A, self.wavelength_A, "Å")):
            if span is None or not math.isfinite(value):
                continue
            low, high = span
            if not (1.0 - RANGE_SLACK) * low <= value <= (1.0 + RANGE_SLACK) * high:
                found.append(f"{what} {_g(value)} {unit} outside the trained {_g(low)}–{_g(high)} {unit}")
        if self.untilted and math.isfinite(tilt_deg) and tilt_deg > TILT_TOLERANCE_DEG:
            found.append(f"detector tilted 2θ={tilt_deg:.3g}°" if flat
                         else f"detector panels tilted up to {tilt_deg:.3g}° from perpendicular to the beam")
        return found

    def warning(self, **geometry: Any) -> str:
        """:meth:`outside` as one text, phrases joined by ``"; "`` ("" when inside)."""
        return "; ".join(self.outside(**geometry))
