"""The structure bank: the crystals a training set draws its images from, each |F| table made once.

XRAIS drew each image's crystal from a bank of about 120 structures (xrais.txt Appendix A); a
new structure per image would spend most of the image's time on one FFT. The bank holds
``structure_bank_size`` random-atom structures, entry ``j`` fixed by ``(structure_bank_seed, j)``
alone (its space group from ``space_group_choices``, its cell volume log-uniform in
``cell_volume_A3_range``, its atoms), or the PDB/mmCIF files of ``structures_dir``. Each entry's
|F| (B = 0) is computed once, on the Miller box that reaches the smallest d any configured
detector sees, and kept: in memory (least recently used first out, within
``structure_cache_mb``) and, when ``structure_cache_dir`` is set, on disk under a name made from
its content (space group, cell, atoms' seed, d_min, file bytes), read back memory-mapped so
worker processes share one copy. Each image then applies its own B factor (and a cell jittered
by ``cell_jitter_fraction``) to the shared table.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from xrais.geometry import DETECTOR_CATALOG, Beam, Detector
from xrais.simulate.config import SimulationConfig
from xrais.simulate.structure_factors import StructureFactors

__all__ = ["BankEntry", "StructureBank", "bank_entry", "structure_bank_for", "config_d_min_A", "coarsened_d_min_A"]

log = logging.getLogger(__name__)

#: Changes whenever the |F| computation changes, so that old disk-cached tables are not reused.
_TABLE_VERSION = 1


@dataclass(frozen=True)
class BankEntry:
    """One crystal of the bank."""

    index: int
    name: str
    """label: ``bank017`` for random-atom entries, the file name for files"""
    space_group: str
    """Hermann–Mauguin symbol; '' for files until read"""
    cell: tuple[float, ...]
    """(a, b, c, α, β, γ) in Å and degrees; () for files until read"""
    path: str = ""
    atoms_seed: int = 0


def coarsened_d_min_A(cell: Sequence[float], d_min_A: float, max_cells: int) -> float:
    """``d_min_A`` raised (by 5 % steps) until the |F| box of ``cell`` holds at most ``max_cells``."""
    d = float(d_min_A)
    while math.prod(2 * math.floor(edge / d) + 1 for edge in cell[:3]) > max_cells:
        d *= 1.05
    return d


def config_d_min_A(config: SimulationConfig) -> float:
    """The smallest d-spacing (Å) any image of ``config`` can record: its detectors' far corners.

    Taken at the shortest distance with the beam centre moved as far as the configured offset
    allows, over every detector choice.
    """
    from xrais.simulate.image import detector_d_min_A

    beam = Beam(wavelength_A=config.wavelength_A)
    best = math.inf
    for name in config.detector_choices:
        entry = DETECTOR_CATALOG[name]
        n_fast, n_slow = entry.image_size
        off = config.beam_center_offset_mm / entry.pixel_size_mm
        for sf in (-1.0, 1.0):
            for ss in (-1.0, 1.0):
                det = Detector.from_catalog(name, distance_mm=config.distance_mm_range[0],
                                            beam_center_px=(n_fast / 2.0 + sf * off, n_slow / 2.0 + ss * off))
                best = min(best, detector_d_min_A(det, beam))
    return best


def bank_entry(config: SimulationConfig, index: int, structures: Sequence[Path] = ()) -> BankEntry:
    """Entry ``index`` of the bank of ``config``: a file of ``structures``, or a random-atom crystal."""
    if structures:
        path = Path(structures[index % len(structures)])
        return BankEntry(index=index, name=path.name, space_group="", cell=(), path=str(path))
    from xrais.simulate.sampler import random_cell

    rng = np.random.default_rng(np.random.SeedSequence(int(config.structure_bank_seed), spawn_key=(int(index),)))
    space_group = str(rng.choice(config.space_group_choices))
    lo, hi = config.cell_volume_A3_range
    volume = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    cell = random_cell(space_group, volume, rng)
    atoms_seed = int(rng.integers(2**32))
    return BankEntry(index=index, name=f"bank{index:03d}", space_group=space_group, cell=cell, atoms_seed=atoms_seed)


class StructureBank:
    """|F| tables (B = 0) of a configuration's bank entries, each computed once.

    Parameters
    ----------
    config : SimulationConfig
        Gives the entries (:func:`bank_entry`), d_min (:func:`config_d_min_A`), the grid
        limit, the memory budget and the disk cache folder.
    structures : sequence of paths, optional
        The PDB/mmCIF files of ``config.structures_dir`` (default: listed from it).

    Attributes
    ----------
    n_computed : int
        Tables computed by this bank (each one FFT); tables read from the disk cache do not count.
    """

    def __init__(self, config: SimulationConfig, structures: Sequence[Path] | None = None) -> None:
        from xrais.simulate.sampler import list_structures

        self.config = config
        self.structures = list(list_structures(config.structures_dir) if structures is None else structures)
        self.d_min_A = config_d_min_A(config)
        self.cache_dir = Path(config.structure_cache_dir).expanduser() if config.structure_cache_dir else None
        self.budget_bytes = int(config.structure_cache_mb * 2**20)
        self.n_computed = 0
        self._tables: OrderedDict[int, tuple[StructureFactors, tuple[float, ...], str]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.structures) if self.structures else int(self.config.structure_bank_size)

    def entry(self, index: int) -> BankEntry:
        """Entry ``index`` (see :func:`bank_entry`)."""
        return bank_entry(self.config, index, self.structures)

    def table(self, index: int) -> tuple[StructureFactors, tuple[float, ...], str]:
        """|F| with B = 0, the cell and the space group of entry ``index``."""
        with self._lock:
            hit = self._tables.get(index)
            if hit is not None:
                self._tables.move_to_end(index)
                return hit
        value = self._load_or_compute(self.entry(index))
        with self._lock:
            self._tables[index] = value
            while len(self._tables) > 1 and sum(t[0].amplitudes.nbytes for t in self._tables.values()) > \
                    self.budget_bytes:
                self._tables.popitem(last=False)
        return value

    def _load_or_compute(self, entry: BankEntry) -> tuple[StructureFactors, tuple[float, ...], str]:
        key = self._key(entry)
        path = self.cache_dir / f"F_{key}.npy" if self.cache_dir is not None else None
        meta = path.with_suffix(".json") if path is not None else None
        if path is not None and path.is_file() and meta.is_file():
            try:
                info = json.loads(meta.read_text())
                amplitudes = np.load(path, mmap_mode="r", allow_pickle=False)
                sf = StructureFactors(np.asarray(amplitudes), tuple(info["hkl_min"]), 0.0, info["source"])
                return sf, tuple(info["cell"]), str(info["space_group"])
            except (OSError, ValueError, KeyError) as exc:
                log.warning("structure cache %s unreadable (%s); computing it again", path.name, exc)
        sf, cell, space_group = self._compute(entry)
        self.n_computed += 1
        if path is not None:
            self._store(path, meta, sf, cell, space_group)
        return sf, cell, space_group

    def _compute(self, entry: BankEntry) -> tuple[StructureFactors, tuple[float, ...], str]:
        max_cells = self.config.max_structure_factor_cells
        if entry.path:
            import gemmi

            st = gemmi.read_structure(entry.path)
            cell = (st.cell.a, st.cell.b, st.cell.c, st.cell.alpha, st.cell.beta, st.cell.gamma)
            d = coarsened_d_min_A(cell, self.d_min_A, max_cells)
            return StructureFactors.from_structure(st, d_min_A=d, b_factor_A2=0.0), cell, st.spacegroup_hm
        d = coarsened_d_min_A(entry.cell, self.d_min_A, max_cells)
        sf = StructureFactors.random_wilson(entry.cell, entry.space_group, d_min_A=d, seed=entry.atoms_seed)
        return sf, entry.cell, entry.space_group

    def _key(self, entry: BankEntry) -> str:
        spec: dict[str, object] = {"version": _TABLE_VERSION, "d_min_A": round(self.d_min_A, 6),
                                   "max_cells": self.config.max_structure_factor_cells}
        if entry.path:
            spec["file_sha256"] = hashlib.sha256(Path(entry.path).read_bytes()).hexdigest()
        else:
            spec.update(space_group=entry.space_group, cell=[round(v, 9) for v in entry.cell], seed=entry.atoms_seed)
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]

    @staticmethod
    def _store(path: Path, meta: Path, sf: StructureFactors, cell: tuple[float, ...], space_group: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        suffix = f".{os.getpid()}.tmp"
        tmp = path.with_name(path.name + suffix)
        with tmp.open("wb") as fh:
            np.save(fh, np.ascontiguousarray(sf.amplitudes, dtype=np.float32), allow_pickle=False)
        tmp.replace(path)
        info = {"hkl_min": list(sf.hkl_min), "source": sf.source, "cell": list(cell), "space_group": space_group}
        tmp_meta = meta.with_name(meta.name + suffix)
        tmp_meta.write_text(json.dumps(info))
        tmp_meta.replace(meta)


_banks: OrderedDict[str, StructureBank] = OrderedDict()
_banks_lock = threading.Lock()


def structure_bank_for(config: SimulationConfig) -> StructureBank:
    """This process's bank for ``config`` (one per distinct configuration, the last few kept)."""
    key = config.to_json()
    with _banks_lock:
        bank = _banks.get(key)
        if bank is None:
            bank = _banks[key] = StructureBank(config)
            while len(_banks) > 4:
                _banks.popitem(last=False)
        else:
            _banks.move_to_end(key)
        return bank
