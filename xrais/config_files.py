"""Reading and writing the small files that configure and describe a run.

Every stage takes its configuration from a TOML, JSON (or YAML, with PyYAML) file
(:func:`read_config_file`), writes configurations back as TOML (:func:`toml_value`), and keeps
a run-description file in its output folder so that a resumed run with other settings is
refused rather than mixed in (:func:`claim_run_file`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from xrais.errors import ConfigError

__all__ = ["read_config_file", "toml_value", "claim_run_file"]


def read_config_file(path: str | Path, what: str = "configuration file") -> dict[str, Any]:
    """The mapping in a TOML, JSON or YAML file.

    Parameters
    ----------
    path : str or Path
        ``.toml``, ``.json``, or ``.yaml``/``.yml`` (needs PyYAML).
    what : str
        How error messages name the file ("pipeline config", …).

    Raises
    ------
    ConfigError
        The file is missing, has another suffix, or does not parse; the message names it.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such {what}")
    suffix = p.suffix.lower()
    try:
        text = p.read_text()
        if suffix == ".toml":
            import tomllib

            return tomllib.loads(text)
        if suffix == ".json":
            return json.loads(text)
        if suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise ConfigError(f"{p.name}: reading YAML needs PyYAML (pip install pyyaml); or use TOML") from None
            return yaml.safe_load(text) or {}
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{p.name}: cannot parse ({exc})") from None
    raise ConfigError(f"{p.name}: expected a .toml, .json or .yaml {what}")


def toml_value(v: Any) -> str:
    """One value as TOML: booleans, numbers, strings and (nested) lists of them.

    Examples
    --------
    >>> toml_value([1, 2.5, "a", True])
    '[1, 2.5, "a", true]'
    """
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def claim_run_file(path: Path, description: dict[str, Any], keys: Sequence[str], rank: int = 0,
                   comm: Any = None, *, what: str = "a run") -> None:
    """Write a run's description on its first start; on a resume, check that it matches.

    Rank 0 writes ``path`` (atomically) if it does not exist; every rank then waits for it
    (``comm.Barrier()``) and compares the values of ``keys``.

    Raises
    ------
    ConfigError
        Naming the folder and the keys that differ.
    """
    if rank == 0 and not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(description, indent=1))
        tmp.replace(path)
    if comm is not None:
        comm.Barrier()
    existing = json.loads(path.read_text())
    mismatch = [k for k in keys if existing.get(k) != description.get(k)]
    if mismatch:
        raise ConfigError(f"{path.parent}: holds {what} made with a different {' and '.join(mismatch)}; "
                          "resume with the same arguments or use a new --out folder")
