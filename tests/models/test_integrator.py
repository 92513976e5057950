"""The variational integrator: distribution pieces, the model, training against known truth, the CLI.

Model-quality tests use :func:`xrais.simulate.shoeboxes.synthetic_shoeboxes` (Poisson counts
from a known intensity, multivariate-normal profile and flat background: cheap, and the truth is
exact); one end-to-end test runs ``xrais simulate --shoeboxes`` and ``xrais integrate`` on
simulator shoeboxes.
"""

from __future__ import annotations

import math

import gemmi
import h5py
import numpy as np
import pytest
import torch
from scipy import stats

from xrais.errors import CheckpointError, DatasetError
from xrais.models.variational import ShoeboxBatch, build_integrator, load_integrator, save_integrator
from xrais.models.variational.distributions import (
    gamma_from_mean_std,
    kl_divergence,
    lognormal_from_mean_std,
    make_prior,
    mvn_profile,
    mvn_profile_binned,
    poisson_log_likelihood,
    truncated_normal_moments,
)
from xrais.models.variational.integrator import IntegratorConfig
from xrais.simulate.shoeboxes import synthetic_shoeboxes
from xrais.train.integrate import (
    IntegrateTrainConfig,
    add_baselines,
    integrate_shoeboxes,
    integration_metrics,
    plot_integration,
    train_integrator,
)

SHAPE = (3, 15, 15)


def _batch(sb, rows=slice(None)):
    r = sb.reflections
    return ShoeboxBatch.from_arrays(sb.counts[rows], sb.mask[rows], r["corner_px"][rows], r["frame_first"][rows],
                                    r["xyz_px"][rows])


# ------------------------------------------------------------------ distribution pieces
def test_surrogates_have_the_requested_moments():
    for make in (gamma_from_mean_std, lognormal_from_mean_std):
        q = make(torch.tensor([3.0, 400.0]), torch.tensor([2.0, 20.0]))
        np.testing.assert_allclose(q.mean.numpy(), [3.0, 400.0], rtol=1e-5)
        np.testing.assert_allclose(q.stddev.numpy(), [2.0, 20.0], rtol=1e-4)


def test_kl_closed_form_and_monte_carlo_agree():
    q = gamma_from_mean_std(torch.tensor(5.0), torch.tensor(1.5))
    p = make_prior("exponential", 0.5)
    exact = kl_divergence(q, p)
    a, b = q.concentration, q.rate  # KL(Γ(a, b)‖Exp(λ)) = (a−1)ψ(a) − log Γ(a) + a log b... written out:
    lam = 0.5
    formula = (a - 1) * torch.digamma(a) - torch.lgamma(a) + torch.log(b) - a - math.log(lam) + lam * a / b
    assert float(exact) == pytest.approx(float(formula), rel=1e-5)
    torch.manual_seed(0)
    ql = lognormal_from_mean_std(torch.tensor(5.0), torch.tensor(1.5))
    z = ql.rsample((200_000,))
    mc = kl_divergence(ql, p, z)
    assert float(mc) == pytest.approx(float((ql.log_prob(z) - p.log_prob(z)).mean()), rel=1e-6)
    with pytest.raises(ValueError, match="no closed form"):
        kl_divergence(ql, p)


def test_poisson_likelihood_and_truncated_normal_match_scipy():
    x = torch.tensor([[0.0, 3.0, 10.0]])
    lam = torch.tensor([[0.5, 2.0, 12.0]])
    expect = stats.poisson.logpmf(x.numpy(), lam.numpy()).sum()
    assert float(poisson_log_likelihood(x, lam)) == pytest.approx(expect, rel=1e-6)
    assert float(poisson_log_likelihood(x, lam, torch.tensor([[1.0, 0.0, 1.0]]))) == pytest.approx(
        stats.poisson.logpmf([0, 10], [0.5, 12.0]).sum(), rel=1e-6)
    for loc, scale in ((2.0, 1.0), (-3.0, 2.0), (-30.0, 1.0)):
        m, s = truncated_normal_moments(torch.tensor(loc, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64))
        ref = stats.truncnorm((0 - loc) / scale, np.inf, loc=loc, scale=scale)
        assert float(m) == pytest.approx(ref.mean(), rel=1e-4) and float(s) == pytest.approx(ref.std(), rel=2e-3)


def test_profiles_are_normalised_and_binned_exactly_along_z():
    zz, yy, xx = torch.meshgrid(torch.arange(5) + 0.5, torch.arange(9) + 0.5, torch.arange(9) + 0.5, indexing="ij")
    offsets = torch.stack([zz, yy, xx], -1).reshape(1, -1, 3).double()
    mean = torch.tensor([[2.3, 4.5, 4.5]], dtype=torch.float64)
    cov = torch.diag(torch.tensor([0.3**2, 1.2**2, 1.5**2], dtype=torch.float64))[None]
    prof = mvn_profile_binned(offsets, mean, cov).reshape(5, 9, 9)
    assert float(prof.sum()) == pytest.approx(1.0)
    per_frame = prof.sum(dim=(1, 2)).numpy()
    z_edges = np.arange(6.0)
    expect = np.diff(stats.norm.cdf(z_edges, 2.3, 0.3))
    np.testing.assert_allclose(per_frame, expect / expect.sum(), atol=1e-6)
    mask = torch.ones(1, offsets.shape[1], dtype=torch.float64)
    mask[0, :81] = 0
    masked = mvn_profile(offsets, mean, torch.linalg.cholesky(cov), mask=mask)
    assert float(masked[0, :81].abs().sum()) == 0.0 and float(masked.sum()) == pytest.approx(1.0)


# ------------------------------------------------------------------ the model
@pytest.mark.parametrize("encoder,profile", [("fc", "mvn"), ("cnn", "softmax"), ("cnn", "mvn")])
def test_forward_and_loss(encoder, profile):
    sb = synthetic_shoeboxes(8, shape=SHAPE, seed=1)
    torch.manual_seed(0)
    model = build_integrator(encoder=encoder, profile=profile, shoebox_shape=SHAPE)
    out = model(_batch(sb))
    assert out.profile.shape == (8, math.prod(SHAPE))
    np.testing.assert_allclose(out.profile.sum(dim=1).detach().numpy(), 1.0, rtol=1e-5)
    assert torch.all(out.q_intensity.mean > 0) and torch.all(out.q_background.stddev > 0)
    terms = model.loss(_batch(sb))
    assert set(terms) == {"loss", "nll", "kl_intensity", "kl_background"} and torch.isfinite(terms["loss"])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):  # heads start at zero, so the encoder feels the loss from the second step on
        optimizer.zero_grad()
        model.loss(_batch(sb))["loss"].backward()
        optimizer.step()
    grads = [p.grad for p in model.encoder.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)


@pytest.fixture(scope="module")
def trained():
    """FC/MVN trained on 2000 synthetic shoeboxes (with the paper's batch size, lr and priors)."""
    sb = synthetic_shoeboxes(2000, shape=SHAPE, seed=11)
    model, history = train_integrator(sb, IntegratorConfig(encoder="fc", profile="mvn"),
                                      IntegrateTrainConfig(epochs=3, batch_size=128, seed=0, device="cpu"))
    table, rejected = integrate_shoeboxes(model, sb, device="cpu")
    return sb, model, history, add_baselines(table, sb), rejected


def test_beats_summation_on_weak_reflections_and_matches_it_overall(trained):
    sb, _, history, table, rejected = trained
    assert not rejected and len(table) == len(sb)
    assert history[-1]["loss"] < history[0]["loss"]
    m = integration_metrics(table)
    assert m["n_weak"] > 150
    assert m["I"]["cc_weak"] > m["I_SUM"]["cc_weak"] + 0.05
    assert m["I"]["cc"] >= m["I_SUM"]["cc"] - 1e-4


def test_sigma_is_calibrated(trained):
    *_, table, _ = trained
    z = (table["I"] - table["I_TRUE_BOX"]) / table["SIGI"]
    assert 0.8 <= float(z.std()) <= 1.25
    clear = (table["I_TRUE_BOX"] > 3 * table["SIGI"]).to_numpy()  # away from the I ≥ 0 bound: unbiased
    assert clear.sum() > 300 and abs(float(np.median(z[clear]))) < 0.25 and 0.8 <= float(z[clear].std()) <= 1.25


def test_background_and_mvn_profile_are_recovered(trained):
    sb, _, _, table, _ = trained
    rows = table.index.to_numpy()
    bg_true = sb.background[rows, 0, 0, 0]
    assert float(np.median(np.abs(table["BG"] / bg_true - 1))) < 0.05
    strong = (table["I_TRUE_BOX"] / table["SIGI_SUM"] > 10).to_numpy()
    assert strong.sum() > 150
    cov = sb.reflections["profile_covariance"][rows][strong]
    true_sigma = np.sqrt(np.diagonal(cov, axis1=1, axis2=2) + [0.0, 1 / 12, 1 / 12])[:, ::-1]  # pixels are boxes
    est = table.loc[strong, ["PROF_SX", "PROF_SY", "PROF_SZ"]].to_numpy()
    assert np.all(np.median(np.abs(est[:, :2] / true_sigma[:, :2] - 1), axis=0) < 0.1)
    assert np.median(np.abs(est[:, 2] / true_sigma[:, 2] - 1)) < 0.2
    centroid = table.loc[strong, ["PROF_X", "PROF_Y", "PROF_Z"]].to_numpy() - sb.reflections["xyz_px"][rows][strong]
    assert np.all(np.median(np.abs(centroid), axis=0) < 0.1)


def test_training_and_inference_are_deterministic():
    sb = synthetic_shoeboxes(192, shape=SHAPE, seed=3)
    cfg = IntegrateTrainConfig(epochs=1, batch_size=64, seed=5, device="cpu")
    state = torch.random.get_rng_state()
    a, _ = train_integrator(sb, IntegratorConfig(), cfg)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is left alone
    b, _ = train_integrator(sb, IntegratorConfig(), cfg)
    c, _ = train_integrator(sb, IntegratorConfig(), cfg.model_copy(update={"seed": 6}))
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.state_dict().values(), c.state_dict().values()))
    ta, _ = integrate_shoeboxes(a, sb, device="cpu")
    tb, _ = integrate_shoeboxes(b, sb, device="cpu")
    np.testing.assert_array_equal(ta["I"].to_numpy(), tb["I"].to_numpy())


def test_checkpoint_round_trip(tmp_path):
    sb = synthetic_shoeboxes(16, shape=SHAPE, seed=2)
    torch.manual_seed(1)
    model = build_integrator(encoder="cnn", profile="softmax", shoebox_shape=SHAPE).eval()
    path = save_integrator(model, tmp_path / "m.safetensors", epochs=0)
    back = load_integrator(path)
    assert back.config == model.config and back.provenance == {"epochs": 0}
    with torch.no_grad():
        np.testing.assert_array_equal(model(_batch(sb)).q_intensity.mean.numpy(), back(_batch(sb)).q_intensity.mean.numpy())
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_integrator(tmp_path / "junk.safetensors")


def test_bad_shoeboxes_are_excluded_never_used(trained):
    sb, model, *_ = trained
    small = sb.subset(np.arange(6))
    counts = small.counts.astype(np.float64)
    counts[1, 0, 0, 0] = np.nan
    counts[2, 1, 3, 3] = -5
    mask = small.mask.copy()
    mask[3] = False
    bad = type(small)(counts, small.signal, small.background, mask, small.reflections, small.attrs)
    table, rejected = integrate_shoeboxes(model, bad, device="cpu")
    assert table.index.tolist() == [0, 4, 5] and [r for r, _ in rejected] == [1, 2, 3]
    assert np.all(np.isfinite(table["I"]))
    wrong = synthetic_shoeboxes(4, shape=(3, 11, 11), seed=1)
    with pytest.raises(DatasetError, match="expects shoeboxes of"):
        integrate_shoeboxes(model, wrong, device="cpu")


def test_plot(trained, tmp_path):
    *_, table, _ = trained
    png = plot_integration(table, tmp_path / "p.png")
    assert png.stat().st_size > 20_000


def test_cli_end_to_end_on_simulated_shoeboxes(tmp_path, capsys):
    """xrais simulate --shoeboxes, then xrais integrate --train: an unmerged MTZ the scaler can read."""
    import reciprocalspaceship as rs

    from xrais.cli import main

    exp = tmp_path / "exp.toml"
    exp.write_text('detector = "flat"\nimage_size_px = [384, 384]\ndistance_mm = 100.0\ncell = [30.0, 30.0, 36.0, 90.0, '
                   '90.0, 90.0]\nspace_group = "P 4"\ndomain_size_um = 0.03\nmosaic_domains = 2\n[shoeboxes]\n'
                   'n_images = 6\nd_min_A = 2.5\nphi_steps = 2\nbackground_scale = 0.002\n')
    for argv in (["simulate", "--shoeboxes", "--config", str(exp), "--out", str(tmp_path / "sb"), "--seed", "1",
                  "--backend", "numba"],
                 ["integrate", str(tmp_path / "sb"), "--model", str(tmp_path / "m.safetensors"), "--train",
                  "--epochs", "4", "--batch-size", "32", "--device", "cpu", "--out", str(tmp_path / "refl")]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert (exit_info.value.code or 0) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "xrais-variational: CC to truth" in out and (tmp_path / "refl_integration.png").exists()
    mtz = gemmi.read_mtz_file(str(tmp_path / "refl.mtz"))
    labels = [c.label for c in mtz.columns]
    for col in ("H", "K", "L", "M/ISYM", "BATCH", "I", "SIGI", "XDET", "YDET", "BG", "SIGBG", "I_TRUE", "F_TRUE"):
        assert col in labels
    assert mtz.spacegroup.hm == "P 4" and mtz.cell.a == pytest.approx(30.0)
    assert mtz.column_with_label("I").type == "J" and mtz.column_with_label("BATCH").type == "B"
    ds = rs.read_mtz(str(tmp_path / "refl.mtz"))
    assert not ds.merged and len(ds) > 100
    with h5py.File(tmp_path / "refl.h5", "r") as f:
        g = f["reflections"]
        assert g.attrs["space_group"] == "P 4" and len(g["I"]) == len(ds)
        original = np.stack([g["H"][()], g["K"][()], g["L"][()]], axis=1)
        i_var, i_true = g["I"][()], g["I_TRUE_BOX"][()]
    # M/ISYM maps the ASU index back to the observed one (reciprocalspaceship undoes it on reading)
    assert mtz.column_with_label("M/ISYM").type == "Y"
    back = ds.reset_index()[["H", "K", "L"]].to_numpy()
    assert sorted(map(tuple, back)) == sorted(map(tuple, original))
    assert np.corrcoef(i_var, i_true)[0, 1] > 0.99
    # applying the saved model again gives the same table
    with pytest.raises(SystemExit) as exit_info:
        main(["integrate", str(tmp_path / "sb"), "--model", str(tmp_path / "m.safetensors"), "--device", "cpu",
              "--out", str(tmp_path / "again.mtz"), "--no-baselines"])
    assert (exit_info.value.code or 0) == 0
    with h5py.File(tmp_path / "again.h5", "r") as f:
        np.testing.assert_allclose(f["reflections/I"][()], i_var, rtol=1e-5)
