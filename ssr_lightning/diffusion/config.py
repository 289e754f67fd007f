"""Argument groups of the diffusion stage (plain dataclasses: the CLI documents each field from its docstring).

- :class:`SamplingConfig`: how an SR image is sampled, the arguments of a call, not of the model (diffusers style).
  Declared and validated here only: ``LatentDiffusionSR.super_resolve(..., sampling=)``,
  ``GaussianDiffusion.sample(..., sampling=)``, ``SSRPipeline(..., sampling=)`` and ``SSRDiffusionModule(sampling=)``
  (validation, test and predict samples) take it; the stage module writes it into its checkpoints' ``ssr`` block, so
  ``ssr sr`` samples as the model was validated. ``ssr sr``'s sampling flags (``--steps``, ``--strength``, …) are
  generated from its fields (``ssr_lightning.cli.parsing.dataclass_flags``) and each replaces only its own field
  (:meth:`SamplingConfig.replace`, which validates again). docs/DESIGN.md §4 describes every option.
- :class:`UNetConfig`: ``LatentDiffusionSR``'s ``unet_config`` group, the ``SSRUNet`` arguments the stage chooses
  (backbone sizes, the Table 2 modality switches, AMF), so ``--model.init_args.net.init_args.unet_config.use_kernel
  false`` reads as what it does.
- :class:`LossConfig`: the stage module's ``loss`` group.
- :class:`ComputeConfig`: how the work of one image is laid out (tiles per network call, autocast, the per-tile
  condition-feature cache, the front end's tile side, the condition maps' precision): never what is computed, so it is not recorded with a model;
  ``ssr sr`` generates its flags from it as from ``SamplingConfig``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from ssr_lightning.diffusion.color import ColorFix
from ssr_lightning.networks.amf import AMFMode

__all__ = ["LEGACY_NAMES", "LEGACY_VALUES", "STORAGE_AUTO_PIXELS", "Autocast", "ComputeConfig", "LossConfig",
           "SampleStart", "Sampler", "SamplingConfig", "SamplingError", "Storage", "UNetConfig", "renamed"]

Sampler = Literal["ddim", "ddpm"]
Autocast = Literal["auto", "none", "bf16", "fp16"]
Storage = Literal["auto", "float32", "float16"]
# LR pixels above which ``storage="auto"`` keeps the latents and maps in float16: every test, table and the recorded
# benchmark sizes up to 2000×1500 (3 Mpx) stay float32 and exact; above it, float16 saves 96 B per LR pixel for each
# of the stepped and the condition latent (and 64 B for a kernel projection), about half the per-pixel state.
STORAGE_AUTO_PIXELS = 4_000_000
SampleStart = Literal["noise", "bicubic", "frontend"]

# Names and values of the sampling options before they became call arguments (model config keys, the stage's
# `sampling` group); checkpoints are upgraded through these (inference/legacy.py).
LEGACY_NAMES = {"num_inference_steps": "steps", "sample_strength": "strength", "sample_start": "start",
                "guidance_step": "guidance"}
LEGACY_VALUES = {"start": {"lr": "bicubic"}}


def renamed(values: Mapping[str, Any]) -> dict[str, Any]:
    """Sampling options under their current names and values (pre-0.4 ones renamed; other keys kept)."""
    out = {}
    for key, value in values.items():
        key = LEGACY_NAMES.get(key, key)
        out[key] = LEGACY_VALUES.get(key, {}).get(value, value) if isinstance(value, str) else value
    return out


class SamplingError(ValueError):
    """An invalid sampling setting: ``fields`` are the options involved (the first one's ``value`` is wrong),
    ``detail`` what is wrong. The message reads ``sampling <field> <value>: <detail>``; :meth:`spelled` names the
    field as the caller spells it (``--strength 2.0: ...``)."""

    def __init__(self, fields: tuple[str, ...], value: Any, detail: str) -> None:
        super().__init__(f"sampling {fields[0]} {value}: {detail}")
        self.fields, self.value, self.detail = fields, value, detail

    def spelled(self, spell: Callable[[str], str]) -> str:
        return f"{spell(self.fields[0])} {self.value}: {self.detail}"


@dataclass(frozen=True)
class SamplingConfig:
    """How SR images are sampled (validation, test and predict samples of the stage; ``ssr sr``; the pipeline)."""

    sampler: Sampler = "ddim"
    """ddim (deterministic for a seed: η = 0, trailing spacing) or ddpm."""
    steps: int = 20
    """Denoising steps of the sampler (at strength 1; fewer are run at strength < 1)."""
    strength: float = 1.0
    """1: from pure noise, every step (the paper). s < 1: start at t ≈ s·T from the noised latent of the start image
    and run the last round(s·steps) steps (img2img-style)."""
    start: SampleStart = "bicubic"
    """Start image for strength < 1: bicubic (the bicubic-upsampled LR) or frontend (the front end's SR image I_T);
    noise: pure noise, every step (needs strength 1; the paper)."""
    guidance: float = 0.0
    """Kernel-aware guidance (BlindDiff) step η: after every step x̂0 moves η times the line-search step down
    ∇‖LR − (D(x̂0) ⊗ K)↓s‖² with the condition kernel field (GT or SVKR's K_T, also when the kernel modality is off);
    0 = off, 1 = a full step."""
    color_fix: ColorFix = "none"
    """Colour correction of the output from the condition image: none, wavelet (its low frequencies, StableSR) or
    adain (its channel mean and std)."""
    seed: int = 0
    """Seed of the sampling noise (validation and test add the batch index)."""
    tile: int = 64
    """Side of the step-fused diffusion tiles in LR pixels (0: the whole image at once); rounded down to the model's
    size multiple. An image that fits in one tile is sampled exactly as untiled. 64/16 was chosen on the validation
    split (issue 20: no stripe at tile borders, PSNR-Y within 0.05 dB of 32/8); a model with the kernel/depth
    modalities (configs/diffusion/ssr_amf.yaml) stripes above 32 px tiles and pins 32/8."""
    overlap: int = 16
    """Overlap of neighbouring tiles in LR pixels (smaller than tile)."""

    def __post_init__(self) -> None:
        """The one check of every sampling setting (a ``SamplingError`` naming the fields)."""
        for name, kind in (("sampler", Sampler), ("start", SampleStart), ("color_fix", ColorFix)):
            value = getattr(self, name)
            if value not in get_args(kind):
                raise SamplingError((name,), value, f"must be one of {', '.join(get_args(kind))}")
        if self.steps < 1:
            raise SamplingError(("steps",), self.steps, "must be >= 1")
        if not 0.0 < self.strength <= 1.0:
            raise SamplingError(("strength",), self.strength, "must be in (0, 1] (1 = from pure noise)")
        if self.start == "noise" and self.strength < 1.0:
            raise SamplingError(("start", "strength"), self.start, f"runs every step from pure noise, so strength "
                                f"must be 1, got {self.strength}; start from an image with start bicubic or frontend")
        if self.guidance < 0:
            raise SamplingError(("guidance",), self.guidance, "must be >= 0 (0 = off)")
        for name in ("tile", "overlap"):
            if getattr(self, name) < 0:
                raise SamplingError((name,), getattr(self, name), "must be >= 0 (tile 0: no tiling)")
        if self.tile and self.overlap >= self.tile:
            raise SamplingError(("overlap", "tile"), self.overlap, f"must be smaller than tile {self.tile}")

    def replace(self, **changes: Any) -> SamplingConfig:
        """A copy with ``changes`` (field names; None values are left out), validated again."""
        given = {k: v for k, v in changes.items() if v is not None}
        unknown = sorted(set(given) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"not a sampling option: {', '.join(unknown)} (options: "
                            f"{', '.join(f.name for f in dataclasses.fields(self))})")
        return dataclasses.replace(self, **given) if given else self

    @classmethod
    def from_dict(cls, values: Any) -> SamplingConfig:
        """A config from a checkpoint's plain dict (unknown keys are an error), or ``values`` if it is one."""
        if isinstance(values, cls):
            return values
        return cls().replace(**dict(values or {}))


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
    padding_mode: Literal["zeros", "reflect"] = "zeros"
    """Padding of the UNet's and the encoders' convolutions: zeros (diffusers') or reflect (no border signal, so no
    edge-position behaviour to repeat at tile edges)."""

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


@dataclass(frozen=True)
class ComputeConfig:
    """How one image's work is laid out in memory and on the device. Results equal the defaults' up to float
    round-off (tiles batched or not, cached or recomputed features), except ``autocast`` bf16/fp16 and ``storage``
    float16."""

    tile_batch: int = 8
    """Diffusion tiles per UNet call (the same result batched or not; 8 is the fastest on a CPU, more on a GPU)."""
    autocast: Autocast = "auto"
    """Reduced precision for the UNet, the condition encoders, KE and NBSR on a GPU (auto: bf16 on CUDA, none on a
    CPU); the scheduler, kernel normalisation and accumulators stay float32."""
    feature_cache_mb: int = 512
    """Per-tile condition features kept across denoising steps, in MB (the rest are recomputed at every step)."""
    frontend_tile: int = 512
    """Tile side (LR px) of the front end's KE and NBSR passes, each with a halo of its receptive field (0: the
    whole image in one tile)."""
    storage: Storage = "auto"
    """Precision of the whole-image latents and maps of the banded diffusion: the latent of I_T, the kernel encoder's
    projection of K_T and the stepped latent (each tile's slice and each band is widened to float32 when read, and a
    band is stepped in float32): float16 halves them (output within 1/255 of float32). auto: float16 above 4,000,000
    LR pixels, else float32."""

    def __post_init__(self) -> None:
        if self.tile_batch < 1:
            raise ValueError(f"compute tile_batch {self.tile_batch}: must be >= 1")
        if self.autocast not in get_args(Autocast):
            raise ValueError(f"compute autocast {self.autocast}: must be one of {', '.join(get_args(Autocast))}")
        if self.feature_cache_mb < 0 or self.frontend_tile < 0:
            raise ValueError(f"compute feature_cache_mb {self.feature_cache_mb} / frontend_tile {self.frontend_tile}: "
                             "must be >= 0")
        if self.storage not in get_args(Storage):
            raise ValueError(f"compute storage {self.storage!r}: must be one of {', '.join(get_args(Storage))}")

    def dtype(self, device: Any) -> Any:
        """The autocast dtype on ``device`` (None: full precision)."""
        import torch

        kind = getattr(device, "type", str(device).split(":")[0])
        choice = self.autocast
        if choice == "auto":
            choice = "bf16" if kind == "cuda" else "none"
        return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[choice]

    def storage_dtype(self, pixels: int) -> Any:
        """The dtype of the condition maps of an image of ``pixels`` LR pixels (``storage``)."""
        import torch

        choice = self.storage
        if choice == "auto":
            choice = "float16" if pixels > STORAGE_AUTO_PIXELS else "float32"
        return {"float32": torch.float32, "float16": torch.float16}[choice]

    def replace(self, **changes: Any) -> ComputeConfig:
        """A copy with ``changes`` (None values are left out), validated again."""
        given = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **given) if given else self
