"""Headers that lie about sizes, damaged binary data, and header values that cannot be right."""

from __future__ import annotations

import base64
import bz2
import hashlib
import logging
import re
import subprocess
import sys

import numpy as np
import pytest

from xrais.conditioning import read_image
from xrais.conditioning.readers.cbf import decode_minicbf, plausible_flux
from xrais.errors import CorruptImageError

THAU = "real/pilatus6m/thau_3_2_0001.cbf"


@pytest.fixture(scope="module")
def thau(shared_data) -> bytes:
    return shared_data(THAU).read_bytes()


def _without_md5(raw: bytes) -> bytes:
    return re.sub(rb"Content-MD5: \S+\r\n", b"", raw)


def _write(tmp_path, name: str, raw: bytes):
    path = tmp_path / name
    path.write_bytes(raw)
    return path


@pytest.mark.parametrize("name, edit, message", [
    ("wider.cbf", lambda r: r.replace(b"Fastest-Dimension: 2463", b"Fastest-Dimension: 2464"),
     r"wider\.cbf: header says X-Binary-Number-of-Elements 6224001, but X-Binary-Size-Fastest-Dimension × "
     r"Second-Dimension = 2464×2527 = 6226528"),
    ("elements.cbf", lambda r: r.replace(b"Number-of-Elements: 6224001", b"Number-of-Elements: 6224000"),
     r"elements\.cbf: header says X-Binary-Number-of-Elements 6224000, but .* = 2463×2527 = 6224001"),
    ("huge.cbf", lambda r: r.replace(b"Fastest-Dimension: 2463", b"Fastest-Dimension: 99999999")
     .replace(b"Number-of-Elements: 6224001", b"Number-of-Elements: 252699997473"),
     r"huge\.cbf: header declares 99999999×2527 = 252699997473 pixels, more than any detector"),
    ("bigger.cbf", lambda r: r.replace(b"X-Binary-Size: 6224107", b"X-Binary-Size: 9224107"),
     r"bigger\.cbf: binary data truncated at byte 6228\d\d\d of 9224107 \(X-Binary-Size\)"),
    ("smaller.cbf", lambda r: r.replace(b"X-Binary-Size: 6224107", b"X-Binary-Size: 6224007"),
     r"smaller\.cbf: binary data fail their Content-MD5 checksum \(header iGRmdGGUIqJyF2y7dyHbQg==, data "),
    ("smaller_nomd5.cbf", lambda r: _without_md5(r).replace(b"X-Binary-Size: 6224107", b"X-Binary-Size: 6224007"),
     r"smaller_nomd5\.cbf: bad byte-offset stream: its 6224007 bytes decode to \d+ elements, the header declares "
     r"6224001"),
    ("bigger_nomd5.cbf", lambda r: _without_md5(r).replace(b"X-Binary-Size: 6224107", b"X-Binary-Size: 6224207"),
     r"bigger_nomd5\.cbf: bad byte-offset stream: its 6224207 bytes decode to 6224101 elements, the header "
     r"declares 6224001"),
    ("cut.cbf", lambda r: r[:3_000_000],
     r"cut\.cbf: binary data truncated at byte 2998\d\d\d of 6224107"),
    ("header_only.cbf", lambda r: r[:1500],
     r"header_only\.cbf: no CBF binary section .* in its 1500 bytes; the file is truncated or not a CBF"),
    ("flipped.cbf", lambda r: r[:2_000_000] + bytes([r[2_000_000] ^ 0x5A]) + r[2_000_001:],
     r"flipped\.cbf: binary data fail their Content-MD5 checksum"),
    ("packed.cbf", lambda r: r.replace(b'conversions="x-CBF_BYTE_OFFSET"', b'conversions="x-CBF_PACKED"'),
     r"packed\.cbf: compression x-CBF_PACKED; expected x-CBF_BYTE_OFFSET"),
    ("float.cbf", lambda r: r.replace(b'"signed 32-bit integer"', b'"signed 64-bit real IEEE"'),
     r"float\.cbf: X-Binary-Element-Type 'signed 64-bit real IEEE'; expected a signed or unsigned integer"),
])
def test_lying_or_damaged_minicbf_is_one_clear_error(thau, tmp_path, capfd, caplog, name, edit, message):
    path = _write(tmp_path, name, edit(thau))
    with caplog.at_level(logging.DEBUG, logger="fabio"):
        with pytest.raises(CorruptImageError, match=message) as info:
            read_image(path)
    assert "\n" not in str(info.value)
    assert not [r for r in caplog.records if r.name.startswith("fabio")]  # the one line is ours
    assert capfd.readouterr().err == ""


def test_a_damaged_file_that_still_checks_out_reads_as_the_original(thau, tmp_path):
    """Padding cut off after the data, and an MD5 recomputed for a header that tells the truth."""
    start = thau.index(b"\x0c\x1a\x04\xd5") + 4
    path = _write(tmp_path, "short_padding.cbf", thau[: start + 6224107 + 10])
    original = read_image(_write(tmp_path, "same.cbf", thau)).pixels
    np.testing.assert_array_equal(read_image(path).pixels, original)
    flipped = bytearray(thau)
    flipped[start + 1000] ^= 0x01  # a one-byte delta changes one pixel (and the following ones)
    md5 = base64.b64encode(hashlib.md5(bytes(flipped[start : start + 6224107])).digest())
    fixed = bytes(flipped).replace(b"iGRmdGGUIqJyF2y7dyHbQg==", md5)
    pixels = read_image(_write(tmp_path, "fixed.cbf", fixed)).pixels
    assert pixels.shape == original.shape and (pixels != original).any()  # read, not refused: nothing lies


def test_truncated_compressed_cbf_names_the_compression(shared_data, tmp_path):
    raw = shared_data("real/pilatus6m/thau_3_2_0003.cbf.bz2").read_bytes()
    path = _write(tmp_path, "cut.cbf.bz2", raw[: len(raw) // 2])
    with pytest.raises(CorruptImageError, match=r"cut\.cbf\.bz2: cannot decompress \(bzip2: .+\)"):
        read_image(path)


def test_decoded_pixels_match_fabio(shared_data):
    import fabio

    for rel in (THAU, "real/eiger16m/dlsnxs2cbf_therm_0001.cbf.gz"):
        ours = decode_minicbf(shared_data(rel))
        np.testing.assert_array_equal(ours.pixels, fabio.open(str(shared_data(rel))).data)
        assert "Pixel_size" in ours.header_text


def test_smv_header_sizes_are_checked(shared_data, tmp_path):
    raw = bz2.decompress(shared_data("real/adsc/adsc.img.bz2").read_bytes())
    cases = {
        "narrow.img": (raw.replace(b"SIZE1=2304;", b"SIZE1=2000;"),
                       r"narrow\.img: SMV file holds 10617344 bytes, but its header .* accounts for 9216512"),
        "huge.img": (raw.replace(b"SIZE1=2304;", b"SIZE1=9999999;"), r"huge\.img: SMV SIZE1×SIZE2 9999999×2304"),
        "zero_pixel.img": (raw.replace(b"PIXEL_SIZE=0.081600;", b"PIXEL_SIZE=0.000000;"),
                           r"zero_pixel\.img: SMV PIXEL_SIZE 0\.0; expected a positive number"),
        "nan.img": (raw.replace(b"WAVELENGTH=1.0000;", b"WAVELENGTH=nan;   "),
                    r"nan\.img: SMV WAVELENGTH nan; expected a positive number"),
    }
    for name, (data, message) in cases.items():
        with pytest.raises(CorruptImageError, match=message):
            read_image(_write(tmp_path, name, data))


# --------------------------------------------------------------------------- Flux


def test_placeholder_flux_is_unknown_with_a_warning(shared_data, caplog, monkeypatch):
    """PILATUS headers give Flux in photons/s; 1.396 and 0 are placeholders, 1.3e11 is a real flux."""
    import xrais.conditioning.readers.cbf as cbf

    monkeypatch.setattr(cbf, "_warned_flux", set())  # each value warns once per process
    caplog.set_level(logging.WARNING)
    thau = read_image(shared_data(THAU))
    assert thau.beam.flux_photons_per_s is None and thau.header["flux_header"] == pytest.approx(1.396021)
    cyst = read_image(shared_data("real/pilatus2m/l-cyst_01_00001.cbf"))
    assert cyst.beam.flux_photons_per_s is None and cyst.header["flux_header"] == 0.0
    i23 = read_image(shared_data("real/pilatus12m/DLS_I23_P12M_thau_00001.cbf.gz"))
    assert i23.beam.flux_photons_per_s == pytest.approx(1.30126e11, rel=1e-5)
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "thau_3_2_0001.cbf: header Flux 1.39602 is not a plausible flux" in warned
    assert plausible_flux(1e-15, "x") is None and plausible_flux(float("nan")) is None
    assert plausible_flux(5e12) == 5e12


def test_a_beam_from_a_placeholder_flux_is_not_a_few_photons(shared_data):
    """The simulator falls back on its default fluence, not on 1.4 photons/s × exposure."""
    from xrais.simulate.render import NANOBRAGG_DEFAULT_FLUENCE, fluence_photons_per_m2

    beam = read_image(shared_data(THAU)).beam
    assert fluence_photons_per_m2(beam, exposure_s=0.019) == NANOBRAGG_DEFAULT_FLUENCE


# --------------------------------------------------------------------------- xrais info


def _xrais(*argv: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "xrais.cli", *argv], capture_output=True, text=True,
                          env=dict(os.environ, COLUMNS="250"), timeout=300)


def test_info_prints_no_table_for_failures_and_describes_the_good(shared_data, tmp_path):
    missing = tmp_path / "missing.cbf"
    proc = _xrais("info", str(missing))
    assert proc.returncode == 1 and proc.stdout.strip() == ""
    assert [line for line in proc.stderr.splitlines() if "error" in line] == [f"error: {missing}: no such file"]
    cut = _write(tmp_path, "cut.cbf", shared_data(THAU).read_bytes()[:100_000])
    proc = _xrais("info", str(missing), str(shared_data(THAU)), str(cut))
    assert proc.returncode == 1
    assert "thau_3_2_0001.cbf" in proc.stdout and "pilatus6m" in proc.stdout
    assert "missing.cbf" not in proc.stdout and "cut.cbf" not in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert any("missing.cbf: no such file" in l for l in lines)
    assert any("cut.cbf: binary data truncated at byte" in l for l in lines)
    assert "Traceback" not in proc.stderr
