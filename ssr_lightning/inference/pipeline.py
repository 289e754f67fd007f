"""SSRPipeline: LR → SVKR (D_T, K_T) → condition encoders → AMF latent diffusion (DDIM) → VAE decode → SR.

Tiled inference (docs/DESIGN.md §4): the padded LR image is cut into overlapping tiles (``tile`` and ``overlap`` in LR
pixels); each tile runs the **whole** chain (SVKR, encoders, sampling, decoding) and its SR output is blended into
the full canvas with a separable linear ramp over the overlaps (weights normalised by their sum, so they form a
partition of unity everywhere). Peak activation memory therefore depends on the tile size, not the image size;
only the output canvas (and an LR-grid latent noise map) grow with the image.

Consistency across tiles: the initial latent noise is one global map, seeded once; every tile cuts its own window
from it, so overlapping tiles start from identical noise there and DDIM (η=0) is deterministic, which keeps the
blended overlaps sharp. SVKR's depth is estimated per tile (a monocular estimator normalises each tile to [0, 1]);
the ramps hide the resulting small offsets.

With ``tile >= `` the (padded) image, the result is exactly the untiled one.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ssr_lightning.diffusion.model import LatentDiffusionSR, pad_reflect
from ssr_lightning.inference.checkpoints import (
    build_model,
    read_checkpoint,
    resolve_checkpoint,
)
from ssr_lightning.inference.svkr import SVKR, SVKRConfig
from ssr_lightning.visualize import kernel_spread

__all__ = ["SRResult", "SSRPipeline", "blend_ramp", "tile_starts", "tiled_apply"]

TileFn = Callable[[Tensor, tuple[int, int]], dict[str, Tensor]]


@dataclass
class SRResult:
    """One super-resolved image ``sr (1, 3, s·h, s·w)`` and, when the model uses them, SVKR's maps on the LR grid:
    ``depth (1, 1, h, w)`` in [0, 1] (0 = near) and ``kernel_var (1, 1, h, w)`` (per-pixel kernel variance, HR px²)."""

    sr: Tensor
    depth: Tensor | None = None
    kernel_var: Tensor | None = None


def tile_starts(size: int, tile: int, overlap: int, multiple: int = 1) -> list[int]:
    """Start offsets of tiles of side ``tile`` covering ``[0, size)`` with at least ``overlap`` shared pixels.

    ``size``, ``tile`` are multiples of ``multiple`` and so is every start; the last tile ends at ``size``.
    """
    if tile >= size:
        return [0]
    stride = max(multiple, (tile - overlap) // multiple * multiple)
    starts = list(range(0, size - tile, stride)) + [size - tile]
    return sorted(set(starts))


def blend_ramp(length: int, ramp_before: int, ramp_after: int) -> Tensor:
    """1-D weights: a linear rise over ``ramp_before`` samples, 1 in the middle, a fall over ``ramp_after``.

    Values stay > 0 (the ramp goes from ``1/(r+1)``), so every pixel has positive total weight.
    """
    w = torch.ones(length)
    if ramp_before > 0:
        w[:ramp_before] = torch.arange(1, ramp_before + 1, dtype=torch.float32) / (ramp_before + 1)
    if ramp_after > 0:
        w[length - ramp_after :] = torch.minimum(
            w[length - ramp_after :], torch.arange(ramp_after, 0, -1, dtype=torch.float32) / (ramp_after + 1)
        )
    return w


def tiled_apply(
    fn: TileFn, lr: Tensor, scale: int, tile: int, overlap: int, multiple: int = 1, progress: bool = False,
) -> dict[str, Tensor]:
    """Run ``fn(lr_tile, (y0, x0))`` over overlapping tiles of ``lr (1, C, h, w)`` and blend its outputs.

    ``fn`` returns a dict of maps, each either on the LR grid (``(1, c, th, tw)``) or the HR grid
    (``(1, c, s·th, s·tw)``); the blended maps have the full LR / HR size. ``h``, ``w`` and ``tile`` must be
    multiples of ``multiple``; ``tile`` is clipped to the image.
    """
    _, _, h, w = lr.shape
    if h % multiple or w % multiple:
        raise ValueError(f"image {h}x{w} is not a multiple of {multiple}: pad it first")
    tile = max(multiple, tile // multiple * multiple)
    th, tw = min(tile, h), min(tile, w)
    ys, xs = tile_starts(h, th, overlap, multiple), tile_starts(w, tw, overlap, multiple)
    acc: dict[str, Tensor] = {}
    wsum: dict[int, Tensor] = {}
    bar = tqdm(total=len(ys) * len(xs), desc="tiles", leave=False, disable=not progress or len(ys) * len(xs) == 1)
    for iy, y0 in enumerate(ys):
        for ix, x0 in enumerate(xs):
            out = fn(lr[..., y0 : y0 + th, x0 : x0 + tw], (y0, x0))
            # Ramps only where a neighbour overlaps: image borders keep full weight.
            oy_b = ys[iy - 1] + th - y0 if iy > 0 else 0
            oy_a = y0 + th - ys[iy + 1] if iy + 1 < len(ys) else 0
            ox_b = xs[ix - 1] + tw - x0 if ix > 0 else 0
            ox_a = x0 + tw - xs[ix + 1] if ix + 1 < len(xs) else 0
            weights: dict[int, tuple[Tensor, tuple[Any, ...]]] = {}
            for key, val in out.items():
                f = val.shape[-2] // th  # 1: LR-grid map, s: HR-grid map
                if f not in weights:
                    ramp = blend_ramp(th * f, oy_b * f, oy_a * f)[:, None] * blend_ramp(tw * f, ox_b * f, ox_a * f)
                    weights[f] = (ramp, (..., slice(y0 * f, (y0 + th) * f), slice(x0 * f, (x0 + tw) * f)))
                    if f not in wsum:
                        wsum[f] = torch.zeros(1, 1, h * f, w * f)
                    wsum[f][weights[f][1]] += ramp
                if key not in acc:
                    acc[key] = torch.zeros(val.shape[0], val.shape[1], h * f, w * f, dtype=torch.float32)
                ramp, sl = weights[f]
                acc[key][sl] += ramp * val.detach().float().cpu()
            bar.update()
    bar.close()
    return {k: v / wsum[v.shape[-2] // h] for k, v in acc.items()}


class SSRPipeline:
    """The full SSR inference chain over one LR image (see the module doc); no Lightning involved.

    Args:
        model: A ``LatentDiffusionSR`` (from :func:`load_model`, EMA weights applied).
        svkr: An ``SVKR`` giving D_T and K_T; required when the model uses the depth or kernel modality.
        tile: Tile side in LR pixels (rounded down to the model's size multiple); 0 = no tiling.
        overlap: Overlap between neighbouring tiles in LR pixels.
        num_inference_steps: Sampling steps (default: the model's).
        seed: Seed of the global latent noise map.
        device: Where the networks run.
        progress: Show a per-tile progress bar.
        strength: Sampling strength (1 = from pure noise; < 1 LR-initialised); default: the model's.
    """

    def __init__(
        self, model: LatentDiffusionSR, svkr: SVKR | None = None, tile: int = 64, overlap: int = 16,
        num_inference_steps: int | None = None, seed: int = 0, device: str | torch.device = "cpu",
        progress: bool = False, strength: float | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        if any(model.uses.values()) and svkr is None:
            raise ValueError("this model conditions on depth/kernel maps: give an SVKR (KE, NBSR and DE checkpoints)")
        self.svkr = svkr.eval().to(self.device) if svkr is not None else None
        self.tile, self.overlap, self.seed, self.progress = tile, overlap, seed, progress
        self.steps, self.strength = num_inference_steps, strength
        self.scale = int(model.scale)
        self.multiple = model.lr_multiple

    @classmethod
    def from_checkpoint(
        cls, ckpt: str | os.PathLike[str] | None = None, svkr: SVKRConfig | None = None,
        device: str | torch.device = "cpu", **kw: Any,
    ) -> SSRPipeline:
        """Load the diffusion checkpoint (EMA weights; default: the newest runs/ssrdiffusion best.ckpt) and, if it
        needs maps, SVKR. SVKR checkpoints not given in ``svkr`` default to the ones the model was trained with
        (``conditions.source=svkr``), else to the newest runs of each stage."""
        data = read_checkpoint(resolve_checkpoint(ckpt, "ssrdiffusion"), "ssrdiffusion")
        model = build_model(data).eval().requires_grad_(False)
        stage_svkr = None
        if any(model.uses.values()):
            trained = data["ssr"].get("svkr") or {}
            trained_depth = trained.get("depth") if trained.get("depth") not in (None, "gt") else "learned"
            cfg = svkr or SVKRConfig(depth=trained_depth)
            cfg = dataclasses.replace(cfg, dkenet_ckpt=cfg.dkenet_ckpt or trained.get("dkenet_ckpt"),
                                      nbsr_ckpt=cfg.nbsr_ckpt or trained.get("nbsr_ckpt"),
                                      depth_ckpt=cfg.depth_ckpt or trained.get("depth_ckpt"))
            stage_svkr = SVKR.from_config(cfg)
        return cls(model, stage_svkr, device=device, **kw)

    @torch.no_grad()
    def __call__(self, lr: Tensor) -> SRResult:
        """Super-resolve ``lr (1, 3, h, w)`` in [0, 1] (any size: reflect-padded, the output cropped back)."""
        if lr.dim() != 4 or lr.shape[:2] != (1, 3):
            raise ValueError(f"SSRPipeline expects one RGB image (1, 3, h, w), got {tuple(lr.shape)}")
        h, w = lr.shape[-2:]
        s, m = self.scale, self.model
        lr_p, _ = pad_reflect(lr.float(), self.multiple)
        hp, wp = lr_p.shape[-2:]
        f = s / m.latents.factor  # latent pixels per LR pixel
        c = m.latents.channels
        gen = torch.Generator().manual_seed(self.seed)
        noise = torch.randn((1, c, int(hp * f), int(wp * f)), generator=gen)

        def run_tile(tile_lr: Tensor, origin: tuple[int, int]) -> dict[str, Tensor]:
            y0, x0 = origin
            th, tw = tile_lr.shape[-2:]
            tile_lr = tile_lr.to(self.device)
            depth = kernel = None
            out: dict[str, Tensor] = {}
            if self.svkr is not None:
                depth, kernel, _ = self.svkr(tile_lr).final
                out["depth"] = depth
                out["kernel_var"] = kernel_spread(kernel).pow(2)
            tile_noise = noise[..., int(y0 * f) : int((y0 + th) * f), int(x0 * f) : int((x0 + tw) * f)]
            out["sr"] = m.super_resolve(
                tile_lr, depth if m.uses["depth"] else None, kernel if m.uses["kernel"] else None,
                num_inference_steps=self.steps, noise=tile_noise.to(self.device), strength=self.strength,
            )
            return out

        tile = self.tile if self.tile > 0 else max(hp, wp)
        maps = tiled_apply(run_tile, lr_p, s, tile, self.overlap, self.multiple, self.progress)
        return SRResult(
            sr=maps["sr"][..., : s * h, : s * w].clamp(0, 1),
            depth=maps["depth"][..., :h, :w] if "depth" in maps else None,
            kernel_var=maps["kernel_var"][..., :h, :w] if "kernel_var" in maps else None,
        )
