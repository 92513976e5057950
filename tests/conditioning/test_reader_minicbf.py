"""miniCBF reader on the real PILATUS and EIGER frames (header values from the data README)."""

from __future__ import annotations

import bz2
import math

import numpy as np
import pytest

from xrais.conditioning.readers.cbf import MiniCBFReader, parse_minicbf_header
from xrais.errors import CorruptImageError, FrameIndexError

# path, detector, fast×slow, pixel mm, distance mm, λ Å, Beam_xy, cutoff, gaps (-1), bad (-2), valid max, valid mean
FILES = [
    ("real/pilatus6m/thau_3_2_0001.cbf", "pilatus6m", (2463, 2527), 0.172, 351.0, 0.96859, (1261.61, 1306.96),
     115897, 526_101, 625, 114000, 3.710),
    ("real/pilatus6m/thau_3_2_0003.cbf.bz2", "pilatus6m", (2463, 2527), 0.172, 351.0, 0.96859, (1261.61, 1306.96),
     115897, 526_101, 625, 16336, 4.319),
    ("real/pilatus6m/DLS_I03_smargon_0001.cbf.gz", "pilatus6m", (2463, 2527), 0.172, 291.47, 0.97625,
     (1229.30, 1200.48), 91795, 526_101, 1213, 336, 0.099),
    ("real/eiger16m/dlsnxs2cbf_therm_0001.cbf.gz", "eiger2_16m", (4148, 4362), 0.075, 213.96, 0.98027,
     (2216.06, 2300.41), 65535, 1_250_824, 2496, 404, 0.003),
    ("real/pilatus12m/DLS_I23_P12M_thau_00001.cbf.gz", "pilatus12m", (2463, 5071), 0.172, 10.0, 2.75520,
     (1080.0, 2595.0), 28575, 1_094_073, 98_985, 12446, 0.186),
]


@pytest.mark.parametrize("rel, name, size, pixel, distance, wavelength, beam_xy, cutoff, gaps, bad, vmax, vmean", FILES)
def test_real_minicbf(shared_data, rel, name, size, pixel, distance, wavelength, beam_xy, cutoff, gaps, bad, vmax, vmean):
    path = shared_data(rel)
    assert MiniCBFReader.understand(path)
    reader = MiniCBFReader(path)
    assert reader.n_frames == 1
    im = reader.read_frame(0)
    assert im.pixels.shape == (size[1], size[0]) and im.pixels.dtype == np.int32
    assert im.detector.name == name
    assert im.detector.pixel_size_mm == pytest.approx((pixel, pixel))
    assert im.detector.distance_mm == pytest.approx(distance)
    assert im.beam.wavelength_A == pytest.approx(wavelength)
    assert im.beam_center_px == pytest.approx(beam_xy)
    assert im.detector.trusted_range == (0.0, cutoff - 1.0)
    assert int((im.pixels == -1).sum()) == gaps and int((im.pixels == -2).sum()) == bad
    # every gap/bad pixel and every count at or above the cutoff is masked, nothing else
    expected = (im.pixels < 0) | (im.pixels >= cutoff)
    np.testing.assert_array_equal(im.mask, expected)
    assert not (im.detector.gap_mask() & ~im.mask).any()
    st = im.statistics()
    assert st["max"] == vmax and st["mean"] == pytest.approx(vmean, abs=6e-4) and st["min"] == 0


def test_two_theta_header_moves_the_direct_beam(shared_data):
    im = MiniCBFReader(shared_data("real/pilatus2m/l-cyst_01_00001.cbf")).read_frame()
    assert im.header["two_theta_deg"] == 30.0
    assert im.detector.name == "pilatus2m"
    assert im.beam_center_px[0] == pytest.approx(730.0)
    assert im.beam_center_px[1] == pytest.approx(865.0 + 160.0 * math.tan(math.radians(30)) / 0.172)
    assert im.header["count_cutoff"] == 388705 and im.beam.wavelength_A == pytest.approx(0.6889)


def test_header_parser_reads_units_and_optional_keys():
    text = ("# Detector: PILATUS3 6M, S/N 60-0119\r\n# 2019-09-11T13:20:29.049\r\n"
            "# Pixel_size 172e-6 m x 172e-6 m\r\n# Silicon sensor, thickness 0.000450 m\r\n"
            "# Count_cutoff 115897 counts\r\n# Polarization 0.990\r\n# Flux 1.396021\r\n"
            "# Detector_distance 351 mm\r\n")
    h = parse_minicbf_header(text)
    assert h["detector_model"] == "PILATUS3 6M" and h["serial_number"] == "60-0119"
    assert h["date"] == "2019-09-11T13:20:29.049"
    assert h["thickness_mm"] == pytest.approx(0.45) and h["material"] == "Si"
    assert h["distance_mm"] == 351.0 and h["polarization_fraction"] == 0.99
    assert "wavelength_A" not in h


def test_understand_is_false_for_other_files(shared_data, tmp_path):
    assert not MiniCBFReader.understand(shared_data("real/adsc/adsc.img.bz2"))
    assert not MiniCBFReader.understand(shared_data("real/rayonix340/hit-20181213155134902.cbf"))
    junk = tmp_path / "junk.cbf"
    junk.write_bytes(b"\x00\xff" * 3000)
    assert not MiniCBFReader.understand(junk)
    assert not MiniCBFReader.understand(tmp_path / "missing.cbf")


def test_truncated_file_is_a_clear_error(shared_data, tmp_path):
    raw = bz2.decompress(shared_data("real/pilatus6m/thau_3_2_0003.cbf.bz2").read_bytes())
    cut = tmp_path / "thau_cut.cbf"
    cut.write_bytes(raw[: len(raw) // 2])
    assert MiniCBFReader.understand(cut)
    with pytest.raises(CorruptImageError, match="thau_cut.cbf"):
        MiniCBFReader(cut).read_frame()


def test_frame_index_out_of_range(shared_data):
    with pytest.raises(FrameIndexError, match=r"thau_3_2_0001.cbf: frame 1 out of range; the file has 1 frame"):
        MiniCBFReader(shared_data("real/pilatus6m/thau_3_2_0001.cbf")).read_frame(1)
