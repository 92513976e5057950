"""``xrais nanobragg`` against the nanoBragg program itself, for what the stored images do not cover.

The reference program is built from ``shared/tools/nanobragg`` (gcc with OpenMP) into a
temporary folder; without a compiler the tests skip, naming what is missing. Each case runs
both programs with the same arguments and compares the float images: mosaic domains drawn
from a seed, detector rotations and two-theta, a region of interest, and a Poisson noise file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from xrais.cli import main

_BASE = ["-cell", "61.2", "72.5", "84.3", "78.3", "86.1", "101.7", "-default_F", "100", "-lambda", "1.0",
         "-distance", "90", "-pixel", "0.344", "-detpixels_f", "72", "-detpixels_s", "64", "-oversample", "1",
         "-nopgm", "-noprogress"]
CASES = {
    "mosaic_seeded": ["-N", "4", "-mosaic", "0.8", "-mosaic_domains", "7", "-mosaic_seed", "4242", "-misset", "10",
                      "20", "30", "-Xbeam", "10", "-Ybeam", "12", "-nonoise"],
    "mosaic_default_domains_gauss": ["-N", "5", "-mosaic", "0.3", "-gauss_xtal", "-Xbeam", "11", "-Ybeam", "12",
                                     "-nonoise"],
    "mosaic_tophat_triclinic": ["-N", "5", "-mosaic", "0.3", "-mosaic_domains", "10", "-tophat_spots", "-Xbeam", "11",
                                "-Ybeam", "12", "-nonoise"],
    "detector_rotations_twotheta": ["-N", "4", "-detector_rotx", "3", "-detector_roty", "-4", "-detector_rotz", "5",
                                    "-twotheta", "8", "-Xbeam", "10", "-Ybeam", "12", "-round_xtal", "-nonoise"],
    "roi_oversample_phi": ["-N", "4", "-roi", "10", "50", "5", "40", "-oversample", "2", "-phi", "3", "-osc", "0.6",
                           "-phisteps", "3", "-Xbeam", "10", "-Ybeam", "12", "-nonoise"],
    "noise_seeded": ["-N", "4", "-Xbeam", "10", "-Ybeam", "12", "-flux", "1e19", "-exposure", "1", "-beamsize", "0.05",
                     "-seed", "777"],
}


@pytest.fixture(scope="session")
def nanobragg_program(tmp_path_factory, shared_data) -> Path:
    script = Path(shared_data("nanobragg/cases.json")).parents[2] / "tools" / "nanobragg" / "build.sh"
    if not script.exists():
        pytest.skip(f"reference program sources missing: {script}")
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed: cannot build the reference nanoBragg program")
    out = tmp_path_factory.mktemp("nanobragg_bin")
    proc = subprocess.run(["bash", str(script), str(out)], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.skip(f"building nanoBragg failed: {proc.stderr.strip()[-300:]}")
    return out / "nanoBragg"


def _outputs(folder: Path) -> list[str]:
    return ["-floatfile", str(folder / "float.bin"), "-intfile", str(folder / "int.img"),
            "-noisefile", str(folder / "noise.img")]


@pytest.mark.parametrize("name", list(CASES))
def test_same_image_as_the_program(name, nanobragg_program, tmp_path, monkeypatch):
    args = _BASE + CASES[name]
    ref_dir, our_dir = tmp_path / "c", tmp_path / "xrais"
    ref_dir.mkdir()
    our_dir.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="2")
    proc = subprocess.run([str(nanobragg_program), *args, *_outputs(ref_dir)], cwd=ref_dir, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    monkeypatch.chdir(our_dir)
    with pytest.raises(SystemExit) as exit_info:
        main(["nanobragg", *args, *_outputs(our_dir), "-backend", "numba"])
    assert (exit_info.value.code or 0) == 0
    ref = np.fromfile(ref_dir / "float.bin", dtype="<f4").reshape(64, 72)
    ours = np.fromfile(our_dir / "float.bin", dtype="<f4").reshape(64, 72)
    assert ref.max() > 0
    np.testing.assert_allclose(ours, ref, rtol=2e-5, atol=1e-6 * float(ref.max()))
    if "-seed" in args:  # Poisson noise from the same seed: the same photons, pixel for pixel
        noise_ref = np.fromfile(ref_dir / "noise.img", dtype="<u2", offset=512)
        noise_ours = np.fromfile(our_dir / "noise.img", dtype="<u2", offset=512)
        np.testing.assert_array_equal(noise_ours, noise_ref)
