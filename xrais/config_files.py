"""Reading and writing the small files that configure and describe a run.

Every stage takes its configuration from a TOML, JSON (or YAML, with PyYAML) file
(:func:`read_config_file`), writes configurations back as TOML (:func:`toml_value`), and keeps
a run-description file in its output folder so that a resumed run with other settings is
refused rather than mixed in (:func:`claim_run_file`).

Every loader turns pydantic's validation errors into one line with :func:`config_error`: an
unknown key is named with its table and the nearest valid key
(``unknown key 'mosaic_sprad_deg' in [crystal]; did you mean 'mosaic_spread_deg'?``).
"""

from __future__ import annotations

import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Sequence

from xrais.errors import ConfigError

__all__ = ["read_config_file", "toml_value", "claim_run_file", "config_error", "unknown_name_message"]


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
    except ConfigError:
        raise
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


def unknown_name_message(kind: str, name: str, valid: Iterable[str], where: str = "") -> str:
    """``"unknown KIND 'NAME' [in WHERE]; did you mean 'X'?"``, or the valid names when none is near.

    Examples
    --------
    >>> unknown_name_message("key", "mosaic_sprad_deg", ["mosaic_spread_deg", "mosaic_domains"], "[crystal]")
    "unknown key 'mosaic_sprad_deg' in [crystal]; did you mean 'mosaic_spread_deg'?"
    >>> unknown_name_message("preset", "zzz", ["resolution", "multilattice"])
    "unknown preset 'zzz'; expected one of 'resolution', 'multilattice'"
    """
    valid = list(valid)
    text = f"unknown {kind} {name!r}" + (f" in {where}" if where else "")
    near = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.6)
    if near:
        return f"{text}; did you mean {near[0]!r}?"
    shown = ", ".join(repr(v) for v in valid[:12]) + (", …" if len(valid) > 12 else "")
    return f"{text}; expected one of {shown}" if valid else text


def _model_classes(annotation: Any) -> list[type]:
    """The pydantic model classes an annotation may hold (through Optional, unions, lists, dicts)."""
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type] = []
    origin = typing.get_origin(annotation)
    if origin is not None or isinstance(annotation, types.UnionType):
        for arg in typing.get_args(annotation):
            found += _model_classes(arg)
    return found


def _valid_keys(model: type, path: Sequence[Any]) -> list[str] | None:
    """The field names (and aliases) of the table at ``path`` inside ``model``; None when unknown."""
    classes = [model]
    for part in path:
        if isinstance(part, int):
            continue  # an item of a list or tuple: the same model
        nxt: list[type] = []
        for cls in classes:
            field = getattr(cls, "model_fields", {}).get(part)
            if field is not None:
                nxt += _model_classes(field.annotation)
        if not nxt:
            return None
        classes = nxt
    names: list[str] = []
    for cls in classes:
        for name, field in cls.model_fields.items():
            names += [name] + ([field.alias] if field.alias and field.alias != name else [])
    return list(dict.fromkeys(names))


def config_error(exc: Any, model: type, where: str = "") -> ConfigError:
    """One-line :class:`ConfigError` for a pydantic ``ValidationError`` of ``model``.

    An unknown key (pydantic's ``extra_forbidden``) comes first, whatever else is wrong: it is
    named with its table and the nearest valid key. Otherwise the first error is given as
    ``"LOCATION: MESSAGE (got VALUE)"``.

    Parameters
    ----------
    exc : pydantic.ValidationError
    model : type
        The pydantic model that was validated (to list the valid keys of each table).
    where : str
        Prefix naming the file or command (``"resolution.toml"``); none when empty.

    Examples
    --------
    >>> from pydantic import BaseModel, ConfigDict, ValidationError
    >>> class Crystal(BaseModel):
    ...     model_config = ConfigDict(extra="forbid")
    ...     mosaic_spread_deg: float = 0.1
    >>> class Config(BaseModel):
    ...     model_config = ConfigDict(extra="forbid")
    ...     crystal: Crystal = Crystal()
    >>> try:
    ...     Config.model_validate({"crystal": {"mosaic_sprad_deg": 0.2}})
    ... except ValidationError as exc:
    ...     print(config_error(exc, Config, "sim.toml"))
    sim.toml: unknown key 'mosaic_sprad_deg' in [crystal]; did you mean 'mosaic_spread_deg'?
    """
    prefix = f"{where}: " if where else ""
    errors = exc.errors()
    unknown = [e for e in errors if e.get("type") == "extra_forbidden"]
    if unknown:
        loc = tuple(unknown[0].get("loc", ()))
        key, table = (loc[-1], loc[:-1]) if loc else ("?", ())
        section = ".".join(str(p) for p in table)
        valid = _valid_keys(model, table)
        message = unknown_name_message("key", str(key), valid or [], f"[{section}]" if section else "")
        return ConfigError(prefix + message)
    first = errors[0] if errors else {}
    loc = ".".join(str(p) for p in first.get("loc", ()))
    msg = str(first.get("msg", exc)).removeprefix("Value error, ")
    got = f" (got {first['input']!r})" if loc and first.get("type") != "missing" and "input" in first else ""
    return ConfigError(f"{prefix}{loc + ': ' if loc else ''}{msg}{got}")
