"""Variational scaling and merging of integrated intensities, one image (or a few) per step.

The model is that of online-inference-structure-factors.txt §1–2 (Dalton & Hekstra), after
careless (Dalton et al. 2022; Aldama et al. 2023, Acta Cryst. D79, 796, §5–7):

* every unique reflection h has a surrogate posterior q(F_h), a normal distribution truncated
  to F ≥ 0 (or a folded normal), under Wilson's prior p(F_h) (:mod:`.wilson`);
* every observation (h, i) has a log-normal scale posterior q(Σ_hi) whose two parameters a
  network predicts from the observation's metadata and a vector that describes its image: an
  attention-weighted mean, over the image's reflections, of an encoding of each reflection
  (metadata, intensity, current E[F²]). Only global parameters are learned, so one image
  (or a few) per gradient step is enough and data larger than memory stream through;
* the likelihood of an observed intensity I ± σ is normal (or Student-t) about Σ·F²;
* the loss per observation is −E_q[log p(I | Σ, F)] + w_F·(log q(F) − log p(F)) +
  w_Σ·KL(q(Σ) ‖ LogNormal(0, s₀)), averaged over the observations of a step (Adam).

Intensities are divided by one constant fitted on the first data (their mean), and the
metadata are standardised with means and deviations fitted at the same time; both are buffers
of the model, so callers pass raw values. Each network is a stack of ResNet-v2 blocks with no
normalisation layers (the paper's Figure 2d), weights drawn from a normal truncated at ±2σ,
σ = √(2 / (5·N·(d_in + d_out))) with N the number of blocks, and zero biases.

Shapes: n observations in a batch of b images; m metadata columns; R unique reflections.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from xrais.errors import ConfigError
from xrais.models.variational.wilson import WilsonPrior

__all__ = [
    "ScalerConfig",
    "ReflectionBatch",
    "TruncatedNormal",
    "FoldedNormal",
    "SurrogatePosterior",
    "ResidualBlock",
    "ImageEncoder",
    "ScaleNetwork",
    "NormalLikelihood",
    "StudentTLikelihood",
    "VariationalScaler",
    "ScalerTrainer",
    "build_scaler",
    "fit_posterior_with_fixed_scales",
]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_MIN_SCALE = 1e-4


class ScalerConfig(BaseModel):
    """Hyperparameters of the variational scaler (defaults suit serial data on a CPU)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    posterior: Literal["truncated_normal", "folded_normal"] = Field(
        "truncated_normal", description="family of the surrogate posterior q(F)")
    likelihood: Literal["normal", "student_t"] = Field("normal", description="error model of I given Σ·F²")
    student_t_dof: float = Field(16.0, gt=0, description="degrees of freedom of the Student-t likelihood")
    d_model: int = Field(32, ge=2, le=1024, description="width of the encoder and the scale network")
    encoder_blocks: int = Field(2, ge=0, le=64, description="residual blocks of the image encoder")
    scale_blocks: int = Field(4, ge=0, le=64, description="residual blocks of the scale network")
    activation: Literal["relu", "leaky_relu", "silu", "gelu"] = Field("leaky_relu", description="nonlinearity")
    kl_weight_F: float = Field(1.0, ge=0, description="w_F, weight of log q(F) − log p(F) per observation")
    kl_weight_scale: float = Field(1.0, ge=0, description="w_Σ, weight of KL(q(Σ)‖p(Σ)) per observation")
    scale_prior_sd: float = Field(1.0, gt=0, description="s₀ of the LogNormal(0, s₀) scale prior")
    mc_samples: int = Field(1, ge=1, le=256, description="Monte Carlo samples per step")
    learning_rate: float = Field(1e-3, gt=0, description="Adam step of the networks")
    posterior_learning_rate: float = Field(0.05, gt=0, description="Adam step of the q(F) parameters")
    images_per_step: int = Field(4, ge=1, description="images in one gradient step")
    wilson_shells: int = Field(20, ge=0, description="resolution shells of the Wilson Σ fitted to the data "
                                                    "(0: flat prior, Σ = 1)")
    gradient_clip: float = Field(100.0, gt=0, description="largest gradient norm of a step")
    seed: int = Field(0, ge=0, description="seed of the initial weights and the Monte Carlo samples")


@dataclass
class ReflectionBatch:
    """The observations of one gradient step (one or a few images), as tensors.

    Attributes
    ----------
    refl_id : Tensor, shape (n,), int64 — row of each observation's reflection in the unique list.
    image : Tensor, shape (n,), int64 — image of each observation, 0 … n_images − 1 within the batch.
    n_images : int
    intensity : Tensor, shape (n,), float32 — integrated intensity, photons (raw units).
    sigma : Tensor, shape (n,), float32 — its standard error, same units, > 0.
    metadata : Tensor, shape (n, m), float32 — raw metadata (1/d², detector position, image number, …).
    """

    refl_id: torch.Tensor
    image: torch.Tensor
    n_images: int
    intensity: torch.Tensor
    sigma: torch.Tensor
    metadata: torch.Tensor

    @classmethod
    def from_arrays(cls, refl_id: np.ndarray, image: np.ndarray, intensity: np.ndarray, sigma: np.ndarray,
                    metadata: np.ndarray, device: torch.device | str = "cpu") -> "ReflectionBatch":
        """Build a batch from NumPy arrays; ``image`` may hold any labels (renumbered 0 … b − 1)."""
        labels, local = np.unique(np.asarray(image), return_inverse=True)
        return cls(
            refl_id=torch.as_tensor(np.asarray(refl_id, dtype=np.int64), device=device),
            image=torch.as_tensor(local.reshape(-1).astype(np.int64), device=device),
            n_images=int(len(labels)),
            intensity=torch.as_tensor(np.asarray(intensity, dtype=np.float32), device=device),
            sigma=torch.as_tensor(np.asarray(sigma, dtype=np.float32), device=device),
            metadata=torch.as_tensor(np.asarray(metadata, dtype=np.float32).reshape(len(refl_id), -1), device=device),
        )


# --- surrogate posteriors ---------------------------------------------------------------------

class TruncatedNormal:
    """Normal(loc, scale) truncated to [0, ∞): reparameterised samples, density and moments.

    Sampling draws the upper tail with the inverse CDF of its mirror image,
    x = loc − scale·Φ⁻¹(u·Φ(loc/scale)), which stays accurate when loc ≪ 0. Moments use the
    recursion E[Z^k] = (k−1)E[Z^(k−2)] + α^(k−1)·φ(α)/Φ(−α) for Z truncated to [α, ∞), α = −loc/scale.
    """

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor) -> None:
        self.loc, self.scale = loc, scale

    def rsample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        loc, scale = self.loc.double(), self.scale.double()
        mass = torch.special.ndtr(loc / scale).clamp_min(1e-300)      # P(X > 0) = Φ(−α)
        u = torch.rand((n, *loc.shape), dtype=torch.float64, device=loc.device, generator=generator)
        u = u.clamp(1e-12, 1.0 - 1e-12)
        x = loc - scale * torch.special.ndtri(u * mass)
        return x.clamp_min(0.0).to(self.loc.dtype)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.loc) / self.scale
        return -0.5 * z * z - _LOG_SQRT_2PI - torch.log(self.scale) - torch.special.log_ndtr(self.loc / self.scale)

    def moments(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """E[F], SD[F], E[F²], SD[F²] (float64)."""
        mu, s = self.loc.double(), self.scale.double()
        a = -mu / s
        lam = torch.exp(-0.5 * a * a - _LOG_SQRT_2PI - torch.special.log_ndtr(-a))
        m1 = lam
        m2 = 1.0 + a * lam
        m3 = 2.0 * m1 + a * a * lam
        m4 = 3.0 * m2 + a ** 3 * lam
        e1 = (mu + s * m1).clamp_min(0.0)
        e2 = (mu * mu + 2 * mu * s * m1 + s * s * m2).clamp_min(0.0)
        e4 = mu ** 4 + 4 * mu ** 3 * s * m1 + 6 * mu ** 2 * s ** 2 * m2 + 4 * mu * s ** 3 * m3 + s ** 4 * m4
        sd1 = (e2 - e1 * e1).clamp_min(0.0).sqrt()
        sd2 = (e4 - e2 * e2).clamp_min(0.0).sqrt()
        return e1, sd1, e2, sd2


class FoldedNormal:
    """|X| for X ~ Normal(loc, scale): reparameterised samples, density and moments."""

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor) -> None:
        self.loc, self.scale = loc, scale

    def rsample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = torch.randn((n, *self.loc.shape), dtype=self.loc.dtype, device=self.loc.device, generator=generator)
        return (self.loc + self.scale * eps).abs()

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        zm = (x - self.loc) / self.scale
        zp = (x + self.loc) / self.scale
        return torch.logaddexp(-0.5 * zm * zm, -0.5 * zp * zp) - _LOG_SQRT_2PI - torch.log(self.scale)

    def moments(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """E[F], SD[F], E[F²], SD[F²] (float64); F² = X², so its moments are the normal ones."""
        mu, s = self.loc.double(), self.scale.double()
        e1 = s * math.sqrt(2.0 / math.pi) * torch.exp(-0.5 * (mu / s) ** 2) + mu * (1.0 - 2.0 * torch.special.ndtr(-mu / s))
        e2 = mu * mu + s * s
        e4 = mu ** 4 + 6 * mu * mu * s * s + 3 * s ** 4
        return e1, (e2 - e1 * e1).clamp_min(0.0).sqrt(), e2, (e4 - e2 * e2).clamp_min(0.0).sqrt()


class SurrogatePosterior(nn.Module):
    """One q(F_h) per unique reflection: a location and a softplus-constrained scale each.

    For the truncated normal the location is softplus-constrained too (≥ 0, as in careless): a
    weak reflection then has its mode at 0 rather than a location running off to −∞ with a
    vanishing scale, where the distribution degenerates numerically.

    Parameters
    ----------
    loc, scale : Tensor, shape (R,) — initial location and scale (scale > 0; loc > 0 for the
        truncated normal).
    family : "truncated_normal" or "folded_normal"
    """

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, family: str = "truncated_normal") -> None:
        super().__init__()
        if family not in ("truncated_normal", "folded_normal"):
            raise ConfigError(f"posterior {family!r}: expected 'truncated_normal' or 'folded_normal'")
        self.family = family
        loc = torch.as_tensor(loc, dtype=torch.float32)
        if family == "truncated_normal":
            loc = _softplus_inverse(loc.clamp_min(1e-3))
        self.raw_loc = nn.Parameter(loc.clone())
        self.raw_scale = nn.Parameter(_softplus_inverse(torch.as_tensor(scale, dtype=torch.float32)
                                                        .clamp_min(2 * _MIN_SCALE) - _MIN_SCALE))

    @classmethod
    def from_prior(cls, prior: WilsonPrior, family: str = "truncated_normal") -> "SurrogatePosterior":
        """Start every q(F) at the prior's mean and standard deviation."""
        with torch.no_grad():
            return cls(prior.mean(), prior.stddev(), family)

    def __len__(self) -> int:
        return self.raw_loc.numel()

    def distribution(self, index: torch.Tensor | None = None) -> TruncatedNormal | FoldedNormal:
        loc = self.raw_loc if index is None else self.raw_loc[index]
        if self.family == "truncated_normal":
            loc = nn.functional.softplus(loc)
        raw = self.raw_scale if index is None else self.raw_scale[index]
        scale = nn.functional.softplus(raw) + _MIN_SCALE
        return TruncatedNormal(loc, scale) if self.family == "truncated_normal" else FoldedNormal(loc, scale)

    @torch.no_grad()
    def moments(self) -> dict[str, np.ndarray]:
        """Posterior moments of every reflection: F, SIGF, I (= E[F²]) and SIGI, float64 arrays."""
        f, sf, i, si = self.distribution().moments()
        return {"F": f.cpu().numpy(), "SIGF": sf.cpu().numpy(), "I": i.cpu().numpy(), "SIGI": si.cpu().numpy()}


def _softplus_inverse(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))


# --- networks ---------------------------------------------------------------------------------

def _activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "silu": nn.SiLU, "gelu": nn.GELU}[name]()


def _init_linear(layer: nn.Linear, n_blocks: int) -> nn.Linear:
    sd = math.sqrt(2.0 / (5.0 * max(n_blocks, 1) * (layer.in_features + layer.out_features)))
    nn.init.trunc_normal_(layer.weight, 0.0, sd, -2.0 * sd, 2.0 * sd)
    nn.init.zeros_(layer.bias)
    return layer


class ResidualBlock(nn.Module):
    """Pre-activation residual block without normalisation: x + W₂·act(W₁·act(x))."""

    def __init__(self, d_model: int, d_ff: int, activation: str, n_blocks: int) -> None:
        super().__init__()
        self.act = _activation(activation)
        self.ff1 = _init_linear(nn.Linear(d_model, d_ff), n_blocks)
        self.ff2 = _init_linear(nn.Linear(d_ff, d_model), n_blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ff2(self.act(self.ff1(self.act(x))))


def _stack(d_in: int, d_model: int, n_blocks: int, activation: str) -> nn.Sequential:
    layers: list[nn.Module] = [_init_linear(nn.Linear(d_in, d_model), n_blocks)]
    layers += [ResidualBlock(d_model, 2 * d_model, activation, n_blocks) for _ in range(n_blocks)]
    layers.append(_activation(activation))
    return nn.Sequential(*layers)


def _segment_softmax(score: torch.Tensor, segment: torch.Tensor, n_segments: int) -> torch.Tensor:
    top = torch.full((n_segments,), -torch.inf, dtype=score.dtype, device=score.device)
    top = top.scatter_reduce(0, segment, score, reduce="amax", include_self=True)
    w = torch.exp(score - top[segment])
    total = torch.zeros(n_segments, dtype=score.dtype, device=score.device).index_add_(0, segment, w)
    return w / total[segment]


class ImageEncoder(nn.Module):
    """Permutation-invariant image vector: each reflection proposes an encoding and a score;
    the image's vector is the score-softmax-weighted mean of its reflections' encodings.

    Input (n, d_in) → output (n_images, d_model).
    """

    def __init__(self, d_in: int, d_model: int, n_blocks: int, activation: str) -> None:
        super().__init__()
        self.body = _stack(d_in, d_model, n_blocks, activation)
        self.head = _init_linear(nn.Linear(d_model, d_model + 1), n_blocks)

    def forward(self, features: torch.Tensor, image: torch.Tensor, n_images: int) -> torch.Tensor:
        out = self.head(self.body(features))
        encoding, score = out[:, :-1], out[:, -1]
        weight = _segment_softmax(score, image, n_images)
        pooled = torch.zeros(n_images, encoding.shape[1], dtype=encoding.dtype, device=encoding.device)
        return pooled.index_add_(0, image, weight[:, None] * encoding)


class ScaleNetwork(nn.Module):
    """Location and scale of each observation's log-normal q(Σ) from its metadata and image vector."""

    def __init__(self, d_metadata: int, d_model: int, n_blocks: int, activation: str) -> None:
        super().__init__()
        self.body = _stack(d_metadata + d_model, d_model, n_blocks, activation)
        self.head = _init_linear(nn.Linear(d_model, 2), n_blocks)
        with torch.no_grad():
            self.head.bias[1] = math.log(math.expm1(0.1))   # start with q(Σ) about 10 % wide

    def forward(self, metadata: torch.Tensor, image_vector: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(self.body(torch.cat([metadata, image_vector], dim=1)))
        return out[:, 0], nn.functional.softplus(out[:, 1]) + _MIN_SCALE


# --- likelihoods ------------------------------------------------------------------------------

class NormalLikelihood(nn.Module):
    """log N(I | prediction, σ)."""

    def forward(self, intensity: torch.Tensor, sigma: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
        z = (intensity - prediction) / sigma
        return -0.5 * z * z - torch.log(sigma) - _LOG_SQRT_2PI


class StudentTLikelihood(nn.Module):
    """log Student-t(I | prediction, σ, ν): heavier tails than the normal, robust to outliers."""

    def __init__(self, dof: float) -> None:
        super().__init__()
        self.dof = float(dof)
        nu = self.dof
        self._const = math.lgamma(0.5 * (nu + 1)) - math.lgamma(0.5 * nu) - 0.5 * math.log(nu * math.pi)

    def forward(self, intensity: torch.Tensor, sigma: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
        z = (intensity - prediction) / sigma
        return self._const - torch.log(sigma) - 0.5 * (self.dof + 1.0) * torch.log1p(z * z / self.dof)


# --- the model --------------------------------------------------------------------------------

@dataclass
class ElboTerms:
    """One step's loss and its parts, each averaged over the step's observations."""

    loss: torch.Tensor
    nll: torch.Tensor
    kl_F: torch.Tensor
    kl_scale: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {"loss": self.loss.item(), "NLL": self.nll.item(), "F KLDiv": self.kl_F.item(),
                "Σ KLDiv": self.kl_scale.item()}


class VariationalScaler(nn.Module):
    """Surrogate posterior, Wilson prior, likelihood and scale model, assembled (careless style).

    Parameters
    ----------
    surrogate : SurrogatePosterior — q(F) of the R unique reflections.
    prior : WilsonPrior — p(F) of the same reflections.
    likelihood : NormalLikelihood or StudentTLikelihood
    encoder : ImageEncoder — takes d_metadata + 3 features per reflection.
    scale_network : ScaleNetwork
    n_metadata : int — m, the metadata columns of a batch.
    kl_weight_F, kl_weight_scale, scale_prior_sd, mc_samples : see :class:`ScalerConfig`.
    """

    def __init__(self, surrogate: SurrogatePosterior, prior: WilsonPrior, likelihood: nn.Module,
                 encoder: ImageEncoder, scale_network: ScaleNetwork, *, n_metadata: int,
                 kl_weight_F: float = 1.0, kl_weight_scale: float = 1.0, scale_prior_sd: float = 1.0,
                 mc_samples: int = 1) -> None:
        super().__init__()
        if len(surrogate) != prior.epsilon.numel():
            raise ConfigError(f"surrogate has {len(surrogate)} reflections, prior {prior.epsilon.numel()}")
        self.surrogate, self.prior, self.likelihood = surrogate, prior, likelihood
        self.encoder, self.scale_network = encoder, scale_network
        self.kl_weight_F, self.kl_weight_scale = float(kl_weight_F), float(kl_weight_scale)
        self.scale_prior_sd, self.mc_samples = float(scale_prior_sd), int(mc_samples)
        self.register_buffer("intensity_scale", torch.tensor(1.0))
        self.register_buffer("metadata_mean", torch.zeros(n_metadata))
        self.register_buffer("metadata_std", torch.ones(n_metadata))

    def set_normalization(self, intensity_scale: float, metadata_mean: np.ndarray, metadata_std: np.ndarray) -> None:
        """Fix the intensity divisor and the metadata standardisation (from the first data)."""
        if not intensity_scale > 0:
            raise ConfigError(f"intensity scale {intensity_scale}: expected > 0 (is the mean intensity positive?)")
        std = np.where(np.asarray(metadata_std) > 1e-12, metadata_std, 1.0)
        self.intensity_scale.fill_(float(intensity_scale))
        self.metadata_mean.copy_(torch.as_tensor(metadata_mean, dtype=torch.float32))
        self.metadata_std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def _inputs(self, batch: ReflectionBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        intensity = batch.intensity / self.intensity_scale
        sigma = (batch.sigma / self.intensity_scale).clamp_min(1e-6)
        metadata = (batch.metadata - self.metadata_mean) / self.metadata_std
        return intensity, sigma, metadata

    def scale_parameters(self, batch: ReflectionBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Location and scale (in log space) of q(Σ) for every observation of the batch, shape (n,) each."""
        intensity, sigma, metadata = self._inputs(batch)
        with torch.no_grad():
            _, _, f2, _ = self.surrogate.distribution(batch.refl_id).moments()
            log_f2 = torch.log(f2.float().clamp_min(1e-6))
        features = torch.cat([metadata, torch.asinh(intensity)[:, None], torch.log(sigma)[:, None],
                              log_f2[:, None]], dim=1)
        image_vector = self.encoder(features, batch.image, batch.n_images)
        return self.scale_network(metadata, image_vector[batch.image])

    def forward(self, batch: ReflectionBatch, generator: torch.Generator | None = None) -> ElboTerms:
        """The negative ELBO of a batch and its parts (means over observations)."""
        intensity, sigma, _ = self._inputs(batch)
        loc, scale = self.scale_parameters(batch)
        eps = torch.randn((self.mc_samples, loc.numel()), dtype=loc.dtype, device=loc.device, generator=generator)
        sigma_samples = torch.exp(loc + scale * eps)

        unique, inverse = torch.unique(batch.refl_id, return_inverse=True)
        q = self.surrogate.distribution(unique)
        F = q.rsample(self.mc_samples, generator=generator)
        kl_F = (q.log_prob(F) - self.prior.log_prob(F, unique)).mean(0)[inverse]

        prediction = sigma_samples * F[:, inverse] ** 2
        nll = -self.likelihood(intensity, sigma, prediction).mean(0)
        s0 = self.scale_prior_sd
        kl_scale = math.log(s0) - torch.log(scale) + (scale * scale + loc * loc) / (2 * s0 * s0) - 0.5
        loss = nll + self.kl_weight_F * kl_F + self.kl_weight_scale * kl_scale
        return ElboTerms(loss.mean(), nll.mean(), kl_F.mean(), kl_scale.mean())

    @torch.no_grad()
    def predict_intensity(self, batch: ReflectionBatch) -> torch.Tensor:
        """E[Σ]·E[F²] for each observation, in the batch's raw intensity units, shape (n,)."""
        loc, scale = self.scale_parameters(batch)
        _, _, f2, _ = self.surrogate.distribution(batch.refl_id).moments()
        return torch.exp(loc + 0.5 * scale * scale) * f2.float() * self.intensity_scale


def build_scaler(*, centric: np.ndarray, epsilon: np.ndarray, wilson_sigma: np.ndarray | float = 1.0,
                 n_metadata: int, config: ScalerConfig | None = None) -> VariationalScaler:
    """A ready variational scaler for R unique reflections with m metadata columns.

    Parameters
    ----------
    centric : ndarray, shape (R,), bool
    epsilon : ndarray, shape (R,) — statistical weights.
    wilson_sigma : ndarray, shape (R,), or float — Σ of each reflection's Wilson prior, in units of
        the normalised intensity (mean intensity 1).
    n_metadata : int — metadata columns per observation.
    config : ScalerConfig, optional
    """
    config = config or ScalerConfig()
    with torch.random.fork_rng(devices=[]):      # seeded weights without touching the caller's RNG
        torch.manual_seed(config.seed)
        prior = WilsonPrior(torch.as_tensor(centric), torch.as_tensor(epsilon, dtype=torch.float32),
                            torch.as_tensor(wilson_sigma, dtype=torch.float32))
        surrogate = SurrogatePosterior.from_prior(prior, config.posterior)
        likelihood = NormalLikelihood() if config.likelihood == "normal" else StudentTLikelihood(config.student_t_dof)
        encoder = ImageEncoder(n_metadata + 3, config.d_model, config.encoder_blocks, config.activation)
        network = ScaleNetwork(n_metadata, config.d_model, config.scale_blocks, config.activation)
    return VariationalScaler(surrogate, prior, likelihood, encoder, network, n_metadata=n_metadata,
                             kl_weight_F=config.kl_weight_F, kl_weight_scale=config.kl_weight_scale,
                             scale_prior_sd=config.scale_prior_sd, mc_samples=config.mc_samples)


class ScalerTrainer:
    """Adam on a :class:`VariationalScaler`, one batch per :meth:`step`; resumable via state dicts."""

    def __init__(self, model: VariationalScaler, config: ScalerConfig | None = None) -> None:
        self.model = model
        self.config = config or ScalerConfig()
        posterior = list(model.surrogate.parameters())
        ids = {id(p) for p in posterior}
        networks = [p for p in model.parameters() if id(p) not in ids]
        self.optimizer = torch.optim.Adam([
            {"params": posterior, "lr": self.config.posterior_learning_rate},
            {"params": networks, "lr": self.config.learning_rate},
        ])
        device = model.intensity_scale.device
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(self.config.seed + 1)
        self.steps = 0

    def step(self, batch: ReflectionBatch) -> dict[str, float]:
        """One gradient step on a batch; returns the loss terms."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        terms = self.model(batch, generator=self.generator)
        terms.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.gradient_clip)
        self.optimizer.step()
        self.steps += 1
        return terms.as_floats()

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"].cpu() if hasattr(state["generator"], "cpu") else state["generator"])
        self.steps = int(state["steps"])


def fit_posterior_with_fixed_scales(prior: WilsonPrior, refl_id: torch.Tensor, intensity: torch.Tensor,
                                    sigma: torch.Tensor, scale_loc: torch.Tensor, scale_scale: torch.Tensor,
                                    *, likelihood: nn.Module, family: str = "truncated_normal",
                                    kl_weight_F: float = 1.0, steps: int = 300, learning_rate: float = 0.05,
                                    mc_samples: int = 4, seed: int = 0) -> SurrogatePosterior:
    """Fit a fresh q(F) to observations whose scales q(Σ) are held fixed (for half-data-set merges).

    Every step uses all the given observations. Intensities and σ must be in the model's
    normalised units (divided by ``intensity_scale``).

    Parameters
    ----------
    prior : WilsonPrior of all R reflections.
    refl_id : Tensor, shape (n,), int64
    intensity, sigma : Tensor, shape (n,) — normalised intensity and its error.
    scale_loc, scale_scale : Tensor, shape (n,) — the fixed log-normal q(Σ) of each observation.

    Returns
    -------
    SurrogatePosterior over all R reflections (those never observed stay at the prior).
    """
    surrogate = SurrogatePosterior.from_prior(prior, family).to(refl_id.device)
    optimizer = torch.optim.Adam(surrogate.parameters(), lr=learning_rate)
    generator = torch.Generator(device=refl_id.device)
    generator.manual_seed(seed)
    unique, inverse = torch.unique(refl_id, return_inverse=True)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        eps = torch.randn((mc_samples, refl_id.numel()), device=refl_id.device, generator=generator)
        sigma_samples = torch.exp(scale_loc + scale_scale * eps)
        q = surrogate.distribution(unique)
        F = q.rsample(mc_samples, generator=generator)
        kl = (q.log_prob(F) - prior.log_prob(F, unique)).mean(0)[inverse]
        nll = -likelihood(intensity, sigma, sigma_samples * F[:, inverse] ** 2).mean(0)
        (nll + kl_weight_F * kl).mean().backward()
        optimizer.step()
    return surrogate
