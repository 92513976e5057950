"""Variational merging of simulated lysozyme data and of real unmerged reflections; statistics by hand.

The simulated data are stills of the RTSAD lysozyme model (gemmi F to 3 Å): a random orientation
per image picks the reflections near the Ewald sphere, each image has a random scale and B
factor, the detector corners absorb, and Poisson plus read noise make I and σ.
"""

from __future__ import annotations

import math
import signal

import gemmi
import numpy as np
import pandas as pd
import pytest
import reciprocalspaceship as rs
import torch
from typer.testing import CliRunner

from xrais.errors import DatasetError
from xrais.infer import merge_stats as ms
from xrais.infer.merge import (
    MergeConfig,
    compute_merge_statistics,
    fit_half_datasets,
    merge_table,
    write_merged_mtz,
)
from xrais.infer.reflections import (
    ReflectionSimulationConfig,
    ReflectionSimulator,
    make_reflection_table,
    read_crystfel_stream,
    read_reflections,
    write_unmerged_mtz,
)
from xrais.models.variational.wilson import reduce_to_asu_array

STRUCTURE = "structures/RTSAD_HEWL_refine_25.pdb"
UNMERGED = "reflections/data_unmerged.mtz"
D_MIN_A = 3.0


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def simulator(shared_data) -> ReflectionSimulator:
    return ReflectionSimulator(ReflectionSimulationConfig(structure_path=str(shared_data(STRUCTURE)), n_images=250,
                                                          d_min_A=D_MIN_A, seed=11))


@pytest.fixture(scope="module")
def merged(simulator):
    torch.set_num_threads(1)
    table = simulator.table()
    return table, merge_table(table, MergeConfig(max_epochs=12, half_dataset_steps=150))


@pytest.fixture(scope="module")
def anomalous_merge(shared_data):
    torch.set_num_threads(1)
    sim = ReflectionSimulator(ReflectionSimulationConfig(structure_path=str(shared_data(STRUCTURE)), n_images=250,
                                                         d_min_A=D_MIN_A, fdoubleprime=4.0, seed=5))
    table = sim.table()
    return sim, merge_table(table, MergeConfig(anomalous=True, max_epochs=15, half_dataset_steps=150))


def _join_truth(merged: rs.DataSet, truth: pd.DataFrame) -> pd.DataFrame:
    return merged.reset_index().merge(truth, on=["H", "K", "L"], suffixes=("", "_true"))


def test_merge_recovers_true_F_to_the_resolution_limit(merged, simulator):
    table, result = merged
    joined = _join_truth(result.merged, simulator.truth())
    assert len(joined) == len(result.merged) > 2500
    assert np.corrcoef(joined["F"], joined["F_true"])[0, 1] >= 0.95
    # every resolution shell, the last (2.9–3.0 Å) included
    edges = ms.make_shell_edges(joined["DHKL"], 8)
    shell = ms.assign_shells(joined["DHKL"], edges)
    per_shell = ms.compute_pearson_by_shell(joined["F"], joined["F_true"], shell, 8)
    assert np.all(per_shell >= 0.95), per_shell
    assert joined["DHKL"].min() < D_MIN_A * 1.01
    # the statistics table says the same
    overall = result.statistics.set_index("shell").loc["overall"]
    assert overall["CC_true"] >= 0.95
    assert np.isfinite(joined["SIGF"]).all() and (joined["SIGF"] > 0).all()


def test_statistics_are_consistent_with_the_data(merged):
    table, result = merged
    stats = result.statistics.set_index("shell")
    train = table[table["IMAGE"].isin(result.train_images)]
    n_unique = len(train.groupby(["H", "K", "L"]))
    assert stats.loc["overall", "n_observed"] == n_unique == len(result.merged)
    assert stats.loc["overall", "multiplicity"] == pytest.approx(len(train) / n_unique)
    assert stats.loc["overall", "completeness"] == pytest.approx(n_unique / stats.loc["overall", "n_possible"])
    assert result.merged["N"].sum() == len(train)
    assert len(result.test_images) == round(0.1 * table["IMAGE"].nunique())
    assert not set(result.test_images) & set(result.train_images)
    assert stats.loc["overall", "CC_half"] > 0.95
    assert stats.loc["overall", "CC_pred_test"] > 0.9
    assert list(result.statistics["shell"])[-1] == "overall" and len(result.statistics) == 11
    assert result.history["loss"].iloc[-1] < result.history["loss"].iloc[0]


def test_cc_half_column_is_the_pearson_of_the_two_half_models(merged):
    _, result = merged
    merger, train = result.merger, result.observations.subset(result.train_images)
    m1, m2, n1, n2 = fit_half_datasets(merger, train, steps=150, seed=merger.config.seed)
    both = (n1 > 0) & (n2 > 0)
    assert both.sum() > 2000 and not np.array_equal(n1, n2)
    d = merger.unique.d_A
    stats = compute_merge_statistics(merger, result.observations, result.train_images, result.test_images,
                                     halves=(m1, m2, n1, n2))
    edges = np.concatenate([stats["d_max_A"].to_numpy()[:-1], [stats["d_min_A"].to_numpy()[-2]]])
    for s in range(len(edges) - 1):
        sel = both & (d <= edges[s]) & (d > edges[s + 1]) if s < len(edges) - 2 else both & (d <= edges[s])
        x, y = m1["I"][sel], m2["I"][sel]
        r = np.sum((x - x.mean()) * (y - y.mean())) / math.sqrt(np.sum((x - x.mean()) ** 2) * np.sum((y - y.mean()) ** 2))
        assert stats["CC_half"].iloc[s] == pytest.approx(r, abs=2e-3), s


def test_cc_half_by_hand():
    half1 = np.array([1.0, 2.0, 3.0, 1.0, 2.0, 3.0, np.nan, 5.0, 1.0])
    half2 = np.array([1.0, 2.0, 4.0, 3.0, 2.0, 1.0, 7.0, np.nan, 2.0])
    shell = np.array([0, 0, 0, 1, 1, 1, 0, 1, 2])
    cc = ms.compute_cc_half(half1, half2, shell, 3)
    # shell 0: x = 1 2 3, y = 1 2 4: Σdxdy = 3, Σdx² = 2, Σdy² = 14/3
    assert cc[0] == pytest.approx(3.0 / math.sqrt(2.0 * 14.0 / 3.0), abs=1e-12)
    assert cc[1] == pytest.approx(-1.0, abs=1e-12)
    assert math.isnan(cc[2])                     # one pair cannot give a correlation


def test_cc_pred_completeness_and_multiplicity_by_hand():
    predicted = np.array([1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0])
    observed = np.array([10.0, 20.0, 40.0, 30.0, 3.0, 2.0, 1.0])
    image = np.array([0, 0, 0, 0, 1, 1, 1])
    per_shell, overall = ms.compute_cc_pred(predicted, observed, image)
    # image 0: ranks 1 2 4 3 → ρ = 1 − 6·2/(4·15) = 0.8; image 1: ρ = −1
    assert overall == pytest.approx((0.8 - 1.0) / 2)
    assert per_shell[0] == pytest.approx(overall)
    shell = np.array([0, 0, 1, 1, 1, 2])
    observed_flags = np.array([True, False, True, True, False, False])
    assert ms.compute_completeness(observed_flags, shell, 3).tolist() == [0.5, 2 / 3, 0.0]
    counts = np.array([4, 0, 1, 2, 0, 0])
    assert ms.compute_multiplicity(counts, shell, 3)[:2].tolist() == [4.0, 1.5]
    assert math.isnan(ms.compute_multiplicity(counts, shell, 3)[2])


def test_anomalous_differences_are_recovered(anomalous_merge):
    sim, result = anomalous_merge
    joined = _join_truth(result.merged, sim.truth())
    acentric = joined.dropna(subset=["DANO"])
    assert len(acentric) > 1500
    d_true = acentric["F(+)_true"] - acentric["F(-)_true"]
    assert np.corrcoef(acentric["DANO"], d_true)[0, 1] >= 0.7
    # swapping the Friedel mates would reverse the sign
    assert np.corrcoef(acentric["F(+)"] - acentric["F(-)"], d_true)[0, 1] > 0
    stats = result.statistics.set_index("shell")
    assert stats.loc["overall", "CC_anom_true"] >= 0.7 and stats.loc["overall", "CC_true"] >= 0.95
    centric = joined[joined["DANO"].isna() & (joined["N(+)"] > 0)]
    assert (centric["F(+)"] == centric["F(-)"]).all()


def test_merged_mtz_reads_back_in_gemmi_and_reciprocalspaceship(anomalous_merge, tmp_path):
    sim, result = anomalous_merge
    path = write_merged_mtz(result.merged, tmp_path / "merged.mtz", wavelength_A=1.0)
    mtz = gemmi.read_mtz_file(str(path))
    assert mtz.spacegroup.hm == "P 43 21 2"
    assert mtz.cell.approx(sim.cell, 1e-4)
    types = {c.label: c.type for c in mtz.columns}
    assert types == {"H": "H", "K": "H", "L": "H", "F": "F", "SIGF": "Q", "I": "J", "SIGI": "Q", "N": "I",
                     "F(+)": "G", "SIGF(+)": "L", "F(-)": "G", "SIGF(-)": "L", "N(+)": "I", "N(-)": "I",
                     "DANO": "D", "SIGDANO": "Q"}
    assert mtz.nreflections == len(result.merged)
    ds = rs.read_mtz(str(path))
    assert ds.merged and ds.spacegroup.hm == "P 43 21 2"
    assert ds.cell.approx(sim.cell, 1e-4)
    assert str(ds.dtypes["F(+)"]) == "FriedelSFAmplitude" and str(ds.dtypes["DANO"]) == "AnomalousDifference"
    assert np.allclose(ds["F"].to_numpy(), result.merged["F"].to_numpy(), rtol=1e-6)
    asu = ds.hkl_to_asu()
    assert asu.index.equals(ds.index)                       # written in the reciprocal ASU


def test_real_unmerged_mtz_merges_through_the_cli(shared_data, tmp_path):
    from xrais.cli import app

    path = shared_data(UNMERGED)
    table = read_reflections(path)
    raw = np.array(gemmi.read_mtz_file(str(path)))
    assert table.spacegroup.hm == "P 43 21 2" and len(raw) == 1000
    usable = (raw[:, 7] > 0) & np.isfinite(raw[:, 6])
    absent = np.asarray(table.spacegroup.operations().systematic_absences(raw[:, :3].astype(np.int32)), bool)
    assert len(table) == int((usable & ~absent).sum())
    out = tmp_path / "merged.mtz"
    res = CliRunner().invoke(app, ["merge", str(path), "--out", str(out), "--max-epochs", "3",
                                   "--half-dataset-steps", "50"])
    assert res.exit_code == 0, res.output
    assert "merged reflections" in res.output
    assert not (tmp_path / "merged_merge_state.pt").exists() and not (tmp_path / ".merged.mtz.xrais.lock").exists()
    mtz = gemmi.read_mtz_file(str(out))
    assert mtz.spacegroup.hm == "P 43 21 2" and mtz.cell.approx(gemmi.UnitCell(79.3306, 79.3306, 37.7968, 90, 90, 90), 1e-4)
    f = mtz.column_with_label("F").array
    assert len(f) > 800 and np.isfinite(f).all() and (f >= 0).all()
    stats = pd.read_csv(tmp_path / "merged_statistics.csv")
    assert stats["shell"].iloc[-1] == "overall" and {"CC_half", "CC_pred_test", "completeness"} <= set(stats)


def test_reader_recovers_the_observed_indices_of_a_dials_mtz(shared_data):
    path = shared_data(UNMERGED)
    table = read_reflections(path)
    original = rs.read_mtz(str(path)).reset_index()           # reciprocalspaceship undoes M/ISYM itself
    original = original[original["SIGI"] > 0]
    asu, isym = reduce_to_asu_array(original[["H", "K", "L"]].to_numpy(), table.spacegroup)
    mine = table.sort_values(["BATCH", "I"])[["H", "K", "L", "M/ISYM", "I"]].to_numpy()
    theirs = pd.DataFrame({"H": asu[:, 0], "K": asu[:, 1], "L": asu[:, 2], "P": isym % 2,
                           "BATCH": original["BATCH"].to_numpy(), "I": original["I"].to_numpy()})
    theirs = theirs.iloc[np.lexsort((theirs["I"], theirs["BATCH"]))]
    theirs = theirs[np.isin(theirs["I"].to_numpy(), mine[:, 4])]
    assert np.array_equal(mine[:, :3].astype(int), theirs[["H", "K", "L"]].to_numpy())
    assert np.array_equal(mine[:, 3].astype(int) % 2, theirs["P"].to_numpy())


def test_unmerged_mtz_round_trip(simulator, tmp_path):
    table = simulator.table(range(5))
    path = write_unmerged_mtz(table, tmp_path / "unmerged.mtz")
    back = read_reflections(path)
    assert len(back) == len(table)
    for column in ("H", "K", "L", "BATCH"):
        assert np.array_equal(back[column].to_numpy(), table[column].to_numpy())
    assert np.array_equal(back["M/ISYM"].to_numpy() % 2, table["M/ISYM"].to_numpy() % 2)
    assert np.allclose(back["I"], table["I"], rtol=1e-6) and np.allclose(back["F_TRUE"], table["F_TRUE"], rtol=1e-6)
    assert len(gemmi.read_mtz_file(str(path)).batches) == 5
    assert not rs.read_mtz(str(path)).merged


def test_integrator_hdf5_and_mtz_outputs_read(simulator, tmp_path):
    from xrais.train.integrate import write_reflections_hdf5, write_reflections_mtz

    frame = simulator.image(0)
    frame.index.name = "row"
    cell = list(simulator.cell.parameters)
    direct = make_reflection_table(frame[["H", "K", "L"]].to_numpy(), frame["BATCH"].to_numpy(), frame["I"].to_numpy(),
                                   frame["SIGI"].to_numpy(), cell=simulator.cell, space_group="P 43 21 2")
    h5 = write_reflections_hdf5(tmp_path / "refl.h5", frame, cell=cell, space_group="P 43 21 2")
    mtz = write_reflections_mtz(tmp_path / "refl.mtz", frame, cell=cell, space_group="P 43 21 2")
    for table in (read_reflections(h5), read_reflections(mtz)):
        assert len(table) == len(direct) > 50
        assert np.array_equal(table[["H", "K", "L"]].to_numpy(), direct[["H", "K", "L"]].to_numpy())
        assert np.array_equal(table["M/ISYM"].to_numpy() % 2, direct["M/ISYM"].to_numpy() % 2)
        assert np.allclose(table["I"], direct["I"], rtol=1e-6)
        assert {"XDET", "YDET", "F_TRUE"} <= set(table.columns)


def test_crystfel_stream_reads(tmp_path):
    text = """CrystFEL stream format 2.3
----- Begin chunk -----
Image filename: a.h5
photon_energy_eV = 12398.4
--- Begin crystal
Cell parameters 7.91000 7.91000 3.84000 nm, 90.00000 90.00000 90.00000 deg
Reflections measured after indexing
   h    k    l          I   sigma(I)       peak background  fs/px  ss/px panel
   1    2    3     100.00      10.00     50.00      5.00  100.0  200.0 p0
  -1   -2   -3     120.00      11.00     50.00      5.00  110.0  210.0 p0
End of reflections
--- End crystal
----- End chunk -----
----- Begin chunk -----
Image filename: b.h5
photon_energy_eV = 12398.4
--- Begin crystal
Cell parameters 7.93000 7.93000 3.86000 nm, 90.00000 90.00000 90.00000 deg
Reflections measured after indexing
   h    k    l          I   sigma(I)       peak background  fs/px  ss/px panel
   4    0    2      30.00       5.00     10.00      2.00  300.0  400.0 p0
End of reflections
--- End crystal
----- End chunk -----
"""
    path = tmp_path / "run.stream"
    path.write_text(text)
    table = read_crystfel_stream(path, space_group="P 43 21 2")
    assert len(table) == 3 and table["IMAGE"].tolist() == [0, 0, 1]
    assert table["BATCH"].tolist() == [1, 1, 2] and table["CHUNK"].tolist() == [0, 0, 1]   # from 1, as integrate
    assert table.cell.a == pytest.approx(79.2) and table.cell.c == pytest.approx(38.5)
    assert table["WAVELENGTH"].iloc[0] == pytest.approx(1.0, rel=1e-4)
    assert table[["H", "K", "L"]].iloc[0].tolist() == table[["H", "K", "L"]].iloc[1].tolist() == [2, 1, 3]
    assert table["M/ISYM"].iloc[0] % 2 != table["M/ISYM"].iloc[1] % 2     # Friedel mates
    assert table["XDET"].tolist() == [100.0, 110.0, 300.0]
    with pytest.raises(DatasetError, match="space group"):
        read_crystfel_stream(path, space_group=None)


def test_bad_inputs_give_one_line_errors(tmp_path, anomalous_merge):
    with pytest.raises(DatasetError, match="no such reflection file"):
        read_reflections(tmp_path / "missing.mtz")
    (tmp_path / "x.csv").write_text("1,2,3\n")
    with pytest.raises(DatasetError, match="unknown reflection format"):
        read_reflections(tmp_path / "x.csv")
    merged_path = write_merged_mtz(anomalous_merge[1].merged, tmp_path / "merged.mtz")
    with pytest.raises(DatasetError, match="merged MTZ"):
        read_reflections(merged_path)
    with pytest.raises(DatasetError, match="metadata column 'ROT'"):
        merge_table(anomalous_merge[0].table(range(3)), MergeConfig(metadata_columns=("ROT",)))


_TWO_LATTICE_STREAM = """CrystFEL stream format 2.3
----- Begin chunk -----
Image filename: hit.h5
Event: //7
photon_energy_eV = 12398.4
--- Begin crystal
Cell parameters 7.91000 7.91000 3.84000 nm, 90.00000 90.00000 90.00000 deg
Reflections measured after indexing
   h    k    l          I   sigma(I)       peak background  fs/px  ss/px panel
   1    2    3     100.00      10.00     50.00      5.00  100.0  200.0 p0
   2    2    3      80.00       9.00     40.00      5.00  120.0  220.0 p0
End of reflections
--- End crystal
--- Begin crystal
Cell parameters 7.93000 7.93000 3.86000 nm, 90.00000 90.00000 90.00000 deg
Reflections measured after indexing
   h    k    l          I   sigma(I)       peak background  fs/px  ss/px panel
   1    2    3      10.00       3.00     50.00      5.00  400.0  500.0 p0
End of reflections
--- End crystal
----- End chunk -----
----- Begin chunk -----
Image filename: hit.h5
Event: //8
photon_energy_eV = 12398.4
--- Begin crystal
Cell parameters 7.92000 7.92000 3.85000 nm, 90.00000 90.00000 90.00000 deg
Reflections measured after indexing
   h    k    l          I   sigma(I)       peak background  fs/px  ss/px panel
   4    0    2      30.00       5.00     10.00      2.00  300.0  400.0 p0
End of reflections
--- End crystal
----- End chunk -----
"""


def test_crystfel_two_lattice_hit_gives_each_crystal_its_own_image(tmp_path):
    """Two crystals in one chunk are two images (two scales), numbered from 1; the chunk is kept."""
    path = tmp_path / "two.stream"
    path.write_text(_TWO_LATTICE_STREAM)
    table = read_crystfel_stream(path, space_group="P 43 21 2")
    assert table["BATCH"].tolist() == [1, 1, 2, 3]
    assert table["IMAGE"].tolist() == [0, 0, 1, 2]
    assert table["CHUNK"].tolist() == [0, 0, 0, 1] and table["CRYSTAL"].tolist() == [0, 0, 1, 0]
    assert table["XDET"].tolist() == [100.0, 120.0, 400.0, 300.0]
    assert table.cell.a == pytest.approx(79.2)
    # the unmerged MTZ keeps one batch header per crystal
    back = gemmi.read_mtz_file(str(write_unmerged_mtz(table, tmp_path / "two.mtz")))
    assert [b.number for b in back.batches] == [1, 2, 3]
    assert back.batches[0].cell.a == pytest.approx(79.2, rel=1e-5)
    # a malformed number is one line naming the file and the line
    path.write_text(_TWO_LATTICE_STREAM.replace("photon_energy_eV = 12398.4", "photon_energy_eV = lots", 1))
    with pytest.raises(DatasetError, match=r"two\.stream: line 5: cannot read"):
        read_crystfel_stream(path, space_group="P 43 21 2")


def test_stopped_merge_resumes_to_the_same_result(simulator, tmp_path):
    """A stop after a random epoch raises RunInterrupted with the state saved; merging again finishes
    with the same merged values as a merge never stopped."""
    import threading

    from xrais.errors import ConfigError, RunInterrupted

    table = simulator.table(range(60))
    config = MergeConfig(max_epochs=5, min_epochs=2, polish_epochs=1, half_dataset_steps=20)
    reference = merge_table(table, config)
    stop = threading.Event()
    at = int(np.random.default_rng(8).integers(1, 4))
    seen = []

    def progress(record):
        seen.append(record)
        if len(seen) == at:
            stop.set()

    state = tmp_path / "state.pt"
    with pytest.raises(RunInterrupted, match=f"after epoch {at}"):
        merge_table(table, config, stop=stop, state_path=state, progress=progress)
    assert state.is_file()
    resumed = merge_table(table, config, stop=threading.Event(), state_path=state)
    assert resumed.history["epoch"].tolist() == reference.history["epoch"].tolist()
    for column in ("F", "SIGF", "N"):
        assert np.array_equal(resumed.merged[column].to_numpy(), reference.merged[column].to_numpy()), column
    pd.testing.assert_frame_equal(resumed.statistics, reference.statistics)
    # the state of another merge is refused, not silently used
    with pytest.raises(ConfigError, match="other reflections or options"):
        merge_table(table, config.model_copy(update={"seed": 3}), state_path=state)


def test_merge_cli_refuses_unusable_or_busy_outputs(shared_data, tmp_path, capsys):
    from xrais.cli import main
    from xrais.runs import RunLock

    def run(*argv: str) -> int:
        with pytest.raises(SystemExit) as info:
            main(["merge", str(shared_data(UNMERGED)), *argv])
        return info.value.code or 0

    (tmp_path / "file").write_text("x")
    assert run("--out", str(tmp_path / "file" / "merged.mtz")) == 2
    err = capsys.readouterr().err
    assert "merged.mtz: --out cannot be written: it lies under" in " ".join(err.split())
    assert "Traceback" not in err
    with RunLock(tmp_path, "xrais merge (another)", name=".merged.mtz.xrais.lock"):
        assert run("--out", str(tmp_path / "merged.mtz")) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "already held by this process" in err
    assert not (tmp_path / "merged.mtz").exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_merge_cli_signalled_at_a_random_moment_resumes_to_the_same_mtz(shared_data, tmp_path, signum):
    """The real command, stopped (SIGTERM) or killed (SIGKILL) once an epoch is saved, then run again."""
    import os
    import subprocess
    import sys

    from long_runs import signal_when

    from xrais.cli import app

    path = shared_data(UNMERGED)
    options = ["--max-epochs", "8", "--images-per-step", "4", "--half-dataset-steps", "30", "--seed", "2"]
    reference = tmp_path / "ref" / "merged.mtz"
    res = CliRunner().invoke(app, ["merge", str(path), "--out", str(reference), *options])
    assert res.exit_code == 0, res.output
    out = tmp_path / "run" / "merged.mtz"
    state = out.with_name("merged_merge_state.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "xrais.cli", "merge", str(path), "--out", str(out), *options]
    delay_s = float(np.random.default_rng(12 + int(signum)).uniform(0.0, 0.05))
    code, _, stderr = signal_when(cmd, state.exists, signum, delay_s=delay_s, env=env)
    stderr = " ".join(stderr.split())
    if signum == signal.SIGTERM:
        assert code == 128 + signal.SIGTERM, stderr[-2000:]
        assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr
    else:
        assert code == -signal.SIGKILL
    assert state.exists() and not out.exists()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "resuming the merge saved in" in " ".join(again.stdout.split())
    assert not state.exists()
    assert out.read_bytes() == reference.read_bytes()
