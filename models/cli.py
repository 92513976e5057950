"""``xrais models …``: list, describe, export and import model checkpoints.

Commands::

    xrais models list                      registered builders, checkpoints in the models folder and
                                           the models shipped with xrais
    xrais models info CKPT                 architecture, task, heads, parameters, provenance
    xrais models export CKPT --format onnx|torchscript --out FILE
    xrais models import-resonet FILE --arch resnet50 --task resolution --out OUT.safetensors

``CKPT`` is a checkpoint file, a folder holding one, or a name in the models folder
(``--models-dir``, else ``$XRAIS_MODELS``, else ``~/.cache/xrais/models``), else among the
models shipped with xrais.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

__all__ = ["register", "models_app", "list_cmd", "info", "export", "import_resonet_cmd"]

models_app = typer.Typer(name="models", help="List, describe, export and import model checkpoints.",
                         no_args_is_help=True)

_MODELS_DIR = typer.Option(None, "--models-dir", help="Folder of named checkpoints (default $XRAIS_MODELS or "
                                                       "~/.cache/xrais/models).")


@models_app.command("list")
def list_cmd(models_dir: Optional[Path] = _MODELS_DIR) -> None:
    """List the registered model builders, the checkpoints in the models folder and those shipped with xrais."""
    from rich.table import Table

    from xrais.cli import console
    from xrais.models.checkpoint import default_models_dir, list_checkpoints, shipped_checkpoints, shipped_models_dir
    from xrais.models.registry import list_models

    table = Table(title="model builders", header_style="bold")
    for col in ("name", "task", "arch"):
        table.add_column(col)
    for name in list_models():
        task, _, arch = name.partition("_")
        table.add_row(name, task, arch)
    console.print(table)
    folder = models_dir if models_dir is not None else default_models_dir()
    found = list_checkpoints(folder)
    if not found:
        console.print(f"no checkpoints in {folder}", highlight=False)
    else:
        ckpts = Table(title=f"checkpoints in {folder}", header_style="bold")
        for col in ("name", "file", "size MB"):
            ckpts.add_column(col, justify="right" if col == "size MB" else "left")
        for name, path in found.items():
            ckpts.add_row(name, path.name, _size_mb(path))
        console.print(ckpts)
    shipped = shipped_checkpoints()
    if not shipped:
        console.print(f"no models shipped with xrais ({shipped_models_dir()})", highlight=False)
        return
    ships = Table(title=f"shipped with xrais ({shipped_models_dir()})", header_style="bold")
    for col in ("name", "file", "size MB", "description"):
        ships.add_column(col, justify="right" if col == "size MB" else "left",
                         overflow="fold" if col == "description" else "ellipsis")
    for name, entry in shipped.items():
        note = " (replaced by the one in the models folder)" if name in found else ""
        ships.add_row(name, entry.path.name, _size_mb(entry.path), entry.description + note)
    console.print(ships)


def _size_mb(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.1f}" if path.is_file() else "missing"


@models_app.command("info")
def info(
    checkpoint: str = typer.Argument(..., help="Checkpoint file, folder or registered name.", show_default=False),
    models_dir: Optional[Path] = _MODELS_DIR,
) -> None:
    """Describe a checkpoint: architecture, task, heads, parameters, conditioning and provenance."""
    from rich.table import Table

    from xrais.cli import console
    from xrais.models.checkpoint import load_checkpoint_meta, resolve_checkpoint

    path, _ = resolve_checkpoint(checkpoint, models_dir=models_dir)
    meta = load_checkpoint_meta(path)
    cfg = meta.config
    table = Table(title=f"xrais models info: {path.name}", header_style="bold", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    rows = [
        ("file", str(path)),
        ("arch", cfg.arch),
        ("task", cfg.task),
        ("output", cfg.output_name),
        ("label", cfg.label),
        ("heads", ", ".join(cfg.heads) or "—"),
        ("params", f"{meta.num_params:,}"),
        ("dropout", f"{cfg.dropout:g}"),
        ("input mean / std", f"{cfg.input_mean:g} / {cfg.input_std:g}"),
        ("conditioning", cfg.conditioning.model_dump_json()),
        ("weights stored as", meta.weights_dtype),
        ("xrais version", meta.xrais_version),
    ]
    for key, value in meta.provenance.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        rows.append((f"provenance.{key}", text))
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


@models_app.command("export")
def export(
    checkpoint: str = typer.Argument(..., help="Checkpoint file, folder or registered name.", show_default=False),
    format: str = typer.Option("onnx", "--format", "-f", help="onnx or torchscript."),
    out: Path = typer.Option(..., "--out", "-o", help="Output file (.onnx or .pt).", show_default=False),
    opset: Optional[int] = typer.Option(None, "--opset", help="ONNX opset (default: the exporter's)."),
    models_dir: Optional[Path] = _MODELS_DIR,
) -> None:
    """Export a checkpoint to ONNX or TorchScript (dynamic batch; inputs images[, geometry])."""
    from xrais.cli import console
    from xrais.errors import ConfigError
    from xrais.models.checkpoint import load_pretrained
    from xrais.models.export import EXPORT_FORMATS, export_model

    from xrais.runs import check_out_file

    if format not in EXPORT_FORMATS:
        raise ConfigError(f"--format {format!r}: expected one of {', '.join(EXPORT_FORMATS)}")
    check_out_file(out)
    model = load_pretrained(checkpoint, models_dir=models_dir)
    path = export_model(model, out, format=format, opset=opset)
    inputs = "images, geometry" if model.config.task == "resolution" else "images"
    console.print(f"wrote {path} ({format}; inputs: {inputs}; outputs: {', '.join(model.config.output_names)})",
                  highlight=False)


@models_app.command("import-resonet")
def import_resonet_cmd(
    weights: Path = typer.Argument(..., help="resonet .nn file (torch-saved state dict).", show_default=False),
    arch: str = typer.Option("resnet50", "--arch", help="resnet18, resnet34, resnet50, resnet101 or resnet152."),
    task: str = typer.Option("resolution", "--task", help="resolution or multilattice."),
    out: Path = typer.Option(..., "--out", "-o", help="xrais checkpoint to write (.safetensors).",
                             show_default=False),
    dropout: Optional[float] = typer.Option(None, "--dropout", help="FC1 dropout (default by task)."),
) -> None:
    """Convert resonet weights into an xrais checkpoint (keys mapped, shapes checked)."""
    from xrais.cli import console
    from xrais.models.resonet_import import import_resonet
    from xrais.runs import check_out_file

    check_out_file(out)
    model = import_resonet(weights, arch=arch, task=task, out=out, dropout=dropout)
    console.print(f"wrote {out} ({arch} {task}, {model.num_params():,} parameters)", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``xrais models`` command group to ``app``."""
    app.add_typer(models_app, name="models")
