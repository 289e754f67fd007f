"""The latent space of the diffusion stage: an ``AutoencoderKL`` plus the scale that gives unit-variance latents.

Images are ``[0, 1]`` outside and ``[-1, 1]`` inside the VAE. Latent diffusion wants unit-variance latents (Stable
Diffusion multiplies by 0.18215): ``scale`` is a buffer, so it travels with every checkpoint. A pretrained VAE uses
its config's ``scaling_factor``; a tiny VAE trained here starts with the same default and ``VAEModule`` replaces it
by ``1 / std`` of the posterior means over the validation split.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import Tensor

from ssr_lightning.networks.vae import build_tiny_vae, load_pretrained_vae
from ssr_lightning.registry import register_stage

__all__ = ["VAELatents"]


@register_stage("vae", label="VAE", config="configs/vae.yaml", module="VAEModule")
class VAELatents(ModelMixin, ConfigMixin):
    """``encode``: image in [0, 1] → scaled latent; ``decode``: scaled latent → image (not clamped).

    Args:
        block_out_channels: Tiny VAE widths; the latent is ``2**(len - 1)`` times smaller than the image.
        layers_per_block: ResNets per VAE block.
        latent_channels: Latent channels (4 as in Stable Diffusion).
        mid_attention: Self-attention in the VAE mid blocks (off: pure conv, tile-invariant).
        norm_num_groups: GroupNorm groups of the tiny VAE (None: ``min(32, min(block_out_channels))``).
        pretrained_path: Local diffusers folder with ``vae/``: replaces the tiny VAE (nothing is downloaded).
    """

    scale: Tensor

    pointwise = False  # the encoder/decoder see neighbourhoods: tiles overlap and blend

    @register_to_config
    def __init__(
        self, block_out_channels: Sequence[int] = (32, 64, 64), layers_per_block: int = 1, latent_channels: int = 4,
        mid_attention: bool = False, pretrained_path: str | None = None, norm_num_groups: int | None = None,
    ) -> None:
        super().__init__()
        if pretrained_path is not None:
            self.vae = load_pretrained_vae(pretrained_path)
        else:
            self.vae = build_tiny_vae(tuple(block_out_channels), layers_per_block, latent_channels, mid_attention,
                                      norm_num_groups)
        self.register_buffer("scale", torch.tensor(float(self.vae.config.scaling_factor)))

    @property
    def factor(self) -> int:
        """Image side / latent side."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def channels(self) -> int:
        return int(self.vae.config.latent_channels)

    def encode(self, img: Tensor, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """``img (B, 3, H, W)`` in [0, 1] → scaled latent ``(B, C, H/f, W/f)`` (posterior mean unless ``sample``)."""
        dist = self.vae.encode(img * 2.0 - 1.0).latent_dist
        z = dist.sample(generator) if sample else dist.mode()
        return z * self.scale

    def decode(self, z: Tensor) -> Tensor:
        """Scaled latent → image, ``[0, 1]`` up to the decoder's overshoot (callers clamp)."""
        return (self.vae.decode(z / self.scale).sample + 1.0) / 2.0

    def forward(self, img: Tensor) -> Tensor:
        """Reconstruction of ``img`` through the posterior mean."""
        return self.decode(self.encode(img))
