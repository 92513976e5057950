"""The strip chart: data sets by folder and file stem, image numbers, panels, the PNG."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from xrais.errors import DatasetError
from xrais.infer.plot import add_image_numbers, dataset_key, plot_results


def test_data_sets_and_image_numbers():
    assert dataset_key("/d/thau/thau_3_2_0007.cbf.bz2") == "/d/thau/thau_3_2"
    assert dataset_key("/d/x/lyso_1_master.h5") == dataset_key("/d/x/lyso_1_data_000002.h5") == "/d/x/lyso_1"
    assert dataset_key("/d/s/image000044") == "/d/s/image"
    assert dataset_key("/d/a/frame.0012") == "/d/a/frame"
    assert dataset_key("/d/a/hit-20181213155134902.cbf") == "/d/a/hit"
    assert dataset_key("/d/b/img_0001.cbf") != dataset_key("/d/c/img_0001.cbf")  # another folder, another set
    df = pd.DataFrame({"file": ["/r/a_10.cbf", "/r/a_9.cbf", "/r/s.h5", "/r/s.h5", "/r/a_2.cbf"],
                       "frame": [0, 0, 1, 0, 0]})
    numbered = add_image_numbers(df)
    assert list(zip(numbered["file"], numbered["frame"], numbered["image_number"])) == [
        ("/r/a_2.cbf", 0, 1), ("/r/a_9.cbf", 0, 2), ("/r/a_10.cbf", 0, 3), ("/r/s.h5", 0, 1), ("/r/s.h5", 1, 2)]


def _rows(n_sets: int, n: int, quadrants: int = 4, multilattice: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for s in range(n_sets):
        for i in range(n):
            d = 2.0 + 0.5 * s + 0.3 * rng.random(quadrants)
            row = {"file": f"/beamline/set{s}/xtal{s}_{i + 1:04d}.cbf", "frame": 0, "error": ""}
            row.update({f"resolution_q{q}_A": d[q] for q in range(quadrants)})
            row.update(min_resolution_A=d.min(), mean_resolution_A=d.mean())
            if multilattice:
                p = rng.random(quadrants)
                row.update({f"multilattice_q{q}_probability": p[q] for q in range(quadrants)})
                row["multilattice_probability"] = p.mean()
            rows.append(row)
    rows[min(3, len(rows) - 1)].update(error="xtal0_0004.cbf: truncated", min_resolution_A=np.nan, mean_resolution_A=np.nan)
    return pd.DataFrame(rows)


def test_the_strip_chart_is_written_with_a_row_of_panels_per_data_set(tmp_path):
    drawn = plot_results(_rows(3, 20), tmp_path / "charts" / "strip.png")
    assert drawn["datasets"] == ["set0/xtal0", "set1/xtal1", "set2/xtal2"]
    assert drawn["panels"] == ["resolution", "quadrants", "multilattice"] and drawn["images"] == 60
    with Image.open(drawn["path"]) as im:
        width, height = im.size
        pixels = np.asarray(im.convert("RGB")).reshape(-1, 3).astype(int)
    assert width > height * 1.2  # three panels across, three data sets down
    red = (pixels[:, 0] > 180) & (pixels[:, 1] < 80) & (pixels[:, 2] < 80)
    assert red.sum() > 200  # the minimum-resolution markers are drawn
    one = plot_results(_rows(1, 10, quadrants=1, multilattice=False), tmp_path / "one.png", max_datasets=5)
    assert one["panels"] == ["resolution"] and one["datasets"] == ["set0/xtal0"]
    many = plot_results(_rows(4, 5), tmp_path / "many.png", max_datasets=2)
    assert len(many["datasets"]) == 2 and many["images"] == 10
    with pytest.raises(DatasetError, match="no resolution, spot or multi-lattice"):
        plot_results(pd.DataFrame({"file": ["/a_1.cbf"], "frame": [0], "error": [""]}), tmp_path / "x.png")
    with pytest.raises(DatasetError, match="no rows"):
        plot_results(_rows(1, 2).iloc[:0], tmp_path / "x.png")
