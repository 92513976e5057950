"""The ``xrais`` command end to end on real files (in-process, as a user would call it)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from xrais._version import __version__
from xrais.cli import main
from xrais.conditioning import condition, read_image
from xrais.io import list_shards, read_shard


def run(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"xrais {__version__}"


def test_info_describes_real_images(capsys, shared_data):
    code, out, _ = run(capsys, "info", str(shared_data("real/pilatus6m/thau_3_2_0003.cbf.bz2")),
                       str(shared_data("real/rayonix340/hit-20181213155134902.cbf")))
    assert code == 0
    assert "pilatus6m" in out and "2463×2527" in out and "int32" in out and "16336" in out
    assert "(1261.61, 1306.96)" in out and "351.00" in out and "0.96859" in out
    assert "rayonix_mx340_4x4" in out and "(960.00, 960.00)" in out


def test_condition_writes_shards_pngs_reports_bad_files_and_resumes(capsys, shared_data, tmp_path):
    good = [shared_data("real/pilatus6m/thau_3_2_0015.cbf"), shared_data("real/adsc/adsc.img.bz2")]
    bad = tmp_path / "broken.cbf"
    bad.write_bytes(shared_data("real/pilatus6m/thau_3_2_0015.cbf").read_bytes()[:300_000])
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "condition", str(good[0]), str(bad), str(good[1]), "--out", str(out_dir), "--png")
    assert code == 1  # one file failed …
    assert "broken.cbf" in err and "truncated at byte" in err
    assert "2 frame(s) conditioned" in out and "1 failed" in out  # … and the others were finished
    shards = list_shards(out_dir, "conditioned")
    images, cols, attrs = read_shard(shards[0])
    assert images.shape == (8, 512, 512) and images.dtype == np.uint8
    assert [p.rsplit("/", 1)[-1] for p in cols["source/path"][::4]] == ["thau_3_2_0015.cbf", "adsc.img.bz2"]
    assert cols["source/quadrant"].tolist() == [0, 1, 2, 3] * 2
    assert cols["geometry/downsample"].tolist() == [2] * 4 + [4] * 4
    assert cols["geometry/distance_mm"][0] == pytest.approx(351.0)
    assert '"quadrants": 4' in attrs["config"]
    assert sorted(p.name for p in (out_dir / "png").iterdir()) == [
        "adsc.img.bz2_f00000.png", "thau_3_2_0015.cbf_f00000.png"]

    # run again after fixing the bad file: done frames are skipped, only the new one is added
    shutil.copy(good[0], bad)
    code, out, _ = run(capsys, "condition", str(good[0]), str(bad), str(good[1]), "--out", str(out_dir))
    assert code == 0 and "1 frame(s) conditioned, 2 already done, 0 failed" in out
    new = read_shard(list_shards(out_dir, "conditioned")[-1])
    assert new[0].shape == (4, 512, 512) and new[1]["source/path"][0].endswith("broken.cbf")
    np.testing.assert_array_equal(new[0], images[:4])  # the same frame, the same quadrants


def test_single_quadrant_explicit_block_and_beam_centre(capsys, shared_data, tmp_path):
    path = shared_data("real/pilatus6m/DLS_I03_smargon_0001.cbf.gz")
    code, out, _ = run(capsys, "condition", str(path), "--out", str(tmp_path), "--quadrants", "1",
                       "--downsample", "3", "--beam-center", "1000.5", "1100")
    assert code == 0
    images, cols, _ = read_shard(list_shards(tmp_path, "conditioned")[0])
    assert images.shape == (1, 512, 512) and cols["geometry/downsample"].tolist() == [3]
    assert (cols["geometry/beam_center_fast_px"][0], cols["geometry/beam_center_slow_px"][0]) == (1000.5, 1100.0)
    expected = condition(read_image(path), beam_center_px=(1000.5, 1100.0), block=3, quadrants=1)
    np.testing.assert_array_equal(images, expected)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["condition", "x.cbf", "--out", "o", "--quadrants", "3"], "--quadrants"),
        (["condition", "x.cbf", "--out", "o", "--downsample", "0"], "--downsample"),
    ],
)
def test_bad_options_are_one_line_errors(capsys, argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_missing_and_unknown_files(capsys, tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("not an image")
    code, _, err = run(capsys, "info", str(tmp_path / "missing.cbf"), str(junk))
    assert code == 1
    assert "missing.cbf: no such file" in err
    assert "notes.txt: not a detector image format xrais reads (tried minicbf" in err
