"""Argument groups of the diffusion stage (plain dataclasses: the CLI documents each field from its docstring).

:class:`UNetConfig` is ``LatentDiffusionSR``'s ``unet_config`` group: the ``SSRUNet`` arguments the stage chooses
(backbone sizes, the Table 2 modality switches, AMF), so ``--model.init_args.net.init_args.unet_config.use_kernel
false`` reads as what it does. :class:`LossConfig` is the stage module's ``loss`` group. Sampling options are arguments
of a call: :class:`~ssr_lightning.diffusion.sampling.SamplingConfig`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ssr_lightning.networks.amf import AMFMode

__all__ = ["LossConfig", "UNetConfig"]


@dataclass(frozen=True)
class UNetConfig:
    """The denoising UNet: the tiny backbone's sizes (ignored with pretrained_path), the conditions that reach it and
    how AMF fuses them (``SSRUNet``'s arguments; the latent channels come from the autoencoder)."""

    block_out_channels: tuple[int, ...] = (32, 64, 64)
    """Tiny backbone widths per level."""
    down_block_types: tuple[str, ...] = ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D")
    """Tiny backbone down blocks (diffusers names)."""
    up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D")
    """Tiny backbone up blocks."""
    layers_per_block: int = 1
    """ResNets per block of the tiny backbone."""
    attention_head_dim: int = 8
    """Head width of the tiny backbone's attention blocks."""
    use_kernel: bool = True
    """Kernel modality f_1 (K_T)."""
    use_depth: bool = True
    """Depth modality f_2 (D_T)."""
    use_lr: bool = True
    """LR-encoder modality f_3 (on the condition image's latent)."""
    concat_lr: bool = True
    """Also concatenate the condition image's latent to the UNet input (SR3/LDM style; SSRUNet's own default is
    off)."""
    kernel_channels: int = 441
    """Channels of the kernel condition (441 = the raw 21×21 field)."""
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
    map_out: int = 32
    """Channels of the depth / kernel features f_1, f_2."""

    @classmethod
    def of(cls, value: Any) -> UNetConfig:
        """``value`` as a UNetConfig: an instance passes, a mapping (a checkpoint's ``unet_config``) is converted,
        None gives the defaults; an unknown key is a TypeError naming it."""
        if isinstance(value, cls):
            return value
        given = dict(value or {})
        unknown = sorted(set(given) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(f"unet_config: no such option {', '.join(unknown)} (options: "
                            f"{', '.join(f.name for f in dataclasses.fields(cls))})")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})


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
