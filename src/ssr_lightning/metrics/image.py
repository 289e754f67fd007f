"""Per-sample image and kernel-field metrics (no reduction over the batch, so callers can aggregate and report)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio


def psnr(pred: Tensor, target: Tensor, data_range: float = 1.0, crop_border: int = 0) -> Tensor:
    """PSNR in dB per sample over all channels, `(B,)`, after cropping `crop_border` pixels on each side."""
    if pred.shape != target.shape:
        raise ValueError(f"psnr: shapes differ, {tuple(pred.shape)} vs {tuple(target.shape)}")
    if crop_border:
        pred = pred[..., crop_border:-crop_border, crop_border:-crop_border]
        target = target[..., crop_border:-crop_border, crop_border:-crop_border]
    return peak_signal_noise_ratio(
        pred.float().clamp(0, data_range), target.float(), data_range=data_range, reduction="none", dim=(1, 2, 3)
    )


def kernel_l1(pred: Tensor, target: Tensor) -> Tensor:
    """Mean over pixels of the L1 distance between two kernel fields `(B, k², h, w)`, per sample `(B,)`.

    The sum runs over the k² kernel taps, so the value is in [0, 2] whatever the kernel size
    (0: identical kernels, 2: disjoint supports) and reads as twice the total-variation distance.
    """
    if pred.shape != target.shape:
        raise ValueError(f"kernel_l1: shapes differ, {tuple(pred.shape)} vs {tuple(target.shape)}")
    return (pred.float() - target.float()).abs().sum(dim=1).mean(dim=(1, 2))


@torch.no_grad()
def mean_and_std(values: list[float]) -> tuple[float, float]:
    """Mean and population std of a list of floats (0 std for one value)."""
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std(unbiased=False)) if len(values) > 1 else 0.0
