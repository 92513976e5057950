"""ImgCIFReader on real full-imgCIF files: LCLS Rayonix MX340 (one array) and CSPAD (64 ASICs).

Expected values are those of shared/data/README.md (read there with pycbf); the geometry is
also checked against CBFlib's own detector construction and against the CSPAD's known layout.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from xrais.conditioning.image import DiffractionImage
from xrais.conditioning.readers.imgcif import ImgCIFReader
from xrais.errors import CorruptImageError

RAYONIX = "real/rayonix340/hit-20181213155134902.cbf"
CSPAD = "real/cspad/idx-20130301060858401.cbf"
MINICBF = "real/pilatus6m/thau_3_2_0001.cbf"


@pytest.fixture(scope="module")
def rayonix(shared_data) -> DiffractionImage:
    return ImgCIFReader(shared_data(RAYONIX)).read_frame(0)


@pytest.fixture(scope="module")
def cspad(shared_data) -> DiffractionImage:
    return ImgCIFReader(shared_data(CSPAD)).read_frame(0)


def _cbflib_detectors(path: Path) -> list:
    """CBFlib's own detector object for each element (the first section of each array)."""
    import pycbf  # after the reader, which silences the SWIG import warnings

    handle = pycbf.cbf_handle_struct()
    handle.read_buffer(path.read_bytes(), pycbf.MSG_DIGEST)
    return [handle.construct_detector(i) for i in range(handle.count_elements())]


# --- understand() -----------------------------------------------------------------------------
@pytest.mark.parametrize("relpath", [RAYONIX, CSPAD])
def test_understands_full_imgcif(shared_data, relpath):
    assert ImgCIFReader.understand(shared_data(relpath))


def test_leaves_minicbf_to_the_minicbf_reader(shared_data):
    assert not ImgCIFReader.understand(shared_data(MINICBF))


def test_rejects_random_bytes_and_missing_files(tmp_path):
    junk = tmp_path / "junk.cbf"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 10_000, dtype=np.uint8).tobytes())
    assert not ImgCIFReader.understand(junk)
    assert not ImgCIFReader.understand(tmp_path / "absent.cbf")
    assert not ImgCIFReader.understand(tmp_path)  # a directory


# --- Rayonix MX340 (4×4 binned), one array -----------------------------------------------------
def test_rayonix_header(rayonix):
    h = rayonix.header
    assert rayonix.format == "imgcif" and h["format"] == "imgcif"
    assert rayonix.beam.wavelength_A == pytest.approx(1.30375729885, abs=1e-11)
    assert h["distance_mm"] == pytest.approx(124.0, abs=1e-9)
    assert h["pixel_size_mm"] == pytest.approx((0.177083333333, 0.177083333333), abs=1e-12)
    assert h["overload"] == 65535 and h["undefined_value"] == -1
    assert h["date"] == "2018-12-13T15:51Z34.902"
    assert h["detector_type"] == "Rayonix" and h["compression"] == "packed"
    assert rayonix.beam_center_px == pytest.approx((960.0, 960.0), abs=1e-6)


def test_rayonix_detector_is_the_catalog_4x4_mx340(rayonix):
    det = rayonix.detector
    assert det.name == "rayonix_mx340_4x4"
    assert rayonix.downsample_block == det.downsample_block == 2
    assert len(det.panels) == 1 and det.array_shape == (1920, 1920)
    p = det.panels[0]
    assert p.image_size == (1920, 1920)
    # imgCIF: AXIS_D0_Z at -124 mm, panel offset (-170, +170) mm, fast +x, slow -y.
    assert p.origin_mm == pytest.approx((-170.0, 170.0, -124.0), abs=1e-9)
    assert p.fast_axis == pytest.approx((1.0, 0.0, 0.0)) and p.slow_axis == pytest.approx((0.0, -1.0, 0.0))
    assert det.distance_mm == pytest.approx(124.0)


def test_rayonix_geometry_matches_cbflib(shared_data, rayonix):
    (ref,) = _cbflib_detectors(shared_data(RAYONIX))
    p = rayonix.detector.panels[0]
    assert p.origin_mm == pytest.approx(ref.get_pixel_coordinates_fs(0, 0), abs=1e-9)
    axes = ref.get_detector_axes_fs()
    assert p.fast_axis == pytest.approx(axes[:3]) and p.slow_axis == pytest.approx(axes[3:])
    assert rayonix.beam_center_px == pytest.approx(ref.get_beam_center_fs()[:2], abs=1e-6)


def test_rayonix_pixels(rayonix):
    assert rayonix.shape == (1920, 1920) and rayonix.pixels.dtype == np.int32
    stats = rayonix.statistics()
    assert (stats["min"], stats["max"], stats["median"]) == (0.0, 31096.0, 441.0)
    assert stats["mean"] == pytest.approx(925.227, abs=1e-3)
    assert not rayonix.mask.any()  # a CCD with a pedestal: no undefined or overloaded pixels


# --- CSPAD: 4 arrays of 8 sensors × 2 ASICs ----------------------------------------------------
def test_cspad_header(cspad):
    h = cspad.header
    assert cspad.beam.wavelength_A == pytest.approx(1.272607, abs=1e-9)
    assert h["distance_mm"] == pytest.approx(130.107, abs=1e-3)
    assert h["pixel_size_mm"] == pytest.approx((0.10992, 0.10992), abs=1e-12)
    assert h["overload"] == 90000 and h["undefined_value"] == -400
    assert h["date"] == "2013-03-01T06:08Z58.401"
    assert h["detector_type"] == "CS PAD"
    assert (h["n_arrays"], h["n_panels"]) == (4, 64)


def test_cspad_has_64_asic_panels_130mm_downstream(cspad):
    det = cspad.detector
    assert len(det.panels) == 64
    assert {p.image_size for p in det.panels} == {(194, 185)}  # (fast, slow)
    assert {p.pixel_size_mm for p in det.panels} == {(0.10992, 0.10992)}
    origins = np.array([p.origin_mm for p in det.panels])
    np.testing.assert_allclose(origins[:, 2], -130.107, atol=1.0)
    for p in det.panels:  # every ASIC faces the beam
        assert abs(p.normal[2]) == pytest.approx(1.0, abs=1e-6)
        assert p.trusted_range[0] < -5136 < 16383 < p.trusted_range[1]
    # The detector spans about ±95 mm around the beam in x and y.
    assert origins[:, 0].min() < -80 and origins[:, 0].max() > 80
    assert origins[:, 1].min() < -80 and origins[:, 1].max() > 80


def test_cspad_asic_pairs_are_3_pixels_apart(cspad):
    """The two ASICs of a sensor share axes; the second starts 194 + 3 px (wide central pixels) on."""
    panels = cspad.detector.panels
    for a0, a1 in zip(panels[0::2], panels[1::2]):
        assert a0.name[:-1] == a1.name[:-1] and a0.name.endswith("A0") and a1.name.endswith("A1")
        np.testing.assert_allclose(a0.fast_axis, a1.fast_axis, atol=1e-9)
        step = np.subtract(a1.origin_mm, a0.origin_mm)
        np.testing.assert_allclose(step, 197 * 0.10992 * np.asarray(a0.fast_axis), atol=1e-6)


def test_cspad_geometry_matches_cbflib(shared_data, cspad):
    refs = _cbflib_detectors(shared_data(CSPAD))
    assert len(refs) == 4
    for q, ref in enumerate(refs):  # element q is array q; CBFlib places its first section
        p = cspad.detector.panels[16 * q]
        assert p.name == f"ARRAY_D0Q{q}S0A0"
        assert p.origin_mm == pytest.approx(ref.get_pixel_coordinates_fs(0, 0), abs=1e-9)
        axes = ref.get_detector_axes_fs()
        assert p.fast_axis == pytest.approx(axes[:3], abs=1e-9)
        assert p.slow_axis == pytest.approx(axes[3:], abs=1e-9)


def test_cspad_assembled_image(cspad):
    n_slow, n_fast = cspad.shape
    assert cspad.pixels.dtype == np.float32
    assert 1600 < n_fast < 1850 and 1600 < n_slow < 1850
    assert cspad.downsample_block == 2
    bf, bs = cspad.beam_center_px
    assert 0.4 * n_fast < bf < 0.6 * n_fast and 0.4 * n_slow < bs < 0.6 * n_slow
    # The beam passes through the CSPAD's central hole: no pixel within 40 px of it.
    f, s = int(bf), int(bs)
    assert cspad.mask[s - 40 : s + 40, f - 40 : f + 40].all()
    stats = cspad.statistics()
    assert (stats["min"], stats["max"]) == (-5136.0, 16383.0)  # dark-subtracted: negatives valid
    assert 0.1 < stats["masked_fraction"] < 0.4  # gaps between and around the 64 ASICs


def test_cspad_water_ring_is_centred_on_the_beam(cspad):
    """Solvent scattering is azimuthally even about the beam if the panels are placed right."""
    n_slow, n_fast = cspad.shape
    bf, bs = cspad.beam_center_px
    yy, xx = np.mgrid[0:n_slow, 0:n_fast]
    dx, dy = xx + 0.5 - bf, yy + 0.5 - bs
    ring = (~cspad.mask) & (np.hypot(dx, dy) > 380) & (np.hypot(dx, dy) < 520)
    sectors = np.floor((np.arctan2(dy, dx) + np.pi) / (np.pi / 2)).astype(int) % 4
    medians = [np.median(cspad.pixels[ring & (sectors == k)]) for k in range(4)]
    assert min(medians) > 0.6 * max(medians)


# --- errors -----------------------------------------------------------------------------------
def test_truncated_file_raises_corrupt_image_error(shared_data, tmp_path, capfd):
    data = shared_data(RAYONIX).read_bytes()
    cut = tmp_path / "cut_rayonix.cbf"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptImageError, match="cut_rayonix.cbf") as err:
        ImgCIFReader(cut).read_frame(0)
    assert "\n" not in str(err.value)
    assert re.search(r"binary data truncated at byte \d+ of 2899552 \(X-Binary-Size\)", str(err.value))
    assert "CBFlib" not in capfd.readouterr().err  # CBFlib's own diagnostics go to the log


def test_damaged_binary_fails_its_checksum(shared_data, tmp_path):
    data = bytearray(shared_data(RAYONIX).read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "flipped.cbf"
    bad.write_bytes(bytes(data))
    with pytest.raises(CorruptImageError, match=r"flipped\.cbf: binary data fail their Content-MD5 checksum"):
        ImgCIFReader(bad).read_frame(0)
