"""Training on a GPU: mixed precision with channels-last, and DistributedDataParallel over NCCL."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import torch

from xrais.io import list_shards, read_shard
from xrais.models import load_pretrained
from xrais.train import make_train_config, train


def _first_rows(folder, n=8):
    images, cols, _ = read_shard(list_shards(folder, "sim_r0000")[0])
    geometry = np.stack([cols["geometry/distance_mm"], cols["geometry/pixel_mm"], cols["geometry/downsample"],
                         cols["geometry/wavelength_A"]], axis=1)
    return images[:n], geometry[:n]


def test_amp_channels_last_training_on_cuda(tiny_training_set, tmp_path):
    config = make_train_config(data=(str(tiny_training_set),), out=str(tmp_path / "run"), task="resolution",
                               arch="resnet18", epochs=2, batch_size=8, workers=0, device="cuda", amp=True,
                               channels_last=True, seed=1)
    result = train(config)
    assert result.epochs_done == 2
    assert all(np.isfinite(row["train_loss"]) and np.isfinite(row["val_loss"]) for row in result.history)
    images, geometry = _first_rows(tiny_training_set)
    on_gpu = load_pretrained(tmp_path / "run", device="cuda").predict(images[:, None], geometry)
    on_cpu = load_pretrained(tmp_path / "run", device="cpu").predict(images[:, None], geometry)
    np.testing.assert_allclose(on_gpu.inv_resolution_per_A, on_cpu.inv_resolution_per_A, rtol=1e-3, atol=1e-4)


def test_torchrun_over_nccl_matches_one_gpu_process(tiny_training_set, tmp_path):
    nproc = min(2, torch.cuda.device_count())
    common = ["--data", str(tiny_training_set), "--task", "resolution", "--arch", "resnet18", "--epochs", "1",
              "--batch-size", "8", "--workers", "0", "--seed", "2", "--device", "cuda", "--no-amp",
              "--no-channels-last"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    runs = {}
    for name, launcher in (("one", [sys.executable, "-m", "xrais.cli", "train"]),
                           ("ddp", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                    f"--nproc_per_node={nproc}", "-m", "xrais.cli", "train"])):
        out = tmp_path / name
        proc = subprocess.run([*launcher, *common, "--out", str(out)], env=env, capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        runs[name] = load_pretrained(out / "last.safetensors")
    for (key, a), b in zip(runs["one"].state_dict().items(), runs["ddp"].state_dict().values()):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-3, msg=key)
