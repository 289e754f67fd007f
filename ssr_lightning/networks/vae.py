"""Builders of the diffusers ``AutoencoderKL`` whose latents the diffusion stage denoises (docs/DESIGN.md §4)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_tiny_vae", "load_pretrained_vae"]


def build_tiny_vae(
    block_out_channels: Sequence[int] = (32, 64, 64), layers_per_block: int = 1, latent_channels: int = 4,
    mid_attention: bool = False, norm_num_groups: int | None = None,
) -> Any:
    """A small ``AutoencoderKL``: downsampling factor ``2**(len(block_out_channels) - 1)``.

    ``norm_num_groups`` (default ``min(32, min(block_out_channels))``, the first format's): with as many groups as
    channels every GroupNorm is an instance norm, which removes each channel's per-image mean, and the decoder's last
    norm sits right before ``conv_out``, so the image's colour has to survive outside it (issue 12).
    """
    from diffusers import AutoencoderKL

    n = len(block_out_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
        norm_num_groups=norm_num_groups or min(32, min(block_out_channels)),
        # No attention: a pure-conv VAE is translation-equivariant, so tiled decoding has no tile-size dependence.
        mid_block_add_attention=mid_attention,
    )


def load_pretrained_vae(path: str) -> Any:
    """The VAE of a local diffusers folder (``<path>/vae``); a missing folder is a FileNotFoundError naming it."""
    cfg = Path(path) / "vae" / "config.json"
    if not cfg.is_file():
        raise FileNotFoundError(
            f"pretrained VAE not found: {cfg} does not exist. Give a local diffusers folder with a vae/ subfolder "
            "(e.g. a Stable Diffusion checkpoint); nothing is downloaded."
        )
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(str(path), subfolder="vae", local_files_only=True)
