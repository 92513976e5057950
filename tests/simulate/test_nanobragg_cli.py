"""``xrais nanobragg`` against the nanoBragg reference images (../shared/data/nanobragg).

Every case of cases.json is run through the command with its exact nanoBragg argument list;
the float file must equal nanoBragg's image (float32 rounding aside) and the Poisson noise
file must equal nanoBragg's bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from xrais.cli import main
from xrais.conditioning.readers.smv import SMVReader, parse_smv_header
from xrais.simulate.nanobragg_args import (nanobragg_sampling, nanobragg_sources, parse_nanobragg_args,
                                           resolve_nanobragg)
from xrais.simulate.noise_nanobragg import nanobragg_noise
from xrais.simulate.smv import intfile_pixels

_DATA = Path(os.environ.get("XRAIS_SHARED_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"))
_CASES_FILE = _DATA / "nanobragg" / "cases.json"
_CASE_NAMES = ([c["name"] for c in json.loads(_CASES_FILE.read_text())["cases"]] if _CASES_FILE.exists()
               else ["nanobragg-cases-missing"])
_OUTPUTS = ("-floatfile", "-intfile", "-noisefile", "-pgmfile")
_LYSO = ["-cell", "79.1", "79.1", "38.4", "90", "90", "90", "-default_F", "100"]


@pytest.fixture(scope="module")
def cases(shared_data):
    return {c["name"]: c for c in json.loads(shared_data("nanobragg/cases.json").read_text())["cases"]}


def _run(argv, tmp_path, monkeypatch) -> int:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["nanobragg", *argv])
    return exc.value.code or 0


def _case_argv(case, tmp_path, shared_data) -> list[str]:
    """The case's nanoBragg arguments with outputs in tmp_path and its hkl file copied there."""
    argv = list(case["command"][1:])
    for i, arg in enumerate(argv[:-1]):
        if arg in _OUTPUTS:
            argv[i + 1] = str(tmp_path / argv[i + 1])
        if arg == "-hkl":
            shutil.copy(shared_data(f"nanobragg/hkl/{argv[i + 1]}"), tmp_path / argv[i + 1])
    extra = ["--nanobragg-2022"] if case["name"].endswith("_v2022") else []
    return [*argv, *extra, "-backend", "numba"]


def _output(argv, option) -> Path:
    return Path(argv[argv.index(option) + 1])


@pytest.mark.parametrize("name", _CASE_NAMES)
def test_case_matches_nanobragg(name, cases, shared_data, tmp_path, monkeypatch):
    case = cases[name]
    ref = np.load(shared_data(f"nanobragg/{name}.npz"))
    argv = _case_argv(case, tmp_path, shared_data)
    assert _run(argv, tmp_path, monkeypatch) == 0
    image = np.fromfile(_output(argv, "-floatfile"), dtype="<f4").reshape(ref["image"].shape)
    expected = ref["image"].astype(np.float64)
    r = np.corrcoef(image.ravel().astype(np.float64), expected.ravel())[0, 1]
    assert r > 0.999999, f"{name}: Pearson r = {r:.9f}"
    assert image.sum(dtype=np.float64) / expected.sum() == pytest.approx(1.0, abs=1e-6)
    # nanoBragg and xrais agree pixel by pixel to float32 rounding.
    np.testing.assert_allclose(image, expected, rtol=1e-5, atol=1e-6 * expected.max())
    # The noiseless SMV holds nanoBragg's integer conversion of the image.
    smv = _output(argv, "-intfile").read_bytes()
    pixels = np.frombuffer(smv, dtype="<u2", offset=512).reshape(image.shape)
    np.testing.assert_array_equal(pixels, intfile_pixels(image, adc=40.0))
    if "noise_image" in ref:
        noise = np.frombuffer(_output(argv, "-noisefile").read_bytes(), dtype="<u2", offset=512)
        np.testing.assert_array_equal(noise.reshape(image.shape), ref["noise_image"])


def test_noise_port_reproduces_nanobragg_from_reference_image(shared_data):
    ref = np.load(shared_data("nanobragg/n_noise_poisson.npz"))
    noise, photons, overloads = nanobragg_noise(ref["image"], seed=12345, adc=40.0)
    np.testing.assert_array_equal(noise, ref["noise_image"])
    assert (photons, overloads) == (33619.0, 0)


def test_noise_roi_and_overloads():
    img = np.full((3, 4), 5.0, dtype=np.float32)
    img[1, 1] = 1e8  # Gaussian branch, then clipped
    noise, _, overloads = nanobragg_noise(img, seed=1, roi=(1, 2, 0, 1))
    assert overloads == 1 and noise[1, 1] == 65535
    assert noise[2].sum() == 0 and noise[:, 0].sum() == 0 and noise[:, 3].sum() == 0
    assert np.all(noise[:2, 1:3] >= 40)
    again, _, _ = nanobragg_noise(img, seed=1, roi=(1, 2, 0, 1))
    np.testing.assert_array_equal(noise, again)


def test_intfile_is_read_back_by_smv_reader(cases, shared_data, tmp_path, monkeypatch):
    argv = _case_argv(cases["c_triclinic_misset"], tmp_path, shared_data)
    assert _run(argv, tmp_path, monkeypatch) == 0
    path = _output(argv, "-intfile")
    assert SMVReader.understand(path)
    raw = path.read_bytes()
    assert len(raw) == 512 + 240 * 180 * 2 and raw[:2] == b"{\n" and b"}\f" in raw[:512]
    header = parse_smv_header(raw[:512])
    assert header["HEADER_BYTES"] == "512" and header["BYTE_ORDER"] == "little_endian"
    assert header["TYPE"] == "unsigned_short" and header["DIALS_ORIGIN"] == "-9.586,6.086,-100"
    assert (header["XDS_ORGX"], header["XDS_ORGY"], header["MOSFLM_CENTER_X"]) == ("56.2326", "35.8837", "6")
    image = SMVReader(path).read_frame(0)
    assert image.shape == (180, 240)
    det = image.detector
    assert det.pixel_size_mm == (0.172, 0.172) and det.distance_mm == pytest.approx(100.0)
    assert image.beam.wavelength_A == 1.0
    # BEAM_CENTER_X/Y count from the first pixel's centre in nanoBragg's files; the reader takes the
    # corner-based DENZO keys of a simulated (BEAMLINE=fake) image: the spot the image was rendered with.
    assert image.beam_center_px == pytest.approx((9.5 / 0.172 + 0.5, 6.0 / 0.172 + 0.5))
    run = resolve_nanobragg(parse_nanobragg_args(argv))
    assert run.detector.beam_center_px(run.beam) == pytest.approx((9.5 / 0.172 + 0.5, 6.0 / 0.172 + 0.5))
    ref = np.load(shared_data("nanobragg/c_triclinic_misset.npz"))["image"]
    np.testing.assert_array_equal(image.pixels, intfile_pixels(ref, adc=40.0))


def test_pgm_file(tmp_path, monkeypatch):
    argv = [*_LYSO, "-N", "5", "-detpixels_x", "24", "-detpixels_y", "16", "-pixel", "0.172", "-oversample", "1",
            "-pgmfile", "a.pgm",
            "-floatfile", "a.bin", "-intfile", "a.img", "-nonoise", "-noprogress", "-backend", "numba"]
    assert _run(argv, tmp_path, monkeypatch) == 0
    raw = (tmp_path / "a.pgm").read_bytes()
    assert raw.startswith(b"P5\n24 16\n# pixels scaled by ") and len(raw.split(b"\n255\n", 1)[1]) == 24 * 16
    assert not (tmp_path / "noiseimage.img").exists()
    img = np.fromfile(tmp_path / "a.bin", dtype="<f4")
    assert img.size == 24 * 16 and img.max() > 0


def test_unknown_option_is_an_error(tmp_path, monkeypatch, capsys):
    assert _run([*_LYSO, "-misset_sed", "3"], tmp_path, monkeypatch) == 2  # a usage error
    err = capsys.readouterr().err
    assert "unknown option '-misset_sed'" in err and "-Xbeam" in err and "-oversample" in err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv, message", [
    (["-interpolate"], "does not interpolate"),
    (["-misset", "random"], "-misset random"),
    (["-N"], "option -N: expected 1 value"),
    (["-N", "5", "7"], "unexpected argument '7'"),
    (["-seed", "-3"], "-seed -3"),
    (["-lambda", "x"], "cannot read the value 'x'"),
    (["-xds"], "MOSFLM"),
])
def test_bad_arguments(argv, message, tmp_path, monkeypatch, capsys):
    assert _run([*_LYSO, *argv], tmp_path, monkeypatch) == 2  # a usage error
    assert message in capsys.readouterr().err


def test_no_cell_or_structure_factors():
    with pytest.raises(ValueError, match="no unit cell"):
        resolve_nanobragg(parse_nanobragg_args(["-default_F", "1"]))
    with pytest.raises(ValueError, match="no structure factors"):
        resolve_nanobragg(parse_nanobragg_args(["-cell", "50"]))


def test_defaults_are_nanobraggs():
    run = resolve_nanobragg(parse_nanobragg_args([*_LYSO, "-N", "5"]), now_seed=42)
    assert run.fluence == 1.25932015286227e29 and run.beam.polarization_fraction == 0.5
    assert run.crystal.n_cells == (5, 5, 5) and run.crystal.shape == "square"
    assert run.crystal.mosaic_domains == 1 and run.crystal.mosaic_seed == 12345678
    assert run.oversample == 2  # ceil(3 · 395.5 Å / (1 Å · 100 mm / 0.1 mm))
    assert run.detector.array_shape == (1024, 1024) and run.detector.panels[0].pixel_size_mm == (0.1, 0.1)
    assert run.beam_mm == (pytest.approx(51.25), pytest.approx(51.25))  # (102.4 + 0.1) / 2
    assert run.sources.shape == (1, 4) and run.sources[0, 3] == 1.0
    assert (run.phisteps, run.osc_deg, run.noise_seed) == (1, 0.0, 42)
    assert run.render_options["polarization"] and run.render_options["background"] == 0.0
    a = run.args
    assert (a.floatfile, a.intfile, a.pgmfile, a.noisefile, a.adc) == ("floatimage.bin", "intimage.img", "image.pgm",
                                                                      "noiseimage.img", 40.0)
    assert a.write_pgm and a.write_noise and a.backend == "auto"


def test_sampling_rules():
    def run(*argv):
        return resolve_nanobragg(parse_nanobragg_args([*_LYSO, "-oversample", "1", *argv]))

    osc = run("-osc", "1")
    assert (osc.phisteps, osc.osc_deg, osc.render_options["osc_deg"]) == (2, 1.0, 1.0)
    steps = run("-phi", "3", "-phisteps", "4")  # steps alone: 1° in 4 steps
    assert (steps.phisteps, steps.osc_deg, steps.phi_deg) == (4, 1.0, 3.0)
    assert run("-N", "0").crystal.n_cells == (1, 1, 1)
    assert run("-N", "4", "-Nb", "6").crystal.n_cells == (4, 6, 4)
    mosaic = run("-mosaic", "0.5")
    assert (mosaic.crystal.mosaic_domains, mosaic.crystal.mosaic_spread_deg) == (10, 0.5)
    assert run("-mosaic_domains", "5").crystal.mosaic_domains == 1  # no spread: one domain
    assert run("-energy", "12398.42").beam.wavelength_A == pytest.approx(1.0)
    assert run("-lambda", "1.5").beam.wavelength_A == 1.5
    det = run("-detpixels_x", "40", "-detpixels_y", "30", "-pixel", "0.2").detector
    assert det.array_shape == (30, 40) and det.panels[0].image_size == (40, 30)
    assert run("-detsize", "10", "-pixel", "0.172").detector.array_shape == (58, 58)
    disp = run("-dispersion", "1").sources  # a range alone: 2 wavelengths
    np.testing.assert_allclose(disp[:, 3], [0.995, 1.005])
    assert len(run("-divergence", "2").sources) == 4 and len(run("-divergence", "2", "-divsteps", "3").sources) == 5
    assert len(run("-divergence", "2", "-divsteps", "3", "-square_div").sources) == 9
    assert run("-xtalsize", "0.001").crystal.n_cells == (127, 127, 261)  # mm: ceil(1 µm / edge)
    clipped = run("-xtalsize", "0.0004", "-beamsize", "0.0002")  # y and z are clipped to the beam
    assert clipped.crystal.n_cells == (51, 26, 53) and any("clipping" in w for w in clipped.warnings)
    assert run("-flux", "1e12", "-beamsize", "0.02").fluence == pytest.approx(1e12 / 0.02e-3**2)
    assert run("-gauss_xtal", "--nanobragg-2022").crystal.shape == "gauss_2022"
    assert run("-mosaic_seed", "5").args.seed is None  # exact matching: -mosaic_seed is not -seed
    assert nanobragg_sampling(-1.0, -1.0, 3) == (1.0, 1.0 / 3, 3)  # steps alone: a 1 rad range


def test_sources_match_the_render_api_sampling():
    from xrais.geometry import Beam
    from xrais.simulate.sources import beam_sources

    beam = Beam(wavelength_A=1.0, polarization_fraction=0.5, divergence_mrad=0.4, spectral_dispersion=0.005)
    api = beam_sources(beam, divergence_steps=3, dispersion_steps=3)
    ours = nanobragg_sources(1.0, (4e-4, 2e-4, 3), (4e-4, 2e-4, 3), (0.005, 0.0025, 3))
    assert ours.shape == (15, 4)
    np.testing.assert_allclose(ours, api, atol=1e-15)


def test_interpolation_warning(tmp_path, monkeypatch, capsys, shared_data):
    shutil.copy(shared_data("nanobragg/hkl/f_sparse.hkl"), tmp_path / "f.hkl")
    argv = ["-cell", "79.1", "79.1", "38.4", "90", "90", "90", "-hkl", "f.hkl", "-N", "2", "-detpixels", "64",
            "-pixel", "0.172", "-oversample", "1", "-noprogress", "-nonoise", "-nopgm", "-backend", "numba"]
    assert _run(argv, tmp_path, monkeypatch) == 0
    assert "xrais does not interpolate" in capsys.readouterr().err
    assert _run([*argv, "-nointerpolate"], tmp_path, monkeypatch) == 0
    assert "interpolate" not in capsys.readouterr().err
