"""The V model of World Models (Ha and Schmidhuber 2018, sec. 2.1 and appendix A.1): a
convolutional VAE that compresses a 64 x 64 x 3 frame into z (32 dims), as in the reference code
(hardmaru/WorldModelsExperiments, `carracing/vae/vae.py`).

    encoder: 4 convs 32-64-128-256, kernel 4, stride 2, ReLU -> 1024 -> mu, logvar (z_dim each)
    decoder: z -> dense 1024 -> 1 x 1 x 1024 -> deconvs 128-64-32-3, kernels 5, 5, 6, 6,
             stride 2, ReLU between, sigmoid at the end -> (64, 64, 3) in [0, 1]

    loss = sum over pixels of (x - x_hat)^2  +  max(KL(q(z|x) || N(0, I)), kl_tolerance * z_dim)

both terms per frame, then averaged over the batch, as the reference does. The floor on the KL
("kl_tolerance", 0.5 nats per latent dim) stops the encoder squeezing out information the KL
would otherwise push towards the prior: below it the KL term is constant and has no gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from wmrl.worldmodels.nets import ConvDecoder, ConvEncoder


@dataclass
class VAEConfig:
    """The reference's VAE hyperparameters (`vae.py`, `vae_train.py`)."""

    z_dim: int = 32  # N_z, the latent size
    kl_tolerance: float = 0.5  # the KL is floored at kl_tolerance * z_dim nats per frame
    lr: float = 1e-4  # Adam
    batch_size: int = 100  # frames per update
    epochs: int = 10  # passes over the collected frames


def to_unit(obs: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (..., 64, 64, 3) -> float32 in [0, 1] (the reference divides by 255)."""
    if obs.dtype != torch.uint8:
        raise ValueError(
            f"the VAE takes uint8 frames 0..255 (as the replay stores them), got {obs.dtype}"
        )
    return obs.float() / 255.0


class ConvVAE(nn.Module):
    """ConvVAE on (..., 64, 64, C) frames; z_dim latents.

    Args:
        z_dim: latent size (32 in the paper's CarRacing model, 64 in Doom).
        channels: C of the frames.
        kl_tolerance: the KL floor per latent dimension (nats).
    """

    def __init__(self, z_dim: int = 32, channels: int = 3, kl_tolerance: float = 0.5):
        super().__init__()
        self.z_dim, self.channels, self.kl_tolerance = int(z_dim), int(channels), kl_tolerance
        self.encoder = ConvEncoder(channels)
        self.fc_mu = nn.Linear(self.encoder.embed_dim, z_dim)
        self.fc_logvar = nn.Linear(self.encoder.embed_dim, z_dim)
        self.decoder = ConvDecoder(z_dim, channels)

    @property
    def device(self) -> torch.device:
        return self.fc_mu.weight.device

    def encode(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 frames (..., 64, 64, C) -> (mu, logvar), each (..., z_dim)."""
        if tuple(obs.shape[-3:]) != (64, 64, self.channels):
            raise ValueError(
                f"frames must be (..., 64, 64, {self.channels}), got {tuple(obs.shape)}; "
                "render at 64x64 (envs.make's default)"
            )
        embed = self.encoder(to_unit(obs))
        return self.fc_mu(embed), self.fc_logvar(embed)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (..., z_dim) -> frames (..., 64, 64, C) as floats in [0, 1]."""
        return torch.sigmoid(self.decoder(z))

    def decode_frames(self, z: torch.Tensor) -> torch.Tensor:
        """z (..., z_dim) -> uint8 frames (..., 64, 64, C), for GIFs."""
        return (self.decode(z) * 255.0 + 0.5).clamp(0, 255).to(torch.uint8)

    @staticmethod
    def sample(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """z = mu + exp(logvar / 2) * eps, eps ~ N(0, I) (the reparameterisation)."""
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def loss(self, obs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The reference's VAE loss on a batch of uint8 frames (B, 64, 64, C).

        r_loss = mean_b sum_pixels (x - x_hat)^2; kl = -0.5 sum_z (1 + logvar - mu^2 - e^logvar);
        kl_loss = mean_b max(kl, kl_tolerance * z_dim). Returns (r_loss + kl_loss, metrics).
        """
        x = to_unit(obs)
        mu, logvar = self.encode(obs)
        recon = self.decode(self.sample(mu, logvar))
        r_loss = (x - recon).pow(2).flatten(-3).sum(-1).mean()
        kl = kl_to_standard_normal(mu, logvar)
        kl_loss = kl_floor_loss(kl, self.kl_tolerance * self.z_dim)
        loss = r_loss + kl_loss
        metrics = {"loss": loss, "r_loss": r_loss, "kl": kl.mean(), "kl_loss": kl_loss}
        return loss, {k: v.detach() for k, v in metrics.items()}


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, e^logvar) || N(0, I)) summed over the last dim: (...)."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1)


def kl_floor_loss(kl: torch.Tensor, floor: float) -> torch.Tensor:
    """mean over frames of max(kl, floor): constant, without gradient, where kl < floor."""
    return torch.clamp(kl, min=floor).mean()


def train_vae_step(vae: ConvVAE, obs: torch.Tensor, optimizer) -> dict[str, float]:
    """One Adam update on uint8 frames (B, 64, 64, C); raises FloatingPointError on a NaN loss
    before the step. Returns the metrics as floats."""
    loss, metrics = vae.loss(obs)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    out = {k: float(v) for k, v in metrics.items()}
    if not math.isfinite(out["loss"]):
        raise FloatingPointError(
            f"VAE loss is not finite ({out}); lower the learning rate (--vae.lr) or check the "
            "frames for corrupt episodes"
        )
    optimizer.step()
    return out
