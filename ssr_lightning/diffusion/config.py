"""Argument groups of the diffusion stage (plain dataclasses: the CLI documents each field from its docstring)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ssr_lightning.diffusion.color import ColorFix
from ssr_lightning.networks.amf import AMFMode

__all__ = ["BackboneConfig", "LossConfig", "ModalityConfig", "SamplingConfig"]


@dataclass
class BackboneConfig:
    """The denoising UNet, the autoencoder and the noise schedule."""

    autoencoder: Literal["vae", "space_to_depth"] = "vae"
    """Latent space: vae (the VAEModule checkpoint of vae_ckpt, or pretrained_path's VAE) or space_to_depth
    (lossless PixelUnshuffle by space_to_depth_factor with fixed per-colour normalisation; no VAE checkpoint, no
    training; diffusion/space_to_depth.py)."""
    space_to_depth_factor: int = 4
    """Block side of the space_to_depth latent (the tiny VAE's factor is 4): 3·f² latent channels."""
    vae_ckpt: str | None = None
    """VAEModule checkpoint (`ssr fit --config configs/vae.yaml`) giving the latent space (None: the newest
    runs/vae run's best.ckpt); read once, when the stage is built (its weights then travel in this stage's
    checkpoints)."""
    pretrained_path: str | None = None
    """Local diffusers folder (`unet/`, `vae/`, optionally `scheduler/`): replaces the tiny UNet and the VAE."""
    freeze_backbone: bool = True
    """With pretrained_path: train only the condition encoders + AMF (ignored for a tiny backbone)."""
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    """Tiny UNet widths per level."""
    down_block_types: tuple[str, ...] = ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D")
    """Tiny UNet down blocks (diffusers names)."""
    up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D")
    """Tiny UNet up blocks."""
    layers_per_block: int = 1
    """ResNets per block of the tiny UNet."""
    num_train_timesteps: int = 1000
    """Steps of the training noise schedule (DDPM)."""
    prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon"
    """What the UNet predicts: epsilon (the paper's Eq. 5), sample (x0; a UNet narrower than its latent, e.g. the tiny
    one on the 48-channel space_to_depth latent, cannot carry the noise it would have to predict) or v_prediction."""
    residual: bool = False
    """Diffuse the residual over the condition image's latent (SRDiff / ResShift) instead of the HR latent itself: the
    sample starts from (and an uncertain model returns) the condition image, bicubic LR or the front end's I_T."""
    residual_scale: float = 1.0
    """Multiplier of that residual latent, so that its std is near the schedule's ~1."""
    gradient_checkpointing: bool = False
    """Recompute UNet activations in backward (Stable-Diffusion-sized backbones)."""


@dataclass
class ModalityConfig:
    """Which conditions reach the UNet, and how AMF fuses them (the Table 2 switches)."""

    use_kernel: bool = True
    """Kernel modality f_1 (SVKR's K_T)."""
    use_depth: bool = True
    """Depth modality f_2 (SVKR's D_T)."""
    use_lr: bool = True
    """LR-encoder modality f_3."""
    concat_lr: bool = True
    """Also concatenate the LR latent to the UNet input."""
    image_condition: Literal["bicubic", "svkr"] = "bicubic"
    """Image the LR encoder and concat_lr read: bicubic (the bicubic-upsampled LR, the paper) or svkr (the front
    end's SR image I_T, a CasSR-style reference). Training with conditions.source=svkr uses SVKR's I_T; with gt
    conditions NBSR(LR, GT kernel) (conditions.nbsr_ckpt), the oracle counterpart of SVKR's last step."""
    amf_hidden: int = 128
    """Hidden width of the AMF MLPs (paper: 128)."""
    amf_pooled: bool = False
    """Global (pooled) AMF instead of per-pixel."""
    amf_mode: AMFMode = "residual"
    """"residual" (identity at init) or "paper" (literal Eq. 3)."""
    amf_on_input: bool = True
    """Also modulate the UNet's conv_in output (full latent resolution)."""
    lr_width_mult: float = 1.0
    """LR encoder width relative to the UNet's."""
    map_width: int = 32
    """Width of the depth / kernel encoders."""


@dataclass
class SamplingConfig:
    """How SR images are sampled (validation, test, predict, `ssr sr`)."""

    sampler: Literal["ddim", "ddpm"] = "ddim"
    """ddim (deterministic for a seed) or ddpm."""
    num_inference_steps: int = 20
    """Sampling steps."""
    sample_strength: float = 1.0
    """1.0: from pure noise (the paper). s < 1: start at t ≈ s·T from the noised start image's latent (see start)
    and run the last round(s·steps) steps (img2img-style)."""
    start: Literal["noise", "lr", "frontend"] = "lr"
    """Start image for sample_strength < 1: lr (the bicubic-upsampled LR) or frontend (SVKR's I_T); noise: pure
    noise, every step (needs sample_strength 1.0; the paper)."""
    guidance_step: float = 0.0
    """Kernel-aware guidance (BlindDiff) η: after every step x̂0 moves η times the line-search step down
    ∇‖LR − (D(x̂0) ⊗ K)↓s‖² with the condition kernel field (GT or SVKR's K_T, also when use_kernel is off);
    0 = off, 1 = a full step."""
    color_fix: ColorFix = "none"
    """Colour correction of the output from the condition image: none, wavelet (its low frequencies, StableSR) or
    adain (its channel mean/std). Test metrics report both: psnr_y etc. with it, *_raw without."""
    seed: int = 0
    """Seed of the sampling noise."""
    num_val_samples: int = 4
    """Val images sampled per validation (first val batch)."""

    def __post_init__(self) -> None:
        from ssr_lightning.diffusion.model import check_sampling

        try:
            check_sampling(self.start, self.sample_strength, self.guidance_step, self.color_fix)
        except ValueError as err:
            raise ValueError(f"model.init_args.sampling: {err}") from None


@dataclass
class LossConfig:
    """Eq. 5 weights and the EMA of the trainable weights."""

    lambda_kernel: float = 1e-4
    """λ_1: L1 on the kernel features f_1."""
    lambda_depth: float = 1e-4
    """λ_2: L1 on the depth features f_2."""
    lambda_lr: float = 1e-4
    """λ_3: L1 on the LR features f_3."""
    ema_decay: float = 0.999
    """EMA decay of the trainable weights (0 disables it); EMA weights validate, sample and are exported."""

    def weights(self) -> dict[str, float]:
        """λ per modality name, as GaussianDiffusion.loss takes them."""
        return {"kernel": self.lambda_kernel, "depth": self.lambda_depth, "lr": self.lambda_lr}


