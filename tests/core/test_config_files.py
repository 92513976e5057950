"""Configuration files of every stage: an unknown key or preset is an error naming it and the nearest valid one."""

from __future__ import annotations

import json

import pytest

from xrais.config_files import config_error, read_config_file, unknown_name_message
from xrais.errors import ConfigError


def _write(path, text):
    path.write_text(text)
    return path


def test_unknown_name_message_suggests_the_nearest_or_lists_the_valid():
    assert unknown_name_message("key", "lrr", ["lr", "momentum"]) == "unknown key 'lrr'; did you mean 'lr'?"
    assert unknown_name_message("key", "qqq", ["lr", "momentum"], "[optimiser]") == (
        "unknown key 'qqq' in [optimiser]; expected one of 'lr', 'momentum'")


def test_config_error_prefers_the_unknown_key_and_names_its_table():
    from pydantic import ValidationError

    from xrais.simulate.config import SimulationConfig

    with pytest.raises(ValidationError) as info:  # two problems: a bad value and a typo'd key
        SimulationConfig.model_validate({"wavelength_A": -1, "background": {"scale_rang": [0.1, 0.2]}})
    message = str(config_error(info.value, SimulationConfig, "sim.toml"))
    assert message == "sim.toml: unknown key 'scale_rang' in [background]; did you mean 'scale_range'?"
    with pytest.raises(ValidationError) as info:
        SimulationConfig.model_validate({"wavelength_A": -1})
    assert str(config_error(info.value, SimulationConfig)) == (
        "wavelength_A: Input should be greater than 0.1 (got -1)")


def test_simulate_config_rejects_a_typo_in_a_preset_or_key(tmp_path):
    from xrais.simulate.config import load_config

    bad_preset = _write(tmp_path / "preset.toml", 'preset = "multilatice"\n')
    with pytest.raises(ConfigError,
                       match=r"^preset.toml: unknown preset 'multilatice'; did you mean 'multilattice'\?$"):
        load_config(bad_preset)
    assert load_config(_write(tmp_path / "good.toml", 'preset = "multilattice"\n')).task == "multilattice"
    with pytest.raises(ConfigError, match=r"^unknown preset 'resolutoin'; did you mean 'resolution'\?$"):
        load_config(preset="resolutoin")  # the --preset option
    top = _write(tmp_path / "top.toml", "mosaic_sprad_deg_range = [0.1, 0.2]\n")
    with pytest.raises(ConfigError, match=r"top.toml: unknown key 'mosaic_sprad_deg_range'; did you mean "
                                          r"'mosaic_spread_deg_range'\?"):
        load_config(top)
    nested = _write(tmp_path / "nested.json", json.dumps({"detector_effects": {"read_nois_adu": 2.0}}))
    with pytest.raises(ConfigError, match=r"nested.json: unknown key 'read_nois_adu' in \[detector_effects\]; "
                                          r"did you mean 'read_noise_adu'\?"):
        load_config(nested)


def test_shoebox_experiment_rejects_an_unknown_key(tmp_path):
    from xrais.simulate.shoebox_io import load_experiment

    path = _write(tmp_path / "exp.toml", "[shoeboxes]\nbackgrund_scale = 0.1\n")
    with pytest.raises(ConfigError, match=r"^exp.toml: unknown key 'backgrund_scale' in \[shoeboxes\]; "
                                          r"did you mean 'background_scale'\?$"):
        load_experiment(path)
    top = _write(tmp_path / "top.json", json.dumps({"distance_mn": 200}))
    with pytest.raises(ConfigError, match=r"top.json: unknown key 'distance_mn'; did you mean 'distance_mm'\?"):
        load_experiment(top)


def test_train_and_infer_configs_reject_an_unknown_field():
    from xrais.infer.config import InferConfig, WatchConfig, make_config
    from xrais.train.config import make_train_config

    with pytest.raises(ConfigError, match=r"^xrais train: unknown key 'weight_dacay'; did you mean 'weight_decay'\?$"):
        make_train_config(data=("x",), out="o", weight_dacay=0.1)
    with pytest.raises(ConfigError, match=r"^unknown key 'chunk_frame'; did you mean 'chunk_frames'\?$"):
        make_config(InferConfig, models=("m",), chunk_frame=4)
    with pytest.raises(ConfigError, match=r"^unknown key 'pol_s'; did you mean 'poll_s'\?$"):
        make_config(WatchConfig, folder="f", pol_s=1.0)


def test_pipeline_config_rejects_an_unknown_key_in_any_table(tmp_path):
    from xrais.infer.pipeline import load_pipeline_config

    path = _write(tmp_path / "pipe.toml", '[merge]\nmax_epoch = 3\n')
    with pytest.raises(ConfigError, match=r"^pipe.toml: unknown key 'max_epoch' in \[merge\]; "
                                          r"did you mean 'max_epochs'\?$"):
        load_pipeline_config(path)
    deeper = _write(tmp_path / "deep.toml", '[merge.scaler]\nlikelyhood = "normal"\n')
    with pytest.raises(ConfigError, match=r"deep.toml: unknown key 'likelyhood' in \[merge.scaler\]; "
                                          r"did you mean 'likelihood'\?"):
        load_pipeline_config(deeper)
    top = _write(tmp_path / "top.toml", 'checkpoint_every_image = 3\n')
    with pytest.raises(ConfigError, match=r"unknown key 'checkpoint_every_image'; did you mean "
                                          r"'checkpoint_every_images'\?"):
        load_pipeline_config(top)


def test_merge_config_file_rejects_an_unknown_key(tmp_path):
    from xrais.cli import main

    config = _write(tmp_path / "merge.toml", "anomalus = true\n")
    with pytest.raises(ConfigError, match=r"^merge.toml: unknown key 'anomalus'; did you mean 'anomalous'\?$"):
        main(["--debug", "merge", str(tmp_path / "none.mtz"), "--out", str(tmp_path / "m.mtz"),
              "--config", str(config)])


def test_read_config_file_names_the_file_it_cannot_parse(tmp_path):
    bad = _write(tmp_path / "bad.toml", "a = [1,\n")
    with pytest.raises(ConfigError, match="bad.toml: cannot parse"):
        read_config_file(bad)
    with pytest.raises(ConfigError, match="nothing.toml: no such configuration file"):
        read_config_file(tmp_path / "nothing.toml")
    try:
        import yaml  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError,
                           match=r"^c.yaml: reading YAML needs PyYAML \(pip install pyyaml\); or use TOML$"):
            read_config_file(_write(tmp_path / "c.yaml", "a: 1\n"))
