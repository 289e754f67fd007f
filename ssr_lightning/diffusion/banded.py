"""Step-fused tiled denoising in row bands: one latent, a one-band accumulator, batched tiles, bounded features.

MultiDiffusion fuses the tiles' UNet outputs into one latent-sized prediction at every step and steps the scheduler
once on it (``tiling.FusedDenoiser``). The fused prediction of a latent row is final as soon as no later tile covers
it, and DDIM's step is elementwise, so with tiles in raster order :class:`TileDenoiser` steps each band of rows as
soon as its last tile row is done and writes it back into the latent in place: those rows are read by no later tile
of this step. What stays latent-sized is the latent itself and the condition latent; the accumulator is one band
(a tile's height). The result is bit-identical to stepping the whole blended prediction (same per-tile outputs, same
accumulation order, the same elementwise step).

Tiles go through the UNet ``tile_batch`` at a time (all tiles have one size). Their condition features (which take
no timestep) are kept across steps up to ``cache_bytes`` and recomputed at every step beyond it: cached, they cost
per LR pixel about (lr + depth + kernel features) × the tiles' overlap factor, ~1 kB at 64/16 (or 32/8) tiles for the
tiny UNet.

DDPM (fresh noise per step over the whole latent) and step hooks (guidance reads the whole x̂0) use
:meth:`TileDenoiser.__call__`, the whole fused prediction, through ``GaussianDiffusion.sample``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ssr_lightning.diffusion.tiling import TileGrid

__all__ = ["TileDenoiser", "TileInputs", "autocast", "feature_bytes", "noise_like", "state_dtype", "widened"]


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """``torch.autocast`` on ``device`` with ``dtype``, or nothing for None (full precision)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


@dataclass
class TileInputs:
    """Whole-image maps the tiles read (each is sliced per tile): the condition latent ``z_c (B, C, h·f, w·f)``
    (``concat_lr`` and the LR encoder), D_T ``(B, 1, h, w)`` and the kernel condition on the LR grid: K_T ``(B, k², h,
    w)`` or, with ``kernel_projected``, the kernel encoder's projection of it (``SSRUNet.kernel_projection``). A map
    may be stored as float16 (``ComputeConfig.storage``): its tile slices are widened to float32 when read."""

    z_c: Tensor
    depth: Tensor | None = None
    kernel: Tensor | None = None
    kernel_projected: bool = False


def widened(x: Tensor) -> Tensor:
    """``x`` as float32 if it is stored as float16 (``ComputeConfig.storage``), else itself: maps are stored narrow
    and computed with wide."""
    return x.float() if x.dtype == torch.float16 else x


def state_dtype(z_c: Tensor) -> torch.dtype:
    """The dtype of a whole-latent sampler's state for a job whose condition latent is ``z_c``: float32 for a float16
    one (it steps the whole latent in its own dtype). The banded sampler stores its latent in ``z_c``'s dtype and
    steps each band in float32 (:meth:`TileDenoiser.sample`)."""
    return torch.float32 if z_c.dtype == torch.float16 else z_c.dtype


def noise_like(z_c: Tensor, generator: torch.Generator) -> Tensor:
    """Standard normal noise of ``z_c``'s shape, stored in ``z_c``'s dtype, equal (before that rounding) to
    ``torch.randn(z_c.shape, generator=generator)``: drawn one ``(h, w)`` slab at a time where a slab is a multiple of
    16 values (the CPU generator then draws the same sequence; tests/test_pipeline_bounded.py checks it), so a float16
    latent never holds a float32 copy of itself."""
    h, w = z_c.shape[-2:]
    if z_c.dtype == torch.float32 or (h * w) % 16:
        return torch.randn(z_c.shape, generator=generator, dtype=torch.float32).to(z_c.device, z_c.dtype)
    out = torch.empty(z_c.shape, dtype=z_c.dtype, device=z_c.device)
    flat = out.view(-1, h, w)
    for i in range(flat.shape[0]):
        flat[i] = torch.randn((h, w), generator=generator, dtype=torch.float32)
    return out


def feature_bytes(feats: dict[str, list[Tensor]]) -> int:
    return sum(f.numel() * f.element_size() for maps in feats.values() for f in maps)


class TileDenoiser:
    """The fused UNet prediction over a :class:`TileGrid` (module doc).

    Args:
        unet: An ``SSRUNet``.
        grid: The tiling (LR px).
        factor: Latent px per LR px.
        inputs: What the tiles read.
        tile_batch: Tiles per UNet call.
        cache_bytes: Condition features kept across steps (the first tiles' in raster order), in bytes.
        dtype: Autocast dtype of the UNet and encoders (None: float32).
        progress: A tile bar per step.
    """

    def __init__(self, unet: Any, grid: TileGrid, factor: float, inputs: TileInputs, tile_batch: int = 8,
                 cache_bytes: int = 0, dtype: torch.dtype | None = None, progress: bool = False) -> None:
        self.unet, self.grid, self.f, self.inputs = unet, grid, factor, inputs
        self.dtype, self.progress = dtype, progress
        self.cache: dict[tuple[int, ...], dict[str, list[Tensor]]] = {}
        self.cache_left = cache_bytes
        rows: dict[int, list[int]] = {}
        for i, tile in enumerate(grid.tiles):
            rows.setdefault(tile.y0, []).append(i)
        # tiles of a row, tile_batch at a time: the same batches at every step (the cache's keys)
        self.rows = [[tuple(idx[k : k + tile_batch]) for k in range(0, len(idx), tile_batch)] for idx in rows.values()]
        self.weights = grid.weights(factor)

    # --- one batch of tiles -----------------------------------------------------------------------------------
    def _stack(self, x: Tensor, idx: tuple[int, ...], f: float) -> Tensor:
        return widened(torch.cat([x[self.grid.tiles[i].window(f)] for i in idx], dim=0))

    def features(self, idx: tuple[int, ...]) -> dict[str, list[Tensor]]:
        """The condition features of tiles ``idx``, batched (kept while the budget allows)."""
        if idx in self.cache:
            return self.cache[idx]
        inp = self.inputs
        zc = self._stack(inp.z_c, idx, self.f)
        depth = self._stack(inp.depth, idx, 1) if inp.depth is not None else None
        kernel = self._stack(inp.kernel, idx, 1) if inp.kernel is not None else None
        with autocast(zc.device, self.dtype):
            feats = self.unet.encode((zc.shape[-2], zc.shape[-1]), zc, depth, kernel, inp.kernel_projected)
        size = feature_bytes(feats)
        if size <= self.cache_left:
            self.cache[idx] = feats
            self.cache_left -= size
        return feats

    def outputs(self, z: Tensor, t: Tensor, idx: tuple[int, ...], sched: Any = None) -> list[Tensor]:
        """The UNet outputs (ε̂, x̂0 or v̂) of tiles ``idx`` on latent ``z``: one float32 tensor per tile."""
        zt = self._stack(z, idx, self.f)
        if sched is not None:
            zt = sched.scale_model_input(zt, t)
        zc = self._stack(self.inputs.z_c, idx, self.f)
        feats = self.features(idx)
        with autocast(zt.device, self.dtype):
            out = self.unet.denoise(zt, t, feats, zc)
        return list(out.float().chunk(len(idx), dim=0))

    def _blend(self, acc: Tensor, y0: int, z: Tensor, t: Tensor, batches: list[tuple[int, ...]], bar: Any,
               sched: Any = None) -> None:
        """Add the weighted outputs of ``batches`` into ``acc``, whose first row is latent row ``y0``."""
        for idx in batches:
            for i, val in zip(idx, self.outputs(z, t, idx, sched), strict=True):
                _, ys, xs = self.grid.tiles[i].window(self.f)
                rows = slice(ys.start - y0, ys.stop - y0)
                acc[..., rows, xs] += self.weights[i].to(acc.device) * val.to(acc.dtype)
            bar.update(len(idx))

    def _bar(self, step: str = "tiles") -> Any:
        return tqdm(total=len(self.grid), desc=step, leave=False, disable=not self.progress or len(self.grid) == 1)

    # --- the whole fused prediction (GaussianDiffusion.sample's denoiser) ---------------------------------------
    def __call__(self, z_t: Tensor, t: Tensor) -> Tensor:
        out = torch.zeros_like(z_t, dtype=torch.float32)
        with self._bar() as bar:
            for batches in self.rows:
                self._blend(out, 0, z_t, t, batches, bar)
        return out.to(z_t.dtype)  # blended in float32, stepped in the latent's dtype

    # --- banded DDIM ----------------------------------------------------------------------------------------------
    def sample(self, sched: Any, timesteps: Tensor, z: Tensor,
               on_step: Callable[[int], None] | None = None) -> Tensor:
        """Run ``timesteps`` of ``sched`` (an elementwise step: DDIM) on ``z`` in place, band by band; a float16 ``z``
        (``ComputeConfig.storage``) is stepped in float32 and stored back rounded."""
        height = z.shape[-2]
        band = self.grid.tiles[0].window(self.f)[1]
        band_h = band.stop - band.start
        starts = [self.grid.tiles[b[0][0]].window(self.f)[1].start for b in self.rows]
        for k, t in enumerate(timesteps):
            acc = torch.zeros(*z.shape[:-2], band_h, z.shape[-1], device=z.device, dtype=torch.float32)
            top = 0
            with self._bar() as bar:
                for r, batches in enumerate(self.rows):
                    assert starts[r] == top
                    self._blend(acc, top, z, t, batches, bar, sched)
                    nxt = starts[r + 1] if r + 1 < len(self.rows) else height
                    n = nxt - top
                    band_z = widened(z[..., top:nxt, :])
                    z[..., top:nxt, :] = sched.step(acc[..., :n, :].to(band_z.dtype), t, band_z).prev_sample
                    acc = torch.cat([acc[..., n:, :], torch.zeros_like(acc[..., :n, :])], dim=-2)
                    top = nxt
            if on_step is not None:
                on_step(k)
        return z


def row_bands(height: int, rows: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` bands of ``rows`` rows covering ``[0, height)``."""
    for a in range(0, height, rows):
        yield a, min(height, a + rows)
