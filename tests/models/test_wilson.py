"""Wilson priors against their closed forms, and the gemmi symmetry bookkeeping they rely on."""

from __future__ import annotations

import math

import gemmi
import numpy as np
import pytest
import torch

from xrais.errors import ConfigError
from xrais.models.variational.wilson import (
    UniqueReflections,
    WilsonPrior,
    WilsonShells,
    compute_centric_flag_array,
    compute_epsilon_array,
    fit_wilson_shells,
    make_space_group,
    reduce_to_asu_array,
)

E = torch.linspace(0.0, 5.0, 501, dtype=torch.float64)


def _prior(centric: bool, epsilon: float = 1.0, sigma: float = 1.0, n: int = 1) -> WilsonPrior:
    return WilsonPrior(torch.full((n,), centric), torch.full((n,), epsilon), sigma)


def test_centric_density_is_the_half_normal_closed_form():
    p = _prior(True).log_prob(E.float()[:, None], torch.tensor([0])).exp()[:, 0].double()
    expected = math.sqrt(2.0 / math.pi) * torch.exp(-E ** 2 / 2.0)
    torch.testing.assert_close(p, expected, rtol=1e-5, atol=1e-6)


def test_acentric_density_is_the_rayleigh_closed_form():
    p = _prior(False).log_prob(E.float()[:, None], torch.tensor([0])).exp()[:, 0].double()
    expected = 2.0 * E * torch.exp(-E ** 2)
    torch.testing.assert_close(p, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("centric", [False, True])
@pytest.mark.parametrize("epsilon,sigma", [(1.0, 1.0), (2.0, 0.3), (4.0, 25.0)])
def test_density_normalised_with_closed_form_moments(centric, epsilon, sigma):
    prior = _prior(centric, epsilon, sigma)
    scale = math.sqrt(epsilon * sigma)
    F = torch.linspace(0.0, 12.0 * scale, 200_001, dtype=torch.float64)
    p = prior.log_prob(F.float()[:, None]).exp()[:, 0].double()
    total = torch.trapezoid(p, F)
    mean = torch.trapezoid(F * p, F)
    var = torch.trapezoid(F * F * p, F) - mean ** 2
    assert float(total) == pytest.approx(1.0, abs=1e-4)
    assert float(mean) == pytest.approx(float(prior.mean()[0]), rel=1e-3)
    assert math.sqrt(float(var)) == pytest.approx(float(prior.stddev()[0]), rel=1e-3)
    # E[F²] = εΣ whatever the centricity (Wilson's definition of Σ)
    assert float(torch.trapezoid(F * F * p, F)) == pytest.approx(epsilon * sigma, rel=1e-3)


@pytest.mark.parametrize("centric", [False, True])
def test_gradients_are_finite_everywhere(centric):
    F = torch.tensor([0.0, 1e-30, 1e-6, 0.5, 3.0, 1e4], requires_grad=True)
    prior = _prior(centric, n=F.numel())
    lp = prior.log_prob(F)
    lp.sum().backward()
    assert torch.isfinite(lp).all()
    assert torch.isfinite(F.grad).all()
    # away from 0 the gradient is the analytic d/dF log p
    expected = (1.0 / 3.0 - 2.0 * 3.0) if not centric else -3.0
    assert float(F.grad[4]) == pytest.approx(expected, rel=1e-5)


def test_prior_rejects_bad_parameters():
    with pytest.raises(ConfigError, match="ε > 0"):
        WilsonPrior(torch.tensor([False]), torch.tensor([0.0]))
    with pytest.raises(ConfigError, match="differ"):
        WilsonPrior(torch.tensor([False, True]), torch.tensor([1.0]))


def test_centric_flags_and_epsilon_in_p43212():
    hkl = [[1, 2, 3], [3, 5, 0], [0, 0, 4], [2, 2, 0], [4, 4, 1], [0, 3, 1]]
    # hk0, 0kl and hhl (perpendicular to 2-fold axes of 422) are centric; a general reflection is not
    assert compute_centric_flag_array(hkl, "P 43 21 2").tolist() == [False, True, True, True, True, True]
    # 00l lies on the 4-fold (ε = 4), hh0 on a diagonal 2-fold (ε = 2)
    assert compute_epsilon_array(hkl, "P 43 21 2").tolist() == [1, 1, 4, 2, 1, 1]
    assert compute_epsilon_array([[0, 0, 3]], 1).tolist() == [1]


def test_space_group_parsing():
    assert make_space_group("P43212").hm == "P 43 21 2"
    assert make_space_group(96).hm == "P 43 21 2"
    with pytest.raises(ConfigError, match="Hermann"):
        make_space_group("Q 99")


def test_reduce_to_asu_maps_every_mate_to_one_index():
    sg = gemmi.SpaceGroup("P 43 21 2")
    ops = sg.operations()
    h = [3, 7, 5]
    mates = [op.apply_to_hkl(h) for op in ops.sym_ops]
    mates += [[-v for v in m] for m in mates]
    asu, isym = reduce_to_asu_array(mates, sg)
    assert len({tuple(r) for r in asu.tolist()}) == 1
    assert gemmi.ReciprocalAsu(sg).is_in(asu[0].tolist())
    # images of h share one Friedel parity, images of −h the other (odd ISYM: I(+), even: I(−))
    first, second = isym[: len(mates) // 2] % 2, isym[len(mates) // 2:] % 2
    assert len(set(first)) == 1 and len(set(second)) == 1 and first[0] != second[0]


@pytest.mark.parametrize("anomalous", [False, True])
def test_unique_reflections_count_and_lookup(anomalous):
    cell = gemmi.UnitCell(79.1, 79.1, 38.4, 90, 90, 90)
    sg = gemmi.SpaceGroup("P 43 21 2")
    unique = UniqueReflections(cell, sg, 4.0, anomalous=anomalous)
    hkl = gemmi.make_miller_array(cell, sg, 4.0)
    hkl = hkl[~np.asarray(sg.operations().systematic_absences(hkl), dtype=bool)]
    n_acentric = int((~compute_centric_flag_array(hkl, sg)).sum())
    assert len(unique) == len(hkl) + (n_acentric if anomalous else 0)
    rows = unique.lookup(unique.hkl, unique.friedel)
    assert (rows == np.arange(len(unique))).all()
    assert unique.lookup([[0, 0, 1]], [1]).tolist() == [-1]          # 00l with l odd is absent in P 43 21 2
    assert unique.lookup([[40, 0, 0]], [1]).tolist() == [-1]         # beyond d_min
    assert (unique.d_A >= 4.0).all() and set(np.unique(unique.friedel)) <= {-1, 1}
    if anomalous:
        centric = np.flatnonzero(unique.centric)[0]
        # a centric reflection has one entry whatever the Friedel sign asked for
        assert unique.lookup(unique.hkl[[centric]], [-1]).tolist() == [centric]


def test_wilson_shells_recover_a_known_falloff():
    rng = np.random.default_rng(3)
    s2 = rng.uniform(0.0, 0.11, 40_000)
    sigma_true = 100.0 * np.exp(-2 * 15.0 * s2 / 4)        # B = 15 Å² on intensities: exp(−B s²/2)
    epsilon = rng.choice([1, 2], size=s2.size)
    intensity = rng.exponential(sigma_true * epsilon)        # acentric Wilson intensities
    shells = fit_wilson_shells(s2, intensity, epsilon, n_shells=10)
    assert np.all(np.abs(shells(shells.inv_d2_per_A2) / (100.0 * np.exp(-7.5 * shells.inv_d2_per_A2)) - 1) < 0.06)
    again = WilsonShells.from_dict(shells.to_dict())
    assert np.allclose(again(s2[:10]), shells(s2[:10]))
    assert np.allclose(WilsonShells.flat()(s2[:10]), 1.0)
    with pytest.raises(ConfigError, match="positive mean"):
        fit_wilson_shells([0.1], [-1.0], [1])
