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
