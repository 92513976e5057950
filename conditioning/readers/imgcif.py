"""Full imgCIF CBF files (any compression, "packed" included), one or many arrays, via pycbf.

fabio reads miniCBF but neither the CBF "packed" compression nor multi-array imgCIF files
(the XFEL CBFs that cctbx.xfel writes for the LCLS Rayonix and CSPAD, for instance). CBFlib,
through pycbf, decodes them; this reader turns what it decodes into xrais models.

Conventions
-----------
* imgCIF and xrais share the lab frame (dxtbx): beam along −z (``AXIS_SOURCE`` = +z points at
  the source), +y up (``AXIS_GRAVITY`` = −y). Lengths in mm, wavelength in Å.
* Geometry comes from the imgCIF axis tables alone. A panel's pixel grid is spanned by two
  translation axes (fast: the array index of precedence 1; slow: precedence 2). Each axis moves
  in the frame of the axis it ``depends_on``: a rotation maps a point ``p`` to
  ``offset + R(vector, setting°)·p``, a translation to ``offset + p + setting·vector``, with the
  settings of the data frame (``_diffrn_scan_frame_axis``). Walking that chain up to the lab
  gives the lab position of any pixel index (the tests check it against CBFlib's own
  ``cbf_construct_detector``).
* As in dxtbx, the point of pixel index (0, 0) (``_array_structure_list_axis.displacement``)
  is the panel's ``origin_mm``: the corner of the first pixel in xrais pixel coordinates.
* A panel is a 2-D array or an ``_array_structure_list_section`` with its own axes (a CSPAD
  ASIC is a 194 × 185 section of an 8 × 185 × 388 array). One panel filling one array is read
  as a flat detector in its native dtype. Several panels are resampled into one 2-D float32
  array by :meth:`xrais.geometry.Detector.assemble`, and the detector keeps the real panels,
  placed in a data array that stacks every array layer along the slow direction.
* Validity (``_array_intensities``): pixels equal to ``undefined_value``, at or above
  ``overload`` or, when the file gives one, at or below ``underload`` are masked. Without an
  underload there is no lower bound: dark-subtracted analogue data (CSPAD) are legitimately
  negative, far below the CSPAD's undefined value of −400.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import numpy as np

with warnings.catch_warnings():
    # pycbf's SWIG wrappers trip Python's "builtin type ... has no __module__" DeprecationWarning.
    warnings.simplefilter("ignore", DeprecationWarning)
    import pycbf

from xrais.conditioning.image import DiffractionImage, trusted_mask
from xrais.conditioning.readers.base import ImageReader, open_maybe_compressed, read_head
from xrais.errors import CorruptImageError, XraisError
from xrais.geometry import Beam, Detector, Panel, catalog_entry_for_shape, default_downsample_block, rotation_matrix

__all__ = ["ImgCIFReader"]

log = logging.getLogger(__name__)

T = TypeVar("T")
Row = dict[str, "str | None"]

#: Header bytes :meth:`ImgCIFReader.understand` looks at.
_HEAD_BYTES = 8192
#: Tokens found in full imgCIF headers and never in miniCBF ones.
_IMGCIF_TOKENS = (b"x-CBF_PACKED", b"_array_structure_list", b"_diffrn_detector", b"_axis.")
#: Numpy dtypes of the imgCIF integer encodings, by (element size in bytes, signed).
_INT_DTYPES = {(1, True): np.int8, (1, False): np.uint8, (2, True): np.int16, (2, False): np.uint16,
               (4, True): np.int32, (4, False): np.uint32}
#: Max-pool block of an assembled multi-panel image. The assembled CSPAD is about 1,730 px
#: (0.11 mm) across: block 2 leaves about 865 px, so each 512 × 512 quadrant around the beam
#: holds a whole half-detector, while block 4 (about 430 px) would not even fill a quadrant.
_ASSEMBLED_DOWNSAMPLE_BLOCK = 2


# --- CBFlib access -----------------------------------------------------------------------------
@contextlib.contextmanager
def _cbflib_messages() -> Iterator[list[str]]:
    """Collect what CBFlib prints on the C-level stderr (warnings, parse errors) and log it.

    CBFlib writes its diagnostics straight to file descriptor 2; while the block runs they go
    to a temporary file, and then into the yielded list and the DEBUG log.
    """
    lines: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield lines  # no usable descriptor 2 (an embedded interpreter): CBFlib prints as usual
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode("utf-8", "replace").splitlines())
            for line in lines:
                log.debug("%s", line)


def _cbflib_call(path: Path, expected: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` (pycbf calls) and turn any failure into a one-line :class:`CorruptImageError`.

    Raises
    ------
    CorruptImageError
        Naming ``path``, what was ``expected``, CBFlib's error code and first error message.
    """
    with _cbflib_messages() as messages:
        try:
            return fn()
        except CorruptImageError:
            raise
        except Exception as exc:  # pycbf raises a bare Exception for every CBFlib error code
            error = exc
    reason = " ".join(str(error).replace("CBFlib Error(s):", "CBFlib").split()) or type(error).__name__
    detail = next((m.replace("CBFlib: ", "").strip() for m in messages if "error" in m), "")
    raise CorruptImageError(f"{path.name}: expected {expected}; {reason}" + (f" ({detail})" if detail else ""))


def _load_handle(path: Path) -> Any:
    """A pycbf handle on the whole file (``.gz``/``.bz2``/``.xz`` decompressed first)."""
    from xrais.conditioning.readers.cbf import cbf_binary_sections

    with open_maybe_compressed(path) as fh:
        data = fh.read()
    if not cbf_binary_sections(path, data):  # sizes, checksums and element counts, with reasons CBFlib omits
        raise CorruptImageError(f"{path.name}: no CBF binary section in its {len(data)} bytes; the file is "
                                "truncated or not a CBF image")
    handle = pycbf.cbf_handle_struct()
    handle.read_buffer(data, pycbf.MSG_DIGEST)  # MSG_DIGEST: binary sections must match their MD5
    return handle


def _read_table(handle: Any, category: str) -> list[Row]:
    """Rows of a CIF category as dicts; ``.``, ``?`` and binary values become None; [] if absent."""
    try:
        handle.find_category(category.encode())
    except Exception:  # CBF_NOTFOUND
        return []
    names = []
    for c in range(handle.count_columns()):
        handle.select_column(c)
        names.append(handle.column_name().decode())
    rows = []
    for r in range(handle.count_rows()):
        handle.rewind_column()
        handle.select_row(r)
        row: Row = {}
        for c, name in enumerate(names):
            handle.select_column(c)
            try:
                value: str | None = handle.get_value().decode("utf-8", "replace").strip()
            except Exception:  # a binary value
                value = None
            row[name] = None if value in (None, ".", "?") else value
        rows.append(row)
    return rows


def _read_arrays(handle: Any) -> dict[str, np.ndarray]:
    """Every binary array by ``_array_data.array_id``: shape (n_layer, n_slow, n_fast), native dtype."""
    ids = [row.get("array_id") or f"array{i}" for i, row in enumerate(_read_table(handle, "array_data"))]
    if not ids:
        raise ValueError("no _array_data.data section")
    handle.find_category(b"array_data")
    handle.find_column(b"data")
    arrays = {}
    for r, array_id in enumerate(ids):
        handle.select_row(r)
        try:
            p = handle.get_integerarrayparameters_wdims_fs()
        except Exception:  # not an integer array: IEEE reals
            p = handle.get_realarrayparameters_wdims_fs()
            dtype, dims, raw = np.dtype(f"f{p[2]}"), p[5:8], handle.get_realarray_as_string()
        else:
            dtype, dims, raw = np.dtype(_INT_DTYPES[(p[2], bool(p[3]))]), p[9:12], handle.get_integerarray_as_string()
        n_fast, n_mid, n_slow = dims  # CBFlib returns the elements in the machine's byte order
        arrays[array_id] = np.frombuffer(raw, dtype=dtype).reshape(max(n_slow, 1), max(n_mid, 1), n_fast)
    return arrays


# --- panel layout ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Region:
    """Where one panel's pixels lie in an array (0-based) and which axis sets span them."""

    name: str
    array_id: str
    fast: slice
    slow: slice
    layer: int
    fast_axis_set: str
    slow_axis_set: str


def _panel_regions(handle: Any) -> list[_Region]:
    """One region per array section that has its own axes, else one per whole 2-D array."""
    whole: dict[str, dict[int, tuple[int, int, str | None]]] = {}  # array → index → (dim, precedence, set)
    section_sets: dict[tuple[str, str], dict[int, str | None]] = {}
    for row in _read_table(handle, "array_structure_list"):
        array_id, section_id, index = str(row["array_id"]), row.get("array_section_id"), int(row["index"] or 0)
        if (row.get("direction") or "increasing") != "increasing":
            raise ValueError(f"array {array_id} index {index} runs {row['direction']!r}; expected 'increasing'")
        if section_id in (None, array_id):
            whole.setdefault(array_id, {})[index] = (int(row["dimension"] or 0), int(row["precedence"] or 0),
                                                     row.get("axis_set_id"))
        else:
            section_sets.setdefault((array_id, section_id), {})[index] = row.get("axis_set_id")
    bounds: dict[str, dict[int, tuple[int, int]]] = {}
    for row in _read_table(handle, "array_structure_list_section"):
        if (row.get("stride") or "1") != "1":
            raise ValueError(f"section {row['id']} has stride {row['stride']}; expected 1")
        bounds.setdefault(str(row["id"]), {})[int(row["index"] or 0)] = (int(row["start"] or 1), int(row["end"] or 1))
    regions = []
    for array_id, dims in whole.items():
        order = sorted(dims, key=lambda i: dims[i][1])  # fastest index first
        sections = [(s, sets) for (a, s), sets in section_sets.items() if a == array_id]
        for section_id, sets in sections or [(array_id, {i: dims[i][2] for i in dims})]:
            ranges = [bounds.get(section_id, {}).get(i, (1, dims[i][0])) for i in order]
            regions.append(_region(array_id, section_id, ranges, [sets.get(i) for i in order]))
    if not regions:
        raise ValueError("no _array_structure_list rows")
    return regions


def _region(array_id: str, section_id: str, ranges: list[tuple[int, int]], sets: list[str | None]) -> _Region:
    """A panel from its 1-based inclusive index ranges and axis sets, fastest index first."""
    if len(ranges) < 2 or any(lo != hi for lo, hi in ranges[2:]):
        raise ValueError(f"{section_id}: expected a 2-D panel, one layer of array {array_id}")
    if sets[0] is None or sets[1] is None:
        raise ValueError(f"{section_id}: no axis sets for its fast and slow indices")
    (f0, f1), (s0, s1) = ranges[0], ranges[1]
    layer = ranges[2][0] - 1 if len(ranges) > 2 else 0
    return _Region(section_id, array_id, slice(f0 - 1, f1), slice(s0 - 1, s1), layer, sets[0], sets[1])


# --- geometry from the axis chain --------------------------------------------------------------
class _AxisChain:
    """The imgCIF axes of one file (each read once) and positions along their dependency chains."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self._axes: dict[str, tuple[str, np.ndarray, np.ndarray, str | None, float]] = {}
        self.axis_sets = {  # axis_set_id → (axis_id, displacement of index 0 in mm, increment in mm)
            str(row["axis_set_id"]): (str(row["axis_id"]), float(row.get("displacement") or 0.0),
                                      float(row.get("displacement_increment") or 0.0))
            for row in _read_table(handle, "array_structure_list_axis")
        }

    def axis(self, axis_id: str) -> tuple[str, np.ndarray, np.ndarray, str | None, float]:
        """(type, vector, offset in mm, depends_on, setting of the frame in mm or degrees)."""
        if axis_id not in self._axes:
            h, key = self._handle, axis_id.encode()
            parent = h.get_axis_depends_on(key).decode()
            self._axes[axis_id] = (h.get_axis_type(key).decode(), np.asarray(h.get_axis_vector(key), float),
                                   np.asarray(h.get_axis_offset(key), float),
                                   None if parent in ("", ".", "?") else parent, float(h.get_axis_setting(key)[0]))
        return self._axes[axis_id]

    def ancestors(self, axis_id: str) -> list[str]:
        """``axis_id`` and the axes it depends on, innermost first."""
        chain = [axis_id]
        while (parent := self.axis(chain[-1])[3]) is not None:
            if parent in chain:
                raise ValueError(f"axis {axis_id} depends on itself")
            chain.append(parent)
        return chain

    def position_mm(self, inner: str, settings: dict[str, float]) -> np.ndarray:
        """Lab position (mm) of the base of axis ``inner``, with some axis settings replaced."""
        p = np.zeros(3)
        for axis_id in self.ancestors(inner):
            kind, vector, offset, _, setting = self.axis(axis_id)
            setting = settings.get(axis_id, setting)
            if kind == "rotation":
                p = offset + rotation_matrix(vector, setting) @ p
            elif kind == "translation":
                p = offset + p + setting * vector
            else:
                raise ValueError(f"axis {axis_id} of type {kind!r} cannot carry a detector")
        return p

    def panel_geometry(self, region: _Region) -> dict[str, Any]:
        """``origin_mm``, ``fast_axis``, ``slow_axis`` and ``pixel_size_mm`` of one panel."""
        (fast_id, f_disp, f_inc), (slow_id, s_disp, s_inc) = (self.axis_sets[region.fast_axis_set],
                                                              self.axis_sets[region.slow_axis_set])
        if self.axis(fast_id)[0] != "translation" or self.axis(slow_id)[0] != "translation":
            raise ValueError(f"pixel axes {fast_id}, {slow_id} are not both translations (not a flat panel)")
        inner = fast_id if slow_id in self.ancestors(fast_id) else slow_id
        if fast_id not in self.ancestors(inner):
            raise ValueError(f"pixel axes {fast_id} and {slow_id} are not on one axis chain")

        def at(i_fast: int, i_slow: int) -> np.ndarray:
            # A section's axis set is its own: ``displacement`` is that of the section's first pixel.
            return self.position_mm(inner, {fast_id: f_disp + i_fast * f_inc, slow_id: s_disp + i_slow * s_inc})

        origin = at(0, 0)
        # The pitch is the increment along the (unit) axis vector, exact as written in the header.
        return {"origin_mm": tuple(origin), "fast_axis": tuple(at(1, 0) - origin),
                "slow_axis": tuple(at(0, 1) - origin),
                "pixel_size_mm": (abs(f_inc) * float(np.linalg.norm(self.axis(fast_id)[1])),
                                  abs(s_inc) * float(np.linalg.norm(self.axis(slow_id)[1])))}


# --- header facts ------------------------------------------------------------------------------
def _intensity_limits(handle: Any) -> dict[str, dict[str, float]]:
    """``array_id`` → {overload, undefined_value, underload} as far as ``_array_intensities`` gives them."""
    return {str(row.get("array_id")): {k: float(row[k]) for k in ("overload", "undefined_value", "underload")
                                       if row.get(k) is not None}
            for row in _read_table(handle, "array_intensities")}


def _trusted_range(limits: dict[str, float], dtype: np.dtype) -> tuple[float, float]:
    """(lowest, highest) valid count: above ``underload`` and below ``overload``, else the dtype's range."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        lo = limits["underload"] + 1 if "underload" in limits else info.min
        hi = limits["overload"] - 1 if "overload" in limits else info.max
        return float(lo), float(hi)
    lo = np.nextafter(limits["underload"], np.inf) if "underload" in limits else -np.inf
    hi = np.nextafter(limits["overload"], -np.inf) if "overload" in limits else np.inf
    return float(lo), float(hi)


def _header_facts(handle: Any) -> dict[str, Any]:
    """Date, detector, source and exposure, as the imgCIF header gives them."""
    facts: dict[str, Any] = {"format": "imgcif", "datablock": handle.datablock_name().decode()}
    for key, category, column in [
        ("date", "diffrn_scan_frame", "date"), ("exposure_s", "diffrn_scan_frame", "integration_time"),
        ("detector_id", "diffrn_detector", "id"), ("detector_type", "diffrn_detector", "type"),
        ("detector_details", "diffrn_detector", "details"), ("source", "diffrn_source", "type"),
        ("measurement_method", "diffrn_measurement", "method"),
        ("compression", "array_structure", "compression_type"),
    ]:
        rows = _read_table(handle, category)
        value = rows[0].get(column) if rows else None
        if value is not None:
            facts[key] = float(value) if key == "exposure_s" else value.strip("'\"")
    return facts


def _beam(handle: Any) -> Beam:
    """Wavelength from ``_diffrn_radiation_wavelength``; direction opposite the ``source`` axis."""
    direction = (0.0, 0.0, -1.0)
    for row in _read_table(handle, "axis"):
        if row.get("equipment") == "source":
            direction = tuple(-float(row.get(f"vector[{i}]") or 0.0) for i in (1, 2, 3))  # type: ignore[assignment]
    return Beam(wavelength_A=float(handle.get_wavelength()), direction=direction)


@dataclass(frozen=True)
class _Decoded:
    """Everything read from one file, before it becomes a DiffractionImage."""

    header: dict[str, Any]
    beam: Beam
    arrays: dict[str, np.ndarray]
    regions: list[_Region]
    geometry: list[dict[str, Any]]
    limits: dict[str, dict[str, float]]


def _decode(path: Path) -> _Decoded:
    """Header, panel geometry and pixels of an imgCIF file.

    Raises
    ------
    CorruptImageError
        If CBFlib cannot parse the file or decode its arrays, or the header lacks geometry.
    """
    handle = _cbflib_call(path, "a complete CBF file that CBFlib can parse", lambda: _load_handle(path))
    header = _cbflib_call(path, "imgCIF header categories", lambda: _header_facts(handle))
    beam = _cbflib_call(path, "a wavelength in _diffrn_radiation_wavelength", lambda: _beam(handle))

    def geometry() -> tuple[list[_Region], list[dict[str, Any]]]:
        regions, chain = _panel_regions(handle), _AxisChain(handle)
        return regions, [chain.panel_geometry(r) for r in regions]

    regions, geom = _cbflib_call(path, "imgCIF detector axes for every array", geometry)
    arrays = _cbflib_call(path, "binary arrays that decode intact (declared size, Content-MD5)",
                          lambda: _read_arrays(handle))
    limits = _cbflib_call(path, "a readable _array_intensities category", lambda: _intensity_limits(handle))
    return _Decoded(header, beam, arrays, regions, geom, limits)


def _geometry_call(path: Path, fn: Callable[[], T]) -> T:
    """Run a geometry step; an error caused by the header's geometry names the file."""
    try:
        return fn()
    except CorruptImageError:
        raise
    except XraisError as exc:
        raise CorruptImageError(f"{path.name}: expected a usable detector geometry; {exc}") from exc


# --- the reader --------------------------------------------------------------------------------
class ImgCIFReader(ImageReader):
    """Full imgCIF CBF files through pycbf: one flat panel, or many panels assembled (one frame)."""

    name = "imgcif"
    priority = 10

    @classmethod
    def understand(cls, path: Path) -> bool:
        """True for a CBF with full imgCIF categories that is not a PILATUS-convention miniCBF."""
        try:
            head = read_head(path, _HEAD_BYTES)
            if not (head.startswith(b"###CBF") or (b"data_" in head[:2048] and b"_array_" in head)):
                return False
            i = head.find(b"_array_data.header_convention")
            if i >= 0 and any(k in head[i : i + 120] for k in (b"PILATUS", b"SLS")):
                return False  # a miniCBF, for the miniCBF reader
            return any(token in head for token in _IMGCIF_TOKENS)
        except Exception:  # understand() never raises
            return False

    @property
    def n_frames(self) -> int:
        return 1

    def _read_frame(self, index: int) -> DiffractionImage:
        d = _decode(self.path)
        panels, panel_pixels = _geometry_call(self.path, lambda: self._panels(d))
        masks = []
        for region, panel, data in zip(d.regions, panels, panel_pixels):
            undefined = d.limits.get(region.array_id, {}).get("undefined_value")
            masks.append(trusted_mask(data, panel.trusted_range, () if undefined is None else (undefined,)))
        header = {**d.header, **d.limits.get(d.regions[0].array_id, {}), "wavelength_A": d.beam.wavelength_A,
                  "n_arrays": len(d.arrays), "n_panels": len(panels), "pixel_size_mm": panels[0].pixel_size_mm}
        name = str(d.header.get("detector_type") or d.header.get("detector_id") or "imgcif")
        common = {"beam": d.beam, "path": self.path, "frame": index, "format": self.name, "header": header}
        if len(panels) == 1:
            return self._flat_image(panels[0], panel_pixels[0], masks[0], name, common)
        return self._assembled_image(panels, panel_pixels, masks, name, common)

    def _flat_image(self, panel: Panel, pixels: np.ndarray, mask: np.ndarray, name: str,
                    common: dict[str, Any]) -> DiffractionImage:
        """A one-panel detector's frame as stored (native dtype), its beam centre from the geometry."""
        detector = _flat_detector(panel, name)
        center = _geometry_call(self.path, lambda: detector.beam_center_px(common["beam"]))
        common["header"].update(distance_mm=panel.distance_mm, beam_xy_px=center)
        return DiffractionImage(pixels=np.ascontiguousarray(pixels), mask=mask, detector=detector,
                                beam_center_px=center, downsample_block=detector.downsample_block, **common)

    def _assembled_image(self, panels: list[Panel], panel_pixels: list[np.ndarray], masks: list[np.ndarray],
                         name: str, common: dict[str, Any]) -> DiffractionImage:
        """Many panels resampled onto one flat grid normal to the beam (float32); the detector keeps them."""
        detector = Detector(panels=tuple(panels), name=name, downsample_block=_ASSEMBLED_DOWNSAMPLE_BLOCK)
        assembled = _geometry_call(
            self.path, lambda: detector.assemble(panel_pixels, common["beam"], panel_masks=masks))
        common["header"].update(distance_mm=assembled.distance_mm, beam_xy_px=assembled.beam_center_px,
                                assembled_pixel_size_mm=assembled.pixel_size_mm)
        return DiffractionImage(pixels=assembled.pixels, mask=assembled.mask, detector=detector,
                                beam_center_px=assembled.beam_center_px,
                                downsample_block=_ASSEMBLED_DOWNSAMPLE_BLOCK, **common)

    def _panels(self, d: _Decoded) -> tuple[list[Panel], list[np.ndarray]]:
        """One Panel per region and its pixels, shape (n_slow, n_fast) each."""
        first_row, rows = {}, 0  # where each array layer starts in the slow-stacked data array
        for array_id, a in d.arrays.items():
            for layer in range(a.shape[0]):
                first_row[(array_id, layer)], rows = rows, rows + a.shape[1]
        panels, pixels = [], []
        for region, geom in zip(d.regions, d.geometry):
            a = d.arrays.get(region.array_id)
            data = a[region.layer, region.slow, region.fast] if a is not None and region.layer < a.shape[0] else None
            expected = (region.slow.stop - region.slow.start, region.fast.stop - region.fast.start)
            if a is not None and region.name == region.array_id and expected != a.shape[1:]:
                raise CorruptImageError(
                    f"{self.path.name}: _array_structure_list gives array {region.array_id} as {expected[1]}×"
                    f"{expected[0]} px, its binary data hold {a.shape[2]}×{a.shape[1]}; the header is damaged")
            if data is None or data.shape != expected:
                raise CorruptImageError(
                    f"{self.path.name}: expected panel {region.name} ({expected[1]}×{expected[0]} px) inside "
                    f"array {region.array_id}, found array shape {None if a is None else a.shape}")
            panels.append(Panel(name=region.name, image_size=(expected[1], expected[0]),
                                array_offset_px=(region.fast.start, first_row[(region.array_id, region.layer)]
                                                 + region.slow.start),
                                trusted_range=_trusted_range(d.limits.get(region.array_id, {}), a.dtype), **geom))
            pixels.append(data)
        return panels, pixels


def _flat_detector(panel: Panel, name: str) -> Detector:
    """A one-panel detector, named and pooled as its catalog entry when its size and pitch match one."""
    entry = catalog_entry_for_shape(*panel.image_size, panel.pixel_size_mm[0])
    if entry is not None:
        return Detector(panels=(panel,), name=entry.name, downsample_block=entry.downsample_block)
    return Detector(panels=(panel,), name=name, downsample_block=default_downsample_block(panel.pixel_size_mm[0]))
