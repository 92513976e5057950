"""Distribution pieces of the variational models: surrogates, priors, likelihoods and profiles.

Self-contained (torch only), so that the integrator and the scaler share them:

* surrogate posteriors of positive quantities, built from a mean and a standard deviation:
  :func:`gamma_from_mean_std`, :func:`lognormal_from_mean_std`, :func:`make_surrogate`;
* priors by name and parameters (:func:`make_prior`): exponential (the paper's default,
  Aldama et al. Table 1: rate 1), gamma, half-normal, log-normal;
* :func:`kl_divergence`: closed form where torch registers one (Gamma‖Exponential,
  Gamma‖Gamma, LogNormal‖LogNormal, …), else a Monte-Carlo estimate from the surrogate's
  reparameterised samples;
* log-likelihoods summed over the voxels (or observations) of each item:
  :func:`poisson_log_likelihood`, :func:`normal_log_likelihood`, :func:`student_t_log_likelihood`;
* reflection profiles, normalised over a shoebox's voxels: :func:`mvn_profile` (a multivariate
  normal over voxel coordinates), :func:`mvn_profile_binned` (the same, integrated over each
  frame along z) and :func:`softmax_profile` (free weights, Dirichlet-like).

Profiles are normalised over the measured voxels when a mask is given: I is then the photons the
reflection put into the measured part of its shoebox.

Shapes: a leading sample dimension S (``rsample((S,))``) broadcasts against the batch B.
"""

from __future__ import annotations

import math

import torch
from torch import distributions as D

__all__ = ["gamma_from_mean_std", "lognormal_from_mean_std", "make_surrogate", "make_prior", "kl_divergence",
           "poisson_log_likelihood", "normal_log_likelihood", "student_t_log_likelihood", "mvn_profile",
           "mvn_profile_binned",
           "softmax_profile", "truncated_normal_moments", "SURROGATES", "PRIORS"]

SURROGATES = ("gamma", "lognormal")
PRIORS = ("exponential", "gamma", "halfnormal", "lognormal")
_TINY = 1e-12


def gamma_from_mean_std(mean: torch.Tensor, std: torch.Tensor) -> D.Gamma:
    """Gamma with the given mean and standard deviation: α = (μ/σ)², β = μ/σ².

    Examples
    --------
    >>> q = gamma_from_mean_std(torch.tensor(4.0), torch.tensor(2.0))
    >>> float(q.mean), float(q.stddev)
    (4.0, 2.0)
    """
    mean = mean.clamp_min(_TINY)
    std = std.clamp_min(_TINY)
    return D.Gamma(concentration=(mean / std) ** 2, rate=mean / std**2)


def lognormal_from_mean_std(mean: torch.Tensor, std: torch.Tensor) -> D.LogNormal:
    """Log-normal with the given mean and standard deviation: s² = log(1 + σ²/μ²), m = log μ − s²/2."""
    mean = mean.clamp_min(_TINY)
    s2 = torch.log1p((std / mean) ** 2).clamp_min(_TINY)
    return D.LogNormal(torch.log(mean) - 0.5 * s2, s2.sqrt())


def make_surrogate(kind: str, mean: torch.Tensor, std: torch.Tensor) -> D.Distribution:
    """A positive surrogate posterior (``"gamma"`` or ``"lognormal"``) of the given mean and std."""
    if kind == "gamma":
        return gamma_from_mean_std(mean, std)
    if kind == "lognormal":
        return lognormal_from_mean_std(mean, std)
    raise ValueError(f"surrogate {kind!r}: expected one of {', '.join(SURROGATES)}")


def make_prior(kind: str, *params: float, device: torch.device | str | None = None) -> D.Distribution:
    """A prior by name: ``exponential`` (rate), ``gamma`` (concentration, rate), ``halfnormal``
    (scale) or ``lognormal`` (loc, scale).

    Examples
    --------
    >>> float(make_prior("exponential", 1.0).mean)
    1.0
    """
    need = {"exponential": 1, "gamma": 2, "halfnormal": 1, "lognormal": 2}
    if kind not in need:
        raise ValueError(f"prior {kind!r}: expected one of {', '.join(PRIORS)}")
    if len(params) != need[kind]:
        raise ValueError(f"prior {kind!r}: expected {need[kind]} parameter(s), got {len(params)}")
    t = [torch.tensor(float(p), device=device) for p in params]
    if kind != "lognormal" and not all(float(p) > 0 for p in params):
        raise ValueError(f"prior {kind!r}: parameters must be > 0, got {params}")
    return {"exponential": D.Exponential, "gamma": D.Gamma, "halfnormal": D.HalfNormal,
            "lognormal": D.LogNormal}[kind](*t)


def kl_divergence(q: D.Distribution, p: D.Distribution, samples: torch.Tensor | None = None) -> torch.Tensor:
    """KL(q‖p): closed form when torch has one, else the mean of log q(z) − log p(z) over ``samples`` (S, …).

    Raises
    ------
    ValueError
        When no closed form exists and no samples are given.
    """
    try:
        return D.kl_divergence(q, p)
    except NotImplementedError:
        if samples is None:
            raise ValueError(f"KL({type(q).__name__}‖{type(p).__name__}): no closed form; pass samples") from None
        return (q.log_prob(samples) - p.log_prob(samples)).mean(dim=0)


def poisson_log_likelihood(counts: torch.Tensor, rate: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Σ over the last dimension of mask·(x·log λ − λ − log x!), shape = broadcast(counts, rate)[:-1].

    Examples
    --------
    >>> x = torch.tensor([[0.0, 2.0]]); lam = torch.tensor([[1.0, 2.0]])
    >>> round(float(poisson_log_likelihood(x, lam)), 6) == round(-1.0 + 2 * math.log(2) - 2 - math.log(2), 6)
    True
    """
    ll = counts * torch.log(rate.clamp_min(_TINY)) - rate - torch.lgamma(counts + 1.0)
    if mask is not None:
        ll = ll * mask
    return ll.sum(dim=-1)


def normal_log_likelihood(x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor,
                          mask: torch.Tensor | None = None) -> torch.Tensor:
    """Σ over the last dimension of the normal log-density of x (mask: observations to count)."""
    ll = D.Normal(loc, scale).log_prob(x)
    return (ll * mask if mask is not None else ll).sum(dim=-1)


def student_t_log_likelihood(x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, dof: float,
                             mask: torch.Tensor | None = None) -> torch.Tensor:
    """Σ over the last dimension of the Student-t log-density of x with ``dof`` degrees of freedom."""
    ll = D.StudentT(torch.as_tensor(dof, dtype=x.dtype, device=x.device), loc, scale).log_prob(x)
    return (ll * mask if mask is not None else ll).sum(dim=-1)


def _masked_softmax(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is not None:
        logits = logits.masked_fill(mask <= 0, float("-inf"))
    return torch.softmax(logits, dim=-1)


def mvn_profile(offsets: torch.Tensor, mean: torch.Tensor, scale_tril: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """Profile weights γ_j ∝ exp(−½|L⁻¹(x_j − μ)|²) over voxels, normalised to sum 1.

    Parameters
    ----------
    offsets : (B, V, 3) — voxel-centre coordinates (any origin; e.g. relative to the predicted centroid)
    mean : (B, 3) — μ in the same coordinates
    scale_tril : (B, 3, 3) — lower-triangular L with Σ = LLᵀ
    mask : (B, V), optional — 1 for measured voxels; the profile is normalised over these (0 elsewhere)

    Returns
    -------
    (B, V) — non-negative weights, Σ_j γ_j = 1
    """
    delta = (offsets - mean[:, None, :]).transpose(1, 2)  # (B, 3, V)
    white = torch.linalg.solve_triangular(scale_tril, delta, upper=False)
    return _masked_softmax(-0.5 * (white * white).sum(dim=1), mask)


def mvn_profile_binned(offsets: torch.Tensor, mean: torch.Tensor, covariance: torch.Tensor,
                       bin_width: float = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Profile weights of a multivariate normal whose first coordinate is binned (integrated over voxels).

    A shoebox frame integrates the rocking curve over one oscillation, so along z (coordinate 0)
    the weight of a voxel is the probability of its bin [z − w/2, z + w/2): with r = (slow, fast),
    p(z | r) is normal with mean μ_z + Σ_zr Σ_rr⁻¹(r − μ_r) and variance Σ_zz − Σ_zr Σ_rr⁻¹ Σ_rz, so

        γ_j ∝ N(r_j; μ_r, Σ_rr) · [Φ((z_j + w/2 − m_j)/s) − Φ((z_j − w/2 − m_j)/s)],

    with r evaluated at the pixel centre; normalised to sum 1 over the voxels.

    Parameters
    ----------
    offsets : (B, V, 3) — voxel centres (z, slow, fast)
    mean : (B, 3)
    covariance : (B, 3, 3) — symmetric positive definite
    bin_width : float — voxel extent along z
    mask : (B, V), optional — normalise over the measured voxels only

    Returns
    -------
    (B, V)
    """
    d = offsets - mean[:, None, :]
    s_rr = covariance[:, 1:, 1:]
    s_zr = covariance[:, 0, 1:]
    det = (s_rr[:, 0, 0] * s_rr[:, 1, 1] - s_rr[:, 0, 1] * s_rr[:, 1, 0]).clamp_min(1e-12)
    inv = torch.stack([torch.stack([s_rr[:, 1, 1], -s_rr[:, 0, 1]], -1),
                       torch.stack([-s_rr[:, 1, 0], s_rr[:, 0, 0]], -1)], -2) / det[:, None, None]
    r = d[..., 1:]
    log_r = -0.5 * torch.einsum("bvi,bij,bvj->bv", r, inv, r)
    gain = torch.einsum("bi,bij->bj", s_zr, inv)  # Σ_zr Σ_rr⁻¹, (B, 2)
    cond_mean = torch.einsum("bj,bvj->bv", gain, r)
    cond_sd = (covariance[:, 0, 0] - (gain * s_zr).sum(-1)).clamp_min(1e-6).sqrt()[:, None]
    hi = torch.special.ndtr((d[..., 0] + 0.5 * bin_width - cond_mean) / cond_sd)
    lo = torch.special.ndtr((d[..., 0] - 0.5 * bin_width - cond_mean) / cond_sd)
    logits = log_r + torch.log((hi - lo).clamp_min(1e-30))
    return _masked_softmax(logits, mask)


def softmax_profile(logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Profile weights softmax(logits) over the last (voxel) dimension (measured voxels only with ``mask``):
    free, Dirichlet-like weights."""
    return _masked_softmax(logits, mask)


def truncated_normal_moments(loc: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of N(loc, scale²) truncated to [0, ∞).

    With t = loc/scale and λ = φ(t)/Φ(t): mean = scale·(t + λ), var = scale²·(1 − λ(λ + t)).
    Stable for very negative t (λ from log Φ).

    Examples
    --------
    >>> m, s = truncated_normal_moments(torch.tensor(0.0), torch.tensor(1.0))
    >>> round(float(m), 4), round(float(s), 4)
    (0.7979, 0.6028)
    """
    t = loc / scale
    log_phi = -0.5 * t * t - 0.5 * math.log(2.0 * math.pi)
    lam = torch.exp(log_phi - torch.special.log_ndtr(t))
    var = (1.0 - lam * (lam + t)).clamp_min(1e-6)
    return scale * (t + lam), scale * var.sqrt()
