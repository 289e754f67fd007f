"""The diffusion stage without Lightning: latent spaces, diffusion process (schedule, Eq. 5, sampling, step hooks),
guidance, colour correction, step-fused tiling and the model."""

from ssr_lightning.diffusion.autoencoder import VAELatents
from ssr_lightning.diffusion.color import ColorFix, color_fix
from ssr_lightning.diffusion.config import (
    BackboneConfig,
    LossConfig,
    ModalityConfig,
    SamplingConfig,
)
from ssr_lightning.diffusion.guidance import KernelGuidance, lr_consistency
from ssr_lightning.diffusion.model import (
    LatentDiffusionSR,
    check_sampling,
    lr_multiple,
    pad_reflect,
)
from ssr_lightning.diffusion.process import GaussianDiffusion, StepHook, StepState
from ssr_lightning.diffusion.space_to_depth import SpaceToDepthLatents
from ssr_lightning.diffusion.tiling import FusedDenoiser, TileGrid

__all__ = [
    "BackboneConfig", "ColorFix", "FusedDenoiser", "GaussianDiffusion", "KernelGuidance", "LatentDiffusionSR",
    "LossConfig", "ModalityConfig", "SamplingConfig", "SpaceToDepthLatents", "StepHook", "StepState", "TileGrid",
    "VAELatents", "check_sampling", "color_fix", "lr_consistency", "lr_multiple", "pad_reflect",
]
