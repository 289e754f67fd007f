"""The diffusion stage without Lightning: latent space, diffusion process (schedule, Eq. 5, sampling) and the model."""

from ssr_lightning.diffusion.autoencoder import VAELatents
from ssr_lightning.diffusion.config import (
    BackboneConfig,
    LossConfig,
    ModalityConfig,
    SamplingConfig,
)
from ssr_lightning.diffusion.model import LatentDiffusionSR, lr_multiple, pad_reflect
from ssr_lightning.diffusion.process import GaussianDiffusion, StepHook, StepState

__all__ = [
    "BackboneConfig", "GaussianDiffusion", "LatentDiffusionSR", "LossConfig", "ModalityConfig", "SamplingConfig",
    "StepHook", "StepState", "VAELatents", "lr_multiple", "pad_reflect",
]
