"""Scale and merge unmerged reflections with the variational scaler; write the merged MTZ.

:func:`merge_table` runs the whole job on an in-memory table (``xrais merge``):
held-out test images (10 % by default), epochs of gradient steps of a few images each until the
loss settles, two half-data-set models for CC½, and the statistics of
:mod:`xrais.infer.merge_stats`. :class:`OnlineMerger` is the part that also serves the streaming
pipeline: it fits its normalisation on the first images it is given, then takes one gradient
step per batch of images as they come, and can save and restore its whole state.

The merged table is a reciprocalspaceship ``DataSet`` of the observed unique reflections in the
ASU: F, SIGF (posterior mean and SD of |F|), I, SIGI (of |F|²), N (observations), and with
anomalous data F(+), SIGF(+), F(−), SIGF(−), N(+), N(−), DANO, SIGDANO. Amplitudes are on the
scale of the input intensities (F = √I). :func:`write_merged_mtz` writes it with gemmi.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import gemmi
import numpy as np
import pandas as pd
import reciprocalspaceship as rs
import torch
from pydantic import BaseModel, ConfigDict, Field

from xrais._version import __version__
from xrais.errors import ConfigError, DatasetError, RunInterrupted
from xrais.models.checkpoint import save_torch_state
from xrais.parallel import torch_device
from xrais.infer import merge_stats as ms
from xrais.models.variational.scaler import (
    ReflectionBatch,
    ScalerConfig,
    ScalerTrainer,
    VariationalScaler,
    build_scaler,
    fit_posterior_with_fixed_scales,
)
from xrais.models.variational.wilson import UniqueReflections, WilsonShells, fit_wilson_shells

__all__ = [
    "MergeConfig",
    "Observations",
    "OnlineMerger",
    "MergeResult",
    "prepare_observations",
    "merge_table",
    "fit_half_datasets",
    "compute_merge_statistics",
    "make_truth_from_table",
    "make_merged_dataset",
    "split_images",
    "train_epochs",
    "write_merged_mtz",
    "write_statistics_csv",
]

log = logging.getLogger(__name__)


class MergeConfig(BaseModel):
    """How to scale and merge: the scaler's hyperparameters plus the training schedule and statistics."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scaler: ScalerConfig = Field(default_factory=ScalerConfig, description="model hyperparameters")
    anomalous: bool = Field(False, description="merge Friedel mates separately (F(+), F(−))")
    d_min_A: float | None = Field(None, gt=0, description="high-resolution limit (default: the data's)")
    metadata_columns: tuple[str, ...] = Field(
        ("INV_D2", "XDET", "YDET", "BATCH", "WAVELENGTH"),
        description="per-observation inputs of the scale model (INV_D2 = 1/d², Å⁻²; other names are table columns)")
    max_epochs: int = Field(30, ge=1, description="most passes over the training images")
    min_epochs: int = Field(4, ge=1, description="fewest passes before the loss may count as settled")
    tolerance: float = Field(2e-3, ge=0, description="stop when an epoch's mean loss changes by less than this "
                                                     "fraction of the previous epoch's")
    polish_epochs: int = Field(2, ge=0, description="epochs at a tenth of the learning rates once the loss has "
                                                    "settled (or max_epochs passed), to quiet the stochastic noise")
    test_fraction: float = Field(0.1, ge=0, lt=1, description="fraction of images held out for CCpred")
    n_shells: int = Field(10, ge=1, description="resolution shells of the statistics")
    half_dataset_steps: int = Field(300, ge=0, description="gradient steps of each half-data-set model (0: no CC½)")
    warmup_images: int = Field(64, ge=1, description="images that fix the normalisation and Wilson Σ (streaming)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="torch device")
    seed: int = Field(0, ge=0, description="seed of the image split and shuffling")


@dataclass
class Observations:
    """Observations as arrays, grouped by image (rows of one image are contiguous).

    Attributes
    ----------
    refl_id : ndarray (n,), int64 — row in the unique-reflection list.
    image : ndarray (n,), int64 — global image number.
    intensity, sigma : ndarray (n,), float64 — photons.
    metadata : ndarray (n, m), float64
    images : ndarray (b,), int64 — the distinct images, in storage order.
    starts : ndarray (b + 1,), int64 — rows of images[k] are starts[k]:starts[k+1].
    """

    refl_id: np.ndarray
    image: np.ndarray
    intensity: np.ndarray
    sigma: np.ndarray
    metadata: np.ndarray
    images: np.ndarray = field(init=False)
    starts: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        order = np.argsort(self.image, kind="stable")
        if np.any(order != np.arange(len(order))):
            for name in ("refl_id", "image", "intensity", "sigma", "metadata"):
                setattr(self, name, getattr(self, name)[order])
        self.images, first = np.unique(self.image, return_index=True)
        self.starts = np.append(first, len(self.image)).astype(np.int64)
        self._row_of = {int(im): k for k, im in enumerate(self.images)}

    def __len__(self) -> int:
        return len(self.refl_id)

    def rows(self, images: Sequence[int]) -> np.ndarray:
        """Row numbers of the given images' observations."""
        parts = [np.arange(self.starts[self._row_of[int(i)]], self.starts[self._row_of[int(i)] + 1])
                 for i in images if int(i) in self._row_of]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def batch(self, images: Sequence[int], device: torch.device) -> ReflectionBatch:
        rows = self.rows(images)
        return ReflectionBatch.from_arrays(self.refl_id[rows], self.image[rows], self.intensity[rows],
                                           self.sigma[rows], self.metadata[rows], device=device)

    def subset(self, images: Sequence[int]) -> "Observations":
        rows = self.rows(images)
        return Observations(self.refl_id[rows], self.image[rows], self.intensity[rows], self.sigma[rows],
                            self.metadata[rows])

    @classmethod
    def concatenate(cls, parts: Sequence["Observations"]) -> "Observations":
        return cls(*(np.concatenate([getattr(p, n) for p in parts]) for n in
                     ("refl_id", "image", "intensity", "sigma", "metadata")))


def prepare_observations(table: pd.DataFrame, unique: UniqueReflections,
                         metadata_columns: Sequence[str]) -> Observations:
    """Map a standard reflection table onto the unique list; drop rows outside it (beyond d_min).

    Raises
    ------
    DatasetError
        A metadata column that is not in the table, or no observation inside the list.
    """
    hkl = table[["H", "K", "L"]].to_numpy(np.int32)
    friedel = np.where(table["M/ISYM"].to_numpy(np.int64) % 256 % 2 == 1, 1, -1)
    refl_id = unique.lookup(hkl, friedel)
    keep = refl_id >= 0
    columns = []
    for name in metadata_columns:
        if name == "INV_D2":
            columns.append(1.0 / table["DHKL"].to_numpy(np.float64) ** 2)
        elif name in table.columns:
            columns.append(table[name].to_numpy(np.float64))
        else:
            raise DatasetError(f"metadata column {name!r} is not in the reflection table; "
                               f"columns are {', '.join(map(str, table.columns))}")
    metadata = np.stack(columns, axis=1) if columns else np.zeros((len(table), 0))
    if not keep.any():
        raise DatasetError("no observation lies inside the unique-reflection list (check d_min and the space group)")
    return Observations(refl_id[keep], table["IMAGE"].to_numpy(np.int64)[keep],
                        table["I"].to_numpy(np.float64)[keep], table["SIGI"].to_numpy(np.float64)[keep],
                        metadata[keep])


class OnlineMerger:
    """A variational scaler over a fixed list of unique reflections, trained batch by batch.

    Parameters
    ----------
    unique : UniqueReflections
    config : MergeConfig
    n_metadata : int — metadata columns per observation.
    """

    def __init__(self, unique: UniqueReflections, config: MergeConfig, n_metadata: int) -> None:
        self.unique, self.config, self.n_metadata = unique, config, int(n_metadata)
        self.device = torch_device(config.device)
        self.model: VariationalScaler | None = None
        self.trainer: ScalerTrainer | None = None
        self.wilson: WilsonShells | None = None

    @property
    def ready(self) -> bool:
        return self.model is not None

    def initialize(self, obs: Observations) -> None:
        """Fit the intensity divisor, metadata standardisation and Wilson Σ on ``obs``; build the model."""
        intensity_scale = float(np.mean(obs.intensity))
        if not intensity_scale > 0:
            raise DatasetError(f"mean intensity of the first {len(obs.images)} images is {intensity_scale:.4g}; "
                               "expected > 0")
        cfg = self.config.scaler
        inv_d2 = 1.0 / self.unique.d_A ** 2
        if cfg.wilson_shells > 0:
            self.wilson = fit_wilson_shells(inv_d2[obs.refl_id], obs.intensity / intensity_scale,
                                            self.unique.epsilon[obs.refl_id], cfg.wilson_shells)
        else:
            self.wilson = WilsonShells.flat()
        self._build(intensity_scale, obs.metadata.mean(0), obs.metadata.std(0))

    def _build(self, intensity_scale: float, mean: np.ndarray, std: np.ndarray) -> None:
        inv_d2 = 1.0 / self.unique.d_A ** 2
        self.model = build_scaler(centric=self.unique.centric, epsilon=self.unique.epsilon,
                                  wilson_sigma=self.wilson(inv_d2), n_metadata=self.n_metadata,
                                  config=self.config.scaler)
        self.model.set_normalization(intensity_scale, mean, std)
        self.model.to(self.device)
        self.trainer = ScalerTrainer(self.model, self.config.scaler)

    def step(self, obs: Observations, images: Sequence[int]) -> dict[str, float]:
        """One gradient step on the given images' observations."""
        if self.trainer is None:
            raise ConfigError("OnlineMerger.step before initialize()")
        return self.trainer.step(obs.batch(images, self.device))

    @torch.no_grad()
    def scale_parameters(self, obs: Observations, images_per_chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """log-normal q(Σ) location and scale of every observation (rows in ``obs`` order)."""
        self.model.eval()
        loc = np.empty(len(obs), dtype=np.float64)
        scale = np.empty(len(obs), dtype=np.float64)
        for k in range(0, len(obs.images), images_per_chunk):
            chunk = obs.images[k:k + images_per_chunk]
            rows = obs.rows(chunk)
            mu, s = self.model.scale_parameters(obs.batch(chunk, self.device))
            loc[rows], scale[rows] = mu.cpu().numpy(), s.cpu().numpy()
        return loc, scale

    def predict(self, obs: Observations) -> np.ndarray:
        """E[Σ]·E[F²] of every observation, photons."""
        loc, scale = self.scale_parameters(obs)
        f2 = self.model.surrogate.moments()["I"][obs.refl_id]
        return np.exp(loc + 0.5 * scale ** 2) * f2 * float(self.model.intensity_scale)

    def moments(self) -> dict[str, np.ndarray]:
        """F, SIGF, I, SIGI of every unique reflection, in the input's units."""
        k = float(self.model.intensity_scale)
        m = self.model.surrogate.moments()
        return {"F": m["F"] * math.sqrt(k), "SIGF": m["SIGF"] * math.sqrt(k), "I": m["I"] * k, "SIGI": m["SIGI"] * k}

    def state_dict(self) -> dict[str, Any]:
        return {"trainer": self.trainer.state_dict() if self.trainer else None,
                "wilson": self.wilson.to_dict() if self.wilson else None,
                "n_metadata": self.n_metadata}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("trainer") is None:
            return
        self.wilson = WilsonShells.from_dict(state["wilson"])
        self._build(1.0, np.zeros(self.n_metadata), np.ones(self.n_metadata))
        self.trainer.load_state_dict(state["trainer"])


def make_merged_dataset(unique: UniqueReflections, moments: dict[str, np.ndarray],
                        n_observations: np.ndarray) -> rs.DataSet:
    """The merged DataSet (see the module docstring) of the reflections observed at least once."""
    n_observations = np.asarray(n_observations)
    if not unique.anomalous:
        seen = n_observations > 0
        frame = pd.DataFrame({"H": unique.hkl[seen, 0], "K": unique.hkl[seen, 1], "L": unique.hkl[seen, 2],
                              "F": moments["F"][seen], "SIGF": moments["SIGF"][seen],
                              "I": moments["I"][seen], "SIGI": moments["SIGI"][seen],
                              "N": n_observations[seen]})
    else:
        plus = np.flatnonzero(unique.friedel > 0)
        minus_of = np.full(len(unique), -1)
        minus_rows = np.flatnonzero(unique.friedel < 0)
        minus_of[plus] = plus                                   # centric: F(−) is F(+)
        found = unique.lookup(unique.hkl[minus_rows], np.ones(len(minus_rows)))
        minus_of[found] = minus_rows
        p, m = plus, minus_of[plus]
        centric = unique.centric[p]
        n_p = n_observations[p]
        n_m = np.where(centric, n_observations[p], n_observations[m])
        seen_p, seen_m = n_p > 0, n_m > 0

        def pick(key: str, rows: np.ndarray, seen: np.ndarray) -> np.ndarray:
            return np.where(seen, moments[key][rows], np.nan)

        fp, sfp = pick("F", p, seen_p), pick("SIGF", p, seen_p)
        fm, sfm = pick("F", m, seen_m), pick("SIGF", m, seen_m)
        ip, sip = pick("I", p, seen_p), pick("SIGI", p, seen_p)
        im, sim = pick("I", m, seen_m), pick("SIGI", m, seen_m)
        with np.errstate(invalid="ignore"):
            both = seen_p & seen_m & ~centric
            F = np.where(both, 0.5 * (fp + fm), np.where(seen_p, fp, fm))
            SIGF = np.where(both, 0.5 * np.sqrt(sfp ** 2 + sfm ** 2), np.where(seen_p, sfp, sfm))
            I = np.where(both, 0.5 * (ip + im), np.where(seen_p, ip, im))
            SIGI = np.where(both, 0.5 * np.sqrt(sip ** 2 + sim ** 2), np.where(seen_p, sip, sim))
            dano = np.where(both, fp - fm, np.nan)
            sigdano = np.where(both, np.sqrt(sfp ** 2 + sfm ** 2), np.nan)
        seen = seen_p | seen_m
        hkl = unique.hkl[p]
        frame = pd.DataFrame({"H": hkl[:, 0], "K": hkl[:, 1], "L": hkl[:, 2], "F": F, "SIGF": SIGF, "I": I,
                              "SIGI": SIGI, "N": np.where(centric, n_p, n_p + n_m),
                              "F(+)": fp, "SIGF(+)": sfp, "F(-)": np.where(centric, fp, fm),
                              "SIGF(-)": np.where(centric, sfp, sfm), "N(+)": n_p, "N(-)": n_m,
                              "DANO": dano, "SIGDANO": sigdano})[seen]
    frame = frame.reset_index(drop=True)
    ds = rs.DataSet(frame, cell=unique.cell, spacegroup=unique.space_group, merged=True)
    return ds.set_index(["H", "K", "L"])


_MERGED_TYPES = {"F": "F", "SIGF": "Q", "I": "J", "SIGI": "Q", "N": "I", "F(+)": "G", "SIGF(+)": "L",
                 "F(-)": "G", "SIGF(-)": "L", "N(+)": "I", "N(-)": "I", "DANO": "D", "SIGDANO": "Q"}


def write_merged_mtz(merged: rs.DataSet, path: str | Path, *, wavelength_A: float = 0.0,
                     history: Sequence[str] = ()) -> Path:
    """Write a merged DataSet as an MTZ file with gemmi (atomic: temporary file, then rename).

    Parameters
    ----------
    merged : DataSet indexed by H, K, L with the columns of :func:`make_merged_dataset`.
    path : output path.
    wavelength_A : dataset wavelength recorded in the header (0 when unknown).
    history : lines for the MTZ history (the xrais version is always recorded).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mtz = gemmi.Mtz(with_base=True)
    mtz.spacegroup = merged.spacegroup
    mtz.set_cell_for_all(merged.cell)
    mtz.datasets[0].wavelength = float(wavelength_A)
    ds = mtz.add_dataset("xrais")
    ds.wavelength = float(wavelength_A)
    labels = [c for c in _MERGED_TYPES if c in merged.columns]
    for label in labels:
        mtz.add_column(label, _MERGED_TYPES[label])
    frame = merged.reset_index()
    data = np.column_stack([frame[["H", "K", "L"]].to_numpy(np.float64)]
                           + [frame[c].to_numpy(np.float64) for c in labels])
    mtz.set_data(data.astype(np.float32))
    mtz.history = [f"xrais {__version__} variational merge", *history][:30]
    tmp = path.with_name(path.name + ".part")
    mtz.write_to_file(str(tmp))
    os.replace(tmp, path)
    return path


def write_statistics_csv(statistics: pd.DataFrame, path: str | Path) -> Path:
    """Write the per-shell statistics table as CSV (atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    statistics.to_csv(tmp, index=False, float_format="%.6g")
    os.replace(tmp, path)
    return path


def make_truth_from_table(table: pd.DataFrame, unique: UniqueReflections) -> np.ndarray | None:
    """True |F| of every unique reflection from the table's F_TRUE column (NaN where unobserved);
    None when the table has no such column."""
    if "F_TRUE" not in table.columns:
        return None
    hkl = table[["H", "K", "L"]].to_numpy(np.int32)
    friedel = np.where(table["M/ISYM"].to_numpy(np.int64) % 256 % 2 == 1, 1, -1)
    rid = unique.lookup(hkl, friedel)
    keep = rid >= 0
    f2 = table["F_TRUE"].to_numpy(np.float64)[keep] ** 2
    total = np.bincount(rid[keep], weights=f2, minlength=len(unique))
    count = np.bincount(rid[keep], minlength=len(unique))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.sqrt(total / count), np.nan)


def fit_half_datasets(merger: OnlineMerger, obs: Observations, *, steps: int, seed: int = 0
                      ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Two half-data-set models: scales frozen from the full model, q(F) refitted on each random half.

    Returns
    -------
    moments1, moments2 : dict of F, SIGF, I, SIGI per unique reflection (input units).
    n1, n2 : ndarray (R,) — observations of each reflection in each half.
    """
    model = merger.model
    loc, scale = merger.scale_parameters(obs)
    rng = np.random.default_rng([seed, 12345])
    images = rng.permutation(obs.images)
    halves = (images[: len(images) // 2], images[len(images) // 2:])
    k = float(model.intensity_scale)
    out_m, out_n = [], []
    for h, half in enumerate(halves):
        rows = obs.rows(half)
        dev = merger.device

        def t(x: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.as_tensor(x, dtype=dtype, device=dev)

        surrogate = fit_posterior_with_fixed_scales(
            model.prior, t(obs.refl_id[rows], torch.int64), t(obs.intensity[rows] / k),
            t(np.maximum(obs.sigma[rows] / k, 1e-6)), t(loc[rows]), t(scale[rows]),
            likelihood=model.likelihood, family=model.surrogate.family, kl_weight_F=model.kl_weight_F,
            steps=steps, seed=seed + h)
        m = surrogate.moments()
        out_m.append({"F": m["F"] * math.sqrt(k), "SIGF": m["SIGF"] * math.sqrt(k), "I": m["I"] * k,
                      "SIGI": m["SIGI"] * k})
        out_n.append(np.bincount(obs.refl_id[rows], minlength=len(merger.unique)))
    return out_m[0], out_m[1], out_n[0], out_n[1]


def _asu_pairs(unique: UniqueReflections) -> tuple[np.ndarray, np.ndarray]:
    """For anomalous lists: rows of F(+) and F(−) of each acentric ASU reflection."""
    minus_rows = np.flatnonzero(unique.friedel < 0)
    plus_rows = unique.lookup(unique.hkl[minus_rows], np.ones(len(minus_rows)))
    return plus_rows, minus_rows


def _mean_pairs(unique: UniqueReflections, values: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per ASU reflection (rows with friedel = +1): the observed-weighted mean of F(+)/F(−) values, and N."""
    plus = np.flatnonzero(unique.friedel > 0)
    value = np.where(n[plus] > 0, values[plus], 0.0)
    count = (n[plus] > 0).astype(np.float64)
    total_n = n[plus].astype(np.float64)
    if unique.anomalous:
        p, m = _asu_pairs(unique)
        pos = np.searchsorted(plus, p)
        seen_m = n[m] > 0
        np.add.at(value, pos[seen_m], values[m][seen_m])
        np.add.at(count, pos[seen_m], 1.0)
        np.add.at(total_n, pos, n[m].astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, value / count, np.nan), total_n


def compute_merge_statistics(merger: OnlineMerger, obs: Observations, train_images: np.ndarray,
                             test_images: np.ndarray, *, halves: tuple | None = None,
                             truth_F: np.ndarray | None = None) -> pd.DataFrame:
    """The statistics table of a merge (see :mod:`xrais.infer.merge_stats`).

    Parameters
    ----------
    merger : a trained OnlineMerger.
    obs : every observation (training and test images).
    train_images, test_images : image numbers of each set.
    halves : the result of :func:`fit_half_datasets` on the training images, or None (no CC½).
    truth_F : ndarray (R,), optional — true |F| of each unique reflection (NaN where unknown).
    """
    unique = merger.unique
    n_shells = merger.config.n_shells
    plus = np.flatnonzero(unique.friedel > 0)
    edges = ms.make_shell_edges(unique.d_A[plus], n_shells)
    n_shells = len(edges) - 1
    shell_all = ms.assign_shells(unique.d_A, edges)
    shell_plus = shell_all[plus]

    train = obs.subset(train_images)
    n_obs = np.bincount(train.refl_id, minlength=len(unique))
    columns: dict[str, tuple[np.ndarray, float]] = {}
    observed = n_obs > 0
    columns["n_observed"] = (np.bincount(shell_all[observed], minlength=n_shells).astype(float), float(observed.sum()))
    columns["n_possible"] = (np.bincount(shell_all, minlength=n_shells).astype(float), float(len(unique)))
    columns["completeness"] = (ms.compute_completeness(observed, shell_all, n_shells), float(observed.mean()))
    columns["multiplicity"] = (ms.compute_multiplicity(n_obs, shell_all, n_shells),
                               float(n_obs[observed].sum() / max(observed.sum(), 1)))
    moments = merger.moments()
    with np.errstate(invalid="ignore", divide="ignore"):
        isig = np.where(observed, moments["I"] / moments["SIGI"], np.nan)
    columns["I_over_SIGI"] = (np.array([np.nanmean(isig[shell_all == s]) if np.any(observed[shell_all == s])
                                        else np.nan for s in range(n_shells)]), float(np.nanmean(isig)))

    if halves is not None:
        m1, m2, n1, n2 = halves
        i1, _ = _mean_pairs(unique, m1["I"], n1)
        i2, _ = _mean_pairs(unique, m2["I"], n2)
        i1 = np.where(_mean_pairs(unique, np.ones(len(unique)), n1)[1] > 0, i1, np.nan)
        i2 = np.where(_mean_pairs(unique, np.ones(len(unique)), n2)[1] > 0, i2, np.nan)
        columns["CC_half"] = (ms.compute_cc_half(i1, i2, shell_plus, n_shells), ms._pearson(i1, i2))
        if unique.anomalous:
            p, m = _asu_pairs(unique)
            ok1 = (n1[p] > 0) & (n1[m] > 0)
            ok2 = (n2[p] > 0) & (n2[m] > 0)
            d1 = np.where(ok1, m1["F"][p] - m1["F"][m], np.nan)
            d2 = np.where(ok2, m2["F"][p] - m2["F"][m], np.nan)
            columns["CC_anom_half"] = (ms.compute_pearson_by_shell(d1, d2, shell_all[p], n_shells), ms._pearson(d1, d2))

    for name, images in (("CC_pred_test", test_images), ("CC_pred_train", train_images)):
        if len(images) == 0:
            continue
        sub = obs.subset(images)
        predicted = merger.predict(sub)
        per_shell, overall = ms.compute_cc_pred(predicted, sub.intensity, sub.image, shell_all[sub.refl_id], n_shells)
        columns[name] = (per_shell, overall)

    if truth_F is not None and np.isfinite(truth_F).any():
        f_merged, _ = _mean_pairs(unique, moments["F"], n_obs)
        f_true, _ = _mean_pairs(unique, np.nan_to_num(truth_F, nan=0.0), np.where(np.isfinite(truth_F), n_obs, 0))
        columns["CC_true"] = (ms.compute_pearson_by_shell(f_merged, f_true, shell_plus, n_shells),
                              ms._pearson(f_merged, f_true))
        if unique.anomalous:
            p, m = _asu_pairs(unique)
            ok = observed[p] & observed[m] & np.isfinite(truth_F[p]) & np.isfinite(truth_F[m])
            d = np.where(ok, moments["F"][p] - moments["F"][m], np.nan)
            d_true = np.where(ok, truth_F[p] - truth_F[m], np.nan)
            columns["CC_anom_true"] = (ms.compute_pearson_by_shell(d, d_true, shell_all[p], n_shells),
                                       ms._pearson(d, d_true))
    return ms.make_statistics_table(edges, columns)


@dataclass
class MergeResult:
    """What :func:`merge_table` returns."""

    merged: rs.DataSet
    statistics: pd.DataFrame
    history: pd.DataFrame
    merger: OnlineMerger
    observations: Observations
    train_images: np.ndarray
    test_images: np.ndarray


def split_images(images: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random (train, test) split of image numbers; at least one training image."""
    rng = np.random.default_rng([seed, 777])
    shuffled = rng.permutation(images)
    n_test = int(round(test_fraction * len(images))) if len(images) > 1 else 0
    n_test = min(n_test, len(images) - 1)
    return np.sort(shuffled[n_test:]), np.sort(shuffled[:n_test])


def merge_table(table: rs.DataSet, config: MergeConfig | None = None, *,
                truth_F: np.ndarray | None | Literal["auto"] = "auto",
                progress: Callable[[dict[str, float]], None] | None = None,
                stop: threading.Event | None = None,
                state_path: str | Path | None = None) -> MergeResult:
    """Scale and merge an unmerged reflection table.

    Parameters
    ----------
    table : the standard table of :mod:`xrais.infer.reflections`.
    config : MergeConfig, optional
    truth_F : true |F| per unique reflection for CC to the truth; "auto" takes it from an F_TRUE column.
    progress : called after every epoch with that epoch's record.
    stop : optional event; when set, training ends after the current epoch and
        :class:`~xrais.errors.RunInterrupted` is raised (the state is in ``state_path``).
    state_path : optional file for the training state, written after every epoch; when it
        exists (a stopped or killed merge of the same table and config) training goes on from it,
        to the same result as a merge never stopped.

    Returns
    -------
    MergeResult

    Raises
    ------
    ConfigError
        ``state_path`` holds the state of a merge of other observations or another config.
    RunInterrupted
        ``stop`` was set.
    """
    config = config or MergeConfig()
    d_min = config.d_min_A or float(table["DHKL"].min()) * (1 - 1e-6)
    unique = UniqueReflections(table.cell, table.spacegroup, d_min, anomalous=config.anomalous)
    obs = prepare_observations(table, unique, config.metadata_columns)
    if truth_F == "auto":
        truth_F = make_truth_from_table(table, unique)
    train_images, test_images = split_images(obs.images, config.test_fraction, config.seed)
    train = obs.subset(train_images)
    merger = OnlineMerger(unique, config, obs.metadata.shape[1])
    merger.initialize(train)
    key = _merge_key(obs, config)
    history: list[dict[str, float]] = []
    if state_path is not None and Path(state_path).exists():
        history = _resume_merge(merger, Path(state_path), key)

    records = list(history)

    def after_epoch(record: dict[str, float]) -> None:
        records.append(record)
        if state_path is not None:
            save_torch_state({"format": MERGE_STATE_FORMAT, "key": key, "merger": merger.state_dict(),
                              "history": records}, state_path)
        if progress is not None:
            progress(record)

    history = train_epochs(merger, train, config, history=history, truth_F=truth_F, progress=after_epoch,
                           stop=stop)
    if stop is not None and stop.is_set():
        raise RunInterrupted(getattr(stop, "signum", None) or signal.SIGTERM,
                             f"merge stopped after epoch {len(history)}" + (f" (state in {state_path})"
                                                                            if state_path is not None else ""))
    halves = fit_half_datasets(merger, train, steps=config.half_dataset_steps, seed=config.seed) \
        if config.half_dataset_steps > 0 and len(train_images) >= 2 else None
    stats = compute_merge_statistics(merger, obs, train_images, test_images, halves=halves, truth_F=truth_F)
    n_obs = np.bincount(train.refl_id, minlength=len(unique))
    merged = make_merged_dataset(unique, merger.moments(), n_obs)
    return MergeResult(merged, stats, pd.DataFrame(history), merger, obs, train_images, test_images)


MERGE_STATE_FORMAT = "xrais-merge-state-1"


def _merge_key(obs: Observations, config: MergeConfig) -> str:
    """A digest of the observations and the config: a saved state fits only the same merge."""
    import hashlib

    h = hashlib.sha256(config.model_dump_json().encode())
    for name in ("refl_id", "image", "intensity", "sigma", "metadata"):
        h.update(np.ascontiguousarray(getattr(obs, name)).tobytes())
    return h.hexdigest()


def _resume_merge(merger: OnlineMerger, path: Path, key: str) -> list[dict[str, float]]:
    """Load a saved merge state into ``merger``; the epoch records so far."""
    from xrais.errors import CheckpointError
    from xrais.models.checkpoint import load_run_state

    state = load_run_state(path, "a merge training state", MERGE_STATE_FORMAT, key,
                           other_run="the state of a merge of other reflections or options; remove it to start "
                                     "over, or merge the same files with the same options")
    try:
        merger.load_state_dict(state["merger"])
        history = [dict(r) for r in state["history"]]
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: merge state with missing or invalid fields ({type(exc).__name__})") from None
    log.info("%s: resuming the merge after epoch %d", path, len(history))
    return history


def train_epochs(merger: OnlineMerger, train: Observations, config: MergeConfig, *,
                 history: list[dict[str, float]] | None = None, truth_F: np.ndarray | None = None,
                 progress: Callable[[dict[str, float]], None] | None = None,
                 stop: threading.Event | None = None) -> list[dict[str, float]]:
    """Epochs of shuffled gradient steps until the mean loss settles (or ``max_epochs``).

    ``history`` holds the records of epochs already run (a resumed run goes on from there);
    epoch e shuffles with the seed (config.seed, e), so a resumed run repeats the same order.
    When ``stop`` is set the loop ends after the current epoch (and its ``progress`` call).
    """
    history = list(history or [])
    per_step = config.scaler.images_per_step
    t0 = time.perf_counter() - (history[-1]["seconds"] if history else 0.0)
    n_train = np.bincount(train.refl_id, minlength=len(merger.unique))
    n_polished = sum(1 for r in history if r.get("polish"))
    while n_polished < config.polish_epochs or (n_polished == 0 and len(history) < config.max_epochs
                                                and not _settled(history, config)):
        polish = len(history) >= config.max_epochs or _settled(history, config) or n_polished > 0
        epoch = len(history)
        _set_learning_rate_factor(merger.trainer, 0.1 if polish else 1.0)
        order = np.random.default_rng([config.seed, 4242, epoch]).permutation(train.images)
        losses = [merger.step(train, order[k:k + per_step])["loss"] for k in range(0, len(order), per_step)]
        record = {"epoch": epoch + 1, "steps": merger.trainer.steps, "loss": float(np.mean(losses)),
                  "seconds": time.perf_counter() - t0, "polish": int(polish)}
        n_polished += int(polish)
        if truth_F is not None:
            f = merger.moments()["F"]
            ok = (n_train > 0) & np.isfinite(truth_F)
            record["CC_true"] = float(np.corrcoef(f[ok], truth_F[ok])[0, 1]) if ok.sum() > 2 else float("nan")
        history.append(record)
        log.info("epoch %d: %s", epoch + 1, json.dumps({k: round(v, 5) for k, v in record.items()}))
        if progress is not None:
            progress(record)
        if stop is not None and stop.is_set():
            break
    _set_learning_rate_factor(merger.trainer, 1.0)
    return history


def _set_learning_rate_factor(trainer: ScalerTrainer, factor: float) -> None:
    base = (trainer.config.posterior_learning_rate, trainer.config.learning_rate)
    for group, lr in zip(trainer.optimizer.param_groups, base):
        group["lr"] = lr * factor


def _settled(history: list[dict[str, float]], config: MergeConfig) -> bool:
    history = [r for r in history if not r.get("polish")]
    if len(history) < max(config.min_epochs, 2):
        return False
    previous, last = history[-2]["loss"], history[-1]["loss"]
    return bool(abs(previous - last) <= config.tolerance * abs(previous))
