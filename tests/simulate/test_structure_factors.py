"""Structure-factor tables: gemmi agreement, symmetry, absences, B factor, Wilson statistics,
nanoBragg hkl semantics (PHYSICS.md §3), MTZ merging/expansion, and every error path."""

from __future__ import annotations

import math

import gemmi
import numpy as np
import pytest

from xrais.errors import ConfigError, DatasetError
from xrais.simulate.structure_factors import StructureFactors, compute_d_A, make_miller_grid

HEWL = "structures/RTSAD_HEWL_refine_25.pdb"
THERMOLYSIN = "structures/2tli.pdb"
UNMERGED_MTZ = "reflections/data_unmerged.mtz"
SPARSE_HKL = "nanobragg/hkl/f_sparse.hkl"
ZERO_HKL = "nanobragg/hkl/zero.hkl"
HEWL_CELL = (79.344, 79.344, 37.810, 90.0, 90.0, 90.0)


def equivalents(space_group: str, hkl) -> set[tuple[int, int, int]]:
    """All symmetry equivalents of hkl and their Friedel mates, from gemmi's operators."""
    out = set()
    for op in gemmi.SpaceGroup(space_group).operations().sym_ops:
        e = op.apply_to_hkl([int(v) for v in hkl])
        out |= {tuple(e), tuple(-v for v in e)}
    return out


@pytest.fixture(scope="module")
def hewl(shared_data):
    return StructureFactors.from_structure(shared_data(HEWL), d_min_A=2.0)


@pytest.fixture(scope="module")
def wilson():
    return StructureFactors.random_wilson(HEWL_CELL, "P43212", d_min_A=2.5, n_atoms=1000, seed=3)


# --- constant and lookup --------------------------------------------------------------------

def test_constant_is_default_F_everywhere():
    sf = StructureFactors.constant(100.0)
    assert sf.amplitudes.shape == (0, 0, 0) and sf.default_F == 100.0 and "constant" in sf.source
    out = sf.lookup(np.arange(-3, 3)[:, None], 7, np.arange(4))
    assert out.shape == (6, 4) and out.dtype == np.float32 and np.all(out == 100.0)


def test_lookup_broadcasts_and_rounds_floats_like_nanobragg():
    grid = np.arange(27, dtype=np.float32).reshape(3, 3, 3)
    sf = StructureFactors(grid, (-1, -1, -1), default_F=-5.0)
    assert sf.hkl_max == (1, 1, 1)
    assert sf.lookup(1, 0, -1).item() == grid[2, 1, 0]
    assert sf.lookup([2, -2, 0], 0, 0).tolist() == [-5.0, -5.0, 13.0]
    # h0 = ceil(h − ½): 0.5 → 0, −0.5 → −1, 1.49 → 1
    assert sf.lookup([0.5, -0.5, 1.49], 0.0, 0.0).tolist() == [13.0, 4.0, 22.0]


# --- nanoBragg h k l F tables -----------------------------------------------------------------

def test_hkl_file_values_box_and_no_friedel(shared_data):
    path = shared_data(SPARSE_HKL)
    table = np.loadtxt(path)
    sf = StructureFactors.from_hkl_file(path)
    hkl = table[:, :3].astype(int)
    assert sf.hkl_min == tuple(hkl.min(axis=0)) == (-4, -20, -10)
    assert sf.hkl_max == tuple(hkl.max(axis=0)) == (2, 20, 10)
    np.testing.assert_array_equal(sf.lookup(*hkl.T), table[:, 3].astype(np.float32))
    # no symmetry, not even Friedel's law
    assert sf.lookup(0, 1, 0) == np.float32(320.9) and sf.lookup(0, -1, 0) == np.float32(240.7)
    assert sf.lookup(-1, -5, 0) == np.float32(247.2) and sf.lookup(1, 5, 0) == 0.0
    # unlisted inside the box and everything outside it: 0 without -default_F
    assert sf.lookup(0, 0, 3) == 0.0 and sf.lookup(3, 0, 0) == 0.0 and sf.lookup(0, 0, 11) == 0.0


def test_hkl_file_default_F_fills_unlisted_inside_and_outside(shared_data):
    sf = StructureFactors.from_hkl_file(shared_data(SPARSE_HKL), default_F=7.5)
    assert sf.lookup(0, 0, 3) == 7.5        # inside the box, not listed
    assert sf.lookup(5, 0, 0) == 7.5        # outside the box
    assert sf.lookup(0, 1, 0) == np.float32(320.9)


def test_zero_hkl_makes_every_F_zero(shared_data):
    sf = StructureFactors.from_hkl_file(shared_data(ZERO_HKL))
    assert sf.amplitudes.shape == (1, 1, 1) and sf.hkl_min == (0, 0, 0)
    assert np.all(sf.lookup(np.arange(-5, 6), 3, 0) == 0.0)


def test_hkl_file_repeated_index_last_line_wins(tmp_path):
    path = tmp_path / "twice.hkl"
    path.write_text("0 0 1 10\n 1 0 0 5.5\n0 0 1 20\n")
    sf = StructureFactors.from_hkl_file(path)
    assert sf.lookup(0, 0, 1) == 20.0 and sf.lookup(1, 0, 0) == 5.5 and sf.lookup(0, 0, 0) == 0.0


@pytest.mark.parametrize("text, match", [
    ("0 0 1 10\n1 2 x 4\n", "line 2"),
    ("0 0 1 10\n\n0 0 2\n", "line 3"),
    ("0.5 0 1 10\n", "integers"),
    ("\n\n", "no 'h k l F' lines"),
])
def test_hkl_file_errors(tmp_path, text, match):
    path = tmp_path / "bad.hkl"
    path.write_text(text)
    with pytest.raises(DatasetError, match=match):
        StructureFactors.from_hkl_file(path)


# --- from a model (gemmi FFT) -----------------------------------------------------------------

def test_structure_matches_gemmi_direct_sum(shared_data, hewl):
    st = gemmi.read_structure(str(shared_data(HEWL)))
    calc = gemmi.StructureFactorCalculatorX(st.cell)
    rng = np.random.default_rng(0)
    hkls = [h for h in rng.integers(-18, 19, (60, 3)).tolist() if st.cell.calculate_d(h) >= 2.0][:12]
    direct = np.array([abs(calc.calculate_sf_from_model(st[0], h)) for h in hkls])
    np.testing.assert_allclose(hewl.lookup(*np.array(hkls).T), direct, rtol=0.01, atol=0.5)
    assert hewl.hkl_min == (-39, -39, -18) and hewl.default_F == 0.0  # floor(79.344/2), floor(37.81/2)
    assert hewl.lookup(39, 0, 0) == 0.0 and hewl.lookup(39, 39, 0) == 0.0  # in the box, d < 2 Å


def test_structure_symmetry_friedel_and_absences(hewl):
    for hkl in [(3, 5, 7), (10, 2, 1), (1, 14, 9)]:
        eq = np.array(sorted(equivalents("P 43 21 2", hkl)))
        values = hewl.lookup(*eq.T)
        assert len(eq) == 16 and values.min() > 1.0
        np.testing.assert_allclose(values, values[0], rtol=1e-4)
    l = np.arange(1, 19)
    assert np.all((hewl.lookup(0, 0, l) == 0) == (l % 4 != 0))  # 0 0 l: l = 4n only
    h = np.arange(1, 39)
    assert np.all((hewl.lookup(h, 0, 0) == 0) == (h % 2 == 1))  # h 0 0: h = 2n only


def test_thermolysin_reads_cell_and_group_after_remarks(shared_data):
    path = shared_data(THERMOLYSIN)
    sf = StructureFactors.from_structure(path, d_min_A=3.5)
    assert "P 61 2 2" in sf.source and sf.hkl_min == (-26, -26, -37)  # floor(93.99/3.5), floor(130.87/3.5)
    st = gemmi.read_structure(str(path))
    calc = gemmi.StructureFactorCalculatorX(st.cell)
    for hkl in [(2, 3, 5), (7, -1, 12), (0, 4, 20)]:
        assert sf.lookup(*hkl) == pytest.approx(abs(calc.calculate_sf_from_model(st[0], list(hkl))), rel=0.01)
    l = np.arange(1, 37)
    assert np.all((sf.lookup(0, 0, l) == 0) == (l % 6 != 0))  # 6₁ screw axis
    values = sf.lookup(*np.array(sorted(equivalents("P 61 2 2", (3, 1, 4)))).T)
    np.testing.assert_allclose(values, values[0], rtol=1e-4)


def test_structure_b_factor_sets_atom_B(shared_data):
    path = shared_data(HEWL)
    cell = gemmi.read_structure(str(path)).cell
    b0 = StructureFactors.from_structure(path, d_min_A=3.0, b_factor_A2=0.0)
    b30 = StructureFactors.from_structure(path, d_min_A=3.0, b_factor_A2=30.0)
    strong = b0.amplitudes > 0.05 * b0.amplitudes.max()
    np.testing.assert_allclose(b0.with_b_factor(30.0, cell).amplitudes[strong], b30.amplitudes[strong], rtol=2e-3)
    with pytest.raises(ConfigError, match="b_factor_A2"):
        StructureFactors.from_structure(path, d_min_A=3.0, b_factor_A2=-1.0)


def test_with_b_factor_is_exp_minus_B_s2_over_4(shared_data, hewl):
    cell = gemmi.UnitCell(*HEWL_CELL)
    blurred = hewl.with_b_factor(20.0, HEWL_CELL)
    for hkl in [(1, 2, 3), (20, 11, 9), (0, 0, 16)]:
        s2 = cell.calculate_1_d2(list(hkl))
        assert blurred.lookup(*hkl) / hewl.lookup(*hkl) == pytest.approx(math.exp(-20.0 * s2 / 4), rel=1e-6)
    table = StructureFactors.from_hkl_file(shared_data(SPARSE_HKL), default_F=9.0).with_b_factor(50.0, HEWL_CELL)
    assert table.default_F == 9.0 and table.lookup(30, 30, 30) == 9.0


def test_compute_d_A_and_grid():
    d = compute_d_A((10.0, 20.0, 30.0, 90, 90, 90), [1, 0, 0, 1], [0, 1, 0, 1], [0, 0, 1, 1])
    np.testing.assert_allclose(d, [10.0, 20.0, 30.0, 1 / math.sqrt(1 / 100 + 1 / 400 + 1 / 900)])
    tric = gemmi.UnitCell(61.2, 72.5, 84.3, 78.3, 86.1, 101.7)
    hkl = np.array([[3, -4, 7], [-9, 2, 1]])
    np.testing.assert_allclose(compute_d_A(tric, *hkl.T), tric.calculate_d_array(hkl), rtol=1e-10)
    h, k, l = make_miller_grid(tric, 2.0)
    assert (h[-1], k[-1], l[-1]) == (30, 36, 42) and h[0] == -30


# --- random-atom (Wilson) structures ----------------------------------------------------------

def test_random_wilson_reproducible_and_symmetric(wilson):
    again = StructureFactors.random_wilson(HEWL_CELL, "P 43 21 2", d_min_A=2.5, n_atoms=1000, seed=3)
    other = StructureFactors.random_wilson(HEWL_CELL, 96, d_min_A=2.5, n_atoms=1000, seed=4)
    np.testing.assert_array_equal(again.amplitudes, wilson.amplitudes)
    assert not np.allclose(other.amplitudes, wilson.amplitudes) and "seed 3" in wilson.source
    for hkl in [(3, 5, 7), (12, 1, 4)]:
        values = wilson.lookup(*np.array(sorted(equivalents("P 43 21 2", hkl))).T)
        np.testing.assert_allclose(values, values[0], rtol=1e-4)
    l = np.arange(1, 16)
    assert np.all((wilson.lookup(0, 0, l) == 0) == (l % 4 != 0))


def test_random_wilson_statistics(wilson):
    cell = gemmi.UnitCell(*HEWL_CELL)
    ops = gemmi.SpaceGroup("P 43 21 2").operations()
    h, k, l = make_miller_grid(cell, 2.5)
    hkl = np.stack(np.meshgrid(h, k, l, indexing="ij"), axis=-1).reshape(-1, 3).astype(np.int32)
    d = cell.calculate_d_array(hkl)
    shell = (d >= 3.0) & (d < 3.5)
    hkl, d = hkl[shell], d[shell]
    general = ~ops.centric_flag_array(hkl) & (ops.epsilon_factor_array(hkl) == 1)
    hkl, d = hkl[general], d[general]
    intensity = wilson.lookup(*hkl.T).astype(np.float64) ** 2
    stol2 = 1 / (4 * d**2)
    mix = {"C": 0.63, "N": 0.17, "O": 0.19, "S": 0.01}  # the documented element mix
    f0 = {e: np.array([gemmi.Element(e).it92.calculate_sf(x) for x in stol2]) for e in mix}
    sum_f2 = 8 * 1000 * sum(p * f0[e] ** 2 for e, p in mix.items())  # 8 symmetry copies × 1000 atoms
    assert intensity.mean() / sum_f2.mean() == pytest.approx(1.0, rel=0.15)
    e2 = intensity / sum_f2
    assert (e2**2).mean() / e2.mean() ** 2 == pytest.approx(2.0, abs=0.2)  # acentric <E⁴> = 2


def test_random_wilson_default_atom_count():
    sf = StructureFactors.random_wilson((30, 30, 30, 90, 90, 90), "P 1", d_min_A=5.0)
    assert "1350 atoms/ASU" in sf.source  # 27000 Å³ / 20 Å³


# --- MTZ --------------------------------------------------------------------------------------

def test_unmerged_mtz_is_merged_with_inverse_variance_weights(shared_data):
    path = shared_data(UNMERGED_MTZ)
    mtz = gemmi.read_mtz_file(str(path))
    labels = mtz.column_labels()
    hkl = mtz.array[:, :3].astype(int)
    obs_i, obs_s = mtz.array[:, labels.index("I")], mtz.array[:, labels.index("SIGI")]
    sf = StructureFactors.from_mtz(path)
    assert "sqrt(max(I, 0))" in sf.source and "averaged" in sf.source
    checked = 0
    for row in range(len(hkl)):
        eq = equivalents("P 43 21 2", hkl[row])
        sel = np.array([tuple(x) in eq for x in hkl])
        if sel.sum() < 2:
            continue
        w = 1 / obs_s[sel].astype(float) ** 2
        expected = math.sqrt(max((w * obs_i[sel]).sum() / w.sum(), 0.0))
        values = sf.lookup(*np.array(sorted(eq)).T)
        np.testing.assert_allclose(values, expected, rtol=1e-5)
        checked += 1
        if checked == 5:
            break
    assert checked == 5
    observed = {tuple(x) for x in hkl}
    lone_negative = [h for h in hkl[obs_i < 0] if len(equivalents("P 43 21 2", h) & observed) == 1]
    assert lone_negative and all(sf.lookup(*h) == 0.0 for h in lone_negative)  # sqrt(max(I, 0))
    cut = StructureFactors.from_mtz(path, d_min_A=3.0)
    d = mtz.cell.calculate_d_array(hkl)
    assert np.all(cut.lookup(*hkl[d < 3.0].T) == 0.0) and np.any(cut.lookup(*hkl[d >= 3.0].T) > 0)


def _write_merged_mtz(path, sf, cell, space_group, d_min):
    hkl = gemmi.make_miller_array(cell, space_group, d_min)
    f = sf.lookup(*hkl.T)
    mtz = gemmi.Mtz(with_base=True)
    mtz.spacegroup, mtz.cell = space_group, cell
    mtz.add_dataset("synthetic")
    mtz.add_column("FP", "F")
    mtz.add_column("IMEAN", "J")
    mtz.set_data(np.column_stack([hkl, f, f.astype(np.float64) ** 2]).astype(np.float32))
    mtz.write_to_file(str(path))


def test_merged_mtz_round_trip_expands_to_p1(tmp_path, hewl):
    cell, sg = gemmi.UnitCell(*HEWL_CELL), gemmi.SpaceGroup("P 43 21 2")
    path = tmp_path / "hewl_asu.mtz"
    _write_merged_mtz(path, hewl, cell, sg, 2.0)
    from_f = StructureFactors.from_mtz(path)
    from_i = StructureFactors.from_mtz(path, column="IMEAN")
    assert "column FP" in from_f.source and "sqrt(max(IMEAN, 0))" in from_i.source
    assert from_f.hkl_min == hewl.hkl_min and from_f.amplitudes.shape == hewl.amplitudes.shape
    # the MTZ holds one value per ASU reflection; the FFT's equivalents agree to float32 rounding
    np.testing.assert_allclose(from_f.amplitudes, hewl.amplitudes, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(from_i.amplitudes, hewl.amplitudes, rtol=1e-4, atol=1e-2)
    listed = StructureFactors.from_mtz(path, expand_to_p1=False)
    assert listed.lookup(5, 3, 2) > 0 and listed.lookup(3, 5, 2) == 0.0 and listed.lookup(-5, -3, -2) == 0.0


def test_mtz_column_errors(shared_data, tmp_path, hewl):
    path = tmp_path / "hewl_asu.mtz"
    _write_merged_mtz(path, hewl, gemmi.UnitCell(*HEWL_CELL), gemmi.SpaceGroup("P 43 21 2"), 3.0)
    with pytest.raises(ConfigError, match="no column 'FOBS'"):
        StructureFactors.from_mtz(path, column="FOBS")
    with pytest.raises(ConfigError, match="column 'H' has MTZ type 'H'"):
        StructureFactors.from_mtz(path, column="H")
    with pytest.raises(ConfigError, match="column 'XDET' has MTZ type 'R'; expected J"):
        StructureFactors.from_mtz(shared_data(UNMERGED_MTZ), column="XDET")
    with pytest.raises(ConfigError, match="d_min_A"):
        StructureFactors.from_mtz(path, d_min_A=0.0)


# --- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["from_hkl_file", "from_mtz", "from_structure"])
def test_missing_file_is_named(tmp_path, method):
    kwargs = {"d_min_A": 2.0} if method == "from_structure" else {}
    with pytest.raises(ConfigError, match="nothere.dat: no such file"):
        getattr(StructureFactors, method)(tmp_path / "nothere.dat", **kwargs)


def test_unreadable_files(tmp_path):
    junk = tmp_path / "junk.mtz"
    junk.write_bytes(b"not an mtz file at all\x00\x01" * 10)
    with pytest.raises(DatasetError, match="junk.mtz: not a readable MTZ"):
        StructureFactors.from_mtz(junk)
    pdb = tmp_path / "nocell.pdb"
    pdb.write_text("ATOM      1  CA  GLY A   1       1.000   2.000   3.000  1.00 10.00           C\nEND\n")
    with pytest.raises(DatasetError, match="nocell.pdb: no crystal unit cell"):
        StructureFactors.from_structure(pdb, d_min_A=2.0)


@pytest.mark.parametrize("cell, match", [
    ((10, 10, 10, 10, 10, 170), "cannot close"),
    ((10, 10, 10, 120, 120, 130), "cannot close"),
    ((10, -1, 10, 90, 90, 90), "must be > 0"),
    ((10, 10, 10, 90, 180, 90), "between 0 and 180"),
    ((10, 10, 10, 90, 90), "six finite numbers"),
])
def test_impossible_cells(cell, match):
    with pytest.raises(ConfigError, match=match):
        StructureFactors.random_wilson(cell, "P 1", d_min_A=3.0)


def test_space_group_errors():
    with pytest.raises(ConfigError, match="'P 61 2 2'.*does not fit cell"):
        StructureFactors.random_wilson(HEWL_CELL, "P 61 2 2", d_min_A=3.0)
    with pytest.raises(ConfigError, match="'P 7': not a Hermann"):
        StructureFactors.random_wilson(HEWL_CELL, "P 7", d_min_A=3.0)


@pytest.mark.parametrize("d_min, match", [(0.0, "> 0 Å"), (-1.0, "> 0 Å"), (float("nan"), "> 0 Å"),
                                          (0.01, r"over the 2e\+08 limit; allowed: d_min_A ≥ 0\.")])
def test_d_min_errors(d_min, match):
    with pytest.raises(ConfigError, match=match):
        StructureFactors.random_wilson(HEWL_CELL, "P 43 21 2", d_min_A=d_min)


def test_bad_parameters():
    with pytest.raises(ConfigError, match="F=-1"):
        StructureFactors.constant(-1.0)
    with pytest.raises(ConfigError, match="n_atoms=0"):
        StructureFactors.random_wilson(HEWL_CELL, "P 43 21 2", d_min_A=3.0, n_atoms=0)
    with pytest.raises(ConfigError, match="b_factor_A2=nan"):
        StructureFactors.constant(1.0).with_b_factor(float("nan"), HEWL_CELL)
    with pytest.raises(ConfigError, match="3-D"):
        StructureFactors(np.zeros((2, 2)), (0, 0, 0))
