"""The variational integrator (Aldama, Dalton & Hekstra): shoebox → q(I), q(bg), profile.

Model (variational-integration.txt §3–4): counts x_j of voxel j of a shoebox are Poisson with
rate λ_j = I·γ_j + bg, where I is the reflection's intensity (photons in the shoebox), bg the
background per voxel and γ the profile (Σ_j γ_j = 1 over the measured voxels of the shoebox,
so that I is what the reflection put into them; frames outside the scan and pixels in gaps
hold none of it). An encoder turns the
shoebox into a 64-d representation; heads give the surrogate posteriors q(I), q(bg) (Gamma or
log-normal) and the profile (a multivariate normal over voxel coordinates, or a softmax over
voxels). The loss is the negative ELBO,

    −E_q[log p(x | I, bg, γ)] + κ₁·KL(q(I)‖p(I)) + κ₂·KL(q(bg)‖p(bg)),

estimated with reparameterised samples; the paper's defaults (Table 1) are exponential priors
of rate 1 and κ₁ = κ₂ = 10⁻⁴. With κ < 1 on the whole KL, the entropy of q is down-weighted
too and the optimum is q ∝ p(x|z)^{1/κ}·p(z): σ(I) shrinks by √κ. By default
(``kl_mode="tempered"``) κ therefore weighs the prior only, loss = −E_q log p(x|z) + κ·KL −
(1 − κ)·H(q), whose optimum is the posterior under the tempered prior p^κ (for κ = 10⁻⁴ an
almost flat prior), and σ(I) is a posterior standard deviation; ``kl_mode="full"`` is Eq. 4.

Encoders see per-voxel features (8 channels): log(1 + counts), the mask, the voxel's offset
to the predicted centroid (z, slow, fast; scaled by the half-size of the shoebox) and its
detector position (fast, slow, image; scaled to [−1, 1] by ``detector_size_px`` and
``n_images``). ``encoder="fc"`` flattens them through fully connected residual layers,
``encoder="cnn"`` keeps the (F, H, W) layout through 3-D convolutions.

The heads are profile-aware: the background head scales a border estimate (mean counts of the
outer 3 voxels of every frame), and the intensity head starts from the profile-weighted
least-squares intensity Î and its σ̂ under the current profile and background mean (a few
iteratively reweighted steps, Poisson variance I·γ + bg), turned into the moments of
N(Î, σ̂²) truncated to I ≥ 0; the network multiplies the mean and the standard deviation by
learned factors exp(h). The encoder's job is thus the profile, the background and the
corrections, learned through the ELBO, not the summation of a thousand voxels.

Coordinates inside a shoebox are (z, slow, fast) in voxel units with voxel [0, 0, 0]'s centre
at (0.5, 0.5, 0.5) from the shoebox corner.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from xrais._version import __version__
from xrais.errors import CheckpointError
from xrais.models.variational.distributions import (
    kl_divergence,
    make_prior,
    make_surrogate,
    mvn_profile,
    mvn_profile_binned,
    poisson_log_likelihood,
    softmax_profile,
    truncated_normal_moments,
)

__all__ = ["IntegratorConfig", "ShoeboxBatch", "IntegratorOutput", "VariationalIntegrator", "FCEncoder",
           "CNNEncoder", "build_integrator", "save_integrator", "load_integrator", "INTEGRATOR_FORMAT",
           "N_FEATURES"]

INTEGRATOR_FORMAT = "xrais-integrator-1"
#: Per-voxel feature channels seen by the encoders.
N_FEATURES = 8
_N_GLOBAL = 4
_BORDER = 3


class IntegratorConfig(BaseModel):
    """Architecture, priors and loss weights of a :class:`VariationalIntegrator` (Table 1 defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shoebox_shape: tuple[int, int, int] = Field((3, 21, 21), description="(frames, height, width) voxels")
    encoder: Literal["fc", "cnn"] = Field("fc", description="fully connected or 3-D convolutional encoder")
    profile: Literal["mvn", "softmax"] = Field("mvn", description="multivariate normal or softmax over voxels")
    surrogate: Literal["gamma", "lognormal"] = Field("gamma", description="family of q(I) and q(bg)")
    representation_dim: int = Field(64, ge=4, le=4096, description="encoder output size")
    hidden_dim: int = Field(256, ge=8, le=8192, description="width of the fully connected layers")
    prior_intensity: Literal["exponential", "gamma", "halfnormal", "lognormal"] = Field("exponential")
    prior_intensity_params: tuple[float, ...] = Field((1.0,), description="rate (exponential), …")
    kl_weight_intensity: float = Field(1e-4, ge=0, description="κ₁")
    prior_background: Literal["exponential", "gamma", "halfnormal", "lognormal"] = Field("exponential")
    prior_background_params: tuple[float, ...] = Field((1.0,), description="rate (exponential), …")
    kl_weight_background: float = Field(1e-4, ge=0, description="κ₂")
    kl_mode: Literal["tempered", "full"] = Field(
        "tempered", description="tempered: κ weighs the prior only (loss −E log p(x|z) + κ·KL − (1 − κ)·H(q)), "
        "so q is the posterior under p^κ and σ(I) stays calibrated; full: κ weighs the whole KL (the paper's Eq. 4)")
    mc_samples: int = Field(4, ge=1, le=1024, description="reparameterised samples per ELBO estimate")
    irls_steps: int = Field(4, ge=1, le=50, description="reweighting steps of the intensity head's Î")
    detector_size_px: tuple[float, float] = Field((2463.0, 2527.0), description="(fast, slow) scale of positions")
    n_images: float = Field(1000.0, gt=0, description="scale of the image number feature")


@dataclass
class ShoeboxBatch:
    """A batch of shoeboxes as tensors (the model's input; named fields, not a tuple).

    counts, mask : (B, F, H, W) float32 — counts and 1/0 measured voxels
    corner : (B, 3) float32 — (frame_first, slow0, fast0) of voxel [0, 0, 0]
    centroid : (B, 3) float32 — predicted centroid (z, slow, fast) in data coordinates
    """

    counts: torch.Tensor
    mask: torch.Tensor
    corner: torch.Tensor
    centroid: torch.Tensor

    @classmethod
    def from_arrays(cls, counts: Any, mask: Any, corner_px: Any, frame_first: Any, xyz_px: Any,
                    device: torch.device | str = "cpu") -> "ShoeboxBatch":
        """From numpy arrays: counts/mask (B, F, H, W), corner_px (B, 2) (fast, slow), frame_first (B,),
        xyz_px (B, 3) (fast, slow, z)."""
        corner_px = np.asarray(corner_px, dtype=np.float32)
        xyz = np.asarray(xyz_px, dtype=np.float32)
        corner = np.stack([np.asarray(frame_first, np.float32), corner_px[:, 1], corner_px[:, 0]], axis=1)
        centroid = np.stack([xyz[:, 2], xyz[:, 1], xyz[:, 0]], axis=1)
        t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32), device=device)  # noqa: E731
        return cls(t(counts), t(mask), t(corner), t(centroid))

    def to(self, device: torch.device | str) -> "ShoeboxBatch":
        return ShoeboxBatch(*(getattr(self, k).to(device) for k in ("counts", "mask", "corner", "centroid")))

    def __len__(self) -> int:
        return int(self.counts.shape[0])


@dataclass
class IntegratorOutput:
    """What the model says about a batch."""

    q_intensity: torch.distributions.Distribution
    q_background: torch.distributions.Distribution
    profile: torch.Tensor
    """(B, V) — γ, summing to 1 over each shoebox"""
    profile_mean: torch.Tensor
    """(B, 3) — profile centroid (z, slow, fast) relative to the predicted centroid, voxels"""
    profile_covariance: torch.Tensor
    """(B, 3, 3) — profile covariance in voxel units"""


def _residual_fc(dim: int) -> nn.Module:
    return nn.Sequential(nn.ReLU(), nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))


class FCEncoder(nn.Module):
    """Fully connected encoder: the flattened per-voxel features → ``dim`` through residual blocks."""

    def __init__(self, n_voxels: int, channels: int = N_FEATURES, hidden: int = 256, dim: int = 64) -> None:
        super().__init__()
        self.inp = nn.Sequential(nn.Linear(n_voxels * channels, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.blocks = nn.ModuleList([_residual_fc(dim) for _ in range(2)])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.inp(features.flatten(1))
        for block in self.blocks:
            x = x + block(x)
        return x


class _ResConv3d(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv3d(channels, channels, 3, padding=1), nn.ReLU(),
                                  nn.Conv3d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class CNNEncoder(nn.Module):
    """3-D convolutional encoder over (F, H, W): strided stems, residual blocks, a linear map to ``dim``."""

    def __init__(self, shape: tuple[int, int, int], channels: int = N_FEATURES, dim: int = 64, width: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv3d(channels, width, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            _ResConv3d(width),
            nn.ReLU(),
            nn.Conv3d(width, 2 * width, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            _ResConv3d(2 * width),
            nn.ReLU(),
        )
        with torch.no_grad():
            n_out = self.net(torch.zeros(1, channels, *shape)).numel()
        self.out = nn.Linear(n_out, dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(self.net(features).flatten(1))


class VariationalIntegrator(nn.Module):
    """Encoder, surrogate heads and profile of the variational integrator (see the module docstring).

    Parameters
    ----------
    config : IntegratorConfig
    encoder : nn.Module
        Maps features (B, 8, F, H, W) to (B, ``config.representation_dim``).
    """

    def __init__(self, config: IntegratorConfig, encoder: nn.Module) -> None:
        super().__init__()
        self.config = config
        f, h, w = config.shoebox_shape
        self.encoder = encoder
        dim = config.representation_dim + _N_GLOBAL
        zz, yy, xx = torch.meshgrid(torch.arange(f) + 0.5, torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
        self.register_buffer("grid", torch.stack([zz, yy, xx], dim=-1).reshape(-1, 3), persistent=False)
        border = (yy < _BORDER) | (yy > h - _BORDER) | (xx < _BORDER) | (xx > w - _BORDER)
        self.register_buffer("border", border.reshape(-1).float(), persistent=False)
        self.register_buffer("half_size", torch.tensor([max(f / 2, 1.0), h / 2, w / 2]), persistent=False)
        if config.profile == "mvn":
            self.profile_head = nn.Linear(dim, 9)
            nn.init.zeros_(self.profile_head.weight)
            with torch.no_grad():  # start at σ ≈ (0.8 frames, 1.5 px, 1.5 px), no tilt, no shift
                self.profile_head.bias.zero_()
                self.profile_head.bias[3:6] = torch.log(torch.expm1(torch.tensor([0.8, 1.5, 1.5])))
        else:
            self.profile_head = nn.Linear(dim, f * h * w)
            nn.init.zeros_(self.profile_head.weight)
            with torch.no_grad():  # start at a Gaussian spot in the centre
                d = (self.grid - torch.tensor([f / 2, h / 2, w / 2])) / torch.tensor([0.8, 1.5, 1.5])
                self.profile_head.bias.copy_(-0.5 * (d * d).sum(dim=1))
        self.background_head = nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Linear(32, 2))
        self.intensity_head = nn.Sequential(nn.Linear(dim + 2, 32), nn.ReLU(), nn.Linear(32, 2))
        for head in (self.background_head, self.intensity_head):
            nn.init.zeros_(head[-1].weight)
            nn.init.zeros_(head[-1].bias)
        self.register_buffer("_prior_i", torch.tensor(config.prior_intensity_params, dtype=torch.float32),
                             persistent=False)
        self.register_buffer("_prior_bg", torch.tensor(config.prior_background_params, dtype=torch.float32),
                             persistent=False)

    # ---------------------------------------------------------------- features
    def features(self, batch: ShoeboxBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-voxel features (B, 8, F, H, W) and voxel offsets to the predicted centroid (B, V, 3)."""
        b = len(batch)
        shape = self.config.shoebox_shape
        counts = batch.counts * batch.mask
        offsets = batch.corner[:, None, :] + self.grid[None] - batch.centroid[:, None, :]  # (B, V, 3)
        position = batch.corner[:, None, :] + self.grid[None]
        scale = torch.tensor([self.config.n_images, self.config.detector_size_px[1], self.config.detector_size_px[0]],
                             device=counts.device)
        pos = 2.0 * position / scale - 1.0
        chans = [torch.log1p(counts).reshape(b, -1), batch.mask.reshape(b, -1)]
        chans += [(offsets[..., i] / self.half_size[i]) for i in range(3)] + [pos[..., i] for i in range(3)]
        feats = torch.stack(chans, dim=1).reshape(b, N_FEATURES, *shape)
        return feats, offsets

    # ---------------------------------------------------------------- forward
    def forward(self, batch: ShoeboxBatch) -> IntegratorOutput:
        cfg = self.config
        b = len(batch)
        f_len = cfg.shoebox_shape[0]
        counts = (batch.counts * batch.mask).reshape(b, -1)
        mask = batch.mask.reshape(b, -1)
        feats, offsets = self.features(batch)
        rep = self.encoder(feats)
        n_valid = mask.sum(dim=1).clamp_min(1.0)
        border = mask * self.border
        b_ref = ((counts * border).sum(dim=1) + 0.5) / (border.sum(dim=1) + 1.0)
        total = counts.sum(dim=1)
        centre = batch.centroid[:, 1:] / torch.tensor([cfg.detector_size_px[1], cfg.detector_size_px[0]],
                                                      device=counts.device)
        glob = torch.cat([torch.log1p(b_ref)[:, None], torch.log1p(total)[:, None] / 5.0, 2.0 * centre - 1.0], dim=1)
        x = torch.cat([rep, glob], dim=1)

        # profile
        if cfg.profile == "mvn":
            p = self.profile_head(x)
            mean = torch.tanh(p[:, 0:3])
            diag = nn.functional.softplus(p[:, 3:6]) + 0.05
            low = torch.zeros(b, 3, 3, device=p.device, dtype=p.dtype)
            low[:, 1, 0], low[:, 2, 0], low[:, 2, 1] = p[:, 6], p[:, 7], p[:, 8]
            tril = torch.diag_embed(diag) + low
            cov = tril @ tril.transpose(1, 2)
            profile = (mvn_profile_binned(offsets, mean, cov, mask=mask) if f_len > 1
                       else mvn_profile(offsets, mean, tril, mask=mask))
        else:
            profile = softmax_profile(self.profile_head(x), mask)
            mean = (profile[..., None] * offsets).sum(dim=1)
            d = offsets - mean[:, None, :]
            cov = torch.einsum("bv,bvi,bvj->bij", profile, d, d)

        # background: a border estimate times a learned factor
        hb = torch.tanh(self.background_head(x) / 3.0) * 3.0
        bg_mean = b_ref * torch.exp(hb[:, 0])
        bg_std = torch.sqrt((b_ref + 0.05) / n_valid) * torch.exp(hb[:, 1])

        # intensity: profile-weighted least squares, truncated-normal moments, learned factors
        i_hat, i_sigma = self._profile_fit(counts, mask, profile, bg_mean)
        t = i_hat / i_sigma
        hi = torch.tanh(self.intensity_head(torch.cat([x, torch.tanh(t / 10.0)[:, None],
                                                       torch.log(i_sigma)[:, None] / 5.0], dim=1)) / 3.0) * 3.0
        tn_mean, tn_std = truncated_normal_moments(i_hat, i_sigma)
        i_mean = tn_mean * torch.exp(hi[:, 0])
        i_std = tn_std * torch.exp(hi[:, 1])
        return IntegratorOutput(make_surrogate(cfg.surrogate, i_mean, i_std),
                                make_surrogate(cfg.surrogate, bg_mean, bg_std), profile, mean, cov)

    def _profile_fit(self, counts: torch.Tensor, mask: torch.Tensor, profile: torch.Tensor,
                     bg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Î = Σw γ(x − bg)/Σw γ², σ̂ = (Σw γ²)^−½, with w = 1/(Î₊γ + bg) reweighted ``irls_steps`` times."""
        resid = (counts - bg[:, None]) * mask
        i_hat = resid.sum(dim=1).clamp_min(0.0)
        denom = None
        for _ in range(self.config.irls_steps):
            var = (i_hat.clamp_min(0.0)[:, None] * profile + bg[:, None]).clamp_min(1e-3).detach()
            w = mask / var
            denom = (w * profile * profile).sum(dim=1).clamp_min(1e-12)
            i_hat = (w * profile * resid).sum(dim=1) / denom
        return i_hat, denom.rsqrt()  # type: ignore[union-attr]

    # ---------------------------------------------------------------- loss
    def priors(self) -> tuple[torch.distributions.Distribution, torch.distributions.Distribution]:
        """p(I) and p(bg) on the model's device."""
        dev = self._prior_i.device
        return (make_prior(self.config.prior_intensity, *self._prior_i.tolist(), device=dev),
                make_prior(self.config.prior_background, *self._prior_bg.tolist(), device=dev))

    def loss(self, batch: ShoeboxBatch, output: IntegratorOutput | None = None) -> dict[str, torch.Tensor]:
        """Negative ELBO per shoebox, averaged over the batch, and its terms (each logged by name).

        Returns
        -------
        dict with ``loss`` (to minimise: mean of the per-shoebox −ELBO divided by the voxel
        count), ``nll``, ``kl_intensity``, ``kl_background`` (batch means, nats per shoebox).
        """
        out = output if output is not None else self(batch)
        s = self.config.mc_samples
        b = len(batch)
        z_i = out.q_intensity.rsample((s,))  # (S, B)
        z_bg = out.q_background.rsample((s,))
        rate = z_i[..., None] * out.profile[None] + z_bg[..., None]
        counts = (batch.counts * batch.mask).reshape(b, -1)
        ll = poisson_log_likelihood(counts[None], rate, batch.mask.reshape(b, -1)[None]).mean(dim=0)
        p_i, p_bg = self.priors()
        kl_i = kl_divergence(out.q_intensity, p_i, z_i)
        kl_bg = kl_divergence(out.q_background, p_bg, z_bg)
        k_i, k_bg = self.config.kl_weight_intensity, self.config.kl_weight_background
        neg_elbo = -ll + k_i * kl_i + k_bg * kl_bg
        if self.config.kl_mode == "tempered":
            neg_elbo = neg_elbo - (1.0 - k_i) * out.q_intensity.entropy() - (1.0 - k_bg) * out.q_background.entropy()
        return {"loss": neg_elbo.mean() / self.grid.shape[0], "nll": -ll.mean().detach(),
                "kl_intensity": kl_i.mean().detach(), "kl_background": kl_bg.mean().detach()}

    @torch.no_grad()
    def summarize(self, batch: ShoeboxBatch) -> dict[str, np.ndarray]:
        """Posterior summaries per shoebox as numpy: I and bg mean and σ, profile centroid and σ.

        Returns
        -------
        dict with ``intensity``, ``sigma_intensity``, ``background``, ``sigma_background`` (B,);
        ``profile_centroid`` (B, 3) as data coordinates (fast, slow, z); ``profile_sigma`` (B, 3)
        as (fast px, slow px, z frames); ``profile_max`` (B,) the largest voxel weight.
        """
        out = self(batch)
        centroid = (batch.centroid + out.profile_mean).cpu().numpy()[:, ::-1]
        sigma = torch.sqrt(torch.diagonal(out.profile_covariance, dim1=1, dim2=2).clamp_min(0)).cpu().numpy()[:, ::-1]
        return {"intensity": out.q_intensity.mean.cpu().numpy().astype(np.float64),
                "sigma_intensity": out.q_intensity.stddev.cpu().numpy().astype(np.float64),
                "background": out.q_background.mean.cpu().numpy().astype(np.float64),
                "sigma_background": out.q_background.stddev.cpu().numpy().astype(np.float64),
                "profile_centroid": np.ascontiguousarray(centroid, dtype=np.float64),
                "profile_sigma": np.ascontiguousarray(sigma, dtype=np.float64),
                "profile_max": out.profile.max(dim=1).values.cpu().numpy().astype(np.float64)}


def build_integrator(config: IntegratorConfig | None = None, **overrides: Any) -> VariationalIntegrator:
    """A ready :class:`VariationalIntegrator` from a config (and/or keyword overrides of its fields).

    Examples
    --------
    >>> model = build_integrator(encoder="fc", profile="mvn", shoebox_shape=(3, 11, 11))
    >>> model.config.representation_dim, type(model.encoder).__name__
    (64, 'FCEncoder')
    """
    cfg = (config or IntegratorConfig()).model_copy(update=overrides) if overrides else (config or IntegratorConfig())
    cfg = IntegratorConfig.model_validate(cfg.model_dump())
    f, h, w = cfg.shoebox_shape
    if cfg.encoder == "fc":
        encoder: nn.Module = FCEncoder(f * h * w, N_FEATURES, cfg.hidden_dim, cfg.representation_dim)
    else:
        encoder = CNNEncoder(cfg.shoebox_shape, N_FEATURES, cfg.representation_dim)
    return VariationalIntegrator(cfg, encoder)


def save_integrator(model: VariationalIntegrator, path: str | Path, **provenance: Any) -> Path:
    """Write weights and a self-describing ``meta`` (format, config, xrais version, provenance) atomically.

    The file is safetensors; ``meta`` sits in its metadata header, so :func:`load_integrator`
    needs nothing else.
    """
    from xrais.models.checkpoint import write_safetensors

    meta = {"format": INTEGRATOR_FORMAT, "xrais_version": __version__, "config": model.config.model_dump_json(),
            "num_params": str(sum(p.numel() for p in model.parameters())),
            "provenance": json.dumps(provenance, default=str)}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return write_safetensors(state, path, meta)


def load_integrator(path: str | Path, device: torch.device | str = "cpu") -> VariationalIntegrator:
    """Rebuild an integrator from a file written by :func:`save_integrator`.

    Raises
    ------
    CheckpointError
        Missing file, another kind of checkpoint, or weights that do not fit the config.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such integrator checkpoint")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        state = load_file(str(path), device=str(device))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path.name}: not a readable safetensors file ({exc})") from None
    if meta.get("format") != INTEGRATOR_FORMAT:
        raise CheckpointError(f"{path.name}: not a variational integrator checkpoint "
                              f"(format {meta.get('format')!r}, expected {INTEGRATOR_FORMAT!r})")
    config = IntegratorConfig.model_validate_json(meta["config"])
    model = build_integrator(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path.name}: weights do not fit its config ({str(exc).splitlines()[0]})") from None
    model.provenance = json.loads(meta.get("provenance", "{}"))  # type: ignore[attr-defined]
    return model.to(device).eval()

