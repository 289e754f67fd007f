"""``LatentDiffusionSR``: the SSR diffusion stage as one Lightning-free model (latent space + AMF UNet + process).

``loss`` is Eq. 5 on a degraded batch; ``super_resolve`` samples an SR image from an LR image and the maps D_T, K_T
on the LR grid (any size: reflect-padded to the UNet's multiple and cropped back). The training stage
(``ssr_lightning.modules.SSRDiffusionModule``) and the inference pipeline both use this object; a checkpoint
rebuilds it with ``LatentDiffusionSR.from_config`` (docs/ARCHITECTURE.md).

Process options (docs/DESIGN.md §4; each a config entry whose default reproduces the model before it existed):

- ``autoencoder``: ``vae`` (a trained tiny ``AutoencoderKL`` or a local pretrained one) | ``space_to_depth``
  (lossless, no weights: ``diffusion/space_to_depth.py``).
- ``image_condition``: what the LR encoder and ``concat_lr`` read: ``bicubic`` (the bicubic-upsampled LR, the paper)
  | ``svkr`` (the front end's SR image I_T, passed as ``reference``: CasSR's reference image).
- ``sample_start`` at ``sample_strength`` s: ``noise`` (pure noise; needs s = 1, the paper) | ``lr`` (the noised
  bicubic-LR latent at t ≈ s·T) | ``frontend`` (the noised I_T latent); at s = 1 every start is pure noise.
- ``guidance_step`` η: BlindDiff's kernel-aware LR-consistency step between sampling steps
  (``diffusion/guidance.py``; needs a kernel field; 0 = off).
- ``color_fix``: ``none`` | ``wavelet`` | ``adain`` colour correction of the output from the condition image
  (``diffusion/color.py``).

Large images (``tile > 0``): the condition features are encoded per overlapping tile and the tiles' UNet outputs
(ε̂, x̂0 or v̂, by ``prediction_type``) are blended at every denoising step into one latent (``diffusion/tiling.py``),
then one scheduler step runs on the whole latent; a VAE encodes and decodes tile-wise with the same blending
(space-to-depth is pointwise and needs none).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import Tensor

from ssr_lightning.diffusion.autoencoder import VAELatents
from ssr_lightning.diffusion.color import ColorFix
from ssr_lightning.diffusion.color import color_fix as apply_color_fix
from ssr_lightning.diffusion.guidance import KernelGuidance
from ssr_lightning.diffusion.process import GaussianDiffusion, PredictionType, Sampler, StepHook
from ssr_lightning.diffusion.space_to_depth import SpaceToDepthLatents
from ssr_lightning.diffusion.tiling import FusedDenoiser, TileGrid
from ssr_lightning.networks.ssr_unet import SSRUNet

__all__ = ["AutoencoderKind", "ImageCondition", "LatentDiffusionSR", "SampleStart", "check_sampling", "lr_multiple",
           "pad_reflect"]

AutoencoderKind = Literal["vae", "space_to_depth"]
ImageCondition = Literal["bicubic", "svkr"]
SampleStart = Literal["noise", "lr", "frontend"]
_CHOICES = {"autoencoder": ("vae", "space_to_depth"), "image_condition": ("bicubic", "svkr"),
            "start": ("noise", "lr", "frontend"), "color_fix": ("none", "wavelet", "adain")}


def _choice(name: str, value: str) -> None:
    if value not in _CHOICES[name]:
        raise ValueError(f"{name} must be one of {', '.join(_CHOICES[name])}; got {value!r}")


def check_sampling(start: str, strength: float, guidance: float, fix: str) -> None:
    """Raise a ValueError naming the option when a sampling setting is invalid or inconsistent."""
    _choice("start", start)
    _choice("color_fix", fix)
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"sample_strength (--strength) must be in (0, 1] (1 = from pure noise), got {strength}")
    if start == "noise" and strength < 1.0:
        raise ValueError(f"start 'noise' runs every step from pure noise, so sample_strength (--strength) must be 1, "
                         f"got {strength}; start from an image with start 'lr' or 'frontend'")
    if guidance < 0:
        raise ValueError(f"guidance_step (--guidance) must be >= 0 (0 = off), got {guidance}")


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
    """AMF-conditioned latent diffusion SR (docs/DESIGN.md §4; the options in the module doc).

    Args:
        autoencoder_config: ``VAELatents`` arguments (tiny VAE architecture; ignored with ``pretrained_path``) or
            ``SpaceToDepthLatents`` arguments (factor, mean, std) with ``autoencoder="space_to_depth"``.
        unet_config: ``SSRUNet`` arguments (backbone architecture, modalities, AMF).
        pretrained_path: Local diffusers folder (``unet/``, ``vae/``, ``scheduler/``) replacing the tiny backbone.
        num_train_timesteps: Steps of the training schedule.
        scale: SR factor s.
        sampler: Default sampler (``ddim`` | ``ddpm``).
        num_inference_steps: Default sampling steps.
        sample_strength: Default start strength (1 = pure noise).
        autoencoder: ``vae`` | ``space_to_depth``.
        image_condition: ``bicubic`` | ``svkr`` (I_T, given to every call as ``reference``).
        sample_start: Default start for strength < 1: ``noise`` | ``lr`` | ``frontend``.
        guidance_step: Default kernel-aware guidance step η (0 = off).
        color_fix: Default colour correction of the output: ``none`` | ``wavelet`` | ``adain``.
        prediction_type: What the UNet predicts: ``epsilon`` (paper) | ``sample`` (x0) | ``v_prediction``.
        residual: Diffuse the residual ``(z(HR) − z(condition image)) · residual_scale`` instead of ``z(HR)``
            (SRDiff / ResShift): the process only generates what the condition image lacks, so an untrained or
            uncertain model falls back to the condition image (bicubic or I_T) instead of a washed-out sample.
        residual_scale: Multiplier of the residual latent (its std is far below 1; the schedule assumes ~1).
    """

    @register_to_config
    def __init__(
        self, autoencoder_config: dict[str, Any] | None = None, unet_config: dict[str, Any] | None = None,
        pretrained_path: str | None = None, num_train_timesteps: int = 1000, scale: int = 4, sampler: Sampler = "ddim",
        num_inference_steps: int = 20, sample_strength: float = 1.0, autoencoder: AutoencoderKind = "vae",
        image_condition: ImageCondition = "bicubic", sample_start: SampleStart = "lr", guidance_step: float = 0.0,
        color_fix: ColorFix = "none", prediction_type: PredictionType = "epsilon", residual: bool = False,
        residual_scale: float = 1.0,
    ) -> None:
        super().__init__()
        _choice("autoencoder", autoencoder)
        _choice("image_condition", image_condition)
        check_sampling(sample_start, sample_strength, guidance_step, color_fix)
        if residual_scale <= 0:
            raise ValueError(f"residual_scale must be > 0, got {residual_scale}")
        # (config names end in _config: diffusers resolves config keys before submodules of the same name)
        self.latents: VAELatents | SpaceToDepthLatents
        if autoencoder == "space_to_depth":
            if pretrained_path is not None:
                raise ValueError("autoencoder 'space_to_depth' replaces the VAE: it cannot be combined with a "
                                 "pretrained_path backbone (whose UNet expects that VAE's latents)")
            self.latents = SpaceToDepthLatents(**dict(autoencoder_config or {}))
        else:
            ae = {"pretrained_path": pretrained_path} if pretrained_path is not None else dict(autoencoder_config or {})
            self.latents = VAELatents(**ae)
        self.unet = SSRUNet(latent_channels=self.latents.channels, pretrained_path=pretrained_path,
                           **(unet_config or {}))
        self.process = GaussianDiffusion(num_train_timesteps, pretrained_path, prediction_type)
        self.scale = scale

    # --- conditions ---------------------------------------------------------------------------------------------
    @property
    def lr_multiple(self) -> int:
        """LR sides must be multiples of this (padding does it for callers)."""
        return lr_multiple(self.scale, self.latents.factor, self.unet.size_multiple)

    @property
    def latent_factor(self) -> float:
        """Latent pixels per LR pixel (``s / vae_factor``)."""
        return self.scale / self.latents.factor

    @property
    def uses(self) -> dict[str, bool]:
        """Which maps the UNet reads: ``{"depth": bool, "kernel": bool}``."""
        return {"depth": "depth" in self.unet.enabled, "kernel": "kernel" in self.unet.enabled}

    def needs(self, start: str | None = None, guidance: float | None = None) -> dict[str, bool]:
        """What a call must be given: ``depth``/``kernel`` (UNet modalities), ``reference`` (I_T: the image condition
        or the start) and ``guidance_kernel`` (a kernel field for guidance), for these sampling settings."""
        start = start or self.config.sample_start
        guidance = self.config.guidance_step if guidance is None else guidance
        return {**self.uses, "reference": self.config.image_condition == "svkr" or start == "frontend",
                "guidance_kernel": guidance > 0}

    def condition_image(self, lr: Tensor, reference: Tensor | None = None) -> Tensor:
        """The HR-grid image the LR encoder / ``concat_lr`` read (and the colour fix copies its colours from):
        the bicubic-upsampled LR, or I_T (``reference``) with ``image_condition="svkr"``."""
        if self.config.image_condition == "bicubic":
            return F.interpolate(lr, scale_factor=self.scale, mode="bicubic", align_corners=False).clamp(0, 1)
        return self._check_reference(lr, reference, "image_condition 'svkr'")

    def _check_reference(self, lr: Tensor, reference: Tensor | None, why: str) -> Tensor:
        s = self.scale
        want = (lr.shape[0], 3, s * lr.shape[-2], s * lr.shape[-1])
        if reference is None:
            raise ValueError(f"{why} needs the front end's SR image I_T (reference=, shape {want})")
        if tuple(reference.shape) != want:
            raise ValueError(f"{why}: reference has shape {tuple(reference.shape)}, expected {want}")
        return reference.clamp(0, 1)

    def encode_image(self, img: Tensor, grid: TileGrid | None = None) -> Tensor:
        """Latent of an HR-grid image; a VAE encodes tile by tile with blending on a multi-tile ``grid``."""
        if grid is None or len(grid) == 1 or self.latents.pointwise:
            return self.latents.encode(img)
        return grid.blend(lambda i, t: self.latents.encode(img[t.window(self.scale)]), self.latent_factor)

    def decode_latent(self, z: Tensor, grid: TileGrid | None = None) -> Tensor:
        """Image of a latent (not clamped); a VAE decodes tile by tile with blending on a multi-tile ``grid``."""
        if grid is None or len(grid) == 1 or self.latents.pointwise:
            return self.latents.decode(z)
        return grid.blend(lambda i, t: self.latents.decode(z[t.window(self.latent_factor)]), self.scale)

    def to_process(self, z: Tensor, z_c: Tensor) -> Tensor:
        """An image latent in the space the process diffuses (itself, or the scaled residual over ``z_c``)."""
        return (z - z_c) * self.config.residual_scale if self.config.residual else z

    def from_process(self, z: Tensor, z_c: Tensor) -> Tensor:
        """Inverse of :meth:`to_process`."""
        return z / self.config.residual_scale + z_c if self.config.residual else z

    # --- training -----------------------------------------------------------------------------------------------
    def loss(
        self, hr: Tensor, lr: Tensor, depth: Tensor | None, kernel: Tensor | None,
        weights: dict[str, float] | None = None, generator: torch.Generator | None = None,
        reference: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Eq. 5 terms on one batch (``mse``, ``l1_<modality>``, ``loss``); seeded and posterior-mean with ``generator``.

        ``reference``: I_T, the image condition when ``image_condition="svkr"``."""
        with torch.no_grad():
            z0 = self.latents.encode(hr, sample=generator is None)
            z_c = self.latents.encode(self.condition_image(lr, reference))
        feats = self.unet.encode((z0.shape[-2], z0.shape[-1]), z_c, depth, kernel)
        return self.process.loss(lambda z_t, t: self.unet.denoise(z_t, t, feats, z_c), self.to_process(z0, z_c), feats,
                                 weights, generator)

    # --- sampling -----------------------------------------------------------------------------------------------
    def color_corrected(self, sr: Tensor, lr: Tensor, reference: Tensor | None = None,
                        mode: ColorFix | None = None) -> Tensor:
        """``sr`` colour-corrected from the condition image (``mode`` default: the config's ``color_fix``)."""
        mode = mode or self.config.color_fix
        if mode == "none":
            return sr
        return apply_color_fix(sr, self.condition_image(lr, reference), mode).clamp(0, 1)

    @torch.no_grad()
    def super_resolve(
        self, lr: Tensor, depth: Tensor | None = None, kernel: Tensor | None = None,
        generator: torch.Generator | None = None, num_inference_steps: int | None = None,
        sampler: Sampler | None = None, noise: Tensor | None = None, strength: float | None = None,
        hooks: Sequence[StepHook] = (), *, reference: Tensor | None = None, start: SampleStart | None = None,
        guidance: float | None = None, guidance_kernel: Tensor | None = None, color_fix: ColorFix | None = None,
        tile: int = 0, overlap: int = 0, progress: bool = False,
    ) -> Tensor:
        """SR ``(B, 3, s·h, s·w)`` in [0, 1] of ``lr (B, 3, h, w)`` given D_T / K_T on the LR grid.

        ``reference`` is the front end's I_T ``(B, 3, s·h, s·w)`` (needed by ``image_condition="svkr"`` and
        ``start="frontend"``); ``guidance_kernel`` the kernel field of the guidance (default: ``kernel``).
        The initial noise is ``noise`` (latent-shaped) or drawn from ``generator`` (a CPU generator: the same noise on
        every device). ``tile``/``overlap`` (LR pixels, 0 = whole image) switch on step-fused tiling. Other arguments
        default to the config.
        """
        cfg = self.config
        start = start or cfg.sample_start
        strength = cfg.sample_strength if strength is None else strength
        guidance = cfg.guidance_step if guidance is None else guidance
        fix = color_fix or cfg.color_fix
        check_sampling(start, strength, guidance, fix)
        s, (h, w), q, r = self.scale, lr.shape[-2:], self.lr_multiple, self.latent_factor
        gk = guidance_kernel if guidance_kernel is not None else kernel
        if guidance > 0 and gk is None:
            raise ValueError("kernel-aware guidance (guidance step > 0) needs a kernel field (guidance_kernel=)")
        if reference is not None or self.needs(start, guidance)["reference"]:
            reference = pad_reflect(self._check_reference(lr, reference, f"start {start!r} / image_condition "
                                                          f"{cfg.image_condition!r}"), q * s)[0]
        lr_p, _ = pad_reflect(lr, q)
        depth = pad_reflect(depth, q)[0] if depth is not None else None
        kernel = pad_reflect(kernel, q)[0] if kernel is not None else None
        grid = TileGrid(lr_p.shape[-2], lr_p.shape[-1], tile, overlap, q)
        cond = self.condition_image(lr_p, reference)
        z_c = self.encode_image(cond, grid)
        feats, z_tiles = [], []
        for t in grid:
            zt = z_c[t.window(r)]
            feats.append(self.unet.encode((zt.shape[-2], zt.shape[-1]), zt,
                                          depth[t.window(1)] if depth is not None else None,
                                          kernel[t.window(1)] if kernel is not None else None))
            z_tiles.append(zt)
        if noise is None:
            noise = torch.randn(z_c.shape, generator=generator, dtype=torch.float32)
        init = None
        if strength < 1.0:
            if start == "frontend":
                init = z_c if cfg.image_condition == "svkr" else self.encode_image(reference, grid)
            else:
                init = z_c if cfg.image_condition == "bicubic" else self.encode_image(
                    F.interpolate(lr_p, scale_factor=s, mode="bicubic", align_corners=False).clamp(0, 1), grid)
            init = self.to_process(init, z_c)
        all_hooks = list(hooks)
        if guidance > 0:
            gk_p = pad_reflect(gk, q)[0]
            offset = (z_c, self.config.residual_scale) if self.config.residual else None
            all_hooks.insert(0, KernelGuidance(self.latents.decode, lr_p, gk_p, s, guidance, grid, r, offset=offset))
        denoiser = FusedDenoiser(grid, r, lambda z_t, t, i: self.unet.denoise(z_t, t, feats[i], z_tiles[i]),
                                 progress=progress)
        z = self.process.sample(
            denoiser, noise.to(z_c), num_inference_steps or cfg.num_inference_steps, strength, reference=init,
            sampler=sampler or cfg.sampler, generator=generator, hooks=all_hooks,
        )
        sr = self.decode_latent(self.from_process(z, z_c), grid).clamp(0, 1)[..., : s * h, : s * w]
        if fix != "none":
            sr = apply_color_fix(sr, cond[..., : s * h, : s * w], fix).clamp(0, 1)
        return sr

    def forward(self, lr: Tensor, depth: Tensor | None = None, kernel: Tensor | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        return self.super_resolve(lr, depth, kernel, generator)
