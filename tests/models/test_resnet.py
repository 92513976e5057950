"""The ResNet models: Table 2 parameter counts, layout, the Figure 5B geometry transform, builders."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch

from xrais.conditioning import ConditioningConfig
from xrais.errors import ConfigError
from xrais.models import (
    ARCHITECTURES,
    TASKS,
    ModelConfig,
    XraisResNet,
    build_model,
    get_model,
    inv_resolution_to_radius,
    list_models,
    radius_to_inv_resolution,
)
from xrais.models import registry


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "arch, task, resnet_part, total",
    [("resnet50", "resolution", 25_550_760, 25_650_961), ("resnet34", "multilattice", 21_791_400, 21_891_601)],
)
def test_parameter_counts_match_table_2(arch, task, resnet_part, total):
    model = build_model(arch, task)
    assert n_params(model.backbone) == resnet_part
    assert n_params(model) == total == model.num_params()
    # FC1 maps 1000 → 100 with 10^5 weights, FC2 100 → 1 (xrais.txt §2.3.1)
    assert n_params(model.fc1) == 100_100 and n_params(model.fc2) == 101


def test_layout_first_conv_one_channel_and_dropout_by_task():
    res = build_model("resnet18", "resolution")
    conv = res.backbone.conv1
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.bias) == (
        1, 64, (7, 7), (2, 2), (3, 3), None)
    assert res.backbone.fc.out_features == 1000
    assert res.config.dropout == 0.0 and not any(isinstance(m, torch.nn.Dropout) for m in res.modules())
    ml = build_model("resnet18", "multilattice")
    assert ml.config.dropout == 0.5 and isinstance(ml.dropout, torch.nn.Dropout) and ml.dropout.p == 0.5
    assert res.config.label == "inv_resolution_per_A" and ml.config.label == "multilattice"
    assert build_model("resnet18", "multilattice", dropout=0.0).config.dropout == 0.0


def test_heads_add_one_linear_each_and_name_outputs(model_factory, quadrants):
    model = model_factory("multilattice", heads=("n_lattices", "mosaic_spread_deg"))
    assert n_params(model) == n_params(model_factory("multilattice")) + 2 * 101
    with torch.no_grad():
        out = model(torch.from_numpy(quadrants[0, :1, None]))
    assert list(out) == ["multilattice_logit", "n_lattices", "mosaic_spread_deg"]
    assert all(v.shape == (1,) for v in out.values())


def test_geometry_transform_against_hand_calculation():
    # y = 300 pooled px of p = 0.172 mm × 4 = 0.688 mm at D = 250 mm, λ = 0.9795 Å:
    # y·p/D = 0.8256, 2θ = atan(0.8256) = 39.5431°, sin θ = sin 19.7715° = 0.338271,
    # 1/d = 2 · 0.338271 / 0.9795 = 0.690700 Å⁻¹ (d = 1.44781 Å).
    geom = torch.tensor([[250.0, 0.688, 0.9795]], dtype=torch.float64)
    got = radius_to_inv_resolution(torch.tensor([300.0], dtype=torch.float64), geom)
    assert got.item() == pytest.approx(0.690700, abs=2e-6)
    assert 1.0 / got.item() == pytest.approx(1.44781, abs=2e-5)
    # float32 inputs (as in training) stay within float32 precision
    got32 = radius_to_inv_resolution(torch.tensor([300.0]), geom.float())
    assert got32.dtype == torch.float32 and got32.item() == pytest.approx(0.690700, rel=1e-6)


def test_spot_radius_gives_back_bragg_d():
    # A reflection of d = 2.0 Å at λ = 1 Å scatters at 2θ = 2 asin(λ / 2d) = 28.955°; on a detector
    # at D = 200 mm it lands at r = D tan 2θ = 110.70 mm = 160.9 pooled pixels of 0.688 mm.
    d, lam, D, p = 2.0, 1.0, 200.0, 0.688
    r_px = D * math.tan(2 * math.asin(lam / (2 * d))) / p
    geom = torch.tensor([[D, p, lam]], dtype=torch.float64)
    inv_d = radius_to_inv_resolution(torch.tensor([r_px], dtype=torch.float64), geom)
    assert 1.0 / inv_d.item() == pytest.approx(d, rel=1e-12)
    assert inv_resolution_to_radius(inv_d, geom).item() == pytest.approx(r_px, rel=1e-12)


def test_forward_resolution_applies_geometry_to_fc2_output(model_factory, quadrants):
    model = model_factory("resolution")
    x = torch.from_numpy(quadrants[:, 0, None])
    geom = torch.tensor([[200.0, 0.344, 1.0], [350.0, 0.688, 0.8]])
    with torch.no_grad():
        out = model(x, geom)
        y = model.fc2(model.features(x))[:, 0]
    assert list(out) == ["inv_resolution_per_A"]
    expected = 2 * torch.sin(0.5 * torch.atan(y * geom[:, 1] / geom[:, 0])) / geom[:, 2]
    torch.testing.assert_close(out["inv_resolution_per_A"], expected)


def test_resolution_needs_geometry(model_factory, quadrants):
    model = model_factory("resolution")
    with pytest.raises(ConfigError, match="geometry"):
        model(torch.from_numpy(quadrants[0, :1, None]))


def test_uint8_and_float_inputs_agree_and_normalisation_is_inside(model_factory, quadrants):
    model = model_factory("multilattice", input_mean=8.0, input_std=20.0)
    x = torch.from_numpy(quadrants[0, :1, None])
    with torch.no_grad():
        a = model(x)["multilattice_logit"]
        b = model(x.float())["multilattice_logit"]
        plain = model_factory("multilattice", input_mean=0.0, input_std=1.0)
        c = plain((x.float() - 8.0) / 20.0)["multilattice_logit"]
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)


def test_channels_last_and_autocast(model_factory, quadrants):
    model = model_factory("resolution")
    x = torch.from_numpy(quadrants[0, :1, None]).float()
    geom = torch.tensor([[200.0, 0.344, 1.0]])
    with torch.no_grad():
        ref = model(x, geom)["inv_resolution_per_A"]
        cl = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last), geom)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ac = model(x, geom)["inv_resolution_per_A"]
    torch.testing.assert_close(cl["inv_resolution_per_A"], ref, rtol=1e-4, atol=1e-5)
    assert ac.dtype == torch.float32 and torch.all(torch.isfinite(ac))
    assert torch.allclose(ac, ref, rtol=0.1, atol=0.05)


def test_unknown_arch_or_task_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="resnet18, resnet34, resnet50, resnet101, resnet152"):
        build_model("resnet20", "resolution")
    with pytest.raises(ConfigError, match="resolution, multilattice"):
        build_model("resnet18", "spots")
    with pytest.raises(ConfigError, match="input_std"):
        build_model("resnet18", "resolution", input_std=0.0)


def test_model_config_is_frozen_strict_and_json_round_trips():
    cfg = ModelConfig(arch="resnet34", task="multilattice", heads=("n_lattices",),
                      conditioning=ConditioningConfig(block=4, quadrants=1))
    assert cfg.dropout == 0.5 and cfg.label == "multilattice" and cfg.output_names == ("multilattice_logit",
                                                                                      "n_lattices")
    assert ModelConfig.model_validate_json(cfg.model_dump_json()) == cfg
    with pytest.raises(ValueError):
        ModelConfig(arch="resnet34", task="multilattice", colour="red")
    with pytest.raises(ValueError):
        ModelConfig(arch="resnet34", task="multilattice", heads=("a.b",))
    with pytest.raises(Exception):
        cfg.arch = "resnet50"


def test_registry_builders_are_keyword_only_and_build_what_they_say():
    names = list_models()
    assert names == sorted(f"{t}_{a}" for t in TASKS for a in ARCHITECTURES)
    for name in names:
        sig = inspect.signature(registry.get_model_builder(name))
        assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in sig.parameters.values())
        assert sig.parameters["weights"].default is None and sig.parameters["progress"].default is True
    model = get_model("multilattice_resnet18", heads=("n_lattices",))
    assert isinstance(model, XraisResNet)
    assert (model.config.arch, model.config.task, model.config.heads) == ("resnet18", "multilattice", ("n_lattices",))
    with pytest.raises(ConfigError, match="resolution_resnet50"):
        get_model("resolution_resnet51")
    with pytest.raises(ConfigError, match="already registered"):
        registry.register_model("resolution_resnet18")(lambda **kw: None)


def test_builder_with_weights_loads_and_refuses_contradicting_options(checkpoint, quadrants):
    from xrais.errors import CheckpointError
    from xrais.models import load_pretrained, multilattice_resnet18, resolution_resnet18

    model = resolution_resnet18(weights=checkpoint)
    ref = load_pretrained(checkpoint)
    x = torch.from_numpy(quadrants[0, :1, None])
    g = torch.tensor([[200.0, 0.344, 1.0]])
    with torch.no_grad():
        np.testing.assert_array_equal(model(x, g)["b_factor_A2"].numpy(), ref(x, g)["b_factor_A2"].numpy())
    with pytest.raises(ConfigError, match="heads"):
        resolution_resnet18(weights=checkpoint, heads=())
    with pytest.raises(CheckpointError, match="multilattice"):
        multilattice_resnet18(weights=checkpoint)
