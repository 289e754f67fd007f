"""``LatentDiffusionSR``: the SSR diffusion stage as one Lightning-free model (latent space + AMF UNet + process).

``loss`` is Eq. 5 on a degraded batch; ``super_resolve`` samples an SR image from an LR image and the maps D_T, K_T
on the LR grid (any size: reflect-padded to the UNet's multiple and cropped back). The training stage
(``ssr_lightning.modules.SSRDiffusionModule``, which takes this model as its ``net``) and the inference pipeline both
use this object; a checkpoint rebuilds it with ``LatentDiffusionSR.from_config`` (docs/ARCHITECTURE.md).

The model's config holds what it is (docs/DESIGN.md §4; each option's default reproduces the model before it
existed):

- ``autoencoder``: ``vae`` (a trained tiny ``AutoencoderKL`` or a local pretrained one) | ``space_to_depth``
  (lossless, no weights: ``diffusion/space_to_depth.py``), with ``autoencoder_config`` its arguments.
- ``unet_config``: the UNet, its modalities and AMF (:class:`~ssr_lightning.diffusion.config.UNetConfig`).
- ``prediction_type`` (``epsilon`` | ``sample`` (x0) | ``v_prediction``), ``residual``, ``residual_scale``,
  ``num_train_timesteps``: the process.
- ``image_condition``: what the LR encoder and ``concat_lr`` read: ``bicubic`` (the bicubic-upsampled LR, the paper)
  | ``frontend`` (the front end's SR image I_T, passed as ``frontend=``: CasSR's reference image).

How a call samples is not part of it: ``super_resolve(..., sampling=SamplingConfig(...))`` (sampler, steps,
``strength`` and ``start`` (``noise`` | ``bicubic`` | ``frontend``), kernel-aware ``guidance``, ``color_fix``, seed,
tiles; ``diffusion/config.py``). Large images (``tile > 0``): the condition features are encoded per overlapping tile and
the tiles' UNet outputs (ε̂, x̂0 or v̂, by ``prediction_type``) are blended at every denoising step into one latent
(``diffusion/tiling.py``), then one scheduler step runs on the whole latent; a VAE encodes and decodes tile-wise with
the same blending (space-to-depth is pointwise and needs none).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import Tensor

from ssr_lightning.diffusion.autoencoder import VAELatents
from ssr_lightning.diffusion.banded import TileDenoiser, TileInputs, noise_like, row_bands, state_dtype, widened
from ssr_lightning.diffusion.color import ColorFix
from ssr_lightning.diffusion.color import color_fix as apply_color_fix
from ssr_lightning.diffusion.config import ComputeConfig, SamplingConfig, UNetConfig, renamed
from ssr_lightning.diffusion.guidance import KernelGuidance
from ssr_lightning.diffusion.process import GaussianDiffusion, PredictionType, StepHook
from ssr_lightning.diffusion.space_to_depth import SpaceToDepthLatents
from ssr_lightning.diffusion.decode import SRJob, decode_bands
from ssr_lightning.diffusion.tiling import TileGrid
from ssr_lightning.networks.ssr_unet import SSRUNet
from ssr_lightning.registry import register_stage

__all__ = ["AutoencoderKind", "ImageCondition", "LatentDiffusionSR", "lr_multiple", "pad_reflect"]

AutoencoderKind = Literal["vae", "space_to_depth"]
ImageCondition = Literal["bicubic", "frontend"]
_CHOICES = {"autoencoder": ("vae", "space_to_depth"), "image_condition": ("bicubic", "frontend")}
# the pre-0.4 constructor keywords that set a call default (see LatentDiffusionSR)
_LEGACY_SAMPLING = ("sampler", "num_inference_steps", "sample_strength", "sample_start", "guidance_step", "color_fix")


def _choice(name: str, value: str) -> None:
    if value not in _CHOICES[name]:
        raise ValueError(f"{name} must be one of {', '.join(_CHOICES[name])}; got {value!r}")


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


@register_stage("ssrdiffusion", label="SSR diffusion", config="configs/ssr.yaml", module="SSRDiffusionModule")
class LatentDiffusionSR(ModelMixin, ConfigMixin):
    """AMF-conditioned latent diffusion SR (docs/DESIGN.md §4; the options in the module doc).

    Args:
        autoencoder: Latent space: ``vae`` (a tiny ``AutoencoderKL``, trained by the VAE stage, or the VAE of
            ``pretrained_path``) or ``space_to_depth`` (lossless PixelUnshuffle with fixed per-colour normalisation;
            no weights, no training).
        autoencoder_config: Its arguments: ``VAELatents``' (tiny VAE sizes; ignored with ``pretrained_path``) or
            ``SpaceToDepthLatents``' (``factor``, ``mean``, ``std``). The model records the complete set.
        unet_config: The denoising UNet, the conditions that reach it and AMF.
        pretrained_path: Local diffusers folder (``unet/``, ``vae/``, optionally ``scheduler/``) replacing the tiny
            backbone and VAE (nothing is downloaded).
        scale: SR factor s (set from data.scale by ``ssr``).
        num_train_timesteps: Steps of the training noise schedule (DDPM).
        prediction_type: What the UNet predicts: ``epsilon`` (the paper's Eq. 5), ``sample`` (x0; a UNet narrower
            than its latent, e.g. the tiny one on the 48-channel space_to_depth latent, cannot carry the noise it
            would have to predict) or ``v_prediction``.
        residual: Diffuse the residual ``(z(HR) − z(condition image)) · residual_scale`` instead of ``z(HR)``
            (SRDiff / ResShift): the process only generates what the condition image lacks, so an untrained or
            uncertain model falls back to the condition image (bicubic or I_T) instead of a washed-out sample.
        residual_scale: Multiplier of the residual latent, so that its std is near the schedule's ~1.
        image_condition: What the LR encoder and ``concat_lr`` read: ``bicubic`` (the bicubic-upsampled LR, the paper)
            or ``frontend`` (the front end's SR image I_T, given to every call as ``frontend=``; CasSR's reference).

    The model holds no sampling settings: they are arguments of :meth:`super_resolve`. The pre-0.4 keywords
    ``sampler``, ``num_inference_steps``, ``sample_strength``, ``sample_start``, ``guidance_step`` and ``color_fix``
    are still accepted (with a DeprecationWarning) and become the ``SamplingConfig`` its calls default to; they are
    not part of the config, so checkpoints never record them.
    """

    ignore_for_config = ["legacy_sampling"]

    @register_to_config
    def __init__(
        self, autoencoder: AutoencoderKind = "vae", autoencoder_config: dict[str, Any] | None = None,
        unet_config: UNetConfig = UNetConfig(),  # noqa: B008 (frozen)
        pretrained_path: str | None = None, scale: int = 4, num_train_timesteps: int = 1000,
        prediction_type: PredictionType = "epsilon", residual: bool = False, residual_scale: float = 1.0,
        image_condition: ImageCondition = "bicubic", **legacy_sampling: Any,
    ) -> None:
        super().__init__()
        _choice("autoencoder", autoencoder)
        _choice("image_condition", image_condition)
        if residual_scale <= 0:
            raise ValueError(f"residual_scale must be > 0, got {residual_scale}")
        self.default_sampling = _legacy_default(legacy_sampling)
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
        unet = UNetConfig.of(unet_config)
        self.unet = SSRUNet(latent_channels=self.latents.channels, pretrained_path=pretrained_path,
                            **{k: list(v) if isinstance(v, tuple) else v for k, v in vars(unet).items()})
        self.process = GaussianDiffusion(num_train_timesteps, pretrained_path, prediction_type)
        self.scale = scale
        # the config records plain data, and every argument of the latent space (a checkpoint keeps the
        # space-to-depth constants it was trained with, whatever the defaults become)
        latents = {k: v for k, v in self.latents.config.items() if not k.startswith("_")}
        self.register_to_config(unet_config=_plain(vars(unet)),
                                autoencoder_config=None if pretrained_path is not None else _plain(latents))

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

    def needs(self, sampling: SamplingConfig | None = None) -> dict[str, bool]:
        """What a call with ``sampling`` must be given: ``depth``/``kernel`` (UNet modalities), ``frontend`` (I_T: the
        image condition or the start) and ``guidance_kernel`` (a kernel field for guidance)."""
        sampling = sampling or self.default_sampling
        return {**self.uses, "frontend": self.config.image_condition == "frontend" or sampling.start == "frontend",
                "guidance_kernel": sampling.guidance > 0}

    def condition_image(self, lr: Tensor, frontend: Tensor | None = None) -> Tensor:
        """The HR-grid image the LR encoder / ``concat_lr`` read (and the colour fix copies its colours from):
        the bicubic-upsampled LR, or I_T (``frontend``) with ``image_condition="frontend"``."""
        if self.config.image_condition == "bicubic":
            return F.interpolate(lr, scale_factor=self.scale, mode="bicubic", align_corners=False).clamp(0, 1)
        return self._check_frontend(lr, frontend, "image_condition 'frontend'")

    def _check_frontend(self, lr: Tensor, frontend: Tensor | None, why: str) -> Tensor:
        s = self.scale
        want = (lr.shape[0], 3, s * lr.shape[-2], s * lr.shape[-1])
        if frontend is None:
            raise ValueError(f"{why} needs the front end's SR image I_T (frontend=, shape {want})")
        if tuple(frontend.shape) != want:
            raise ValueError(f"{why}: I_T (frontend=) has shape {tuple(frontend.shape)}, expected {want}")
        return frontend.clamp(0, 1)

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
        frontend: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Eq. 5 terms on one batch (``mse``, ``l1_<modality>``, ``loss``); seeded and posterior-mean with ``generator``.

        ``frontend``: I_T, the image condition when ``image_condition="frontend"``."""
        with torch.no_grad():
            z0 = self.latents.encode(hr, sample=generator is None)
            z_c = self.latents.encode(self.condition_image(lr, frontend))
        feats = self.unet.encode((z0.shape[-2], z0.shape[-1]), z_c, depth, kernel)
        return self.process.loss(lambda z_t, t: self.unet.denoise(z_t, t, feats, z_c), self.to_process(z0, z_c), feats,
                                 weights, generator)

    # --- sampling -----------------------------------------------------------------------------------------------
    def color_corrected(self, sr: Tensor, lr: Tensor, frontend: Tensor | None, mode: ColorFix) -> Tensor:
        """``sr`` colour-corrected (``mode``: a ``SamplingConfig.color_fix``) from the condition image."""
        if mode == "none":
            return sr
        return apply_color_fix(sr, self.condition_image(lr, frontend), mode).clamp(0, 1)

    @torch.no_grad()
    def super_resolve(
        self, lr: Tensor, depth: Tensor | None = None, kernel: Tensor | None = None,
        generator: torch.Generator | None = None, *, sampling: SamplingConfig | None = None,
        frontend: Tensor | None = None, guidance_kernel: Tensor | None = None, noise: Tensor | None = None,
        hooks: Sequence[StepHook] = (), progress: bool = False, compute: ComputeConfig | None = None,
        kernel_projected: bool = False, **overrides: Any,
    ) -> Tensor:
        """SR ``(B, 3, s·h, s·w)`` in [0, 1] of ``lr (B, 3, h, w)`` given D_T / K_T on the LR grid.

        ``sampling`` says how (default ``SamplingConfig()``); keyword ``overrides`` are its field names
        (``strength=0.5``) and replace only those. ``frontend`` is the front end's I_T ``(B, 3, s·h, s·w)`` (needed by
        ``image_condition="frontend"`` and ``start="frontend"``); ``guidance_kernel`` the kernel field of the guidance
        (default: ``kernel``). The initial noise is ``noise`` (latent-shaped) or drawn from ``generator`` (a CPU
        generator, default seeded with ``sampling.seed``: the same noise on every device). ``sampling.tile`` > 0
        switches on step-fused tiling for images larger than a tile; ``compute`` lays the work out (tiles per UNet
        call, the feature cache, autocast) without changing the result beyond float round-off. ``kernel_projected``:
        ``kernel`` is the kernel encoder's projection of K_T (``unet.kernel_projection()``), e.g. kept by
        ``SVKR.coded``; ``guidance_kernel`` may then be a function of a ``Tile`` giving K_T on it.
        """
        job = self.prepare(lr, depth, kernel, sampling=sampling, frontend=frontend, guidance_kernel=guidance_kernel,
                           kernel_projected=kernel_projected, **overrides)
        z = self.sample_latent(job, generator, noise=noise, hooks=hooks, progress=progress, compute=compute)
        return torch.cat([band for _, band in decode_bands(self, job, z)], dim=-2)

    def prepare(self, lr: Tensor, depth: Tensor | None = None, kernel: Tensor | None = None, *,
                sampling: SamplingConfig | None = None, frontend: Tensor | None = None,
                guidance_kernel: Any = None, kernel_projected: bool = False, **overrides: Any) -> SRJob:
        """What sampling ``lr`` reads, from whole-image tensors (the arguments of :meth:`super_resolve`)."""
        cfg = self.config
        sampling = (sampling or self.default_sampling).replace(**overrides)
        s, q = self.scale, self.lr_multiple
        gk = guidance_kernel if guidance_kernel is not None else None if kernel_projected else kernel
        if sampling.guidance > 0 and gk is None:
            raise ValueError("kernel-aware guidance (sampling guidance > 0) needs a kernel field (guidance_kernel=)")
        if frontend is not None or self.needs(sampling)["frontend"]:
            frontend = pad_reflect(self._check_frontend(lr, frontend, f"start {sampling.start!r} / image_condition "
                                                        f"{cfg.image_condition!r}"), q * s)[0]
        lr_p, _ = pad_reflect(lr, q)
        grid = TileGrid(lr_p.shape[-2], lr_p.shape[-1], sampling.tile, sampling.overlap, q)
        cond = self.condition_image(lr_p, frontend)
        z_c = self.encode_image(cond, grid)
        start = None
        if sampling.strength < 1.0:
            if sampling.start == "frontend":
                start = z_c if cfg.image_condition == "frontend" else self.encode_image(frontend, grid)
            else:
                start = z_c if cfg.image_condition == "bicubic" else self.encode_image(
                    F.interpolate(lr_p, scale_factor=s, mode="bicubic", align_corners=False).clamp(0, 1), grid)
            start = self.to_process(start, z_c)
        inputs = TileInputs(z_c, pad_reflect(depth, q)[0] if depth is not None else None,
                            pad_reflect(kernel, q)[0] if kernel is not None else None, kernel_projected)
        if sampling.guidance > 0 and isinstance(gk, Tensor):
            gk = pad_reflect(gk, q)[0]
        return SRJob(sampling, lr_p, (lr.shape[-2], lr.shape[-1]), grid, inputs, start=start, condition=cond,
                     guidance_kernel=gk if sampling.guidance > 0 else None)

    def banded_job(self, lr: Tensor, size: tuple[int, int], sampling: SamplingConfig, frontend: Tensor | None,
                   depth: Tensor | None, kernel: Tensor | None, kernel_projected: bool = True) -> SRJob:
        """A job for a pointwise latent that holds no HR-sized image: ``lr`` padded, ``frontend`` the latent of I_T
        (written tile by tile by ``SVKR.coded``), D_T and the kernel condition on the LR grid. The bicubic image
        (condition, start or colour reference) is made row band by row band from the LR (a 2 px halo: exact)."""
        cfg, s, f = self.config, self.scale, self.latents.factor
        grid = TileGrid(lr.shape[-2], lr.shape[-1], sampling.tile, sampling.overlap, self.lr_multiple)

        def bicubic(a: int, b: int) -> Tensor:  # HR rows [a, b) of bicubic↑LR
            la, lb = max(0, a // s - 2), min(lr.shape[-2], -(-b // s) + 2)
            up = F.interpolate(lr[..., la:lb, :], scale_factor=s, mode="bicubic", align_corners=False).clamp(0, 1)
            return up[..., a - la * s : b - la * s, :]

        def bicubic_latent(a: int, b: int) -> Tensor:
            return self.latents.encode(bicubic(a * f, b * f))

        if cfg.image_condition == "frontend":
            if frontend is None:
                raise ValueError("image_condition 'frontend' needs the latent of I_T (frontend=)")
            z_c = frontend
        else:
            z_c = torch.empty(frontend.shape if frontend is not None else (lr.shape[0], self.latents.channels,
                              round(lr.shape[-2] * self.latent_factor), round(lr.shape[-1] * self.latent_factor)),
                              device=lr.device)
            for a, b in row_bands(z_c.shape[-2], 64):
                z_c[..., a:b, :] = bicubic_latent(a, b)
        start = None
        if sampling.strength < 1.0:
            own = (sampling.start == "frontend") == (cfg.image_condition == "frontend")
            if sampling.start == "frontend" and frontend is None:
                raise ValueError("start 'frontend' needs the latent of I_T (frontend=)")

            def start(a: int, b: int) -> Tensor:  # float16-stored latents widened: the step runs in float32
                z_s = z_c[..., a:b, :] if own else frontend[..., a:b, :] if sampling.start == "frontend" \
                    else bicubic_latent(a, b)
                return self.to_process(widened(z_s), widened(z_c[..., a:b, :]))

        def condition(a: int, b: int) -> Tensor:  # HR rows of the condition image (the colour fix's reference)
            if cfg.image_condition == "bicubic":
                return bicubic(a, b)
            la, lb = a // f, -(-b // f)
            return self.latents.decode(widened(z_c[..., la:lb, :])).clamp(0, 1)[..., a - la * f : b - la * f, :]

        return SRJob(sampling, lr, size, grid, TileInputs(z_c, depth, kernel, kernel_projected), start=start,
                     condition=condition)

    def banded(self, sampling: SamplingConfig, hooks: Sequence[StepHook] = ()) -> bool:
        """Whether a call samples band by band (an elementwise step on a pointwise latent, no hook that reads the
        whole latent), holding one latent-sized prediction band instead of whole-latent step buffers."""
        return sampling.sampler == "ddim" and sampling.guidance == 0 and not hooks and self.latents.pointwise

    @torch.no_grad()
    def sample_latent(self, job: SRJob, generator: torch.Generator | None = None, *, noise: Tensor | None = None,
                      hooks: Sequence[StepHook] = (), progress: bool = False,
                      compute: ComputeConfig | None = None) -> Tensor:
        """The final latent (in the process's space: decode with :func:`decode_bands`) of a prepared job."""
        sampling, z_c = job.sampling, job.inputs.z_c
        compute = compute or ComputeConfig()
        if generator is None:
            generator = torch.Generator().manual_seed(sampling.seed)
        denoiser = TileDenoiser(self.unet, job.grid, self.latent_factor, job.inputs, compute.tile_batch,
                                compute.feature_cache_mb * 2**20, compute.dtype(z_c.device), progress)
        all_hooks = list(hooks)
        if sampling.guidance > 0:
            offset = (z_c, self.config.residual_scale) if self.config.residual else None
            all_hooks.insert(0, KernelGuidance(self.latents.decode, job.lr, job.guidance_kernel, self.scale,
                                               sampling.guidance, job.grid, self.latent_factor, offset=offset))
        if not self.banded(sampling, all_hooks):
            if noise is None:
                noise = torch.randn(z_c.shape, generator=generator, dtype=torch.float32)
            start = job.start_latent()
            return self.process.sample(denoiser, noise.to(z_c.device, state_dtype(z_c)), sampling,
                                       start_latent=start, generator=generator, hooks=all_hooks)
        # stepped in place, stored in the condition latent's dtype (float16 under ComputeConfig.storage)
        z = noise_like(z_c, generator) if noise is None else noise.to(z_c.device, z_c.dtype, copy=True)
        del noise
        sched, timesteps = self.process.schedule(sampling, z.device)
        if sampling.strength < 1.0:
            t0 = timesteps[:1].repeat(z.shape[0])
            for a, b in row_bands(z.shape[-2], 64):
                z[..., a:b, :] = sched.add_noise(job.start_rows(a, b), widened(z[..., a:b, :]), t0)
        else:
            z.mul_(sched.init_noise_sigma)
        return denoiser.sample(sched, timesteps, z)

    def forward(self, lr: Tensor, depth: Tensor | None = None, kernel: Tensor | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        return self.super_resolve(lr, depth, kernel, generator)


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def _legacy_default(given: dict[str, Any]) -> SamplingConfig:
    """The call default from pre-0.4 constructor keywords (none: ``SamplingConfig()``)."""
    unknown = sorted(set(given) - set(_LEGACY_SAMPLING))
    if unknown:
        raise TypeError(f"LatentDiffusionSR got unexpected keyword arguments: {', '.join(unknown)}")
    if not given:
        return SamplingConfig()
    warnings.warn(f"LatentDiffusionSR({', '.join(given)}=...): sampling settings are arguments of super_resolve "
                  "(sampling=SamplingConfig(...)) since 0.4", DeprecationWarning, stacklevel=3)
    return SamplingConfig().replace(**renamed(given))
