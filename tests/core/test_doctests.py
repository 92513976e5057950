"""The ``Examples`` of the models, training and inference stages, run under their package names.

These stages keep a registry (model builders) that a second import of the same file under
another name would duplicate, so their docstrings are run here through ``xrais.<stage>``
imports rather than by collecting the folders.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import xrais.infer
import xrais.models
import xrais.train

MODULES = sorted(
    info.name
    for package in (xrais.models, xrais.train, xrais.infer)
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
)


@pytest.mark.parametrize("name", MODULES)
def test_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"
