"""``torchrun --nproc_per_node 2`` on the CPU (gloo) gives the run of one process with the same global batch."""

from __future__ import annotations

import csv

import pytest
import torch

from train_helpers import SMALL_RUN, run_checked, torchrun_command


def _column(run, name):
    with (run / "metrics.csv").open() as fh:
        return [float(r[name]) for r in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, small_shard):
    out = tmp_path_factory.mktemp("ddp") / "run"
    proc = run_checked(torchrun_command(2, "train", str(small_shard), "--out", str(out), *SMALL_RUN))
    return out, proc


def test_two_processes_match_one(two_process_run, single_process_run, load_weights):
    out, proc = two_process_run
    assert "2 process(es)" in proc.stdout
    assert proc.stdout.count("epoch 1/2") == 1  # only rank 0 reports
    # Each process took 4 images per step; BatchNorm statistics and gradients are those of the global 8.
    for name in ("train_loss", "val_loss", "train_accuracy", "val_accuracy"):
        torch.testing.assert_close(_column(out, name), _column(single_process_run, name), rtol=1e-4, atol=1e-6)
    one, two = load_weights(single_process_run / "last.safetensors"), load_weights(out / "last.safetensors")
    assert one.keys() == two.keys()
    # Float rounding differs (sums in another order) and grows over the 6 steps to ~1e-5 of the
    # weights; a wrong batch statistic or batch split differs by the size of a step.
    for key in one:  # BatchNorm running statistics included
        torch.testing.assert_close(two[key], one[key], rtol=1e-3, atol=2e-4, msg=key)


def test_plain_batchnorm_under_torchrun_is_not_the_same_run(tmp_path, small_shard, single_process_run, load_weights):
    out = tmp_path / "run"
    run_checked(torchrun_command(2, "train", str(small_shard), "--out", str(out), *SMALL_RUN, "--epochs", "1",
                                 "--no-sync-batchnorm"))
    one = _column(single_process_run, "train_loss")[0]
    assert abs(_column(out, "train_loss")[0] - one) > 1e-4 * abs(one)  # the comparison above can fail
