"""Scoring work items: the same numbers as the model's own predict, error rows for bad files."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xrais.conditioning import condition, read_image
from xrais.infer.config import InferConfig
from xrais.infer.scoring import Scorer, describe_models
from xrais.infer.work import FrameRef, WorkItem
from xrais.models import load_pretrained


@pytest.fixture(scope="module")
def scorer(checkpoints):
    config = InferConfig(models=(str(checkpoints["resolution"]), str(checkpoints["multilattice"])), quadrants=4,
                         batch_size=8, device="cpu")
    return Scorer(config, describe_models(config.models), device="cpu", rank=3)


def test_rows_agree_with_the_models_predict(scorer, checkpoints, real_images):
    paths = real_images(["p6m_0001", "stream"])
    rows = scorer.score_item(WorkItem(tuple(FrameRef(str(p)) for p in paths)))
    assert [r["error"] for r in rows] == ["", ""] and [r["rank"] for r in rows] == [3, 3]
    images = [read_image(p) for p in paths]
    geometry = [(im.detector.distance_mm, im.detector.pixel_size_mm[0], im.downsample_block, im.beam.wavelength_A)
                for im in images]
    quads = np.stack([condition(im) for im in images])
    res = load_pretrained(checkpoints["resolution"]).predict(quads, geometry=geometry)
    ml = load_pretrained(checkpoints["multilattice"]).predict(quads)
    for i, row in enumerate(rows):
        got = [row[f"resolution_q{q}_A"] for q in range(4)]
        np.testing.assert_allclose(got, res.resolution_A[i], rtol=1e-4)
        assert row["min_resolution_A"] == pytest.approx(min(got)) and row["mean_resolution_A"] == pytest.approx(np.mean(got))
        np.testing.assert_allclose([row[f"multilattice_q{q}_probability"] for q in range(4)],
                                   ml.multilattice_probability[i], rtol=1e-4)
        assert row["multilattice_probability"] == pytest.approx(ml.multilattice_probability[i].mean(), rel=1e-4)
    first = rows[0]
    assert (first["detector"], first["block"], first["distance_mm"], first["wavelength_A"]) == ("pilatus6m", 2, 351.0, 0.96859)
    assert (first["beam_center_fast_px"], first["beam_center_slow_px"]) == (1261.61, 1306.96)
    assert rows[1]["block"] == 4 and rows[1]["n_frames"] == 1 and first["models"] == "resolution;multilattice"
    assert all(r[k] > 0 for r in rows for k in ("read_s", "spots_s", "condition_s", "score_s"))


def test_bad_files_become_error_rows_and_the_rest_is_scored(scorer, real_images, tmp_path, helpers):
    good = real_images(["p6m_0015"])[0]
    truncated = tmp_path / "cut_0001.cbf"
    truncated.write_bytes(good.read_bytes()[:2_000_000])
    garbage = tmp_path / "garbage.cbf"
    garbage.write_bytes(b"\x00\x01 nothing an image reader knows " * 100)
    cut_h5 = tmp_path / "cut.h5"
    helpers.write_nxmx(tmp_path / "whole.h5", helpers.make_frames(2))
    cut_h5.write_bytes((tmp_path / "whole.h5").read_bytes()[:3000])
    series = helpers.write_nxmx(tmp_path / "series.h5", helpers.make_frames(3))
    refs = [FrameRef(str(truncated)), FrameRef(str(good)), FrameRef(str(garbage)), FrameRef(str(tmp_path / "gone.cbf")),
            FrameRef(str(cut_h5), 0), FrameRef(str(cut_h5), 1), FrameRef(str(series), 2), FrameRef(str(series), 7)]
    rows = scorer.score_item(WorkItem(tuple(refs)))
    by = {(r["file"].rsplit("/", 1)[1], r["frame"]): r for r in rows}
    assert len(rows) == 8 and len(by) == 8
    assert by[(good.name, 0)]["error"] == ""
    assert by[("series.h5", 2)]["error"] == "" and by[("series.h5", 2)]["n_frames"] == 3
    assert "cut_0001.cbf" in by[("cut_0001.cbf", 0)]["error"]
    assert "not a detector image format" in by[("garbage.cbf", -1)]["error"]
    assert "no such file" in by[("gone.cbf", -1)]["error"]
    assert "cut.h5" in by[("cut.h5", 0)]["error"] and by[("cut.h5", 1)]["error"] == by[("cut.h5", 0)]["error"]
    assert "series.h5" in by[("series.h5", 7)]["error"] and "7" in by[("series.h5", 7)]["error"]
    for key, row in by.items():
        if row["error"]:
            assert math.isnan(row["min_resolution_A"]) and "\n" not in row["error"], key
        else:
            assert math.isfinite(row["multilattice_probability"]), key


def test_bf16_is_close_to_fp32(checkpoints, real_images):
    path = real_images(["p6m_0003"])[0]
    out = {}
    for precision in ("fp32", "bf16"):
        cfg = InferConfig(models=(str(checkpoints["multilattice"]),), quadrants=4, device="cpu", precision=precision)
        out[precision] = Scorer(cfg, describe_models(cfg.models)).score_item(WorkItem((FrameRef(str(path)),)))[0]
    for q in range(4):
        key = f"multilattice_q{q}_probability"
        assert out["bf16"][key] == pytest.approx(out["fp32"][key], abs=0.02)
