"""Start-up: the ``xrais`` command imports no heavy library until a command needs it; compiled kernels
are cached on disk, and the cache follows every kernel source; every command's help reads as written."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "numba", "scipy", "pandas", "gemmi", "mpi4py", "matplotlib", "h5py", "fabio")


def _modules_after(code: str) -> set[str]:
    proc = subprocess.run([sys.executable, "-c", code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_the_command_imports_no_heavy_library():
    loaded = _modules_after("import xrais.cli")
    assert "xrais.train.cli" in loaded and "xrais.conditioning.cli" in loaded  # every command is registered …
    assert not [m for m in HEAVY if m in loaded]  # … without torch, numba & co.


def test_xrais_info_reads_an_image_without_torch_or_numba(shared_data):
    path = shared_data("real/pilatus6m/thau_3_2_0015.cbf")
    code = ("import sys\nfrom xrais.cli import main\n"
            f"try:\n    main(['info', {str(path)!r}])\nexcept SystemExit as exc:\n    assert not exc.code, exc.code")
    loaded = _modules_after(code)
    assert "torch" not in loaded and "numba" not in loaded


def test_packages_give_their_names_on_first_use():
    loaded = _modules_after("import xrais.models, xrais.conditioning, xrais.simulate, xrais.train, xrais.infer")
    assert "torch" not in loaded and "numba" not in loaded
    import types

    import xrais.conditioning
    import xrais.conditioning.condition  # a submodule named like an exported function …
    import xrais.simulate

    assert isinstance(xrais.conditioning.condition, types.FunctionType)  # … leaves the function in place
    assert xrais.conditioning.condition.__module__ == "xrais.conditioning.condition"
    from xrais.simulate import render

    assert callable(render) and not isinstance(render, types.ModuleType)
    assert "ConditioningConfig" in dir(xrais.conditioning)
    with pytest.raises(AttributeError, match="has no attribute 'not_a_name'"):
        xrais.conditioning.not_a_name  # noqa: B018


def test_every_name_a_package_exports_exists():
    import importlib

    for name in ("xrais.conditioning", "xrais.simulate", "xrais.models", "xrais.models.variational", "xrais.train",
                 "xrais.infer"):
        package = importlib.import_module(name)
        for item in package.__all__:
            assert getattr(package, item) is not None, f"{name}.{item}"


def test_kernels_are_cached_with_a_stamp_of_every_kernel_source(tmp_path, monkeypatch):
    import xrais.numba_cache as cache
    from xrais.conditioning.transform import _pooled_window_kernel
    from xrais.simulate.kernel_cpu import _render_rows

    for kernel in (_render_rows, _pooled_window_kernel):
        locator = kernel._cache._impl._locator
        assert type(locator).__name__.startswith("Xrais"), type(locator)
        assert locator.get_source_stamp() == ("xrais-kernels", cache.kernel_sources_stamp())
    # the stamp changes with any source in the kernel folders, not only the file defining a kernel
    folder = tmp_path / "kernels"
    folder.mkdir()
    (folder / "kernel.py").write_text("x = 1\n")
    (folder / "physics.py").write_text("y = 2\n")
    monkeypatch.setattr(cache, "_kernel_folders", lambda: (folder,))
    before = cache.kernel_sources_stamp()
    (folder / "physics.py").write_text("y = 3\n")
    assert cache.kernel_sources_stamp() != before
    assert not cache._is_kernel_file(__file__)


def test_no_kernel_is_left_uncached():
    import warnings

    from numba.core.errors import NumbaWarning

    import xrais.conditioning.transform
    import xrais.simulate.kernel_cpu
    import xrais.simulate.kernel_spots
    import xrais.simulate.noise_nanobragg
    import xrais.simulate.ran1
    import xrais.simulate.spot_reflections
    import xrais.simulate.spot_windows
    from numba.core.registry import CPUDispatcher

    modules = (xrais.conditioning.transform, xrais.simulate.kernel_cpu, xrais.simulate.kernel_spots,
               xrais.simulate.noise_nanobragg, xrais.simulate.ran1, xrais.simulate.spot_reflections,
               xrais.simulate.spot_windows)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NumbaWarning)
        dispatchers = [v for m in modules for v in vars(m).values() if isinstance(v, CPUDispatcher)]
    assert len(dispatchers) >= 10
    uncached = [d.py_func.__qualname__ for d in dispatchers if type(d._cache).__name__ == "NullCache"]
    assert not uncached


@pytest.mark.parametrize("argv", [[], ["train"], ["simulate"], ["infer"], ["models", "info"], ["condition"]])
def test_help_shows_defaults_and_no_placeholder_for_flags(argv):
    from typer.testing import CliRunner

    from xrais.cli import app

    result = CliRunner().invoke(app, [*argv, "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output and "<list[" not in result.output.split("Options")[-1]
    for line in result.output.splitlines():
        if "--help" in line:
            assert "Show this message and exit." in line and "<" not in line
    if argv == ["train"]:
        lines = {line.split()[1]: line for line in result.output.splitlines() if line.startswith("│ --")}
        assert "[default: 6e-3 resolution, 1.04e-3 multilattice]" in lines["--lr"]
        assert "[default: 0.1]" in lines["--val-fraction"]
        assert "[default: 0.9 resolution, 0.9983 multilattice]" in lines["--momentum"]
        assert "[default: 600.0]" in lines["--checkpoint-every-s"]
    if argv == []:
        assert "Exit status: 0 when every input succeeded" in result.output
