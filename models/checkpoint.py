"""Model checkpoints: one safetensors file holding the weights and the config that rebuilds them.

A checkpoint (format ``xrais-model-1``) is a safetensors file whose tensors are the model's
state dict and whose string metadata are::

    format          "xrais-model-1"
    config          ModelConfig as JSON (architecture, task, heads, dropout, normalisation,
                    conditioning preset, label)
    provenance      JSON object: training config, data, epochs, metrics, … (free form)
    xrais_version   version of xrais that wrote the file
    num_params      number of parameters, as a decimal string
    weights_dtype   dtype of the stored floating-point tensors ("float32", "float16",
                    "bfloat16"); integer buffers keep their own

Loading never executes code from the file: safetensors holds only tensors and strings. The
metadata are checked before any model is built, and the weights must match the rebuilt model
key for key and shape for shape (no partial loads). Weights stored in float16 or bfloat16
are loaded into the float32 model.

Names resolve in a models folder: the ``models_dir`` argument, else ``$XRAIS_MODELS``, else
``$XDG_CACHE_HOME/xrais/models`` (``~/.cache/xrais/models``). There ``NAME.safetensors`` may
have a ``NAME.sha256`` beside it (``sha256sum`` output), or ``index.json`` may list it::

    {"NAME": {"file": "NAME.safetensors", "sha256": "<64 hex digits>", "description": "…"}}

A name not found there is looked up among the models shipped with xrais
(:func:`shipped_models_dir`, the package's ``models/pretrained/`` folder), where only
``index.json`` entries count and each must give its SHA-256: the user's folder wins, so a
model of the same name there replaces the shipped one. When a digest is known (argument,
sidecar or index; a shipped file named by its path included) the file must match it.
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
from xrais.errors import CheckpointError, ConfigError

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_SUFFIX",
    "CheckpointMeta",
    "ShippedCheckpoint",
    "WEIGHTS_DTYPES",
    "save_checkpoint",
    "load_pretrained",
    "load_checkpoint_meta",
    "resolve_checkpoint",
    "default_models_dir",
    "shipped_models_dir",
    "list_checkpoints",
    "shipped_checkpoints",
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
#: dtypes ``save_checkpoint(weights_dtype=…)`` can store floating-point tensors in.
WEIGHTS_DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")
_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}


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
    weights_dtype : str
        dtype of the stored floating-point tensors (``"float32"``, ``"float16"``,
        ``"bfloat16"``; comma-separated if several), from the metadata, else from the
        tensor headers of files written before it was recorded.
    """

    path: Path
    config: Any
    provenance: dict[str, Any]
    xrais_version: str
    num_params: int
    weights_dtype: str = "float32"


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


def save_checkpoint(model: Any, path: str | os.PathLike[str], /, *, weights_dtype: str | None = None,
                    **provenance: Any) -> Path:
    """Write ``model`` and its config to one safetensors file, atomically.

    The file is written to a temporary name in the same folder and renamed into place
    (``os.replace``), so a killed run never leaves a truncated checkpoint.

    Parameters
    ----------
    model : XraisResNet
        The model, possibly wrapped by DDP or ``torch.compile``.
    path : str or Path
        Destination; ``.safetensors`` is the usual suffix. Parent folders are created.
    weights_dtype : {"float16", "bfloat16", "float32"}, optional
        Store the floating-point tensors (weights and BatchNorm statistics) in this dtype;
        integer buffers (``num_batches_tracked``) keep theirs. float16 halves a float32 file
        (for models shipped in the package); None stores the model's own dtypes.
    **provenance
        Free-form JSON-able facts stored with the weights: training config, data, epochs,
        metrics, ``training_geometry`` (see :mod:`xrais.models.training_geometry`), …
        (pydantic models, dataclasses, paths and numpy values are converted).

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    ConfigError
        ``weights_dtype`` is not one of :data:`WEIGHTS_DTYPES`.
    CheckpointError
        ``model`` is not an xrais model, or a finite value does not fit in ``weights_dtype``
        (beyond float16's ±65504).

    Examples
    --------
    >>> import tempfile
    >>> from xrais.models import build_model
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = save_checkpoint(build_model("resnet18", "multilattice"), f"{folder}/m.safetensors",
    ...                            weights_dtype="float16", epochs=1)
    ...     load_checkpoint_meta(path).weights_dtype
    'float16'
    """
    import torch

    from xrais.models.resnet import XraisResNet

    path = Path(path)
    if weights_dtype is not None and weights_dtype not in WEIGHTS_DTYPES:
        raise ConfigError(f"weights_dtype {weights_dtype!r}: expected one of {', '.join(WEIGHTS_DTYPES)} or None")
    inner = unwrap_model(model)
    if not isinstance(inner, XraisResNet):
        raise CheckpointError(f"{path.name}: expected an XraisResNet to save, got {type(inner).__name__}")
    cast_to = getattr(torch, weights_dtype) if weights_dtype is not None else None
    tensors = {}
    for key, value in inner.state_dict().items():
        if not isinstance(value, torch.Tensor):
            continue
        tensor = value.detach().to("cpu")
        if cast_to is not None and tensor.is_floating_point() and tensor.dtype != cast_to:
            cast = tensor.to(cast_to)
            if bool((torch.isfinite(tensor) & ~torch.isfinite(cast)).any()):
                raise CheckpointError(f"{path.name}: {key} does not fit in {weights_dtype} (largest |value| "
                                      f"{float(tensor.abs().max()):.4g}); store it as bfloat16 or float32")
            tensor = cast
        tensors[key] = tensor.contiguous().clone()
    stored = sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values() if t.is_floating_point()})
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "config": inner.config.model_dump_json(),
        "provenance": json.dumps(_jsonable(provenance), sort_keys=True),
        "xrais_version": __version__,
        "num_params": str(inner.num_params()),
        "weights_dtype": ",".join(stored) or "float32",
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


def shipped_models_dir() -> Path:
    """The folder of models shipped inside the package (``xrais/models/pretrained/``).

    Its ``index.json`` lists each shipped model with its file, SHA-256 and description; it
    is ``{}`` while none is shipped.
    """
    return Path(__file__).resolve().with_name("pretrained")


@dataclass(frozen=True)
class ShippedCheckpoint:
    """One entry of the shipped models' ``index.json``.

    Attributes
    ----------
    name : str
        The name it resolves by (``load_pretrained("resolution")``).
    path : Path
        The checkpoint file (it may be missing if the package is broken).
    sha256 : str
        Its expected SHA-256, 64 lowercase hex digits ("" if the index gives none).
    description : str
        One line for ``xrais models list``.
    """

    name: str
    path: Path
    sha256: str
    description: str


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
    """Names and files of the checkpoints in a models folder (index entries and ``*.safetensors``).

    The models shipped with xrais are listed by :func:`shipped_checkpoints`.
    """
    folder = Path(models_dir) if models_dir is not None else default_models_dir()
    if not folder.is_dir():
        return {}
    found = {p.stem: p for p in sorted(folder.glob(f"*{CHECKPOINT_SUFFIX}")) if not p.name.startswith(".")}
    for name, entry in _read_index(folder).items():
        if isinstance(entry, dict) and "file" in entry:
            found[name] = folder / str(entry["file"])
    return dict(sorted(found.items()))


def shipped_checkpoints() -> dict[str, ShippedCheckpoint]:
    """The models shipped with xrais, by name: the entries of :func:`shipped_models_dir`'s ``index.json``.

    Raises
    ------
    CheckpointError
        The index is not a readable JSON object.
    """
    folder = shipped_models_dir()
    found = {}
    for name, entry in sorted(_read_index(folder).items()):
        if isinstance(entry, dict) and "file" in entry:
            found[name] = ShippedCheckpoint(name=name, path=folder / str(entry["file"]),
                                            sha256=str(entry.get("sha256") or "").lower(),
                                            description=str(entry.get("description") or ""))
    return found


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


def _find_in_folder(name: str, folder: Path, *, shipped: bool) -> tuple[Path, str | None] | None:
    """The file and digest of model ``name`` in ``folder``; None when the folder has no such model.

    In the user's folder an ``index.json`` entry comes first, then ``NAME.safetensors`` (with
    an optional ``NAME.sha256``); in the shipped folder only index entries count, and each
    must give a SHA-256.
    """
    if not folder.is_dir():
        return None
    entry = _read_index(folder).get(name)
    if isinstance(entry, dict) and "file" in entry:
        file = folder / str(entry["file"])
        if not file.is_file():
            raise CheckpointError(f"model {name!r}: {folder / _INDEX} lists {entry['file']}, which does not exist")
        digest = str(entry["sha256"]).lower() if entry.get("sha256") else None
        if shipped and digest is None:
            raise CheckpointError(f"model {name!r}: {folder / _INDEX} lists {entry['file']} without its sha256 "
                                  "(every model shipped with xrais has one)")
        return file, digest
    if shipped:
        return None
    stem = name[: -len(CHECKPOINT_SUFFIX)] if name.endswith(CHECKPOINT_SUFFIX) else name
    file = folder / f"{stem}{CHECKPOINT_SUFFIX}"
    if not file.is_file():
        return None
    sidecar = folder / f"{stem}.sha256"
    digest = None
    if sidecar.is_file():
        words = sidecar.read_text(encoding="utf-8").split()
        digest = words[0].lower() if words else None
    return file, digest


def _shipped_digest(file: Path) -> str | None:
    """The shipped index's SHA-256 of ``file`` when it is one of the shipped models, else None."""
    folder = shipped_models_dir()
    try:
        if file.resolve().parent != folder.resolve():
            return None
    except OSError:
        return None
    for entry in shipped_checkpoints().values():
        if entry.path.name == file.name and entry.sha256:
            return entry.sha256
    return None


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
        its single ``*.safetensors``); or a name in the models folder, else among the
        models shipped with xrais.
    models_dir : str or Path, optional
        Folder of named checkpoints; default :func:`default_models_dir`. It wins over the
        shipped folder (:func:`shipped_models_dir`) for a name found in both.

    Returns
    -------
    (Path, str or None)
        The file and its expected SHA-256 when a sidecar or index gives one (the shipped
        index also for a shipped file given by its path).

    Raises
    ------
    CheckpointError
        Nothing found (the message names the user's folder and the shipped one), an index
        entry whose file is missing, or a shipped entry without a SHA-256.
    """
    path = Path(path_or_name).expanduser()
    if path.is_file():
        return path, _shipped_digest(path)
    if path.is_dir():
        return _pick_in_folder(path), None
    name = str(path_or_name)
    folder = Path(models_dir).expanduser() if models_dir is not None else default_models_dir()
    shipped = shipped_models_dir()
    if os.sep not in name and "/" not in name:
        for where, is_shipped in ((folder, False), (shipped, True)):
            found = _find_in_folder(name, where, shipped=is_shipped)
            if found is not None:
                return found
    available = ", ".join(list_checkpoints(folder)) or "none"
    available_shipped = ", ".join(shipped_checkpoints()) or "none"
    raise CheckpointError(f"{name}: no such checkpoint file or folder, no model of that name in {folder} "
                          f"(available: {available}), nor among the models shipped with xrais in {shipped} "
                          f"(available: {available_shipped})")


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
    weights_dtype = meta.get("weights_dtype") or _header_float_dtypes(path)
    return CheckpointMeta(path=path, config=config, provenance=provenance, xrais_version=version,
                          num_params=num_params, weights_dtype=weights_dtype)


def _header_float_dtypes(path: Path) -> str:
    """The floating-point dtypes of a safetensors file's tensors, from its header alone."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        codes = {f.get_slice(key).get_dtype() for key in f.keys()}
    names = sorted({_SAFETENSORS_DTYPES[c] for c in codes if c in _SAFETENSORS_DTYPES})
    return ",".join(names) or "float32"


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
        A checkpoint file, a folder holding one, or a name in the models folder or among
        the models shipped with xrais (see :func:`resolve_checkpoint`).
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
        In eval mode on ``device``, in float32 whatever the stored dtype, with
        ``.provenance`` (dict), ``.checkpoint_path`` and ``.weights_dtype`` (as stored) set.

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
    expected = model.state_dict()
    _check_state(path, expected, state)
    # float16/bfloat16 weights go into the float32 model: cast here rather than rely on copy_
    state = {k: v.to(expected[k].dtype) if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    model.provenance = meta.provenance
    model.checkpoint_path = path
    model.weights_dtype = meta.weights_dtype
    return model.to(device).eval()
