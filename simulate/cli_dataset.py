"""``xrais simulate`` (labelled training sets) and ``xrais show`` (one image of a shard as a PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from xrais.parallel import gpu_for_rank, mpi_world

__all__ = ["register", "simulate", "show"]


def _share_gpus(comm: Any) -> None:
    """Give each rank of a node one of the node's GPUs in turn (several ranks may share one)."""
    from xrais.simulate.kernel_cuda import cuda_available

    if not cuda_available():
        return
    from numba import cuda

    device = gpu_for_rank(comm, len(cuda.gpus))
    cuda.select_device(device)
    try:
        import cupy

        cupy.cuda.Device(device).use()
    except ImportError:
        pass


def simulate(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder for the HDF5 shards."),
    n_images: int = typer.Option(0, "--n-images", "-n", help="Images in the whole set (all ranks)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML/YAML/JSON file of SimulationConfig fields."),
    preset: str = typer.Option("resolution", "--preset", help="Starting point: resolution or multilattice."),
    seed: int = typer.Option(0, "--seed", help="Seed of the set: image i is remade from (seed, i)."),
    backend: str = typer.Option("auto", "--backend", help="auto, numba (CPU) or cuda (GPU)."),
    save_raw: Optional[str] = typer.Option(None, "--save-raw", help="Also write raw frames: cbf (miniCBF) or nxs (NXmx HDF5)."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the full configuration as TOML and exit."),
    shoeboxes: bool = typer.Option(False, "--shoeboxes", help="Simulate per-reflection shoeboxes of a rotation series "
                                   "or stills instead (--config: a shoebox experiment; --n-images: frames)."),
    flush_every_images: Optional[int] = typer.Option(
        None, "--flush-every-images", min=1,
        help="Finished images reach disk at least every N images (default 4; with --shoeboxes: parts of N "
             "images, default 16)."),
    flush_every_s: float = typer.Option(30.0, "--flush-every-s", min=0.001,
                                        help="Finished images reach disk at least every S seconds, too."),
) -> None:
    """Simulate a labelled training set (XRAIS Appendix A by default) into HDF5 shards.

    Run under `mpirun -n R xrais simulate …` to share the images between ranks. Finished images
    reach disk every few images or seconds; SIGTERM or Ctrl-C finishes the current image, writes
    and exits 128+N. Run again with the same arguments, it makes only the missing images. One run
    per --out folder at a time. Exit status 0 when every image was made, 1 when some failed.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from xrais.cli import console, err_console
    from xrais.errors import ConfigError
    from xrais.runs import exit_status, stop_on_signals
    from xrais.simulate.config import load_config

    if shoeboxes:
        _simulate_shoeboxes(out, n_images, config, seed, backend, print_config, flush_every_images)
        return
    cfg = load_config(config, preset=preset)
    if print_config:
        print(cfg.to_toml(), end="")
        return
    from xrais.simulate.dataset import FLUSH_EVERY_IMAGES, simulate_dataset

    if out is None or n_images < 1:
        raise ConfigError("xrais simulate: give --out DIR and --n-images N (≥ 1)")
    comm = mpi_world()
    rank = comm.Get_rank() if comm is not None else 0
    size = comm.Get_size() if comm is not None else 1
    if comm is not None and backend in ("auto", "cuda"):
        _share_gpus(comm)
    share = len(range(rank, n_images, size))
    flush = {"flush_every_images": flush_every_images or FLUSH_EVERY_IMAGES, "flush_every_s": flush_every_s}
    with stop_on_signals() as stop:
        if comm is None:
            progress = Progress(TextColumn("[bold]simulating"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), console=err_console, disable=not err_console.is_terminal,
                                transient=True)
            with progress:
                task = progress.add_task("simulate", total=share)
                report = simulate_dataset(cfg, n_images, out, seed=seed, backend=backend, save_raw=save_raw,
                                          on_image=lambda i, status: progress.advance(task), stop=stop, **flush)
        else:
            done = [0]

            def log_line(i: int, status: str) -> None:
                done[0] += 1
                print(f"rank {rank}/{size}: image {i} {status} ({done[0]}/{share})", flush=True)

            report = simulate_dataset(cfg, n_images, out, seed=seed, backend=backend, comm=comm, save_raw=save_raw,
                                      on_image=log_line, stop=stop, **flush)
    secs = report.seconds
    total = sum(secs.values())
    rate = len(report.made) / total if total else 0.0
    stages = ", ".join(f"{k.replace('_', ' ')} {v:.2f} s" for k, v in secs.items())
    console.print(f"rank {rank}: {len(report.made)} image(s) made, {report.skipped_done} already done, "
                  f"{len(report.failed)} failed; {rate:.3g} images/s ({stages}); shards: "
                  f"{', '.join(p.name for p in report.shards) or 'none new'}")
    stop.check(f"xrais simulate {out}")
    code = exit_status(len(report.failed), stop)
    if code:
        err_console.print(f"[bold red]error:[/] {len(report.failed)} image(s) failed (see "
                          f"{out / f'failures_r{rank:04d}.tsv'}); run again to retry them", highlight=False,
                          soft_wrap=True)
        raise typer.Exit(code)


def _simulate_shoeboxes(out: Optional[Path], n_images: int, config: Optional[Path], seed: int, backend: str,
                        print_config: bool, flush_every_images: Optional[int]) -> None:
    """``xrais simulate --shoeboxes``: :func:`xrais.simulate.shoebox_io.simulate_shoebox_dataset` on this rank."""
    from xrais.cli import console
    from xrais.errors import ConfigError
    from xrais.runs import stop_on_signals
    from xrais.simulate.shoebox_io import (FLUSH_EVERY_IMAGES, experiment_to_toml, load_experiment,
                                           simulate_shoebox_dataset)

    experiment = load_experiment(config, **({"shoeboxes": {"n_images": n_images}} if n_images > 0 else {}))
    if print_config:
        print(experiment_to_toml(experiment), end="")
        return
    if out is None:
        raise ConfigError("xrais simulate --shoeboxes: give --out DIR")
    comm = mpi_world()
    if comm is not None and backend in ("auto", "cuda"):
        _share_gpus(comm)
    with stop_on_signals() as stop:
        report = simulate_shoebox_dataset(experiment, out, seed=seed, backend=backend, comm=comm, stop=stop,
                                          flush_every_images=flush_every_images or FLUSH_EVERY_IMAGES)
    if report["stopped"]:
        console.print(f"rank {report['rank']}: images {report['images'][0]}–{report['images'][1] - 1}: "
                      f"{report['parts']} part(s) made now, {report['reflections']} shoeboxes on disk so far")
    else:
        done = "already complete" if report["skipped"] else f"simulated in {report['seconds']:.1f} s"
        console.print(f"rank {report['rank']}: images {report['images'][0]}–{report['images'][1] - 1}, "
                      f"{report['reflections']} shoeboxes {done}; wrote {report['file']}")
    stop.check(f"xrais simulate --shoeboxes {out}")


def show(
    shard: Path = typer.Argument(..., help="An HDF5 shard written by xrais simulate or xrais condition."),
    index: int = typer.Option(0, "--index", "-i", help="Row of the shard."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="PNG to write (default: SHARD_rowN.png)."),
) -> None:
    """Render one conditioned image of a shard with its labels as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from xrais.cli import console
    from xrais.errors import DatasetError
    from xrais.io import read_shard

    images, cols, _ = read_shard(shard)
    if not 0 <= index < len(images):
        raise DatasetError(f"{shard.name}: row {index} out of range; the shard has {len(images)} rows (0–{len(images) - 1})")
    labels = {k.split("/", 1)[1]: v[index] for k, v in cols.items() if k.startswith(("labels/", "geometry/"))}
    fig, (ax, txt) = plt.subplots(1, 2, figsize=(11, 5.5), gridspec_kw={"width_ratios": [1, 0.8]})
    img = images[index]
    ax.imshow(img, cmap="gray_r", vmax=max(float(np.percentile(img[img > 0], 99.5)) if img.any() else 1.0, 1.0))
    ax.set_title(f"{shard.name} row {index} (√photons; beam centre at top left)")
    keys = ["resolution_A", "b_factor_A2", "n_lattices", "detector", "distance_mm", "wavelength_A", "space_group",
            "mosaic_spread_deg", "domain_size_um", "background_scale", "parasitic_material", "downsample"]
    lines = [f"{k} = {labels[k]:.4g}" if isinstance(labels.get(k), float) else f"{k} = {labels[k]}"
             for k in keys if k in labels]
    txt.axis("off")
    txt.text(0.0, 1.0, "\n".join(lines), va="top", family="monospace", fontsize=10)
    if "resolution_A" in labels and "distance_mm" in labels:
        # the resolution label as a circle of radius R = D·tan(2θ), 2θ = 2·asin(λ/2d), in pooled pixels
        theta2 = 2 * np.arcsin(min(labels["wavelength_A"] / (2 * labels["resolution_A"]), 1.0))
        radius = labels["distance_mm"] * np.tan(theta2) / (labels["pixel_mm"] * labels["downsample"])
        ax.add_patch(matplotlib.patches.Circle((0, 0), radius, fill=False, ls="--", color="red"))
        ax.set_xlim(0, img.shape[1])
        ax.set_ylim(img.shape[0], 0)
    target = out or shard.with_name(f"{shard.stem}_row{index}.png")
    fig.tight_layout()
    fig.savefig(target, dpi=100)
    plt.close(fig)
    console.print(f"wrote {target}")


def register(app: typer.Typer) -> None:
    """Add ``xrais simulate`` and ``xrais show`` to ``app``."""
    app.command("simulate")(simulate)
    app.command("show")(show)
