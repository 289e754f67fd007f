"""Depth-map helpers shared by every layer: resampling to a grid and per-image normalisation to [0, 1].

They live at the bottom of the stack (no Lightning, no models) so that networks that take depth as an input
(DKENet with ``normalize_depth``) and the depth estimators of ``inference/depth.py`` use the same definition.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["apply_depth_range", "depth_range", "normalize_depth_map", "range_samples", "resize_depth"]

# torch.quantile sorts; estimate the robust range from at most this many pixels per image.
_MAX_QUANTILE_SAMPLES = 1 << 20


def resize_depth(depth: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize a depth map ``(B, 1, H, W)`` to ``size``.

    An exact integer down-factor ``s`` takes ``depth[..., ::s, ::s]``: the project's LR sampling convention, so
    the result equals the data module's ``depth_lr``. Other sizes use bilinear (antialiased when shrinking).
    """
    h, w = depth.shape[-2:]
    th, tw = int(size[0]), int(size[1])
    if (h, w) == (th, tw):
        return depth
    if h % th == 0 and w % tw == 0 and h // th == w // tw:
        s = h // th
        return depth[..., ::s, ::s]
    shrink = th < h or tw < w
    return F.interpolate(depth.float(), size=(th, tw), mode="bilinear", align_corners=False, antialias=shrink)


def normalize_depth_map(depth: Tensor, quantile: float = 0.01) -> Tensor:
    """Per-image robust min/max normalisation to [0, 1] (quantiles ``q`` and ``1 − q``, then clamp).

    A (near-)constant map becomes 0.5 everywhere: the data module's "no depth" placeholder.
    """
    lo, hi = depth_range(depth.float(), quantile)
    return apply_depth_range(depth, lo, hi)


def range_samples(n: int) -> slice:
    """The flat pixel positions ``normalize_depth_map`` reads its range from in an image of ``n`` pixels."""
    return slice(None, None, math.ceil(n / _MAX_QUANTILE_SAMPLES)) if n > _MAX_QUANTILE_SAMPLES else slice(None)


def depth_range(samples: Tensor, quantile: float = 0.01) -> tuple[Tensor, Tensor]:
    """``(lo, hi)`` per image ``(B,)``: quantiles ``q``, ``1 − q`` (min/max for q = 0) of a map ``(B, ...)`` or of
    its samples ``(B, n)`` at :func:`range_samples`."""
    flat = samples.reshape(samples.shape[0], -1)
    flat = flat[:, range_samples(flat.shape[1])]
    if quantile > 0:
        q = torch.tensor([quantile, 1.0 - quantile], device=flat.device, dtype=flat.dtype)
        lo, hi = torch.quantile(flat, q, dim=1)
    else:
        lo, hi = flat.amin(dim=1), flat.amax(dim=1)
    return lo, hi


def apply_depth_range(depth: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """``depth`` mapped to [0, 1] by the per-image range ``(lo, hi)``; a (near-)empty range gives 0.5."""
    x = depth.float()
    span = hi - lo
    flat_ok = span > 1e-8 * (1.0 + hi.abs())
    view = (-1,) + (1,) * (x.dim() - 1)
    out = ((x - lo.view(view)) / span.clamp_min(1e-12).view(view)).clamp(0.0, 1.0)
    return torch.where(flat_ok.view(view), out, torch.full_like(out, 0.5))
