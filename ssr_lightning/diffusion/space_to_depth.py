"""A lossless latent space: space-to-depth (``PixelUnshuffle``) plus a fixed per-colour affine normalisation.

The tiny ``AutoencoderKL`` that CPU-sized runs can train is the ceiling of the diffusion stage (docs/EXPERIMENTS.md,
issue 12: its own round trip loses colour and detail). Space-to-depth has no weights and no training: an image
``(B, 3, H, W)`` becomes ``(B, 3·f², H/f, W/f)`` by moving each ``f × f`` block into channels, and back exactly.
The diffusion then runs on a latent grid of the same size as the VAE's, so the UNet, AMF, the LR encoder, guidance
and tiling do not change; only the channel count does (48 for ``f = 4``).

Normalisation: ``z = (unshuffle(2·x − 1) − mean_c) / std_c`` with one (mean, std) per RGB channel ``c`` (every
sub-pixel of a colour shares it). The constants are the mean and standard deviation of ``2·x − 1`` over the HR images
of the embedded train split (240 scenes of 256², seed 0), measured by ``python tools/space_to_depth_stats.py``; like
a VAE's ``scaling_factor`` they make the latents ~unit variance so the Stable Diffusion noise schedule fits. They are
part of the model config, so a checkpoint keeps the constants it was trained with.

``encode``/``decode``/``factor``/``channels``/``scale`` match :class:`~ssr_lightning.diffusion.VAELatents`;
``pointwise`` tells tiled callers that encoding and decoding need no tile overlap (each latent pixel is one block).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import Tensor

__all__ = ["SPACE_TO_DEPTH_MEAN", "SPACE_TO_DEPTH_STD", "SpaceToDepthLatents"]

# tools/space_to_depth_stats.py on EmbeddedScenes("train", size=256, num_train=240), seed 0: mean and std of 2x − 1.
SPACE_TO_DEPTH_MEAN: tuple[float, float, float] = (-0.0626, -0.1980, -0.2256)
SPACE_TO_DEPTH_STD: tuple[float, float, float] = (0.4261, 0.3669, 0.3731)


class SpaceToDepthLatents(ModelMixin, ConfigMixin):
    """``encode``: image in [0, 1] → normalised space-to-depth latent; ``decode``: the exact inverse (not clamped).

    Args:
        factor: Block side ``f`` (the latent is ``f`` times smaller than the image, like a VAE with that factor).
        mean: Per-colour mean of ``2·x − 1`` subtracted before scaling (RGB).
        std: Per-colour standard deviation of ``2·x − 1`` (RGB): latents are divided by it.
    """

    shift: Tensor
    inv_std: Tensor
    scale: Tensor

    pointwise = True  # one latent pixel = one f×f block: tiles need no overlap to encode or decode

    @register_to_config
    def __init__(
        self, factor: int = 4, mean: Sequence[float] = SPACE_TO_DEPTH_MEAN, std: Sequence[float] = SPACE_TO_DEPTH_STD,
    ) -> None:
        super().__init__()
        if factor < 1 or len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"SpaceToDepthLatents: need factor >= 1 and 3 positive stds, got {factor}, {mean}, {std}")
        f2 = factor * factor
        # Channel c·f² + k of pixel_unshuffle holds colour c: each colour's constant repeats f² times.
        self.register_buffer("shift", torch.tensor(mean, dtype=torch.float32).repeat_interleave(f2).view(1, -1, 1, 1))
        self.register_buffer("inv_std", 1.0 / torch.tensor(std, dtype=torch.float32).repeat_interleave(f2).view(
            1, -1, 1, 1))
        # VAELatents' interface: the overall multiplier (already folded into inv_std here).
        self.register_buffer("scale", torch.tensor(1.0))

    @property
    def factor(self) -> int:
        """Image side / latent side."""
        return int(self.config.factor)

    @property
    def channels(self) -> int:
        return 3 * self.factor**2

    def encode(self, img: Tensor, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """``img (B, 3, H, W)`` in [0, 1] → ``(B, 3f², H/f, W/f)`` (deterministic; ``sample`` has nothing to draw)."""
        z = F.pixel_unshuffle(img * 2.0 - 1.0, self.factor)
        return (z - self.shift.to(z)) * self.inv_std.to(z)

    def decode(self, z: Tensor) -> Tensor:
        """The exact inverse of :meth:`encode` (values outside [0, 1] are kept; callers clamp)."""
        x = z / self.inv_std.to(z) + self.shift.to(z)
        return (F.pixel_shuffle(x, self.factor) + 1.0) / 2.0

    def forward(self, img: Tensor) -> Tensor:
        """Reconstruction of ``img`` (equal to it up to float round-off)."""
        return self.decode(self.encode(img))
