"""Shared fixtures: the real test files in ``../shared/data`` beside the checkout.

``shared_data("real/pilatus6m/thau_3_2_0001.cbf")`` returns the path, or skips the test
naming the missing file; with ``XRAIS_REQUIRE_DATA=1`` (set in CI) a missing file fails.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest

DATA_ROOT = Path(os.environ.get("XRAIS_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def _resolve(relpath: str) -> Path:
    path = DATA_ROOT / relpath
    if not path.exists():
        message = f"shared test file missing: {path}"
        if os.environ.get("XRAIS_REQUIRE_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Callable[[str], Path]:
    """Resolve a path under ``../shared/data`` (skip, or fail in CI, when missing)."""
    return _resolve


@pytest.fixture(scope="session")
def tiny_training_set(tmp_path_factory: pytest.TempPathFactory, shared_data: Callable[[str], Path]) -> Path:
    """A tiny simulated resolution training set, made once per session; the folder (with manifest.json).

    32 images × 4 quadrants in 4 shards of 8 images: the default XRAIS resolution set on a
    PILATUS 6M (200–300 mm, d drawn in 1.2–5 Å) made cheap: one lysozyme structure instead of
    random-atom crystals, one mosaic domain per lattice, spot-window rendering and a weak
    background (scale 0.0125–0.1), so the resolution limit is what varies most between
    images. About 1 s per image on two CPU cores.
    """
    import shutil

    from xrais.simulate.config import BackgroundConfig, SimulationConfig
    from xrais.simulate.dataset import simulate_dataset

    root = tmp_path_factory.mktemp("tiny_training_set")
    structures = root / "structures"
    structures.mkdir()
    shutil.copy(shared_data("structures/RTSAD_HEWL_refine_25.pdb"), structures)
    config = SimulationConfig(
        detector_choices=("pilatus6m",), structures_dir=str(structures), mosaic_domains=1, render_method="spots",
        quadrants=4, shard_size=8, background=BackgroundConfig(scale_range=(0.0125, 0.1)),
    )
    simulate_dataset(config, 32, root / "set", seed=7, backend="numba")
    return root / "set"
