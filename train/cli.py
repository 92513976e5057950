"""``xrais train`` (one process, or W under torchrun) and ``xrais evaluate`` (held-out shards)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import List, Optional

import typer

__all__ = ["register", "train", "evaluate"]


def _data_args(shards: Optional[List[Path]], data: Optional[List[Path]]) -> tuple[str, ...]:
    return tuple(str(p) for p in [*(data or []), *(shards or [])])


def train(
    shards: Optional[List[Path]] = typer.Argument(None, help="Shards, manifests or folders (also --data).",
                                                  show_default=False),
    data: Optional[List[Path]] = typer.Option(None, "--data", "-d",
                                              help="manifest.json, .h5 shard or folder; repeat for more."),
    task: str = typer.Option("resolution", "--task", help="resolution or multilattice."),
    arch: str = typer.Option("resnet50", "--arch", help="resnet18, resnet34, resnet50, resnet101 or resnet152."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (resumes the run found there)."),
    epochs: int = typer.Option(30, "--epochs", help="Epochs in all (a resumed run goes on to this number)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Global batch: images per step over all processes."),
    lr: Optional[float] = typer.Option(None, "--lr", help="SGD learning rate. [default: 6e-3 resolution, 1.04e-3 "
                                       "multilattice]"),
    momentum: Optional[float] = typer.Option(None, "--momentum", help="SGD momentum. [default: 0.9 resolution, "
                                             "0.9983 multilattice]"),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help="SGD weight decay. [default: 0 "
                                                 "resolution, 2.5e-4 multilattice]"),
    loss: Optional[str] = typer.Option(None, "--loss", help="mae or mse (resolution), bce (multilattice). "
                                       "[default: mae resolution, bce multilattice]"),
    heads: Optional[List[str]] = typer.Option(None, "--heads", help="Extra head, a labels/<name> column; repeat "
                                              "or separate with commas."),
    dropout: Optional[float] = typer.Option(None, "--dropout", help="FC1 dropout. [default: 0 resolution, "
                                            "0.5 multilattice]"),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Fraction of images held out."),
    workers: int = typer.Option(2, "--workers", help="DataLoader workers per process."),
    seed: int = typer.Option(0, "--seed", help="Seed of split, weights, order and augmentation."),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="Mixed precision. [default: on with CUDA]"),
    channels_last: Optional[bool] = typer.Option(None, "--channels-last/--no-channels-last",
                                                 help="Channels-last memory format. [default: on with CUDA]"),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the model."),
    augment: bool = typer.Option(False, "--augment/--no-augment", help="Random photon gain (0.5–2×) per image."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    sync_batchnorm: bool = typer.Option(True, "--sync-batchnorm/--no-sync-batchnorm",
                                        help="BatchNorm over the global batch under torchrun."),
    lr_schedule: str = typer.Option("constant", "--lr-schedule", help="constant or cosine."),
    checkpoint_every_s: float = typer.Option(600.0, "--checkpoint-every-s",
                                             help="Seconds between training states saved within an epoch."),
    allow_outside_manifest: bool = typer.Option(False, "--allow-outside-manifest",
                                                help="Read shards that a manifest names outside its own folder."),
    simulate: Optional[str] = typer.Option(None, "--simulate", metavar="SIMCONFIG",
                                           help="Simulate the training images as the run goes, instead of --data: "
                                           "a simulation config file (as xrais simulate --config) or a preset "
                                           "(resolution, multilattice)."),
    sim_seed: Optional[int] = typer.Option(None, "--sim-seed", help="Seed of the simulated images (validation: "
                                           "seed + 1). [default: --seed]"),
    images_per_epoch: Optional[int] = typer.Option(None, "--images-per-epoch",
                                                   help="Simulated training images per epoch. [default: 1024]"),
    sim_val_images: Optional[int] = typer.Option(None, "--sim-val-images",
                                                 help="Simulated validation images, kept in memory. [default: 32]"),
    stats_images: int = typer.Option(64, "--stats-images", help="Training images sampled for the input mean/std."),
    init_weights: Optional[str] = typer.Option(None, "--init-weights", metavar="CHECKPOINT",
                                               help="Fine-tune: start from this checkpoint's weights (a file, "
                                               "folder or model name such as resolution); same arch, task, heads."),
) -> None:
    """Train a resolution or multi-lattice model on simulated shards, or on images simulated as it trains.

    Run as is for one process (CPU or one GPU), or as `torchrun --nproc_per_node G -m xrais.cli
    train …` for G processes (NCCL on GPUs, gloo on CPUs; --batch-size is the global batch).
    The training state is saved after every epoch and every --checkpoint-every-s seconds; on
    SIGTERM or SIGINT the current batch is finished, the state saved, and the command exits
    with 128 + the signal. Run again with the same command (after a stop or a kill), it resumes
    from the last saved state. One run at a time may use an --out folder.

    With --simulate SIMCONFIG instead of shards, epoch e trains on images [e·N, (e+1)·N) of the
    simulated set (N = --images-per-epoch, seed --sim-seed), made by the --workers processes:
    no image is seen twice, and a resumed run goes on at the next unseen image.
    """
    from xrais.cli import console
    from xrais.errors import ConfigError
    from xrais.runs import stop_on_signals
    from xrais.train.config import make_train_config
    from xrais.train.loop import train as run_training

    paths = _data_args(shards, data)
    if (not paths and simulate is None) or out is None:
        raise ConfigError("xrais train: give the data (--data DIR or shard files, or --simulate SIMCONFIG) "
                          "and --out DIR")
    if paths and simulate is not None:
        raise ConfigError("xrais train: give the data (--data DIR or shard files) or --simulate SIMCONFIG, not both")
    if simulate is not None and Path(simulate).is_file():
        simulate = str(Path(simulate).resolve())  # the same file, from whatever folder a resume starts
    if init_weights is not None and Path(init_weights).exists():
        init_weights = str(Path(init_weights).resolve())
    head_names = tuple(h.strip() for item in (heads or []) for h in item.split(",") if h.strip())
    cfg = make_train_config(
        data=paths, out=str(out), task=task, arch=arch, epochs=epochs, batch_size=batch_size, lr=lr,
        momentum=momentum, weight_decay=weight_decay, loss=loss, heads=head_names, dropout=dropout,
        val_fraction=val_fraction, workers=workers, seed=seed, amp=amp, channels_last=channels_last,
        compile=compile, augment=augment, device=device, sync_batchnorm=sync_batchnorm, lr_schedule=lr_schedule,
        checkpoint_every_s=checkpoint_every_s, allow_outside_manifest=allow_outside_manifest, simulate=simulate,
        sim_seed=sim_seed, images_per_epoch=images_per_epoch, sim_val_images=sim_val_images,
        stats_images=stats_images, init_weights=init_weights)
    main = int(os.environ.get("RANK", "0")) == 0

    def report(row: dict) -> None:
        if not main:
            return
        val = (f"val loss {row['val_loss']:.4g} acc {row['val_accuracy']:.3f}" if row["val_loss"] is not None
               else "no held-out images")
        console.print(f"epoch {row['epoch']}/{cfg.epochs}: train loss {row['train_loss']:.4g} "
                      f"acc {row['train_accuracy']:.3f}, {val}, lr {row['lr']:.3g}, "
                      f"{row['images_per_s']:.1f} images/s, {row['seconds']:.1f} s"
                      + (f", simulated images {row['image_start']}–{row['image_stop'] - 1}" if "image_start" in row
                         else ""), highlight=False)

    with stop_on_signals() as stop:
        result = run_training(cfg, on_epoch=report, stop=stop)
    if main:
        if result.start_epoch and result.start_epoch >= cfg.epochs:
            console.print(f"{out}: all {cfg.epochs} epochs were already done; nothing to train", highlight=False)
        elif result.start_batch:
            console.print(f"resumed in epoch {result.start_epoch + 1} after batch {result.start_batch}",
                          highlight=False)
        elif result.start_epoch:
            console.print(f"resumed after epoch {result.start_epoch}", highlight=False)
        if result.stopped_at is not None:
            epoch, batches = result.stopped_at
            where = f"in epoch {epoch} after {batches} batch(es)" if batches else f"after epoch {epoch - 1}"
            console.print(f"stopped {where}; training state saved in {out / 'state' / 'last.pt'}", highlight=False)
        elif result.best_epoch is not None:
            console.print(f"{result.world_size} process(es); best epoch {result.best_epoch} "
                          f"(loss {result.best_value:.4g}); wrote {out / 'best.safetensors'}, "
                          f"{out / 'last.safetensors'}, {out / 'metrics.csv'}, {out / 'training.png'}",
                          highlight=False)
        if result.images_seen is not None:
            console.print(f"{result.images_seen} simulated training images seen so far", highlight=False)
    if result.stopped_at is not None:  # asked of this process, or of another one of a torchrun job
        from xrais.errors import RunInterrupted

        signum = int(stop.signum or signal.SIGTERM)
        if main:
            raise RunInterrupted(signum, str(out))  # exit 128 + signal, saying the work is saved
        raise typer.Exit(128 + signum)


def evaluate(
    shards: Optional[List[Path]] = typer.Argument(None, help="Shards, manifests or folders (also --data).",
                                                  show_default=False),
    model: Path = typer.Option(..., "--model", "-m", help="Checkpoint file, training folder or model name."),
    data: Optional[List[Path]] = typer.Option(None, "--data", "-d", help="Held-out shards; repeat for more."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for the tables and plots."),
    batch_size: int = typer.Option(16, "--batch-size", help="Quadrants per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    workers: int = typer.Option(0, "--workers", help="DataLoader workers."),
    allow_outside_manifest: bool = typer.Option(False, "--allow-outside-manifest",
                                                help="Read shards that a manifest names outside its own folder."),
) -> None:
    """Score a trained model on held-out shards: predicted-vs-true plot (or ROC) and error table."""
    from rich.table import Table

    from xrais.cli import console
    from xrais.errors import ConfigError
    from xrais.runs import check_out_dir
    from xrais.train.evaluate import evaluate as run_evaluation

    paths = _data_args(shards, data)
    if not paths:
        raise ConfigError("xrais evaluate: give the held-out data (--data DIR or shard files)")
    check_out_dir(out)
    result = run_evaluation(model, paths, out, batch_size=batch_size, device=device, workers=workers,
                            allow_outside_manifest=allow_outside_manifest)
    table = Table(title=f"{result.model_path.name}: {result.task}, {result.n_quadrants} quadrants")
    for key in result.table[0]:
        table.add_column(key, justify="left" if key == "bin" else "right")
    for row in result.table:
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()))
    console.print(table)
    if result.confusion is not None:
        conf = Table(title="confusion (rows: true, columns: predicted)")
        for name in ("", "single", "multiple"):
            conf.add_column(name, justify="right")
        for name, counts in zip(("single", "multiple"), result.confusion):
            conf.add_row(name, *(str(int(c)) for c in counts))
        console.print(conf)
    console.print("wrote " + ", ".join(str(p) for p in result.files.values()), highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``xrais train`` and ``xrais evaluate`` to the ``xrais`` app."""
    app.command("train")(train)
    app.command("evaluate")(evaluate)
