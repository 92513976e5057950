"""Prediction on conditioned arrays and on real detector images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xrais.conditioning import condition, read_image
from xrais.errors import ConfigError
from xrais.models import Prediction

GEOMETRY = {"distance_mm": 200.0, "pixel_mm": 0.172, "downsample": 2, "wavelength_A": 1.0}


def direct(model, quadrants, geometry_rows=None):
    """Reference: the model called by hand on every quadrant."""
    n, q = quadrants.shape[:2]
    x = torch.from_numpy(quadrants.reshape(n * q, 1, 512, 512))
    g = None
    if geometry_rows is not None:
        rows = np.asarray(geometry_rows, dtype=np.float64)
        g = torch.tensor(np.repeat(np.stack([rows[:, 0], rows[:, 1] * rows[:, 2], rows[:, 3]], 1), q, 0),
                         dtype=torch.float32)
    with torch.no_grad():
        return {k: v.numpy().reshape(n, q) for k, v in model(x, g).items()}


def test_resolution_on_arrays_matches_the_model_quadrant_by_quadrant(model_factory, quadrants):
    model = model_factory("resolution", heads=("b_factor_A2",))
    pred = model.predict(quadrants, GEOMETRY, batch_size=3)
    assert isinstance(pred, Prediction) and len(pred) == 2 and pred.names == ["array[0]", "array[1]"]
    ref = direct(model, quadrants, [[200.0, 0.172, 2, 1.0]] * 2)
    # batches of 3 against one batch of 4: equal to float32 rounding
    np.testing.assert_allclose(pred.inv_resolution_per_A, ref["inv_resolution_per_A"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(pred.heads["b_factor_A2"], ref["b_factor_A2"], rtol=1e-5, atol=1e-7)
    assert pred.multilattice_probability is None and pred.inv_resolution_per_A.shape == (2, 2)


def test_summaries_and_rows_from_known_values():
    inv = np.array([[0.5, 0.25], [0.4, -0.1]])
    pred = Prediction(task="resolution", names=["a.cbf", "b.cbf"], inv_resolution_per_A=inv,
                      heads={"b_factor_A2": np.array([[10.0, 20.0], [30.0, 50.0]])})
    np.testing.assert_allclose(pred.resolution_A, [[2.0, 4.0], [2.5, np.inf]])
    np.testing.assert_allclose(pred.min_resolution_A, [2.0, 2.5])
    np.testing.assert_allclose(pred.mean_resolution_A, [3.0, np.inf])
    rows = pred.to_rows()
    assert rows[0] == {"image": "a.cbf", "q0_resolution_A": 2.0, "q1_resolution_A": 4.0, "min_resolution_A": 2.0,
                       "mean_resolution_A": 3.0, "q0_b_factor_A2": 10.0, "q1_b_factor_A2": 20.0,
                       "b_factor_A2": 15.0}


def test_multilattice_probability_is_the_sigmoid_of_the_logit(model_factory, quadrants):
    model = model_factory("multilattice")
    quadrants = quadrants[:, :1]
    pred = model.predict(quadrants)
    logit = direct(model, quadrants)["multilattice_logit"]
    np.testing.assert_allclose(pred.multilattice_probability, 1 / (1 + np.exp(-logit)), rtol=1e-6)
    assert pred.inv_resolution_per_A is None and pred.resolution_A is None and pred.min_resolution_A is None
    assert pred.to_rows()[1]["multilattice_probability"] == pytest.approx(pred.multilattice_probability[1].mean())
    assert model.training is False


def test_array_shapes_and_geometry_forms(model_factory, quadrants):
    model = model_factory("resolution")
    one = model.predict(quadrants[0, 0], (200.0, 0.172, 2, 1.0))
    assert one.inv_resolution_per_A.shape == (1, 1)
    both = model.predict(quadrants[0], np.array([200.0, 0.172, 2, 1.0]))
    assert both.inv_resolution_per_A.shape == (1, 2)
    np.testing.assert_allclose(one.inv_resolution_per_A[0, 0], both.inv_resolution_per_A[0, 0], rtol=1e-6)
    per_image = [[200.0, 0.172, 2, 1.0], [400.0, 0.172, 4, 0.8]]
    quadrants = quadrants[:, :1]
    mixed = model.predict(quadrants, {"distance_mm": [200.0, 400.0], "pixel_mm": 0.172, "downsample": [2, 4],
                                      "wavelength_A": [1.0, 0.8]})
    np.testing.assert_allclose(mixed.inv_resolution_per_A,
                               direct(model, quadrants, per_image)["inv_resolution_per_A"], rtol=1e-6)
    listed = model.predict([quadrants[0], quadrants[1]], per_image)
    np.testing.assert_allclose(listed.inv_resolution_per_A, mixed.inv_resolution_per_A, rtol=1e-6)


def test_bad_inputs_are_config_errors(model_factory, quadrants):
    model = model_factory("resolution")
    with pytest.raises(ConfigError, match="needs geometry"):
        model.predict(quadrants)
    with pytest.raises(ConfigError, match="missing wavelength_A"):
        model.predict(quadrants, {"distance_mm": 1.0, "pixel_mm": 0.1, "downsample": 2})
    with pytest.raises(ConfigError, match=r"got shape \(3,\)"):
        model.predict(quadrants, (1.0, 2.0, 3.0))
    with pytest.raises(ConfigError, match="> 0"):
        model.predict(quadrants, (200.0, 0.172, 0, 1.0))
    with pytest.raises(ConfigError, match=r"\(512, 512\).*\(4, 256, 256\)"):
        model.predict(np.zeros((4, 256, 256), np.uint8), GEOMETRY)
    with pytest.raises(ConfigError, match="batch_size"):
        model.predict(quadrants, GEOMETRY, batch_size=0)


def test_real_pilatus_image_conditioned_with_header_geometry(model_factory, shared_data):
    image = read_image(shared_data("real/pilatus6m/thau_3_2_0015.cbf"))
    model = model_factory("resolution", heads=("b_factor_A2",))
    pred = model.predict(image, batch_size=4)
    assert pred.names == ["thau_3_2_0015.cbf"] and pred.inv_resolution_per_A.shape == (1, 4)
    # header: distance 351.00 mm, 0.172 mm pixels, PILATUS 6M block 2, λ 0.96859 Å
    quads = condition(image, block=model.config.conditioning.block)
    by_arrays = model.predict(quads, (351.0, 0.172, 2, 0.96859))
    np.testing.assert_allclose(pred.inv_resolution_per_A, by_arrays.inv_resolution_per_A, rtol=1e-6)
    assert np.all(np.isfinite(pred.heads["b_factor_A2"]))
