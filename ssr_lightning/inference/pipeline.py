"""SSRPipeline: LR → SVKR (D_T, K_T, I_T) → condition encoders → AMF latent diffusion (DDIM) → decode → SR.

Sampling settings are arguments of the call (``SamplingConfig``); :meth:`SSRPipeline.from_checkpoint` takes the
model's own (its checkpoint's ``ssr.sampling``: how it was validated) and the SVKR settings its stage named
(``ssr.svkr``: T, γ, depth kind, checkpoints), and replaces only the fields a caller gives.

Large images (docs/DESIGN.md §4): SVKR runs **once on the whole** (padded) LR image, since depth estimation needs
the whole view; the diffusion then runs with step-fused tiles (``SamplingConfig.tile``/``overlap``, LR pixels): the
condition features are encoded per overlapping tile and at every denoising step the tiles' UNet outputs (ε̂, x̂0 or
v̂, by the model's ``prediction_type``) are blended with linear ramps into one latent-sized map, then one scheduler
step runs on the whole latent (MultiDiffusion / StableSR). A VAE decodes tile-wise with the same blending;
space-to-depth decodes pointwise. The initial noise is one global map seeded once. With ``tile >=`` the (padded) image the result
is exactly the untiled one.

Memory: UNet activations follow the tile size; SVKR's per-pixel statistics, the latents and the per-tile condition
features grow with the image; the read-only condition maps are float16 above ``ComputeConfig.storage``'s threshold
(``ssr sr``'s estimate of the peak and what it consists of: ``ssr_lightning/cli/sr_inputs.py``).

Sizes: :func:`checkpoint_geometry` reads what a model needs of tiles and images (size multiple, smallest tile)
from a checkpoint's config without building its weights, so callers can check options before loading anything.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ssr_lightning.diffusion.config import ComputeConfig, SamplingConfig
from ssr_lightning.diffusion.decode import SRJob, decode_bands
from ssr_lightning.diffusion.model import LatentDiffusionSR, pad_reflect
from ssr_lightning.diffusion.tiling import blend_ramp, tile_starts, tiled_apply
from ssr_lightning.inference.checkpoints import (
    build_model,
    model_class,
    read_checkpoint,
    resolve_checkpoint,
)
from ssr_lightning.inference.svkr import SVKR, SVKRConfig
from ssr_lightning.inference.tiled_stages import Window
from ssr_lightning.visualize import kernel_spread

__all__ = ["ModelGeometry", "SRResult", "SSRPipeline", "blend_ramp", "checkpoint_geometry", "model_sampling",
           "model_svkr", "tile_starts", "tiled_apply"]


@dataclass(frozen=True)
class ModelGeometry:
    """What a diffusion model needs of its LR inputs: sides are padded to ``multiple``; a tile (or a padded image)
    needs ``min_tile`` LR px per side, so that the UNet's deepest level keeps 2 latent px (GroupNorm needs > 1)."""

    scale: int
    multiple: int
    min_tile: int

    @classmethod
    def of(cls, model: LatentDiffusionSR) -> ModelGeometry:
        f, u, s, m = model.latents.factor, model.unet.size_multiple, int(model.scale), model.lr_multiple
        tile = m
        while tile * s < 2 * f * u:  # latent side tile·s/f over the UNet's downsampling u: at least 2
            tile += m
        return cls(s, m, tile)

    def tile(self, tile: int) -> int:
        """The tile side ``TileGrid`` uses for ``--tile tile`` (> 0): rounded down to the size multiple."""
        return max(self.multiple, tile // self.multiple * self.multiple)

    @property
    def min_side(self) -> int:
        """The smallest LR side that pads to ``min_tile``."""
        return self.min_tile - self.multiple + 1


def checkpoint_geometry(data: dict[str, Any]) -> ModelGeometry | None:
    """The geometry of a read diffusion checkpoint, from its ``ssr.model_config`` on the meta device (no weights);
    None for a ``pretrained_path`` backbone, whose sizes live in that folder (use ``ModelGeometry.of`` after
    loading)."""
    meta = data["ssr"]
    config = dict(meta["model_config"])
    if config.get("pretrained_path"):
        return None
    with torch.device("meta"):
        return ModelGeometry.of(model_class(meta["model_class"]).from_config(config))


class _StageBar:
    """A progress bar over SVKR's stage calls (DE, KE, NBSR per iteration), labelled with the one running."""

    def __init__(self, iterations: int) -> None:
        self.iterations, self.started = iterations, False
        self.bar = tqdm(total=3 * (iterations + 1), desc="SVKR", unit="stage", leave=False)

    def __call__(self, stage: str, t: int) -> None:
        if self.started:
            self.bar.update(1)
        self.started = True
        self.bar.set_description(f"SVKR {stage} t={t}/{self.iterations}")

    def close(self) -> None:
        if self.started:
            self.bar.update(1)
        self.bar.close()


BandSink = Callable[[int, Tensor], None]  # (first row, SR rows (1, 3, n, s·w)), top to bottom


@dataclass
class SRResult:
    """One super-resolved image ``sr (1, 3, s·h, s·w)`` and, when SVKR ran, its maps on the LR grid:
    ``depth (1, 1, h, w)`` in [0, 1] (0 = near) and ``kernel_var (1, 1, h, w)`` (per-pixel kernel variance, HR px²)."""

    sr: Tensor | None
    depth: Tensor | None = None
    kernel_var: Tensor | None = None


class SSRPipeline:
    """The full SSR inference chain over one LR image (see the module doc); no Lightning involved.

    Sampling is an argument of the call (diffusers style): ``pipe(lr, sampling=SamplingConfig(...))``; the pipeline's
    ``sampling`` is what a call without one uses.

    Args:
        model: A ``LatentDiffusionSR`` (from :func:`load_model`, EMA weights applied).
        svkr: An ``SVKR`` giving D_T, K_T and I_T; required when the model (with the sampling used) needs any of them.
        sampling: How images are sampled (steps, strength, start, guidance, colour fix, seed, tiles); default
            ``SamplingConfig()``. :meth:`from_checkpoint` gives the model's own.
        device: Where the networks run.
        progress: Show progress bars: SVKR's stages (DE, KE, NBSR per iteration) and the tiles of every step.
    """

    def __init__(
        self, model: LatentDiffusionSR, svkr: SVKR | None = None, sampling: SamplingConfig | None = None,
        device: str | torch.device = "cpu", progress: bool = False, compute: ComputeConfig | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.sampling = sampling or SamplingConfig()
        self.compute = compute or ComputeConfig()
        self.progress = progress
        self.svkr = svkr.eval().to(self.device) if svkr is not None else None
        self._require_svkr(self.sampling)
        self.scale = int(model.scale)
        self.multiple = model.lr_multiple
        self.geometry = ModelGeometry.of(model)

    def _require_svkr(self, sampling: SamplingConfig) -> dict[str, bool]:
        needs = self.model.needs(sampling)
        if any(needs.values()) and self.svkr is None:
            what = [k for k, v in needs.items() if v]
            raise ValueError(f"this model and sampling setting need SVKR's estimates ({', '.join(what)}): give an "
                             "SVKR (KE, NBSR and DE checkpoints)")
        return needs

    @classmethod
    def from_checkpoint(
        cls, ckpt: str | os.PathLike[str] | dict[str, Any] | None = None,
        svkr: SVKRConfig | Mapping[str, Any] | None = None, sampling: SamplingConfig | Mapping[str, Any] | None = None,
        device: str | torch.device = "cpu", progress: bool = False, compute: ComputeConfig | None = None,
    ) -> SSRPipeline:
        """Load the diffusion checkpoint (EMA weights; default: the newest runs/ssrdiffusion best.ckpt; or a
        checkpoint already read with ``read_checkpoint``) and, if it needs maps or I_T, SVKR.

        ``sampling`` and ``svkr`` default to the model's own (its checkpoint's ``ssr`` block: the sampling it was
        validated with, the SVKR settings its stage named: T, γ, depth kind, checkpoints). A mapping replaces only
        the fields it gives (None values are left out); a ``SamplingConfig`` / ``SVKRConfig`` replaces them all. SVKR
        checkpoints still left empty are the newest runs of each stage."""
        data = ckpt if isinstance(ckpt, dict) else read_checkpoint(resolve_checkpoint(ckpt, "ssrdiffusion"),
                                                                    "ssrdiffusion")
        model = build_model(data).eval().requires_grad_(False)
        own = model_sampling(data)
        chosen = sampling if isinstance(sampling, SamplingConfig) else own.replace(**dict(sampling or {}))
        stage_svkr = None
        if any(model.needs(chosen).values()):
            trained = model_svkr(data)
            cfg = svkr if isinstance(svkr, SVKRConfig) else dataclasses.replace(
                trained, **{k: v for k, v in dict(svkr or {}).items() if v is not None})
            stage_svkr = SVKR.from_config(cfg)
        return cls(model, stage_svkr, chosen, device=device, progress=progress, compute=compute)

    @torch.no_grad()
    def __call__(self, lr: Tensor, sampling: SamplingConfig | None = None, out: BandSink | None = None) -> SRResult:
        """Super-resolve ``lr (1, 3, h, w)`` in [0, 1] (any size: reflect-padded, the output cropped back) with
        ``sampling`` (default: the pipeline's). ``out(first_row, band)`` takes the SR image in row bands
        (``(1, 3, n, s·w)``, float32 on the CPU, top to bottom) instead of one tensor (``SRResult.sr`` is then
        None): with a space-to-depth model and DDIM without guidance nothing HR-sized is held (module doc)."""
        if lr.dim() != 4 or lr.shape[:2] != (1, 3):
            raise ValueError(f"SSRPipeline expects one RGB image (1, 3, h, w), got {tuple(lr.shape)}")
        sampling = sampling or self.sampling
        needs = self._require_svkr(sampling)
        h, w = lr.shape[-2:]
        lr_p = pad_reflect(lr.float(), self.multiple)[0].to(self.device)
        if self.svkr is not None and any(needs.values()) and not isinstance(self.svkr, SVKR):
            job, maps = self._job_fields(lr_p, sampling, needs)  # any module returning an SVKRResult
        else:
            job, maps = self._job(lr_p, sampling, needs, self.compute.storage_dtype(h * w))
        z = self.model.sample_latent(job, torch.Generator().manual_seed(sampling.seed), progress=self.progress,
                                     compute=self.compute)
        s = self.scale  # the job is the padded image: colour-fixed as a whole, then cropped
        bands = ((a, band[..., : s * h - a, : s * w].float().cpu()) for a, band in decode_bands(self.model, job, z)
                 if a < s * h)
        sr = None
        if out is None:
            sr = torch.cat([band for _, band in bands], dim=-2)
        else:
            for a, band in bands:
                out(a, band)
        return SRResult(sr=sr, **{k: v[..., :h, :w].float().cpu() if v is not None else None for k, v in maps.items()})

    def _svkr_bar(self) -> dict[str, Any]:
        return {"on_stage": _StageBar(self.svkr.iterations)} if self.progress and self.svkr is not None else {}

    def _job(self, lr_p: Tensor, sampling: SamplingConfig, needs: dict[str, bool],
             storage: torch.dtype = torch.float32) -> tuple[SRJob, dict[str, Tensor | None]]:
        """The job with SVKR in code space: I_T goes into the condition latent tile by tile, K_T reaches the kernel
        encoder as its projection, and nothing HR-sized is held for a pointwise latent sampled band by band.
        ``storage`` is the dtype of those two read-only maps (``ComputeConfig.storage``)."""
        m, f, dtype = self.model, self.model.latent_factor, self.compute.dtype(self.device)
        lat = (1, m.latents.channels, round(lr_p.shape[-2] * f), round(lr_p.shape[-1] * f))
        bounded = m.latents.pointwise and m.banded(sampling)
        frontend_latent = bounded and needs["frontend"]
        z_front = torch.empty(lat, device=self.device, dtype=storage) if frontend_latent else None
        coded = None
        if self.svkr is not None and any(needs.values()):
            proj = m.unet.kernel_projection() if needs["kernel"] else None

            def sink(win: Window, tile: Tensor) -> None:
                y0, y1, x0, x1 = win
                z_front[..., round(y0 * f) : round(y1 * f), round(x0 * f) : round(x1 * f)] = m.latents.encode(tile)

            bar = self._svkr_bar()
            try:
                coded = self.svkr.coded(lr_p, tile=self.compute.frontend_tile, align=math.lcm(2, self.multiple),
                                        dtype=dtype, probes={"kernel": proj} if proj is not None else None,
                                        probe_dtype=storage, image_sink=sink if frontend_latent else None, **bar)
            finally:
                if bar:
                    bar["on_stage"].close()
        depth = coded.final_depth if coded is not None and needs["depth"] else None
        kernel = coded.stats["kernel"] if coded is not None and needs["kernel"] else None
        maps = {"depth": coded.final_depth if coded is not None else None,
                "kernel_var": coded.kernel_var() if coded is not None else None}
        frontend = coded.final_image if coded is not None and needs["frontend"] else None
        guidance = None
        if coded is not None:
            coded.release(keep_rebuild=needs["guidance_kernel"])  # before the job allocates its latents
            if needs["guidance_kernel"]:
                guidance = lambda t: coded.kernel((t.y0, t.y0 + t.h, t.x0, t.x0 + t.w))  # noqa: E731
        if not bounded:  # a VAE, DDPM or guidance: whole-image tensors (I_T kept as one HR image)
            return m.prepare(lr_p, depth, kernel, sampling=sampling, frontend=frontend, guidance_kernel=guidance,
                             kernel_projected=kernel is not None), maps
        return m.banded_job(lr_p, tuple(lr_p.shape[-2:]), sampling, z_front, depth, kernel), maps

    def _job_fields(self, lr_p: Tensor, sampling: SamplingConfig,
                    needs: dict[str, bool]) -> tuple[SRJob, dict[str, Tensor | None]]:
        """The job from an SVKR module's whole fields (``forward(lr, keep_all=False)``: D_T, K_T, I_T)."""
        bar = self._svkr_bar()
        try:
            depth, kernel, frontend = self.svkr(lr_p, keep_all=False, **bar).final
        finally:
            if bar:
                bar["on_stage"].close()
        job = self.model.prepare(
            lr_p, depth if needs["depth"] else None, kernel if needs["kernel"] else None, sampling=sampling,
            frontend=frontend if needs["frontend"] else None,
            guidance_kernel=kernel if needs["guidance_kernel"] else None)
        return job, {"depth": depth, "kernel_var": _kernel_var(kernel)}


def model_sampling(data: dict[str, Any]) -> SamplingConfig:
    """The sampling a read diffusion checkpoint was validated with (its ``ssr.sampling``)."""
    return SamplingConfig.from_dict(data["ssr"].get("sampling"))


def model_svkr(data: dict[str, Any]) -> SVKRConfig:
    """The SVKR settings a read diffusion checkpoint's stage named (``ssr.svkr``: T, γ, depth kind, checkpoints).
    Ground-truth depth (an oracle of training) has no counterpart on a user's image: it becomes ``learned``."""
    trained = {k: v for k, v in (data["ssr"].get("svkr") or {}).items()
               if k in {f.name for f in dataclasses.fields(SVKRConfig)}}
    cfg = SVKRConfig(**trained)
    return dataclasses.replace(cfg, depth="learned") if cfg.depth == "gt" else cfg


def _kernel_var(kernel: Tensor, rows: int = 64) -> Tensor:
    """Per-pixel kernel variance, in row chunks: ``kernel_spread`` makes field-sized temporaries (441 channels)."""
    return torch.cat([kernel_spread(kernel[..., i : i + rows, :]).pow(2).float().cpu()
                      for i in range(0, kernel.shape[-2], rows)], dim=-2)
