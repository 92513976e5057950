"""SMV (ADSC) reader on the real ADSC Quantum 4 frame."""

from __future__ import annotations

import bz2

import numpy as np
import pytest

from xrais.conditioning.readers.smv import SMVReader
from xrais.errors import CorruptImageError


def test_real_adsc_frame(shared_data):
    path = shared_data("real/adsc/adsc.img.bz2")
    assert SMVReader.understand(path)
    im = SMVReader(path).read_frame()
    assert im.pixels.shape == (2304, 2304) and im.pixels.dtype == np.uint16
    assert im.detector.pixel_size_mm == pytest.approx((0.0816, 0.0816))
    assert im.detector.distance_mm == pytest.approx(250.0)
    assert im.beam.wavelength_A == pytest.approx(1.0)
    # dxtbx's ADSC convention: BEAM_CENTER_Y (94.70 mm) is along fast, BEAM_CENTER_X (99.30 mm) along slow
    assert im.beam_center_px == pytest.approx((94.70 / 0.0816, 99.30 / 0.0816))
    st = im.statistics()
    assert (st["min"], st["median"], st["max"]) == (0.0, 72.0, 14872.0)
    assert st["mean"] == pytest.approx(73.648, abs=1e-3)
    assert im.header["serial_number"] == "423" and im.header["osc_range_deg"] == 1.0
    # big-endian on disk, native in memory, and the first pixels are what the file holds
    raw = bz2.decompress(path.read_bytes())
    first = np.frombuffer(raw, ">u2", count=4, offset=512)
    np.testing.assert_array_equal(im.pixels[0, :4], first)


def test_truncated_smv_is_a_clear_error(shared_data, tmp_path):
    raw = bz2.decompress(shared_data("real/adsc/adsc.img.bz2").read_bytes())
    cut = tmp_path / "adsc_cut.img"
    cut.write_bytes(raw[:100_000])
    assert SMVReader.understand(cut)
    with pytest.raises(CorruptImageError, match=r"adsc_cut.img: truncated SMV file, expected 10617344 bytes"):
        SMVReader(cut).read_frame()


def test_understand_rejects_other_files(shared_data, tmp_path):
    assert not SMVReader.understand(shared_data("real/pilatus6m/thau_3_2_0001.cbf"))
    txt = tmp_path / "notes.img"
    txt.write_text("{ just a brace }")
    assert not SMVReader.understand(txt)
