"""Score diffraction images or conditioned quadrants with a model: :func:`predict` and :class:`Prediction`.

Inputs are read images (:class:`~xrais.conditioning.DiffractionImage`), conditioned with the
model's own :class:`~xrais.conditioning.ConditioningConfig` and scored with the geometry from
their headers, or already-conditioned uint8 arrays with the geometry given. Every quadrant is
scored; results are arrays of shape (N images, Q quadrants).

Geometry for arrays is ``(distance_mm, pixel_mm, downsample, wavelength_A)``: the raw pixel
size and the max-pool block, whose product is the size of one conditioned pixel (as in the
shard columns ``geometry/…``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from xrais.conditioning.image import DiffractionImage
from xrais.errors import ConfigError

__all__ = ["Prediction", "predict", "GEOMETRY_FIELDS"]

#: Names (and order) of the geometry values given with conditioned arrays.
GEOMETRY_FIELDS: tuple[str, ...] = ("distance_mm", "pixel_mm", "downsample", "wavelength_A")
_SIDE = 512


@dataclass
class Prediction:
    """Per-quadrant results for N images of Q quadrants each.

    Attributes
    ----------
    task : str
        ``"resolution"`` or ``"multilattice"``.
    names : list of str
        One label per image (file name and frame, or ``"array[i]"``).
    inv_resolution_per_A : ndarray, shape (N, Q), float64, or None
        1/d in Å⁻¹ (resolution task).
    multilattice_probability : ndarray, shape (N, Q), float64, or None
        Sigmoid of the logit, probability of multi-lattice scattering (multi-lattice task).
    heads : dict of str to ndarray, shape (N, Q)
        Extra regression heads, by label name.
    """

    task: str
    names: list[str]
    inv_resolution_per_A: np.ndarray | None = None
    multilattice_probability: np.ndarray | None = None
    heads: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def resolution_A(self) -> np.ndarray | None:
        """d = 1 / (1/d) in Å, shape (N, Q); ``inf`` where 1/d ≤ 0; None for multi-lattice."""
        if self.inv_resolution_per_A is None:
            return None
        inv = self.inv_resolution_per_A
        with np.errstate(divide="ignore"):
            return np.where(inv > 0, 1.0 / np.where(inv > 0, inv, 1.0), np.inf)

    @property
    def min_resolution_A(self) -> np.ndarray | None:
        """Best (smallest) d over each image's quadrants, Å, shape (N,)."""
        d = self.resolution_A
        return None if d is None else d.min(axis=1)

    @property
    def mean_resolution_A(self) -> np.ndarray | None:
        """Mean of each image's quadrant resolutions, Å, shape (N,)."""
        d = self.resolution_A
        return None if d is None else d.mean(axis=1)

    @property
    def mean_multilattice_probability(self) -> np.ndarray | None:
        """Mean multi-lattice probability over each image's quadrants, shape (N,)."""
        p = self.multilattice_probability
        return None if p is None else p.mean(axis=1)

    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per image: its name, per-quadrant values (``q0_…``) and the summaries."""
        rows: list[dict[str, Any]] = []
        for i, name in enumerate(self.names):
            row: dict[str, Any] = {"image": name}
            if self.inv_resolution_per_A is not None:
                d = self.resolution_A
                for q, v in enumerate(d[i]):  # type: ignore[index]
                    row[f"q{q}_resolution_A"] = float(v)
                row["min_resolution_A"] = float(self.min_resolution_A[i])  # type: ignore[index]
                row["mean_resolution_A"] = float(self.mean_resolution_A[i])  # type: ignore[index]
            if self.multilattice_probability is not None:
                for q, v in enumerate(self.multilattice_probability[i]):
                    row[f"q{q}_multilattice_probability"] = float(v)
                row["multilattice_probability"] = float(self.mean_multilattice_probability[i])  # type: ignore[index]
            for head, values in self.heads.items():
                for q, v in enumerate(values[i]):
                    row[f"q{q}_{head}"] = float(v)
                row[head] = float(values[i].mean())
            rows.append(row)
        return rows


def _geometry_rows(geometry: Any, n: int) -> np.ndarray:
    """(n, 4) float64 rows of (distance_mm, pixel_mm, downsample, wavelength_A)."""
    if isinstance(geometry, Mapping):
        missing = [k for k in GEOMETRY_FIELDS if k not in geometry]
        if missing:
            raise ConfigError(f"geometry: expected keys {', '.join(GEOMETRY_FIELDS)}, missing {', '.join(missing)}")
        cols = [np.broadcast_to(np.asarray(geometry[k], dtype=np.float64), (n,)) for k in GEOMETRY_FIELDS]
        rows = np.stack(cols, axis=1)
    else:
        arr = np.asarray(geometry, dtype=np.float64)
        if arr.shape == (4,):
            rows = np.broadcast_to(arr, (n, 4))
        elif arr.shape == (n, 4):
            rows = arr
        elif arr.ndim == 2 and arr.shape[0] == 4 and arr.shape[1] == n:
            rows = arr.T
        else:
            raise ConfigError(f"geometry: expected 4 values ({', '.join(GEOMETRY_FIELDS)}) or an ({n}, 4) array, "
                              f"got shape {arr.shape}")
    if not np.all(np.isfinite(rows)) or np.any(rows <= 0):
        raise ConfigError(f"geometry: {', '.join(GEOMETRY_FIELDS)} must be finite and > 0, got {rows[:3].tolist()}")
    return np.ascontiguousarray(rows)


def _as_array(x: Any) -> np.ndarray:
    if type(x).__module__.startswith("torch"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _prepare(model: Any, inputs: Any, geometry: Any) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Quadrants (N, Q, 512, 512), geometry rows (N, 4) or None, and image names."""
    from xrais.conditioning.condition import condition, resolve_block

    cfg = model.config.conditioning
    if isinstance(inputs, DiffractionImage):
        inputs = [inputs]
    if isinstance(inputs, Sequence) and inputs and all(isinstance(im, DiffractionImage) for im in inputs):
        quads = np.stack([np.asarray(condition(im, block=cfg.block, quadrants=cfg.quadrants)) for im in inputs])
        names = [im.label for im in inputs]
        if geometry is None:
            geometry = [(im.detector.distance_mm, im.detector.pixel_size_mm[0], resolve_block(im, cfg.block),
                         im.beam.wavelength_A) for im in inputs]
        return quads, _geometry_rows(geometry, len(inputs)), names
    if isinstance(inputs, Sequence) and not isinstance(inputs, np.ndarray):
        if not inputs:
            raise ConfigError("predict: no inputs")
        if any(isinstance(im, DiffractionImage) for im in inputs):
            raise ConfigError("predict: expected all DiffractionImage or all arrays, got a mix")
        arr = np.stack([_as_array(a) for a in inputs])
    else:
        arr = _as_array(inputs)
    given = arr.shape
    if arr.ndim == 2:
        arr = arr[None, None]
    elif arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-2:] != (_SIDE, _SIDE):
        raise ConfigError(f"predict: expected conditioned quadrants of shape (512, 512), (Q, 512, 512) or "
                          f"(N, Q, 512, 512), got {given}")
    if arr.dtype.kind not in "uif" or arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    names = [f"array[{i}]" for i in range(arr.shape[0])]
    if geometry is None:
        if model.config.task == "resolution":
            raise ConfigError(f"predict: a resolution model needs geometry ({', '.join(GEOMETRY_FIELDS)}) "
                              "for conditioned arrays")
        return arr, None, names
    return arr, _geometry_rows(geometry, arr.shape[0]), names


def predict(
    model: Any,
    inputs: Any,
    geometry: Any = None,
    *,
    batch_size: int = 32,
    device: Any = None,
) -> Prediction:
    """Score every quadrant of every input with ``model``.

    Parameters
    ----------
    model : XraisResNet
        A resolution or multi-lattice model (put in eval mode for the call, then restored).
    inputs : DiffractionImage, sequence of them, or array-like
        Read images, conditioned here with ``model.config.conditioning``; or conditioned
        quadrants, uint8 (or float in conditioned units), of shape (512, 512), (Q, 512, 512)
        or (N, Q, 512, 512), beam centre at [0, 0].
    geometry : mapping, 4-sequence or (N, 4) array, optional
        ``(distance_mm, pixel_mm, downsample, wavelength_A)`` for all images or per image
        (a mapping may hold scalars or length-N arrays). Required for arrays scored by a
        resolution model; for images it overrides the header geometry.
    batch_size : int
        Quadrants per forward pass.
    device : str or torch.device, optional
        Device to score on; the model is moved there. Default: where the model is.

    Returns
    -------
    Prediction
        Arrays of shape (N, Q).

    Raises
    ------
    ConfigError
        Bad shapes, missing or invalid geometry, ``batch_size`` < 1.
    """
    import torch

    if batch_size < 1:
        raise ConfigError(f"predict: batch_size must be ≥ 1, got {batch_size}")
    quads, geo, names = _prepare(model, inputs, geometry)
    n, q = quads.shape[:2]
    flat = quads.reshape(n * q, 1, _SIDE, _SIDE)
    if device is not None:
        model.to(device)
    dev = next(model.parameters()).device
    geo_q = None
    if geo is not None:
        pooled = np.stack([geo[:, 0], geo[:, 1] * geo[:, 2], geo[:, 3]], axis=1)  # (N, 3)
        geo_q = torch.from_numpy(np.repeat(pooled, q, axis=0).astype(np.float32))
    outputs: dict[str, list[np.ndarray]] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, n * q, batch_size):
                stop = min(start + batch_size, n * q)
                x = torch.from_numpy(np.ascontiguousarray(flat[start:stop])).to(dev)
                g = geo_q[start:stop].to(dev) if geo_q is not None else None
                for key, value in model(x, g).items():
                    outputs.setdefault(key, []).append(value.float().cpu().numpy())
    finally:
        model.train(was_training)
    result = {k: np.concatenate(v).astype(np.float64).reshape(n, q) for k, v in outputs.items()}
    task = model.config.task
    pred = Prediction(task=task, names=names)
    if task == "resolution":
        pred.inv_resolution_per_A = result.pop("inv_resolution_per_A")
    else:
        logits = result.pop("multilattice_logit")
        pred.multilattice_probability = 1.0 / (1.0 + np.exp(-np.clip(logits, -500.0, 500.0)))
    pred.heads = result
    return pred

