"""Test images made on the fly: small NXmx series, and corrupt variants of the real files (the fuzz corpus)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["make_frames", "write_nxmx", "PIXEL_MM", "DISTANCE_MM", "WAVELENGTH_A", "CENTER_PX"]

PIXEL_MM = 0.172
DISTANCE_MM = 250.0
WAVELENGTH_A = 0.9795
CENTER_PX = (300.5, 350.25)  # (fast, slow)


def make_frames(n: int, seed: int = 0, shape: tuple[int, int] = (700, 640)) -> np.ndarray:
    """``n`` int32 frames (slow, fast) of Poisson background with bright spots, distinct per frame."""
    rng = np.random.default_rng(seed)
    frames = rng.poisson(3.0, (n, *shape)).astype(np.int32)
    for i in range(n):
        ys, xs = rng.integers(0, shape[0], 30 + 5 * i), rng.integers(0, shape[1], 30 + 5 * i)
        frames[i, ys, xs] = rng.integers(200, 20000, ys.size)
    frames[:, 200:204, :] = -1  # a module gap
    return frames


def write_nxmx(path: Path, frames: np.ndarray) -> Path:
    """A single-file NXmx with ``frames`` in /entry/data/data and the geometry above."""
    import h5py

    tmp = path.with_name(f".{path.name}.tmp")
    with h5py.File(tmp, "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        data = entry.create_group("data")
        data.create_dataset("data", data=frames, chunks=(1, *frames.shape[1:]))
        beam = entry.create_group("instrument/beam")
        beam.create_dataset("incident_wavelength", data=WAVELENGTH_A).attrs["units"] = "angstrom"
        det = entry.create_group("instrument/detector")
        det.create_dataset("detector_distance", data=DISTANCE_MM * 1e-3).attrs["units"] = "m"
        det.create_dataset("beam_center_x", data=CENTER_PX[0]).attrs["units"] = "pixel"
        det.create_dataset("beam_center_y", data=CENTER_PX[1]).attrs["units"] = "pixel"
        for axis in ("x", "y"):
            det.create_dataset(f"{axis}_pixel_size", data=PIXEL_MM * 1e-3).attrs["units"] = "m"
        det.create_dataset("saturation_value", data=1_000_000)
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- the fuzz corpus

import bz2 as _bz2
import gzip as _gzip
import random as _random
import shutil as _shutil
from dataclasses import dataclass as _dataclass
from typing import Callable as _Callable


@_dataclass(frozen=True)
class FuzzCase:
    """One corrupt input: its path, what was done to it, and whether it must be refused.

    ``must_fail`` False marks damage a format cannot always notice (a flipped byte in pixel
    data without a checksum, in a comment of a header): the file may read, but never crash.
    """

    path: Path
    source: str
    damage: str
    must_fail: bool = True
    for_cli_lists: bool = True  # a folder is an image source for condition/infer, not a failed image


def _read_source(path: Path) -> bytes:
    opener = {".gz": _gzip.open, ".bz2": _bz2.open}.get(path.suffix, open)
    with opener(path, "rb") as fh:
        return fh.read()


def _flip(raw: bytes, positions: list[int]) -> bytes:
    out = bytearray(raw)
    for p in positions:
        out[p] ^= 0xFF
    return bytes(out)


def _sub(raw: bytes, old: bytes, new: bytes) -> bytes:
    assert old in raw, old
    return raw.replace(old, new, 1)


def _binary_start(raw: bytes) -> int:
    return raw.index(b"\x0c\x1a\x04\xd5") + 4


def build_fuzz_corpus(real: Path, folder: Path, seed: int = 2024) -> list[FuzzCase]:
    """Write corrupt variants of the real test images under ``folder``; one :class:`FuzzCase` each.

    Parameters
    ----------
    real : Path
        ``shared/data/real``.
    folder : Path
        Where the corpus is written (a temporary folder: corrupt files are never committed).
    seed : int
        Seeds the positions of flipped bytes.
    """
    rng = _random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    cases: list[FuzzCase] = []

    def add(name: str, data: bytes | _Callable[[Path], None], source: str, damage: str,
            must_fail: bool = True, compress: str = "", sub: str = "") -> None:
        where = folder / sub if sub else folder
        where.mkdir(parents=True, exist_ok=True)
        path = where / name
        if callable(data):
            data(path)
        else:
            if compress == "gz":
                data = _gzip.compress(data, compresslevel=1, mtime=0)
            elif compress == "bz2":
                data = _bz2.compress(data, compresslevel=1)
            path.write_bytes(data)
        cases.append(FuzzCase(path, source, damage, must_fail, for_cli_lists=not path.is_dir()))

    def common(stem: str, suffix: str, raw: bytes, source: str, header_end: int, data_start: int,
               checksummed: bool) -> None:
        n = len(raw)
        add(f"{stem}_empty{suffix}", b"", source, "empty file")
        for frac in (0.0005, 0.5, 0.97):
            cut = max(int(n * frac), 1)
            add(f"{stem}_cut{int(frac * 10000):04d}{suffix}", raw[:cut], source, f"truncated at byte {cut} of {n}")
        add(f"{stem}_cut_header{suffix}", raw[: max(header_end // 2, 1)], source, "truncated inside the header")
        span = n - data_start
        flips = sorted(rng.sample(range(data_start + span // 10, n - span // 10), 3))
        add(f"{stem}_flip_data{suffix}", _flip(raw, flips), source, f"bytes {flips} flipped in the data",
            must_fail=checksummed)
        flips = sorted(rng.sample(range(16, max(header_end - 16, 17)), 4))
        add(f"{stem}_flip_header{suffix}", _flip(raw, flips), source, f"bytes {flips} flipped in the header",
            must_fail=False)
        add(f"{stem}_dir{suffix}", lambda p: p.mkdir(), source, "a directory with an image's name")

    # miniCBF, plain, with Content-MD5 (PILATUS 6M)
    src = real / "pilatus6m/thau_3_2_0001.cbf"
    raw = _read_source(src)
    start = _binary_start(raw)
    common("p6m", ".cbf", raw, src.name, start, start, checksummed=True)
    add("p6m_width.cbf", _sub(raw, b"Fastest-Dimension: 2463", b"Fastest-Dimension: 2464"), src.name,
        "width changed in the header")
    add("p6m_size.cbf", _sub(raw, b"X-Binary-Size: 6224107", b"X-Binary-Size: 6230107"), src.name,
        "X-Binary-Size larger than the data")
    add("p6m_size_small.cbf", _sub(raw, b"X-Binary-Size: 6224107", b"X-Binary-Size: 6124107"), src.name,
        "X-Binary-Size smaller than the data")
    add("p6m_huge.cbf", _sub(_sub(raw, b"Fastest-Dimension: 2463", b"Fastest-Dimension: 999999"),
                             b"Number-of-Elements: 6224001", b"Number-of-Elements: 2526997473"),
        src.name, "huge dimensions in the header")
    add("p6m_packed.cbf", _sub(raw, b"x-CBF_BYTE_OFFSET", b"x-CBF_PACKED\"  "), src.name,
        "compression named x-CBF_PACKED for byte-offset data")
    add("p6m_gzipped.cbf", raw, src.name, "gzip data under a plain .cbf name", compress="gz")
    add("p6m_plain.cbf.gz", raw, src.name, "plain data under a .gz name")
    add("p6m_bz2_as.cbf.gz", raw, src.name, "bzip2 data under a .gz name", compress="bz2")
    add("p6m_no_geometry.cbf", _sub(raw, b"# Wavelength", b"# Wavelengt_"), src.name, "no Wavelength line")
    add("p6m_nan_wavelength.cbf", _sub(raw, b"# Wavelength 0.96859 A", b"# Wavelength nan     A"), src.name,
        "wavelength nan (text header)")
    add("p6m_zero_pixel.cbf", _sub(raw, b"# Pixel_size 172e-6 m x 172e-6 m", b"# Pixel_size 000e-6 m x 000e-6 m"),
        src.name, "pixel size 0 (text header)")

    # miniCBF .gz without Content-MD5 (EIGER 16M) and .bz2 (PILATUS 6M)
    src = real / "eiger16m/dlsnxs2cbf_therm_0001.cbf.gz"
    raw = _read_source(src)
    gz = src.read_bytes()
    add("e16m_cutgz.cbf.gz", gz[: len(gz) // 2], src.name, "gzip stream truncated at half")
    add("e16m_flipgz.cbf.gz", _flip(gz, [len(gz) // 3, len(gz) // 3 + 7]), src.name, "bytes flipped in the gzip stream")
    add("e16m_elements.cbf.gz", _sub(raw, b"Number-of-Elements: 18093576", b"Number-of-Elements: 18093575"),
        src.name, "element count off by one", compress="gz")
    start = _binary_start(raw)
    add("e16m_cut.cbf.gz", raw[: start + 5_000_000], src.name, "data truncated (no MD5)", compress="gz")
    src = real / "pilatus6m/thau_3_2_0003.cbf.bz2"
    bz = src.read_bytes()
    add("p6m_cutbz2.cbf.bz2", bz[: len(bz) // 2], src.name, "bzip2 stream truncated at half")
    add("p6m_empty.cbf.bz2", b"", src.name, "empty .bz2")

    # full imgCIF: Rayonix (one array, packed) and CSPAD (four arrays)
    for stem, rel in (("rayonix", "rayonix340/hit-20181213155134902.cbf"),
                      ("cspad", "cspad/idx-20130301060858401.cbf")):
        src = real / rel
        raw = _read_source(src)
        start = _binary_start(raw)
        common(stem, ".cbf", raw, src.name, raw.index(b"--CIF-BINARY-FORMAT-SECTION--"), start, checksummed=True)
    src = real / "rayonix340/hit-20181213155134902.cbf"
    raw = _read_source(src)
    add("rayonix_width.cbf", _sub(raw, b"Fastest-Dimension: 1920", b"Fastest-Dimension: 1921"), src.name,
        "width changed in the binary header")
    add("rayonix_size.cbf", _sub(raw, b"X-Binary-Size: 2899552", b"X-Binary-Size: 2999552"), src.name,
        "X-Binary-Size larger than the data")
    add("rayonix_huge.cbf", _sub(_sub(raw, b"Fastest-Dimension: 1920", b"Fastest-Dimension: 9999999"),
                                 b"Number-of-Elements: 3686400", b"Number-of-Elements: 19199998080"),
        src.name, "huge dimensions in the header")
    add("rayonix_byteoffset.cbf", _sub(raw, b'conversions="x-CBF_PACKED"', b'conversions="x-CBF_BYTE_OFFSET"'),
        src.name, "packed data declared byte-offset")
    for dim in (b"1900", b"1921"):
        add(f"rayonix_array_dims_{dim.decode()}.cbf",
            _sub(raw, b"ARRAY_Rayonix 1 1920 1 increasing", b"ARRAY_Rayonix 1 " + dim + b" 1 increasing"), src.name,
            f"_array_structure_list width {dim.decode()} for 1920-wide data")

    # SMV (ADSC)
    src = real / "adsc/adsc.img.bz2"
    raw = _read_source(src)
    common("adsc", ".img", raw, src.name, 512, 512, checksummed=False)
    add("adsc_size1.img", _sub(raw, b"SIZE1=2304;", b"SIZE1=2305;"), src.name, "SIZE1 larger than the data")
    add("adsc_size1_small.img", _sub(raw, b"SIZE1=2304;", b"SIZE1=1152;"), src.name, "SIZE1 half the data")
    add("adsc_huge.img", _sub(_sub(raw, b"SIZE1=2304;", b"SIZE1=99999;"), b"SIZE2=2304;", b"SIZE2=99999;"),
        src.name, "huge dimensions in the header")
    add("adsc_header_bytes.img", _sub(raw, b"HEADER_BYTES=  512;", b"HEADER_BYTES=99999;"), src.name,
        "HEADER_BYTES beyond the header")
    add("adsc_plain.img.bz2", raw, src.name, "plain data under a .bz2 name")
    add("adsc_nan_distance.img", _sub(raw, b"DISTANCE=250.0;", b"DISTANCE=nan;  "), src.name, "distance nan")
    add("adsc_type.img", _sub(raw, b"TYPE=unsigned_short;", b"TYPE=unsigned_long; "), src.name,
        "TYPE unsigned_long for 16-bit data")

    # DECTRIS stream frame (beside its series header)
    src = real / "eiger2_16m_stream/5291452/image000044"
    header = (real / "eiger2_16m_stream/5291452/header").read_bytes()
    raw = src.read_bytes()
    json_end = raw.index(b"}\n") + 2
    sub = "stream"
    (folder / sub).mkdir(parents=True, exist_ok=True)
    (folder / sub / "header").write_bytes(header)
    for name, data, damage, must in [
        ("image_empty", b"", "empty file", True),
        ("image_cut0100", raw[:100], "truncated at byte 100", True),
        ("image_cut_half", raw[: len(raw) // 2], "truncated at half", True),
        ("image_cut_end", raw[:-200], "last 200 bytes cut", True),
        ("image_shape", _sub(raw, b"[2068,2162]", b"[2068,2161]"), "shape changed in the JSON part", True),
        ("image_huge", _sub(raw, b"[2068,2162]", b"[9068,9162]"), "huge shape in the JSON part", True),
        ("image_encoding", _sub(raw, b"bs16-lz4<", b"bs32-lz4<"), "encoding changed to bs32-lz4<", True),
        ("image_unknown_encoding", _sub(raw, b"bs16-lz4<", b"bs16-zst<"), "unknown encoding", True),
        ("image_flip_data", _flip(raw, sorted(rng.sample(range(json_end + 20, len(raw) - 300), 3))),
         "bytes flipped in the pixel blob", False),
        ("image_flip_meta", _flip(raw, [3, 9]), "bytes flipped in the msgpack metadata", False),
    ]:
        add(name, data, src.name, damage, must, sub=sub)
    for name, data, damage in [("header_cut", header[: len(header) // 2], "series header truncated"),
                               ("header_empty", b"", "series header empty")]:
        where = folder / f"stream_{name}"
        where.mkdir()
        (where / "header").write_bytes(data)
        _shutil.copy(src, where / "image000044")
        cases.append(FuzzCase(where / "image000044", "header", damage))

    # NXmx (made here: the real EIGER files in the data set are CBF and stream dumps)
    add_nxmx_cases(folder / "nxmx", cases)
    return cases


def add_nxmx_cases(folder: Path, cases: list[FuzzCase]) -> None:
    """NXmx files: truncated, flipped, lying shapes, a missing data file, NaN/Inf float pixels."""
    import h5py

    folder.mkdir(parents=True, exist_ok=True)
    frames = make_frames(2, seed=7, shape=(300, 280))
    good = write_nxmx(folder / "good.h5", frames)
    raw = good.read_bytes()
    for name, data, damage in [("nx_empty.h5", b"", "empty file"),
                               ("nx_cut0008.h5", raw[:8], "only the HDF5 signature"),
                               ("nx_cut_half.h5", raw[: len(raw) // 2], "truncated at half"),
                               ("nx_cut_end.h5", raw[: len(raw) - 100], "last 100 bytes cut")]:
        (folder / name).write_bytes(data)
        cases.append(FuzzCase(folder / name, "NXmx", damage))

    def variant(name: str, damage: str, edit: _Callable[[h5py.File], None], data=frames,
                must_fail: bool = True) -> None:
        path = write_nxmx(folder / name, data)
        with h5py.File(path, "r+") as f:
            edit(f)
        cases.append(FuzzCase(path, "NXmx", damage, must_fail))

    def pixels_in_detector(f: h5py.File, nx: int, ny: int) -> None:
        det = f["entry/instrument/detector"]
        det["x_pixels_in_detector"] = np.int32(nx)
        det["y_pixels_in_detector"] = np.int32(ny)

    variant("nx_shape_lie.h5", "x_pixels_in_detector differs from the data",
            lambda f: pixels_in_detector(f, 281, 300))
    variant("nx_huge.h5", "huge pixels_in_detector", lambda f: pixels_in_detector(f, 99999, 99999))
    variant("nx_no_wavelength.h5", "no wavelength",
            lambda f: f.__delitem__("entry/instrument/beam/incident_wavelength"))
    variant("nx_nan_distance.h5", "distance NaN",
            lambda f: f["entry/instrument/detector/detector_distance"].__setitem__((), np.nan))
    variant("nx_zero_pixel.h5", "pixel size 0",
            lambda f: f["entry/instrument/detector/x_pixel_size"].__setitem__((), 0.0))
    def one_dimensional(f: h5py.File) -> None:
        del f["entry/data/data"]
        f["entry/data"].create_dataset("data", data=np.zeros(10))

    variant("nx_1d_data.h5", "data of one dimension", one_dimensional)
    floats = frames.astype(np.float32)
    floats[0, 10:20, 10:20] = np.nan
    floats[1, 30:40, 30:40] = np.inf
    variant("nx_some_nan.h5", "NaN and Inf pixels among finite ones (masked, the file reads)", lambda f: None,
            data=floats, must_fail=False)
    variant("nx_all_nan.h5", "every pixel NaN", lambda f: None, data=np.full_like(floats, np.nan))
    variant("nx_all_inf.h5", "every pixel +Inf", lambda f: None, data=np.full_like(floats, np.inf))

    # a master whose only data file is gone
    master = folder / "nx_lost_master.h5"
    with h5py.File(master, "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry.create_group("data")["data_000001"] = h5py.ExternalLink("nx_lost_data_000001.h5", "/entry/data/data")
        with h5py.File(good, "r") as g:
            g.copy("entry/instrument", entry)
    cases.append(FuzzCase(master, "NXmx", "its only data file is missing"))
