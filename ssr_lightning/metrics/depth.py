"""Relative-depth loss and metrics: scale-and-shift alignment, the MiDaS SSI loss, AbsRel and δ<1.25.

Monocular depth is only defined up to an unknown affine map (a scale and a shift, MiDaS: Ranftl et al. 2020),
so a prediction is first aligned to the target per image by least squares and only then compared. Everything
here works on ``(B, C, H, W)`` maps, reduces over all non-batch dimensions and returns one value per sample,
``(B,)``, like the other metrics of the project. An optional ``mask`` (same shape as the maps, or broadcastable,
non-zero = valid) restricts every sum to valid pixels (real depth sensors leave holes).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = ["abs_rel", "align_scale_shift", "aligned_depth_metrics", "delta1", "gradient_matching", "ssi_loss"]

# Below this variance (per image) a prediction is treated as constant: its best scale is 0, its shift the mean.
_EPS = 1e-12


def _weights(like: Tensor, mask: Tensor | None) -> Tensor:
    """Float per-pixel weights of ``like``'s shape (ones without a mask)."""
    if mask is None:
        return torch.ones_like(like, dtype=torch.float32)
    return mask.to(torch.float32).expand_as(like)


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1)


def align_scale_shift(
    pred: Tensor, target: Tensor, mask: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image least-squares ``s, t = argmin Σ m (s·pred + t − target)²``.

    Returns ``(s·pred + t, s, t)`` with ``s`` and ``t`` of shape ``(B,)``. The solution uses centred moments
    (cov/var) rather than the normal equations' determinant because it is far better conditioned in float32.
    Gradients flow through ``s`` and ``t``, as in MiDaS's loss. A constant prediction gets ``s = 0``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"align_scale_shift: shapes differ, {tuple(pred.shape)} vs {tuple(target.shape)}")
    p, y = pred.float(), target.float()
    w = _flat(_weights(p, mask))
    pf, yf = _flat(p), _flat(y)
    n = w.sum(dim=1).clamp_min(1.0)
    p_mean = (w * pf).sum(dim=1) / n
    y_mean = (w * yf).sum(dim=1) / n
    pc, yc = pf - p_mean[:, None], yf - y_mean[:, None]
    var = (w * pc * pc).sum(dim=1) / n
    cov = (w * pc * yc).sum(dim=1) / n
    scale = torch.where(var > _EPS, cov / var.clamp_min(_EPS), torch.zeros_like(var))
    shift = y_mean - scale * p_mean
    view = (-1,) + (1,) * (p.dim() - 1)
    return p * scale.view(view) + shift.view(view), scale, shift


def gradient_matching(residual: Tensor, mask: Tensor | None = None, scales: int = 4) -> Tensor:
    """MiDaS multi-scale gradient-matching term of a residual map ``aligned − target``, per sample ``(B,)``.

    At scale k the residual is subsampled by ``2**k`` and the L1 norms of its horizontal and vertical
    differences are summed over valid pixel pairs and divided by the valid-pixel count; scales are summed (as
    in MiDaS). It penalises blurred or shifted depth edges that a per-pixel loss forgives.
    """
    w = _weights(residual, mask)
    total = residual.new_zeros(residual.shape[0], dtype=torch.float32)
    for k in range(scales):
        step = 2**k
        r, m = residual[..., ::step, ::step].float(), w[..., ::step, ::step]
        if r.shape[-1] < 2 and r.shape[-2] < 2:
            break  # nothing left to differentiate at coarser scales
        gx = (r[..., :, 1:] - r[..., :, :-1]).abs() * m[..., :, 1:] * m[..., :, :-1]
        gy = (r[..., 1:, :] - r[..., :-1, :]).abs() * m[..., 1:, :] * m[..., :-1, :]
        total = total + (_flat(gx).sum(dim=1) + _flat(gy).sum(dim=1)) / _flat(m).sum(dim=1).clamp_min(1.0)
    return total


def ssi_loss(
    pred: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    kind: Literal["l1", "mse"] = "l1",
    grad_weight: float = 0.0,
    grad_scales: int = 4,
    align: bool = True,
) -> Tensor:
    """Scale-and-shift-invariant loss per sample ``(B,)``.

    ``pred`` is aligned to ``target`` by :func:`align_scale_shift`, then the mean L1 (MiDaS ssitrim without
    trimming) or squared (MiDaS ssimse) error is taken over valid pixels, plus ``grad_weight`` times the
    :func:`gradient_matching` term of the residual (MiDaS uses 0.5). It is 0 whenever ``target`` is an exact
    affine function of ``pred`` (with non-constant ``pred``). ``align=False`` skips the alignment: the same
    terms on ``pred − target`` directly (for data whose depth shares one absolute convention).
    """
    if kind not in ("l1", "mse"):
        raise ValueError(f"ssi_loss: kind must be 'l1' or 'mse', got {kind!r}")
    aligned = align_scale_shift(pred, target, mask)[0] if align else pred.float()
    residual = aligned - target.float()
    w = _weights(residual, mask)
    err = residual.abs() if kind == "l1" else residual.square()
    loss = _flat(err * w).sum(dim=1) / _flat(w).sum(dim=1).clamp_min(1.0)
    if grad_weight:
        loss = loss + grad_weight * gradient_matching(residual, mask, grad_scales)
    return loss


def abs_rel(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean absolute relative error ``|pred − target| / target`` per sample ``(B,)``; ``target`` must be > 0."""
    if pred.shape != target.shape:
        raise ValueError(f"abs_rel: shapes differ, {tuple(pred.shape)} vs {tuple(target.shape)}")
    p, y = pred.float(), target.float()
    w = _weights(p, mask)
    return _flat((p - y).abs() / y * w).sum(dim=1) / _flat(w).sum(dim=1).clamp_min(1.0)


def delta1(pred: Tensor, target: Tensor, mask: Tensor | None = None, threshold: float = 1.25) -> Tensor:
    """Fraction of pixels with ``max(pred/target, target/pred) < threshold`` per sample ``(B,)``.

    Non-positive predictions count as failures (they are clamped to a tiny positive value first).
    """
    if pred.shape != target.shape:
        raise ValueError(f"delta1: shapes differ, {tuple(pred.shape)} vs {tuple(target.shape)}")
    p, y = pred.float().clamp_min(1e-6), target.float()
    w = _weights(p, mask)
    ok = (torch.maximum(p / y, y / p) < threshold).float()
    return _flat(ok * w).sum(dim=1) / _flat(w).sum(dim=1).clamp_min(1.0)


def aligned_depth_metrics(
    pred: Tensor, gt_depth: Tensor, mask: Tensor | None = None, z_near: float = 1.0, z_far: float = 10.0
) -> dict[str, Tensor]:
    """AbsRel and δ<1.25 of a relative-depth prediction against project-convention GT depth in [0, 1].

    The GT is mapped to the strictly positive range ``z = z_near + (z_far − z_near)·d`` (AbsRel divides by
    depth, and the [0, 1] convention has zeros), the prediction is aligned to ``z`` by least squares, and both
    metrics are computed on the aligned prediction. Returns ``{"absrel": (B,), "delta1": (B,)}``.
    """
    z = z_near + (z_far - z_near) * gt_depth.float()
    aligned, _, _ = align_scale_shift(pred, z, mask)
    return {"absrel": abs_rel(aligned, z, mask), "delta1": delta1(aligned, z, mask)}
