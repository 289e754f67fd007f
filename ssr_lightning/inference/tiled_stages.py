"""KE (DKENet) and NBSR over overlapping tiles with exact results: the front end's memory follows the tile, not the image.

Every stage is fully convolutional on the LR grid, so a tile computed with a **halo** at least as wide as the
network's receptive field gives, inside its core, exactly the whole-image values (zero padding and resizes at the
tile's edge only reach the halo). The image is cut into core windows (:func:`core_windows`, a partition aligned to
``align`` LR px), each computed from its window grown by the halo (clipped at the image border, where the whole-image
run pads the same way). Halos come from the architecture (:func:`dkenet_halo`, :func:`nbsr_halo`: the receptive
field radius of every path through the network, plus a margin).

DKENet also reads image-level statistics, which a tile cannot see: the focal depth (``focal_plane``: a softmax over
all pixels of a sharpness score), the bottleneck mean (``global_context``) and the mean and std of the last features
(``global_kernel`` / ``thin_lens`` heads; the lens head also their means in soft depth bins) and, with
``depth_pool_bins``, the kernels pooled in depth bins. :class:`TiledKE` measures them over the whole image first, in
one pass per statistic over the tiles (a running log-sum-exp for the softmax, float64 sums for the means and variances), so each
tile's kernels are those of the whole-image run up to float round-off. The depth normalisation (``normalize_depth``)
runs on the whole one-channel depth map (cheap). NBSR's noise level is likewise measured on the whole LR image.

Both need even image sides when there is more than one tile (DKENet's stride-2 path then sees the same grid in every
tile); :class:`TiledKE` uses one tile otherwise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from ssr_lightning.networks.dkenet import DKENet
from ssr_lightning.networks.nbsr import KernelConditionedSR

__all__ = ["TiledKE", "Window", "autocast", "core_windows", "dkenet_halo", "nbsr_halo", "tiled_sr"]

Window = tuple[int, int, int, int]  # (y0, y1, x0, x1) on the LR grid, end exclusive
_MARGIN = 2  # LR px beyond the computed receptive field radius
CHUNK_PX = 16384  # LR px per chunk of the per-pixel heads (KE's 441-channel field, NBSR's HR upsampler)


def _even(n: int) -> int:
    return n + n % 2


def dkenet_halo(net: DKENet) -> int:
    """Receptive field radius (LR px) of DKENet's kernel logits, plus a margin; even.

    DABlock = SFT (two 3×3 convs on the condition too) + two MAConvs: radius 4 at its resolution (8 LR px at half
    resolution); a depth-branch ResBlock 2 (4); the stride-2 conv 1; the bilinear up + conv 3; head and tail 1."""
    n = int(net.config.blocks_per_stage)
    f1 = 1 + 4 * n
    f2 = f1 + 1 + 8 * n
    if net.depth_encoder is not None:  # the depth branch enters every DABlock through its SFT
        d1 = 1 + 2 * n
        d2 = d1 + 1 + 4 * n
        d3 = max(d2 + 3, d1) + 2 * n
        f1 = max(f1, d1 + 4 * n)
        f2 = max(f1 + 1 + 8 * n, d2 + 8 * n)
        f3 = max(max(f2 + 3, f1) + 4 * n, d3 + 4 * n)
    else:
        f3 = max(f2 + 3, f1) + 4 * n
    return _even(f3 + 1 + _MARGIN)


def nbsr_halo(net: KernelConditionedSR) -> int:
    """Receptive field radius (LR px) of NBSR's output, plus a margin: the condition net 2, every SFT-RRDB 17 (SFT 2 +
    three 5-conv dense blocks), conv_body 1, the upsampler ≤ 2, the bicubic residual 2."""
    blocks = len(net.net.blocks)
    return _even(max(2 + 17 * blocks + 1 + 2, 2) + _MARGIN)


def core_windows(h: int, w: int, tile: int, align: int = 2) -> list[Window]:
    """Core windows of side ``tile`` (rounded down to ``align``; 0 or larger than the image: one window) partitioning
    ``h × w`` in raster order."""
    if tile <= 0 or (tile >= h and tile >= w):
        return [(0, h, 0, w)]
    tile = max(align, tile // align * align)
    return [(y, min(y + tile, h), x, min(x + tile, w)) for y in range(0, h, tile) for x in range(0, w, tile)]


def grown(win: Window, halo: int, h: int, w: int, align: int = 1) -> tuple[Window, tuple[slice, slice]]:
    """The window grown by ``halo`` and out to multiples of ``align`` (clipped to the image), and where the core lies
    inside it."""
    y0, y1, x0, x1 = win
    lo = lambda v: max(0, (v - halo) // align * align)  # noqa: E731
    hi = lambda v, n: min(n, -(-(v + halo) // align) * align)  # noqa: E731
    g = (lo(y0), hi(y1, h), lo(x0), hi(x1, w))
    return g, (slice(y0 - g[0], y1 - g[0]), slice(x0 - g[2], x1 - g[2]))


def crop(x: Tensor, win: Window, f: int = 1) -> Tensor:
    """``x[..., y0·f:y1·f, x0·f:x1·f]``."""
    y0, y1, x0, x1 = win
    return x[..., y0 * f : y1 * f, x0 * f : x1 * f]


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """``torch.autocast`` on ``device`` with ``dtype``, or nothing for None (full precision)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


class TiledKE:
    """DKENet(LR, D) over core windows with a halo and whole-image statistics (see the module doc).

    Args:
        net: The kernel estimator.
        lr: ``(B, 3, h, w)``.
        depth: D on the LR grid ``(B, 1, h, w)`` (None without ``use_depth``).
        tile: Core tile side (LR px; 0: one tile).
        align: Core windows start at multiples of this (even).
        dtype: Autocast dtype of the convolutions (None: float32).
        stats: The image-level statistics of an earlier run with the same inputs (skips their passes).
    """

    def __init__(self, net: DKENet, lr: Tensor, depth: Tensor | None, tile: int, align: int = 2,
                 dtype: torch.dtype | None = None, stats: dict[str, Tensor | None] | None = None) -> None:
        self.net, self.lr, self.dtype = net, lr, dtype
        h, w = lr.shape[-2:]
        self.size = (h, w)
        if h % 2 or w % 2:  # the stride-2 path sees another grid in each tile: one tile is exact
            tile = 0
        self.windows = core_windows(h, w, tile, max(2, align))
        self.halo = dkenet_halo(net)
        self.depth = net.prepare_depth(lr, depth)
        self.f3: Tensor | None = None  # the whole image's last features, when a statistics pass computed them
        self.stats = stats if stats is not None else self._statistics()

    def _tile(self, win: Window, halo: int) -> tuple[Tensor, Tensor | None, tuple[slice, slice]]:
        g, core = grown(win, halo, *self.size, align=2)  # even sides: the stride-2 grid of the whole image
        return crop(self.lr, g), None if self.depth is None else crop(self.depth, g), core

    def _run(self, fn: Callable[..., Tensor], *args: Any, **kw: Any) -> Tensor:
        with autocast(self.lr.device, self.dtype):
            return fn(*args, **kw).float()

    def _statistics(self) -> dict[str, Tensor | None]:
        """focal depth, bottleneck mean and pooled last features of the whole image (the ones the net uses)."""
        net, one = self.net, len(self.windows) == 1
        stats: dict[str, Tensor | None] = {"focal": None, "context": None, "pooled": None, "binned": None,
                                          "depth_table": None}
        if net.focus_score is not None and self.depth is not None:
            if one:
                stats["focal"] = self._run(net.focal_depth, self.lr, self.depth)
            else:
                top = total = weighted = None
                for win in self.windows:
                    lr, depth, core = self._tile(win, 2 + _MARGIN)  # two 3×3 convs
                    s = self._run(net.focus_score, lr)[(..., *core)].flatten(1).double()
                    d = depth[(..., *core)][:, :1].flatten(1).double()
                    m = s.max(dim=1).values if top is None else torch.maximum(top, s.max(dim=1).values)
                    e = torch.exp(s - m[:, None])
                    shrink = 0.0 if top is None else torch.exp(top - m)
                    total = e.sum(1) + (0.0 if top is None else total * shrink)
                    weighted = (e * d).sum(1) + (0.0 if top is None else weighted * shrink)
                    top = m
                stats["focal"] = (weighted / total).float().view(-1, 1, 1, 1)
        if net.context is not None and not one:
            acc, count = None, 0
            for win in self.windows:
                lr, depth, core = self._tile(win, self.halo)
                f2 = self._run(net.bottleneck, lr, depth, stats["focal"])
                half = tuple(slice(c.start // 2, c.stop // 2) for c in core)
                part = f2[(..., *half)].double().sum(dim=(2, 3))
                acc = part if acc is None else acc + part
                count += (half[0].stop - half[0].start) * (half[1].stop - half[1].start)
            stats["context"] = (acc / count).float()
        if net.pools_features and not one:
            sums: list[Tensor] | None = None
            n = 0
            for win in self.windows:
                lr, depth, core = self._tile(win, self.halo)
                f3 = self._run(net.features, lr, depth, stats["focal"], stats["context"])[(..., *core)]
                if self.f3 is None:  # kept for the kernel pass: the trunk runs once more per tile, not twice
                    self.f3 = torch.empty(f3.shape[0], f3.shape[1], *self.size, device=f3.device)
                self.f3[..., win[0] : win[1], win[2] : win[3]] = f3
                f3 = f3.double()
                part = [f3.sum(dim=(2, 3)), f3.pow(2).sum(dim=(2, 3))]
                if net.bins_features and depth is not None:  # the thin-lens head's soft depth bins
                    part += list(net.depth_bin_sums(f3, depth[(..., *core)].double()))
                sums = part if sums is None else [a + b for a, b in zip(sums, part, strict=True)]
                n += f3.shape[-2] * f3.shape[-1]
            assert sums is not None
            mean = sums[0] / n
            std = (sums[1] / n - mean * mean).clamp_min(0).sqrt()
            stats["pooled"] = torch.cat([mean, std], dim=1).float()
            if len(sums) == 4:
                stats["binned"] = net.binned_mean(sums[2], sums[3]).float()
        if net.depth_pool is not None and self.depth is not None and not one:
            stats["depth_table"] = self._depth_table(stats)
        return stats

    def _depth_table(self, stats: dict[str, Tensor | None]) -> Tensor:
        """The whole image's depth-pooled kernels (``depth_pool_bins``): the pool's sums over every tile's core,
        after the image-level statistics its logits read."""
        pool, num, den = self.net.depth_pool, None, None
        assert pool is not None
        self.stats = stats  # _last_features reads the focal depth and context
        for win in self.windows:
            f3, depth, at = self._last_features(win)
            inputs = self._run(lambda f, d: pool.inputs(f, self.net.kernel_logits(
                f, d, stats["focal"], stats["pooled"], stats["binned"])), f3, depth)
            core = (..., slice(win[0] - at[0], win[1] - at[0]), slice(win[2] - at[2], win[3] - at[2]))
            n, d = pool.sums(inputs[core].double(), depth[core].double())
            num, den = (n, d) if num is None else (num + n, den + d)
        assert num is not None and den is not None
        return pool.table(num, den).float()

    def _last_features(self, win: Window) -> tuple[Tensor, Tensor | None, Window]:
        """``f3`` and the depth on a window containing ``win`` grown by at least 1 px (where the image allows), and
        that window: from the kept map, or the trunk on ``win`` grown by the halo (exact within halo − 1 px of it)."""
        if self.f3 is not None:
            g, _ = grown(win, 1, *self.size)
            return crop(self.f3, g), None if self.depth is None else crop(self.depth, g), g
        g, _ = grown(win, self.halo, *self.size, align=2)
        lr, depth = crop(self.lr, g), None if self.depth is None else crop(self.depth, g)
        return self._run(self.net.features, lr, depth, self.stats["focal"], self.stats["context"]), depth, g

    def _kernels(self, f3: Tensor, depth: Tensor | None, at: Window, win: Window) -> Tensor:
        """The field on ``win`` from ``f3``/``depth`` covering the window ``at`` (``win`` ± 1 px inside it)."""
        y0, y1, x0, x1 = win
        g, _ = grown(win, 1, *self.size)
        sub = (..., slice(g[0] - at[0], g[1] - at[0]), slice(g[2] - at[2], g[3] - at[2]))
        st = self.stats
        field = self._run(self.net.kernels, f3[sub], None if depth is None else depth[sub], st["focal"], st["pooled"],
                          st["binned"], depth_table=st.get("depth_table"))
        return field[..., y0 - g[0] : y1 - g[0], x0 - g[2] : x1 - g[2]]

    def field(self, win: Window) -> Tensor:
        """The kernel field ``(B, k², y1 − y0, x1 − x0)`` of one window (any window inside the image)."""
        return self._kernels(*self._last_features(win), win)

    def __iter__(self) -> Iterator[tuple[Window, Tensor]]:
        """``(window, field)`` over every core window in raster order, in row chunks of about ``CHUNK_PX`` pixels
        (the 441-channel field exists for one chunk at a time)."""
        for win in self.windows:
            f3, depth, at = self._last_features(win)
            y0, y1, x0, x1 = win
            rows = max(1, CHUNK_PX // (x1 - x0))
            for a in range(y0, y1, rows):
                part = (a, min(y1, a + rows), x0, x1)
                yield part, self._kernels(f3, depth, at, part)


def tiled_sr(net: KernelConditionedSR, lr: Tensor, code: Tensor | None, tile: int, align: int = 2,
             dtype: torch.dtype | None = None, level: Tensor | None = None) -> Iterator[tuple[Window, Tensor]]:
    """``(window, NBSR tile)`` over core windows in raster order, each in row chunks: ``NBSR(LR, code)`` on the
    window grown by :func:`nbsr_halo` (the upsampler on rows of its trunk features), the chunk's
    ``(B, 3, s·(y1 − y0), s·(x1 − x0))``, not clamped. ``level``: the whole image's noise level (default:
    measured on ``lr``)."""
    h, w = lr.shape[-2:]
    halo, s = nbsr_halo(net), int(net.net.scale)
    level = net.noise_level(lr) if level is None else level
    for win in core_windows(h, w, tile, align):
        g, (cy, cx) = grown(win, halo, h, w)
        lr_g = crop(lr, g)
        with autocast(lr.device, dtype):
            cond = net.code_condition(lr_g, None if code is None else crop(code, g), level)
            if cond is None:
                cond = lr_g.new_zeros(lr_g.shape[0], net.net.code_channels, *lr_g.shape[-2:])
            feat = net.net.trunk(lr_g, cond)
        rows = max(1, CHUNK_PX // (g[3] - g[2]))
        for a in range(cy.start, cy.stop, rows):  # the upsampler and HR convs in row chunks (2 px reach)
            b = min(cy.stop, a + rows)
            ea, eb = max(0, a - 2), min(lr_g.shape[-2], b + 2)
            with autocast(lr.device, dtype):
                out = net.net.tail(feat[..., ea:eb, :], lr_g[..., ea:eb, :]).float()
            yield (g[0] + a, g[0] + b, win[2], win[3]), out[..., (a - ea) * s : (b - ea) * s, cx.start * s : cx.stop * s]
