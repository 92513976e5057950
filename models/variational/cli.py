"""``xrais integrate``: train the variational integrator on shoeboxes and/or integrate them.

A long run (:mod:`xrais.runs`): ``--model`` (with ``--train``) and ``--out`` are checked first
and locked (``.NAME.xrais.lock`` beside each); training writes ``MODEL.train-state.pt`` after
every epoch, SIGTERM or SIGINT stops it after the current epoch (exit 128 + N), and the same
command started again goes on from there to the same weights. The state file is removed once
the model is saved.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

__all__ = ["register", "integrate", "output_paths", "training_state_path"]


def training_state_path(model: Path) -> Path:
    """Where ``--train`` keeps its state while it runs: ``MODEL.train-state.pt`` beside the model."""
    return model.with_name(model.name + ".train-state.pt")


def output_paths(out: Path) -> tuple[Path, Path]:
    """(HDF5, MTZ) paths for ``--out``: a ``.h5``/``.mtz`` name gives its sibling, any other name both suffixes."""
    if out.suffix.lower() in (".h5", ".hdf5", ".mtz"):
        stem = out.with_suffix("")
        return (out, stem.with_suffix(".mtz")) if out.suffix.lower() != ".mtz" else (stem.with_suffix(".h5"), out)
    return out.with_name(out.name + ".h5"), out.with_name(out.name + ".mtz")


def integrate(
    shoeboxes: List[Path] = typer.Argument(..., help="Shoebox files (xrais simulate --shoeboxes) or folders of them."),
    model: Path = typer.Option(..., "--model", "-m", help="Integrator checkpoint to use (written first with --train)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Reflection table: NAME.h5 and NAME.mtz."),
    train: bool = typer.Option(False, "--train", help="Train the model on these shoeboxes first and save it to --model."),
    epochs: int = typer.Option(10, "--epochs", help="Training epochs."),
    batch_size: int = typer.Option(128, "--batch-size", help="Shoeboxes per training step."),
    lr: float = typer.Option(1e-3, "--lr", help="Adam learning rate."),
    encoder: str = typer.Option("fc", "--encoder", help="fc (fully connected) or cnn (3-D convolutions)."),
    profile: str = typer.Option("mvn", "--profile", help="mvn (multivariate normal) or softmax (free voxel weights)."),
    surrogate: str = typer.Option("gamma", "--surrogate", help="gamma or lognormal q(I), q(bg)."),
    kl_weight: float = typer.Option(1e-4, "--kl-weight", help="κ of both KL terms (paper: 1e-4)."),
    kl_mode: str = typer.Option("tempered", "--kl-mode", help="tempered (κ weighs the prior) or full (κ weighs the KL)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the weights, the order and the samples."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    baselines: bool = typer.Option(True, "--baselines/--no-baselines",
                                   help="Add summation (I_SUM) and profile-fitting (IPR) columns."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="PNG of I vs the truth and CC by resolution "
                                        "(simulated data; default NAME_integration.png)."),
    cell: Optional[str] = typer.Option(None, "--cell", help="'a b c alpha beta gamma' when the files carry no crystal."),
    space_group: Optional[str] = typer.Option(None, "--space-group", help="Space group when the files carry none."),
) -> None:
    """Integrate shoeboxes with the variational integrator (Poisson likelihood, rate I·profile + bg).

    Writes NAME.h5 (group 'reflections', one dataset per column; group 'rejected') and an
    unmerged NAME.mtz (H K L M/ISYM BATCH I SIGI BG SIGBG XDET YDET …, cell and space group).
    Shoeboxes with NaN or negative counts, no measured voxel or the wrong shape are reported
    and left out.
    """
    from contextlib import ExitStack

    from xrais.errors import ConfigError
    from xrais.runs import RunLock, check_out_file, stop_on_signals

    if out is None and not train:
        raise ConfigError("xrais integrate: give --out NAME for the reflection table (or --train to only train)")
    with ExitStack() as held:
        if train:
            check_out_file(model, "--model")
            held.enter_context(RunLock(model.parent, "xrais integrate --train", name=f".{model.name}.xrais.lock"))
        if out is not None:
            for path in output_paths(out):
                check_out_file(path)
            h5 = output_paths(out)[0]
            held.enter_context(RunLock(h5.parent, "xrais integrate", name=f".{h5.name}.xrais.lock"))
        stop = held.enter_context(stop_on_signals())
        _integrate(shoeboxes, model, out, train, epochs, batch_size, lr, encoder, profile, surrogate, kl_weight,
                   kl_mode, seed, device, baselines, plot, cell, space_group, stop)


def _integrate(shoeboxes: List[Path], model: Path, out: Optional[Path], train: bool, epochs: int, batch_size: int,
               lr: float, encoder: str, profile: str, surrogate: str, kl_weight: float, kl_mode: str, seed: int,
               device: str, baselines: bool, plot: Optional[Path], cell: Optional[str], space_group: Optional[str],
               stop: object) -> None:
    from xrais.cli import console, err_console
    from xrais.errors import ConfigError
    from xrais.models.variational.integrator import IntegratorConfig, load_integrator, save_integrator
    from xrais.simulate.shoebox_io import read_shoebox_files
    from xrais.train.integrate import (
        IntegrateTrainConfig,
        add_baselines,
        crystal_from_attrs,
        integrate_shoeboxes,
        integration_metrics,
        plot_integration,
        train_integrator,
        write_reflections_hdf5,
        write_reflections_mtz,
    )

    data = read_shoebox_files(shoeboxes)
    console.print(f"{len(data)} shoeboxes of {data.shape[0]}×{data.shape[1]}×{data.shape[2]} voxels "
                  f"from {len(data.attrs.get('files', []))} file(s)")
    if train:
        try:
            mcfg = IntegratorConfig(encoder=encoder, profile=profile, surrogate=surrogate, kl_weight_intensity=kl_weight,
                                    kl_weight_background=kl_weight, kl_mode=kl_mode)
            tcfg = IntegrateTrainConfig(epochs=epochs, batch_size=batch_size, learning_rate=lr, seed=seed, device=device)
        except ValueError as exc:
            raise ConfigError(f"xrais integrate: {str(exc).splitlines()[-1].strip()}") from None

        def report(epoch: int, m: dict[str, float]) -> None:
            console.print(f"epoch {epoch + 1}/{epochs}: loss {m['loss']:.5f}, nll {m['nll']:.1f}, "
                          f"KL(I) {m['kl_intensity']:.2f}, KL(bg) {m['kl_background']:.2f}, "
                          f"{m['shoeboxes_per_s']:.0f} shoeboxes/s")

        state = training_state_path(model)
        if state.exists():
            console.print(f"resuming the training saved in {state}")
        net, _ = train_integrator(data, mcfg, tcfg, on_epoch=report, state_path=state, stop=stop)
        save_integrator(net, model, **net.provenance, data=[str(p) for p in shoeboxes])  # type: ignore[attr-defined]
        state.unlink(missing_ok=True)
        console.print(f"wrote {model}")
    else:
        net = load_integrator(model)
    if out is None:
        return
    table, rejected = integrate_shoeboxes(net, data, device=device)
    for row, reason in rejected[:10]:
        err_console.print(f"[yellow]shoebox {row} excluded:[/] {reason}", highlight=False)
    if len(rejected) > 10:
        err_console.print(f"[yellow]… {len(rejected) - 10} more excluded[/] (all listed in the HDF5 'rejected' group)")
    if baselines and len(table):
        table = add_baselines(table, data)
    cell_values = [float(v) for v in cell.split()] if cell else None
    if cell_values is not None and len(cell_values) != 6:
        raise ConfigError(f"--cell {cell!r}: expected six numbers 'a b c alpha beta gamma'")
    cell6, sg = crystal_from_attrs(data.attrs, cell_values, space_group)
    h5_path, mtz_path = output_paths(out)
    write_reflections_hdf5(h5_path, table, cell=cell6, space_group=sg, rejected=rejected,
                           attrs={"model": str(model), "shoeboxes": [str(p) for p in shoeboxes],
                                  "integrator_config": net.config.model_dump(mode="json")})
    write_reflections_mtz(mtz_path, table, cell=cell6, space_group=sg)
    console.print(f"{len(table)} reflections integrated, {len(rejected)} excluded; wrote {h5_path} and {mtz_path}")
    if "I_TRUE_BOX" in table and len(table) > 2:
        m = integration_metrics(table)
        for name, label in (("I", "xrais-variational"), ("I_SUM", "summation"), ("IPR", "profile fitting")):
            if name in m:
                console.print(f"{label}: CC to truth {m[name]['cc']:.4f}, weak (I/σ < 2, n={m['n_weak']}) "
                              f"{m[name]['cc_weak']:.4f}, std of z {m[name]['z_std']:.3f}")
        png = plot or h5_path.with_name(h5_path.stem + "_integration.png")
        plot_integration(table, png)
        console.print(f"wrote {png}")


def register(app: typer.Typer) -> None:
    """Add ``xrais integrate`` to ``app``."""
    app.command("integrate")(integrate)
