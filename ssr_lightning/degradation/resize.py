"""MATLAB-style bicubic resizing (`imresize`), and the bicubic upsampling of the tables' "Bicubic" reference row.

:func:`imresize` follows MATLAB's ``imresize(I, scale)`` / ``imresize(I, [h w])`` with its default ``'bicubic'``
method, the resize SR papers use to make and to upsample LR images:

- Keys' cubic convolution kernel with A = −0.5: ``1.5|x|³ − 2.5|x|² + 1`` for ``|x| ≤ 1``,
  ``−0.5|x|³ + 2.5|x|² − 4|x| + 2`` for ``1 < |x| ≤ 2``, else 0 (width 4);
- when shrinking (scale < 1) with ``antialias``, the kernel is stretched by 1/scale, ``scale·k(scale·x)``, so it
  low-passes before sampling (width 4/scale);
- output pixel ``u`` (1-based) reads input position ``u/scale + (1 − 1/scale)/2``, i.e. pixel centres map onto
  pixel centres, the same mapping as torch's ``align_corners=False``;
- the weights of each output pixel are normalised to sum 1, and taps outside the image read it mirrored with the
  edge pixel repeated ("symmetric": ``x[-1] = x[0]``, ``x[-2] = x[1]``);
- the dimension with the smaller scale is resized first (MATLAB's order; the result differs only by round-off).

torch's ``F.interpolate(mode="bicubic")`` is a different bicubic: A = −0.75, no antialiasing unless asked, and
taps outside the image clamped to the edge pixel. :func:`bicubic_upsample` offers both for the reference row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["bicubic_upsample", "cubic", "imresize", "resize_matrix"]

KEYS_A = -0.5  # MATLAB's (and PIL's) cubic; torch uses -0.75


def cubic(x: np.ndarray | float, a: float = KEYS_A) -> np.ndarray:
    """Keys' cubic convolution kernel with parameter ``a`` (MATLAB: −0.5), zero outside ``|x| ≤ 2``."""
    t = np.abs(np.asarray(x, dtype=np.float64))
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return np.where(t <= 1, near, np.where(t <= 2, far, 0.0))


def resize_matrix(in_len: int, out_len: int, scale: float, antialias: bool = True, a: float = KEYS_A) -> np.ndarray:
    """The ``(out_len, in_len)`` float64 matrix of one dimension of MATLAB's bicubic ``imresize`` (kernel ``a``)."""
    if in_len < 1 or out_len < 1 or not scale > 0:
        raise ValueError(f"resize_matrix: need positive sizes and scale, got {in_len} -> {out_len} at {scale}")
    shrink = antialias and scale < 1
    width = 4.0 / scale if shrink else 4.0
    u = np.arange(1, out_len + 1, dtype=np.float64) / scale + 0.5 * (1 - 1 / scale)  # 1-based input position
    left = np.floor(u - width / 2)
    taps = left[:, None] + np.arange(math.ceil(width) + 2)[None]  # 1-based indices, as MATLAB's contributions()
    dist = u[:, None] - taps
    w = scale * cubic(scale * dist, a) if shrink else cubic(dist, a)
    w /= w.sum(axis=1, keepdims=True)
    period = 2 * in_len  # symmetric padding: 1..n, n..1, repeated
    idx = (taps.astype(np.int64) - 1) % period
    idx = np.where(idx < in_len, idx, period - 1 - idx)
    mat = np.zeros((out_len, in_len))
    np.add.at(mat, (np.repeat(np.arange(out_len), taps.shape[1]), idx.ravel()), w.ravel())
    return mat


def _plan(in_hw: tuple[int, int], scale_or_size: float | Sequence[int]) -> tuple[list[int], list[float]]:
    if isinstance(scale_or_size, (int, float)) and not isinstance(scale_or_size, bool):
        s = float(scale_or_size)
        if not s > 0:
            raise ValueError(f"imresize: scale must be > 0, got {scale_or_size}")
        return [math.ceil(s * n) for n in in_hw], [s, s]  # MATLAB: ceil(scale * size), mapping by the given scale
    size = [int(v) for v in scale_or_size]
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"imresize: expected a scale or an output size (h, w), got {scale_or_size}")
    return size, [o / i for o, i in zip(size, in_hw)]


def imresize(x: Tensor, scale_or_size: float | Sequence[int], antialias: bool = True) -> Tensor:
    """MATLAB ``imresize(x, scale_or_size)`` (bicubic) of images ``(..., H, W)``, any float dtype and device.

    ``scale_or_size``: a number is a scale factor (output ``ceil(scale·H) × ceil(scale·W)``), a pair the output
    size ``(h, w)``. ``antialias`` widens the kernel when shrinking (MATLAB's default). The output is not clamped:
    bicubic overshoots at edges.
    """
    if not torch.is_floating_point(x) or x.ndim < 2:
        raise TypeError(f"imresize expects a floating-point tensor (..., H, W), got {x.dtype} {tuple(x.shape)}")
    in_hw = (int(x.shape[-2]), int(x.shape[-1]))
    out_hw, scales = _plan(in_hw, scale_or_size)
    mats = [torch.from_numpy(resize_matrix(i, o, s, antialias)).to(x.device, x.dtype)
            for i, o, s in zip(in_hw, out_hw, scales)]
    for dim in sorted((0, 1), key=lambda d: scales[d]):  # the smaller scale first, as MATLAB
        x = torch.matmul(mats[0], x) if dim == 0 else torch.matmul(x, mats[1].T)
    return x


def bicubic_upsample(lr: Tensor, scale: int, method: Literal["torch", "matlab"] = "torch") -> Tensor:
    """The bicubic ×``scale`` upsampling of ``lr (B, C, h, w)`` to ``(B, C, scale·h, scale·w)``, not clamped.

    ``torch``: ``F.interpolate(mode="bicubic", align_corners=False)`` (A = −0.75, edge taps clamped), what NBSR's
    global residual uses. ``matlab``: :func:`imresize` (A = −0.5, symmetric edges), the bicubic of SR papers' tables
    and of the "Bicubic" reference rows (``EvalWriter``, ``ssr-frontend``) unless they ask for torch's. Both map pixel centres alike; with a border crop of ``scale`` px they
    differ only by the kernel. Clamp to [0, 1] before saving; the metrics clamp themselves.
    """
    if method not in ("torch", "matlab"):
        raise ValueError(f"bicubic_upsample: method must be 'torch' or 'matlab', got {method!r}")
    size = (lr.shape[-2] * int(scale), lr.shape[-1] * int(scale))
    if method == "torch":
        return F.interpolate(lr, size=size, mode="bicubic", align_corners=False)
    return imresize(lr, size)
