"""The variational scaler's parts: surrogate posteriors, likelihoods, networks, ELBO and trainer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from xrais.errors import ConfigError
from xrais.models.variational.scaler import (
    FoldedNormal,
    ImageEncoder,
    NormalLikelihood,
    ReflectionBatch,
    ScalerConfig,
    ScalerTrainer,
    StudentTLikelihood,
    SurrogatePosterior,
    TruncatedNormal,
    build_scaler,
    fit_posterior_with_fixed_scales,
)
from xrais.models.variational.wilson import WilsonPrior


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


LOC_SCALE = [(2.0, 0.5), (0.3, 1.0), (0.01, 0.2), (5.0, 0.05)]


@pytest.mark.parametrize("loc,scale", LOC_SCALE)
def test_truncated_normal_matches_scipy(loc, scale):
    q = TruncatedNormal(torch.tensor([loc], dtype=torch.float64), torch.tensor([scale], dtype=torch.float64))
    ref = stats.truncnorm((0.0 - loc) / scale, np.inf, loc=loc, scale=scale)
    x = torch.tensor([[0.0], [0.5 * loc], [loc], [loc + 2 * scale]], dtype=torch.float64)
    assert np.allclose(q.log_prob(x).numpy()[:, 0], ref.logpdf(x.numpy()[:, 0]), rtol=1e-6)
    f, sf, i, si = (v.item() for v in q.moments())
    assert f == pytest.approx(ref.mean(), rel=1e-6)
    assert sf == pytest.approx(ref.std(), rel=1e-5)
    assert i == pytest.approx(ref.moment(2), rel=1e-6)
    assert si == pytest.approx(math.sqrt(ref.moment(4) - ref.moment(2) ** 2), rel=1e-4)


@pytest.mark.parametrize("loc,scale", LOC_SCALE)
def test_truncated_normal_samples_follow_the_distribution(loc, scale):
    q = TruncatedNormal(torch.tensor([loc]), torch.tensor([scale]))
    g = torch.Generator().manual_seed(1)
    x = q.rsample(100_000, generator=g)[:, 0].numpy()
    assert (x >= 0).all()
    ref = stats.truncnorm((0.0 - loc) / scale, np.inf, loc=loc, scale=scale)
    assert stats.kstest(x, ref.cdf).pvalue > 1e-3


@pytest.mark.parametrize("loc,scale", [(1.5, 0.4), (-0.5, 1.0), (0.0, 2.0)])
def test_folded_normal_matches_scipy(loc, scale):
    q = FoldedNormal(torch.tensor([loc], dtype=torch.float64), torch.tensor([scale], dtype=torch.float64))
    ref = stats.foldnorm(abs(loc) / scale, scale=scale)
    x = torch.tensor([[0.1], [1.0], [3.0]], dtype=torch.float64)
    assert np.allclose(q.log_prob(x).numpy()[:, 0], ref.logpdf(x.numpy()[:, 0]), rtol=1e-6)
    f, sf, i, si = (v.item() for v in q.moments())
    assert f == pytest.approx(ref.mean(), rel=1e-6)
    assert sf == pytest.approx(ref.std(), rel=1e-6)
    assert i == pytest.approx(ref.moment(2), rel=1e-6)
    assert si == pytest.approx(math.sqrt(ref.moment(4) - ref.moment(2) ** 2), rel=1e-5)


def test_surrogate_gradients_finite_for_weak_and_strong_reflections():
    prior = WilsonPrior(torch.tensor([False, True, False]), torch.tensor([1.0, 2.0, 1.0]))
    for family in ("truncated_normal", "folded_normal"):
        s = SurrogatePosterior(torch.tensor([1e-3, 1.0, 50.0]), torch.tensor([1e-4, 0.3, 1e-3]), family)
        q = s.distribution()
        F = q.rsample(8, generator=torch.Generator().manual_seed(0))
        loss = (q.log_prob(F) - prior.log_prob(F)).sum()
        loss.backward()
        assert torch.isfinite(loss)
        assert all(torch.isfinite(p.grad).all() for p in s.parameters())
    with pytest.raises(ConfigError, match="posterior"):
        SurrogatePosterior(torch.ones(2), torch.ones(2), "gamma")


def test_surrogate_starts_at_the_prior_moments():
    prior = WilsonPrior(torch.tensor([False, True]), torch.tensor([1.0, 4.0]), torch.tensor([2.0, 0.5]))
    s = SurrogatePosterior.from_prior(prior)
    d = s.distribution()
    torch.testing.assert_close(d.loc, prior.mean(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(d.scale, prior.stddev(), rtol=1e-4, atol=1e-5)


def test_likelihoods_match_scipy():
    i = torch.tensor([1.0, 10.0, -3.0], dtype=torch.float64)
    sig = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    pred = torch.tensor([[1.2, 4.0, 0.0]], dtype=torch.float64)
    normal = NormalLikelihood()(i, sig, pred).numpy()[0]
    assert np.allclose(normal, stats.norm.logpdf(i.numpy(), pred.numpy()[0], sig.numpy()))
    t = StudentTLikelihood(4.0)(i, sig, pred).numpy()[0]
    assert np.allclose(t, stats.t.logpdf(i.numpy(), 4.0, pred.numpy()[0], sig.numpy()))


def test_image_encoder_is_permutation_invariant_and_per_image():
    torch.manual_seed(0)
    enc = ImageEncoder(5, 16, 2, "leaky_relu")
    x = torch.randn(30, 5)
    image = torch.tensor([0] * 10 + [1] * 12 + [2] * 8)
    out = enc(x, image, 3)
    perm = torch.randperm(30)
    torch.testing.assert_close(enc(x[perm], image[perm], 3), out, rtol=1e-5, atol=1e-6)
    x2 = x.clone()
    x2[:10] += 1.0                                  # change image 0 only
    out2 = enc(x2, image, 3)
    assert not torch.allclose(out2[0], out[0])
    torch.testing.assert_close(out2[1:], out[1:])


def _toy_batch(n_images: int = 3, per_image: int = 20, n_refl: int = 40, seed: int = 0) -> ReflectionBatch:
    rng = np.random.default_rng(seed)
    refl = rng.integers(0, n_refl, n_images * per_image)
    image = np.repeat(np.arange(n_images), per_image)
    intensity = rng.exponential(100.0, refl.size)
    return ReflectionBatch.from_arrays(refl, image + 7, intensity, np.sqrt(intensity + 10.0),
                                       rng.normal(size=(refl.size, 3)))


def _toy_model(config: ScalerConfig | None = None, n_refl: int = 40):
    centric = np.zeros(n_refl, dtype=bool)
    centric[::5] = True
    model = build_scaler(centric=centric, epsilon=np.ones(n_refl), wilson_sigma=1.0, n_metadata=3, config=config)
    model.set_normalization(100.0, np.zeros(3), np.ones(3))
    return model


def test_elbo_terms_finite_and_scale_kl_is_the_closed_form():
    model = _toy_model()
    batch = _toy_batch()
    assert batch.n_images == 3 and int(batch.image.max()) == 2      # image labels renumbered
    terms = model(batch, generator=torch.Generator().manual_seed(0))
    terms.loss.backward()
    assert all(math.isfinite(v) for v in terms.as_floats().values())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    loc, scale = model.scale_parameters(batch)
    expected = torch.distributions.kl_divergence(torch.distributions.LogNormal(loc, scale),
                                                 torch.distributions.LogNormal(0.0, 1.0)).mean()
    assert terms.kl_scale.item() == pytest.approx(expected.item(), rel=1e-5)


def test_trainer_state_round_trip_continues_identically():
    batch = _toy_batch()
    a = ScalerTrainer(_toy_model())
    for _ in range(3):
        a.step(batch)
    state = a.state_dict()
    b = ScalerTrainer(_toy_model(ScalerConfig(seed=5)))      # other initial weights, then the saved state
    b.load_state_dict(state)
    assert a.step(batch) == b.step(batch)
    assert b.steps == 4


def test_training_recovers_structure_factors_and_scales():
    """Synthetic serial data: Wilson F, a log-normal scale per image and a resolution falloff."""
    rng = np.random.default_rng(1)
    n_refl, n_images, per_image = 300, 200, 60
    centric = rng.random(n_refl) < 0.1
    F = np.where(centric, np.abs(rng.normal(size=n_refl)), rng.rayleigh(np.sqrt(0.5), n_refl))
    s2 = rng.uniform(0.0, 0.1, n_refl)
    refl = np.concatenate([rng.choice(n_refl, per_image, replace=False) for _ in range(n_images)])
    image = np.repeat(np.arange(n_images), per_image)
    scale = np.exp(rng.normal(0.0, 0.3, n_images))[image] * np.exp(-10.0 * s2[refl])
    i_true = 100.0 * scale * F[refl] ** 2
    sigma = np.sqrt(i_true + 20.0)
    intensity = i_true + rng.normal(size=i_true.size) * sigma
    metadata = np.stack([s2[refl], image.astype(float)], axis=1)
    model = build_scaler(centric=centric, epsilon=np.ones(n_refl), n_metadata=2, config=ScalerConfig(seed=2))
    model.set_normalization(float(intensity.mean()), metadata.mean(0), metadata.std(0))
    trainer = ScalerTrainer(model)
    order = np.random.default_rng(0)
    for _ in range(25):
        for chunk in np.array_split(order.permutation(n_images), n_images // 4):
            rows = np.isin(image, chunk)
            trainer.step(ReflectionBatch.from_arrays(refl[rows], image[rows], intensity[rows], sigma[rows],
                                                     metadata[rows]))
    f_est = model.surrogate.moments()["F"]
    assert np.corrcoef(f_est, F)[0, 1] > 0.97
    # the fixed-scale refit of q(F) (used for half data sets) reaches the same answer
    loc, sc = model.scale_parameters(ReflectionBatch.from_arrays(refl, image, intensity, sigma, metadata))
    k = float(model.intensity_scale)
    refit = fit_posterior_with_fixed_scales(
        model.prior, torch.as_tensor(refl), torch.as_tensor(intensity / k, dtype=torch.float32),
        torch.as_tensor(sigma / k, dtype=torch.float32), loc.detach(), sc.detach(), likelihood=model.likelihood,
        steps=300)
    assert np.corrcoef(refit.moments()["F"], f_est)[0, 1] > 0.99
