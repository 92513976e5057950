"""EIGER / NXmx HDF5: small master + data files written here the way an EIGER writes them.

shared/data holds no HDF5 detector file, so each test writes a 256×300-pixel series (75 µm
pixels) in tmp_path: a master file with external links to two bitshuffle/LZ4 data files of 3
and 2 frames, a pixel mask, units attributes and NX_class attributes.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pytest

from xrais.conditioning.readers.eiger import (
    check_bitshuffle_chunk,
    eiger_detector,
    master_for_data_file,
    undefined_pixel_value,
)
from xrais.conditioning.readers.nexus import NXmxReader
from xrais.conditioning.readers.stream import DectrisStreamReader
from xrais.errors import CorruptImageError, FrameIndexError, GeometryError

N_FAST, N_SLOW = 256, 300
CUTOFF = 18533
GAP_ROWS = slice(140, 152)  # a horizontal module gap
GAP_COLS = slice(100, 104)  # a vertical one


@dataclass
class Series:
    master: Path
    data_files: list[Path]
    frames: np.ndarray  # (n, slow, fast)
    pixel_mask: np.ndarray  # (slow, fast) uint32


def _nx(group: h5py.Group, name: str, nx_class: str) -> h5py.Group:
    g = group.create_group(name)
    g.attrs["NX_class"] = nx_class
    return g


def _put(group: h5py.Group, name: str, value, units: str | None = None) -> None:
    ds = group.create_dataset(name, data=value)
    if units is not None:
        ds.attrs["units"] = units


def _frames(dtype: str = "uint16", gap: int = 65535) -> np.ndarray:
    frames = np.random.default_rng(11).poisson(2.0, (5, N_SLOW, N_FAST)).astype(dtype)
    frames[:, GAP_ROWS, :] = gap
    frames[:, :, GAP_COLS] = gap
    frames[4, 10, 20] = 20000  # over the count cutoff
    frames[4, 11, 20] = CUTOFF - 1  # the highest valid count
    frames[4, 12, 20] = CUTOFF  # the cutoff itself is invalid
    for i in range(5):
        frames[i, 0, 0] = 100 + i  # a marker telling the frames apart
    return frames


def _pixel_mask() -> np.ndarray:
    mask = np.zeros((N_SLOW, N_FAST), dtype=np.uint32)
    mask[5, 7] = 1  # dead
    mask[200, 30] = 8  # noisy
    mask[299, 255] = 2
    return mask


def _write_data_file(path: Path, frames: np.ndarray, first_image_number: int) -> None:
    with h5py.File(path, "w") as f:
        data = _nx(_nx(f, "entry", "NXentry"), "data", "NXdata")
        ds = data.create_dataset("data", data=frames, chunks=(1, N_SLOW, N_FAST), **hdf5plugin.Bitshuffle())
        ds.attrs["image_nr_low"] = np.int32(first_image_number)
        ds.attrs["image_nr_high"] = np.int32(first_image_number + len(frames) - 1)


def _write_instrument(entry: h5py.Group, pixel_mask: np.ndarray, style: str) -> None:
    """Detector and beam groups; ``style`` picks the units and where the values live."""
    instrument = _nx(entry, "instrument", "NXinstrument")
    det = _nx(instrument, "detector", "NXdetector")
    specific = det.create_group("detectorSpecific")
    if style == "si":  # metres and Å, as DECTRIS writes them
        _put(det, "beam_center_x", 120.5, "pixel")
        _put(det, "beam_center_y", 140.25, "pixel")
        _put(det, "detector_distance", 0.2, "m")
        _put(det, "x_pixel_size", 7.5e-5, "m")
        _put(det, "y_pixel_size", 7.5e-5, "m")
        _put(det, "sensor_thickness", 4.5e-4, "m")
        _put(_nx(instrument, "beam", "NXbeam"), "incident_wavelength", 0.9762, "angstrom")
    elif style == "mm_nm":  # other units, the beam centre as a length, the monochromator's λ
        _put(det, "beam_center_x", 120.5 * 0.075, "mm")
        _put(det, "beam_center_y", 140.25 * 0.075, "mm")
        _put(det, "detector_distance", 200.0, "mm")
        _put(det, "x_pixel_size", 75.0, "um")
        _put(det, "y_pixel_size", 75.0, "um")
        _put(det, "sensor_thickness", 450.0, "um")
        _put(_nx(instrument, "monochromator", "NXmonochromator"), "wavelength", 0.09762, "nm")
    elif style == "transformations":  # the distance as a translation, an energy for λ
        _put(det, "beam_center_x", 120.5)
        _put(det, "beam_center_y", 140.25)
        t = _nx(det, "transformations", "NXtransformations")
        _put(t, "translation", 20.0, "cm")
        t["translation"].attrs.update(transformation_type="translation", vector=[0.0, 0.0, 1.0])
        _put(det, "x_pixel_size", 7.5e-5)
        _put(det, "y_pixel_size", 7.5e-5)
        _put(det, "sensor_thickness", 4.5e-4)
        _put(_nx(instrument, "beam", "NXbeam"), "incident_energy", 12.398419843320026 / 0.9762, "keV")
    else:
        raise AssertionError(style)
    _put(det, "description", b"Dectris EIGER2 Si test")
    _put(det, "detector_number", b"E-00-0042")
    _put(det, "sensor_material", b"Si")
    _put(det, "count_time", 0.01, "s")
    _put(det, "saturation_value", np.int32(CUTOFF))
    _put(det, "bit_depth_image", np.int32(16))
    _put(specific, "countrate_correction_count_cutoff", np.int32(CUTOFF))
    _put(specific, "x_pixels_in_detector", np.int32(N_FAST))
    _put(specific, "y_pixels_in_detector", np.int32(N_SLOW))
    _put(specific, "data_collection_date", b"2024-03-01T12:00:00.000+01:00")
    specific.create_dataset("pixel_mask", data=pixel_mask, **hdf5plugin.Bitshuffle())


def write_series(folder: Path, *, prefix: str = "series", style: str = "si") -> Series:
    """A master file linking ``<prefix>_data_000001.h5`` (3 frames) and ``…_000002.h5`` (2)."""
    frames, pixel_mask = _frames(), _pixel_mask()
    data_files = [folder / f"{prefix}_data_00000{i}.h5" for i in (1, 2)]
    _write_data_file(data_files[0], frames[:3], first_image_number=1)
    _write_data_file(data_files[1], frames[3:], first_image_number=4)
    master = folder / f"{prefix}_master.h5"
    with h5py.File(master, "w") as f:
        entry = _nx(f, "entry", "NXentry")
        data = _nx(entry, "data", "NXdata")
        for i, path in enumerate(data_files, start=1):
            data[f"data_{i:06d}"] = h5py.ExternalLink(path.name, "/entry/data/data")
        _write_instrument(entry, pixel_mask, style)
    return Series(master, data_files, frames, pixel_mask)


def _expected_mask(frame: np.ndarray, pixel_mask: np.ndarray, gap: int = 65535) -> np.ndarray:
    return (pixel_mask != 0) | (frame == gap) | (frame >= CUTOFF)


@pytest.fixture
def series(tmp_path) -> Series:
    return write_series(tmp_path)


# --------------------------------------------------------------------------- a master and its data files


def test_frames_form_one_stream(series):
    with NXmxReader(series.master) as reader:
        assert reader.n_frames == 5
        img = reader.read_frame(4)
        frames = [f.pixels for f in reader.frames()]
    np.testing.assert_array_equal(img.pixels, series.frames[4])
    assert img.pixels.dtype == np.uint16
    assert img.header["data_file"] == "series_data_000002.h5"
    assert img.header["frame_in_file"] == 1
    assert img.header["image_number"] == 5
    assert img.frame == 4 and img.label == "series_master.h5:4"
    assert [int(f[0, 0]) for f in frames] == [100, 101, 102, 103, 104]


@pytest.mark.parametrize("style", ["si", "mm_nm", "transformations"])
def test_geometry_from_the_header(tmp_path, style):
    s = write_series(tmp_path, style=style)
    img = NXmxReader(s.master).read_frame(0)
    assert img.beam_center_px == pytest.approx((120.5, 140.25))
    assert img.detector.distance_mm == pytest.approx(200.0)
    assert img.beam.wavelength_A == pytest.approx(0.9762)
    assert img.detector.pixel_size_mm == pytest.approx((0.075, 0.075))
    assert img.detector.panels[0].thickness_mm == pytest.approx(0.45)
    assert img.detector.name == "Dectris EIGER2 Si test"  # not a catalog size: one flat panel
    assert img.detector.array_shape == (N_SLOW, N_FAST)
    assert img.detector.trusted_range == (0.0, CUTOFF - 1.0)
    assert img.header["serial_number"] == "E-00-0042"
    assert img.header["date"] == "2024-03-01T12:00:00.000+01:00"
    assert img.header["exposure_s"] == pytest.approx(0.01)
    assert img.header["count_cutoff"] == CUTOFF


def test_mask(series):
    reader = NXmxReader(series.master)
    for index in (0, 4):
        img = reader.read_frame(index)
        np.testing.assert_array_equal(img.mask, _expected_mask(series.frames[index], series.pixel_mask))
    img = reader.read_frame(4)
    assert img.mask[10, 20] and img.mask[12, 20] and not img.mask[11, 20]
    assert img.mask[5, 7] and img.mask[200, 30] and img.mask[GAP_ROWS, 0].all() and img.mask[0, GAP_COLS].all()
    assert int(img.valid_pixels().max()) == CUTOFF - 1


def test_frame_out_of_range(series):
    with pytest.raises(FrameIndexError, match=r"series_master\.h5: frame 5 out of range; the file has 5 frame"):
        NXmxReader(series.master).read_frame(5)


# --------------------------------------------------------------------------- data files on their own


def test_data_file_alone_takes_geometry_from_its_master(series):
    reader = NXmxReader(series.data_files[1])
    assert reader.n_frames == 2
    img = reader.read_frame(0)
    np.testing.assert_array_equal(img.pixels, series.frames[3])
    np.testing.assert_array_equal(img.mask, _expected_mask(series.frames[3], series.pixel_mask))
    assert img.header["master_file"] == "series_master.h5"
    assert img.beam_center_px == pytest.approx((120.5, 140.25))
    assert img.detector.distance_mm == pytest.approx(200.0)
    assert master_for_data_file(series.data_files[1]) == series.master


def test_data_file_without_master_names_what_is_missing(series, tmp_path):
    lonely = tmp_path / "elsewhere"
    lonely.mkdir()
    shutil.copy(series.data_files[0], lonely / series.data_files[0].name)
    with pytest.raises(GeometryError, match=r"series_data_000001\.h5: no /entry/instrument/detector group in "
                                            r"series_data_000001\.h5 \(and no master file series_master\.h5"):
        NXmxReader(lonely / series.data_files[0].name)


def test_master_missing_values_are_named(series):
    with h5py.File(series.master, "r+") as f:
        del f["entry/instrument/detector/beam_center_y"], f["entry/instrument/beam"]
    with pytest.raises(GeometryError, match=r"series_master\.h5: NXmx geometry incomplete, no beam_center_y, "
                                            r"incident_wavelength"):
        NXmxReader(series.master)


def test_unknown_units_are_refused(series):
    with h5py.File(series.master, "r+") as f:
        f["entry/instrument/detector/detector_distance"].attrs["units"] = "furlong"
    with pytest.raises(GeometryError, match=r"detector_distance has units 'furlong'"):
        NXmxReader(series.master)


# --------------------------------------------------------------------------- damaged files


def test_truncated_master(series):
    raw = series.master.read_bytes()
    bad = series.master.with_name("cut_master.h5")
    bad.write_bytes(raw[: len(raw) // 2])
    assert NXmxReader.understand(bad)  # HDF5 signature: claimed, so that reading names the damage
    with pytest.raises(CorruptImageError, match=r"cut_master\.h5: cannot open as HDF5 \(.*truncated"):
        NXmxReader(bad)


def test_missing_or_truncated_data_file_serves_the_other_frames(series):
    raw = series.data_files[1].read_bytes()
    series.data_files[1].write_bytes(raw[: len(raw) // 3])
    reader = NXmxReader(series.master)
    assert reader.n_frames == 4  # 3 readable frames and one error frame for the damaged last file
    np.testing.assert_array_equal(reader.read_frame(2).pixels, series.frames[2])
    with pytest.raises(CorruptImageError, match=r"series_master\.h5: frame 3 lies in series_data_000002\.h5 "
                                                r"\(linked as /entry/data/data_000002\), which cannot open as HDF5"):
        reader.read_frame(3)
    series.data_files[1].unlink()
    reader = NXmxReader(series.master)
    np.testing.assert_array_equal(reader.read_frame(0).pixels, series.frames[0])
    with pytest.raises(CorruptImageError, match=r"series_master\.h5: frame 3 lies in series_data_000002\.h5 "
                                                r"\(linked as /entry/data/data_000002\), which does not exist"):
        reader.read_frame(3)


def test_missing_first_data_file_keeps_the_frame_numbers(series):
    series.data_files[0].unlink()
    reader = NXmxReader(series.master)
    assert reader.n_frames == 5  # the second file's first image number is 4: the first held 3
    for i in range(3):
        with pytest.raises(CorruptImageError, match=rf"frame {i} lies in series_data_000001\.h5.*does not exist"):
            reader.read_frame(i)
    np.testing.assert_array_equal(reader.read_frame(3).pixels, series.frames[3])
    np.testing.assert_array_equal(reader.read_frame(4).pixels, series.frames[4])


def test_missing_last_data_file_sized_by_the_image_total(series):
    with h5py.File(series.master, "r+") as f:
        f["entry/instrument/detector/detectorSpecific/nimages"] = np.int32(5)
        f["entry/instrument/detector/detectorSpecific/ntrigger"] = np.int32(1)
    series.data_files[1].unlink()
    reader = NXmxReader(series.master)
    assert reader.n_frames == 5
    with pytest.raises(CorruptImageError, match=r"frame 4 lies in series_data_000002\.h5"):
        reader.read_frame(4)


def test_every_data_file_missing_is_refused_whole(series):
    for f in series.data_files:
        f.unlink()
    with pytest.raises(CorruptImageError, match=r"series_master\.h5: /entry/data/data_000001 links to "
                                                r"series_data_000001\.h5, which does not exist \(and none of its "
                                                r"other 1 data files"):
        NXmxReader(series.master)


def test_damaged_chunk_is_an_error_not_a_crash(series):
    with h5py.File(series.data_files[1], "r+") as f:
        ds = f["entry/data/data"]
        blob = ds.id.read_direct_chunk((1, 0, 0))[1]
        ds.id.write_direct_chunk((1, 0, 0), blob[: len(blob) // 2])
    reader = NXmxReader(series.master)
    np.testing.assert_array_equal(reader.read_frame(3).pixels, series.frames[3])
    with pytest.raises(CorruptImageError,
                       match=r"series_data_000002\.h5: frame 1 of /entry/data/data: chunk cut short"):
        reader.read_frame(4)


# --------------------------------------------------------------------------- understand()


def test_understand(series, tmp_path, shared_data):
    assert NXmxReader.understand(series.master)
    assert NXmxReader.understand(series.data_files[0])
    assert not NXmxReader.understand(shared_data("real/pilatus6m/thau_3_2_0001.cbf"))
    assert not NXmxReader.understand(shared_data("real/eiger2_16m_stream/5291452/image000044"))
    assert not DectrisStreamReader.understand(series.master)
    (tmp_path / "random.bin").write_bytes(np.random.default_rng(1).bytes(4096))
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["images"] = np.zeros((2, 4, 4))
    for name in ("random.bin", "plain.h5", "missing.h5"):
        assert not NXmxReader.understand(tmp_path / name)


# --------------------------------------------------------------------------- other layouts and types


@pytest.mark.parametrize("dtype, gap", [("uint32", 4294967295), ("int32", -1)])
def test_single_file_nxmx_with_32_bit_data(tmp_path, dtype, gap):
    frames, pixel_mask = _frames(dtype, gap), _pixel_mask()
    path = tmp_path / "run1.nxs"
    with h5py.File(path, "w") as f:
        entry = _nx(f, "entry", "NXentry")
        _nx(entry, "data", "NXdata").create_dataset("data", data=frames[:2])  # uncompressed, contiguous
        _write_instrument(entry, pixel_mask, "si")
        entry["instrument/detector/bit_depth_image"][()] = 32
    assert NXmxReader.understand(path)
    img = NXmxReader(path).read_frame(1)
    np.testing.assert_array_equal(img.pixels, frames[1])
    np.testing.assert_array_equal(img.mask, _expected_mask(frames[1], pixel_mask, gap))


def test_eiger_detector_catalog_match():
    common = dict(pixel_size_mm=(0.075, 0.075), distance_mm=150.0, trusted_range=(0.0, 18532.0))
    assert eiger_detector(n_fast=4148, n_slow=4362, beam_center_px=(2074.0, 2181.0), **common).name == "eiger2_16m"
    assert eiger_detector(n_fast=4150, n_slow=4371, beam_center_px=(2075.0, 2185.0), **common).name == "eiger16m"
    assert eiger_detector(n_fast=2068, n_slow=2162, beam_center_px=(1000.0, 1000.0), **common).name == "eiger2_4m"
    flat = eiger_detector(n_fast=N_FAST, n_slow=N_SLOW, beam_center_px=(1.0, 2.0), name="mine", **common)
    assert flat.name == "mine" and len(flat.panels) == 1
    with pytest.raises(GeometryError, match=r"x\.h5: detector distance \(mm\) is 0\.0"):
        eiger_detector(n_fast=8, n_slow=8, beam_center_px=(1.0, 1.0), label="x.h5",
                       **{**common, "distance_mm": 0.0})


def test_undefined_pixel_value():
    assert undefined_pixel_value("uint16") == 65535
    assert undefined_pixel_value("uint32") == 4294967295
    assert undefined_pixel_value("int32") == -1
    assert undefined_pixel_value("uint32", 16) == 65535
    assert undefined_pixel_value("float32") is None


def test_check_bitshuffle_chunk_framing():
    data = np.arange(1003, dtype="uint16")  # one short block of 1000 elements, 3 left over stored raw
    with h5py.File("xrais-test-framing.h5", "w", driver="core", backing_store=False) as f:
        ds = f.create_dataset("a", data=data, chunks=data.shape, **hdf5plugin.Bitshuffle())
        blob = ds.id.read_direct_chunk((0,))[1]
    check_bitshuffle_chunk(blob, 2006, 2)
    with pytest.raises(ValueError, match="expected 2008"):
        check_bitshuffle_chunk(blob, 2008, 2)
    with pytest.raises(ValueError, match="cut short"):
        check_bitshuffle_chunk(blob[:-1], 2006, 2)  # the raw tail is one byte short
    with pytest.raises(ValueError, match="cut short"):
        check_bitshuffle_chunk(blob[:20], 2006, 2)  # inside the block
    with pytest.raises(ValueError, match="12-byte header"):
        check_bitshuffle_chunk(blob[:5], 2006, 2)


def test_condition_serves_the_frames_of_a_series_with_a_missing_data_file(series, tmp_path):
    """Frames of the readable file are conditioned; each frame of the missing one is an error row."""
    from xrais.conditioning.run import condition_files
    from xrais.io import list_shards, read_shard

    series.data_files[0].unlink()
    report = condition_files([series.master], tmp_path / "out")
    assert [(r.frame, bool(r.error)) for r in report.results] == [(0, True), (1, True), (2, True),
                                                                  (3, False), (4, False)]
    assert all("series_data_000001.h5 (linked as /entry/data/data_000001), which does not exist" in r.error
               for r in report.failed)
    _, cols, _ = read_shard(list_shards(tmp_path / "out", "conditioned")[0], images=False)
    assert sorted(set(cols["source/frame"].tolist())) == [3, 4]
