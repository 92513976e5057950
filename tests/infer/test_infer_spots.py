"""Spot finding in ``xrais infer`` (with and without models) and the ``xrais spots`` command."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from xrais.cli import main
from xrais.conditioning import read_image
from xrais.errors import ConfigError
from xrais.infer import read_results
from xrais.infer.config import InferConfig, make_config
from xrais.infer.scoring import with_geometry_overrides
from xrais.infer.spots import SPOT_COLUMNS, analyze_image
from xrais.infer.spots_run import SPOTS_ONLY_COLUMNS
from xrais.runs import RunLock


def _main(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


@pytest.fixture(scope="module")
def frames(real_images):
    """Two thaumatin hits: 302 and 51 spots in the data README."""
    return [str(p) for p in real_images(["p6m_0001", "p6m_0015"])]


def _expected(path: str) -> dict:
    return analyze_image(read_image(path)).row()


def test_infer_without_a_model_gives_the_spot_columns_alone(frames, tmp_path, capsys):
    code, out, _ = _main(capsys, "infer", *frames, "--out", str(tmp_path / "r"))
    assert code == 0 and "spots" in out
    rows = read_results(tmp_path / "r")
    assert len(rows) == 2 and (rows["error"] == "").all()
    assert not any(c.startswith(("resolution_q", "min_resolution", "multilattice")) for c in rows.columns)
    for _, row in rows.iterrows():
        want = _expected(row["file"])
        for col in SPOT_COLUMNS:
            assert row[col] == pytest.approx(want[col], nan_ok=True), col
        assert row["spots_s"] > 0 and math.isnan(row["score_s"]) and row["models"] == ""
    assert sorted(rows["n_spots"]) == [51, 302]  # the data README's counts for these frames


def test_infer_with_a_model_fills_both_in_one_row(frames, checkpoints, tmp_path, capsys):
    code, _, _ = _main(capsys, "infer", *frames, "--model", str(checkpoints["resolution"]), "--quadrants", "1",
                       "--out", str(tmp_path / "r"))
    assert code == 0
    rows = read_results(tmp_path / "r")
    assert rows["min_resolution_A"].notna().all() and np.isfinite(rows["spot_resolution_A"]).all()
    assert sorted(rows["n_spots"]) == [51, 302] and (rows["hit"] == 1).all()
    # spot finding off: the model's columns alone, and a results folder of other settings is refused
    code, _, err = _main(capsys, "infer", *frames, "--model", str(checkpoints["resolution"]), "--quadrants", "1",
                         "--no-spots", "--out", str(tmp_path / "r"))
    assert code == 2 and "other models or settings" in err and "spots" in err
    code, _, _ = _main(capsys, "infer", *frames, "--model", str(checkpoints["resolution"]), "--quadrants", "1",
                       "--no-spots", "--out", str(tmp_path / "r2"))
    assert code == 0 and "n_spots" not in read_results(tmp_path / "r2").columns


def test_spot_settings_reach_the_finder_and_bad_ones_are_one_line(frames, tmp_path, capsys):
    code, _, _ = _main(capsys, "infer", frames[0], "--spot", "sigma_strong=6", "--spot", "min_spots=400",
                       "--out", str(tmp_path / "r"))
    assert code == 0
    row = read_results(tmp_path / "r").iloc[0]
    want = analyze_image(read_image(frames[0]), *make_config(
        InferConfig, spot_settings={"sigma_strong": 6.0, "min_spots": 400}).spot_params()).row()
    assert row["n_spots"] == want["n_spots"] < 302 and row["hit"] == 0
    for argv, message in ((["--spot", "sigma_strng=4"], "did you mean 'sigma_strong'"),
                          (["--spot", "sigma_strong=-1"], "sigma_strong must be ≥ 0"),
                          (["--spot", "kernel_size"], "expected NAME=VALUE"),
                          (["--no-spots"], "nothing to do")):
        code, _, err = _main(capsys, "infer", frames[0], *argv, "--out", str(tmp_path / "bad"))
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)


def test_geometry_overrides_reach_the_spot_d_spacings(frames):
    image = read_image(frames[0])
    same = with_geometry_overrides(image, InferConfig())
    assert same is image
    config = InferConfig(distance_mm=2 * image.detector.distance_mm, wavelength_A=image.beam.wavelength_A,
                         beam_center_px=tuple(image.beam_center_px))
    moved = with_geometry_overrides(image, config)
    assert moved.detector.distance_mm == pytest.approx(config.distance_mm)
    assert moved.detector.beam_center_px(moved.beam) == pytest.approx(image.beam_center_px, abs=1e-6)
    near, far = analyze_image(image).spots, analyze_image(moved).spots
    assert np.array_equal(near.fast_px, far.fast_px)
    assert (far.d_A > near.d_A).all()  # twice as far: each spot at a smaller angle, a larger d
    shifted = with_geometry_overrides(image, InferConfig(beam_center_px=(image.beam_center_px[0] + 10,
                                                                         image.beam_center_px[1])))
    bf, bs = shifted.detector.beam_center_px(shifted.beam)
    assert (bf, bs) == pytest.approx((image.beam_center_px[0] + 10, image.beam_center_px[1]), abs=1e-6)


def test_spots_command_writes_rows_and_pictures_and_resumes(frames, tmp_path, capsys):
    out = tmp_path / "spots.csv"
    missing = str(tmp_path / "missing.cbf")
    code, _, err = _main(capsys, "spots", frames[0], missing, "--out", str(out), "--png", str(tmp_path / "png"))
    assert code == 1 and "missing.cbf" in err  # one bad input: its error row, the rest done
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(SPOTS_ONLY_COLUMNS)
    assert [r["file"] for r in rows] == [frames[0], missing] and rows[1]["error"]
    assert int(rows[0]["n_spots"]) == 302 and rows[0]["hit"] == "1"
    assert (tmp_path / "png" / "thau_3_2_0001.png").stat().st_size > 10_000
    settings = json.loads((tmp_path / "spots.csv.json").read_text())
    assert settings["columns"] == list(SPOTS_ONLY_COLUMNS)
    # the same command again: the frames done are skipped, the new one added
    code, stdout, _ = _main(capsys, "spots", frames[0], frames[1], "--out", str(out))
    assert code == 0 and "already done" in stdout
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["file"] for r in rows] == [frames[0], missing, frames[1]]
    # other settings into the same CSV are refused, as is a second run while one holds it
    code, _, err = _main(capsys, "spots", frames[0], "--out", str(out), "--spot", "sigma_strong=4")
    assert code == 2 and "other settings" in err
    with RunLock(tmp_path, "xrais spots (another)", name=".spots.csv.xrais.lock"):
        code, _, err = _main(capsys, "spots", frames[0], "--out", str(out))
    assert code == 2 and "already held" in err


def test_spots_command_refuses_models_and_unusable_outputs(frames, tmp_path, capsys):
    from xrais.infer.spots_run import find_spots_in_files

    with pytest.raises(ConfigError, match="no --model"):
        find_spots_in_files(frames, tmp_path / "s.csv", InferConfig(models=("m.safetensors",)))
    (tmp_path / "file").write_text("x")
    code, _, err = _main(capsys, "spots", frames[0], "--out", str(tmp_path / "file" / "s.csv"))
    assert code == 2 and "which is a file" in err and "Traceback" not in err


def test_plot_draws_spot_resolution_beside_the_model(frames, checkpoints, tmp_path, capsys):
    from xrais.infer import plot_results

    _main(capsys, "infer", *frames, "--model", str(checkpoints["resolution"]), "--quadrants", "1",
          "--out", str(tmp_path / "r"))
    drawn = plot_results(tmp_path / "r", tmp_path / "strip.png")
    assert drawn["panels"] == ["resolution"] and drawn["images"] == 2
    assert (tmp_path / "strip.png").stat().st_size > 5_000
    _main(capsys, "infer", *frames, "--out", str(tmp_path / "spots_only"))
    assert plot_results(tmp_path / "spots_only", tmp_path / "s.png")["panels"] == ["resolution"]


def test_spots_command_stopped_by_sigterm_keeps_its_rows_and_resumes(real_images, tmp_path, helpers):
    import signal
    import subprocess
    import sys

    from long_runs import signal_when

    frames = [str(p) for p in real_images(["p6m_0001", "p6m_0003", "p6m_0007", "p6m_0015", "p6m_i03"])]
    out = tmp_path / "spots.csv"
    cmd = [sys.executable, "-m", "xrais.cli", "spots", *frames, "--out", str(out)]

    def rows() -> list[dict]:
        if not out.exists():
            return []
        with out.open() as fh:
            return list(csv.DictReader(fh))

    code, _, err = signal_when(cmd, lambda: len(rows()) >= 1, signal.SIGTERM, env=helpers.env())
    assert code == 128 + signal.SIGTERM and "stopped by SIGTERM" in " ".join(err.split()), err[-2000:]
    kept = rows()
    assert 1 <= len(kept) < len(frames) and all(r["error"] == "" for r in kept)
    again = subprocess.run(cmd, capture_output=True, text=True, env=helpers.env(), timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    final = rows()
    assert [r["file"] for r in final[: len(kept)]] == [r["file"] for r in kept]
    assert sorted(r["file"] for r in final) == sorted(frames)
