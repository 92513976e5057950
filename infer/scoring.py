"""Score work items: read → condition → score, one row per frame.

A rank builds one :class:`Scorer`, which loads the models once, and hands it work items. For
each frame the scorer reads the file (readers stay open across consecutive frames of one
file), conditions it (on the GPU when the models run there), and queues its quadrants; a
queue of ``batch_size`` quadrants goes through every model in one forward pass. Anything that
goes wrong with one frame (missing, truncated or unknown file, impossible geometry) becomes
that frame's row with the error text, and the rest of the item carries on.

Row columns (see :func:`result_columns`): ``file``, ``frame``, ``n_frames``, the geometry used
(``detector``, ``block``, ``distance_mm``, ``wavelength_A``, ``pixel_mm``,
``beam_center_fast_px``, ``beam_center_slow_px``), per model its per-quadrant values and their
summary (resolution: ``resolution_q{i}_A``, ``min_resolution_A``, ``mean_resolution_A`` in Å;
multi-lattice: ``multilattice_q{i}_probability`` and their mean ``multilattice_probability``),
the model-free spot columns when spot finding is on (:data:`xrais.infer.spots.SPOT_COLUMNS`:
``n_spots``, ``n_spots_no_ice``, ``d_5pct_A``, ``spot_resolution_A`` in Å and ``hit`` 0/1),
``models``, stage times in seconds (``read_s``, ``spots_s``, ``condition_s``, ``score_s``),
``rank``, ``finished_at`` (UTC) and ``error``. With no model the row holds the spot columns
alone (and ``models`` is empty). A second model of the same task gets its columns prefixed
``m{k}_`` (k its position in the model list, from 1).

A model whose checkpoint records the geometry it was trained on (provenance
``training_geometry``, :mod:`xrais.models.training_geometry`) adds a text column after its
values, ``model_warning`` (``m{k}_model_warning`` for each such model when the run has
several models): empty when the frame's pixel size, distance, wavelength and detector tilt
are inside what the model was trained on, else what lies outside ("distance 850 mm outside
the trained 200–300 mm; detector tilted 2θ=30°"). The values are written either way.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from xrais.errors import CheckpointError, ConfigError, CorruptImageError, XraisError
from xrais.infer.config import InferConfig
from xrais.infer.work import FrameRef, WorkItem
from xrais.models.training_geometry import TrainingGeometry

__all__ = ["ModelInfo", "describe_models", "result_columns", "column_kind", "Scorer", "error_text", "empty_row",
           "with_geometry_overrides"]

log = logging.getLogger(__name__)

_HEAD = ["file", "frame", "n_frames", "detector", "block", "distance_mm", "wavelength_A", "pixel_mm",
         "beam_center_fast_px", "beam_center_slow_px"]
_TAIL = ["models", "read_s", "condition_s", "score_s", "rank", "finished_at", "error"]
_TEXT = {"file", "detector", "models", "finished_at", "error"}
_INT = {"frame", "n_frames", "block", "rank", "n_spots", "n_spots_no_ice", "hit"}
_SIDE = 512


@dataclass(frozen=True)
class ModelInfo:
    """What a run knows of a model without building it: identity, task and column prefix.

    Attributes
    ----------
    name : str
        Short name shown in rows (checkpoint file stem, folder or registered name).
    source : str
        The ``--model`` value as given.
    path : str
        The checkpoint file.
    sha256 : str
        Its SHA-256 (64 hex digits).
    task, arch : str
        ``resolution``/``multilattice``; the ResNet depth.
    block : int or None
        The model's conditioning block (None: the detector's own).
    prefix : str
        Column prefix, ``""`` for the first model of a task, else ``"m{k}_"``.
    training_geometry : TrainingGeometry or None
        The checkpoint's validated ``training_geometry``, when it records one.
    warning_column : str
        The column of the frame's geometry warnings, ``""`` without a training geometry.
    """

    name: str
    source: str
    path: str
    sha256: str
    task: str
    arch: str
    block: int | None
    prefix: str = ""
    training_geometry: TrainingGeometry | None = None
    warning_column: str = ""

    def value_columns(self, quadrants: int) -> list[str]:
        """This model's columns for ``quadrants`` quadrants (its warning column last, if any)."""
        p = self.prefix
        if self.task == "resolution":
            cols = ([f"{p}resolution_q{i}_A" for i in range(quadrants)]
                    + [f"{p}min_resolution_A", f"{p}mean_resolution_A"])
        else:
            cols = [f"{p}multilattice_q{i}_probability" for i in range(quadrants)] + [f"{p}multilattice_probability"]
        return cols + ([self.warning_column] if self.warning_column else [])

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("name", "source", "path", "sha256", "task", "arch", "block", "prefix")}
        if self.training_geometry is not None:
            out.update(training_geometry=self.training_geometry.to_dict(), warning_column=self.warning_column)
        return out


def describe_models(sources: Sequence[str]) -> list[ModelInfo]:
    """Find each checkpoint, hash it and read its metadata (no model is built).

    Raises
    ------
    CheckpointError
        A checkpoint is missing, unreadable, or does not match its recorded digest.
    """
    from xrais.models.checkpoint import compute_sha256, load_checkpoint_meta, resolve_checkpoint

    infos: list[ModelInfo] = []
    seen_tasks: set[str] = set()
    for k, source in enumerate(sources, start=1):
        path, digest = resolve_checkpoint(source)
        sha = compute_sha256(path)
        if digest and digest != sha:
            raise CheckpointError(f"{path.name}: SHA-256 mismatch, expected {digest}, file has {sha}")
        meta = load_checkpoint_meta(path)
        given = Path(str(source)).expanduser()
        name = given.name if given.is_dir() else (path.stem if given.is_file() else str(source))
        task = meta.config.task
        trained, warning_column = meta.provenance.get("training_geometry"), ""
        if trained is not None:
            trained = TrainingGeometry.from_dict(trained, where=path.name)
            warning_column = "model_warning" if len(sources) == 1 else f"m{k}_model_warning"
        infos.append(ModelInfo(name=name, source=str(source), path=str(path.resolve()), sha256=sha, task=task,
                               arch=meta.config.arch, block=meta.config.conditioning.block,
                               prefix="" if task not in seen_tasks else f"m{k}_", training_geometry=trained,
                               warning_column=warning_column))
        seen_tasks.add(task)
    return infos


def result_columns(infos: Sequence[ModelInfo], quadrants: int, spots: bool = False) -> list[str]:
    """All row columns, in order, for these models (and the spot columns when ``spots``)."""
    from xrais.infer.spots import SPOT_COLUMNS

    cols = list(_HEAD) + (list(SPOT_COLUMNS) if spots else [])
    for info in infos:
        cols.extend(info.value_columns(quadrants))
    tail = list(_TAIL)
    if spots:
        tail.insert(tail.index("condition_s"), "spots_s")
    return cols + tail


def column_kind(name: str) -> str:
    """``"str"``, ``"int"`` or ``"float"``: how a column is stored."""
    if name in _TEXT or name == "model_warning" or name.endswith("_model_warning"):
        return "str"
    return "int" if name in _INT else "float"


def empty_row(columns: Sequence[str], path: str, frame: int) -> dict[str, Any]:
    """A row of ``columns`` for ``path``/``frame`` with every value missing (NaN, −1 or "")."""
    row: dict[str, Any] = {}
    for c in columns:
        kind = column_kind(c)
        row[c] = "" if kind == "str" else -1 if kind == "int" else math.nan
    row.update(file=path, frame=frame, n_frames=-1)
    return row


def error_text(exc: BaseException) -> str:
    """One line naming the problem (xrais errors already name their file)."""
    text = str(exc) if isinstance(exc, XraisError) else f"{type(exc).__name__}: {exc}"
    return " | ".join(line.strip() for line in text.splitlines() if line.strip()) or type(exc).__name__


def with_geometry_overrides(image: Any, config: InferConfig) -> Any:
    """``image`` with the run's ``distance_mm``, ``wavelength_A`` and ``beam_center_px`` in place of its header's.

    A distance moves every panel along the first panel's normal; a beam centre moves the
    panels in their plane so that the beam meets the detector there. Assembled multi-panel
    images keep their panels and take the values as those of their flat grid.
    """
    changes: dict[str, Any] = {}
    header = dict(image.header)
    detector = image.detector
    if config.wavelength_A is not None:
        changes["beam"] = replace(image.beam, wavelength_A=config.wavelength_A)
        header["wavelength_A"] = config.wavelength_A
    coplanar = detector.is_coplanar_grid() and tuple(detector.array_shape) == tuple(image.pixels.shape)
    if config.distance_mm is not None:
        header["distance_mm"] = config.distance_mm
        if coplanar:
            shift = (config.distance_mm - detector.distance_mm) * detector.panels[0].normal
            detector = replace(detector, panels=tuple(replace(p, origin_mm=tuple(np.asarray(p.origin_mm) + shift))
                                                      for p in detector.panels))
    if config.beam_center_px is not None:
        changes["beam_center_px"] = tuple(config.beam_center_px)
        if coplanar:
            beam = changes.get("beam", image.beam)
            (f0, s0), (f1, s1) = detector.beam_center_px(beam), config.beam_center_px
            p0 = detector.panels[0]
            shift = ((f0 - f1) * p0.pixel_size_mm[0] * np.asarray(p0.fast_axis)
                     + (s0 - s1) * p0.pixel_size_mm[1] * np.asarray(p0.slow_axis))
            detector = replace(detector, panels=tuple(replace(p, origin_mm=tuple(np.asarray(p.origin_mm) + shift))
                                                      for p in detector.panels))
    if config.distance_mm is not None and config.wavelength_A is not None:
        header["geometry_from_header"] = True  # the run gives what the header lacked
    if detector is not image.detector:
        changes["detector"] = detector
    if header != image.header:
        changes["header"] = header
    return replace(image, **changes) if changes else image


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class _Pending:
    row: dict[str, Any]
    quads: dict[int | None, Any]  # block → (Q, 512, 512) uint8 array or tensor
    geometry: tuple[float, float, float, float]  # distance_mm, pixel_mm, block, wavelength_A


class Scorer:
    """Loads the models once and turns work items into rows.

    Parameters
    ----------
    config : InferConfig
    infos : sequence of ModelInfo
        From :func:`describe_models` (the digests are checked again on load).
    device : str
        Torch device (see :func:`xrais.infer.runner.resolve_device`).
    rank : int
        Written into each row.
    read_retry_s : float
        When reading a frame fails, wait this long and try once more (for files still being
        written); 0 tries once.
    on_spots : callable, optional
        Called as ``on_spots(image, analysis, row)`` after the spots of each frame are found
        (to draw them, say).
    """

    def __init__(self, config: InferConfig, infos: Sequence[ModelInfo], *, device: str = "cpu", rank: int = 0,
                 read_retry_s: float = 0.0, on_spots: Callable[[Any, Any, dict[str, Any]], None] | None = None) -> None:
        import torch

        from xrais.models import load_pretrained

        self.config = config
        self.infos = list(infos)
        self.device = torch.device(device)
        self.rank = rank
        self.read_retry_s = read_retry_s
        self.columns = result_columns(self.infos, config.quadrants, config.spots)
        self.spot_params = config.spot_params() if config.spots else None
        self.spot_threads = config.threads or torch.get_num_threads()
        self.on_spots = on_spots
        self.models = []
        for info in self.infos:
            model = load_pretrained(info.path, device=self.device, sha256=info.sha256)
            if config.channels_last:
                model = model.to(memory_format=torch.channels_last)
            self.models.append(model.eval())
        self.blocks = [config.block if config.block is not None else info.block for info in self.infos]
        self._trained = [(info.warning_column, info.training_geometry) for info in self.infos
                         if info.training_geometry is not None]
        self.model_names = ";".join(info.name for info in self.infos)
        self._needs_geometry = any(info.task == "resolution" for info in self.infos)
        self._pending: list[_Pending] = []
        self._rows: list[dict[str, Any]] = []

    # -- reading and conditioning

    def _row(self, path: str, frame: int, n_frames: int = -1) -> dict[str, Any]:
        row = empty_row(self.columns, path, frame)
        row.update(n_frames=n_frames, models=self.model_names, rank=self.rank)
        return row

    def _fail(self, row: dict[str, Any], exc: BaseException) -> None:
        row.update(error=error_text(exc), finished_at=_now())
        self._rows.append(row)

    def _read(self, reader: Any, index: int) -> Any:
        try:
            return reader.read_frame(index)
        except CorruptImageError:
            if self.read_retry_s <= 0:
                raise
            time.sleep(self.read_retry_s)
            return reader.read_frame(index)

    def _spots(self, image: Any, row: dict[str, Any]) -> None:
        """Find the spots of ``image`` (the run's geometry already applied) and fill the row's spot columns."""
        from xrais.infer.spots import analyze_image

        t0 = time.perf_counter()
        finder, hit = self.spot_params
        analysis = analyze_image(image, finder, hit, n_threads=self.spot_threads)
        row.update(analysis.row())
        row["spots_s"] = time.perf_counter() - t0
        if self.on_spots is not None:
            self.on_spots(image, analysis, row)

    def _geometry(self, image: Any, row: dict[str, Any], block: int | None) -> tuple[float, float, float]:
        """Fill the row's geometry columns; (distance_mm, wavelength_A, pixel_mm)."""
        cfg = self.config
        known = bool(image.header.get("geometry_from_header", True))
        distance_mm = cfg.distance_mm or (image.detector.distance_mm if known else math.nan)
        wavelength_A = cfg.wavelength_A or (image.beam.wavelength_A if known else math.nan)
        pixel_mm = float(image.detector.pixel_size_mm[0])
        row.update(detector=image.detector.name, block=block if block is not None else image.downsample_block,
                   distance_mm=float(distance_mm), wavelength_A=float(wavelength_A), pixel_mm=pixel_mm,
                   beam_center_fast_px=float(image.beam_center_px[0]),
                   beam_center_slow_px=float(image.beam_center_px[1]))
        return float(distance_mm), float(wavelength_A), pixel_mm

    def _warn(self, image: Any, row: dict[str, Any]) -> None:
        """Fill each warning column: what of the frame's geometry (as in the row) is outside the model's training."""
        if not self._trained:
            return
        detector = image.detector
        frame = dict(pixel_mm=float(row["pixel_mm"]), distance_mm=float(row["distance_mm"]),
                     wavelength_A=float(row["wavelength_A"]), tilt_deg=detector.tilt_deg(image.beam),
                     flat=len(detector.panels) == 1 or detector.is_coplanar_grid())
        for column, trained in self._trained:
            row[column] = trained.warning(**frame)

    def _condition(self, image: Any, row: dict[str, Any]) -> _Pending:
        from xrais.conditioning import condition
        from xrais.conditioning.condition import resolve_block

        cfg = self.config
        if cfg.beam_center_px is not None:
            image = replace(image, beam_center_px=cfg.beam_center_px)
        block = resolve_block(image, self.blocks[0])
        distance_mm, wavelength_A, pixel_mm = self._geometry(image, row, block)
        if self._needs_geometry and not all(math.isfinite(v) and v > 0 for v in (distance_mm, wavelength_A)):
            raise ConfigError(f"{image.label}: the header gives no usable detector distance and wavelength "
                              f"({distance_mm} mm, {wavelength_A} Å); give --distance-mm and --wavelength-A")
        dev = self.device if self.device.type == "cuda" else None
        quads = {b: condition(image, block=b, quadrants=cfg.quadrants, device=dev) for b in dict.fromkeys(self.blocks)}
        return _Pending(row, quads, (float(distance_mm), pixel_mm, float(block), float(wavelength_A)))

    def _frames(self, ref: FrameRef, reader: Any) -> list[int]:
        if ref.frame is not None:
            return [ref.frame]
        return [i for i in range(reader.n_frames) if i not in ref.skip]

    def score_item(self, item: WorkItem) -> list[dict[str, Any]]:
        """Rows for every frame of ``item`` (errors included), in the item's order of frames."""
        from xrais.conditioning import open_image

        self._rows = []
        reader, reader_path, open_error = None, None, None
        try:
            for ref in item.refs:
                t0 = time.perf_counter()
                if reader_path != ref.path:
                    if reader is not None:
                        reader.close()
                    reader, reader_path, open_error = None, ref.path, None
                    try:
                        reader = open_image(ref.path)
                    except Exception as exc:  # a bad file is a row, never a crash
                        open_error = exc
                if reader is None:
                    row = self._row(ref.path, ref.frame if ref.frame is not None else -1)
                    row["read_s"] = time.perf_counter() - t0
                    self._fail(row, open_error or CorruptImageError(f"{Path(ref.path).name}: could not be opened"))
                    continue
                try:
                    n_frames, frames = int(reader.n_frames), self._frames(ref, reader)
                except Exception as exc:
                    self._fail(self._row(ref.path, -1), exc)
                    continue
                for index in frames:
                    self._score_frame(reader, ref.path, index, n_frames, t0)
                    t0 = time.perf_counter()
            self._flush()
        finally:
            if reader is not None:
                reader.close()
        rows, self._rows = self._rows, []
        return rows

    def _score_frame(self, reader: Any, path: str, index: int, n_frames: int, t0: float) -> None:
        row = self._row(path, index, n_frames)
        try:
            image = self._read(reader, index)
            row["read_s"] = time.perf_counter() - t0
            if self.spot_params is not None or not self.models:
                placed = with_geometry_overrides(image, self.config)
            if self.spot_params is not None:
                self._spots(placed, row)
            if not self.models:
                self._geometry(placed, row, None)
                row["finished_at"] = _now()
                self._rows.append(row)
                return
            t1 = time.perf_counter()
            pending = self._condition(image, row)
            row["condition_s"] = time.perf_counter() - t1
            self._warn(image, row)
        except Exception as exc:
            if math.isnan(row["read_s"]):
                row["read_s"] = time.perf_counter() - t0
            self._fail(row, exc)
            return
        self._pending.append(pending)
        if len(self._pending) * self.config.quadrants >= self.config.batch_size:
            self._flush()

    # -- scoring

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        t0 = time.perf_counter()
        try:
            geometry = np.array([p.geometry for p in batch], dtype=np.float64)
            for info, model, block in zip(self.infos, self.models, self.blocks):
                values = self.forward(model, self._stack([p.quads[block] for p in batch]), geometry)
                self._fill(info, values, [p.row for p in batch])
        except Exception as exc:  # e.g. out of memory: every frame of the batch gets the error
            for p in batch:
                self._fail(p.row, exc)
            return
        share = (time.perf_counter() - t0) / len(batch)
        for p in batch:
            p.row.update(score_s=share, finished_at=_now())
            self._rows.append(p.row)

    def _stack(self, quads: list[Any]) -> Any:
        import torch

        if isinstance(quads[0], torch.Tensor):
            return torch.stack(quads)
        return torch.from_numpy(np.stack(quads))

    def forward(self, model: Any, quads: Any, geometry: np.ndarray) -> np.ndarray:
        """The main output of ``model`` for each quadrant.

        Parameters
        ----------
        model : XraisResNet
        quads : torch.Tensor, shape (N, Q, 512, 512), uint8
            Conditioned quadrants (on any device).
        geometry : ndarray, shape (N, 4), float64
            ``(distance_mm, pixel_mm, block, wavelength_A)`` per image.

        Returns
        -------
        ndarray, shape (N, Q), float64
            1/d in Å⁻¹ (resolution) or the multi-lattice logit.
        """
        import torch

        n, q = int(quads.shape[0]), int(quads.shape[1])
        dev = next(model.parameters()).device
        x = quads.reshape(n * q, 1, _SIDE, _SIDE).to(dev, non_blocking=True)
        pooled = np.stack([geometry[:, 0], geometry[:, 1] * geometry[:, 2], geometry[:, 3]], axis=1)
        g = torch.from_numpy(np.repeat(pooled, q, axis=0).astype(np.float32)).to(dev)
        bf16 = self.config.precision == "bf16"
        autocast = torch.autocast(dev.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        out = []
        bs = self.config.batch_size
        with torch.inference_mode(), autocast:
            for start in range(0, n * q, bs):
                xb = x[start : start + bs]
                if self.config.channels_last:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                out.append(model(xb, g[start : start + bs])[model.output_name].float().cpu())
        return torch.cat(out).numpy().astype(np.float64).reshape(n, q)

    def _fill(self, info: ModelInfo, values: np.ndarray, rows: list[dict[str, Any]]) -> None:
        p = info.prefix
        if info.task == "resolution":
            with np.errstate(divide="ignore"):
                d = np.where(values > 0, 1.0 / np.where(values > 0, values, 1.0), np.inf)
            for row, dq in zip(rows, d):
                for i, v in enumerate(dq):
                    row[f"{p}resolution_q{i}_A"] = float(v)
                row[f"{p}min_resolution_A"] = float(dq.min())
                row[f"{p}mean_resolution_A"] = float(dq.mean())
        else:
            prob = 1.0 / (1.0 + np.exp(-np.clip(values, -500.0, 500.0)))
            for row, pq in zip(rows, prob):
                for i, v in enumerate(pq):
                    row[f"{p}multilattice_q{i}_probability"] = float(v)
                row[f"{p}multilattice_probability"] = float(pq.mean())
