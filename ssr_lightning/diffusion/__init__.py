"""The diffusion stage without Lightning: latent spaces, diffusion process (schedule, Eq. 5, sampling, step hooks),
sampling settings (call arguments), guidance, colour correction, step-fused tiling and the model."""

from ssr_lightning.diffusion.autoencoder import VAELatents
from ssr_lightning.diffusion.color import ColorFix, color_fix
from ssr_lightning.diffusion.config import LossConfig, SamplingConfig, SamplingError, UNetConfig
from ssr_lightning.diffusion.guidance import KernelGuidance, lr_consistency
from ssr_lightning.diffusion.model import LatentDiffusionSR, lr_multiple, pad_reflect
from ssr_lightning.diffusion.process import GaussianDiffusion, StepHook, StepState
from ssr_lightning.diffusion.space_to_depth import SpaceToDepthLatents
from ssr_lightning.diffusion.tiling import FusedDenoiser, TileGrid

__all__ = [
    "ColorFix", "FusedDenoiser", "GaussianDiffusion", "KernelGuidance", "LatentDiffusionSR", "LossConfig",
    "SamplingConfig", "SamplingError", "SpaceToDepthLatents", "StepHook", "StepState", "TileGrid", "UNetConfig",
    "VAELatents", "color_fix", "lr_consistency", "lr_multiple", "pad_reflect",
]
