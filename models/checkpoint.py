"""Model checkpoints: one safetensors file holding the weights and the config that rebuilds them.

A checkpoint (format ``xrais-model-1``) is a safetensors file whose tensors are the model's
state dict and whose string metadata are::

    format          "xrais-model-1"
    config          ModelConfig as JSON (architecture, task, heads, dropout, normalisation,
                    conditioning preset, label)
    provenance      JSON object: training config, data, epochs, metrics, … (free form)
    xrais_version   version of xrais that wrote the file
    num_params      number of parameters, as a decimal string

Loading never executes code from the file: safetensors holds only tensors and strings. The
metadata are checked before any model is built, and the weights must match the rebuilt model
key for key and shape for shape (no partial loads).

Names resolve in a models folder: the ``models_dir`` argument, else ``$XRAIS_MODELS``, else
``$XDG_CACHE_HOME/xrais/models`` (``~/.cache/xrais/models``). There ``NAME.safetensors`` may
have a ``NAME.sha256`` beside it (``sha256sum`` output), or ``index.json`` may list it::

    {"NAME": {"file": "NAME.safetensors", "sha256": "<64 hex digits>", "description": "…"}}

When a digest is known (argument, sidecar or index) the file must match it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from xrais._version import __version__
from xrais.errors import CheckpointError

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_SUFFIX",
    "CheckpointMeta",
    "save_checkpoint",
    "load_pretrained",
    "load_checkpoint_meta",
    "resolve_checkpoint",
    "default_models_dir",
    "list_checkpoints",
    "compute_sha256",
    "unwrap_model",
    "load_torch_state",
    "load_run_state",
    "save_torch_state",
]

CHECKPOINT_FORMAT = "xrais-model-1"
CHECKPOINT_SUFFIX = ".safetensors"
_INDEX = "index.json"
_PREFERRED = ("best.safetensors", "model.safetensors")


@dataclass(frozen=True)
class CheckpointMeta:
    """The validated metadata of a checkpoint file (read without building the model).

    Attributes
    ----------
    path : Path
        The checkpoint file.
    config : ModelConfig
        Rebuilds the model.
    provenance : dict
        Training configuration, data, epochs, metrics, … as saved.
    xrais_version : str
        Version of xrais that wrote the file.
    num_params : int
        Number of parameters recorded at save time.
    """

    path: Path
    config: Any
    provenance: dict[str, Any]
    xrais_version: str
    num_params: int


def _jsonable(value: Any) -> Any:
    """Turn provenance values (paths, numpy scalars, pydantic models, dataclasses, tensors) into JSON."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # numpy arrays/scalars, torch tensors
        return value.tolist()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def unwrap_model(model: Any) -> Any:
    """The plain model inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    seen = 0
    while seen < 8:
        inner = getattr(model, "_orig_mod", None)
        if inner is None:
            inner = getattr(model, "module", None)
        if inner is None or inner is model:
            return model
        model, seen = inner, seen + 1
    return model


def save_checkpoint(model: Any, path: str | os.PathLike[str], /, **provenance: Any) -> Path:
    """Write ``model`` and its config to one safetensors file, atomically.

    The file is written to a temporary name in the same folder and renamed into place
    (``os.replace``), so a killed run never leaves a truncated checkpoint.

    Parameters
    ----------
    model : XraisResNet
        The model, possibly wrapped by DDP or ``torch.compile``.
    path : str or Path
        Destination; ``.safetensors`` is the usual suffix. Parent folders are created.
    **provenance
        Free-form JSON-able facts stored with the weights: training config, data, epochs,
        metrics, … (pydantic models, dataclasses, paths and numpy values are converted).

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    CheckpointError
        ``model`` is not an xrais model.
    """
    import torch

    from xrais.models.resnet import XraisResNet

    path = Path(path)
    inner = unwrap_model(model)
    if not isinstance(inner, XraisResNet):
        raise CheckpointError(f"{path.name}: expected an XraisResNet to save, got {type(inner).__name__}")
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in inner.state_dict().items()
               if isinstance(v, torch.Tensor)}
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "config": inner.config.model_dump_json(),
        "provenance": json.dumps(_jsonable(provenance), sort_keys=True),
        "xrais_version": __version__,
        "num_params": str(inner.num_params()),
    }
    return write_safetensors(tensors, path, metadata)


def write_safetensors(tensors: Mapping[str, Any], path: str | os.PathLike[str], metadata: Mapping[str, str]) -> Path:
    """Write tensors and a string metadata header as one safetensors file, atomically.

    The file is written under a temporary name in the same folder and renamed into place, so
    a killed process never leaves a truncated checkpoint.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(dict(tensors), str(tmp), metadata=dict(metadata))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_torch_state(path: str | os.PathLike[str], what: str) -> Any:
    """Read a ``torch.save`` file of tensors, numbers, strings, lists and dicts, never code.

    The file is opened with ``torch.load(weights_only=True)``: a pickle that would build any
    other object (and so could run code) is refused before anything in it runs.

    Parameters
    ----------
    path : str or Path
    what : str
        What the file should be, for messages ("a pipeline checkpoint").

    Raises
    ------
    CheckpointError
        Missing, unreadable, or holding objects other than tensors and plain containers.
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc).lower():
            raise CheckpointError(f"{path}: expected {what}, but the file holds objects other than tensors, "
                                  "numbers, strings, lists and dicts; xrais never unpickles code from a file "
                                  "(re-save it as a plain state dict: torch.save(model.state_dict(), FILE))") from None
        raise CheckpointError(f"{path}: expected {what}, could not read it (not a torch-saved file: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    except Exception as exc:  # torch raises several types for truncated or foreign files
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(f"{path}: expected {what}, could not read it as a torch-saved file "
                              f"({type(exc).__name__}{': ' + first if first else ''})") from None


def load_run_state(path: str | os.PathLike[str], what: str, state_format: str, key: str, *,
                   other_run: str) -> dict[str, Any]:
    """Read the saved state of a resumable run and check that it belongs to this run.

    Parameters
    ----------
    path : str or Path
    what : str
        What the file should be, for messages ("a merge training state").
    state_format : str
        The ``format`` entry the state must have.
    key : str
        The run's identity (a hash of its inputs and options); the state's ``key`` must match.
    other_run : str
        What the state belongs to when the key differs, and what to do about it, for the message.

    Raises
    ------
    CheckpointError
        Unreadable, holding code, or of another format.
    ConfigError
        The state of a run on other inputs or options.
    """
    from xrais.errors import ConfigError

    state = load_torch_state(path, what)
    if not isinstance(state, dict) or state.get("format") != state_format:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: expected format {state_format!r}, found {found!r}")
    if state.get("key") != key:
        raise ConfigError(f"{path}: holds {other_run}")
    return state


def save_torch_state(state: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a dict of tensors and plain values with ``torch.save``, atomically (readable by
    :func:`load_torch_state`)."""
    import torch

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(dict(state), tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def compute_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file as 64 lowercase hex digits."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_models_dir() -> Path:
    """``$XRAIS_MODELS``, else ``$XDG_CACHE_HOME/xrais/models``, else ``~/.cache/xrais/models``."""
    env = os.environ.get("XRAIS_MODELS")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return base / "xrais" / "models"


def _read_index(folder: Path) -> dict[str, Any]:
    index = folder / _INDEX
    if not index.is_file():
        return {}
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{index}: expected a JSON object of models, could not read it ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{index}: expected a JSON object of models, found {type(data).__name__}")
    return data


def list_checkpoints(models_dir: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """Names and files of the checkpoints in a models folder (index entries and ``*.safetensors``)."""
    folder = Path(models_dir) if models_dir is not None else default_models_dir()
    if not folder.is_dir():
        return {}
    found = {p.stem: p for p in sorted(folder.glob(f"*{CHECKPOINT_SUFFIX}")) if not p.name.startswith(".")}
    for name, entry in _read_index(folder).items():
        if isinstance(entry, dict) and "file" in entry:
            found[name] = folder / str(entry["file"])
    return dict(sorted(found.items()))


def _pick_in_folder(folder: Path) -> Path:
    for name in _PREFERRED:
        if (folder / name).is_file():
            return folder / name
    files = sorted(p for p in folder.glob(f"*{CHECKPOINT_SUFFIX}") if not p.name.startswith("."))
    if len(files) == 1:
        return files[0]
    contents = ", ".join(sorted(p.name for p in folder.iterdir())[:20]) or "nothing"
    raise CheckpointError(f"{folder}: expected best.safetensors, model.safetensors or a single *.safetensors "
                          f"checkpoint, found {contents}")


def resolve_checkpoint(
    path_or_name: str | os.PathLike[str],
    *,
    models_dir: str | os.PathLike[str] | None = None,
) -> tuple[Path, str | None]:
    """Find the checkpoint file meant by a path, a folder or a registered name.

    Parameters
    ----------
    path_or_name : str or Path
        A checkpoint file; a folder (``best.safetensors``, else ``model.safetensors``, else
        its single ``*.safetensors``); or a name in the models folder.
    models_dir : str or Path, optional
        Folder of named checkpoints; default :func:`default_models_dir`.

    Returns
    -------
    (Path, str or None)
        The file and its expected SHA-256 when a sidecar or index gives one.

    Raises
    ------
    CheckpointError
        Nothing found (the message says where it looked).
    """
    path = Path(path_or_name).expanduser()
    if path.is_file():
        return path, None
    if path.is_dir():
        return _pick_in_folder(path), None
    name = str(path_or_name)
    folder = Path(models_dir).expanduser() if models_dir is not None else default_models_dir()
    if os.sep not in name and "/" not in name:
        entry = _read_index(folder).get(name) if folder.is_dir() else None
        if isinstance(entry, dict) and "file" in entry:
            file = folder / str(entry["file"])
            if not file.is_file():
                raise CheckpointError(f"model {name!r}: {folder / _INDEX} lists {entry['file']}, which does not exist")
            return file, (str(entry["sha256"]).lower() if entry.get("sha256") else None)
        stem = name[: -len(CHECKPOINT_SUFFIX)] if name.endswith(CHECKPOINT_SUFFIX) else name
        file = folder / f"{stem}{CHECKPOINT_SUFFIX}"
        if file.is_file():
            sidecar = folder / f"{stem}.sha256"
            digest = None
            if sidecar.is_file():
                words = sidecar.read_text(encoding="utf-8").split()
                digest = words[0].lower() if words else None
            return file, digest
    available = ", ".join(list_checkpoints(folder)) or "none"
    raise CheckpointError(f"{name}: no such checkpoint file or folder, and no model of that name in {folder} "
                          f"(available: {available})")


def _version_key(version: str) -> tuple[str, str]:
    parts = version.split(".")
    return (parts[0], parts[1] if len(parts) > 1 else "0")


def load_checkpoint_meta(path: str | os.PathLike[str]) -> CheckpointMeta:
    """Read and validate a checkpoint's metadata without building the model.

    Parameters
    ----------
    path : str or Path
        A checkpoint file.

    Returns
    -------
    CheckpointMeta

    Raises
    ------
    CheckpointError
        Not a readable safetensors file, wrong format, invalid config (unknown architecture
        or task, …) or written by an incompatible xrais version (other major.minor).
    """
    from pydantic import ValidationError
    from safetensors import safe_open

    from xrais.models.config import ModelConfig

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types for truncated or foreign files
        raise CheckpointError(f"{path.name}: expected a safetensors checkpoint, could not read it ({exc})") from None
    fmt = meta.get("format")
    if fmt != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path.name}: expected format {CHECKPOINT_FORMAT!r}, found {fmt!r}")
    version = meta.get("xrais_version", "")
    if _version_key(version) != _version_key(__version__):
        raise CheckpointError(f"{path.name}: written by xrais {version or 'unknown'}, this is xrais {__version__}; "
                              "checkpoints load only within the same major.minor version")
    try:
        config = ModelConfig.model_validate_json(meta.get("config", ""))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "config"
        raise CheckpointError(f"{path.name}: invalid model config, {where}: {err.get('msg')}") from None
    try:
        provenance = json.loads(meta.get("provenance") or "{}")
        num_params = int(meta.get("num_params", "-1"))
    except ValueError as exc:
        raise CheckpointError(f"{path.name}: unreadable provenance or num_params metadata ({exc})") from None
    return CheckpointMeta(path=path, config=config, provenance=provenance, xrais_version=version,
                          num_params=num_params)


def _check_state(path: Path, expected: Mapping[str, Any], found: Mapping[str, Any]) -> None:
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [f"{k} {tuple(found[k].shape)} (model {tuple(expected[k].shape)})"
              for k in expected if k in found and tuple(found[k].shape) != tuple(expected[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({', '.join(missing[:3])}{', …' if len(missing) > 3 else ''})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])}"
                        f"{', …' if len(unexpected) > 3 else ''})")
    if shapes:
        problems.append(f"{len(shapes)} of other shape ({'; '.join(shapes[:3])}{'; …' if len(shapes) > 3 else ''})")
    if problems:
        raise CheckpointError(f"{path.name}: weights do not match the model its config describes: "
                              + ", ".join(problems))


def load_pretrained(
    path_or_name: str | os.PathLike[str],
    *,
    device: Any = "cpu",
    models_dir: str | os.PathLike[str] | None = None,
    sha256: str | None = None,
    arch: str | None = None,
    task: str | None = None,
) -> Any:
    """Rebuild a model from a checkpoint alone, ready for inference.

    Parameters
    ----------
    path_or_name : str or Path
        A checkpoint file, a folder holding one, or a name in the models folder
        (see :func:`resolve_checkpoint`).
    device : str or torch.device
        Where the model goes.
    models_dir : str or Path, optional
        Folder of named checkpoints; default ``$XRAIS_MODELS`` or the user cache.
    sha256 : str, optional
        Expected SHA-256 of the file (overrides a sidecar or index digest).
    arch, task : str, optional
        When given, the checkpoint must be of this architecture / task.

    Returns
    -------
    XraisResNet
        In eval mode on ``device``, with ``.provenance`` (dict) and ``.checkpoint_path`` set.

    Raises
    ------
    CheckpointError
        Not found, digest mismatch, unreadable, wrong format or version, another
        architecture or task than asked, or weights that do not fit the config.
    """
    from safetensors.torch import load_file

    from xrais.models.resnet import XraisResNet

    path, digest = resolve_checkpoint(path_or_name, models_dir=models_dir)
    digest = (sha256 or digest or "").lower() or None
    if digest is not None:
        found = compute_sha256(path)
        if found != digest:
            raise CheckpointError(f"{path.name}: SHA-256 mismatch, expected {digest}, file has {found}")
    meta = load_checkpoint_meta(path)
    for what, want in (("arch", arch), ("task", task)):
        have = getattr(meta.config, what)
        if want is not None and have != want:
            raise CheckpointError(f"{path.name}: expected a {want} model ({what}), the checkpoint holds {have}")
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:
        raise CheckpointError(f"{path.name}: could not read the weights ({exc})") from None
    model = XraisResNet(meta.config)
    _check_state(path, model.state_dict(), state)
    model.load_state_dict(state, strict=True)
    model.provenance = meta.provenance
    model.checkpoint_path = path
    return model.to(device).eval()
