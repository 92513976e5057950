"""The fabio fallback reader: a MarCCD (Rayonix) .mccd frame with its header geometry."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from fabio.marccdimage import HEADER_FORMAT, HEADER_NAMES

from xrais.conditioning.readers.fabio_generic import FabioReader
from xrais.conditioning.readers.registry import get_reader_class
from xrais.errors import CorruptImageError


def write_mccd(path, pixels: np.ndarray, **fields: int) -> None:
    """A MarCCD file: a little-endian TIFF whose strip starts at byte 4096, with the
    3072-byte MAR header at byte 1024 (the layout MarCCD and Rayonix software write)."""
    n_slow, n_fast = pixels.shape
    codes = HEADER_FORMAT.lstrip("<>=!@")  # one code per named field
    assert len(codes) == len(HEADER_NAMES)
    values = [b"\0" if code in "cs" else fields.get(name, 0) for name, code in zip(HEADER_NAMES, codes)]
    mar = struct.pack(HEADER_FORMAT, *values).ljust(3072, b"\0")
    entries = [(256, 3, n_fast), (257, 3, n_slow), (258, 3, 16), (259, 3, 1), (262, 3, 1),
               (273, 4, 4096), (277, 3, 1), (278, 3, n_slow), (279, 4, pixels.size * 2)]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHII", tag, typ, 1, val) if typ == 4 else struct.pack("<HHIHH", tag, typ, 1, val, 0)
        for tag, typ, val in entries) + struct.pack("<I", 0)
    head = (b"II*\0" + struct.pack("<I", 8) + ifd).ljust(1024, b"\0")
    path.write_bytes(head + mar + pixels.astype("<u2").tobytes())


@pytest.fixture
def mccd(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 1000, size=(300, 400)).astype(np.uint16)
    pixels[10, 20] = 65535
    path = tmp_path / "shot_00001.mccd"
    write_mccd(path, pixels, pixelsize_x=88_600, pixelsize_y=88_600, xtal_to_detector=150_000,
               source_wavelength=97_950, beam_x=200_500, beam_y=150_250, saturated_value=65535)
    return path, pixels


def test_marccd_frame_and_geometry(mccd):
    path, pixels = mccd
    assert get_reader_class(path) is FabioReader
    im = FabioReader(path).read_frame()
    np.testing.assert_array_equal(im.pixels, pixels)
    assert im.detector.pixel_size_mm == pytest.approx((0.0886, 0.0886))
    assert im.detector.distance_mm == pytest.approx(150.0)
    assert im.beam.wavelength_A == pytest.approx(0.9795)
    assert im.beam_center_px == pytest.approx((200.5, 150.25))
    assert im.mask[10, 20] and im.mask.sum() == 1  # 65535 is saturated
    assert im.header["geometry_from_header"]


def test_truncated_marccd_is_a_clear_error(mccd, tmp_path):
    path, _ = mccd
    cut = tmp_path / "cut.mccd"
    cut.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CorruptImageError, match="cut.mccd"):
        FabioReader(cut).read_frame()


def test_tiff_without_geometry_needs_a_beam_centre(tmp_path, capsys):
    """A plain TIFF carries no geometry: conditioning asks for a beam centre, then records NaN geometry."""
    from PIL import Image

    from xrais.cli import main
    from xrais.io import list_shards, read_shard

    path = tmp_path / "frame.tif"
    Image.fromarray(np.full((300, 200), 900, np.uint16)).save(path)
    with pytest.raises(SystemExit) as exit_info:
        main(["condition", str(path), "--out", str(tmp_path / "a")])
    assert exit_info.value.code == 1
    assert "frame.tif: beam centre (nan, nan): expected finite" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["condition", str(path), "--out", str(tmp_path / "b"), "--beam-center", "100", "150"])
    assert exit_info.value.code == 0
    images, cols, _ = read_shard(list_shards(tmp_path / "b", "conditioned")[0])
    assert images[2, 0, 0] == 30 and np.isnan(cols["geometry/distance_mm"]).all()
