"""Fixtures of the training tests: runs of ``xrais train`` on the tiny simulated set.

Training runs that other tests reuse are made once per session. Child processes get one
torch thread each (``OMP_NUM_THREADS=1``) so that two of them fit the two cores of a small
machine, and the same environment, so that their arithmetic is the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
from train_helpers import SMALL_RUN, run_checked, xrais_command


_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep the training tests on one pytest-xdist worker (``--dist loadgroup``), so that the
    session's training set and reference runs are made once, not once per worker."""
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.xdist_group("train"))


@pytest.fixture(scope="session")
def small_shard(tiny_training_set: Path) -> Path:
    """The first shard of the tiny set: 8 images, 32 quadrants."""
    return sorted(tiny_training_set.glob("sim_r0000_*.h5"))[0]


@pytest.fixture(scope="session")
def single_process_run(tmp_path_factory: pytest.TempPathFactory, small_shard: Path) -> Path:
    """``xrais train`` on one shard, one process, run through: the reference of the DDP and resume tests."""
    out = tmp_path_factory.mktemp("single") / "run"
    run_checked(xrais_command("train", str(small_shard), "--out", str(out), *SMALL_RUN))
    return out


@pytest.fixture(scope="session")
def learned_run(tmp_path_factory: pytest.TempPathFactory, tiny_training_set: Path) -> Path:
    """resnet18 trained for 3 epochs on the tiny set (26 images; 6 held out), SGD at Table 2's values.

    The cosine schedule lets the last steps settle: with a constant rate the MAE's constant-size
    gradient keeps the output offset moving by a few hundredths of Å⁻¹ from step to step.
    """
    from xrais.train.config import make_train_config
    from xrais.train.loop import train

    out = tmp_path_factory.mktemp("learned") / "run"
    train(make_train_config(data=(str(tiny_training_set),), out=str(out), arch="resnet18", epochs=3, batch_size=8,
                            val_fraction=0.2, lr_schedule="cosine", workers=1, seed=0, device="cpu"))
    return out


@pytest.fixture
def load_weights() -> Callable[[Path], dict]:
    """The tensors of a safetensors checkpoint."""
    from safetensors.torch import load_file

    return lambda path: load_file(str(path))
