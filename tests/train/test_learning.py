"""A real learning signal, and checkpoints that stand on their own."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import torch

from xrais.train.data import resolve_data, scan_shards, split_by_image

from train_helpers import child_env


def _metrics(run):
    with (run / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_resnet18_beats_the_mean_on_held_out_images(learned_run, tiny_training_set):
    table = scan_shards(resolve_data([tiny_training_set]), "resolution")
    train, val = split_by_image(table, 0.2, seed=0)
    baseline = float(np.mean(np.abs(table.target[val] - table.target[train].mean())))
    rows = _metrics(learned_run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    final = float(rows[-1]["val_loss"])  # MAE of 1/d on the 6 held-out images (24 quadrants), Å⁻¹
    assert final < 0.8 * baseline, f"held-out MAE {final:.4f} Å⁻¹, predict-the-mean {baseline:.4f} Å⁻¹"
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert (learned_run / "training.png").stat().st_size > 10_000


def test_best_checkpoint_loads_in_a_fresh_process_from_the_file_alone(learned_run, small_shard, tmp_path):
    from xrais.models import load_pretrained

    alone = tmp_path / "elsewhere" / "model.safetensors"
    alone.parent.mkdir()
    shutil.copy(learned_run / "best.safetensors", alone)
    script = (
        "import json, sys, torch\n"
        "from xrais.io import read_shard\n"
        "from xrais.models import load_pretrained\n"
        "m = load_pretrained(sys.argv[1])\n"
        "images, cols, _ = read_shard(sys.argv[2])\n"
        "g = torch.tensor([[cols['geometry/distance_mm'][i],"
        " cols['geometry/pixel_mm'][i] * cols['geometry/downsample'][i], cols['geometry/wavelength_A'][i]]"
        " for i in range(4)], dtype=torch.float32)\n"
        "with torch.no_grad():\n"
        "    out = m(torch.from_numpy(images[:4, None]).float(), g)['inv_resolution_per_A']\n"
        "print(json.dumps({'pred': out.tolist(), 'arch': m.config.arch, 'epoch': m.provenance['epoch'],"
        " 'mean': m.config.input_mean}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(alone), str(small_shard)], env=child_env(),
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    here = load_pretrained(learned_run)  # the folder resolves to best.safetensors
    from xrais.io import read_shard

    images, cols, _ = read_shard(small_shard)
    g = torch.tensor([[cols["geometry/distance_mm"][i], cols["geometry/pixel_mm"][i] * cols["geometry/downsample"][i],
                       cols["geometry/wavelength_A"][i]] for i in range(4)], dtype=torch.float32)
    with torch.no_grad():
        expected = here(torch.from_numpy(images[:4, None]).float(), g)["inv_resolution_per_A"]
    np.testing.assert_allclose(got["pred"], expected.numpy(), rtol=1e-5)
    best_epoch = min(_metrics(learned_run), key=lambda r: float(r["val_loss"]))["epoch"]
    assert got["arch"] == "resnet18" and got["epoch"] == int(best_epoch)
    assert got["mean"] == here.config.input_mean and got["mean"] > 0  # input statistics travel in the file
    assert here.provenance["train_config"]["lr"] == 6e-3 and here.provenance["train_config"]["momentum"] == 0.9
