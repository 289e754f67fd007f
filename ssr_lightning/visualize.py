"""Visual helpers for figures and TensorBoard grids: kernel spread maps, colour maps, sample grids.

Torch in, torch out (``(B, C, h, w)`` float in ``[0, 1]``) so modules can log the results directly.
"""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["heatmap", "kernel_spread", "sample_grid"]


def kernel_spread(field: Tensor, size: int = 21) -> Tensor:
    """Per-pixel blur size of a kernel field ``(B, k·k, h, w)`` → ``(B, 1, h, w)`` in HR pixels.

    The spread is ``sqrt((var_x + var_y) / 2)``: the square root of the kernel's total spatial variance
    (second central moment summed over both axes) divided by two, i.e. the per-axis RMS standard deviation.
    For an isotropic Gaussian it equals σ (less for σ large enough to be cut by the k×k window), so maps
    read directly in the units of the degradation's σ. Kernels are renormalised to sum 1 first, so
    estimated fields that drift slightly still give sensible values.
    """
    b, c, h, w = field.shape
    k = round(math.sqrt(c))
    if k * k != c:
        raise ValueError(f"kernel field has {c} channels, not a square k·k (expected {size * size})")
    wgt = field.float().clamp_min(0).reshape(b, k, k, h, w)
    wgt = wgt / wgt.sum(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    r = torch.arange(k, device=field.device, dtype=torch.float32) - k // 2
    py, px = wgt.sum(dim=2), wgt.sum(dim=1)  # marginals along y and x: (B, k, h, w)
    ry = r.view(1, k, 1, 1)
    my, mx = (py * ry).sum(1), (px * ry).sum(1)
    vy = (py * ry**2).sum(1) - my**2
    vx = (px * ry**2).sum(1) - mx**2
    return ((vx + vy).clamp_min(0) / 2).sqrt().unsqueeze(1)


def heatmap(x: Tensor, cmap: str = "magma", vmin: float | None = None, vmax: float | None = None) -> Tensor:
    """Colour-map a ``(B, 1, h, w)`` tensor to RGB ``(B, 3, h, w)`` in ``[0, 1]`` (matplotlib colormap).

    ``vmin``/``vmax`` default to the min/max over the whole batch, so colours compare across a grid.
    """
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"heatmap expects (B, 1, h, w), got {tuple(x.shape)}")
    x = x.detach().float()
    lo = float(x.min()) if vmin is None else float(vmin)
    hi = float(x.max()) if vmax is None else float(vmax)
    t = ((x - lo) / max(hi - lo, 1e-12)).clamp(0, 1)
    lut = torch.as_tensor(
        matplotlib.colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3], dtype=torch.float32, device=x.device
    )
    idx = (t[:, 0] * 255).round().long()
    return lut[idx].permute(0, 3, 1, 2).contiguous()


def _up(x: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(x.float(), size=size, mode="nearest")


def sample_grid(
    hr: Tensor,
    depth: Tensor,
    kernel: Tensor,
    lr: Tensor,
    spread_max: float | None = None,
    pad: int = 2,
) -> Tensor:
    """One row per sample: HR | depth (magma, 0 = near) | kernel spread σ (viridis) | LR (nearest-upscaled).

    Returns a ``(3, rows·(H+pad), 4·(W+pad))`` tensor in ``[0, 1]``, white-padded. The spread column uses a
    shared scale ``[0, spread_max]`` (default: the batch maximum) so rows compare.
    """
    hh, ww = hr.shape[-2:]
    spread = kernel_spread(kernel)
    cols = [
        hr.float().clamp(0, 1),
        heatmap(depth, "magma", 0.0, 1.0),
        _up(heatmap(spread, "viridis", 0.0, spread_max if spread_max is not None else float(spread.max())),
            (hh, ww)),
        _up(lr.clamp(0, 1), (hh, ww)),
    ]
    cols = [F.pad(c.to(hr.device), (0, pad, 0, pad), value=1.0) for c in cols]
    rows = torch.cat(cols, dim=3)  # (B, 3, H+pad, 4(W+pad))
    return torch.cat(list(rows), dim=1)
