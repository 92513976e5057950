"""Import weights trained with resonet (the XRAIS project's own code) as xrais checkpoints.

resonet saves a model with ``torch.save(model.state_dict(), "….nn")``: a plain state dict,
with no config. The supported layout is resonet's ResNet model (``RESNetAny`` / ``RESNet18`` …
``RESNet152``), whose module tree is::

    resnet       torchvision ResNet, conv1 = Conv2d(1, 64, 7, stride 2, padding 3, bias=False)
    fc1          Linear(1000, 100)
    fc2          Linear(100, 1)
    fc2_geom     Linear(100 + n_geom, 1)   (optional; never used by resonet's forward pass)
    DROP, Sigmoid                          (no parameters)

Keys may carry a ``module.`` prefix (saved from DistributedDataParallel). The mapping to
:class:`~xrais.models.XraisResNet` is ``resnet.* → backbone.*``, ``fc1.* → fc1.*``,
``fc2.* → fc2.*``; ``fc2_geom.*`` is dropped. Every other key, and any shape that differs from
the xrais model of the chosen architecture, is an error. resonet's geometry transform (its
``y = (distance, pixel size, wavelength, downsample)``) and sigmoid for binary models are the
ones xrais applies, so the imported model gives the same outputs. Models with another number
of outputs, kernel size or FC width (resonet's ``nout``, ``kernel_size``, ``num_fc``) are not
supported.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from xrais.errors import CheckpointError

__all__ = ["RESONET_PREFIXES", "convert_resonet_state", "read_resonet_state", "import_resonet"]

#: resonet key prefix → xrais key prefix.
RESONET_PREFIXES: dict[str, str] = {"resnet.": "backbone.", "fc1.": "fc1.", "fc2.": "fc2."}
_DROPPED = ("fc2_geom.",)


def convert_resonet_state(state: Mapping[str, Any], model: Any, *, source: str = "state dict") -> dict[str, Any]:
    """Rename a resonet state dict to ``model``'s keys and check every shape.

    Parameters
    ----------
    state : mapping of str to Tensor
        resonet's ``state_dict()``.
    model : XraisResNet
        The model the weights are meant for (its architecture decides the expected shapes).
    source : str
        Name of the input for messages (e.g. the file name).

    Returns
    -------
    dict of str to Tensor
        A state dict that ``model.load_state_dict(..., strict=True)`` accepts.

    Raises
    ------
    CheckpointError
        Unknown keys, keys the model needs but the input lacks, or other shapes.
    """
    expected = model.state_dict()
    out: dict[str, Any] = {}
    unknown: list[str] = []
    for key, value in state.items():
        name = key[len("module."):] if key.startswith("module.") else key
        if name.startswith(_DROPPED):
            continue
        prefix = next((p for p in RESONET_PREFIXES if name.startswith(p)), None)
        if prefix is None:
            unknown.append(key)
            continue
        out[RESONET_PREFIXES[prefix] + name[len(prefix):]] = value
    arch = model.config.arch
    if unknown:
        raise CheckpointError(f"{source}: expected resonet keys under resnet., fc1., fc2. (and fc2_geom.), "
                              f"found {len(unknown)} others ({', '.join(unknown[:3])}{', …' if len(unknown) > 3 else ''})")
    extra = [k for k in out if k not in expected]
    missing = [k for k in expected if k not in out]
    if extra or missing:
        raise CheckpointError(f"{source}: not a resonet {arch} model: {len(missing)} keys missing "
                              f"({', '.join(missing[:3])}), {len(extra)} unexpected ({', '.join(extra[:3])})")
    bad = [f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})" for k, v in out.items()
           if tuple(v.shape) != tuple(expected[k].shape)]
    if bad:
        raise CheckpointError(f"{source}: shapes differ from a resonet {arch} {model.config.task} model: "
                              + "; ".join(bad[:3]) + ("; …" if len(bad) > 3 else ""))
    return out


def read_resonet_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a resonet ``.nn`` file as a state dict, without executing code from it.

    The file is opened with ``torch.load(weights_only=True)``, which unpickles tensors and
    plain containers only; a file holding other objects (a pickled model class, say) is refused
    with one line asking for the state dict to be saved on its own. A dict holding the state
    under ``"state_dict"`` or ``"model_state_dict"`` is accepted too.

    Raises
    ------
    CheckpointError
        Missing or unreadable file, or no state dict inside.
    """
    import torch

    from xrais.models.checkpoint import load_torch_state

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: resonet weights file not found")
    obj = load_torch_state(path, "a torch-saved resonet state dict")
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path.name}: expected a state dict of tensors, found {type(obj).__name__}")
    return dict(obj)


def import_resonet(
    path: str | os.PathLike[str],
    *,
    arch: str,
    task: str,
    out: str | os.PathLike[str] | None = None,
    dropout: float | None = None,
    input_mean: float = 0.0,
    input_std: float = 1.0,
    conditioning: Any = None,
) -> Any:
    """Build an xrais model from resonet weights, and optionally save it as a checkpoint.

    Parameters
    ----------
    path : str or Path
        resonet ``.nn`` file (a torch-saved state dict).
    arch : str
        One of ``ARCHITECTURES`` (resonet's ``res50`` is ``resnet50``).
    task : str
        ``"resolution"`` or ``"multilattice"`` (resonet does not record it).
    out : str or Path, optional
        Where to write the xrais checkpoint; its provenance records the source file.
    dropout, input_mean, input_std, conditioning
        As in :func:`~xrais.models.build_model` (resonet feeds conditioned values unscaled).

    Returns
    -------
    XraisResNet
        In eval mode, with ``.provenance`` set.

    Raises
    ------
    CheckpointError
        Unreadable file or a layout that does not match (see the module docstring).
    ConfigError
        Unknown ``arch`` or ``task``.
    """
    from xrais.models.checkpoint import compute_sha256, save_checkpoint
    from xrais.models.resnet import build_model

    path = Path(path)
    model = build_model(arch, task, dropout=dropout, input_mean=input_mean, input_std=input_std,
                        conditioning=conditioning)
    state = convert_resonet_state(read_resonet_state(path), model, source=path.name)
    model.load_state_dict(state, strict=True)
    model.eval()
    model.provenance = {"imported_from": {"format": "resonet", "file": path.name, "sha256": compute_sha256(path)}}
    if out is not None:
        save_checkpoint(model, out, **model.provenance)
    return model
