"""Amortised training of the variational integrator and inference over shoebox files.

One model is trained on many shoeboxes at once (mini-batches, Adam, GPU when present); it then
integrates any shoebox of the same shape in one forward pass. Shoeboxes that cannot be
integrated (NaN or negative counts, no measured voxel, a wrong shape) are reported per row
and left out of both training and output (:func:`xrais.simulate.shoeboxes.screen_shoeboxes`).

The reflection table (a pandas ``DataFrame``, one row per integrated reflection) has these
columns; the MTZ holds the same with H, K, L reduced to the asymmetric unit and ``M/ISYM``:

==============  =====================================================================
H, K, L         Miller index as indexed
BATCH           image number (1-based: image + 1)
I, SIGI         posterior mean and standard deviation of q(I), photons in the shoebox
BG, SIGBG       posterior mean and standard deviation of q(bg), photons per voxel
XDET, YDET      predicted centroid on the detector, pixels (fast, slow)
ZDET            predicted centroid, frames (start of image i at i)
ROT             spindle angle of the centroid, degrees
DHKL            resolution, Å
WAVELENGTH      Å
FRACTIONCALC    partiality (simulated: the fraction recorded)
LP              Lorentz-polarization correction 1/(L·P) (multiply I by it)
PROF_X/Y/Z      profile centroid (fast px, slow px, frames)
PROF_SX/SY/SZ   profile standard deviations (fast px, slow px, frames)
I_SUM, SIGI_SUM summation integration (local background plane), with ``baselines``
IPR, SIGIPR     profile fitting with learned average profiles, with ``baselines``
I_TRUE          simulated data: photons the reflection recorded over the scan
I_TRUE_BOX      simulated data: its noiseless photons inside the shoebox
F_TRUE          simulated data: |F| of the structure-factor table
SCALE_TRUE      simulated data: per-image scale applied
==============  =====================================================================
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field

from xrais._version import __version__
from xrais.errors import ConfigError, DatasetError, RunInterrupted
from xrais.parallel import torch_device
from xrais.models.variational.integrator import (
    IntegratorConfig,
    ShoeboxBatch,
    VariationalIntegrator,
    build_integrator,
)
from xrais.simulate.shoeboxes import ShoeboxSet, screen_shoeboxes

__all__ = ["IntegrateTrainConfig", "train_integrator", "integrate_shoeboxes", "add_baselines", "integration_metrics",
           "write_reflections_hdf5", "write_reflections_mtz", "plot_integration", "choose_device", "crystal_from_attrs",
           "TABLE_COLUMNS"]

log = logging.getLogger(__name__)

TABLE_COLUMNS = ("H", "K", "L", "BATCH", "I", "SIGI", "BG", "SIGBG", "XDET", "YDET", "ZDET", "ROT", "DHKL",
                 "WAVELENGTH", "FRACTIONCALC", "LP", "PROF_X", "PROF_Y", "PROF_Z", "PROF_SX", "PROF_SY", "PROF_SZ")
_MTZ_TYPES = {"H": "H", "K": "H", "L": "H", "M/ISYM": "Y", "BATCH": "B", "I": "J", "SIGI": "Q", "IPR": "J",
              "SIGIPR": "Q", "I_SUM": "J", "SIGI_SUM": "Q", "I_TRUE": "J", "I_TRUE_BOX": "J", "F_TRUE": "F",
              "SIGBG": "R"}


class IntegrateTrainConfig(BaseModel):
    """Optimisation of a :class:`VariationalIntegrator` (Table 1 defaults: batch 128, lr 10⁻³, 10 epochs)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(10, ge=1, le=100_000, description="passes over the training shoeboxes")
    batch_size: int = Field(128, ge=1, le=1_000_000, description="shoeboxes per step")
    learning_rate: float = Field(1e-3, gt=0, le=1, description="Adam learning rate")
    seed: int = Field(0, description="seed of the weights, the order and the samples")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where to train")


def choose_device(device: str = "auto") -> torch.device:
    """The device to train and integrate on (:func:`xrais.parallel.torch_device`)."""
    return torch_device(device)


def _usable(shoeboxes: ShoeboxSet, shape: tuple[int, int, int] | None) -> tuple[np.ndarray, list[tuple[int, str]]]:
    keep, problems = screen_shoeboxes(shoeboxes.counts, shoeboxes.mask, expected_shape=shape or shoeboxes.shape)
    for row, reason in problems[:20]:
        log.warning("shoebox %d excluded: %s", row, reason)
    if len(problems) > 20:
        log.warning("… and %d more shoeboxes excluded", len(problems) - 20)
    return keep, problems


def _batch(shoeboxes: ShoeboxSet, rows: np.ndarray, device: torch.device) -> ShoeboxBatch:
    r = shoeboxes.reflections
    return ShoeboxBatch.from_arrays(shoeboxes.counts[rows], shoeboxes.mask[rows], r["corner_px"][rows],
                                    r["frame_first"][rows], r["xyz_px"][rows], device=device)


def _data_scales(shoeboxes: ShoeboxSet) -> dict[str, Any]:
    """Detector size and image count that normalise the position features, from the data."""
    det = shoeboxes.attrs.get("detector")
    if isinstance(det, dict) and det.get("array_shape"):
        n_slow, n_fast = det["array_shape"]
    else:
        corner = shoeboxes.reflections["corner_px"]
        n_fast = float(corner[:, 0].max(initial=0) + shoeboxes.shape[2])
        n_slow = float(corner[:, 1].max(initial=0) + shoeboxes.shape[1])
    n_images = float(shoeboxes.reflections["image"].max(initial=0) + 1)
    return {"detector_size_px": (float(n_fast), float(n_slow)), "n_images": max(n_images, 1.0)}


def train_integrator(
    shoeboxes: ShoeboxSet,
    model_config: IntegratorConfig | None = None,
    train_config: IntegrateTrainConfig | None = None,
    *,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    state_path: str | Path | None = None,
    stop: threading.Event | None = None,
) -> tuple[VariationalIntegrator, list[dict[str, float]]]:
    """Fit an integrator to shoeboxes by maximising the ELBO (amortised over all of them).

    Parameters
    ----------
    shoeboxes : ShoeboxSet
        Training data; bad shoeboxes are excluded (and logged).
    model_config : IntegratorConfig, optional
        Architecture; its shoebox shape is set from the data, and the position scales too.
    train_config : IntegrateTrainConfig, optional
    on_epoch : callable, optional
        Called with (epoch, metrics) after each epoch.
    state_path : str or Path, optional
        The training state (weights, optimiser, random generators, history) is written here
        after every epoch; when the file exists (a stopped or killed training of the same data
        and configs) training goes on from it, to the same weights as a run never stopped.
    stop : threading.Event, optional
        When set, training ends after the current epoch (its state saved) and
        :class:`~xrais.errors.RunInterrupted` is raised.

    Returns
    -------
    (model in eval mode on the CPU, one dict of mean loss terms and timing per epoch)

    Raises
    ------
    DatasetError
        No usable shoebox.
    ConfigError
        ``state_path`` holds the training state of other data or configs.
    RunInterrupted
        ``stop`` was set.

    Notes
    -----
    The same seed gives the same model: the weights, the order of the shoeboxes and the
    reparameterised samples all come from it (the global torch generator is restored after).
    """
    tc = train_config or IntegrateTrainConfig()
    keep, _ = _usable(shoeboxes, None)
    rows = np.nonzero(keep)[0]
    if len(rows) == 0:
        raise DatasetError("no usable shoeboxes to train on")
    base = (model_config or IntegratorConfig()).model_dump()
    base.update(shoebox_shape=tuple(shoeboxes.shape), **_data_scales(shoeboxes))
    cfg = IntegratorConfig(**base)
    device = choose_device(tc.device)
    history: list[dict[str, float]] = []
    devices = [torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(tc.seed)
        model = build_integrator(cfg).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=tc.learning_rate)
        order_rng = np.random.default_rng([tc.seed & 0xFFFFFFFF, 0x1A7E])
        key = _training_key(shoeboxes, rows, cfg, tc)
        first_epoch = 0
        if state_path is not None and Path(state_path).exists():
            first_epoch, history = _resume_training(Path(state_path), key, model, optimizer, order_rng, device)
        for epoch in range(first_epoch, tc.epochs):
            t0 = time.perf_counter()
            model.train()
            perm = rows[order_rng.permutation(len(rows))]
            sums: dict[str, float] = {}
            n_seen = 0
            for start in range(0, len(perm), tc.batch_size):
                idx = np.sort(perm[start:start + tc.batch_size])
                batch = _batch(shoeboxes, idx, device)
                terms = model.loss(batch)
                optimizer.zero_grad(set_to_none=True)
                terms["loss"].backward()
                optimizer.step()
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(idx)
                n_seen += len(idx)
            metrics = {k: v / n_seen for k, v in sums.items()}
            metrics["seconds"] = time.perf_counter() - t0
            metrics["shoeboxes_per_s"] = n_seen / max(metrics["seconds"], 1e-9)
            history.append(metrics)
            if state_path is not None:
                _save_training(Path(state_path), key, epoch + 1, model, optimizer, order_rng, history, device)
            if on_epoch:
                on_epoch(epoch, metrics)
            if stop is not None and stop.is_set() and epoch + 1 < tc.epochs:
                raise RunInterrupted(getattr(stop, "signum", None) or signal.SIGTERM,
                                     f"integrator training stopped after epoch {epoch + 1} of {tc.epochs}"
                                     + (f" (state in {state_path})" if state_path is not None else ""))
    model = model.cpu().eval()
    provenance = {"epochs": tc.epochs, "train_config": tc.model_dump(), "n_train": int(len(rows)), "history": history}
    model.provenance = provenance  # type: ignore[attr-defined]
    return model, history


TRAINING_STATE_FORMAT = "xrais-integrator-training-1"


def _training_key(shoeboxes: ShoeboxSet, rows: np.ndarray, cfg: IntegratorConfig, tc: IntegrateTrainConfig) -> str:
    """A digest of the data and both configs (not the device): a state fits only the same training."""
    import hashlib

    h = hashlib.sha256(cfg.model_dump_json().encode())
    h.update(tc.model_dump_json(exclude={"device"}).encode())
    h.update(np.ascontiguousarray(rows).tobytes())
    for array in (shoeboxes.counts, shoeboxes.mask):
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def _save_training(path: Path, key: str, epochs_done: int, model: VariationalIntegrator,
                   optimizer: torch.optim.Optimizer, order_rng: np.random.Generator,
                   history: list[dict[str, float]], device: torch.device) -> None:
    from xrais.models.checkpoint import save_torch_state

    state = {"format": TRAINING_STATE_FORMAT, "key": key, "epochs_done": int(epochs_done),
             "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
             "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
             "order_rng": json.dumps(order_rng.bit_generator.state), "history": json.dumps(history)}
    save_torch_state(state, path)


def _resume_training(path: Path, key: str, model: VariationalIntegrator, optimizer: torch.optim.Optimizer,
                     order_rng: np.random.Generator, device: torch.device) -> tuple[int, list[dict[str, float]]]:
    """Load a saved training state; (epochs done, history)."""
    from xrais.errors import CheckpointError
    from xrais.models.checkpoint import load_run_state

    state = load_run_state(path, "an integrator training state", TRAINING_STATE_FORMAT, key,
                           other_run="the training state of other shoeboxes or options; remove it to start over, "
                                     "or train on the same files with the same options")
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        order_rng.bit_generator.state = json.loads(state["order_rng"])
        history = json.loads(state["history"])
        epochs_done = int(state["epochs_done"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: integrator training state with missing or invalid fields "
                              f"({type(exc).__name__})") from None
    log.info("%s: resuming integrator training after epoch %d", path, epochs_done)
    return epochs_done, history


def integrate_shoeboxes(model: VariationalIntegrator, shoeboxes: ShoeboxSet, *, batch_size: int = 1024,
                        device: str = "auto") -> tuple[pd.DataFrame, list[tuple[int, str]]]:
    """Integrate every usable shoebox: the reflection table and the rejected rows.

    Returns
    -------
    table : DataFrame
        One row per usable shoebox, columns :data:`TABLE_COLUMNS` plus, for simulated data,
        I_TRUE, I_TRUE_BOX, F_TRUE, SCALE_TRUE; ``row`` (the index in ``shoeboxes``) as index.
    rejected : list of (row, reason)

    Raises
    ------
    DatasetError
        When the shoeboxes' shape differs from the model's (every row would be rejected).
    """
    keep, problems = _usable(shoeboxes, model.config.shoebox_shape)
    rows = np.nonzero(keep)[0]
    if len(rows) == 0 and len(shoeboxes):
        raise DatasetError(f"no shoebox can be integrated (first problem: row {problems[0][0]}: {problems[0][1]}); "
                           f"the model expects shoeboxes of {model.config.shoebox_shape}")
    dev = choose_device(device)
    model = model.to(dev).eval()
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, len(rows), batch_size):
        idx = rows[start:start + batch_size]
        parts.append(model.summarize(_batch(shoeboxes, idx, dev)))
    model.cpu()
    est = {k: np.concatenate([p[k] for p in parts]) if parts else np.zeros((0,) + (3,) * (k.startswith("profile_c")
                                                                                              or k == "profile_sigma"))
           for k in ("intensity", "sigma_intensity", "background", "sigma_background", "profile_centroid",
                     "profile_sigma")}
    r = {k: v[rows] for k, v in shoeboxes.reflections.items()}
    table = pd.DataFrame({
        "H": r["miller_index"][:, 0].astype(np.int32), "K": r["miller_index"][:, 1].astype(np.int32),
        "L": r["miller_index"][:, 2].astype(np.int32), "BATCH": (r["image"] + 1).astype(np.int32),
        "I": est["intensity"], "SIGI": est["sigma_intensity"], "BG": est["background"],
        "SIGBG": est["sigma_background"], "XDET": r["xyz_px"][:, 0], "YDET": r["xyz_px"][:, 1],
        "ZDET": r["xyz_px"][:, 2], "ROT": r["phi_deg"], "DHKL": r["d_A"], "WAVELENGTH": r["wavelength_A"],
        "FRACTIONCALC": r["partiality"], "LP": 1.0 / np.maximum(r["lorentz"] * r["polarization"], 1e-12),
        "PROF_X": est["profile_centroid"][:, 0], "PROF_Y": est["profile_centroid"][:, 1],
        "PROF_Z": est["profile_centroid"][:, 2], "PROF_SX": est["profile_sigma"][:, 0],
        "PROF_SY": est["profile_sigma"][:, 1], "PROF_SZ": est["profile_sigma"][:, 2],
    }, index=pd.Index(rows, name="row"))
    if np.any(shoeboxes.signal):
        table["I_TRUE"] = r["intensity_true"]
        table["I_TRUE_BOX"] = shoeboxes.signal_sum()[rows]
        table["F_TRUE"] = r["F_true"]
        table["SCALE_TRUE"] = r["scale"]
    return table, problems


def add_baselines(table: pd.DataFrame, shoeboxes: ShoeboxSet, *, peak_fraction: float = 0.99,
                  regions: tuple[int, int] = (3, 3)) -> pd.DataFrame:
    """Add summation (I_SUM, SIGI_SUM) and profile-fitting (IPR, SIGIPR) columns for the table's rows.

    The average profile is learned from these shoeboxes: first a summation with an ellipsoidal
    peak (radii 1 frame, 4 px), then profiles from the strong reflections (I/σ ≥ 10) per
    detector region; the summation is redone with the peak region holding ``peak_fraction``
    of the overall average profile, and each reflection is profile-fitted on that background.
    """
    from xrais.models.variational.baselines import (
        ellipsoid_peak_mask,
        learn_profiles,
        peak_mask_from_profile,
        profile_fit_integrate,
        summation_integrate,
    )

    rows = table.index.to_numpy()
    counts, mask = shoeboxes.counts[rows], shoeboxes.mask[rows]
    r = {k: v[rows] for k, v in shoeboxes.reflections.items()}
    first = summation_integrate(counts, mask, ellipsoid_peak_mask(shoeboxes.shape, (1.0, 4.0, 4.0)))
    det = _data_scales(shoeboxes)["detector_size_px"]
    model = learn_profiles(counts, mask, first["background_map"], first["intensity"], first["sigma_intensity"],
                           r["xyz_px"][:, :2], det, regions=regions)
    overall = model.profiles.mean(axis=(0, 1))
    peak = peak_mask_from_profile(overall / overall.sum(), peak_fraction)
    summ = summation_integrate(counts, mask, peak)
    fit = profile_fit_integrate(counts, mask, model.profile_for(r["xyz_px"][:, :2]), summ["background_map"],
                                summ["plane_covariance"], start=summ["intensity"])
    out = table.copy()
    out["I_SUM"], out["SIGI_SUM"] = summ["intensity"], summ["sigma_intensity"]
    out["IPR"], out["SIGIPR"] = fit["intensity"], fit["sigma_intensity"]
    return out


def integration_metrics(table: pd.DataFrame, *, truth: str = "I_TRUE_BOX", n_shells: int = 8,
                        bins: Sequence[float] = (0.0, 1.0, 2.0, 5.0, 10.0, 30.0, np.inf)) -> dict[str, Any]:
    """CC to the truth overall, for weak reflections, by resolution shell and by true I/σ bin.

    Weak means I_true/σ_sum < 2 (σ of summation, so every method is judged on the same rows).
    For each method present (``I``, ``I_SUM``, ``IPR``): ``cc``, ``cc_weak``, ``z_std`` (std of
    (I − I_true)/σ), ``cc_shells`` and ``cc_bins``; plus ``shell_d_A`` (mean d per shell) and
    ``bin_edges``, ``n_weak``.
    """
    if truth not in table:
        raise DatasetError(f"reflection table: no truth column {truth!r} (simulated data only)")
    t = table[truth].to_numpy()
    sig_ref = table["SIGI_SUM"].to_numpy() if "SIGI_SUM" in table else table["SIGI"].to_numpy()
    ratio = t / np.maximum(sig_ref, 1e-12)
    weak = ratio < 2.0
    inv_d2 = 1.0 / table["DHKL"].to_numpy() ** 2
    edges = np.quantile(inv_d2, np.linspace(0, 1, n_shells + 1))
    shell = np.clip(np.searchsorted(edges, inv_d2, side="right") - 1, 0, n_shells - 1)
    which = np.digitize(ratio, np.asarray(bins)) - 1

    def cc(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.corrcoef(a, b)[0, 1]) if len(a) > 2 and np.std(a) > 0 and np.std(b) > 0 else float("nan")

    out: dict[str, Any] = {"n": int(len(t)), "n_weak": int(weak.sum()), "bin_edges": list(bins),
                           "shell_d_A": [float(np.mean(table["DHKL"].to_numpy()[shell == s])) if np.any(shell == s)
                                         else float("nan") for s in range(n_shells)]}
    for name, sig in (("I", "SIGI"), ("I_SUM", "SIGI_SUM"), ("IPR", "SIGIPR")):
        if name not in table:
            continue
        est, err = table[name].to_numpy(), table[sig].to_numpy()
        out[name] = {"cc": cc(est, t), "cc_weak": cc(est[weak], t[weak]),
                     "z_std": float(np.std((est - t) / np.maximum(err, 1e-12))),
                     "cc_shells": [cc(est[shell == s], t[shell == s]) for s in range(n_shells)],
                     "cc_bins": [cc(est[which == k], t[which == k]) for k in range(len(bins) - 1)],
                     "n_bins": [int(np.sum(which == k)) for k in range(len(bins) - 1)]}
    return out


# --------------------------------------------------------------------------- output files
def crystal_from_attrs(shoeboxes_attrs: dict[str, Any], cell: Any = None, space_group: Any = None
                       ) -> tuple[list[float], str]:
    """(cell, space group) for the output: given values, else the shoebox files' crystal."""
    crystal = shoeboxes_attrs.get("crystal") if isinstance(shoeboxes_attrs.get("crystal"), dict) else {}
    cell = cell if cell is not None else crystal.get("cell")
    space_group = space_group if space_group is not None else crystal.get("space_group")
    if cell is None or space_group is None:
        raise ConfigError("the shoeboxes carry no crystal (cell and space group); give --cell and --space-group")
    return [float(v) for v in cell], str(space_group)


def _atomic(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_reflections_hdf5(path: str | Path, table: pd.DataFrame, *, cell: Sequence[float], space_group: str,
                           rejected: Sequence[tuple[int, str]] = (), attrs: dict[str, Any] | None = None) -> Path:
    """The reflection table as HDF5: group ``reflections`` (one 1-D dataset per column, plus ``row``),
    group ``rejected`` (``row``, ``reason``), attributes cell, space_group, xrais_version, created, and ``attrs``."""
    import h5py

    path = Path(path)
    tmp = _atomic(path)
    try:
        with h5py.File(tmp, "w") as f:
            g = f.create_group("reflections")
            g.create_dataset("row", data=table.index.to_numpy().astype(np.int64))
            for name in table.columns:
                g.create_dataset(name, data=table[name].to_numpy())
            rej = f.create_group("rejected")
            rej.create_dataset("row", data=np.asarray([r for r, _ in rejected], dtype=np.int64))
            rej.create_dataset("reason", data=np.asarray([s for _, s in rejected], dtype=object),
                               dtype=h5py.string_dtype("utf-8"))
            for target in (f.attrs, g.attrs):
                target["cell"] = np.asarray(cell, dtype=np.float64)
                target["space_group"] = space_group
            f.attrs["format"] = "xrais-reflections-1"
            f.attrs["xrais_version"] = __version__
            f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            for key, value in (attrs or {}).items():
                f.attrs[key] = json.dumps(value, default=str) if isinstance(value, (dict, list, tuple)) else value
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_reflections_mtz(path: str | Path, table: pd.DataFrame, *, cell: Sequence[float], space_group: str,
                          wavelength_A: float | None = None, title: str = "xrais variational integration") -> Path:
    """The reflection table as an unmerged MTZ (gemmi): H, K, L in the asymmetric unit with M/ISYM,
    BATCH, then every other numeric column (I, SIGI: type J, Q; BATCH: B; the rest R), and one
    batch header per BATCH (cell, wavelength, dataset, spindle range of its reflections; see
    :func:`~xrais.models.variational.wilson.make_mtz_batch`)."""
    import gemmi

    from xrais.models.variational.wilson import make_mtz_batch, reduce_to_asu_array

    path = Path(path)
    sg = gemmi.SpaceGroup(space_group)
    hkl = table[["H", "K", "L"]].to_numpy(np.int32)
    asu, isym = reduce_to_asu_array(hkl, sg)
    mtz = gemmi.Mtz()
    mtz.spacegroup = sg
    mtz.title = title
    mtz.history = [f"xrais {__version__}"]
    ds = mtz.add_dataset("xrais")
    ds.project_name, ds.crystal_name = "xrais", "crystal"
    ds.wavelength = float(wavelength_A if wavelength_A is not None else
                          (table["WAVELENGTH"].iloc[0] if "WAVELENGTH" in table and len(table) else 0.0))
    mtz.set_cell_for_all(gemmi.UnitCell(*cell))
    columns = ["H", "K", "L", "M/ISYM", "BATCH"] + [c for c in table.columns if c not in ("H", "K", "L", "BATCH")]
    data = [asu.astype(np.float32), np.asarray(isym, np.float32)[:, None],
            table["BATCH"].to_numpy(np.float32)[:, None]]
    for name in columns:
        if name in ("H", "K", "L", "M/ISYM", "BATCH"):
            mtz.add_column(name, _MTZ_TYPES[name])
            continue
        mtz.add_column(name, _MTZ_TYPES.get(name, "Q" if name.startswith("SIG") else "R"))
        data.append(table[name].to_numpy(np.float32)[:, None])
    mtz.set_data(np.ascontiguousarray(np.hstack(data)))
    batch = table["BATCH"].to_numpy(np.int64)
    rot = table["ROT"].to_numpy(np.float64) if "ROT" in table else None
    for number in np.unique(batch):
        rows = batch == number
        wavelength = float(np.median(table["WAVELENGTH"].to_numpy()[rows])) if "WAVELENGTH" in table else ds.wavelength
        phi = (float(rot[rows].min()), float(rot[rows].max())) if rot is not None else None
        mtz.batches.append(make_mtz_batch(int(number), mtz.cell, wavelength, dataset_id=ds.id, phi_range_deg=phi,
                                          title=f"image {int(number) - 1}"))
    tmp = _atomic(path)
    try:
        mtz.write_to_file(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def plot_integration(table: pd.DataFrame, path: str | Path, *, truth: str = "I_TRUE_BOX") -> Path:
    """Two panels (matplotlib Agg): estimated vs true intensity (log–log), and CC to the truth by resolution shell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = integration_metrics(table, truth=truth)
    t = table[truth].to_numpy()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.8))
    lo = max(float(np.percentile(t[t > 0], 1)) if np.any(t > 0) else 1e-2, 1e-2)
    hi = float(max(t.max(initial=1.0), lo * 10))
    styles = {"I": ("xrais-variational", "C0"), "I_SUM": ("summation", "C1"), "IPR": ("profile fitting", "C2")}
    for name, (label, colour) in styles.items():
        if name in table:
            ax1.scatter(np.clip(t, lo, None), np.clip(table[name].to_numpy(), lo, None), s=3, alpha=0.4, color=colour,
                        label=f"{label} (CC {metrics[name]['cc']:.4f})")
            ax2.plot(metrics["shell_d_A"], metrics[name]["cc_shells"], "o-", color=colour, label=label)
    ax1.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax1.set(xscale="log", yscale="log", xlabel=f"true intensity ({truth}), photons", ylabel="estimated intensity, photons",
            title="intensity vs truth")
    ax1.legend(fontsize=8)
    ax2.set(xlabel="resolution shell, mean d (Å)", ylabel="CC to the truth", title="CC by resolution")
    ax2.invert_xaxis()
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
