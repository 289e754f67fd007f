"""Visual helpers for figures and TensorBoard grids: kernel spread maps, colour maps, labelled sample grids.

Torch in, torch out (``(B, C, h, w)`` float in ``[0, 1]``) so modules can log the results directly.
:func:`labelled_grid` draws what every stage logs at validation: one column per :class:`Panel` with its title,
every tile shown at a readable size (LR-grid maps of 16–32 px upsampled with nearest, so pixels stay pixels) and
a colour bar with its unit under each heat-map column (one scale per column, so rows compare).
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass

import matplotlib
import matplotlib.ticker
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

__all__ = ["Panel", "heatmap", "kernel_spread", "labelled_grid"]


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


@dataclass
class Panel:
    """One column of a labelled grid: RGB images ``(B, 3, h, w)`` in [0, 1], or a scalar map ``(B, 1, h, w)``.

    A scalar map is drawn with ``cmap`` on ``[vmin, vmax]`` (default: the column's min/max) and gets a colour bar
    labelled ``unit``; an RGB column has ``cmap=None``.
    """

    title: str
    images: Tensor
    cmap: str | None = None
    vmin: float | None = None
    vmax: float | None = None
    unit: str = ""

    @classmethod
    def map(cls, title: str, values: Tensor, cmap: str = "magma", vmin: float | None = None,
            vmax: float | None = None, unit: str = "") -> Panel:
        """A heat-map column (depth, kernel spread, error): raw values, coloured and scaled by the grid."""
        return cls(title, values, cmap, vmin, vmax, unit)


def labelled_grid(panels: list[Panel], max_rows: int = 4, tile: int = 144, names: list[str] | None = None,
                  title: str | None = None) -> Tensor:
    """Rows = samples, columns = ``panels`` with their titles, each tile ``tile`` px on screen; ``(3, H, W)`` in [0, 1].

    Heat-map columns share one colour scale per column and carry a colour bar (with the unit) under their last
    row. Tiles are drawn with nearest interpolation: a 16 px LR map becomes 16 visible blocks, not a blur.
    """
    if not panels:
        raise ValueError("labelled_grid needs at least one panel")
    rows = min(max_rows, *(p.images.shape[0] for p in panels))
    ncols, dpi = len(panels), 100
    side = tile / dpi
    has_bar = any(p.cmap is not None for p in panels)
    head = 0.42 + (0.25 if title else 0.0)
    left = 0.45 if names else 0.1
    width, height = left + ncols * (side + 0.08), head + rows * (side + 0.06) + (0.55 if has_bar else 0.05)
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    bar_h = 0.12 / height
    for c, panel in enumerate(panels):
        data = panel.images[:rows].detach().float().cpu()
        x0 = (left + c * (side + 0.08)) / width
        lo = hi = None
        if panel.cmap is not None:
            if data.dim() == 4:
                data = data[:, 0]
            lo = float(data.min()) if panel.vmin is None else float(panel.vmin)
            hi = float(data.max()) if panel.vmax is None else float(panel.vmax)
            hi = hi if hi > lo else lo + 1e-6
        image = None
        for r in range(rows):
            y0 = 1 - (head + (r + 1) * (side + 0.06)) / height
            ax = fig.add_axes((x0, y0, side / width, side / height))
            ax.set_xticks([])
            ax.set_yticks([])
            if panel.cmap is not None:
                image = ax.imshow(data[r].numpy(), cmap=panel.cmap, vmin=lo, vmax=hi, interpolation="nearest")
            else:
                img = data[r].clamp(0, 1)
                img = img.expand(3, -1, -1) if img.shape[0] == 1 else img
                ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
            if r == 0:
                label = textwrap.fill(panel.title, max(10, int(side * 14)))
                ax.set_title(f"{label}\n{data.shape[-2]}×{data.shape[-1]} px", fontsize=7, pad=2)
            if c == 0 and names is not None and r < len(names):
                ax.set_ylabel(textwrap.fill(str(names[r]), 24), fontsize=6)
        if image is not None:
            y_bar = 1 - (head + rows * (side + 0.06) + 0.22) / height
            cax = fig.add_axes((x0 + 0.05 * side / width, y_bar, 0.9 * side / width, bar_h))
            bar = fig.colorbar(image, cax=cax, orientation="horizontal")
            bar.ax.tick_params(labelsize=6, length=2, pad=1)
            bar.locator = matplotlib.ticker.MaxNLocator(3)
            bar.update_ticks()
            if panel.unit:
                bar.set_label(panel.unit, fontsize=6, labelpad=1)
    if title:
        fig.suptitle(title, fontsize=8, y=1 - 0.08 / height)
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1).float() / 255.0
