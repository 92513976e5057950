"""DECTRIS stream frames: the real EIGER2 16M (4M ROI) dump, and small synthetic messages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import hdf5plugin
import msgpack
import numpy as np
import pytest

from xrais.conditioning.readers.stream import DectrisStreamReader, decode_stream_pixels
from xrais.errors import CorruptImageError, GeometryError, UnknownFormatError

FRAME = "real/eiger2_16m_stream/5291452/image000044"
HEADER = "real/eiger2_16m_stream/5291452/header"


@pytest.fixture(scope="module")
def real_image(shared_data):
    return DectrisStreamReader(shared_data(FRAME)).read_frame(0)


def _message(path: Path) -> list:
    return msgpack.unpackb(path.read_bytes(), raw=False)


def _copy_series(shared_data, tmp_path: Path) -> Path:
    shutil.copy(shared_data(HEADER), tmp_path / "header")
    return tmp_path


def _write_frame(path: Path, info: dict, blob: bytes, meta: dict | None = None) -> Path:
    meta = meta or {"htype": "dimage-1.0", "series": 7, "frame": 3, "hash": "", "acqID": "x1"}
    timing = {"htype": "dconfig-1.0", "real_time": 1_000_000, "start_time": 0, "stop_time": 1_000_000}
    path.write_bytes(msgpack.packb(
        [meta, json.dumps(info).encode(), blob, json.dumps(timing).encode()], use_bin_type=True))
    return path


def _write_header(path: Path, config: dict, series: int = 7, parts: list | None = None) -> Path:
    meta = {"htype": "dheader-1.0", "header_detail": "basic", "series": series, "acqID": "x1"}
    path.write_bytes(msgpack.packb([meta, json.dumps(config).encode(), *(parts or [])], use_bin_type=True))
    return path


def _bitshuffle_lz4(array: np.ndarray) -> bytes:
    """Encode ``array`` as one bitshuffle/LZ4 chunk with hdf5plugin (what the detector sends)."""
    with h5py.File("xrais-test-encode.h5", "w", driver="core", backing_store=False) as f:
        ds = f.create_dataset("a", data=array, chunks=array.shape, **hdf5plugin.Bitshuffle(nelems=0, cname="lz4"))
        return ds.id.read_direct_chunk((0, 0))[1]


def _small_config(n_fast: int, n_slow: int, bits: int) -> dict:
    return {"beam_center_x": 30.5, "beam_center_y": 20.25, "detector_distance": 0.15, "wavelength": 1.2,
            "x_pixel_size": 7.5e-5, "y_pixel_size": 7.5e-5, "x_pixels_in_detector": n_fast,
            "y_pixels_in_detector": n_slow, "countrate_correction_count_cutoff": 1000,
            "bit_depth_image": bits, "description": "Dectris EIGER2 test", "detector_number": "E-00-0001"}


# --------------------------------------------------------------------------- the real frame


def test_real_frame_pixels(real_image):
    img = real_image
    assert img.shape == (2162, 2068)
    assert img.pixels.dtype == np.uint16
    assert int((img.pixels == 65535).sum()) == 260_886
    assert int(img.mask.sum()) == 260_886
    valid = img.valid_pixels()
    assert int(valid.max()) == 321
    assert valid.mean() == pytest.approx(0.100, abs=5e-4)
    assert np.median(valid) == 0


def test_real_frame_geometry(real_image):
    img = real_image
    assert img.detector.name == "eiger2_4m"
    assert img.beam_center_px == pytest.approx((1041.247, 1115.747), abs=1e-3)
    assert img.detector.distance_mm == pytest.approx(337.0)
    assert img.beam.wavelength_A == pytest.approx(0.9762458, abs=1e-7)
    assert img.detector.pixel_size_mm == pytest.approx((0.075, 0.075))
    assert img.detector.trusted_range == (0.0, 18532.0)
    assert img.detector.panels[0].thickness_mm == pytest.approx(0.45)
    assert img.format == "dectris_stream"


def test_real_frame_header_facts(real_image):
    h = real_image.header
    assert (h["series"], h["frame"], h["acq_id"]) == (2619, 43, "5291452")
    assert h["detector_model"] == "Dectris EIGER2 Si 16M"
    assert h["serial_number"] == "E-32-0117"
    assert h["date"] == "2020-09-07T21:46:54.965+02:00"
    assert h["exposure_s"] == pytest.approx(0.0039999)
    assert h["count_cutoff"] == 18533
    assert h["encoding"] == "bs16-lz4<"


def test_understand(shared_data, tmp_path):
    assert DectrisStreamReader.understand(shared_data(FRAME))
    assert not DectrisStreamReader.understand(shared_data(HEADER))
    assert not DectrisStreamReader.understand(shared_data("real/pilatus6m/thau_3_2_0001.cbf"))
    (tmp_path / "random.bin").write_bytes(np.random.default_rng(0).bytes(2000))
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "other.msgpack").write_bytes(msgpack.packb([{"htype": "dseries_end-1.0"}, b"", b""]))
    for name in ("random.bin", "empty", "other.msgpack", "missing"):
        assert not DectrisStreamReader.understand(tmp_path / name)


# --------------------------------------------------------------------------- damaged frames


def test_blob_cut_short(shared_data, tmp_path):
    meta, info, blob, timing = _message(shared_data(FRAME))
    folder = _copy_series(shared_data, tmp_path)
    path = folder / "image_short"
    path.write_bytes(msgpack.packb([meta, info, blob[: len(blob) // 2], timing], use_bin_type=True))
    with pytest.raises(CorruptImageError, match=r"image_short: pixel blob is 336530 bytes, the message says 673061"):
        DectrisStreamReader(path).read_frame(0)
    # the same with a consistent "size": the block framing gives it away, before the codec sees it
    fixed = json.loads(info)
    fixed["size"] = len(blob) // 2
    path.write_bytes(msgpack.packb([meta, json.dumps(fixed).encode(), blob[: len(blob) // 2], timing],
                                   use_bin_type=True))
    with pytest.raises(CorruptImageError, match=r"image_short: chunk cut short"):
        DectrisStreamReader(path).read_frame(0)


def test_file_truncated(shared_data, tmp_path):
    folder = _copy_series(shared_data, tmp_path)
    path = folder / "image_trunc"
    path.write_bytes(shared_data(FRAME).read_bytes()[:400_000])
    assert DectrisStreamReader.understand(path)  # the header bytes are intact
    with pytest.raises(CorruptImageError, match=r"image_trunc: truncated msgpack message"):
        DectrisStreamReader(path).read_frame(0)


def test_unknown_encoding(shared_data, tmp_path):
    meta, info, blob, timing = _message(shared_data(FRAME))
    folder = _copy_series(shared_data, tmp_path)
    info = json.loads(info)
    info["encoding"] = "foo"
    path = _write_frame(folder / "image_foo", info, blob, meta)
    with pytest.raises(UnknownFormatError, match=r"image_foo: unsupported pixel encoding 'foo'"):
        DectrisStreamReader(path).read_frame(0)


def test_header_missing_or_of_another_series(shared_data, tmp_path):
    frame = tmp_path / "image000044"
    shutil.copy(shared_data(FRAME), frame)
    with pytest.raises(GeometryError, match=r"image000044: no stream header file .*header"):
        DectrisStreamReader(frame).read_frame(0)
    config = json.loads(_message(shared_data(HEADER))[1])
    _write_header(tmp_path / "header", config, series=2620)
    with pytest.raises(GeometryError, match=r"series 2619.*series 2620"):
        DectrisStreamReader(frame).read_frame(0)


def test_header_without_geometry(shared_data, tmp_path):
    frame = tmp_path / "image000044"
    shutil.copy(shared_data(FRAME), frame)
    config = json.loads(_message(shared_data(HEADER))[1])
    del config["detector_distance"], config["wavelength"]
    _write_header(tmp_path / "header", config, series=2619)
    with pytest.raises(GeometryError, match=r"image000044: stream header header lacks detector_distance, wavelength"):
        DectrisStreamReader(frame).read_frame(0)


# --------------------------------------------------------------------------- other encodings


@pytest.mark.parametrize("dtype, encoding", [("uint32", "bs32-lz4<"), ("uint8", "bs8-lz4<"), ("uint32", "<")])
def test_other_encodings_round_trip(tmp_path, dtype, encoding):
    n_fast, n_slow = 64, 40
    bits = np.dtype(dtype).itemsize * 8
    rng = np.random.default_rng(5)
    pixels = rng.poisson(3.0, (n_slow, n_fast)).astype(dtype)
    gap = 2**bits - 1
    pixels[:, 31:33] = gap
    pixels[5, 7] = 1000 if bits > 8 else 200  # at the cutoff (or an ordinary count for 8 bits)
    blob = _bitshuffle_lz4(pixels) if encoding.startswith("bs") else pixels.astype("<" + pixels.dtype.str[1:]).tobytes()
    info = {"encoding": encoding, "shape": [n_fast, n_slow], "type": dtype, "size": len(blob)}
    frame = _write_frame(tmp_path / "f0001", info, blob)
    _write_header(tmp_path / "series_header", _small_config(n_fast, n_slow, bits))
    img = DectrisStreamReader(frame, header_path=tmp_path / "series_header").read_frame(0)
    np.testing.assert_array_equal(img.pixels, pixels)
    assert img.pixels.dtype == np.dtype(dtype)
    expected_mask = (pixels == gap) | (pixels >= 1000)
    np.testing.assert_array_equal(img.mask, expected_mask)
    assert img.detector.name == "Dectris EIGER2 test"  # not a catalog size: one flat panel
    assert img.beam_center_px == pytest.approx((30.5, 20.25))
    assert img.detector.distance_mm == pytest.approx(150.0)
    assert img.beam.wavelength_A == pytest.approx(1.2)
    assert img.header["frame"] == 3 and img.header["real_time_s"] == pytest.approx(1e-3)


def test_header_pixel_mask_is_applied(tmp_path):
    n_fast, n_slow = 16, 8
    pixels = np.ones((n_slow, n_fast), dtype="uint16")
    blob = _bitshuffle_lz4(pixels)
    info = {"encoding": "bs16-lz4<", "shape": [n_fast, n_slow], "type": "uint16"}
    frame = _write_frame(tmp_path / "f0001", info, blob)
    bad = np.zeros((n_slow, n_fast), dtype="<u4")
    bad[2, 3] = 1
    bad[7, 15] = 8
    parts = [json.dumps({"htype": "dpixelmask-1.0", "shape": [n_fast, n_slow], "type": "uint32"}).encode(),
             bad.tobytes()]
    _write_header(tmp_path / "header", _small_config(n_fast, n_slow, 16), parts=parts)
    img = DectrisStreamReader(frame).read_frame(0)
    np.testing.assert_array_equal(img.mask, bad != 0)


def test_encoding_and_type_must_agree():
    pixels = np.zeros((4, 8), dtype="uint16")
    info = {"encoding": "bs32-lz4<", "shape": [8, 4], "type": "uint16"}
    with pytest.raises(CorruptImageError, match=r"f: encoding 'bs32-lz4<' does not match pixel type uint16"):
        decode_stream_pixels(_bitshuffle_lz4(pixels), info, "f")
    with pytest.raises(CorruptImageError, match=r"f: expected shape \[fast, slow\]"):
        decode_stream_pixels(b"", {"encoding": "<", "shape": [8], "type": "uint16"}, "f")
