"""DE on an SR image that is never held whole: the depth network's working-size view, gathered tile by tile.

SVKR's DE(I^{t−1}) reads an HR-sized SR image, but the project's DepthNet (``working_size``, e.g. 64 px) first shrinks
it with an antialiased bilinear resize, which is separable: ``small = W_y · I · W_xᵀ`` per channel, with ``W_y``
``(h', H)`` and ``W_x`` ``(w', W)`` weight matrices (:func:`aa_weights`, torch's own antialias weights). Each NBSR
tile adds ``W_y[:, rows] · tile · W_x[:, cols]ᵀ`` (:class:`StreamedDepth`), so only the small image is kept.

What follows is what ``DepthEstimator.forward`` and ``SVKR.estimate_depth`` do on the whole image, evaluated only
where it is read: the logits at the working size, bilinearly upsampled to H × W, activated, normalised by the 1 % /
99 % quantiles of the HR map (``normalize_depth_map`` reads at most 2^20 pixels, at a fixed stride), and sampled at
the LR positions ``[::s, ::s]``. The upsampling is evaluated at those LR positions and at the quantile samples only
(:func:`bilinear_at`), so nothing HR-sized exists; the result equals the whole-image DE up to float round-off.

Only DepthNet with a working size smaller than the image is streamed (the default DE); other estimators, and images
that fit in the working size, run on the whole SR image (:func:`streams`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ssr_lightning.inference.depth import DepthEstimator, LearnedDepth
from ssr_lightning.networks.depth_maps import apply_depth_range, depth_range, range_samples

__all__ = ["StreamedDepth", "aa_weights", "bilinear_at", "streams"]


def aa_weights(n_in: int, n_out: int) -> Tensor:
    """``(n_out, n_in)`` weights of torch's antialiased bilinear resize along one axis (align_corners False)."""
    scale = n_in / n_out
    support = scale if scale >= 1.0 else 1.0
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        j = torch.arange(lo, hi, dtype=torch.float64)
        taps = (1.0 - ((j - center + 0.5) * inv).abs()).clamp_min(0.0)
        total = float(taps.sum())
        w[i, lo:hi] = taps / total if total != 0 else taps
    return w


def bilinear_taps(n_in: int, n_out: int, positions: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Indices ``(i0, i1)`` and weights ``(l0, l1)`` of a bilinear resize ``n_in → n_out`` (align_corners False,
    no antialias) at output ``positions``, as torch computes them in float32."""
    scale = torch.tensor(n_in / n_out, dtype=torch.float32)
    src = (scale * (positions.to(torch.float32) + 0.5) - 0.5).clamp_min(0.0)
    i0 = src.to(torch.int64).clamp_max(n_in - 1)
    i1 = torch.where(i0 < n_in - 1, i0 + 1, i0)
    l1 = src - i0.to(torch.float32)
    return i0, i1, 1.0 - l1, l1


def bilinear_at(y: Tensor, size: tuple[int, int], rows: Tensor, cols: Tensor, grid: bool) -> Tensor:
    """Values of ``F.interpolate(y, size, bilinear)`` at ``rows`` × ``cols`` (``grid``: ``(B, C, len(rows),
    len(cols))``) or at the points ``(rows[k], cols[k])`` (``(B, C, k)``), without the resized map."""
    h0, h1, a0, a1 = (t.to(y.device) for t in bilinear_taps(y.shape[-2], size[0], rows))
    w0, w1, b0, b1 = (t.to(y.device) for t in bilinear_taps(y.shape[-1], size[1], cols))
    if grid:
        top = y[..., h0, :]
        bot = y[..., h1, :]
        b0, b1 = b0.view(1, 1, 1, -1), b1.view(1, 1, 1, -1)
        a0, a1 = a0.view(1, 1, -1, 1), a1.view(1, 1, -1, 1)
        return a0 * (b0 * top[..., w0] + b1 * top[..., w1]) + a1 * (b0 * bot[..., w0] + b1 * bot[..., w1])
    return a0 * (b0 * y[..., h0, w0] + b1 * y[..., h0, w1]) + a1 * (b0 * y[..., h1, w0] + b1 * y[..., h1, w1])


def streams(estimator: DepthEstimator, size: tuple[int, int]) -> bool:
    """Whether DE on an SR image of ``size`` can be gathered tile by tile (a DepthNet that shrinks it)."""
    if not isinstance(estimator, LearnedDepth):
        return False
    net = estimator.net
    wsize = net.working_shape(size)
    return wsize is not None and net.config["working_size"] < min(size)


class StreamedDepth:
    """Gathers an SR image of ``size`` (HR) tile by tile into the DE's working-size view, then gives D on the LR grid.

    Args:
        estimator: A :class:`LearnedDepth` for which :func:`streams` holds.
        size: ``(H, W)`` of the SR image.
        batch: Images in the batch.
        device: Where the small image lives.
    """

    def __init__(self, estimator: LearnedDepth, size: tuple[int, int], batch: int = 1,
                 device: torch.device | str = "cpu") -> None:
        if not streams(estimator, size):
            raise ValueError(f"DE cannot be streamed at {size}: use the whole-image estimator")
        self.estimator, self.size = estimator, size
        wsize = estimator.net.working_shape(size)
        assert wsize is not None
        self.wy = aa_weights(size[0], wsize[0]).to(device, torch.float32)
        self.wx = aa_weights(size[1], wsize[1]).to(device, torch.float32)
        self.small = torch.zeros(batch, 3, *wsize, device=device, dtype=torch.float64)

    def add(self, y0: int, x0: int, tile: Tensor) -> None:
        """Add an SR tile ``(B, 3, h, w)`` in [0, 1] whose top-left HR pixel is ``(y0, x0)``."""
        wy = self.wy[:, y0 : y0 + tile.shape[-2]]
        wx = self.wx[:, x0 : x0 + tile.shape[-1]]
        self.small += (wy @ tile.float() @ wx.T).double()

    @torch.no_grad()
    def depth_lr(self, lr_size: tuple[int, int]) -> Tensor:
        """D ``(B, 1, h, w)`` on the LR grid: ``SVKR.estimate_depth`` of the gathered SR image."""
        net, (hh, ww) = self.estimator.net, self.size
        y = net.logits(self.small.float().clamp(0.0, 1.0))
        s = hh // lr_size[0]
        exact = hh % lr_size[0] == 0 and ww % lr_size[1] == 0 and s == ww // lr_size[1]
        if not exact:
            raise ValueError(f"SR size {self.size} is not an exact multiple of the LR size {lr_size}")
        rows = torch.arange(0, hh, s)
        cols = torch.arange(0, ww, s)
        at_lr = net.activate(bilinear_at(y, (hh, ww), rows, cols, grid=True)).float()
        lo, hi = depth_range(self._range_samples(net, y), self.estimator.quantile)
        return apply_depth_range(at_lr, lo, hi)

    def _range_samples(self, net: torch.nn.Module, y: Tensor, chunk: int = 1 << 18) -> Tensor:
        """The activated HR map at the positions ``normalize_depth_map`` samples (``(B, n)``)."""
        hh, ww = self.size
        n = hh * ww
        idx = torch.arange(n)[range_samples(n)]
        out = []
        for k in range(0, idx.numel(), chunk):
            part = idx[k : k + chunk]
            out.append(net.activate(bilinear_at(y, self.size, part // ww, part % ww, grid=False)).float()[:, 0])
        return torch.cat(out, dim=1)  # at most 2^20 values: depth_range takes them all
