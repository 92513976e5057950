"""EIGER / NXmx HDF5: a master file whose frames live in one or more linked data files.

Layout read (DECTRIS EIGER firmware and other NXmx writers):

* ``/entry/data/data_000001``, ``data_000002`` … are external links to ``/entry/data/data`` in
  ``<prefix>_data_000001.h5`` …, each of shape (n_frames, n_slow, n_fast). Together they are
  one stream: frame 0 of the second file follows the last frame of the first. A dataset
  ``/entry/data/data`` in the file itself (plain or virtual) works too.
* ``/entry/instrument/detector``: ``beam_center_x``/``beam_center_y`` (pixels, or a length),
  ``detector_distance`` (or ``distance``, or the translations in ``transformations``),
  ``x_pixel_size``/``y_pixel_size``, ``sensor_thickness``, ``sensor_material``,
  ``description``, ``detector_number``, ``count_time``, ``frame_time``, ``bit_depth_image``,
  ``saturation_value``, ``underload_value``; in ``detectorSpecific`` (or the detector group):
  ``pixel_mask``, ``countrate_correction_count_cutoff``, ``x_pixels_in_detector``,
  ``y_pixels_in_detector``, ``data_collection_date``, ``photon_energy``.
* The wavelength: ``/entry/instrument/beam/incident_wavelength``,
  ``/entry/sample/beam/incident_wavelength`` (older EIGER firmware),
  ``/entry/instrument/monochromator/wavelength``, else an energy (``incident_energy``,
  ``detectorSpecific/photon_energy``; λ = hc/E).

Every ``units`` attribute is honoured (``m``, ``mm``, ``um``, ``nm``, ``angstrom``, ``eV``,
``keV`` …); without one, lengths are metres and wavelengths Å, as DECTRIS writes them.

Masked pixels: ``pixel_mask`` ≠ 0; the all-ones value of the bit depth (65535 for 16-bit,
4294967295 for 32-bit unsigned data, −1 for signed); counts ≥
``countrate_correction_count_cutoff`` (or > ``saturation_value`` when there is no cutoff),
below ``underload_value``; the module gaps of a catalog detector.

A data file opened alone yields only its own frames; its geometry comes from
``<prefix>_master.h5`` beside it when that exists, else from whatever the data file holds.

Bitshuffle-compressed chunks (HDF5 filter 32008) are decoded by hdf5plugin's filter, but their
block framing is checked first (:func:`check_bitshuffle_chunk`): the filter trusts the
per-block lengths and reads past a truncated or damaged chunk, which would crash the process
instead of raising. The same helpers decode DECTRIS stream frames
(:mod:`xrais.conditioning.readers.stream`), whose pixel blobs are such chunks.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from xrais.conditioning.image import DiffractionImage, trusted_mask
from xrais.conditioning.readers.base import ImageReader
from xrais.conditioning.readers.eiger import (
    BITSHUFFLE_FILTER_ID,
    decode_bitshuffle_chunk,
    eiger_detector,
    eiger_trusted_range,
    h5_reason,
    DATA_FILE_NAME,
    master_for_data_file,
    undefined_pixel_value,
)
from xrais.errors import CorruptImageError, GeometryError, XraisError
from xrais.geometry import HC_EV_A, Beam, Detector

__all__ = ["NXmxReader", "HDF5_SIGNATURE"]

log = logging.getLogger(__name__)

#: The 8 bytes every HDF5 file without a user block starts with.
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

_BSHUF_CNAMES = {2: "lz4", 3: "zstd"}  # bitshuffle cd_values[4] → compressor
_DATA_LINK = re.compile(r"data_(\d+)")

_LENGTH_MM = {
    "m": 1e3, "meter": 1e3, "meters": 1e3, "metre": 1e3, "metres": 1e3,
    "cm": 10.0, "mm": 1.0, "millimeter": 1.0, "millimeters": 1.0, "millimetre": 1.0,
    "um": 1e-3, "µm": 1e-3, "μm": 1e-3, "micron": 1e-3, "microns": 1e-3,
    "micrometer": 1e-3, "micrometers": 1e-3, "micrometre": 1e-3, "nm": 1e-6,
}
_WAVELENGTH_A = {
    "angstrom": 1.0, "angstroms": 1.0, "a": 1.0, "å": 1.0, "ang": 1.0,
    "nm": 10.0, "pm": 0.01, "m": 1e10,
}
_ENERGY_EV = {"ev": 1.0, "kev": 1e3}
_PIXEL_UNITS = {"pixel", "pixels", "px"}



# --------------------------------------------------------------------------- HDF5 helpers


def _open_h5(path: Path) -> h5py.File:
    """Open ``path`` read-only without HDF5 file locking (files may sit on read-only mounts)."""
    return h5py.File(path, "r", locking=False)


def _text(value: Any) -> str:
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0] if value.size else ""
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("utf-8", "replace").strip("\x00").strip()
    return str(value).strip()


def _find_entry(f: h5py.File) -> h5py.Group | None:
    """``/entry``, else the first top-level group whose ``NX_class`` is ``NXentry``."""
    entry = f.get("entry")
    if isinstance(entry, h5py.Group):
        return entry
    for name in f:
        try:
            obj = f.get(name)
        except (KeyError, OSError):  # a dangling link at the top level
            continue
        if isinstance(obj, h5py.Group) and _text(obj.attrs.get("NX_class", "")) == "NXentry":
            return obj
    return None


def _data_link_names(entry: h5py.Group) -> list[str]:
    """Members of ``entry/data`` holding frames: ``data``, else ``data_NNNNNN`` in order.

    Lists link names only, so missing external files are not touched.
    """
    group = entry.get("data")
    if not isinstance(group, h5py.Group):
        return []
    names = list(group)
    if "data" in names:
        return ["data"]
    numbered = [n for n in names if _DATA_LINK.fullmatch(n)]
    return sorted(numbered, key=lambda n: int(_DATA_LINK.fullmatch(n).group(1)))  # type: ignore[union-attr]


def _dataset(group: h5py.Group | None, *names: str) -> h5py.Dataset | None:
    """The first of ``names`` that is a dataset in ``group``."""
    if group is None:
        return None
    for name in names:
        try:
            obj = group.get(name)
        except (KeyError, OSError, ValueError):
            obj = None
        if isinstance(obj, h5py.Dataset):
            return obj
    return None


def _first(*candidates: h5py.Dataset | None) -> h5py.Dataset | None:
    """The first candidate that is not ``None`` (h5py objects have their own truth value)."""
    return next((c for c in candidates if c is not None), None)


def _scalar(ds: h5py.Dataset) -> Any:
    value = ds[()]
    if isinstance(value, np.ndarray):
        if value.size != 1:
            return value
        value = value.reshape(-1)[0]
    if isinstance(value, (bytes, np.bytes_)):
        return _text(value)
    return value.item() if isinstance(value, np.generic) else value


def _units(ds: h5py.Dataset) -> str | None:
    unit = _text(ds.attrs.get("units", "")) if "units" in ds.attrs else ""
    return unit or None


def _converted(ds: h5py.Dataset, table: dict[str, float], default: str, label: str) -> float:
    """The scalar in ``ds`` times the factor of its ``units`` attribute in ``table``."""
    unit = _units(ds) or default
    factor = table.get(unit.lower())
    if factor is None:
        raise GeometryError(
            f"{label}: {ds.name} has units {unit!r}; expected one of {', '.join(sorted(table))}"
        )
    try:
        return float(_scalar(ds)) * factor
    except (TypeError, ValueError):
        raise GeometryError(f"{label}: {ds.name} is not a number") from None


def _number(ds: h5py.Dataset | None) -> float | None:
    if ds is None:
        return None
    try:
        value = float(_scalar(ds))
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _Geometry:
    """What an NXmx header says about one series (lengths in mm, wavelength in Å)."""

    pixel_size_mm: tuple[float, float]
    distance_mm: float
    beam_center_px: tuple[float, float]
    wavelength_A: float
    thickness_mm: float = 0.0
    material: str = ""
    n_pixels: tuple[int, int] | None = None
    bit_depth: int | None = None
    count_cutoff: float | None = None
    saturation_value: float | None = None
    underload_value: float | None = None
    pixel_mask: np.ndarray | None = None
    header: dict[str, Any] = field(default_factory=dict)


def _detector_distance_mm(det: h5py.Group, label: str) -> float | None:
    ds = _dataset(det, "detector_distance", "distance")
    if ds is not None:
        return _converted(ds, _LENGTH_MM, "m", label)
    transformations = det.get("transformations")
    if not isinstance(transformations, h5py.Group):
        return None
    z_mm, found = 0.0, False
    for name in transformations:
        ds = _dataset(transformations, name)
        if ds is None or _text(ds.attrs.get("transformation_type", "")) != "translation":
            continue
        vector = np.asarray(ds.attrs.get("vector", (0.0, 0.0, 1.0)), dtype=float).reshape(-1)
        if vector.shape != (3,) or not np.linalg.norm(vector):
            continue
        z_mm += _converted(ds, _LENGTH_MM, "m", label) * vector[2] / np.linalg.norm(vector)
        found = True
    return abs(z_mm) if found else None


def _wavelength_A(entry: h5py.Group, specific: h5py.Group | None, label: str) -> float | None:
    candidates = [("instrument/beam", "incident_wavelength"), ("sample/beam", "incident_wavelength"),
                  ("instrument/monochromator", "wavelength")]
    for group, name in candidates:
        ds = _dataset(entry.get(group), name)
        if ds is not None:
            return _converted(ds, _WAVELENGTH_A, "angstrom", label)
    for group, name in [("instrument/beam", "incident_energy"), ("sample/beam", "incident_energy"),
                        ("instrument/monochromator", "energy")]:
        ds = _dataset(entry.get(group), name)
        if ds is not None:
            return HC_EV_A / _converted(ds, _ENERGY_EV, "eV", label)
    ds = _dataset(specific, "photon_energy")
    if ds is not None:
        return HC_EV_A / _converted(ds, _ENERGY_EV, "eV", label)
    return None


def _beam_center_px(det: h5py.Group, name: str, pixel_mm: float | None, label: str) -> float | None:
    ds = _dataset(det, name)
    if ds is None:
        return None
    unit = _units(ds)
    if unit is None or unit.lower() in _PIXEL_UNITS:
        return _converted(ds, {unit.lower() if unit else "pixel": 1.0}, "pixel", label)
    if pixel_mm is None:
        return None
    return _converted(ds, _LENGTH_MM, "m", label) / pixel_mm


def _pixel_mask(det: h5py.Group, specific: h5py.Group | None) -> np.ndarray | None:
    ds = _first(_dataset(specific, "pixel_mask"), _dataset(det, "pixel_mask"))
    if ds is None:
        return None
    mask = np.asarray(ds[()])
    return mask[0] if mask.ndim == 3 else mask


def _nxmx_geometry(entry: h5py.Group, label: str, where: str) -> _Geometry:
    """The beam, detector and mask facts of an NXmx entry.

    Parameters
    ----------
    entry : h5py.Group
        The NXentry.
    label : str
        Names the image in error messages.
    where : str
        Names the file the geometry was looked for in (for the "missing" message).

    Raises
    ------
    GeometryError
        Naming every required quantity that is missing, or a unit that is not understood.
    """
    det = entry.get("instrument/detector")
    det = det if isinstance(det, h5py.Group) else None
    if det is None:
        raise GeometryError(f"{label}: no /entry/instrument/detector group in {where}, so no geometry")
    specific = det.get("detectorSpecific")
    specific = specific if isinstance(specific, h5py.Group) else None
    px = {a: _dataset(det, f"{a}_pixel_size") for a in "xy"}
    pixel = {a: _converted(ds, _LENGTH_MM, "m", label) if ds is not None else None for a, ds in px.items()}
    values = {
        "x_pixel_size": pixel["x"],
        "y_pixel_size": pixel["y"],
        "detector_distance": _detector_distance_mm(det, label),
        "beam_center_x": _beam_center_px(det, "beam_center_x", pixel["x"], label),
        "beam_center_y": _beam_center_px(det, "beam_center_y", pixel["y"], label),
        "incident_wavelength": _wavelength_A(entry, specific, label),
    }
    missing = [k for k, v in values.items() if v is None]
    if missing:
        raise GeometryError(f"{label}: NXmx geometry incomplete, no {', '.join(missing)} in {where}")
    n_fast, n_slow = (_number(_first(_dataset(specific, f"{a}_pixels_in_detector"),
                                     _dataset(det, f"{a}_pixels_in_detector"))) for a in "xy")
    thickness = _dataset(det, "sensor_thickness")
    cutoff_ds = _first(_dataset(specific, "countrate_correction_count_cutoff"),
                       _dataset(det, "countrate_correction_count_cutoff"))
    bit_depth = _number(_dataset(det, "bit_depth_image", "bit_depth_readout"))
    return _Geometry(
        pixel_size_mm=(values["x_pixel_size"], values["y_pixel_size"]),  # type: ignore[arg-type]
        distance_mm=values["detector_distance"],  # type: ignore[arg-type]
        beam_center_px=(values["beam_center_x"], values["beam_center_y"]),  # type: ignore[arg-type]
        wavelength_A=values["incident_wavelength"],  # type: ignore[arg-type]
        thickness_mm=_converted(thickness, _LENGTH_MM, "m", label) if thickness is not None else 0.0,
        material=_text(_scalar(m)) if (m := _dataset(det, "sensor_material")) is not None else "",
        n_pixels=(int(n_fast), int(n_slow)) if n_fast and n_slow else None,
        bit_depth=int(bit_depth) if bit_depth else None,
        count_cutoff=_number(cutoff_ds),
        saturation_value=_number(_dataset(det, "saturation_value")),
        underload_value=_number(_dataset(det, "underload_value")),
        pixel_mask=_pixel_mask(det, specific),
        header=_header_facts(det, specific),
    )


def _header_facts(det: h5py.Group, specific: h5py.Group | None) -> dict[str, Any]:
    """Descriptive header entries (names shared with the other readers)."""
    facts: dict[str, Any] = {}
    for key, group, name in [
        ("detector_model", det, "description"),
        ("serial_number", det, "detector_number"),
        ("date", specific, "data_collection_date"),
        ("roi_mode", specific, "roi_mode"),
    ]:
        ds = _dataset(group, name)
        if ds is not None:
            facts[key] = _text(_scalar(ds))
    for key, group, name in [
        ("exposure_s", det, "count_time"),
        ("frame_time_s", det, "frame_time"),
        ("count_cutoff", specific, "countrate_correction_count_cutoff"),
        ("saturation_value", det, "saturation_value"),
        ("threshold_eV", det, "threshold_energy"),
        ("photon_energy_eV", specific, "photon_energy"),
    ]:
        value = _number(_dataset(group, name))
        if value is not None:
            facts[key] = value
    return facts


# --------------------------------------------------------------------------- reader


@dataclass
class _Block:
    """One dataset of frames: where it lives, how many frames, how its chunks are packed.

    A block whose data file is missing or cannot be opened has no dataset; ``unreadable``
    says why, and each of its frames is an error (the other files' frames are still served).
    """

    file: Path
    dataset: h5py.Dataset | None
    n_frames: int
    frame_shape: tuple[int, int] | None
    bitshuffle_cname: str | None
    first_image_number: int | None
    unreadable: str = ""
    link: str = ""


def _bitshuffle_frame_chunks(ds: h5py.Dataset, frame_shape: tuple[int, int]) -> str | None:
    """The compressor if every chunk of ``ds`` is one whole frame under bitshuffle alone."""
    if ds.chunks is None or tuple(ds.chunks[-2:]) != frame_shape or math.prod(ds.chunks[:-2]) != 1:
        return None
    dcpl = ds.id.get_create_plist()
    if dcpl.get_nfilters() != 1:
        return None
    code, _flags, cd_values, _name = dcpl.get_filter(0)
    if code != BITSHUFFLE_FILTER_ID or len(cd_values) < 5:
        return None
    return _BSHUF_CNAMES.get(cd_values[4])


class NXmxReader(ImageReader):
    """EIGER / NXmx HDF5 master files (frames in linked data files) or single data files.

    Parameters
    ----------
    path : str or Path
        A master file (``…_master.h5``), an NXmx file with ``/entry/data/data``, or one data
        file (``…_data_000001.h5``).

    Raises
    ------
    CorruptImageError
        If the file or a linked data file is missing, truncated or not HDF5.
    GeometryError
        If the beam or detector geometry is missing or inconsistent with the data.
    """

    name = "nxmx"
    priority = 10

    @classmethod
    def understand(cls, path: Path) -> bool:
        """HDF5 with an NXentry holding ``data/data`` or ``data/data_NNNNNN``.

        A file that starts with the HDF5 signature but that HDF5 cannot open (truncated,
        damaged) is also claimed, so that reading it reports the corruption.
        """
        try:
            with open(path, "rb") as fh:
                if fh.read(8) != HDF5_SIGNATURE:
                    return False
        except (OSError, ValueError, TypeError):
            return False
        try:
            f = _open_h5(Path(path))
        except Exception:
            return True
        try:
            entry = _find_entry(f)
            return entry is not None and bool(_data_link_names(entry))
        except Exception:
            return False
        finally:
            f.close()

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self._files: dict[Path, h5py.File] = {}
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    # -- set-up

    def _setup(self) -> None:
        f = self._open(self.path)
        entry = _find_entry(f)
        names = _data_link_names(entry) if entry is not None else []
        if entry is None or not names:
            raise CorruptImageError(
                f"{self.path.name}: not an NXmx file; expected /entry/data/data or /entry/data/data_000001"
            )
        self._blocks = [self._block(entry, name) for name in names]
        bad = [b for b in self._blocks if b.unreadable]
        if len(bad) == len(self._blocks):
            first = bad[0]
            raise CorruptImageError(
                f"{self.path.name}: {first.link} links to {first.file.name}, which {first.unreadable}"
                + (f" (and none of its other {len(bad) - 1} data files can be read either)" if len(bad) > 1 else ""))
        self._size_unreadable_blocks(entry)
        self._starts = list(itertools.accumulate([0] + [b.n_frames for b in self._blocks]))
        shapes = {b.frame_shape for b in self._blocks if not b.unreadable}
        if len(shapes) != 1:
            raise CorruptImageError(f"{self.path.name}: data files disagree on the frame shape: {sorted(shapes)}")
        (self._frame_shape,) = shapes
        self._geometry = self._read_geometry(entry, is_data_file=names == ["data"])
        try:
            self._beam = Beam(wavelength_A=self._geometry.wavelength_A)
        except GeometryError as exc:
            raise GeometryError(f"{self.path.name}: {exc}") from None
        self._build_detector()

    def _open(self, path: Path) -> h5py.File:
        key = path.resolve()
        if key not in self._files:
            try:
                self._files[key] = _open_h5(path)
            except (OSError, ValueError) as exc:
                raise CorruptImageError(f"{path.name}: cannot open as HDF5 ({h5_reason(exc)})") from None
        return self._files[key]

    def _block(self, entry: h5py.Group, name: str) -> _Block:
        group = entry["data"]
        link = group.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            target = Path(link.filename)
            if not target.is_absolute():
                target = self.path.parent / target
            if not target.is_file() and (self.path.parent / target.name).is_file():
                target = self.path.parent / target.name  # an absolute link into a moved folder
            if not target.is_file():
                return self._unreadable_block(target, f"{group.name}/{name}", "does not exist")
            try:
                obj = self._open(target).get(link.path)
            except CorruptImageError as exc:
                return self._unreadable_block(target, f"{group.name}/{name}",
                                              str(exc).removeprefix(f"{target.name}: "))
            except (KeyError, OSError, ValueError) as exc:
                return self._unreadable_block(target, f"{group.name}/{name}",
                                              f"has no readable {link.path} ({h5_reason(exc)})")
            where = f"{target.name}:{link.path}"
        else:
            target, where = self.path, f"{self.path.name}:{group.name}/{name}"
            try:
                obj = group.get(name)
            except (KeyError, OSError) as exc:
                raise CorruptImageError(f"{where}: cannot be read ({h5_reason(exc)})") from None
        if not isinstance(obj, h5py.Dataset) or obj.ndim not in (2, 3):
            found = (f"shape {obj.shape}" if isinstance(obj, h5py.Dataset)
                     else "nothing" if obj is None else type(obj).__name__)
            raise CorruptImageError(f"{where}: expected a dataset of frames (n, slow, fast), found {found}")
        frame_shape = tuple(int(v) for v in obj.shape[-2:])
        first = obj.attrs.get("image_nr_low")
        return _Block(
            file=target,
            dataset=obj,
            n_frames=int(obj.shape[0]) if obj.ndim == 3 else 1,
            frame_shape=frame_shape,  # type: ignore[arg-type]
            bitshuffle_cname=_bitshuffle_frame_chunks(obj, frame_shape),  # type: ignore[arg-type]
            first_image_number=int(np.asarray(first).reshape(-1)[0]) if first is not None else None,
        )

    def _unreadable_block(self, target: Path, link: str, reason: str) -> _Block:
        log.warning("%s: %s links to %s, which %s; its frames will be reported as errors",
                    self.path.name, link, target.name, reason)
        return _Block(file=target, dataset=None, n_frames=1, frame_shape=None, bitshuffle_cname=None,
                      first_image_number=None, unreadable=reason, link=link)

    def _size_unreadable_blocks(self, entry: h5py.Group) -> None:
        """How many frames each unreadable data file held, as far as the master tells.

        The next data file's first image number (``image_nr_low``, 1-based) gives it exactly;
        else EIGER writes ``nimages_per_file`` frames to every data file but the last, and
        ``nimages × ntrigger`` in all: a missing file in the middle holds as many frames as its
        readable neighbours, and a single missing file the rest of the total. Without any of
        these, a missing file counts as one frame (one error row).
        """
        last = len(self._blocks) - 1
        full = [b.n_frames for i, b in enumerate(self._blocks) if not b.unreadable and i != last]
        specific = entry.get("instrument/detector/detectorSpecific")
        specific = specific if isinstance(specific, h5py.Group) else None
        nimages, ntrigger = (_number(_dataset(specific, k)) for k in ("nimages", "ntrigger"))
        total = int(nimages * (ntrigger or 1)) if nimages else None
        bad = [i for i, b in enumerate(self._blocks) if b.unreadable]
        present = sum(b.n_frames for b in self._blocks if not b.unreadable)
        for i in bad:
            prev = self._blocks[i - 1] if i else None
            nxt = self._blocks[i + 1] if i < last else None
            start = 1 if prev is None else (prev.first_image_number + prev.n_frames
                                            if not prev.unreadable and prev.first_image_number is not None else None)
            if (start is not None and nxt is not None and not nxt.unreadable
                    and nxt.first_image_number is not None and nxt.first_image_number > start):
                self._blocks[i].n_frames = nxt.first_image_number - start  # image numbers are 1-based
            elif i != last and full:
                self._blocks[i].n_frames = max(full)
            elif total is not None and len(bad) == 1 and total > present:
                self._blocks[i].n_frames = total - present
        for b in self._blocks:
            if b.unreadable:
                b.frame_shape = next(x.frame_shape for x in self._blocks if not x.unreadable)

    def _read_geometry(self, entry: h5py.Group, *, is_data_file: bool) -> _Geometry:
        master = master_for_data_file(self.path) if is_data_file else None
        if master is not None and master.resolve() != self.path.resolve():
            master_entry = _find_entry(self._open(master))
            if master_entry is None:
                raise CorruptImageError(f"{master.name}: no NXentry group, expected an EIGER master file")
            geometry = _nxmx_geometry(master_entry, self.path.name, master.name)
            geometry.header["master_file"] = master.name
            return geometry
        where = self.path.name
        m = DATA_FILE_NAME.fullmatch(self.path.name)
        if is_data_file and m is not None:
            where += f" (and no master file {m['prefix']}_master{m['ext']} beside it)"
        return _nxmx_geometry(entry, self.path.name, where)

    def _build_detector(self) -> None:
        g = self._geometry
        n_slow, n_fast = self._frame_shape
        if g.n_pixels is not None and g.n_pixels != (n_fast, n_slow):
            raise GeometryError(
                f"{self.path.name}: header says {g.n_pixels[0]}×{g.n_pixels[1]} pixels (fast×slow), "
                f"the data hold {n_fast}×{n_slow}"
            )
        dtype = next(b.dataset for b in self._blocks if b.dataset is not None).dtype
        self._undefined = undefined_pixel_value(dtype, g.bit_depth)
        trusted = eiger_trusted_range(dtype, undefined=self._undefined, count_cutoff=g.count_cutoff,
                                      saturation_value=g.saturation_value, underload_value=g.underload_value)
        self._detector = eiger_detector(
            n_fast=n_fast, n_slow=n_slow, pixel_size_mm=g.pixel_size_mm, distance_mm=g.distance_mm,
            beam_center_px=g.beam_center_px, trusted_range=trusted, thickness_mm=g.thickness_mm,
            material=g.material, serial_number=str(g.header.get("serial_number", "")),
            name=str(g.header.get("detector_model") or "nxmx"), label=self.path.name,
        )
        static = self._detector.gap_mask()
        if g.pixel_mask is not None:
            if g.pixel_mask.shape != self._frame_shape:
                raise GeometryError(
                    f"{self.path.name}: pixel_mask has shape {g.pixel_mask.shape}, the frames {self._frame_shape}"
                )
            static = static | (g.pixel_mask != 0)
        self._static_mask = static

    # -- reading

    @property
    def n_frames(self) -> int:
        """Frames in all data files together."""
        return self._starts[-1]

    @property
    def detector(self) -> Detector:
        """The detector model from the header."""
        return self._detector

    @property
    def beam(self) -> Beam:
        """The incident beam from the header."""
        return self._beam

    def _read_frame(self, index: int) -> DiffractionImage:
        k = bisect.bisect_right(self._starts, index) - 1
        block, local = self._blocks[k], index - self._starts[k]
        if block.unreadable:
            raise CorruptImageError(f"{self.path.name}: frame {index} lies in {block.file.name} "
                                    f"(linked as {block.link}), which {block.unreadable}")
        pixels = self._read_pixels(block, local)
        mask = trusted_mask(pixels, self._detector.trusted_range,
                            undefined_values=() if self._undefined is None else (self._undefined,),
                            gap_mask=self._static_mask)
        header = dict(self._geometry.header, data_file=block.file.name, frame_in_file=local)
        if block.first_image_number is not None:
            header["image_number"] = block.first_image_number + local
        return DiffractionImage(
            pixels=pixels, mask=mask, detector=self._detector, beam=self._beam,
            beam_center_px=self._detector.beam_center_px(self._beam), path=self.path, frame=index,
            format=self.name, header=header,
        )

    def _read_pixels(self, block: _Block, local: int) -> np.ndarray:
        label = f"{block.file.name}: frame {local} of {block.dataset.name}"
        ds = block.dataset
        try:
            if block.bitshuffle_cname is not None:
                offset = (local, 0, 0) if ds.ndim == 3 else (0, 0)
                filter_mask, blob = ds.id.read_direct_chunk(offset)
                if filter_mask == 0:
                    return decode_bitshuffle_chunk(blob, block.frame_shape, ds.dtype,
                                                   cname=block.bitshuffle_cname, label=label)
            return np.asarray(ds[local] if ds.ndim == 3 else ds[()])
        except XraisError:
            raise
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise CorruptImageError(f"{label} cannot be read ({h5_reason(exc)})") from None

    def close(self) -> None:
        """Close every HDF5 file this reader opened."""
        for f in self._files.values():
            try:
                f.close()
            except Exception:  # closing an already-broken file must not mask the real error
                log.debug("closing %s failed", f)
        self._files.clear()
