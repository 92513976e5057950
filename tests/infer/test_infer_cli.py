"""The ``infer`` and ``plot`` commands: registration, stdin lists, and one-line errors for bad input."""

from __future__ import annotations

import os

import numpy as np
import pytest

from xrais.cli import main
from xrais.errors import ConfigError
from xrais.infer import read_results


def _main(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def test_commands_are_registered(helpers):
    result = helpers.cli("--help")
    assert result.exit_code == 0 and "infer" in result.output and "plot" in result.output
    result = helpers.cli("infer", "--help")
    for flag in ("--model", "--quadrants", "--out", "--batch-size", "--device", "--format", "--watch", "--idle-timeout"):
        assert flag in result.output, flag


def test_bad_input_gives_one_line_errors(capsys, checkpoints, tmp_path):
    model = str(checkpoints["resolution"])
    code, _, err = _main(capsys, "infer", "--model", model, "--out", str(tmp_path / "o"))
    assert code == 2 and "give image files, folders or globs" in err
    code, _, err = _main(capsys, "infer", "x.cbf", "--model", model, "--out", str(tmp_path / "o"), "--quadrants", "3")
    assert code == 2 and "quadrants: Input should be 1 or 4 (got 3)" in err
    code, _, err = _main(capsys, "infer", "x.cbf", "--model", str(tmp_path / "none.safetensors"), "--out",
                         str(tmp_path / "o"))
    assert code == 1 and "none.safetensors: no such checkpoint" in err
    code, _, err = _main(capsys, "infer", "--watch", str(tmp_path / "nowhere"), "--model", model, "--out",
                         str(tmp_path / "o"))
    assert code == 2 and "nowhere: no such folder" in err
    code, _, err = _main(capsys, "infer", "x.cbf", "--model", model, "--out", str(tmp_path / "o"), "--device", "tpu")
    assert code == 2 and "expected auto, cpu, cuda or cuda:N" in err
    code, _, err = _main(capsys, "plot", str(tmp_path / "missing"), "--out", str(tmp_path / "p.png"))
    assert code == 1 and "missing: no such file or folder" in err
    assert not (tmp_path / "o" / ".xrais.lock").exists()  # a refused run leaves the folder free


def test_an_unusable_out_is_one_line(capsys, checkpoints, real_images, tmp_path):
    image = str(real_images(["p6m_0015"])[0])
    model = str(checkpoints["resolution"])
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    code, _, err = _main(capsys, "infer", image, "--model", model, "--out", str(a_file))
    assert code == 2 and f"{a_file}: --out must be a folder, but it is an existing file" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    code, _, err = _main(capsys, "infer", image, "--model", model, "--out", str(a_file / "sub"))
    assert code == 2 and f"lies under {a_file}, which is a file" in err and "Traceback" not in err
    code, _, err = _main(capsys, "plot", str(tmp_path), "--out", str(a_file / "p.png"))
    assert code == 2 and f"p.png: --out cannot be written: it lies under {a_file}, which is a file" in err
    assert "Traceback" not in err
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "read_only"
        locked.mkdir(mode=0o500)
        code, _, err = _main(capsys, "infer", image, "--model", model, "--out", str(locked / "out"))
        assert code == 2 and "cannot be created or written" in err


def test_plot_of_a_folder_without_results_names_the_folder(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _main(capsys, "plot", str(empty), "--out", str(tmp_path / "p.png"))
    assert code == 1 and f"{empty}: no results.csv/results.h5 in this folder" in err
    assert "Traceback" not in err and "ImportError" not in err and not (tmp_path / "p.png").exists()


def test_recursive_reaches_sub_folders_and_globbed_folders_are_named(tmp_path, checkpoints, real_images, helpers,
                                                                       caplog):
    import shutil

    first, second = real_images(["p6m_0015", "p2m"])
    top = tmp_path / "beamtime"
    (top / "run1").mkdir(parents=True)
    (top / "run2").mkdir()
    shutil.copy(first, top / "run1" / first.name)
    shutil.copy(second, top / "run2" / second.name)
    common = ["--model", str(checkpoints["multilattice"]), "-q", "1", "--device", "cpu", "--format", "csv"]
    # a folder holding only sub-folders: nothing to score without --recursive, and the message says why
    with caplog.at_level("WARNING", logger="xrais.infer.work"), pytest.raises(ConfigError, match="no image files"):
        helpers.cli("infer", str(top), *common, "--out", str(tmp_path / "flat"))
    assert "it has sub-folders: give --recursive" in caplog.text
    result = helpers.cli("infer", str(top), *common, "--recursive", "--out", str(tmp_path / "deep"))
    assert result.exit_code == 0, result.output
    assert sorted(read_results(tmp_path / "deep")["file"]) == sorted(
        [str(top / "run1" / first.name), str(top / "run2" / second.name)])
    # a glob that matches folders: named in a warning without --recursive, expanded with it
    caplog.clear()
    with caplog.at_level("WARNING", logger="xrais.infer.work"):
        result = helpers.cli("infer", str(top / "run*"), str(top / "run1" / first.name), *common,
                             "--out", str(tmp_path / "glob_flat"))
    assert result.exit_code == 0, result.output
    assert "matches 2 folder(s), left out (give --recursive" in caplog.text and str(top / "run2") in caplog.text
    assert list(read_results(tmp_path / "glob_flat")["file"]) == [str(top / "run1" / first.name)]
    result = helpers.cli("infer", str(top / "run*"), *common, "--recursive", "--out", str(tmp_path / "glob_deep"))
    assert result.exit_code == 0, result.output
    assert len(read_results(tmp_path / "glob_deep")) == 2


def test_a_file_list_on_stdin(tmp_path, checkpoints, real_images, helpers):
    paths = real_images(["p6m_0015", "adsc"])
    result = helpers.cli("infer", "-", "--model", str(checkpoints["multilattice"]), "--out", str(tmp_path / "out"),
                         "-q", "1", "--device", "cpu", "--format", "csv", input="\n".join(map(str, paths)) + "\n")
    assert result.exit_code == 0, result.output
    rows = read_results(tmp_path / "out")
    assert sorted(rows["file"]) == sorted(map(str, paths)) and rows["error"].eq("").all()
    assert not (tmp_path / "out" / "results.h5").exists()


def test_geometry_flags_reach_the_rows(tmp_path, checkpoints, helpers):
    from fabio.edfimage import EdfImage

    edf = tmp_path / "frame_0001.edf"  # EDF headers carry no distance or wavelength
    EdfImage(data=np.random.default_rng(1).poisson(2.0, (500, 600)).astype(np.int32)).write(str(edf))
    args = ["infer", str(edf), "--model", str(checkpoints["resolution"]), "-q", "1", "--device", "cpu"]
    result = helpers.cli(*args, "--out", str(tmp_path / "a"))
    assert "1 (0 scored, 1 errors)" in result.output and "give --distance-mm and --wavelength-A" in result.output
    assert result.exit_code == 1  # a row of this run holds an error
    result = helpers.cli(*args, "--out", str(tmp_path / "b"), "--distance-mm", "180", "--wavelength-A", "1.1",
                         "--beam-center", "300", "250")
    assert "1 (1 scored, 0 errors)" in result.output and result.exit_code == 0, result.output
    row = read_results(tmp_path / "b").iloc[0]
    assert (row["distance_mm"], row["wavelength_A"], row["beam_center_fast_px"], row["beam_center_slow_px"]) == (
        180.0, 1.1, 300.0, 250.0)


def test_the_live_summary_renders():
    from rich.console import Console

    from xrais.infer.cli import _summary_table
    from xrais.infer.watch import RunStats

    stats = RunStats()
    stats.update([{"file": "/d/x_0001.cbf", "frame": 0, "error": "", "min_resolution_A": 2.345,
                   "mean_resolution_A": 2.5, "multilattice_probability": 0.125},
                  {"file": "/d/x_0002.cbf", "frame": 0, "error": "x_0002.cbf: truncated"}])
    console = Console(record=True, width=120)
    console.print(_summary_table(stats, "following /d"))
    text = console.export_text()
    for part in ("images scored", "x_0001.cbf", "2.35 Å min, 2.50 Å mean", "0.125", "x_0002.cbf: truncated"):
        assert part in text, part
    assert stats.scored == 1 and stats.errors == 1 and stats.rate_hz() > 0
