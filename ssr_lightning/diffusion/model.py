"""``LatentDiffusionSR``: the SSR diffusion stage as one Lightning-free model (latent space + AMF UNet + process).

``loss`` is Eq. 5 on a degraded batch; ``super_resolve`` samples an SR image from an LR image and the maps D_T, K_T
on the LR grid (any size: reflect-padded to the UNet's multiple and cropped back). The training stage
(``ssr_lightning.modules.SSRDiffusionModule``) and the inference pipeline both use this object; a checkpoint
rebuilds it with ``LatentDiffusionSR.from_config`` (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import Tensor

from ssr_lightning.diffusion.autoencoder import VAELatents
from ssr_lightning.diffusion.process import GaussianDiffusion, Sampler, StepHook
from ssr_lightning.networks.ssr_unet import SSRUNet

__all__ = ["LatentDiffusionSR", "lr_multiple", "pad_reflect"]


def pad_reflect(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Pad bottom/right to a multiple of ``multiple`` (reflect; replicate where the map is too small to reflect)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (0, 0)
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), (ph, pw)


def lr_multiple(scale: int, vae_factor: int, unet_multiple: int) -> int:
    """LR sides must be multiples of this so that ``s·h`` is a multiple of ``vae_factor · unet_multiple``."""
    need = vae_factor * unet_multiple
    return need // math.gcd(need, scale)


class LatentDiffusionSR(ModelMixin, ConfigMixin):
    """AMF-conditioned latent diffusion SR (docs/DESIGN.md §4).

    Args:
        autoencoder_config: ``VAELatents`` arguments (tiny VAE architecture); ignored with ``pretrained_path``.
        unet_config: ``SSRUNet`` arguments (backbone architecture, modalities, AMF).
        pretrained_path: Local diffusers folder (``unet/``, ``vae/``, ``scheduler/``) replacing the tiny backbone.
        num_train_timesteps: Steps of the training schedule.
        scale: SR factor s.
        sampler: Default sampler (``ddim`` | ``ddpm``).
        num_inference_steps: Default sampling steps.
        sample_strength: Default start strength (1 = pure noise).
    """

    @register_to_config
    def __init__(
        self, autoencoder_config: dict[str, Any] | None = None, unet_config: dict[str, Any] | None = None,
        pretrained_path: str | None = None, num_train_timesteps: int = 1000, scale: int = 4, sampler: Sampler = "ddim",
        num_inference_steps: int = 20, sample_strength: float = 1.0,
    ) -> None:
        super().__init__()
        # (config names end in _config: diffusers resolves config keys before submodules of the same name)
        ae = {"pretrained_path": pretrained_path} if pretrained_path is not None else dict(autoencoder_config or {})
        self.latents = VAELatents(**ae)
        self.unet = SSRUNet(latent_channels=self.latents.channels, pretrained_path=pretrained_path,
                           **(unet_config or {}))
        self.process = GaussianDiffusion(num_train_timesteps, pretrained_path)
        self.scale = scale

    # --- conditions ---------------------------------------------------------------------------------------------
    @property
    def lr_multiple(self) -> int:
        """LR sides must be multiples of this (padding does it for callers)."""
        return lr_multiple(self.scale, self.latents.factor, self.unet.size_multiple)

    @property
    def uses(self) -> dict[str, bool]:
        """Which maps the UNet reads: ``{"depth": bool, "kernel": bool}``."""
        return {"depth": "depth" in self.unet.enabled, "kernel": "kernel" in self.unet.enabled}

    def lr_latent(self, lr: Tensor) -> Tensor:
        """Latent of the bicubic-upsampled LR (the LR encoder's and ``concat_lr``'s input)."""
        up = F.interpolate(lr, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return self.latents.encode(up.clamp(0, 1))

    # --- training -----------------------------------------------------------------------------------------------
    def loss(
        self, hr: Tensor, lr: Tensor, depth: Tensor | None, kernel: Tensor | None,
        weights: dict[str, float] | None = None, generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Eq. 5 terms on one batch (``mse``, ``l1_<modality>``, ``loss``); seeded and posterior-mean with ``generator``."""
        with torch.no_grad():
            z0 = self.latents.encode(hr, sample=generator is None)
            z_lr = self.lr_latent(lr)
        feats = self.unet.encode((z0.shape[-2], z0.shape[-1]), z_lr, depth, kernel)
        return self.process.loss(lambda z_t, t: self.unet.denoise(z_t, t, feats, z_lr), z0, feats, weights, generator)

    # --- sampling -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def super_resolve(
        self, lr: Tensor, depth: Tensor | None = None, kernel: Tensor | None = None,
        generator: torch.Generator | None = None, num_inference_steps: int | None = None,
        sampler: Sampler | None = None, noise: Tensor | None = None, strength: float | None = None,
        hooks: Sequence[StepHook] = (),
    ) -> Tensor:
        """SR ``(B, 3, s·h, s·w)`` in [0, 1] of ``lr (B, 3, h, w)`` given D_T / K_T on the LR grid.

        The initial noise is ``noise`` (latent-shaped, e.g. cut from a larger map by a tiled caller) or drawn from
        ``generator`` (a CPU generator: the same noise on every device). Other arguments default to the config.
        """
        s, (h, w) = self.scale, lr.shape[-2:]
        q = self.lr_multiple
        lr_p, _ = pad_reflect(lr, q)
        depth = pad_reflect(depth, q)[0] if depth is not None else None
        kernel = pad_reflect(kernel, q)[0] if kernel is not None else None
        z_lr = self.lr_latent(lr_p)
        feats = self.unet.encode((z_lr.shape[-2], z_lr.shape[-1]), z_lr, depth, kernel)
        if noise is None:
            noise = torch.randn(z_lr.shape, generator=generator, dtype=torch.float32)
        cfg = self.config
        z = self.process.sample(
            lambda z_t, t: self.unet.denoise(z_t, t, feats, z_lr), noise.to(z_lr),
            num_inference_steps or cfg.num_inference_steps,
            cfg.sample_strength if strength is None else strength, reference=z_lr,
            sampler=sampler or cfg.sampler, generator=generator, hooks=hooks,
        )
        return self.latents.decode(z).clamp(0, 1)[..., : s * h, : s * w]

    def forward(self, lr: Tensor, depth: Tensor | None = None, kernel: Tensor | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        return self.super_resolve(lr, depth, kernel, generator)
