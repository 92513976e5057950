"""Training on images simulated as the run goes (``xrais train --simulate``): items fixed by (seed, index)
whoever makes them, disjoint epochs, a failing image replaced, resume at the next unseen image, clear errors.

The simulation is tiny (a PILATUS 2M, one mosaic domain, a bank of 2 small random-atom crystals):
about 0.6 s per image on one core.
"""

from __future__ import annotations

import csv
import functools
import logging
import threading

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from xrais.cli import app
from xrais.errors import ConfigError, DatasetError
from xrais.simulate.config import SimulationConfig
from xrais.train.config import TrainConfig, config_differences, make_train_config
from xrais.train.data import GlobalBatchSampler, compute_input_stats
from xrais.train.ddp import DistInfo
from xrais.train.loop import _simulating_worker
from xrais.train.sim_data import (InMemoryDataset, SimulatedBatchSampler, SimulatedDataset, SimulatedTrainingData,
                                  collate_quadrants, load_simulation_config, substitute_index,
                                  worker_start_method)
from xrais.train.state import load_training_state, state_path

runner = CliRunner()

TINY = dict(detector_choices=("pilatus2m",), distance_mm_range=(180.0, 220.0), cell_volume_A3_range=(6e4, 1.5e5),
            mosaic_domains=1, structure_bank_size=2, max_structure_factor_cells=20_000,
            space_group_choices=("P 21 21 21",), render_method="spots")


@pytest.fixture(scope="module")
def tiny_config() -> SimulationConfig:
    return SimulationConfig(**TINY)


@pytest.fixture
def sim_file(tmp_path, tiny_config):
    path = tmp_path / "tiny.toml"
    path.write_text(tiny_config.to_toml())
    return path


def _assert_same_items(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_an_item_is_its_image_whoever_makes_it(tiny_config):
    from xrais.simulate.dataset import make_example
    from xrais.simulate.sampler import sample_image

    ds = SimulatedDataset(tiny_config, 3, "resolution", heads=("b_factor_A2",))
    one_thread = functools.partial(_simulating_worker, numba_threads=1)  # as the Trainer's workers start

    def load(workers):  # one image per batch, so that each worker makes one
        loader = torch.utils.data.DataLoader(ds, batch_size=1, sampler=[0, 1], collate_fn=collate_quadrants,
                                             num_workers=workers, worker_init_fn=one_thread if workers else None,
                                             multiprocessing_context=worker_start_method() if workers else None)
        return collate_quadrants(list(loader))

    # two worker processes with one Numba thread each (forked, or spawned when this process has already run
    # Numba's threads), then this process with its own threads: the same bits
    in_workers, here = load(2), load(0)
    _assert_same_items(in_workers, here)
    assert here["index"].tolist() == [0, 1] and here["image"].shape == (2, 1, 512, 512)
    item = ds[1]
    _assert_same_items(item, {k: v[1:] for k, v in here.items()})  # made again: bit-identical
    _, quads, columns = make_example(tiny_config, sample_image(tiny_config, 3, 1), backend="numba")
    assert item["image"].dtype == torch.uint8
    np.testing.assert_array_equal(item["image"][:, 0].numpy(), quads)  # item i is image i of the set
    assert item["target"].tolist() == pytest.approx([1 / columns["labels/resolution_A"][0]])
    assert item["heads"][0, 0].item() == pytest.approx(columns["labels/b_factor_A2"][0])
    expected_geometry = [columns["geometry/distance_mm"][0], columns["geometry/pixel_mm"][0] * 2, 0.9795]
    assert item["geometry"][0].tolist() == pytest.approx(expected_geometry)
    assert item["source_index"].tolist() == [1] and item["replaced"].tolist() == [0]
    # the input statistics read simulated rows as they read shard rows
    memory = InMemoryDataset.from_batches([here], ds.heads)
    mean, std = compute_input_stats(memory, np.arange(2), 2, seed=0)
    pixels = here["image"].double()
    assert mean == pytest.approx(float(pixels.mean())) and std == pytest.approx(float(pixels.std(unbiased=False)))
    assert memory.table.image_id.tolist() == [0, 1] and memory.table.target.tolist() == here["target"].tolist()


def test_epochs_take_disjoint_image_ranges_shared_as_the_shard_batches():
    one = SimulatedBatchSampler(10, 4)
    assert one.n_batches == 2 and len(one) == 8
    seen = []
    for epoch in range(3):
        one.set_epoch(epoch)
        assert one.epoch_range(epoch) == (10 * epoch, 10 * epoch + 8)  # ⌊10/4⌋ whole global batches
        seen.append(list(one))
    assert seen == [list(range(0, 8)), list(range(10, 18)), list(range(20, 28))]
    assert one.images_seen(2, 1) == 20
    ranks = [SimulatedBatchSampler(10, 4, num_replicas=2, rank=r) for r in (0, 1)]
    for sampler in ranks:
        sampler.set_epoch(1)
    parts = [list(s) for s in ranks]
    assert sorted(parts[0] + parts[1]) == seen[1] and not set(parts[0]) & set(parts[1])
    for k in range(2):  # the k-th batches of the two ranks are global batch k, split as the shard path splits
        assert sorted(parts[0][2 * k:2 * k + 2] + parts[1][2 * k:2 * k + 2]) == seen[1][4 * k:4 * k + 4]
    assert [[v - 10 for v in p] for p in parts] == [[0, 2, 4, 6], [1, 3, 5, 7]]  # positions r, r + W, …
    shard = GlobalBatchSampler(list(range(10, 20)), 4, num_replicas=2, rank=1)
    shard.set_epoch(1)
    assert len(list(shard)) == len(parts[1])  # the shard path gives each rank as many rows per epoch
    ranks[1].start_batch = 1
    assert list(ranks[1]) == [15, 17]
    with pytest.raises(ConfigError, match="--images-per-epoch 3: fewer than one global batch of 4"):
        SimulatedBatchSampler(3, 4)


def test_a_failing_image_is_replaced_by_its_substitute_with_a_warning(tiny_config, monkeypatch, caplog):
    import xrais.simulate.dataset as sim_dataset

    real = sim_dataset.make_example

    def failing(config, params, **kw):
        if params.index == 1:
            raise ValueError("no room for the crystal")
        return real(config, params, **kw)

    monkeypatch.setattr(sim_dataset, "make_example", failing)
    ds = SimulatedDataset(tiny_config, 3, "resolution", source="tiny.toml")
    with caplog.at_level(logging.WARNING, logger="xrais.train.sim_data"):
        item = ds[1]
    assert item["index"].tolist() == [1] and item["source_index"].tolist() == [substitute_index(1, 0)]
    assert item["replaced"].tolist() == [1.0]
    assert "tiny.toml: simulated image 1 (seed 3) skipped (ValueError: no room for the crystal)" in caplog.text
    monkeypatch.setattr(sim_dataset, "make_example", lambda *a, **k: (_ for _ in ()).throw(ValueError("never")))
    with pytest.raises(DatasetError, match=r"tiny.toml: simulated image 4 \(seed 3\) and its 8 substitutes failed; "
                                           "last: ValueError: never"):
        ds[4]


def _train_config(sim_file, out, **changes):
    args = dict(simulate=str(sim_file), out=str(out), arch="resnet18", epochs=1, batch_size=1, images_per_epoch=2,
                sim_val_images=1, stats_images=2, workers=0, seed=3, device="cpu")
    args.update(changes)
    return make_train_config(**args)


def test_training_on_simulated_images_resumes_at_the_next_unseen_image(sim_file, tmp_path, monkeypatch):
    from xrais.models import load_checkpoint_meta
    from xrais.train.loop import train

    out = tmp_path / "run"
    taken: list[list[int]] = []
    real_iter = SimulatedBatchSampler.__iter__

    def recording_iter(self):
        taken.append(list(real_iter(self)))
        return iter(taken[-1])

    monkeypatch.setattr(SimulatedBatchSampler, "__iter__", recording_iter)
    stop = threading.Event()
    stop.set()  # stop after the first batch: the state is saved within epoch 1
    first = train(_train_config(sim_file, out), stop=stop)
    assert first.stopped_at == (1, 1) and first.images_seen == 1
    state = load_training_state(state_path(out))
    assert (state["epoch"], state["batch"], state["images_seen"]) == (0, 1, 1)
    assert state["data"]["simulation"]["seed"] == 3 and state["data"]["simulation"]["val_seed"] == 4
    assert state["data"]["simulation"]["config"]["mosaic_domains"] == 1
    args = ["train", "--simulate", str(sim_file), "--out", str(out), "--arch", "resnet18", "--epochs", "1",
            "--batch-size", "1", "--images-per-epoch", "2", "--sim-val-images", "1", "--stats-images", "2",
            "--workers", "0", "--seed", "3", "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "resumed in epoch 1 after batch 1" in result.output
    assert "simulated images 0–1" in result.output and "2 simulated training images seen" in result.output
    assert taken == [[0, 1], [1]]  # the first run trained on image 0 (then stopped), the second on image 1
    with (out / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["epoch"], r["image_start"], r["image_stop"], r["images_seen"], r["images_replaced"]) for r in rows] \
        == [("1", "0", "2", "2", "0")]
    assert rows[0]["val_loss"] != ""
    assert load_training_state(state_path(out))["images_seen"] == 2
    meta = load_checkpoint_meta(out / "last.safetensors")
    assert meta.provenance["simulation"]["seed"] == 3 and meta.provenance["train_config"]["images_per_epoch"] == 2
    assert meta.provenance["split"] == {"train_rows": 2, "val_rows": 1, "train_images": 2, "val_images": 1}
    assert meta.provenance["training_geometry"] == {"detectors": ["pilatus2m"], "pixel_mm": [0.172],
                                                    "distance_mm": [180.0, 220.0], "wavelength_A": [0.9795, 0.9795],
                                                    "untilted": True}
    # another simulation is refused, naming the difference
    with pytest.raises(ConfigError, match=r"differs from the saved run in sim_seed: 3 → 5"):
        train(_train_config(sim_file, out, sim_seed=5))
    sim_file.write_text(SimulationConfig(**{**TINY, "mosaic_domains": 2}).to_toml())
    with pytest.raises(ConfigError, match=r"simulated its images with another configuration than .*tiny.toml gives: "
                                          r"mosaic_domains: 1 → 2"):
        train(_train_config(sim_file, out))


def test_a_bad_simulation_config_is_one_line_naming_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("mosaic_domans = 2\n")
    base = ["train", "--out", str(tmp_path / "run"), "--arch", "resnet18", "--batch-size", "2", "--workers", "0"]
    for simulate, text in [(str(bad), "bad.toml: unknown key 'mosaic_domans'; did you mean 'mosaic_domains'?"),
                           ("nonesuch", "--simulate nonesuch: no such simulation config file, and not a preset")]:
        result = runner.invoke(app, base + ["--simulate", simulate])
        assert result.exit_code == 1
        assert isinstance(result.exception, ConfigError) and text in str(result.exception)
        assert "\n" not in str(result.exception)
    assert not (tmp_path / "run" / "state").exists()
    result = runner.invoke(app, base + ["--simulate", "resolution", "--data", str(tmp_path)])
    assert result.exit_code == 1 and "not both" in str(result.exception)


def test_simulation_settings_in_the_config():
    cfg = make_train_config(simulate="resolution", out="o", seed=7)
    assert (cfg.sim_seed, cfg.images_per_epoch, cfg.sim_val_images, cfg.data) == (7, 1024, 32, ())
    assert TrainConfig.model_validate_json(cfg.model_dump_json()) == cfg
    other = make_train_config(simulate="resolution", out="o", seed=7, sim_seed=8, images_per_epoch=64)
    assert config_differences(cfg, other) == ["sim_seed: 7 → 8", "images_per_epoch: 1024 → 64"]
    shards = make_train_config(data=("set/",), out="o")
    assert shards.simulate is None and shards.sim_seed is None and shards.images_per_epoch is None
    old = shards.model_dump(mode="json")
    for key in ("simulate", "sim_seed", "images_per_epoch", "sim_val_images"):
        del old[key]  # a config saved before these fields existed
    assert TrainConfig.model_validate(old) == shards
    assert config_differences(shards, make_train_config(simulate="resolution", out="o"))[0] == \
        "simulate: None → 'resolution'"
    with pytest.raises(ConfigError, match="sim_seed: only with simulate"):
        make_train_config(data=("set/",), out="o", sim_seed=1)
    with pytest.raises(ConfigError, match="give the data .* or simulate"):
        make_train_config(out="o")
    assert load_simulation_config("multilattice").task == "multilattice"
    with pytest.raises(ConfigError, match="--simulate multilattice: simulates a multilattice set, the run is "
                                          "--task resolution"):
        SimulatedTrainingData(make_train_config(simulate="multilattice", out="o"),
                              DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu")))


@pytest.mark.slow  # two torchrun processes and a reference run: minutes on two cores
def test_two_processes_train_on_the_images_of_one(sim_file, tmp_path, load_weights):
    from train_helpers import run_checked, torchrun_command, xrais_command

    args = ["--simulate", str(sim_file), "--arch", "resnet18", "--epochs", "2", "--batch-size", "2",
            "--images-per-epoch", "2", "--sim-val-images", "2", "--stats-images", "2", "--workers", "1",
            "--seed", "3", "--device", "cpu"]
    one, two = tmp_path / "one", tmp_path / "two"
    run_checked(xrais_command("train", "--out", str(one), *args))
    proc = run_checked(torchrun_command(2, "train", "--out", str(two), *args))
    assert "2 process(es)" in proc.stdout
    rows = {}
    for run in (one, two):
        with (run / "metrics.csv").open() as fh:
            rows[run] = list(csv.DictReader(fh))
    assert [(r["image_start"], r["image_stop"], r["images_seen"]) for r in rows[two]] == [("0", "2", "2"),
                                                                                         ("2", "4", "4")]
    for name in ("train_loss", "val_loss"):
        torch.testing.assert_close([float(r[name]) for r in rows[two]], [float(r[name]) for r in rows[one]],
                                   rtol=1e-4, atol=1e-6)
    a, b = load_weights(one / "last.safetensors"), load_weights(two / "last.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=2e-4, msg=key)
