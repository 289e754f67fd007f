"""Overlapping tiles of one image and their blending, at any grid (LR, latent, HR) of the same tiling.

A :class:`TileGrid` is laid out in LR pixels: tiles of side ``tile`` that overlap their neighbours by at least
``overlap`` and start at multiples of ``multiple`` (the model's LR size multiple, so every tile maps to whole latent
and HR pixels). ``Tile.window(f)`` is the tile's slice on a grid ``f`` times finer than the LR grid (``s/vae_factor``
for the latent, ``s`` for HR) and :meth:`TileGrid.weights` the tile's blending weights there: a separable linear ramp
over the overlaps (1 inside, full weight at image borders), normalised so the weights of all tiles sum to one at
every pixel. Blending per-tile maps with them therefore reproduces any map that does not depend on the tiling.

:class:`FusedDenoiser` is the step-fused tiling of MultiDiffusion / StableSR / DiffBIR: at every denoising step the
UNet outputs (ε̂, x̂0 or v̂) of the overlapping latent tiles are blended into one latent-sized map and the scheduler
steps once on the whole latent, so neighbouring tiles agree at every step instead of being sampled apart and stitched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

__all__ = ["FusedDenoiser", "Tile", "TileGrid", "blend_ramp", "tile_starts", "tiled_apply"]


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


def _scaled(v: int, f: float) -> int:
    out = v * f
    if abs(out - round(out)) > 1e-6:
        raise ValueError(f"tile offset {v} is not a whole number of pixels on a grid {f}x the LR grid: use tile "
                         "starts that are multiples of the model's LR size multiple")
    return round(out)


@dataclass(frozen=True)
class Tile:
    """One tile in LR pixels: origin ``(y0, x0)``, size ``(h, w)`` and its overlap with the neighbours before/after
    it along y and x (0 at an image border)."""

    y0: int
    x0: int
    h: int
    w: int
    ramps: tuple[int, int, int, int]  # (before_y, after_y, before_x, after_x)

    def window(self, f: float = 1) -> tuple[Any, slice, slice]:
        """Index of this tile on a grid ``f`` times finer than the LR grid (``x[tile.window(f)]``)."""
        y0, x0 = _scaled(self.y0, f), _scaled(self.x0, f)
        return (..., slice(y0, y0 + _scaled(self.h, f)), slice(x0, x0 + _scaled(self.w, f)))

    def ramp(self, f: float = 1) -> Tensor:
        """Un-normalised blending weights ``(h·f, w·f)``."""
        by, ay, bx, ax = (_scaled(r, f) for r in self.ramps)
        return blend_ramp(_scaled(self.h, f), by, ay)[:, None] * blend_ramp(_scaled(self.w, f), bx, ax)


class TileGrid:
    """Overlapping tiles covering an ``h × w`` LR image (see the module doc); ``tile >= max(h, w)``: one tile."""

    def __init__(self, h: int, w: int, tile: int, overlap: int, multiple: int = 1) -> None:
        if h % multiple or w % multiple:
            raise ValueError(f"image {h}x{w} is not a multiple of {multiple}: pad it first")
        if tile <= 0:
            tile = max(h, w)
        tile = max(multiple, tile // multiple * multiple)
        th, tw = min(tile, h), min(tile, w)
        ys, xs = tile_starts(h, th, overlap, multiple), tile_starts(w, tw, overlap, multiple)
        self.size = (h, w)
        self.tiles: list[Tile] = []
        for iy, y0 in enumerate(ys):
            for ix, x0 in enumerate(xs):
                # Ramps only where a neighbour overlaps: image borders keep full weight.
                ramps = (ys[iy - 1] + th - y0 if iy > 0 else 0, y0 + th - ys[iy + 1] if iy + 1 < len(ys) else 0,
                         xs[ix - 1] + tw - x0 if ix > 0 else 0, x0 + tw - xs[ix + 1] if ix + 1 < len(xs) else 0)
                self.tiles.append(Tile(y0, x0, th, tw, ramps))
        self._weights: dict[float, list[Tensor]] = {}

    def __len__(self) -> int:
        return len(self.tiles)

    def __iter__(self) -> Any:
        return iter(self.tiles)

    def weights(self, f: float = 1) -> list[Tensor]:
        """Per-tile weights on the grid ``f`` times finer than LR, normalised to sum to 1 at every pixel. Equal
        weights (every interior tile's) are one shared tensor: a few kB per distinct tile, not 4 B per pixel and tile."""
        if f not in self._weights:
            h, w = (_scaled(v, f) for v in self.size)
            total = torch.zeros(h, w)
            for t in self.tiles:
                total[t.window(f)[1:]] += t.ramp(f)
            last: dict[tuple[int, ...], Tensor] = {}  # the latest weights of each ramp layout
            out = []
            for t in self.tiles:
                wt = t.ramp(f) / total[t.window(f)[1:]]
                key = (*t.ramps, *wt.shape)
                if key in last and torch.equal(last[key], wt):
                    wt = last[key]
                last[key] = wt
                out.append(wt)
            self._weights[f] = out
        return self._weights[f]

    def blend(self, fn: Callable[[int, Tile], Tensor], f: float, out: Tensor | None = None,
              progress: bool = False, desc: str = "tiles") -> Tensor:
        """``Σ_i weight_i · fn(i, tile_i)`` on the grid ``f`` times finer than LR (accumulated into ``out``, else a
        new float32 map on the device and with the batch/channels of the first tile's output)."""
        weights = self.weights(f)
        bar = tqdm(total=len(self), desc=desc, leave=False, disable=not progress or len(self) == 1)
        for i, tile in enumerate(self.tiles):
            val = fn(i, tile)
            if out is None:
                h, w = (_scaled(v, f) for v in self.size)
                out = torch.zeros(*val.shape[:-2], h, w, device=val.device, dtype=torch.float32)
            out[tile.window(f)] += weights[i].to(out.device) * val.to(out.dtype)
            bar.update()
        bar.close()
        assert out is not None
        return out


class FusedDenoiser:
    """``denoise(z_t, t)`` over a whole latent from per-tile UNet outputs blended at every step (module doc).

    Args:
        grid: The tiling (LR pixels).
        factor: Latent pixels per LR pixel (``s / vae_factor``).
        denoise_tile: ``(z_tile, t, i) ->`` the UNet output (ε̂, x̂0 or v̂) for tile ``i`` (it closes over that
            tile's condition features).
        progress: Show a per-step tile bar.
    """

    def __init__(self, grid: TileGrid, factor: float, denoise_tile: Callable[[Tensor, Tensor, int], Tensor],
                 progress: bool = False) -> None:
        self.grid, self.factor, self.denoise_tile, self.progress = grid, factor, denoise_tile, progress

    def __call__(self, z_t: Tensor, t: Tensor) -> Tensor:
        if len(self.grid) == 1:  # exactly the untiled call
            return self.denoise_tile(z_t, t, 0)
        out = torch.zeros_like(z_t)
        return self.grid.blend(lambda i, tile: self.denoise_tile(z_t[tile.window(self.factor)], t, i), self.factor,
                               out=out, progress=self.progress, desc="tiles")


def tiled_apply(
    fn: Callable[[Tensor, tuple[int, int]], dict[str, Tensor]], lr: Tensor, scale: int, tile: int, overlap: int,
    multiple: int = 1, progress: bool = False,
) -> dict[str, Tensor]:
    """Run ``fn(lr_tile, (y0, x0))`` over overlapping tiles of ``lr (1, C, h, w)`` and blend its outputs.

    ``fn`` returns a dict of maps, each either on the LR grid (``(1, c, th, tw)``) or the HR grid
    (``(1, c, s·th, s·tw)``); the blended maps have the full LR / HR size (float32, CPU).
    """
    grid = TileGrid(lr.shape[-2], lr.shape[-1], tile, overlap, multiple)
    acc: dict[str, Tensor] = {}
    for i, t in enumerate(tqdm(grid.tiles, desc="tiles", leave=False, disable=not progress or len(grid) == 1)):
        out = fn(lr[t.window(1)], (t.y0, t.x0))
        for key, val in out.items():
            f = val.shape[-2] // t.h  # 1: LR-grid map, s: HR-grid map
            if key not in acc:
                acc[key] = torch.zeros(val.shape[0], val.shape[1], lr.shape[-2] * f, lr.shape[-1] * f)
            acc[key][t.window(f)] += grid.weights(f)[i] * val.detach().float().cpu()
    return acc
